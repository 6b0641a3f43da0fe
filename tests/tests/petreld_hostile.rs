//! What hostile testing found in petreld (issue 20): a triple fault taken for a poweroff, a
//! name that shadows another VM's id, an idle VM's log growing with every status poll,
//! private files that were not, and idle TCP clients starving authenticated ones.
//!
//! Needs the binaries built first (`cargo build -p petreld -p vmm`).

mod petreld_support;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use petrel_http::{parse_response, Method};
use petrel_tests::require_kvm;
use petreld_support::{petreld_bin, Petreld};
use serde_json::json;

/// A triple fault is a failure: petreld records it as such (not "guest powered off") and
/// `restart: on-failure` boots the VM again; `never` leaves it failed with the reason.
#[test]
fn a_triple_fault_is_a_failure_and_restarts_on_failure() {
    require_kvm!();
    let d = Petreld::new("hostile-tf");
    d.create(
        "crashy",
        "action=triple-fault",
        json!({"restart": "on-failure"}),
    );
    let vm = d.wait_vm("crashy", "restarted after a triple fault", |v| {
        v["restart_count"].as_u64() >= Some(1)
    });
    assert_eq!(vm["desired_state"], "running", "{vm:#}");
    d.create("once", "action=triple-fault", json!({"restart": "never"}));
    let vm = d.wait_vm("once", "failed", |v| v["state"] == "failed");
    assert_eq!(vm["exit_reason"], "guest triple fault", "{vm:#}");
    assert_eq!(vm["restart_count"], 0, "{vm:#}");
    // Kept in the database: a restarted petreld still says why.
    let mut d = d;
    d.kill9();
    d.start();
    let vm = d.vm("once");
    assert_eq!(
        (vm["state"].as_str(), vm["exit_reason"].as_str()),
        (Some("failed"), Some("guest triple fault")),
        "{vm:#}"
    );
    d.ok(Method::Post, "/v1/vms/crashy/kill", None, 200);
}

/// A name shaped like a VM id is refused: it could shadow, or be shadowed by, another VM
/// (`vm delete <that string>` deleted the other VM).
#[test]
fn a_name_that_looks_like_an_id_is_refused() {
    require_kvm!();
    let d = Petreld::new("hostile-names");
    let a = d.create("first", "action=halt", json!({}));
    let id = a["id"].as_str().unwrap().to_string();
    let body = json!({"name": id, "config": petreld_support::guest_config("action=halt")});
    let r = d.call(Method::Post, "/v1/vms", Some(&body));
    assert_eq!(r.status, 400, "{}", r.error_message());
    assert!(
        r.error_message().contains("looks like a VM id"),
        "{}",
        r.error_message()
    );
    let body =
        json!({"name": "0123456789abcdef", "config": petreld_support::guest_config("action=halt")});
    assert_eq!(d.call(Method::Post, "/v1/vms", Some(&body)).status, 400);
    assert_eq!(d.vm(&id)["name"], "first");
    d.ok(Method::Delete, &format!("/v1/vms/{id}"), None, 204);
}

/// Size of `path` (0 when missing).
fn size(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

/// An idle VM's petrel log does not grow with petreld's status polls (every 200 ms here)
/// nor with reads through petreld's API.
#[test]
fn an_idle_vms_log_does_not_grow_per_poll() {
    require_kvm!();
    let d = Petreld::new("hostile-log");
    let vm = d.create("idle", "action=halt", json!({}));
    let id = vm["id"].as_str().unwrap().to_string();
    d.wait_vm("idle", "running", |v| v["state"] == "running");
    let log = d.dir.join("state/vms").join(&id).join("petrel.log");
    std::thread::sleep(Duration::from_secs(1));
    let before = size(&log);
    assert!(before > 0, "no log at {}", log.display());
    for _ in 0..50 {
        d.vm("idle");
    }
    // About 15 supervisor polls.
    std::thread::sleep(Duration::from_secs(3));
    let grown = size(&log) - before;
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        grown < 200,
        "the log grew {grown} bytes over ~15 polls and 50 reads:\n{}",
        &text[text.len().saturating_sub(2000)..]
    );
    let mode = std::fs::metadata(&log).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "petrel.log mode {mode:o}");
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

