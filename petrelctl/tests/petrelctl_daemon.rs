//! The real `petrelctl` against a real `petreld` running the real `petrel` and the test
//! guest: VMs created from a config file and from a template, listed (table, JSON, filters,
//! pages), read, stopped, started, paused, killed, their console read, deleted; templates,
//! the host and the feature gates; errors (server messages with exit status 1, bad command
//! lines with 2).
//!
//! Needs `petreld` and `petrel` next to `petrelctl` (`cargo build -p petreld -p vmm -p petrel-tests`) or `$PETREL_BIN`,
//! and the test guest (built by `build-test-guest` next to them, or `$PETREL_TEST_GUEST`);
//! skipped with a message when they or /dev/kvm are missing.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// `$PETRELD_BIN` when set, else `petreld` next to `petrelctl` (built by `cargo build -p petreld`).
fn petreld_bin() -> PathBuf {
    match std::env::var_os("PETRELD_BIN").filter(|p| !p.is_empty()) {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(env!("CARGO_BIN_EXE_petrelctl")).with_file_name("petreld"),
    }
}

/// `$VAR` when set, else `name` next to petrelctl, when it is a file.
fn sibling(var: &str, name: &str) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(var).filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let p = PathBuf::from(env!("CARGO_BIN_EXE_petrelctl")).with_file_name(name);
    p.is_file().then_some(p)
}

/// The PVH test guest, built by `build-test-guest pvh`.
fn guest_image() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("PETREL_TEST_GUEST").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let builder = sibling("BUILD_TEST_GUEST_BIN", "build-test-guest")?;
    let out = Command::new(&builder).arg("pvh").output().ok()?;
    assert!(
        out.status.success(),
        "{} pvh: {}",
        builder.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    path.is_file().then_some(path)
}

/// What the tests need to run VMs, or why they are skipped.
fn prerequisites() -> Result<(PathBuf, PathBuf), String> {
    let kvm = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm");
    if kvm.is_err() {
        return Err("/dev/kvm not available".into());
    }
    if !petreld_bin().is_file() {
        return Err("petreld not built (cargo build -p petreld) and $PETRELD_BIN not set".into());
    }
    let petrel = sibling("PETREL_BIN", "petrel")
        .ok_or("petrel not built (cargo build -p vmm) and $PETREL_BIN not set")?;
    let guest = guest_image().ok_or(
        "test guest not built (cargo build -p petrel-tests) and $PETREL_TEST_GUEST not set",
    )?;
    Ok((petrel, guest))
}

/// A petreld in a scratch directory; on drop it and the petrels it started are killed.
struct Petreld {
    dir: PathBuf,
    child: std::process::Child,
}

impl Petreld {
    fn start(name: &str, petrel: &Path) -> Petreld {
        let dir = std::env::temp_dir().join(format!("pctl-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let config = json!({"petrel": petrel, "poll_interval_ms": 200, "stop_timeout_s": 2,
                            "cpu_overcommit": 64.0});
        std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
        let log = std::fs::File::create(dir.join("petreld.log")).unwrap();
        let child = Command::new(petreld_bin())
            .arg("--socket")
            .arg(dir.join("petreld.sock"))
            .arg("--state-dir")
            .arg(dir.join("state"))
            .arg("--config")
            .arg(dir.join("config.json"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut d = Petreld { dir, child };
        let deadline = Instant::now() + Duration::from_secs(30);
        while d.ctl(&["gates"]).status.code() != Some(0) {
            if let Some(status) = d.child.try_wait().unwrap() {
                panic!("petreld exited: {status}\n{}", d.log());
            }
            assert!(Instant::now() < deadline, "petreld never answered");
            std::thread::sleep(Duration::from_millis(50));
        }
        d
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("petreld.log")).unwrap_or_default()
    }

    /// `petrelctl --socket SOCKET args…`.
    fn ctl(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_petrelctl"))
            .arg("--socket")
            .arg(self.dir.join("petreld.sock"))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// Standard output of a run that must succeed.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.ctl(args);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{args:?}: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// The JSON printed by `-o json args…`.
    fn json(&self, args: &[&str]) -> Value {
        let mut all = vec!["-o", "json"];
        all.extend_from_slice(args);
        serde_json::from_str(&self.ok(&all)).unwrap()
    }

    /// Standard error of a run that must fail with `code`; nothing on standard output.
    fn fails(&self, code: i32, args: &[&str]) -> String {
        let out = self.ctl(args);
        let err = String::from_utf8(out.stderr).unwrap();
        assert_eq!(out.status.code(), Some(code), "{args:?}: {err}");
        assert!(out.stdout.is_empty(), "{args:?}");
        assert!(err.starts_with("petrelctl: "), "{err}");
        err
    }
}

impl Drop for Petreld {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // The petrels this petreld started: their command lines name our scratch directory.
        let want = self.dir.to_string_lossy().into_owned();
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<i32>().ok())
            else {
                continue;
            };
            let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmdline).contains(&want) {
                // SAFETY: kill has no memory effects; the pid is one of our petrels.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn names(v: &Value) -> Vec<&str> {
    v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap())
        .collect()
}

