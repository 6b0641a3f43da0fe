//! Cloud Hypervisor's own client, `ch-remote`, drives petrel unchanged: one script of
//! subcommands (create, boot, info, pause, resume, counters, resize, power-button, reboot,
//! shutdown, delete, add-disk, add-net with a tap fd, add-vsock, remove-device, resize of the
//! vCPUs and the balloon, snapshot, restore refused while a VM exists, shutdown-vmm) run with
//! the real binary against petrel booting the test guest, each step checked against one table
//! of exit codes and output forms. The same script and table run against the real Cloud
//! Hypervisor (when its binary is here) show that the table is what Cloud Hypervisor does.
//! Subcommands for what petrel lacks (add-fs, nmi, …) must fail readably, naming what is
//! missing. (`snapshot` is in the script; `restore` into a fresh petrel is in
//! `tests/snapshot.rs`.)
//!
//! The binaries: `PETREL_CH_REMOTE` / `PETREL_CLOUD_HYPERVISOR`, else on PATH, else
//! `../shared/peers/bin/` next to the workspace (see the README). Absent, the tests say so
//! (SKIPPED) and do nothing.

mod ch_support;

use std::os::fd::AsFd;
use std::path::Path;
use std::time::Duration;

use ch_support::{
    ch_remote, ch_remote_bin, ch_remote_with_fd, cloud_hypervisor_bin, Outcome, ScratchDir,
    VmmProcess, Which,
};
use petrel_tests::host_net::TapFd;
use petrel_tests::{guest_image, petrel_bin, require_kvm, skip, GuestKind};
use serde_json::Value;

