//! What hostile testing found in the per-VM API of a standalone `petrel --api-socket`
//! (issue 20): a FIFO named as the kernel must not hang the API, the socket must not take its
//! mode from the umask, idle clients must not starve the others, a command line too long to
//! boot is refused at create, and methods the server never serves are a 405 on a known path.

mod api_support;

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use api_support::{assert_error, guest_config, ApiVm, ScratchDir};
use petrel_http::Client;
use petrel_tests::{petrel_bin, require_kvm};
use serde_json::json;

/// A refusal that does not touch the guest payload must come back about at once.
const PROMPT: Duration = Duration::from_secs(5);

/// Makes a FIFO at `path`.
fn mkfifo(path: &std::path::Path) {
    let status = Command::new("mkfifo").arg(path).status().unwrap();
    assert!(status.success(), "mkfifo {}", path.display());
}

/// A kernel or initramfs path that is a FIFO (nobody writing) is a prompt 400 naming it, and
/// the API keeps answering: the open never blocks the thread that serves requests.
#[test]
fn a_fifo_as_kernel_or_initramfs_is_refused_without_blocking_the_api() {
    require_kvm!();
    let vm = ApiVm::start("hostile-fifo", &[]);
    let fifo = vm.dir.0.join("kernel.fifo");
    mkfifo(&fifo);
    let quick = Client::new(&vm.socket).with_timeout(PROMPT);
    let body = serde_json::to_vec(&json!({"payload": {"kernel": fifo}})).unwrap();
    let t0 = Instant::now();
    let r = quick
        .request(petrel_http::Method::Put, "/api/v1/vm.create", Some(&body))
        .unwrap_or_else(|e| {
            panic!(
                "vm.create with a FIFO kernel got no answer within {PROMPT:?}: {e:?}\n{}",
                vm.petrel.stderr()
            )
        });
    assert_error(&r, 400, &["kernel", "FIFO"], "FIFO kernel");
    assert!(t0.elapsed() < PROMPT, "took {:?}", t0.elapsed());
    let ping = quick.get("/api/v1/vmm.ping").unwrap();
    assert_eq!(ping.status, 200);

    let mut cfg = guest_config("action=halt");
    cfg["payload"]["initramfs"] = json!(fifo);
    let r = quick
        .request(
            petrel_http::Method::Put,
            "/api/v1/vm.create",
            Some(&serde_json::to_vec(&cfg).unwrap()),
        )
        .unwrap_or_else(|e| panic!("vm.create with a FIFO initramfs: {e:?}"));
    assert_error(&r, 400, &["initramfs", "FIFO"], "FIFO initramfs");

    let mut cfg = guest_config("action=halt");
    cfg["disks"] = json!([{"path": fifo}]);
    let r = vm.put("vm.create", Some(&cfg));
    assert_error(&r, 400, &["disks[0].path"], "FIFO disk");
    assert_eq!(vm.state(), None, "a refused vm.create created a VM");
    vm.shutdown_vmm();
}