/// The database and state directory are private (0600, 0700) even under `umask 000`, an
/// existing state dir readable by others is made private, and a world-writable one is
/// refused with a message naming it.
#[test]
fn state_dir_and_database_are_private() {
    let dir = std::env::temp_dir().join(format!("pd-hostile-modes-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let run = |state: &PathBuf, umask: &str| {
        let socket = dir.join("petreld.sock");
        let config = dir.join("config.json");
        std::fs::write(
            &config,
            json!({"petrel": petrel_tests::petrel_bin()}).to_string(),
        )
        .unwrap();
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "umask {umask} && exec \"$0\" --socket \"$1\" --state-dir \"$2\" --config \"$3\""
            ))
            .arg(petreld_bin())
            .arg(&socket)
            .arg(state)
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let client = petrel_http::Client::new(&socket).with_timeout(Duration::from_secs(5));
        for _ in 0..500 {
            if let Some(status) = child.try_wait().unwrap() {
                let mut err = String::new();
                child
                    .stderr
                    .take()
                    .unwrap()
                    .read_to_string(&mut err)
                    .unwrap();
                return Err((status.code(), err));
            }
            if client.get("/v1/ping").is_ok_and(|r| r.status == 200) {
                let _ = child.kill();
                let _ = child.wait();
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        panic!("petreld neither answered nor exited");
    };

    let fresh = dir.join("fresh");
    run(&fresh, "000").unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(mode(&fresh), 0o700);
    assert_eq!(mode(&fresh.join("petreld.db")), 0o600);

    let open = dir.join("readable");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(open.join("petreld.db"), b"").unwrap();
    std::fs::set_permissions(
        open.join("petreld.db"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    run(&open, "022").unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(mode(&open), 0o700);
    assert_eq!(mode(&open.join("petreld.db")), 0o600);

    let writable = dir.join("writable");
    std::fs::create_dir(&writable).unwrap();
    std::fs::set_permissions(&writable, std::fs::Permissions::from_mode(0o777)).unwrap();
    let (code, err) = run(&writable, "022").expect_err("a world-writable state dir was used");
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("writable by everyone") && err.contains(&*writable.to_string_lossy()),
        "{err}"
    );
    assert!(!writable.join("petreld.db").exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

const TOKEN: &str = "hostile-token-0123456789abcdef";

/// 100 clients that connect to petreld's TCP port and send nothing (reconnecting when
/// closed) do not make authenticated requests fail, and nobody gets a reset.
#[test]
fn idle_tcp_clients_do_not_starve_authenticated_ones() {
    let tokens = std::env::temp_dir().join(format!("pd-hostile-tok-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tokens);
    std::fs::create_dir_all(&tokens).unwrap();
    let token_file = tokens.join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let addr: SocketAddr = {
        let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        l.local_addr().unwrap()
    };
    let d = Petreld::with_config(
        "hostile-tcp",
        json!({"tcp": {"listen": addr.to_string(), "token_file": token_file}}),
    );
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let idlers: Vec<_> = (0..100)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let Ok(mut s) = TcpStream::connect(addr) else {
                        continue;
                    };
                    s.set_read_timeout(Some(Duration::from_millis(500)))
                        .unwrap();
                    let mut buf = [0u8; 256];
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        match s.read(&mut buf) {
                            Ok(0) => break,
                            Ok(_) => {}
                            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                            Err(_) => break,
                        }
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let mut failures = Vec::new();
    for i in 0..48 {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(
            s,
            "GET /v1/ping HTTP/1.1\r\nAuthorization: Bearer {TOKEN}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut buf = Vec::new();
        match s.read_to_end(&mut buf) {
            Err(e) => failures.push(format!("{i}: {e}")),
            Ok(_) => match parse_response(&buf, false, true, 1 << 20) {
                Ok(Some(p)) if p.response.status == 200 => {}
                other => failures.push(format!("{i}: {other:?}")),
            },
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in idlers {
        t.join().unwrap();
    }
    assert!(
        failures.is_empty(),
        "{} of 48 authenticated requests failed: {failures:?}\n{}",
        failures.len(),
        d.log()
    );
    drop(d);
    std::fs::remove_dir_all(&tokens).unwrap();
}

/// A tmpfs mounted at a path for the test's lifetime (unmounted and removed on drop).
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(path: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(path).unwrap();
        let ok = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(path)
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Tmpfs(path.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Fills the file system of `dir` with a file until it is full; returns the file.
fn fill(dir: &Path) -> PathBuf {
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).unwrap();
    let chunk = vec![0xa5u8; 64 << 10];
    loop {
        if f.write_all(&chunk).is_err() {
            break;
        }
    }
    // The last bytes a partial chunk could not take.
    while f.write_all(&[0u8; 512]).is_ok() {}
    path
}

/// A full state disk: stop, pause, resume and delete still work (they free space or need
/// none), what would take space is a 507 naming the disk, and a petreld restarted while the
/// disk is full comes up, lists its VMs and re-attaches them instead of exiting.
#[test]
fn a_full_state_disk_degrades_petreld_instead_of_killing_it() {
    require_kvm!();
    let mut d = Petreld::new("hostile-full");
    d.kill9();
    let state = d.dir.join("state");
    let _ = std::fs::remove_dir_all(&state);
    let Some(_mount) = Tmpfs::mount(&state, "24m") else {
        petrel_tests::skip("cannot mount a tmpfs (not root?)");
        return;
    };
    d.start();
    d.create("a", "action=halt", json!({}));
    d.create("b", "action=halt", json!({}));
    d.wait_vm("a", "running", |v| v["state"] == "running");
    d.wait_vm("b", "running", |v| v["state"] == "running");
    let filler = fill(&state);

    d.ok(Method::Post, "/v1/vms/a/pause", None, 200);
    d.ok(Method::Post, "/v1/vms/a/resume", None, 200);
    let vm = d.ok(Method::Post, "/v1/vms/a/stop?timeout=1", None, 200);
    assert_eq!(vm["state"], "stopped", "{vm:#}");
    let r = d.call(Method::Post, "/v1/vms/a/start", None);
    assert_eq!(r.status, 507, "start on a full disk: {}", r.error_message());
    assert!(r.error_message().contains("full"), "{}", r.error_message());
    let body = json!({"name": "c", "config": petreld_support::guest_config("action=halt")});
    let r = d.call(Method::Post, "/v1/vms", Some(&body));
    assert_eq!(
        r.status,
        507,
        "create on a full disk: {}",
        r.error_message()
    );

    // Restarted while the disk is full: it serves, with its VMs still managed.
    d.kill9();
    d.start();
    assert_eq!(d.all().len(), 2);
    let b = d.wait_vm("b", "re-attached", |v| v["state"] == "running");
    assert!(b["pid"].as_u64().is_some(), "{b:#}");
    d.ok(Method::Delete, "/v1/vms/b", None, 204);
    d.ok(Method::Delete, "/v1/vms/a", None, 204);
    assert!(d.all().is_empty());

    // Room again: creating works again.
    std::fs::remove_file(&filler).unwrap();
    d.create("c", "action=halt", json!({}));
    d.ok(Method::Post, "/v1/vms/c/kill", None, 200);
    d.kill9();
}
