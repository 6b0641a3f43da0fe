//! petreld with three real Linux VMs: create (each boots the guest kit to its hook, which
//! reports and then waits), list, stop one gracefully (petreld presses the ACPI power button;
//! the guest's button driver reports it and its init powers off, so the stop is recorded as a
//! guest poweroff, not a forced one), start it again (a fresh boot), delete all three (their
//! petrels are gone).
//!
//! Each guest's console is read through petreld (`/v1/vms/<name>/console`).
//! Skips visibly like the other full boots (no `/dev/kvm`, no kit, guest ring 0 emulated).

mod petreld_support;

use std::time::{Duration, Instant};

use petrel_http::Method;
use petrel_tests::linux_guest::{count_lines, initramfs_with_hooks, Report, Scratch, REPORT_HOOK};
use petrel_tests::{linux_kit_or_skip, ring0_native};
use petreld_support::{names, pid_alive, Petreld};
use serde_json::{json, Value};

const TEST: &str = "linux_petreld_three_vms";
const VMS: [&str; 3] = ["lx-0", "lx-1", "lx-2"];
/// Three guests boot at once under nested TCG: give them time.
const BOOT: Duration = Duration::from_secs(300);

/// After the report, the guest waits for its power button (init's watcher powers it off).
const WAIT_HOOK: &str = r#"
echo "PETREL-PD: up"
while :; do sleep 1; done
"#;

fn console(d: &Petreld, name: &str) -> String {
    let r = d.call(Method::Get, &format!("/v1/vms/{name}/console"), None);
    String::from_utf8_lossy(&r.body).into_owned()
}

/// Waits until `name`'s console holds `n` `PETREL-PD: up` lines; returns the console.
fn wait_up(d: &Petreld, name: &str, n: usize) -> String {
    let deadline = Instant::now() + BOOT;
    loop {
        let text = console(d, name);
        if count_lines(&text, "PETREL-PD: up") >= n {
            return text;
        }
        let vm = d.vm(name);
        assert!(
            Instant::now() < deadline && vm["state"] == "running",
            "{TEST}: {name} not up (boot {n}): {vm:#}\n--- console ---\n{text}\n--- petreld ---\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn linux_petreld_three_vms() {
    let Some(kit) = linux_kit_or_skip(TEST) else {
        return;
    };
    if !ring0_native(TEST) {
        return;
    }
    let dir = Scratch::new(TEST);
    let initramfs = initramfs_with_hooks(
        kit,
        &dir.0,
        &[("50-report.sh", REPORT_HOOK), ("60-wait.sh", WAIT_HOOK)],
    )
    .unwrap_or_else(|e| panic!("{TEST}: cannot write the initramfs: {e}"));
    let d = Petreld::new("linux");
    let t0 = Instant::now();
    let config = |name: &str| -> Value {
        json!({
            "name": name,
            "config": {
                "payload": {
                    "kernel": kit.vmlinux,
                    "initramfs": initramfs,
                    "cmdline": petrel_tests::linux_guest::kernel_cmdline("console=ttyS0 panic=-1"),
                },
                "cpus": {"boot_vcpus": 1},
                "memory": {"size": 256u64 << 20},
                "rng": {},
                "serial": {"mode": "Tty"},
            },
        })
    };
    for name in VMS {
        d.ok(Method::Post, "/v1/vms", Some(&config(name)), 201);
    }
    for name in VMS {
        let text = wait_up(&d, name, 1);
        let report = Report::parse(&text);
        assert_eq!(report.int("nproc"), Ok(1), "{TEST}: {name}:\n{text}");
        assert_eq!(
            report.int("virtio_acpi"),
            Ok(1),
            "{TEST}: {name}: the rng through the DSDT:\n{text}"
        );
    }
    eprintln!("{TEST}: three Linux guests up in {:.1?}", t0.elapsed());

    let listed = d.list("?sort=name");
    assert_eq!(names(&listed), VMS, "{listed:#}");
    for vm in listed["items"].as_array().unwrap() {
        assert_eq!(vm["state"], "running", "{vm:#}");
    }

    // Graceful stop: the power button, and the guest powers itself off.
    let old_pid = d.vm("lx-1")["pid"].as_u64().unwrap();
    let t1 = Instant::now();
    let vm = d.ok(Method::Post, "/v1/vms/lx-1/stop?timeout=90", None, 200);
    assert_eq!(vm["state"], "stopped", "{vm:#}");
    let reason = vm["exit_reason"].as_str().unwrap_or_default().to_string();
    let text = console(&d, "lx-1");
    assert!(
        reason.contains("guest powered off (power button)"),
        "{TEST}: lx-1 stop reason {reason:?}, want a guest poweroff\n{vm:#}\n--- console ---\n{text}"
    );
    assert!(
        text.contains("PETREL-INIT: power button pressed, powering off"),
        "{TEST}: lx-1's guest did not see the button:\n{text}"
    );
    assert!(
        !pid_alive(old_pid),
        "{TEST}: lx-1's petrel {old_pid} still runs"
    );
    eprintln!(
        "{TEST}: lx-1 stopped by its power button in {:.1?}",
        t1.elapsed()
    );
    assert_eq!(names(&d.list("?state=running&sort=name")), ["lx-0", "lx-2"]);

    // Start it again: a new petrel, a fresh boot.
    let vm = d.ok(Method::Post, "/v1/vms/lx-1/start", None, 200);
    assert_eq!(vm["state"], "running", "{vm:#}");
    let new_pid = vm["pid"].as_u64().unwrap();
    assert_ne!(new_pid, old_pid);
    let t2 = Instant::now();
    // The console file may be kept across starts or started afresh: wait for one more.
    let booted = count_lines(&console(&d, "lx-1"), "PETREL-PD: up");
    wait_up(&d, "lx-1", booted + 1);
    let text = console(&d, "lx-1");
    assert!(
        text.matches("Linux version ").count() >= 1 && text.contains("PETREL-PD: up"),
        "{TEST}: lx-1 did not boot again:\n{text}"
    );
    eprintln!("{TEST}: lx-1 started and up again in {:.1?}", t2.elapsed());

    // Delete all three: their petrels go.
    let pids: Vec<u64> = VMS
        .iter()
        .map(|n| d.vm(n)["pid"].as_u64().unwrap())
        .collect();
    for name in VMS {
        let r = d.call(Method::Delete, &format!("/v1/vms/{name}"), None);
        assert!(
            r.is_success(),
            "{TEST}: delete {name}: {} {}",
            r.status,
            r.error_message()
        );
    }
    assert!(names(&d.list("")).is_empty());
    let deadline = Instant::now() + Duration::from_secs(20);
    while pids.iter().any(|&p| pid_alive(p)) {
        assert!(
            Instant::now() < deadline,
            "{TEST}: petrels {pids:?} still run after delete"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!("{TEST}: whole run {:.1?}", t0.elapsed());
}
