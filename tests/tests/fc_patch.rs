//! `PATCH /drives/{id}` and `PATCH /network-interfaces/{id}` changing rate limiters of the
//! running microVM (petrel in Firecracker's dialect): the counting guest (`action=count-blk`,
//! one disk write per count) slows to the new limit at once and speeds up again when it is
//! lifted; the change shows in `GET /vm/config`; an interface's limiters change on the
//! running device, each direction on its own. Rates are printed; the assertions leave a wide margin.

mod fc_support;

use std::path::Path;
use std::time::{Duration, Instant};

use fc_support::{assert_fault, ScratchDir, Tap, Vmm, Which};
use petrel_http::Method::{Get, Patch, Put};
use petrel_tests::guest_actions::count_values;
use petrel_tests::host_net::TUN_DEVICE;
use petrel_tests::{require_kvm, GuestKind};
use serde_json::{json, Value};

const TIMEOUT: Duration = Duration::from_secs(120);

#[track_caller]
fn ok(vmm: &Vmm, method: petrel_http::Method, path: &str, body: Value) {
    let r = vmm.call(method, path, Some(&body.to_string()));
    assert_eq!(
        r.status,
        204,
        "{path}: {}\n{}",
        String::from_utf8_lossy(&r.body),
        vmm.dump()
    );
}

/// COUNT lines the guest prints during `d`.
fn counts_in(vmm: &Vmm, d: Duration) -> usize {
    let before = count_values(&vmm.stdout()).len();
    let t = Instant::now();
    std::thread::sleep(d);
    let n = count_values(&vmm.stdout()).len() - before;
    println!("{n} counts in {:?}", t.elapsed());
    n
}

