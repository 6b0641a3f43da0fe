//! `vm.restore` of a VM whose interface was a tap descriptor (`vm.add-net` with SCM_RIGHTS):
//! the descriptor did not outlive the snapshotted process, so a restore without a new one is
//! refused naming `net_fds`, and one with `net_fds` and a new tap (SCM_RIGHTS) runs the
//! guest's virtio-net driver on it: a frame sent to the new tap reaches the guest, which was
//! waiting for it when it was snapshotted.

mod api_support;

use std::os::fd::AsFd;
use std::path::Path;
use std::time::Duration;

use api_support::{assert_error, guest_config, tail, ApiVm};
use petrel_http::Method;
use petrel_tests::guest_actions::GUEST_BOOT_TIMEOUT;
use petrel_tests::host_net::{parse_mac, test_frame, PacketSocket, TapFd, TUN_DEVICE};
use petrel_tests::require_kvm;
use serde_json::json;

fn tap(prefix: &str) -> Option<TapFd> {
    let name = format!("{prefix}{}", std::process::id() % 1_000_000);
    match TapFd::open(&name) {
        Ok(t) => Some(t),
        Err(e) => {
            petrel_tests::skip(format!("cannot create tap {name}: {e}"));
            None
        }
    }
}

#[test]
fn a_tap_descriptor_interface_is_restored_on_a_new_descriptor() {
    require_kvm!();
    if !Path::new(TUN_DEVICE).exists() {
        petrel_tests::skip(format!("{TUN_DEVICE} not available"));
        return;
    }
    let Some(first_tap) = tap("psa") else { return };
    let mut vm = ApiVm::start("snap-net-src", &[]);
    let mut cfg = guest_config("action=virtio-net");
    cfg["platform"] = json!({"virtio_mmio_cmdline": true});
    vm.put_ok("vm.create", Some(&cfg), 204);
    let r = vm
        .client
        .request_with_fds(
            Method::Put,
            "/api/v1/vm.add-net",
            Some(br#"{"id":"net9"}"#),
            &[first_tap.as_fd()],
        )
        .unwrap();
    assert_eq!(r.status, 204, "vm.add-net: {}", r.error_message());
    vm.put_ok("vm.boot", None, 204);
    assert!(
        vm.petrel
            .wait_for_stdout(GUEST_BOOT_TIMEOUT, |s| s.contains("VIRTIO: net tx ok")),
        "no `VIRTIO: net tx ok`\n{}",
        tail(&vm.petrel.stdout())
    );
    // The guest now polls its RX queue for the host's answer.
    vm.put_ok("vm.pause", None, 204);
    let out = vm.petrel.stdout();
    let mac = out
        .lines()
        .find_map(|l| l.strip_prefix("VIRTIO: net mac="))
        .and_then(parse_mac)
        .unwrap_or_else(|| panic!("no `VIRTIO: net mac=` line\n{out}"));
    let snap = vm.dir.0.join("snap");
    let url = format!("file://{}", snap.display());
    vm.put_ok("vm.snapshot", Some(&json!({"destination_url": url})), 204);
    let source_dir = vm.dir.0.clone();
    let _keep = std::mem::replace(&mut vm.dir.0, std::env::temp_dir().join("petrel-none"));
    drop(vm);
    drop(first_tap);

    // Without a new descriptor: refused, naming what to pass; nothing is left.
    let restored = ApiVm::start("snap-net-dst", &[]);
    let r = restored.put("vm.restore", Some(&json!({"source_url": url})));
    assert_error(
        &r,
        400,
        &["net[0]", "tap descriptor", "net_fds"],
        "restore without net_fds",
    );
    assert_eq!(restored.state(), None);
    let Some(second_tap) = tap("psb") else { return };
    let sock = PacketSocket::bind(second_tap.name()).unwrap();
    // A count that does not match the descriptors sent is refused too.
    let body = json!({"source_url": url, "net_fds": [{"id": "net9", "num_fds": 1}]});
    let r = restored.put("vm.restore", Some(&body));
    assert_error(
        &r,
        400,
        &["net_fds", "1 descriptors", "0 came"],
        "no descriptor",
    );
    let bytes = body.to_string();
    let r = restored
        .client
        .request_with_fds(
            Method::Put,
            "/api/v1/vm.restore",
            Some(bytes.as_bytes()),
            &[second_tap.as_fd()],
        )
        .unwrap();
    assert_eq!(r.status, 204, "vm.restore: {}", r.error_message());
    restored.put_ok("vm.resume", None, 204);
    let host_mac = [0x02, 0x50, 0x45, 0x54, 0x00, 0x0b];
    sock.send(&test_frame(mac, host_mac, b"PETREL-NET-RX restored"))
        .unwrap();
    let mut restored = restored;
    assert!(
        restored
            .petrel
            .wait_for_stdout(Duration::from_secs(30), |s| {
                s.contains("VIRTIO: net rx PETREL-NET-RX restored")
            }),
        "the restored guest did not get the frame sent on the new tap\n{}\n{}",
        tail(&restored.petrel.stdout()),
        restored.petrel.stderr()
    );
    assert!(!restored.petrel.stdout().contains("VIRTIO: error"));
    drop(restored);
    let _ = std::fs::remove_dir_all(source_dir);
}
