//! The routes a running `petrel --api-socket` answers agree with the checked-in OpenAPI
//! document (docs/api/petrel-vmm.yaml): every documented path answers its documented method
//! (with a status the document lists for it) and refuses any other with 405, never 404;
//! paths the document does not list answer 404.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use petrel_http::{Client, Method};
use petrel_tests::{require_kvm, scratch_path, Petrel};

/// (method, path) → documented response statuses.
type Operations = BTreeMap<(String, String), BTreeSet<u16>>;

/// Reads the operations of the document's `paths:` section (the document keeps to a plain
/// block layout: paths at indent 2, methods at 4, `responses:` at 6, statuses at 8).
fn documented() -> Operations {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/api/petrel-vmm.yaml");
    let text = std::fs::read_to_string(&file)
        .unwrap_or_else(|e| panic!("reading {}: {e}", file.display()));
    let mut ops = Operations::new();
    let (mut in_paths, mut path, mut method, mut in_responses) = (false, None, None, false);
    for line in text.lines() {
        let indent = line.len() - line.trim_start().len();
        let t = line.trim();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        if indent == 0 {
            in_paths = t == "paths:";
            continue;
        }
        if !in_paths {
            continue;
        }
        let key = t.strip_suffix(':').map(|k| k.trim_matches('"'));
        match (indent, key) {
            (2, Some(p)) => (path, method) = (Some(p.to_string()), None),
            (4, Some(m)) => {
                method = Some(m.to_uppercase());
                in_responses = false;
                let op = (
                    method.clone().unwrap(),
                    path.clone().expect("method before path"),
                );
                assert!(ops.insert(op, BTreeSet::new()).is_none(), "duplicate {t}");
            }
            (6, _) => in_responses = t == "responses:",
            (8, Some(status)) if in_responses => {
                let op = (method.clone().unwrap(), path.clone().unwrap());
                let status = status.parse().unwrap_or_else(|_| panic!("status {status}"));
                ops.get_mut(&op).unwrap().insert(status);
            }
            _ => {}
        }
    }
    ops
}

fn method(name: &str) -> Method {
    match name {
        "GET" => Method::Get,
        "PUT" => Method::Put,
        "POST" => Method::Post,
        "PATCH" => Method::Patch,
        "DELETE" => Method::Delete,
        other => panic!("method {other}"),
    }
}

fn start() -> (Petrel, Client) {
    let sock = scratch_path("api-routes.sock");
    let _ = std::fs::remove_file(&sock);
    let petrel = Petrel::spawn(&["--api-socket", sock.to_str().unwrap()]);
    let client = Client::new(&sock).with_timeout(Duration::from_secs(10));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match client.get("/api/v1/vmm.ping") {
            Ok(r) if r.status == 200 => return (petrel, client),
            r if Instant::now() > deadline => {
                panic!(
                    "API socket never answered: {r:?}\nstderr:\n{}",
                    petrel.stderr()
                )
            }
            _ => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

#[test]
fn server_routes_match_the_openapi_document() {
    require_kvm!();
    let ops = documented();
    assert_eq!(ops.len(), 22, "{ops:?}");
    let (petrel, client) = start();
    let paths: BTreeSet<&String> = ops.keys().map(|(_, p)| p).collect();

    for path in &paths {
        let allowed: BTreeSet<&str> = ops
            .keys()
            .filter(|(_, p)| p == *path)
            .map(|(m, _)| m.as_str())
            .collect();
        for other in ["GET", "PUT", "POST", "PATCH", "DELETE"] {
            if allowed.contains(other) {
                continue;
            }
            let r = client.request(method(other), path, Some(b"{}")).unwrap();
            assert_eq!(r.status, 405, "{other} {path}: {}", r.error_message());
        }
    }

    // The documented method is routed (on a VMM without a VM, nothing changes state), and
    // answers a status the document lists. vmm.shutdown ends the process: last.
    for ((m, path), statuses) in &ops {
        if path.ends_with("/vmm.shutdown") {
            continue;
        }
        let body = (m == "PUT").then_some(&br#"{"colour": 1}"#[..]);
        let r = client.request(method(m), path, body).unwrap();
        assert!(
            statuses.contains(&r.status),
            "{m} {path} answered {} ({}), the document lists {statuses:?}",
            r.status,
            r.error_message()
        );
        if r.status >= 400 {
            assert!(
                !r.error_message().is_empty(),
                "{m} {path}: no error message"
            );
        }
    }

    for path in [
        "/api/v1/vm.coredump",
        "/api/v1/vm.add-fs",
        "/api/v1/vmm.pong",
        "/api/v2/vmm.ping",
        "/vmm.ping",
    ] {
        for m in [Method::Get, Method::Put] {
            let r = client.request(m, path, None).unwrap();
            assert_eq!(r.status, 404, "{} {path}", m.as_str());
        }
    }

    let r = client
        .request(Method::Put, "/api/v1/vmm.shutdown", None)
        .unwrap();
    assert!(ops[&("PUT".into(), "/api/v1/vmm.shutdown".into())].contains(&r.status));
    let run = petrel.wait(Duration::from_secs(10));
    assert!(
        !run.timed_out,
        "vmm.shutdown did not end petrel\n{}",
        run.dump()
    );
    assert!(run.success(), "{}", run.dump());
}