/// What a step must give.
#[derive(Debug, Clone, Copy)]
enum Expect {
    /// Exit 0 and nothing on stdout.
    Quiet,
    /// Exit 0 and one empty line on stdout (a 200 with an empty body).
    EmptyLine,
    /// Exit 0 and a JSON object on stdout.
    Json,
    /// Exit 0 and `vm.info` JSON with this state.
    State(&'static str),
    /// Exit 0 and `vm.info` JSON with state `.0` from petrel, `.1` from Cloud Hypervisor.
    /// After `vm.shutdown` Cloud Hypervisor drops the VM and reports `Created`; petrel keeps
    /// the machine and reports `Shutdown` (a state of Cloud Hypervisor's own enum, which
    /// petreld relies on); `vm.boot` works from both.
    StateDiffers(&'static str, &'static str),
    /// Exit 1 with the server's error read and printed (`Server responded with <status>`,
    /// then its messages); the status word when given.
    Refused(Option<&'static str>),
    /// Against petrel: exit 0 and nothing on stdout. Cloud Hypervisor's outcome is printed, not
    /// checked: on this host's PVM `/dev/kvm` its snapshot fails (`KVM_GET_NESTED_STATE`
    /// answers EINVAL), which says nothing about the wire form.
    QuietPetrel,
    /// Only against petrel: exit 1, the server's 404 naming this route as not supported.
    /// (Cloud Hypervisor serves it; its outcome is printed, not checked.)
    Lacking(&'static str),
}

/// One ch-remote invocation of the script.
struct Step {
    args: &'static [&'static str],
    expect: Expect,
}

const fn step(args: &'static [&'static str], expect: Expect) -> Step {
    Step { args, expect }
}

/// The script. `VM`, `IMG`, `DIR` in arguments are replaced by the VM config file, a disk
/// image and a scratch directory; `add-net fd=3` gets a fresh tap as descriptor 3.
const SCRIPT: &[Step] = &[
    step(&["ping"], Expect::Json),
    step(&["info"], Expect::Refused(Some("NotFound"))),
    step(&["create", "VM"], Expect::Quiet),
    step(&["info"], Expect::State("Created")),
    step(&["add-disk", "path=IMG,id=extra0"], Expect::Quiet),
    step(&["remove-device", "extra0"], Expect::Quiet),
    step(
        &["remove-device", "extra0"],
        Expect::Refused(Some("NotFound")),
    ),
    // ch-remote's defaults (image_type "Unknown", num_queues 1, …), as a user types it.
    step(&["add-disk", "path=IMG"], Expect::Quiet),
    step(&["add-net", "fd=3,mac=52:54:00:ab:cd:01"], Expect::Quiet),
    step(&["add-vsock", "cid=3,socket=DIR/vsock.sock"], Expect::Quiet),
    step(&["boot"], Expect::Quiet),
    step(&["info"], Expect::State("Running")),
    step(&["counters"], Expect::Json),
    step(&["pause"], Expect::Quiet),
    step(&["info"], Expect::State("Paused")),
    step(&["snapshot", "file://DIR/snap"], Expect::QuietPetrel),
    // A VMM that has a VM refuses a restore.
    step(
        &["restore", "source_url=file://DIR/snap"],
        Expect::Refused(None),
    ),
    step(&["info"], Expect::State("Paused")),
    step(&["resume"], Expect::Quiet),
    step(&["resize", "--cpus", "2"], Expect::Quiet),
    step(&["resize", "--cpus", "3"], Expect::Refused(None)),
    step(&["resize", "--balloon", "16M"], Expect::Quiet),
    step(&["power-button"], Expect::Quiet),
    step(&["reboot"], Expect::Quiet),
    step(&["info"], Expect::State("Running")),
    step(&["shutdown"], Expect::Quiet),
    step(&["info"], Expect::StateDiffers("Shutdown", "Created")),
    step(&["boot"], Expect::Quiet),
    step(&["shutdown"], Expect::Quiet),
    step(&["delete"], Expect::Quiet),
    step(&["info"], Expect::Refused(Some("NotFound"))),
    step(&["boot"], Expect::Refused(Some("NotFound"))),
    step(
        &["add-fs", "tag=shared,socket=DIR/fs.sock"],
        Expect::Lacking("vm.add-fs"),
    ),
    step(&["add-pmem", "file=IMG"], Expect::Lacking("vm.add-pmem")),
    step(&["nmi"], Expect::Lacking("vm.nmi")),
    step(
        &["resize-zone", "--id", "z0", "--size", "1G"],
        Expect::Lacking("vm.resize-zone"),
    ),
    step(&["shutdown-vmm"], Expect::EmptyLine),
];

/// Runs the script against `which` (binary `vmm`) with `ch-remote` at `chr`; returns each
/// step's arguments and outcome, and the VMM's exit code after `shutdown-vmm`.
fn run_script(
    which: Which,
    vmm: &Path,
    chr: &Path,
    name: &str,
) -> (Vec<(String, Outcome)>, Option<Option<i32>>) {
    let dir = ScratchDir::new(name);
    let kernel = guest_image(GuestKind::Pvh);
    let vm = dir.0.join("vm.json");
    let cfg = serde_json::json!({
        "payload": {"kernel": kernel, "cmdline": "action=count"},
        "cpus": {"boot_vcpus": 2, "max_vcpus": 2},
        "memory": {"size": 64u64 << 20},
        "balloon": {"size": 0},
        "serial": {"mode": "Tty"},
        "console": {"mode": "Off"},
    });
    std::fs::write(&vm, cfg.to_string()).unwrap();
    let img = dir.0.join("disk.img");
    std::fs::write(&img, vec![0u8; 1 << 20]).unwrap();
    let mut proc = VmmProcess::start(which, vmm, &dir.0, &[]);
    let mut transcript = Vec::new();
    let tap_name = format!("pchr{}{}", std::process::id() % 10000, which as u8);
    let tap = TapFd::open(&tap_name)
        .unwrap_or_else(|e| panic!("cannot create tap {tap_name} (root and /dev/net/tun): {e}"));
    for s in SCRIPT {
        let args: Vec<String> = s
            .args
            .iter()
            .map(|a| {
                a.replace("VM", vm.to_str().unwrap())
                    .replace("IMG", img.to_str().unwrap())
                    .replace("DIR", dir.0.to_str().unwrap())
            })
            .collect();
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = if s.args.first() == Some(&"add-net") {
            ch_remote_with_fd(chr, &proc.socket, &argv, tap.as_fd())
        } else {
            ch_remote(chr, &proc.socket, &argv)
        };
        transcript.push((s.args.join(" "), out));
    }
    let exit = proc.wait_exit(Duration::from_secs(3));
    eprintln!("{}", proc.logs().chars().take(4000).collect::<String>());
    (transcript, exit)
}

/// Checks `out` of step `s` for `which`; returns a description of the mismatch.
fn check(which: Which, s: &Step, out: &Outcome) -> Result<(), String> {
    let ok = out.code == Some(0);
    let json = || serde_json::from_str::<Value>(out.stdout.trim()).ok();
    if out.unreadable() {
        return Err("ch-remote could not read the answer".into());
    }
    match s.expect {
        Expect::Quiet if ok && out.stdout.is_empty() => Ok(()),
        Expect::EmptyLine if ok && out.stdout == "\n" => Ok(()),
        Expect::Json if ok && json().is_some_and(|v| v.is_object()) => Ok(()),
        Expect::State(want) if ok => match json() {
            Some(v) if v["state"] == want => Ok(()),
            _ => Err(format!("want state {want}")),
        },
        Expect::StateDiffers(petrel, ch) if ok => {
            let want = if which == Which::Petrel { petrel } else { ch };
            match json() {
                Some(v) if v["state"] == want => Ok(()),
                _ => Err(format!("want state {want}")),
            }
        }
        Expect::Refused(status) if out.code == Some(1) => match (status, out.server_status()) {
            (_, None) => Err("no `Server responded with` line".into()),
            (Some(want), Some(got)) if want != got => Err(format!("want {want}, got {got}")),
            _ => Ok(()),
        },
        Expect::QuietPetrel if which == Which::CloudHypervisor => Ok(()),
        Expect::QuietPetrel if ok && out.stdout.is_empty() => Ok(()),
        Expect::Lacking(_) if which == Which::CloudHypervisor => Ok(()),
        Expect::Lacking(route)
            if out.code == Some(1)
                && out.server_status() == Some("NotFound")
                && out.stderr.contains(&format!("{route}: not supported")) =>
        {
            Ok(())
        }
        e => Err(format!("want {e:?}")),
    }
}

fn verify(which: Which, vmm: &Path, chr: &Path, name: &str) {
    let (transcript, exit) = run_script(which, vmm, chr, name);
    let mut failures = Vec::new();
    for (s, (args, out)) in SCRIPT.iter().zip(&transcript) {
        let verdict = check(which, s, out);
        eprintln!(
            "{which:?}: ch-remote {args}: exit {:?} stdout {:?} {}{}",
            out.code,
            out.stdout.chars().take(120).collect::<String>(),
            out.server_status()
                .map(|s| format!("[{s}] "))
                .unwrap_or_default(),
            match &verdict {
                Ok(()) => "ok".to_string(),
                Err(e) => format!("MISMATCH: {e}\n{}", out.stderr),
            }
        );
        if let Err(e) = verdict {
            failures.push(format!("ch-remote {args}: {e}"));
        }
    }
    assert_eq!(
        exit,
        Some(Some(0)),
        "{which:?} did not exit 0 within 3 s of shutdown-vmm"
    );
    assert!(failures.is_empty(), "{which:?}: {failures:#?}");
}

#[test]
fn ch_remote_drives_petrel() {
    require_kvm!();
    let Some(chr) = ch_remote_bin() else {
        skip("ch-remote not found (PETREL_CH_REMOTE, PATH, ../shared/peers/bin)");
        return;
    };
    verify(Which::Petrel, &petrel_bin(), &chr, "chr-petrel");
}

/// The table the petrel test checks is Cloud Hypervisor's behaviour: the same script against
/// the real Cloud Hypervisor meets it (routes petrel lacks excepted).
#[test]
fn ch_remote_script_matches_cloud_hypervisor() {
    require_kvm!();
    let Some(chr) = ch_remote_bin() else {
        skip("ch-remote not found (PETREL_CH_REMOTE, PATH, ../shared/peers/bin)");
        return;
    };
    let Some(ch) = cloud_hypervisor_bin() else {
        skip("cloud-hypervisor not found (PETREL_CLOUD_HYPERVISOR, PATH, ../shared/peers/bin)");
        return;
    };
    verify(Which::CloudHypervisor, &ch, &chr, "chr-ch");
}
