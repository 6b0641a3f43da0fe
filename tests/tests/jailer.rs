//! `petrel-jailer` against the real binaries: a jailed petrel boots the test guest through its
//! API socket (reached from the host inside the jail directory), its serial console reaches
//! the host, and from the host's side the process is seen running as the unprivileged uid,
//! with no capabilities, in its own mount/PID/IPC/UTS namespaces, with a root holding only
//! its files; a host path named through the API cannot be opened; its cgroup is made and
//! removed; `kill -9` leaves nothing mounted; the device thread's open of a host file fails.
//! Bad command lines get clear errors.
//!
//! Needs root (the jailer mounts and changes uid) and /dev/kvm: skipped visibly otherwise.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use petrel_http::{Client, Method};
use petrel_tests::{
    guest_image, jailer_bin, petrel_bin, require_kvm, GuestKind, Petrel, ScratchDir,
};
use serde_json::{json, Value};

/// The uid and gid the VM runs as (`nobody`/`nogroup`).
const JAIL_UID: u32 = 65534;

fn is_root() -> bool {
    // SAFETY: geteuid(2) has no arguments and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

macro_rules! require_root {
    () => {
        if !is_root() {
            petrel_tests::skip("petrel-jailer needs root (mounts, uid change)");
            return;
        }
    };
}

/// A field of `/proc/<pid>/status` (`Uid:`, `CapEff:` …), whitespace-normalised.
fn status_field(pid: u32, name: &str) -> String {
    let text = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")))
        .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn ns(pid: &str, kind: &str) -> PathBuf {
    fs::read_link(format!("/proc/{pid}/ns/{kind}")).unwrap_or_default()
}

/// Mount points whose path starts with `prefix`, in any mount namespace this host's init
/// sees (`/proc/1/mountinfo`) or ours.
fn mounts_under(prefix: &Path) -> Vec<String> {
    let mut found = Vec::new();
    for file in ["/proc/1/mountinfo", "/proc/self/mountinfo"] {
        let text = fs::read_to_string(file).unwrap_or_default();
        for line in text.lines() {
            if let Some(point) = line.split_whitespace().nth(4) {
                if Path::new(point).starts_with(prefix) {
                    found.push(format!("{file}: {point}"));
                }
            }
        }
    }
    found
}

/// Waits for a file (the pid file, the socket) to appear.
fn wait_for(path: &Path, timeout: Duration, jail: &Petrel) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(text) = fs::read_to_string(path) {
            if !text.is_empty() {
                return text;
            }
        }
        if path.extension().is_some_and(|e| e == "sock") && UnixStream::connect(path).is_ok() {
            return String::new();
        }
        assert!(
            Instant::now() < deadline,
            "{} never appeared\nstderr:\n{}",
            path.display(),
            jail.stderr()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn put(client: &Client, op: &str, body: Option<&Value>) -> petrel_http::Response {
    let bytes = body.map(|b| serde_json::to_vec(b).unwrap());
    client
        .request(Method::Put, &format!("/api/v1/{op}"), bytes.as_deref())
        .unwrap_or_else(|e| panic!("PUT {op}: {e:?}"))
}

#[test]
fn jailed_petrel_boots_serves_its_api_and_sees_only_its_files() {
    require_root!();
    require_kvm!();
    let scratch = ScratchDir::new("jail");
    let base = scratch.0.join("base");
    let guest = guest_image(GuestKind::Pvh);
    let id = "vm-a";
    let petrel = petrel_bin();
    let bind = format!("{guest}=/guest.elf");
    let base_s = base.to_str().unwrap();
    let uid = JAIL_UID.to_string();
    let mut jail = Petrel::spawn_program(
        &jailer_bin(),
        &[
            "--id",
            id,
            "--exec-file",
            petrel.to_str().unwrap(),
            "--uid",
            &uid,
            "--gid",
            &uid,
            "--chroot-base-dir",
            base_s,
            "--bind-ro",
            &bind,
            "--cgroup",
            "pids.max=64",
            "--resource-limit",
            "no-file=256",
            "--",
            "--api-socket",
            "/run/api.sock",
        ],
    );
    let jail_dir = base.join("petrel").join(id);
    let root = jail_dir.join("root");
    let socket = root.join("run/api.sock");
    wait_for(&socket, Duration::from_secs(20), &jail);
    let pid: u32 = wait_for(&jail_dir.join("petrel.pid"), Duration::from_secs(5), &jail)
        .trim()
        .parse()
        .expect("pid file holds a pid");

    // The API socket inside the jail answers from the host.
    let client = Client::new(&socket).with_timeout(Duration::from_secs(30));
    let ping = client.get("/api/v1/vmm.ping").expect("vmm.ping");
    assert_eq!(ping.status, 200, "{}", ping.error_message());
    let ping: Value = ping.json_body().unwrap();
    assert_eq!(
        ping["pid"], 1,
        "petrel is PID 1 of its own PID namespace: {ping}"
    );

    // Who and where the process is, seen from the host.
    let want_ids = format!("{JAIL_UID} {JAIL_UID} {JAIL_UID} {JAIL_UID}");
    assert_eq!(status_field(pid, "Uid"), want_ids);
    assert_eq!(status_field(pid, "Gid"), want_ids);
    assert_eq!(status_field(pid, "Groups"), "");
    assert_eq!(status_field(pid, "CapEff"), "0000000000000000");
    assert_eq!(status_field(pid, "CapPrm"), "0000000000000000");
    assert_eq!(status_field(pid, "CapBnd"), "0000000000000000");
    assert_eq!(status_field(pid, "NoNewPrivs"), "1");
    assert_eq!(status_field(pid, "NSpid"), format!("{pid} 1"));
    for kind in ["mnt", "pid", "ipc", "uts"] {
        let (mine, its) = (ns("self", kind), ns(&pid.to_string(), kind));
        assert!(!its.as_os_str().is_empty(), "no {kind} namespace link");
        assert_ne!(mine, its, "{kind} namespace is the host's");
    }
    let limits = fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let nofile = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    assert!(nofile.contains("256"), "{nofile}");
    let cgroups = fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    assert!(
        cgroups.contains(&format!("petrel-jailer/{id}")),
        "petrel is not in its cgroup:\n{cgroups}"
    );
    let top: BTreeSet<String> = fs::read_dir(format!("/proc/{pid}/root"))
        .expect("read the jail's root")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    for absent in ["etc", "home", "root", "tmp", "usr", "var", "sys", "srv"] {
        assert!(
            !top.contains(absent),
            "/{absent} is visible in the jail: {top:?}"
        );
    }
    for present in ["dev", "proc", "run", "guest.elf", "petrel"] {
        assert!(
            top.contains(present),
            "/{present} missing from the jail: {top:?}"
        );
    }
    let devs: BTreeSet<String> = fs::read_dir(format!("/proc/{pid}/root/dev"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        devs.contains("kvm") && !devs.contains("sda") && !devs.contains("mem"),
        "{devs:?}"
    );
    // Its /proc shows its own PID namespace only.
    let procs: Vec<String> = fs::read_dir(format!("/proc/{pid}/root/proc"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        .collect();
    assert_eq!(
        procs,
        vec!["1".to_string()],
        "processes visible in the jail"
    );

    // A host file named through the API is not there for the jailed petrel.
    let kernel = "/guest.elf";
    let mut cfg = json!({
        "payload": {"kernel": kernel, "cmdline": "action=count"},
        "cpus": {"boot_vcpus": 1},
        "memory": {"size": 64u64 << 20},
        "serial": {"mode": "Tty"},
        "disks": [{"path": "/etc/passwd", "readonly": true}],
    });
    let created = put(&client, "vm.create", Some(&cfg));
    let refused = if created.status == 204 {
        let boot = put(&client, "vm.boot", None);
        assert_ne!(
            boot.status, 204,
            "a jailed petrel booted with the host's /etc/passwd"
        );
        let _ = put(&client, "vm.delete", None);
        boot
    } else {
        created
    };
    assert!(
        refused.error_message().contains("/etc/passwd"),
        "the error names the path: {}",
        refused.error_message()
    );

    // The guest boots from the bound kernel and its serial reaches the host.
    cfg.as_object_mut().unwrap().remove("disks");
    let r = put(&client, "vm.create", Some(&cfg));
    assert_eq!(
        r.status,
        204,
        "vm.create: {}\n{}",
        r.error_message(),
        jail.stderr()
    );
    let r = put(&client, "vm.boot", None);
    assert_eq!(
        r.status,
        204,
        "vm.boot: {}\n{}",
        r.error_message(),
        jail.stderr()
    );
    assert!(
        jail.wait_for_stdout(Duration::from_secs(30), |out| out.contains("COUNT 3")),
        "the jailed guest's serial did not reach the host\nstdout:\n{}\nstderr:\n{}",
        jail.stdout(),
        jail.stderr()
    );
    assert!(jail.stdout().contains("PETREL-GUEST: start boot=pvh"));

    // kill -9: the jailer reports it, and nothing stays mounted on the host.
    // SAFETY: kill(2) with a pid read from the jail's pid file and a constant signal.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGKILL) }, 0);
    let run = jail.wait(Duration::from_secs(10));
    assert_eq!(run.code(), Some(128 + libc::SIGKILL), "{}", run.dump());
    assert!(mounts_under(&base).is_empty(), "{:?}", mounts_under(&base));
    assert!(
        !jail_dir.join("petrel.pid").exists(),
        "pid file left behind"
    );
    assert!(
        !Path::new(&format!("/sys/fs/cgroup/pids/petrel-jailer/{id}")).exists()
            && !Path::new(&format!("/sys/fs/cgroup/petrel-jailer/{id}")).exists(),
        "cgroup left behind"
    );
}

/// Runs the jailer with `args`; it must fail with exit code 1 and an error naming `words`.
#[track_caller]
fn refused(args: &[&str], words: &[&str]) {
    let out = Command::new(jailer_bin())
        .args(args)
        .output()
        .expect("run the jailer");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
    assert!(
        stderr.starts_with("petrel-jailer: error: "),
        "{args:?}: {stderr}"
    );
    for w in words {
        assert!(stderr.contains(w), "{args:?}: {w:?} not in {stderr}");
    }
}

#[test]
fn jailer_refuses_bad_command_lines() {
    let scratch = ScratchDir::new("jail-bad");
    let base = scratch.0.join("base");
    let base_s = base.to_str().unwrap();
    let petrel = petrel_bin();
    let exec = petrel.to_str().unwrap();
    let line = |id: &'static str, exec: &'static str, uid: &'static str| -> Vec<&'static str> {
        vec!["--id", id, "--exec-file", exec, "--uid", uid, "--gid", uid]
    };
    let exec: &'static str = Box::leak(exec.to_string().into_boxed_str());
    let base_s: &'static str = Box::leak(base_s.to_string().into_boxed_str());
    let with_base = |mut v: Vec<&'static str>| {
        v.extend(["--chroot-base-dir", base_s]);
        v
    };
    refused(
        &with_base(line("vm", "/nonexistent/petrel", "1000")),
        &["--exec-file", "/nonexistent/petrel"],
    );
    refused(
        &with_base(line("vm", exec, "0")),
        &["refusing", "--allow-root"],
    );
    refused(&with_base(line("a/b", exec, "1000")), &["--id", "'/'"]);
    refused(&with_base(line("..", exec, "1000")), &["--id", "'.'"]);
    refused(&with_base(line("", exec, "1000")), &["--id"]);
    refused(
        &["--exec-file", exec, "--uid", "1", "--gid", "1"],
        &["missing --id"],
    );
    refused(
        &with_base(line("vm", exec, "x")),
        &["--uid", "not a number"],
    );
    let mut v = with_base(line("vm", exec, "1000"));
    v.extend(["--bind", "/etc/hostname=/a/../../etc"]);
    refused(&v, &["'..'"]);
    assert!(
        !base.exists(),
        "a refused command line created {}",
        base.display()
    );

    // A second jailer for a live jail's id is refused.
    if !is_root() {
        petrel_tests::skip("the in-use check needs root");
        return;
    }
    let jail_dir = base.join("petrel").join("busy");
    fs::create_dir_all(&jail_dir).unwrap();
    fs::write(
        jail_dir.join("petrel.pid"),
        format!("{}\n", std::process::id()),
    )
    .unwrap();
    refused(
        &with_base(line("busy", exec, "1000")),
        &["in use", &std::process::id().to_string()],
    );
}

#[test]
fn daemonized_jail_in_a_new_network_namespace() {
    require_root!();
    require_kvm!();
    let scratch = ScratchDir::new("jail-d");
    let base = scratch.0.join("base");
    let petrel = petrel_bin();
    // A descriptor the jailer inherits (no close-on-exec): it must not reach petrel.
    let leak = fs::File::open("/etc/hostname").unwrap();
    // SAFETY: dup(2) of a descriptor this test owns; the copy is closed below.
    let leaked = unsafe { libc::dup(std::os::fd::AsRawFd::as_raw_fd(&leak)) };
    assert!(leaked > 2);
    let out = Command::new(jailer_bin())
        .args(["--id", "vm-d", "--exec-file"])
        .arg(&petrel)
        .args(["--uid", "65534", "--gid", "65534", "--chroot-base-dir"])
        .arg(&base)
        .args([
            "--new-netns",
            "--daemonize",
            "--",
            "--api-socket",
            "/run/api.sock",
        ])
        .output()
        .expect("run the jailer");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pid: i32 = stdout
        .trim()
        .parse()
        .expect("the jailer prints petrel's pid");
    let jail_dir = base.join("petrel").join("vm-d");
    let pid_file = fs::read_to_string(jail_dir.join("petrel.pid")).unwrap();
    assert_eq!(pid_file.trim(), pid.to_string());
    let socket = jail_dir.join("root/run/api.sock");
    let deadline = Instant::now() + Duration::from_secs(20);
    while UnixStream::connect(&socket).is_err() {
        assert!(
            Instant::now() < deadline,
            "the daemonized petrel's socket never answered"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let ping = Client::new(&socket)
        .get("/api/v1/vmm.ping")
        .expect("vmm.ping");
    assert_eq!(ping.status, 200);
    let p = pid.to_string();
    assert_ne!(
        ns("self", "net"),
        ns(&p, "net"),
        "the network namespace is the host's"
    );
    // Its own session, and no terminal or pipe of ours as stdio.
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat.rsplit(") ").next().unwrap().split(' ').collect();
    assert_eq!(
        fields[3], p,
        "session id (field 6) is petrel's own pid: {stat}"
    );
    for fd in 0..3 {
        let target = fs::read_link(format!("/proc/{pid}/fd/{fd}")).unwrap();
        assert_eq!(target, Path::new("/dev/null"), "fd {fd}");
    }
    let fds: Vec<PathBuf> = fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .filter_map(|e| fs::read_link(e.path()).ok())
        .collect();
    assert!(
        !fds.iter().any(|t| t == Path::new("/etc/hostname")),
        "an inherited descriptor reached the jailed petrel: {fds:?}"
    );
    // SAFETY: closes the copy made above, which nothing else uses.
    unsafe { libc::close(leaked) };
    // SAFETY: kill(2) with the pid the jailer printed and a constant signal.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let deadline = Instant::now() + Duration::from_secs(10);
    while Path::new(&format!("/proc/{pid}/root")).read_link().is_ok() {
        assert!(Instant::now() < deadline, "petrel did not end on SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(mounts_under(&base).is_empty(), "{:?}", mounts_under(&base));
}

#[test]
fn a_jail_kept_at_uid_0_still_has_no_capabilities() {
    require_root!();
    require_kvm!();
    let scratch = ScratchDir::new("jail-r");
    let base = scratch.0.join("base");
    let petrel = petrel_bin();
    let jail = Petrel::spawn_program(
        &jailer_bin(),
        &[
            "--id",
            "vm-r",
            "--exec-file",
            petrel.to_str().unwrap(),
            "--uid",
            "0",
            "--gid",
            "0",
            "--allow-root",
            "--chroot-base-dir",
            base.to_str().unwrap(),
            "--",
            "--api-socket",
            "/run/api.sock",
        ],
    );
    let jail_dir = base.join("petrel").join("vm-r");
    wait_for(
        &jail_dir.join("root/run/api.sock"),
        Duration::from_secs(20),
        &jail,
    );
    let pid: u32 = wait_for(&jail_dir.join("petrel.pid"), Duration::from_secs(5), &jail)
        .trim()
        .parse()
        .unwrap();
    assert_eq!(status_field(pid, "Uid"), "0 0 0 0");
    for set in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(status_field(pid, set), "0000000000000000", "{set}");
    }
    // SAFETY: kill(2) with the pid from the jail's pid file and a constant signal.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGTERM) }, 0);
    let run = jail.wait(Duration::from_secs(10));
    assert_eq!(run.code(), Some(0), "{}", run.dump());
}
