//! petreld with `jailer` set: every petrel it starts runs through `petrel-jailer` as the
//! `run_as` user, in its own mount/PID namespaces with the VM directory as its root; the VM
//! boots (its serial log fills), petreld's API drives it, stop ends it, and nothing of the
//! jail stays mounted.

mod petreld_support;

use std::path::Path;
use std::time::{Duration, Instant};

use petrel_http::Method;
use petrel_tests::{jailer_bin, require_kvm};
use petreld_support::{pid_alive, Petreld};
use serde_json::json;

fn is_root() -> bool {
    // SAFETY: geteuid(2) has no arguments and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

fn field(pid: u64, name: &str) -> String {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")))
        .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

#[test]
fn petreld_runs_each_petrel_in_a_jail() {
    if !is_root() {
        petrel_tests::skip("petreld's jailer option needs root");
        return;
    }
    require_kvm!();
    let d = Petreld::with_config(
        "jail",
        json!({"jailer": jailer_bin(), "run_as": {"uid": 65534, "gid": 65534}}),
    );
    let vm = d.create("jailed", "action=count", json!({}));
    let vm = if vm["state"] == "running" {
        vm
    } else {
        d.wait_vm("jailed", "running", |v| v["state"] == "running")
    };
    let id = vm["id"].as_str().unwrap().to_string();
    let jailer = vm["pid"].as_u64().expect("pid of the VM's process");
    let vm_dir = d.dir.join("state/vms").join(&id);

    // The jailer's only child is petrel, PID 1 of its own namespace, as nobody.
    let children = std::fs::read_to_string(format!("/proc/{jailer}/task/{jailer}/children"))
        .unwrap_or_default();
    let petrel: u64 = children
        .split_whitespace()
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("the jailer {jailer} has no child\n{}", d.log()));
    assert_eq!(field(petrel, "Uid"), "65534 65534 65534 65534");
    assert_eq!(field(petrel, "CapEff"), "0000000000000000");
    assert_eq!(field(petrel, "NSpid"), format!("{petrel} 1"));
    for kind in ["mnt", "pid"] {
        let mine = std::fs::read_link(format!("/proc/self/ns/{kind}")).unwrap();
        let its = std::fs::read_link(format!("/proc/{petrel}/ns/{kind}")).unwrap();
        assert_ne!(mine, its, "{kind} namespace is the host's");
    }
    let root: Vec<String> = std::fs::read_dir(format!("/proc/{petrel}/root"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(root.iter().any(|n| n == "api.sock"), "{root:?}");
    assert!(!root.iter().any(|n| n == "etc" || n == "state"), "{root:?}");

    // The guest runs and its serial log (in the VM directory, the jail's root) fills.
    let serial = vm_dir.join("serial.log");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = std::fs::read_to_string(&serial).unwrap_or_default();
        if text.contains("COUNT 3") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no guest output in {}:\n{text}\n{}",
            serial.display(),
            d.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        d.ok(Method::Post, "/v1/vms/jailed/pause", None, 200)["state"],
        "paused"
    );
    assert_eq!(
        d.ok(Method::Post, "/v1/vms/jailed/resume", None, 200)["state"],
        "running"
    );
    let vm = d.ok(Method::Post, "/v1/vms/jailed/stop?timeout=1", None, 200);
    assert_eq!(vm["state"], "stopped", "{vm:#}");
    assert!(!pid_alive(jailer), "the jailer still runs after stop");
    assert!(!pid_alive(petrel), "petrel still runs after stop");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.lines().any(|l| l
            .split(' ')
            .nth(4)
            .is_some_and(|p| Path::new(p).starts_with(&d.dir))),
        "a jail mount is visible on the host"
    );
    // Started again: jailed again.
    let vm = d.ok(Method::Post, "/v1/vms/jailed/start", None, 200);
    assert_eq!(vm["state"], "running", "{vm:#}\n{}", d.log());
}
