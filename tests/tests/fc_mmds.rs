//! MMDS through Firecracker's API (`PUT`/`PATCH`/`GET /mmds`, `PUT /mmds/config`), on petrel
//! and, where its binary is present, on the real Firecracker: the same request sequence (good
//! and bad bodies, before and after an interface exists) gets the same status codes and body
//! shapes, and `GET /mmds` the same document; `--metadata` fills the store at start and
//! `--mmds-size-limit` bounds it. (The guest side — ARP and HTTP over TCP to 169.254.169.254
//! through the virtio-net device — is tested in `devices` with a real TCP client.)

mod fc_support;

use std::path::Path;
use std::time::Duration;

use fc_support::{shape, ScratchDir, Shape, Tap, Vmm, Which};
use petrel_http::Method::{self, Get, Patch, Put};
use petrel_tests::host_net::TUN_DEVICE;
use petrel_tests::require_kvm;
use serde_json::{json, Value};

fn sequence(tap: &str) -> Vec<(Method, &'static str, Value)> {
    vec![
        (Get, "/mmds", Value::Null),
        (Patch, "/mmds", json!({"a": "b"})),
        (Put, "/mmds", json!("text")),
        (
            Put,
            "/mmds",
            json!({"latest": {"meta-data": {"ami-id": "ami-1", "n": 5}}, "k": "v"}),
        ),
        (Get, "/mmds", Value::Null),
        (
            Patch,
            "/mmds",
            json!({"latest": {"meta-data": {"n": null, "x": "y"}}}),
        ),
        (Get, "/mmds", Value::Null),
        (Put, "/mmds/config", json!({"network_interfaces": []})),
        (Put, "/mmds/config", json!({"network_interfaces": ["eth0"]})),
        (Put, "/mmds/config", json!({"version": "V2"})),
        (
            Put,
            "/network-interfaces/eth0",
            json!({"iface_id": "eth0", "host_dev_name": tap}),
        ),
        (
            Put,
            "/mmds/config",
            json!({"network_interfaces": ["eth0"], "ipv4_address": "10.0.0.1"}),
        ),
        (
            Put,
            "/mmds/config",
            json!({"network_interfaces": ["eth0"], "version": "V3"}),
        ),
        (
            Put,
            "/mmds/config",
            json!({"network_interfaces": ["eth0"], "bogus": 1}),
        ),
        (
            Put,
            "/mmds/config",
            json!({"network_interfaces": ["eth0"], "version": "V2",
                   "ipv4_address": "169.254.170.2"}),
        ),
        (Get, "/vm/config", Value::Null),
        (Put, "/mmds", json!({"big": "x".repeat(2_000)})),
        (Get, "/mmds", Value::Null),
    ]
}

/// Runs the sequence; returns each step's label, shape and body.
fn run(which: Which, tap: &str) -> Vec<(String, Shape, Value)> {
    let tag = match which {
        Which::Petrel => "p",
        Which::Firecracker => "f",
    };
    let dir = ScratchDir::new(&format!("fcmmds-{tag}"));
    let mut vmm = Vmm::spawn(which, &dir.0, &["--mmds-size-limit", "1000"]);
    assert!(
        vmm.wait_api(Duration::from_secs(10)),
        "no API\n{}",
        vmm.dump()
    );
    sequence(tap)
        .into_iter()
        .map(|(method, path, body)| {
            let text = (!body.is_null()).then(|| body.to_string());
            let r = vmm.call(method, path, text.as_deref());
            let label = format!(
                "{} {path} {}",
                method.as_str(),
                text.unwrap_or_default()
                    .chars()
                    .take(80)
                    .collect::<String>()
            );
            if !r.is_success() {
                let v: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
                assert!(
                    v["fault_message"].as_str().is_some_and(|m| !m.is_empty()),
                    "{which:?}: {label}: {} without a fault_message",
                    r.status
                );
            }
            let value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
            (label, shape(&r), value)
        })
        .collect()
}

fn with_tap(name: &str) -> Option<Tap> {
    if !Path::new(TUN_DEVICE).exists() {
        petrel_tests::skip(format!("{TUN_DEVICE} not available"));
        return None;
    }
    match Tap::create(name) {
        Ok(t) => Some(t),
        Err(e) => {
            petrel_tests::skip(format!("cannot create tap {name}: {e}"));
            None
        }
    }
}

#[test]
fn mmds_api_answers_as_firecracker() {
    require_kvm!();
    let name = format!("pmm{}", std::process::id() % 100_000);
    let Some(_tap) = with_tap(&name) else {
        return;
    };
    let petrel = run(Which::Petrel, &name);
    let status = |label: &str| {
        petrel
            .iter()
            .find(|(l, ..)| l.contains(label))
            .map(|(_, s, _)| s.status)
            .unwrap_or_else(|| panic!("no step {label}"))
    };
    assert_eq!(status("\"ami-id\":\"ami-1\",\"n\":5"), 204);
    assert_eq!(status("{\"big\""), 413);
    assert_eq!(status("169.254.170.2"), 204);
    assert_eq!(status("10.0.0.1"), 400);
    // The document after the patch; the refused big one changed nothing.
    let docs: Vec<&Value> = petrel
        .iter()
        .filter(|(l, ..)| l.starts_with("GET /mmds"))
        .map(|(.., v)| v)
        .collect();
    assert_eq!(docs[0], &json!({}));
    let patched = json!({"latest": {"meta-data": {"ami-id": "ami-1", "x": "y"}}, "k": "v"});
    assert_eq!(docs[2], &patched);
    assert_eq!(docs[3], &patched);
    let cfg = &petrel
        .iter()
        .find(|(l, ..)| l.starts_with("GET /vm/config"))
        .unwrap()
        .2;
    assert_eq!(cfg["mmds-config"]["version"], "V2", "{cfg}");
    assert_eq!(cfg["mmds-config"]["ipv4_address"], "169.254.170.2", "{cfg}");

    let Some(_) = fc_support::firecracker_bin() else {
        petrel_tests::skip("the Firecracker binary is absent: petrel checked alone");
        return;
    };
    let fc = run(Which::Firecracker, &name);
    let mut diffs = Vec::new();
    for ((label, ps, pv), (_, fs, fv)) in petrel.iter().zip(&fc) {
        // GET /mmds must give the same document; other bodies the same shape.
        let same_doc = !label.starts_with("GET /mmds") || pv == fv;
        if ps != fs || !same_doc {
            diffs.push(format!(
                "{label}\n    petrel {ps:?} {pv}\n    firecracker {fs:?} {fv}"
            ));
        }
    }
    assert!(diffs.is_empty(), "answers differ:\n{}", diffs.join("\n"));
}