#[test]
fn vms_templates_host_gates_and_errors() {
    let (petrel, guest) = match prerequisites() {
        Ok(p) => p,
        Err(why) => {
            test_skip::skip(why);
            return;
        }
    };
    let d = Petreld::start("vms", &petrel);
    let config = json!({
        "payload": {"kernel": guest, "cmdline": "action=halt"},
        "cpus": {"boot_vcpus": 1},
        "memory": {"size": 64u64 << 20},
    });
    let file = d.dir.join("guest.json");
    std::fs::write(&file, config.to_string()).unwrap();
    let file = file.to_str().unwrap();

    // Templates.
    let out = d.ok(&["template", "create", file, "--name", "tiny"]);
    assert_eq!(out, "template tiny created\n");
    let out = d.ok(&["template", "list"]);
    assert!(out.starts_with("NAME  CPUS  MEMORY  KERNEL"), "{out}");
    assert!(
        out.lines()
            .nth(1)
            .unwrap()
            .starts_with("tiny  1     64 MiB"),
        "{out}"
    );
    assert_eq!(names(&d.json(&["template", "list"])), ["tiny"]);
    let out = d.ok(&["template", "get", "tiny"]);
    assert!(out.contains("memory:  64 MiB\n"), "{out}");

    // Two VMs: one from the file, one from the template with overrides.
    let out = d.ok(&[
        "vm", "create", file, "--name", "alpha", "--label", "group=a",
    ]);
    assert!(out.starts_with("VM alpha ("), "{out}");
    assert!(out.ends_with(" created: running\n"), "{out}");
    let beta = d.json(&[
        "vm",
        "create",
        "--name",
        "beta",
        "--template",
        "tiny",
        "--set",
        "cpus.boot_vcpus=2",
        "--label",
        "group=b",
        "--restart",
        "on-failure",
    ]);
    assert_eq!(beta["state"], "running", "{beta:#}");
    assert_eq!(beta["template"], "tiny");
    assert_eq!(beta["restart"], "on-failure");
    assert_eq!(beta["config"]["cpus"]["boot_vcpus"], 2);
    let beta_id = beta["id"].as_str().unwrap();

    // List: table, JSON, filters, pages.
    let out = d.ok(&["vm", "list", "--sort", "name"]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    let header: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(
        header,
        ["ID", "NAME", "STATE", "CPUS", "MEMORY", "HYPERVISOR", "AGE"]
    );
    let row: Vec<&str> = lines[2].split_whitespace().collect();
    assert_eq!(
        row[..7],
        [beta_id, "beta", "running", "2", "64", "MiB", "kvm"],
        "{out}"
    );
    assert!(row[7].ends_with('s') || row[7].ends_with('m'), "{out}");
    assert_eq!(
        names(&d.json(&["vm", "list", "--sort=-name"])),
        ["beta", "alpha"]
    );
    assert_eq!(
        names(&d.json(&["vm", "list", "--label", "group=b"])),
        ["beta"]
    );
    assert_eq!(
        names(&d.json(&["vm", "list", "--name", "alpha"])),
        ["alpha"]
    );
    let page = d.json(&["vm", "list", "--sort", "name", "--limit", "1"]);
    assert_eq!(names(&page), ["alpha"]);
    assert!(page["continue"].is_string(), "{page:#}");
    let all = d.json(&["vm", "list", "--sort", "name", "--limit", "1", "--all"]);
    assert_eq!(names(&all), ["alpha", "beta"]);
    assert!(all.get("continue").is_none());
    let out = d.ok(&["vm", "list", "--limit", "1"]);
    assert!(out.contains("--all"), "{out}");
    assert_eq!(d.ok(&["vm", "list", "--state", "paused"]), "no VMs\n");

    // Get by name and by id.
    let out = d.ok(&["vm", "get", "beta"]);
    assert!(out.contains(&format!("id:         {beta_id}\n")), "{out}");
    assert!(out.contains("state:      running\n"), "{out}");
    assert!(out.contains("hypervisor: kvm (requested auto)\n"), "{out}");
    assert!(out.contains("labels:     group=b\n"), "{out}");
    assert_eq!(d.json(&["vm", "get", beta_id])["name"], "beta");

    // Actions.
    let out = d.ok(&["vm", "stop", "--timeout", "0", "alpha"]);
    assert!(out.ends_with(" stop: stopped\n"), "{out}");
    assert_eq!(
        names(&d.json(&["vm", "list", "--state", "stopped"])),
        ["alpha"]
    );
    let out = d.ok(&["vm", "start", "alpha"]);
    assert!(out.ends_with(" start: running\n"), "{out}");
    assert_eq!(d.json(&["vm", "pause", "beta"])["state"], "paused");
    let err = d.fails(1, &["vm", "pause", "beta"]);
    assert!(
        err.starts_with("petrelctl: vm pause: 409 Conflict: "),
        "{err}"
    );
    assert_eq!(d.json(&["vm", "resume", "beta"])["state"], "running");
    assert_eq!(d.json(&["vm", "kill", "beta"])["state"], "stopped");

    // Console: the guest's serial log.
    let out = d.ok(&["vm", "console", "alpha"]);
    assert!(out.contains("PETREL-GUEST: start boot=pvh"), "{out}");
    assert_eq!(d.ok(&["vm", "console", "alpha", "--tail", "5"]).len(), 5);
    assert!(d.json(&["vm", "console", "alpha"]).is_string());

    // Delete; then the server's 404 message with exit status 1.
    assert_eq!(d.ok(&["vm", "delete", "alpha"]), "VM alpha deleted\n");
    let err = d.fails(1, &["vm", "get", "alpha"]);
    assert_eq!(err, "petrelctl: vm get: 404 Not Found: no VM \"alpha\"\n");
    let err = d.fails(1, &["vm", "stop", "nosuch"]);
    assert!(err.contains("404") && err.contains("nosuch"), "{err}");
    let err = d.fails(1, &["vm", "create", "--name", "x", "--template", "nope"]);
    assert!(
        err.starts_with("petrelctl: vm create: 4") && err.contains("nope"),
        "{err}"
    );
    let err = d.fails(1, &["vm", "create", file, "--name", "beta"]);
    assert!(err.contains("beta"), "duplicate name: {err}");
    assert_eq!(d.ok(&["vm", "delete", "beta"]), "VM beta deleted\n");
    assert_eq!(d.ok(&["vm", "list"]), "no VMs\n");
    assert_eq!(
        d.ok(&["template", "delete", "tiny"]),
        "template tiny deleted\n"
    );
    let err = d.fails(1, &["template", "get", "tiny"]);
    assert!(err.contains("404") && err.contains("tiny"), "{err}");

    // Host and gates.
    let out = d.ok(&["host"]);
    assert!(out.contains("kvm:") && out.contains("available"), "{out}");
    assert!(out.contains("auto:"), "{out}");
    let host = d.json(&["host"]);
    assert!(host["cpus"].as_u64().unwrap() >= 1, "{host:#}");
    assert_eq!(host["kvm"], true);
    let out = d.ok(&["gates"]);
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].starts_with("NAME  STAGE  DEFAULT  ENABLED  DESCRIPTION"),
        "{out}"
    );
    assert!(lines[1].starts_with("mshv  alpha  false    false"), "{out}");
    assert_eq!(d.json(&["gates"])["items"][0]["name"], "mshv");
}

