//! The per-VM API's refusals, against the real `petrel` binary: a call in the wrong state is a
//! 409 naming the state (404 with no VM); bad bodies, paths and methods are 4xx naming what
//! is wrong; slow and half-open clients neither block other clients nor crash the server.

mod api_support;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use api_support::{assert_error, guest_config, ApiVm};
use petrel_http::Method;
use petrel_tests::require_kvm;
use serde_json::json;

/// The server's read timeout is 5 s; a connection it times out must be closed well within this.
const CUT_OFF_WITHIN: Duration = Duration::from_secs(15);
/// A ping while other clients stall must be answered about as fast as ever.
const PROMPT: Duration = Duration::from_secs(2);

/// Every route that changes the VM, with no VM: 404 naming the state.
#[test]
fn calls_in_the_wrong_state_name_the_state() {
    require_kvm!();
    let vm = ApiVm::start("api-state", &[]);
    for op in [
        "vm.boot",
        "vm.pause",
        "vm.resume",
        "vm.reboot",
        "vm.shutdown",
        "vm.power-button",
        "vm.delete",
    ] {
        assert_error(&vm.put(op, None), 404, &[op, "NotCreated"], op);
    }
    assert_error(&vm.get("vm.info"), 404, &["NotCreated"], "vm.info");
    let disk = json!({"path": "/dev/null"});
    assert_error(
        &vm.put("vm.add-disk", Some(&disk)),
        404,
        &["NotCreated"],
        "add-disk",
    );

    // Created.
    let cfg = guest_config("action=halt");
    vm.put_ok("vm.create", Some(&cfg), 204);
    assert_error(
        &vm.put("vm.create", Some(&cfg)),
        409,
        &["Created"],
        "create twice",
    );
    assert_error(
        &vm.put("vm.pause", None),
        409,
        &["vm.pause", "Created"],
        "pause",
    );
    assert_error(&vm.put("vm.resume", None), 409, &["Created"], "resume");
    assert_error(&vm.put("vm.shutdown", None), 409, &["Created"], "shutdown");
    assert_error(&vm.put("vm.reboot", None), 409, &["Created"], "reboot");
    let resize = json!({"desired_balloon": 1u64 << 20});
    assert_error(
        &vm.put("vm.resize", Some(&resize)),
        400,
        &["balloon"],
        "resize without a balloon (Created)",
    );

    // Running.
    vm.put_ok("vm.boot", None, 204);
    assert_error(
        &vm.put("vm.boot", None),
        409,
        &["vm.boot", "Running"],
        "boot twice",
    );
    assert_error(
        &vm.put("vm.resume", None),
        409,
        &["Running"],
        "resume running",
    );
    assert_error(
        &vm.put("vm.create", Some(&cfg)),
        409,
        &["Running"],
        "create running",
    );
    assert_error(
        &vm.put("vm.add-disk", Some(&disk)),
        409,
        &["Running", "hotplug"],
        "add-disk running",
    );
    assert_error(
        &vm.put("vm.resize", Some(&resize)),
        400,
        &["balloon"],
        "resize without a balloon (Running)",
    );

    // Paused.
    vm.put_ok("vm.pause", None, 204);
    assert_error(&vm.put("vm.pause", None), 409, &["Paused"], "pause twice");
    assert_error(&vm.put("vm.boot", None), 409, &["Paused"], "boot paused");
    assert_error(
        &vm.put("vm.power-button", None),
        409,
        &["Paused"],
        "button paused",
    );

    // Shutdown.
    vm.put_ok("vm.shutdown", None, 204);
    assert_error(
        &vm.put("vm.shutdown", None),
        409,
        &["Shutdown"],
        "shutdown twice",
    );
    assert_error(
        &vm.put("vm.pause", None),
        409,
        &["Shutdown"],
        "pause stopped",
    );
    assert_error(
        &vm.put("vm.resume", None),
        409,
        &["Shutdown"],
        "resume stopped",
    );
    vm.assert_state("Shutdown");
    vm.shutdown_vmm();
}