#[test]
fn metadata_file_fills_the_store_and_the_size_limit_holds() {
    let dir = ScratchDir::new("fcmmds-meta");
    let meta = dir.0.join("meta.json");
    std::fs::write(&meta, json!({"latest": {"user-data": "hello"}}).to_string()).unwrap();
    let meta = meta.to_string_lossy().into_owned();
    let mut vmm = Vmm::spawn(
        Which::Petrel,
        &dir.0,
        &["--metadata", &meta, "--mmds-size-limit", "100"],
    );
    assert!(
        vmm.wait_api(Duration::from_secs(10)),
        "no API\n{}",
        vmm.dump()
    );
    let r = vmm.call(Get, "/mmds", None);
    assert_eq!(
        r.json_body::<Value>().unwrap(),
        json!({"latest": {"user-data": "hello"}})
    );
    let r = vmm.call(
        Patch,
        "/mmds",
        Some(&json!({"more": "y".repeat(200)}).to_string()),
    );
    assert_eq!(r.status, 413, "a patch past the size limit");
    let msg = r.json_body::<Value>().unwrap()["fault_message"].to_string();
    assert!(msg.contains("100"), "{msg}");
    // A metadata file that is not JSON stops the start with its name.
    let bad = dir.0.join("bad.json");
    std::fs::write(&bad, "{nope").unwrap();
    let out = std::process::Command::new(petrel_tests::petrel_bin())
        .args(["--api-sock"])
        .arg(dir.0.join("b.sock"))
        .arg("--metadata")
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("bad.json"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Whether an Ethernet frame is ARP for, or IPv4 to, 169.254.169.254.
fn is_for_mmds(f: &[u8]) -> bool {
    let mmds = [169, 254, 169, 254];
    match f.get(12..14) {
        Some([0x08, 0x06]) => f.get(38..42) == Some(&mmds[..]),
        Some([0x08, 0x00]) => f.get(30..34) == Some(&mmds[..]),
        _ => false,
    }
}

#[test]
fn the_guest_reads_the_mmds_over_http_on_its_interface() {
    require_kvm!();
    let kernel = petrel_tests::guest_image(petrel_tests::GuestKind::Pvh);
    // petrel only: Firecracker's RX path does not deliver to this polling driver (as in
    // fc_guest.rs; here its ARP answer never reaches the guest), so there is nothing to
    // compare with.
    for which in [Which::Petrel] {
        let name = format!("pmg{}{}", std::process::id() % 100_000, which as u8);
        let Some(_tap) = with_tap(&name) else {
            return;
        };
        let sock = petrel_tests::host_net::PacketSocket::bind(&name).unwrap();
        let dir = ScratchDir::new(&format!("fcmmds-guest-{}", which as u8));
        let mut vmm = Vmm::spawn(which, &dir.0, &[]);
        assert!(
            vmm.wait_api(Duration::from_secs(10)),
            "no API\n{}",
            vmm.dump()
        );
        let calls = [
            (
                Put,
                "/boot-source",
                json!({"kernel_image_path": kernel, "boot_args": "action=mmds"}),
            ),
            (
                Put,
                "/machine-config",
                json!({"vcpu_count": 1, "mem_size_mib": 64}),
            ),
            (
                Put,
                "/network-interfaces/eth0",
                json!({"iface_id": "eth0", "host_dev_name": name, "guest_mac": "06:00:ac:10:00:02"}),
            ),
            (Put, "/mmds/config", json!({"network_interfaces": ["eth0"]})),
            (
                Put,
                "/mmds",
                json!({"latest": {"meta-data": {"ami-id": "ami-87654321"}}}),
            ),
            (Put, "/actions", json!({"action_type": "InstanceStart"})),
        ];
        for (method, path, body) in calls {
            let r = vmm.call(method, path, Some(&body.to_string()));
            assert_eq!(
                r.status,
                204,
                "{which:?} {path}: {}",
                String::from_utf8_lossy(&r.body)
            );
        }
        let done = vmm.wait_for(Duration::from_secs(120), |o| o.contains("VIRTIO: done"));
        let out = vmm.stdout();
        println!(
            "{which:?}:\n{}",
            out.lines()
                .filter(|l| l.starts_with("MMDS") || l.contains("error"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        assert!(done, "{which:?}: the guest did not finish\n{}", vmm.dump());
        for line in [
            "MMDS: connected",
            "MMDS: status 200",
            "MMDS: body ami-87654321",
        ] {
            assert!(out.contains(line), "{which:?}: no `{line}`\n{}", vmm.dump());
        }
        // Nothing of the exchange reached the tap.
        while let Ok(Some(frame)) = sock.recv(Duration::from_millis(200)) {
            assert!(
                !is_for_mmds(&frame),
                "{which:?}: an MMDS frame reached the tap"
            );
        }
    }
}
