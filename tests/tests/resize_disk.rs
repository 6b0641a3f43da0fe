//! `vm.resize-disk` (Cloud Hypervisor's route and body): a running guest's raw disk grows,
//! the guest gets the configuration-change interrupt and reads the new capacity, and writes
//! and reads the disk afterwards; bad requests are refused with the field or disk named and
//! change nothing.

mod api_support;
mod ch_support;

use std::time::Duration;

use api_support::{assert_error, guest_config, ApiVm};
use petrel_tests::require_kvm;
use serde_json::json;

#[test]
fn a_running_guest_sees_its_disk_grow() {
    require_kvm!();
    let mut vm = ApiVm::start("resize-disk", &[]);
    let disk = vm.dir.0.join("disk.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let ro = vm.dir.0.join("ro.img");
    std::fs::write(&ro, vec![0u8; 1 << 20]).unwrap();
    let mut cfg = guest_config("action=virtio-blk-swap");
    cfg["disks"] =
        json!([{"path": disk, "id": "disk0"}, {"path": ro, "id": "ro", "readonly": true}]);
    cfg["platform"] = json!({"virtio_mmio_cmdline": true});
    vm.put_ok("vm.create", Some(&cfg), 204);
    // Before boot there is no device to grow.
    let body = json!({"id": "disk0", "desired_size": 4u64 << 20});
    let r = vm.put("vm.resize-disk", Some(&body));
    assert!(r.status >= 400 && r.status < 500, "{r:?}");
    vm.put_ok("vm.boot", None, 204);
    assert!(
        vm.petrel.wait_for_stdout(Duration::from_secs(20), |out| {
            out.contains("VIRTIO: blk swap-wait capacity=2048")
        }),
        "the guest did not start waiting\n{}",
        vm.petrel.stdout()
    );

    // Refusals: nothing changes.
    for (body, names) in [
        (json!({"id": "nope", "desired_size": 4u64 << 20}), "nope"),
        (
            json!({"id": "disk0", "desired_size": 512u64 << 10}),
            "shrink",
        ),
        (
            json!({"id": "disk0", "desired_size": (2u64 << 20) + 100}),
            "sectors",
        ),
        (json!({"id": "ro", "desired_size": 4u64 << 20}), "read-only"),
        (json!({"id": "disk0", "size": 4u64 << 20}), "size"),
    ] {
        let r = vm.put("vm.resize-disk", Some(&body));
        assert_error(&r, 400, &[names], &body.to_string());
    }
    assert_eq!(std::fs::metadata(&disk).unwrap().len(), 1 << 20);
    assert!(!vm.petrel.stdout().contains("blk swapped"));

    vm.put_ok("vm.resize-disk", Some(&body), 204);
    assert!(
        vm.petrel.wait_for_stdout(Duration::from_secs(20), |out| {
            out.contains("VIRTIO: blk swapped capacity=8192")
        }),
        "the guest did not see the new size\n{}",
        vm.petrel.stdout()
    );
    assert!(
        vm.petrel.wait_for_stdout(Duration::from_secs(20), |out| {
            out.contains("VIRTIO: blk write-read ok") || out.contains("VIRTIO: error")
        }),
        "{}",
        vm.petrel.stdout()
    );
    let out = vm.petrel.stdout();
    assert!(!out.contains("VIRTIO: error"), "{out}");
    assert_eq!(std::fs::metadata(&disk).unwrap().len(), 4 << 20);
    let _ = vm.shutdown_vmm();
}

#[test]
fn ch_remote_resize_disk_grows_the_guests_disk() {
    require_kvm!();
    let Some(ch_remote) = ch_support::ch_remote_bin() else {
        petrel_tests::skip("ch-remote not found (PETREL_CH_REMOTE, PATH or ../shared/peers/bin)");
        return;
    };
    let mut vm = ApiVm::start("resize-disk-ch", &[]);
    let disk = vm.dir.0.join("disk.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let mut cfg = guest_config("action=virtio-blk-swap");
    cfg["disks"] = json!([{"path": disk, "id": "disk0"}]);
    cfg["platform"] = json!({"virtio_mmio_cmdline": true});
    vm.put_ok("vm.create", Some(&cfg), 204);
    vm.put_ok("vm.boot", None, 204);
    assert!(
        vm.petrel.wait_for_stdout(Duration::from_secs(20), |out| {
            out.contains("VIRTIO: blk swap-wait capacity=2048")
        }),
        "{}",
        vm.petrel.stdout()
    );
    let socket = vm.dir.0.join("api.sock");
    let bad = ch_support::ch_remote(
        &ch_remote,
        &socket,
        &["resize-disk", "--disk", "nope", "--size", "4194304"],
    );
    assert_ne!(bad.code, Some(0), "{bad:?}");
    assert!(
        bad.stderr.contains("nope"),
        "ch-remote shows petrel's message: {bad:?}"
    );
    let ok = ch_support::ch_remote(
        &ch_remote,
        &socket,
        &["resize-disk", "--disk", "disk0", "--size", "4194304"],
    );
    assert_eq!(ok.code, Some(0), "{ok:?}");
    assert!(
        vm.petrel.wait_for_stdout(Duration::from_secs(20), |out| {
            out.contains("VIRTIO: blk swapped capacity=8192")
        }),
        "{}",
        vm.petrel.stdout()
    );
    assert_eq!(std::fs::metadata(&disk).unwrap().len(), 4 << 20);
    let _ = vm.shutdown_vmm();
}