/// Bad command lines exit 2 before anything is sent; a socket nobody listens on exits 1.
#[test]
fn usage_errors_and_no_daemon() {
    let socket = std::env::temp_dir().join(format!("pctl-none-{}.sock", std::process::id()));
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_petrelctl"))
            .arg("--socket")
            .arg(&socket)
            .args(args)
            .output()
            .unwrap()
    };
    for args in [
        &["vm"][..],
        &["vm", "frob", "x"],
        &["vm", "list", "--bogus"],
        &["vm", "list", "--limit", "0"],
        &["vm", "stop"],
        &["vm", "kill", "--timeout", "1", "x"],
        &["vm", "create"],
        &["vm", "create", "--name", "x"],
        &[
            "vm",
            "create",
            "--template",
            "t",
            "--restart",
            "sometimes",
            "--name",
            "x",
        ],
        &["template", "get"],
        &["host", "extra"],
        &["--api-socket", "/x", "host"],
    ] {
        let out = run(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.starts_with("petrelctl: "), "{err}");
        assert!(out.stdout.is_empty());
    }
    let out = run(&["vm", "list"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with("petrelctl: cannot connect to "), "{err}");

    let out = Command::new(env!("CARGO_BIN_EXE_petrelctl"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for word in [
        "vm create",
        "vm list",
        "template create",
        "gates",
        "--socket PATH",
    ] {
        assert!(help.contains(word), "{word} not in help:\n{help}");
    }
}
