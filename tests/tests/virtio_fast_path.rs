//! The virtio fast path under the real `petrel` binary: the test guest's virtio-blk and
//! virtio-rng drivers kick their queues with 4-byte QueueNotify writes, which the hypervisor
//! must turn into ioeventfd signals. `vm.counters` counts the notifications that reached the
//! transport instead (`notify_slow_path`, a vCPU exit each); it must stay 0. The same over
//! virtio-pci, whose notifications are 2-byte writes.

mod api_support;

use std::time::Duration;

use api_support::{guest_config, tail, ApiVm};
use petrel_tests::require_kvm;
use serde_json::json;

#[test]
fn queue_notifications_never_take_the_slow_path() {
    fast_path("fast-path", json!({"virtio_mmio_cmdline": true}));
}

/// virtio-pci: the notification is a 2-byte write at the queue's notify address (after the
/// guest moved BAR 0, so the ioeventfd moved too).
#[test]
fn virtio_pci_queue_notifications_never_take_the_slow_path() {
    fast_path("fast-path-pci", json!({"transport": "pci"}));
}

fn fast_path(name: &str, platform: serde_json::Value) {
    require_kvm!();
    let vm = ApiVm::start(name, &[]);
    let disk = vm.dir.0.join("disk.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let mut cfg = guest_config("action=virtio-blk");
    cfg["disks"] = json!([{"path": disk, "id": "disk0"}]);
    cfg["platform"] = platform;
    vm.put_ok("vm.create", Some(&cfg), 204);
    vm.put_ok("vm.boot", None, 204);
    assert!(
        vm.wait_state("Shutdown", Duration::from_secs(120)),
        "the guest did not power off\n{}\n{}",
        tail(&vm.petrel.stdout()),
        vm.petrel.stderr()
    );
    let out = vm.petrel.stdout();
    assert!(
        out.contains("VIRTIO: blk write-read ok"),
        "the guest's virtio-blk driver did not finish\n{}",
        tail(&out)
    );

    let counters = vm.get_json("vm.counters");
    let disk0 = &counters["disk0"];
    assert!(
        disk0["read_bytes"].as_u64().is_some_and(|n| n > 0),
        "the guest read nothing: {counters}"
    );
    assert_eq!(
        disk0["notify_slow_path"].as_u64(),
        Some(0),
        "disk0: queue notifications reached the transport (a vCPU exit each): {counters}"
    );
    let _ = vm.shutdown_vmm();
}
