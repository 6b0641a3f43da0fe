//! seccomp under the real `petrel` binary: with `--seccomp true` (the default) the test
//! guest's normal runs pass with every device (virtio-blk, -rng, -balloon, -vsock, -net on a
//! tap when one can be created, serial input, reboot, SIGTERM, the API socket); and a
//! forbidden syscall made on purpose (`PETREL_SECCOMP_SELFTEST=vmm|vcpu|api`, read by debug
//! builds) by each kind of thread ends the process with SIGSYS, while `--seccomp log` lets
//! it live; and the main thread cannot fork with `clone3` (`PETREL_SECCOMP_SELFTEST=fork`)
//! while its vCPU threads still start (glibc falls back to the filtered `clone`); and with
//! every path known at start (no API socket), the main thread opens only the files its VM
//! needs (Landlock; `PETREL_SECCOMP_SELFTEST=open`).

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use petrel_tests::{
    parse_boots, parse_first_boot, petrel_bin, require_kvm, run_petrel, scratch_path, GuestBoot,
    GuestKind, Petrel, Run,
};

const TIMEOUT: Duration = Duration::from_secs(120);
const SELFTEST_ENV: &str = "PETREL_SECCOMP_SELFTEST";

fn kernel() -> String {
    petrel_tests::guest_image(GuestKind::Pvh)
}

/// `--kernel <test guest> --seccomp true` and `args`.
fn args_with<'a>(kernel: &'a str, args: &[&'a str]) -> Vec<&'a str> {
    let mut all = vec!["--kernel", kernel, "--seccomp", "true"];
    all.extend_from_slice(args);
    all
}

fn boot(args: &[&str]) -> (Run, GuestBoot) {
    let kernel = kernel();
    let run = run_petrel(&args_with(&kernel, args), TIMEOUT);
    let b = parse_first_boot(&run.stdout);
    (run, b)
}

fn virtio_lines(b: &GuestBoot) -> Vec<&str> {
    b.other
        .iter()
        .filter_map(|l| l.strip_prefix("VIRTIO: "))
        .collect()
}

/// Exit 0 after a guest poweroff whose virtio driver finished with every `want` line.
fn assert_clean(run: &Run, b: &GuestBoot, want: &[&str]) {
    assert!(!run.timed_out, "petrel did not exit\n{}", run.dump());
    assert!(run.success(), "must exit 0 under seccomp\n{}", run.dump());
    assert_eq!(b.action.as_deref(), Some("poweroff"), "{}", run.dump());
    let lines = virtio_lines(b);
    assert!(
        !lines.iter().any(|l| l.starts_with("error")),
        "driver errors\n{}",
        run.dump()
    );
    for w in want {
        assert!(lines.contains(w), "missing `VIRTIO: {w}`\n{}", run.dump());
    }
}

/// A scratch file or socket path removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let p = scratch_path(name);
        let _ = std::fs::remove_file(&p);
        Scratch(p)
    }

    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn disks_rng_and_balloon_on_two_vcpus() {
    require_kvm!();
    let disk = Scratch::new("seccomp-disk.img");
    std::fs::write(&disk.0, vec![0u8; 1 << 20]).unwrap();
    let disk_arg = format!("path={},id=sc-disk", disk.path());
    let (run, b) = boot(&[
        "--cpus",
        "2",
        "--virtio-mmio-cmdline",
        "--disk",
        &disk_arg,
        "--rng",
        "--balloon",
        "size=16M,statistics_polling_interval_s=1",
        "--cmdline",
        "action=virtio-blk",
    ]);
    assert_clean(
        &run,
        &b,
        &["blk write-read ok", "blk flush status=0", "blk id=sc-disk"],
    );
    let (run, b) = boot(&[
        "--virtio-mmio-cmdline",
        "--rng",
        "--balloon",
        "size=16M",
        "--cmdline",
        "action=virtio-rng",
    ]);
    assert_clean(&run, &b, &["done"]);
}

#[test]
fn vsock_to_a_host_socket() {
    require_kvm!();
    let sock = Scratch::new("sc-vsock.sock");
    let port = Scratch(PathBuf::from(format!("{}_5001", sock.path())));
    let listener = UnixListener::bind(&port.0).unwrap();
    let host = thread::spawn(move || -> Result<(), String> {
        let (s, _) = listener.accept().map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(30))).ok();
        let mut line = String::new();
        BufReader::new(&s)
            .read_line(&mut line)
            .map_err(|e| e.to_string())?;
        (&s).write_all(b"hello from host\n")
            .map_err(|e| e.to_string())?;
        let _ = (&s).read(&mut [0u8; 64]);
        Ok(())
    });
    let vsock = format!("cid=3,socket={}", sock.path());
    let (run, b) = boot(&[
        "--virtio-mmio-cmdline",
        "--vsock",
        &vsock,
        "--cmdline",
        "action=virtio-vsock",
    ]);
    if !run.success() {
        // Unblock the host thread if the guest never connected.
        let _ = UnixStream::connect(&port.0);
    }
    assert_clean(&run, &b, &["vsock reply hello from host", "vsock closed"]);
    host.join().unwrap().unwrap();
}