#[test]
fn patch_drive_rate_limiter_slows_and_frees_the_running_guest() {
    require_kvm!();
    let dir = ScratchDir::new("fcpatch-blk");
    let disk = dir.0.join("disk.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let mut vmm = Vmm::spawn(Which::Petrel, &dir.0, &[]);
    assert!(
        vmm.wait_api(Duration::from_secs(10)),
        "no API\n{}",
        vmm.dump()
    );
    let kernel = petrel_tests::guest_image(GuestKind::Pvh);
    ok(
        &vmm,
        Put,
        "/boot-source",
        json!({"kernel_image_path": kernel, "boot_args": "action=count-blk"}),
    );
    ok(
        &vmm,
        Put,
        "/drives/disk0",
        json!({"drive_id": "disk0", "path_on_host": disk, "is_root_device": false}),
    );
    // Before start a PATCH is refused, as Firecracker does.
    let r = vmm.call(
        Patch,
        "/drives/disk0",
        Some(&json!({"drive_id": "disk0", "rate_limiter": {}}).to_string()),
    );
    assert_fault(&r, "PATCH /drives before start");
    ok(
        &vmm,
        Put,
        "/actions",
        json!({"action_type": "InstanceStart"}),
    );
    assert!(
        vmm.wait_for(TIMEOUT, |o| count_values(o).len() >= 20),
        "not counting\n{}",
        vmm.dump()
    );
    let window = Duration::from_secs(4);
    let free = counts_in(&vmm, window);
    // One operation per 20 s (one write per count): after the bucket's one token, the guest
    // waits for the limiter, whatever its own speed.
    ok(
        &vmm,
        Patch,
        "/drives/disk0",
        json!({"drive_id": "disk0",
               "rate_limiter": {"ops": {"size": 1, "refill_time": 20000}}}),
    );
    std::thread::sleep(Duration::from_millis(500));
    let limited = counts_in(&vmm, window);
    assert!(
        limited <= 1,
        "{limited} counts in {window:?} under a limit of one write per 20 s (free: {free})"
    );
    assert!(
        free >= 3,
        "the guest counted only {free} times in {window:?} without a limit"
    );
    let cfg = vmm
        .call(Get, "/vm/config", None)
        .json_body::<Value>()
        .unwrap();
    assert_eq!(cfg["drives"][0]["rate_limiter"]["ops"]["size"], 1, "{cfg}");
    // A bucket of size 0 lifts the limit at once (not at the old limit's next refill).
    ok(
        &vmm,
        Patch,
        "/drives/disk0",
        json!({"drive_id": "disk0",
               "rate_limiter": {"ops": {"size": 0, "refill_time": 0}}}),
    );
    let again = counts_in(&vmm, window);
    assert!(
        again >= 3 && again > limited,
        "still limited after the lift: {again} in {window:?} (limited: {limited})"
    );
    let cfg = vmm
        .call(Get, "/vm/config", None)
        .json_body::<Value>()
        .unwrap();
    assert!(cfg["drives"][0].get("rate_limiter").is_none(), "{cfg}");
    // Unknown drive, id mismatch: refused.
    let r = vmm.call(
        Patch,
        "/drives/nope",
        Some(&json!({"drive_id": "nope", "rate_limiter": {}}).to_string()),
    );
    assert_fault(&r, "PATCH an unknown drive");
}

#[test]
fn patch_network_interface_rate_limiters_on_the_running_device() {
    require_kvm!();
    if !Path::new(TUN_DEVICE).exists() {
        petrel_tests::skip(format!("{TUN_DEVICE} not available"));
        return;
    }
    let name = format!("ppt{}", std::process::id() % 100_000);
    let _tap = match Tap::create(&name) {
        Ok(t) => t,
        Err(e) => {
            petrel_tests::skip(format!("cannot create tap {name}: {e}"));
            return;
        }
    };
    let dir = ScratchDir::new("fcpatch-net");
    let mut vmm = Vmm::spawn(Which::Petrel, &dir.0, &[]);
    assert!(
        vmm.wait_api(Duration::from_secs(10)),
        "no API\n{}",
        vmm.dump()
    );
    let kernel = petrel_tests::guest_image(GuestKind::Pvh);
    ok(
        &vmm,
        Put,
        "/boot-source",
        json!({"kernel_image_path": kernel, "boot_args": "action=ctrl-alt-del"}),
    );
    ok(
        &vmm,
        Put,
        "/network-interfaces/eth0",
        json!({"iface_id": "eth0", "host_dev_name": name}),
    );
    ok(
        &vmm,
        Put,
        "/actions",
        json!({"action_type": "InstanceStart"}),
    );
    let limit = json!({"bandwidth": {"size": 100000, "refill_time": 100}});
    ok(
        &vmm,
        Patch,
        "/network-interfaces/eth0",
        json!({"iface_id": "eth0", "rx_rate_limiter": limit, "tx_rate_limiter": limit}),
    );
    let cfg = vmm
        .call(Get, "/vm/config", None)
        .json_body::<Value>()
        .unwrap();
    assert_eq!(
        cfg["network-interfaces"][0]["tx_rate_limiter"]["bandwidth"]["size"], 100000,
        "{cfg}"
    );
    // One direction alone: RX gets its own limiter, TX keeps the bandwidth one.
    ok(
        &vmm,
        Patch,
        "/network-interfaces/eth0",
        json!({"iface_id": "eth0",
               "rx_rate_limiter": {"ops": {"size": 5, "refill_time": 100}}}),
    );
    let cfg = vmm
        .call(Get, "/vm/config", None)
        .json_body::<Value>()
        .unwrap();
    let iface = &cfg["network-interfaces"][0];
    assert_eq!(
        iface["rx_rate_limiter"],
        json!({"bandwidth": {"size": 100000, "refill_time": 100},
               "ops": {"size": 5, "refill_time": 100}}),
        "{cfg}"
    );
    assert_eq!(
        iface["tx_rate_limiter"],
        json!({"bandwidth": {"size": 100000, "refill_time": 100}}),
        "{cfg}"
    );
    let r = vmm.call(
        Patch,
        "/network-interfaces/eth1",
        Some(&json!({"iface_id": "eth1"}).to_string()),
    );
    assert_fault(&r, "PATCH an unknown interface");
    let after = vmm
        .call(Get, "/vm/config", None)
        .json_body::<Value>()
        .unwrap();
    assert_eq!(cfg["network-interfaces"], after["network-interfaces"]);
    ok(
        &vmm,
        Put,
        "/actions",
        json!({"action_type": "SendCtrlAltDel"}),
    );
    assert!(
        vmm.wait_exit(TIMEOUT).is_some_and(|s| s.success()),
        "{}",
        vmm.dump()
    );
}