#[test]
fn bad_requests_are_4xx_naming_what_is_wrong() {
    require_kvm!();
    let vm = ApiVm::start("api-bad", &[]);
    let create = |body: &[u8]| vm.put_raw("vm.create", Some(body));

    assert_error(&create(br#"{"payload":"#), 400, &["JSON"], "malformed JSON");
    assert_error(&create(b"[1, 2"), 400, &[], "malformed JSON (array)");
    assert_error(
        &create(br#"{"cpus":{"boot_vcpus":"two"}}"#),
        400,
        &["cpus", "invalid type"],
        "wrong type",
    );
    let kernel = petrel_tests::guest_image(petrel_tests::GuestKind::Pvh);
    let with = |extra: serde_json::Value| {
        let mut cfg = json!({"payload": {"kernel": kernel}});
        for (k, v) in extra.as_object().unwrap() {
            cfg[k] = v.clone();
        }
        vm.put("vm.create", Some(&cfg))
    };
    assert_error(
        &with(json!({"colour": 1})),
        400,
        &["colour"],
        "unknown field",
    );
    assert_error(
        &with(json!({"memory": {"size": 64u64 << 20, "frobnicate": true}})),
        400,
        &["frobnicate"],
        "unknown nested field",
    );
    assert_error(
        &with(json!({"memory": {"size": 64u64 << 20, "hugepages": true}})),
        400,
        &["memory.hugepages"],
        "unsupported field with a non-default value",
    );
    let missing = "/nonexistent/petrel-kernel";
    let r = vm.put("vm.create", Some(&json!({"payload": {"kernel": missing}})));
    assert_error(&r, 400, &[missing], "missing kernel");
    assert_eq!(vm.state(), None, "a refused vm.create created a VM");

    // Body over the limit (1 MiB): 413, the connection may be closed, the server lives.
    let mut big = br#"{"payload":{"kernel":""#.to_vec();
    big.resize(2 << 20, b'a');
    big.extend_from_slice(br#""}}"#);
    assert_error(&create(&big), 413, &[], "2 MiB body");

    // Unknown paths and wrong methods.
    for path in [
        "/api/v1/vm.coredump",
        "/api/v1/nope",
        "/api/v2/vmm.ping",
        "/",
    ] {
        let r = vm.client.get(path).unwrap();
        assert_eq!(r.status, 404, "GET {path}: {}", r.error_message());
    }
    let r = vm.client.get("/api/v1/vm.boot").unwrap();
    assert_error(&r, 405, &["PUT"], "GET vm.boot");
    let r = vm
        .client
        .request(Method::Put, "/api/v1/vmm.ping", None)
        .unwrap();
    assert_eq!(r.status, 405, "PUT vmm.ping: {}", r.error_message());

    // An unsupported field at its default is accepted.
    vm.put_ok(
        "vm.create",
        Some(&json!({"payload": {"kernel": kernel}, "memory": {"size": 64u64 << 20, "hugepages": false}})),
        204,
    );
    assert_eq!(vm.get("vmm.ping").status, 200);
    vm.shutdown_vmm();
}

/// Reads from `s` until the peer closes it (true) or `within` passes (false). Whatever the
/// server sends first (e.g. a 408) is returned too.
fn closed_by_peer(s: &mut UnixStream, within: Duration) -> (bool, String) {
    let deadline = Instant::now() + within;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return (false, String::from_utf8_lossy(&got).into_owned());
        }
        s.set_read_timeout(Some(left)).unwrap();
        match s.read(&mut buf) {
            Ok(0) => return (true, String::from_utf8_lossy(&got).into_owned()),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return (false, String::from_utf8_lossy(&got).into_owned())
            }
            // ECONNRESET and the like: closed by the peer too.
            Err(_) => return (true, String::from_utf8_lossy(&got).into_owned()),
        }
    }
}

#[test]
fn idle_and_half_open_clients_do_not_block_others() {
    require_kvm!();
    let vm = ApiVm::start("api-slow", &[]);
    // One client connects and says nothing; another sends half a request and stops.
    let mut idle = UnixStream::connect(&vm.socket).unwrap();
    let mut half = UnixStream::connect(&vm.socket).unwrap();
    half.write_all(
        b"PUT /api/v1/vm.create HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100\r\n\r\n{\"pay",
    )
    .unwrap();
    let mut partial_head = UnixStream::connect(&vm.socket).unwrap();
    partial_head.write_all(b"GET /api/v1/vmm.pi").unwrap();
    std::thread::sleep(Duration::from_millis(100));

    for _ in 0..5 {
        let t = Instant::now();
        let r = vm.get("vmm.ping");
        assert_eq!(r.status, 200);
        assert!(
            t.elapsed() < PROMPT,
            "vmm.ping took {:?} while other clients stalled",
            t.elapsed()
        );
    }

    // The server cuts the stalled ones off.
    for (name, s) in [
        ("idle", &mut idle),
        ("half body", &mut half),
        ("half head", &mut partial_head),
    ] {
        let (closed, got) = closed_by_peer(s, CUT_OFF_WITHIN);
        assert!(closed, "the {name} client was not cut off (got {got:?})");
        assert!(
            got.is_empty() || got.starts_with("HTTP/1.1 408") || got.starts_with("HTTP/1.1 400"),
            "{name}: {got:?}"
        );
    }
    assert_eq!(
        vm.get("vmm.ping").status,
        200,
        "no answer after the cut-offs"
    );
    vm.shutdown_vmm();
}
