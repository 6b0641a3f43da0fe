//! A Linux guest started through Firecracker's dialect (`--api-sock`, `PUT /boot-source`,
//! `PUT /machine-config`, `InstanceStart`): Linux finds the i8042 through the DSDT's `PNP0303`
//! (no `i8042.nopnp` needed), `atkbd` binds a keyboard, and `SendCtrlAltDel` reaches it: the
//! kernel restarts (`reboot=k`, through the i8042), which ends petrel with status 0, as it ends
//! Firecracker.
//!
//! Skips visibly like the other full boots (no `/dev/kvm`, no kit, guest ring 0 emulated).

mod fc_support;

use std::time::Duration;

use fc_support::{Vmm, Which};
use petrel_http::Method::Put;
use petrel_tests::linux_guest::{initramfs_with_hooks, Scratch};
use petrel_tests::{linux_kit_or_skip, ring0_native};
use serde_json::{json, Value};

const TEST: &str = "linux_fc_ctrl_alt_del";
/// Longest wait for the boot (nested TCG on a busy machine included).
const BOOT: Duration = Duration::from_secs(240);

/// Reports the serio ports and whether a keyboard registered, then waits for the host.
const KBD_HOOK: &str = r#"
i=0
while ! grep -q 'keyboard' /proc/bus/input/devices 2>/dev/null && [ "$i" -lt 100 ]; do
    sleep 0.1; i=$((i + 1))
done
echo "PETREL-KBD: serio=$(ls /sys/bus/serio/devices 2>/dev/null | tr '\n' ' ')"
echo "PETREL-KBD: input=$(sed -n 's/^N: Name="\(.*\)"/\1/p' /proc/bus/input/devices | tr '\n' ',')"
echo "PETREL-KBD: ready"
while :; do sleep 1; done
"#;

#[test]
fn linux_fc_ctrl_alt_del() {
    let Some(kit) = linux_kit_or_skip(TEST) else {
        return;
    };
    if !ring0_native(TEST) {
        return;
    }
    let dir = Scratch::new(TEST);
    let initramfs = initramfs_with_hooks(kit, &dir.0, &[("40-kbd.sh", KBD_HOOK)])
        .unwrap_or_else(|e| panic!("{TEST}: cannot write the initramfs: {e}"));
    let mut vmm = Vmm::spawn(Which::Petrel, &dir.0, &[]);
    assert!(
        vmm.wait_api(Duration::from_secs(20)),
        "{TEST}: no API\n{}",
        vmm.dump()
    );
    let put = |vmm: &Vmm, path: &str, body: Value| {
        let r = vmm.call(Put, path, Some(&body.to_string()));
        assert_eq!(
            r.status,
            204,
            "{TEST}: PUT {path}: {}\n{}",
            String::from_utf8_lossy(&r.body),
            vmm.dump()
        );
    };
    let args = petrel_tests::linux_guest::kernel_cmdline("console=ttyS0 reboot=k panic=-1");
    put(
        &vmm,
        "/boot-source",
        json!({"kernel_image_path": kit.vmlinux, "initrd_path": initramfs, "boot_args": args}),
    );
    put(
        &vmm,
        "/machine-config",
        json!({"vcpu_count": 1, "mem_size_mib": 256}),
    );
    put(&vmm, "/actions", json!({"action_type": "InstanceStart"}));
    assert!(
        vmm.wait_for(BOOT, |o| o.contains("PETREL-KBD: ready")),
        "{TEST}: the guest did not reach its hook\n{}",
        vmm.dump()
    );
    let out = vmm.stdout();
    let line = |prefix: &str| {
        out.lines()
            .find_map(|l| l.trim_end().strip_prefix(prefix))
            .unwrap_or("")
            .to_string()
    };
    eprintln!(
        "{TEST}: serio ports: {}; input devices: {}",
        line("PETREL-KBD: serio="),
        line("PETREL-KBD: input=")
    );
    assert!(
        line("PETREL-KBD: serio=").contains("serio0"),
        "{TEST}: Linux did not probe the i8042\n{}",
        vmm.dump()
    );
    assert!(
        line("PETREL-KBD: input=").contains("AT Raw Set 2 keyboard"),
        "{TEST}: no keyboard registered\n{}",
        vmm.dump()
    );
    put(&vmm, "/actions", json!({"action_type": "SendCtrlAltDel"}));
    let status = vmm.wait_exit(Duration::from_secs(60));
    assert!(
        status.is_some_and(|s| s.success()),
        "{TEST}: petrel did not end after SendCtrlAltDel ({status:?})\n{}",
        vmm.dump()
    );
    eprintln!("{TEST}: SendCtrlAltDel restarted the guest; petrel exited 0");
}