/// A tap created for the test (needs CAP_NET_ADMIN), deleted on drop.
struct Tap(String);

impl Tap {
    fn create() -> Option<Tap> {
        let name = format!("psc{}", std::process::id() % 100_000);
        let ok = Command::new("ip")
            .args(["tuntap", "add", "dev", &name, "mode", "tap"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        let tap = ok.then(|| Tap(name))?;
        let up = Command::new("ip")
            .args(["link", "set", &tap.0, "up"])
            .status()
            .is_ok_and(|s| s.success());
        up.then_some(tap)
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", &self.0]).status();
    }
}

const ETHERTYPE: u16 = 0x88b5;

/// Answers the guest's first frame of the test ethertype on `tap` with one carrying
/// `PETREL-NET-RX 1` (through an AF_PACKET socket).
fn answer_frame(tap: &str) -> Result<(), String> {
    let proto = ETHERTYPE.to_be() as libc::c_int;
    // SAFETY: socket takes no pointers.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, proto) };
    if fd < 0 {
        return Err(format!("AF_PACKET: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: socket returned this descriptor; nothing else owns it.
    let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let raw = std::os::fd::AsRawFd::as_raw_fd(&fd);
    let name = std::ffi::CString::new(tap).unwrap();
    // SAFETY: `name` is NUL-terminated.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    // SAFETY: sockaddr_ll is plain data; all-zero is valid.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = ETHERTYPE.to_be();
    addr.sll_ifindex = index as i32;
    let len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
    // SAFETY: `addr` is a valid sockaddr_ll of `len` bytes.
    if unsafe { libc::bind(raw, (&raw const addr).cast(), len) } < 0 {
        return Err(format!("bind: {}", std::io::Error::last_os_error()));
    }
    let tv = libc::timeval {
        tv_sec: 60,
        tv_usec: 0,
    };
    let tv_len = std::mem::size_of::<libc::timeval>() as libc::socklen_t;
    // SAFETY: `tv` is a valid timeval of `tv_len` bytes.
    unsafe {
        libc::setsockopt(
            raw,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&raw const tv).cast(),
            tv_len,
        )
    };
    let mut buf = [0u8; 2048];
    // SAFETY: `buf` is writable for its length.
    let n = unsafe { libc::recv(raw, buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n < 14 {
        return Err(format!("no frame from the guest ({n})"));
    }
    let mut frame = Vec::with_capacity(64);
    frame.extend_from_slice(&buf[6..12]);
    frame.extend_from_slice(&[0x02, 0, 0, 0, 0, 1]);
    frame.extend_from_slice(&ETHERTYPE.to_be_bytes());
    frame.extend_from_slice(b"PETREL-NET-RX 1");
    frame.resize(60, 0);
    // SAFETY: `frame` is readable for its length.
    let sent = unsafe { libc::send(raw, frame.as_ptr().cast(), frame.len(), 0) };
    if sent < 0 {
        return Err(format!("send: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

#[test]
fn net_on_a_tap() {
    require_kvm!();
    let Some(tap) = Tap::create() else {
        petrel_tests::skip("cannot create a tap (needs CAP_NET_ADMIN and /dev/net/tun)");
        return;
    };
    let name = tap.0.clone();
    let host = thread::spawn(move || answer_frame(&name));
    let net = format!("tap={}", tap.0);
    let (run, b) = boot(&[
        "--virtio-mmio-cmdline",
        "--net",
        &net,
        "--cmdline",
        "action=virtio-net",
    ]);
    assert_clean(&run, &b, &["net tx ok", "net rx PETREL-NET-RX 1"]);
    host.join().unwrap().unwrap();
}

#[test]
fn serial_input_reboot_and_sigterm() {
    require_kvm!();
    let kernel = kernel();
    let mut p = Petrel::spawn_with_stdin(&args_with(&kernel, &["--cmdline", "action=echo"]));
    assert!(
        p.wait_for_stdout(TIMEOUT, |s| s.contains("ECHO: ready")),
        "{}",
        p.stderr()
    );
    p.write_stdin(b"under seccomp\n").unwrap();
    let run = p.wait(TIMEOUT);
    assert!(run.success(), "{}", run.dump());
    assert_eq!(
        parse_first_boot(&run.stdout).echo,
        ["ready", "under seccomp"]
    );

    let run = run_petrel(
        &args_with(&kernel, &["--cmdline", "action=reset-once"]),
        TIMEOUT,
    );
    assert!(run.success(), "{}", run.dump());
    assert_eq!(parse_boots(&run.stdout).len(), 2, "{}", run.dump());

    let mut p = Petrel::spawn(&args_with(
        &kernel,
        &["--cpus", "2", "--cmdline", "action=halt"],
    ));
    assert!(
        p.wait_for_stdout(TIMEOUT, |s| s.contains("PETREL-GUEST: halt")),
        "{}",
        p.stderr()
    );
    thread::sleep(Duration::from_millis(200));
    p.signal(libc::SIGTERM);
    let run = p.wait(TIMEOUT);
    assert!(
        run.success(),
        "SIGTERM must end petrel cleanly\n{}",
        run.dump()
    );
}

/// Sends one HTTP request over the API socket; returns the status line.
fn api_request(sock: &Path, request: &str) -> Result<String, String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let s = loop {
        match UnixStream::connect(sock) {
            Ok(s) => break s,
            Err(_) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(format!("connect {}: {e}", sock.display())),
        }
    };
    s.set_read_timeout(Some(Duration::from_secs(30))).ok();
    (&s).write_all(request.as_bytes())
        .map_err(|e| e.to_string())?;
    let mut line = String::new();
    BufReader::new(&s)
        .read_line(&mut line)
        .map_err(|e| e.to_string())?;
    Ok(line.trim_end().to_string())
}

#[test]
fn api_socket_serves_under_seccomp() {
    require_kvm!();
    let kernel = kernel();
    let sock = Scratch::new("sc-api.sock");
    let mut p = Petrel::spawn(&args_with(
        &kernel,
        &["--api-socket", sock.path(), "--cmdline", "action=halt"],
    ));
    assert!(
        p.wait_for_stdout(TIMEOUT, |s| s.contains("PETREL-GUEST: halt")),
        "{}",
        p.stderr()
    );
    let ping = api_request(
        &sock.0,
        "GET /api/v1/vmm.ping HTTP/1.1\r\nHost: petrel\r\n\r\n",
    );
    let bad = api_request(&sock.0, "nonsense\r\n\r\n");
    p.signal(libc::SIGTERM);
    let run = p.wait(TIMEOUT);
    assert!(run.success(), "{}", run.dump());
    // Cloud Hypervisor's status line: the code and an empty reason phrase (trimmed here).
    assert_eq!(ping.as_deref(), Ok("HTTP/1.1 200"), "{}", run.dump());
    assert!(bad.as_deref() == Ok("HTTP/1.1 400"), "{bad:?}");
}

#[test]
fn log_and_false_modes_run_and_bad_values_are_refused() {
    require_kvm!();
    let kernel = kernel();
    for mode in ["log", "false"] {
        let run = run_petrel(&["--kernel", &kernel, "--seccomp", mode], TIMEOUT);
        assert!(run.success(), "--seccomp {mode}\n{}", run.dump());
    }
    let run = run_petrel(&["--kernel", &kernel, "--seccomp", "maybe"], TIMEOUT);
    assert_eq!(run.code(), Some(2), "{}", run.dump());
    assert!(
        run.stderr.contains("--seccomp") && run.stderr.contains("maybe"),
        "{}",
        run.dump()
    );
}

/// Runs petrel with `PETREL_SECCOMP_SELFTEST=<kind>` and `args` until it exits (SIGTERM
/// once its stderr shows `stop_at`, if given); returns its status (`None`: killed at the timeout) and
/// stderr.
fn selftest(kind: &str, args: &[&str], stop_at: Option<&str>) -> (Option<ExitStatus>, String) {
    let mut cmd = Command::new(petrel_bin());
    cmd.args(args)
        .env(SELFTEST_ENV, kind)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    // SAFETY: the closure runs in the forked child before exec and only calls setrlimit,
    // which is async-signal-safe: no core file for the SIGSYS it is about to get.
    unsafe {
        cmd.pre_exec(|| {
            let none = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            libc::setrlimit(libc::RLIMIT_CORE, &none);
            Ok(())
        })
    };
    let mut child = cmd.spawn().unwrap();
    let mut pipe = child.stderr.take().unwrap();
    let stderr = Arc::new(Mutex::new(Vec::new()));
    let sink = stderr.clone();
    let reader = thread::spawn(move || {
        let mut chunk = [0u8; 4096];
        while let Ok(n @ 1..) = pipe.read(&mut chunk) {
            sink.lock().unwrap().extend_from_slice(&chunk[..n]);
        }
    });
    let text = || String::from_utf8_lossy(&stderr.lock().unwrap()).into_owned();
    let deadline = Instant::now() + TIMEOUT;
    let mut stopped = false;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        if !stopped && stop_at.is_some_and(|w| text().contains(w)) {
            // SAFETY: kill(2) on our own child, not yet reaped (try_wait saw it running).
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
            stopped = true;
        }
        thread::sleep(Duration::from_millis(10));
    };
    let _ = reader.join();
    (status, text())
}

#[test]
fn a_forbidden_syscall_on_each_thread_kind_ends_petrel_with_sigsys() {
    require_kvm!();
    let kernel = kernel();
    for kind in ["vmm", "vcpu", "api"] {
        let sock = Scratch::new(&format!("sc-self-{kind}.sock"));
        let base = ["--kernel", kernel.as_str(), "--api-socket", sock.path()];
        // Enforcing, explicitly and by default: SIGSYS.
        for explicit in [true, false] {
            let mut args = base.to_vec();
            if explicit {
                args.extend(["--seccomp", "true"]);
            }
            args.extend(["--cmdline", "action=halt"]);
            let (status, stderr) = selftest(kind, &args, None);
            assert!(
                stderr.contains(&format!("seccomp selftest: the {kind} thread makes")),
                "{kind}: the self-test did not run (a debug build is needed)\n{stderr}"
            );
            assert_eq!(
                status.and_then(|s| s.signal()),
                Some(libc::SIGSYS),
                "{kind} (explicit={explicit}): status {status:?}\n{stderr}"
            );
        }
        // Logging: the call goes through and petrel carries on until it is told to stop.
        let mut args = base.to_vec();
        args.extend(["--seccomp", "log", "--cmdline", "action=halt"]);
        let survived = format!("seccomp selftest: the {kind} thread survived");
        let (status, stderr) = selftest(kind, &args, Some(&survived));
        assert!(
            status.is_some_and(|s| s.success()),
            "{kind} under log: status {status:?}\n{stderr}"
        );
        assert!(stderr.contains(&survived), "{kind}\n{stderr}");
    }
}

#[test]
fn the_main_thread_cannot_fork_with_clone3_and_still_starts_vcpus() {
    require_kvm!();
    let kernel = kernel();
    // Two vCPUs: their threads start after the main thread's filter is in place, through
    // glibc's fallback from the refused clone3 to clone.
    let args = args_with(&kernel, &["--cpus", "2", "--cmdline", "action=poweroff"]);
    let (status, stderr) = selftest("fork", &args, None);
    assert!(
        stderr.contains("seccomp selftest: the vmm thread tries to fork with clone3"),
        "the self-test did not run (a debug build is needed)\n{stderr}"
    );
    assert!(
        stderr.contains("seccomp selftest: clone3 refused (ENOSYS)"),
        "clone3 was not refused\n{stderr}"
    );
    assert!(
        status.is_some_and(|s| s.success()),
        "status {status:?}\n{stderr}"
    );
}

#[test]
fn the_main_thread_opens_only_what_its_vm_needs() {
    require_kvm!();
    let kernel = kernel();
    // A VM from the command line: Landlock applies, /etc/hostname is out of reach.
    let args = args_with(&kernel, &["--cmdline", "action=poweroff"]);
    let (status, stderr) = selftest("open", &args, None);
    assert!(
        stderr
            .contains("seccomp selftest: the vmm thread opening /etc/hostname: Permission denied"),
        "/etc/hostname was not refused\n{stderr}"
    );
    assert!(
        status.is_some_and(|s| s.success()),
        "status {status:?}\n{stderr}"
    );
    // With an API socket Landlock waits for the first boot (landlock/deferred.rs), which
    // comes after this probe.
    let sock = Scratch::new("sc-open.sock");
    let mut args = args_with(&kernel, &["--cmdline", "action=poweroff"]);
    args.extend(["--api-socket", sock.path()]);
    // petrel stays up with an API socket: stopped with SIGTERM once the probe ran.
    let (status, stderr) = selftest("open", &args, Some("the vmm thread opening /etc/hostname"));
    assert!(
        stderr.contains("seccomp selftest: the vmm thread opening /etc/hostname: opened"),
        "{stderr}"
    );
    assert!(
        status.is_some_and(|s| s.success()),
        "status {status:?}\n{stderr}"
    );
}
