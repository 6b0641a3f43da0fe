//! Landlock under the API: a petrel serving `--api-socket` with `--landlock` (Cloud
//! Hypervisor's flag; off by default under an API, as there) limits its main thread to the files
//! of the VM it boots first (plus its socket's directory), so a later VM in the same process
//! that names another host file is refused with an error naming it, while the first VM's
//! files still work (a second boot of the same config), and the kernel refuses a snapshot
//! outside the allowed set (a path no API-level check looks at).

mod api_support;

use api_support::{assert_error, guest_config, ApiVm, ScratchDir};
use petrel_tests::guest_actions::{count_values, GUEST_BOOT_TIMEOUT};
use petrel_tests::require_kvm;
use serde_json::json;

fn boot_and_count(vm: &mut ApiVm, cfg: &serde_json::Value) {
    vm.put_ok("vm.create", Some(cfg), 204);
    vm.put_ok("vm.boot", None, 204);
    let before = count_values(&vm.petrel.stdout()).len();
    assert!(
        vm.petrel.wait_for_stdout(GUEST_BOOT_TIMEOUT, |out| {
            count_values(out).len() >= before + 3
        }),
        "the guest does not count\n{}",
        vm.petrel.stderr()
    );
    vm.put_ok("vm.shutdown", None, 204);
    vm.put_ok("vm.delete", None, 204);
}

#[test]
fn after_its_first_boot_petrel_opens_only_that_vms_files() {
    require_kvm!();
    let mut vm = ApiVm::start("ll-api", &["--landlock"]);
    let cfg = guest_config("action=count");
    boot_and_count(&mut vm, &cfg);
    // The same files again: allowed.
    boot_and_count(&mut vm, &cfg);

    // Another kernel (the same bytes, elsewhere on the host): refused, naming it.
    let other = ScratchDir::new("ll-other");
    let kernel = other.0.join("other.elf");
    let first = cfg["payload"]["kernel"].as_str().unwrap();
    std::fs::copy(first, &kernel).unwrap();
    let mut moved = cfg.clone();
    moved["payload"]["kernel"] = json!(kernel);
    let k = kernel.to_str().unwrap();
    assert_error(
        &vm.put("vm.create", Some(&moved)),
        400,
        &["landlock", k],
        "another kernel",
    );

    // A host file as a disk: refused the same way.
    let mut passwd = cfg.clone();
    passwd["disks"] = json!([{"path": "/etc/passwd", "readonly": true}]);
    let r = vm.put("vm.create", Some(&passwd));
    assert_error(&r, 400, &["landlock", "/etc/passwd"], "/etc/passwd");

    // The kernel itself enforces it (no API-level check on this path): a snapshot into a
    // directory outside the allowed set fails, one into the socket's directory works.
    vm.put_ok("vm.create", Some(&cfg), 204);
    vm.put_ok("vm.boot", None, 204);
    vm.put_ok("vm.pause", None, 204);
    let outside = other.0.join("snap");
    let r = vm.put(
        "vm.snapshot",
        Some(&json!({"destination_url": format!("file://{}", outside.display())})),
    );
    assert_ne!(
        r.status, 204,
        "a snapshot outside the allowed files was written"
    );
    assert!(
        r.error_message().contains("Permission denied"),
        "{}",
        r.error_message()
    );
    assert!(!outside.exists(), "{} was created", outside.display());
    let inside = vm.dir.0.join("snap");
    let body = json!({"destination_url": format!("file://{}", inside.display())});
    vm.put_ok("vm.snapshot", Some(&body), 204);
    vm.put_ok("vm.shutdown", None, 204);
    vm.put_ok("vm.delete", None, 204);

    // And the first VM still boots.
    boot_and_count(&mut vm, &cfg);
    let (run, _dir) = vm.shutdown_vmm();
    assert!(
        run.stderr.contains("landlock: main thread limited"),
        "{}",
        run.stderr
    );
}

#[test]
fn without_landlock_an_api_petrel_writes_snapshots_where_it_is_told() {
    require_kvm!();
    // Cloud Hypervisor's default: no Landlock unless asked, so `ch-remote snapshot` to any
    // directory works.
    let vm = ApiVm::start("ll-off", &[]);
    let cfg = guest_config("action=count");
    vm.put_ok("vm.create", Some(&cfg), 204);
    vm.put_ok("vm.boot", None, 204);
    vm.put_ok("vm.pause", None, 204);
    let other = ScratchDir::new("ll-off-other");
    let outside = other.0.join("snap");
    let body = json!({"destination_url": format!("file://{}", outside.display())});
    vm.put_ok("vm.snapshot", Some(&body), 204);
    assert!(
        outside.join("state.json").exists()
            || outside.read_dir().is_ok_and(|mut d| d.next().is_some())
    );
    let (run, _dir) = vm.shutdown_vmm();
    assert!(
        !run.stderr.contains("landlock: main thread limited"),
        "{}",
        run.stderr
    );
}