/// Starts `petrel --api-socket <socket>` under `umask 000`; returns the child.
fn spawn_under_umask_000(socket: &std::path::Path) -> std::process::Child {
    Command::new("sh")
        .arg("-c")
        .arg("umask 000 && exec \"$0\" --api-socket \"$1\"")
        .arg(petrel_bin())
        .arg(socket)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Under `umask 000` the API socket is still created 0600 (it used to be 0777: anyone could
/// drive a root-owned VM), and a world-writable directory without the sticky bit, where
/// anyone could swap the socket, is refused with a message naming it.
#[test]
fn the_api_socket_is_private_whatever_the_umask() {
    require_kvm!();
    let dir = ScratchDir::new("hostile-umask");
    let socket = dir.0.join("api.sock");
    let mut child = spawn_under_umask_000(&socket);
    let deadline = Instant::now() + Duration::from_secs(20);
    while UnixStream::connect(&socket).is_err() {
        assert!(Instant::now() < deadline, "the API socket never accepted");
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            panic!("petrel exited {status}: {err}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o7777;
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(mode, 0o600, "API socket mode {mode:04o} under umask 000");

    let open = dir.0.join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let child = spawn_under_umask_000(&open.join("api.sock"));
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("world-writable") && err.contains(&*open.to_string_lossy()),
        "{err}"
    );
    assert!(!open.join("api.sock").exists());
}

/// A command line longer than the guest can take (4095 bytes) is a 400 naming the field at
/// create, not a 500 at boot.
#[test]
fn a_command_line_too_long_to_boot_is_refused_at_create() {
    require_kvm!();
    let vm = ApiVm::start("hostile-cmdline", &[]);
    let long = format!("action=halt {}", "x".repeat(4096));
    let r = vm.put("vm.create", Some(&guest_config(&long)));
    assert_error(&r, 400, &["payload.cmdline", "4095"], "long cmdline");
    assert_eq!(vm.state(), None);
    let fits = format!("action=halt {}", "x".repeat(4095 - 12));
    assert_eq!(fits.len(), 4095);
    vm.put_ok("vm.create", Some(&guest_config(&fits)), 204);
    vm.put_ok("vm.boot", None, 204);
    vm.shutdown_vmm();
}

/// Sends `request` raw and returns the status of the answer.
fn raw_status(socket: &std::path::Path, request: &str) -> u16 {
    let mut s = UnixStream::connect(socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    let text = String::from_utf8_lossy(&got);
    text.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status in {text:?}"))
}

/// TRACE, QUERY and CONNECT on a known path are 405 (the document promises 405 for any
/// other method on a known path), as is any known method there; an unknown path stays 404.
#[test]
fn methods_never_served_are_405_on_a_known_path() {
    require_kvm!();
    let vm = ApiVm::start("hostile-405", &[]);
    for method in ["TRACE", "QUERY", "DELETE"] {
        let req = format!("{method} /api/v1/vmm.ping HTTP/1.1\r\nConnection: close\r\n\r\n");
        assert_eq!(raw_status(&vm.socket, &req), 405, "{method}");
    }
    let req = "TRACE /api/v1/nope HTTP/1.1\r\nConnection: close\r\n\r\n";
    assert_eq!(raw_status(&vm.socket, req), 404);
    vm.shutdown_vmm();
}

/// More idle clients than the server has slots (they connect and send nothing) do not
/// starve a client with a request: it is answered at once, and every refused connection
/// gets a 503 before it is closed, never a reset.
#[test]
fn idle_clients_do_not_starve_the_api() {
    require_kvm!();
    let vm = ApiVm::start("hostile-idle", &[]);
    let idle: Vec<UnixStream> = (0..40)
        .map(|_| UnixStream::connect(&vm.socket).unwrap())
        .collect();
    // Longer than the 100 ms after which an idle connection may be closed to make room.
    std::thread::sleep(Duration::from_millis(500));
    for i in 0..10 {
        let t0 = Instant::now();
        let r = vm.client.get("/api/v1/vmm.ping").unwrap();
        assert_eq!(
            r.status,
            200,
            "ping {i} with 40 idle clients: {}",
            r.error_message()
        );
        assert!(t0.elapsed() < PROMPT, "ping {i} took {:?}", t0.elapsed());
    }
    // Idle connections are closed soon (well before the 5 s a request may take).
    let t0 = Instant::now();
    for mut s in idle {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut buf = Vec::new();
        match s.read_to_end(&mut buf) {
            Ok(_) => {}
            Err(e) => panic!("an idle client got {e} instead of an orderly close"),
        }
        let text = String::from_utf8_lossy(&buf);
        assert!(
            buf.is_empty() || text.starts_with("HTTP/1.1 503"),
            "an idle client got {text:?}"
        );
    }
    assert!(
        t0.elapsed() < Duration::from_secs(4),
        "idle clients held for {:?}",
        t0.elapsed()
    );
    vm.shutdown_vmm();
}

/// A guest that reboots forever writes without end to its serial file and petrel's log:
/// under the default seccomp filters both stay bounded (the log rotates on the main thread,
/// the serial file written from vCPU threads stops at twice its cap) and petrel survives
/// (rotating never makes a syscall a thread's filter forbids).
#[test]
fn endless_guest_output_and_logs_stay_bounded_under_seccomp() {
    require_kvm!();
    let dir = ScratchDir::new("hostile-bounded");
    let (log, serial) = (dir.0.join("petrel.log"), dir.0.join("serial.log"));
    let kernel = petrel_tests::guest_image(petrel_tests::GuestKind::Pvh);
    let mut child = Command::new(petrel_bin())
        .arg("--kernel")
        .arg(&kernel)
        .args([
            "--cmdline",
            "action=reset",
            "--memory",
            "size=64M",
            "--seccomp",
            "true",
        ])
        .arg("--serial")
        .arg(format!("file={}", serial.display()))
        .arg("--log-file")
        .arg(&log)
        .env("PETREL_LOG_MAX_BYTES", "4000")
        .env("PETREL_SERIAL_MAX_BYTES", "1000")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let size = |p: &std::path::Path| std::fs::metadata(p).map_or(0, |m| m.len());
    let old_log = dir.0.join("petrel.log.1");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !(old_log.exists() && size(&serial) >= 2000) {
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "petrel ended ({status}) while the guest rebooted: log {}",
                size(&log)
            );
        }
        assert!(
            Instant::now() < deadline,
            "no rotation: log {} bytes, serial {} bytes",
            size(&log),
            size(&serial)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(500));
    assert!(child.try_wait().unwrap().is_none(), "petrel died");
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        size(&log) <= 4000 && size(&old_log) <= 4000,
        "log not bounded"
    );
    assert_eq!(size(&serial), 2000, "serial output past twice its cap");
    let mode = std::fs::metadata(&serial).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "serial file mode {mode:o}");
}
