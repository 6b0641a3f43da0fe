//! Boots the freestanding test guest's virtio-net and virtio-vsock drivers
//! (`tests/guests/virtio_net.c`, `virtio_vsock.c`) under the real `petrel` binary.
//!
//! - net: the test creates a tap, listens on it with an `AF_PACKET` socket, reads the frame
//!   the guest sends and answers with one the guest must print. The tap is deleted on every
//!   path, and must survive petrel's exit (petrel did not create it).
//! - vsock: a Unix listener at `<socket>_5001` answers the guest's line with `pong`; without
//!   the listener the guest's connection is refused with an RST.

use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use petrel_tests::host_net::{parse_mac, test_frame, PacketSocket, TUN_DEVICE};
use petrel_tests::virtio_checks::{assert_clean_poweroff, assert_no_driver_errors, virtio_lines};
use petrel_tests::{parse_first_boot, require_kvm, run_petrel, GuestBoot, GuestKind, Petrel, Run};

const TIMEOUT: Duration = Duration::from_secs(120);
const TX_PAYLOAD: &str = "PETREL-NET-TX 1";
const RX_PAYLOAD: &str = "PETREL-NET-RX hello";
/// The source MAC of the host's answer (locally administered, unicast).
const HOST_MAC: [u8; 6] = [0x02, 0x50, 0x45, 0x54, 0x00, 0x01];

/// Returns from the calling test when `/dev/net/tun` is missing.
macro_rules! require_tun {
    () => {
        if !Path::new(TUN_DEVICE).exists() {
            petrel_tests::skip(format!("{TUN_DEVICE} not available"));
            return;
        }
    };
}

/// Runs `ip ARGS`; the error holds its output.
fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run ip {args:?}: {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    Err(format!(
        "ip {args:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    ))
}

/// A persistent tap interface created for the test, deleted on drop.
struct TapGuard(String);

impl TapGuard {
    /// Creates `name` (deleting a stale one first), disables IPv6 on it so that the kernel
    /// sends nothing, and sets it up.
    fn create(name: &str) -> Result<TapGuard, String> {
        if Path::new("/sys/class/net").join(name).exists() {
            ip(&["link", "del", "dev", name])?;
        }
        ip(&["tuntap", "add", "dev", name, "mode", "tap"])?;
        let guard = TapGuard(name.to_string());
        let sysctl = format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6");
        if Path::new(&sysctl).exists() {
            fs::write(&sysctl, "1").map_err(|e| format!("{sysctl}: {e}"))?;
        }
        ip(&["link", "set", "dev", name, "up"])?;
        Ok(guard)
    }

    fn exists(&self) -> bool {
        Path::new("/sys/class/net").join(&self.0).exists()
    }
}

impl Drop for TapGuard {
    fn drop(&mut self) {
        if let Err(e) = ip(&["link", "del", "dev", &self.0]) {
            eprintln!("warning: cannot delete tap {}: {e}", self.0);
        }
    }
}

fn assert_line(run: &Run, b: &GuestBoot, want: &str) {
    assert!(
        virtio_lines(b).contains(&want),
        "missing `VIRTIO: {want}`\n{}",
        run.dump()
    );
}

#[test]
fn virtio_net_frame_out_to_tap_and_back() {
    require_kvm!();
    require_tun!();
    let name = format!("pgt{}", std::process::id());
    let tap = match TapGuard::create(&name) {
        Ok(t) => t,
        Err(e) => {
            petrel_tests::skip(format!("cannot create tap {name}: {e}"));
            return;
        }
    };
    let sock = PacketSocket::bind(&name).unwrap();
    let kernel = petrel_tests::guest_image(GuestKind::Pvh);
    let net_arg = format!("tap={name}");
    let mut p = Petrel::spawn(&[
        "--kernel",
        &kernel,
        "--virtio-mmio-cmdline",
        "--net",
        &net_arg,
        "--cmdline",
        "action=virtio-net",
    ]);
    let tx_ok = p.wait_for_stdout(TIMEOUT, |s| s.contains("VIRTIO: net tx ok"));
    // The frame was written to the tap before the guest saw its TX buffer used.
    let got = sock.recv(Duration::from_secs(10)).unwrap();
    if let Some(f) = &got {
        // Answer at once: the guest is polling its RX queue.
        let dst = f
            .get(6..12)
            .and_then(|m| m.try_into().ok())
            .unwrap_or([0; 6]);
        sock.send(&test_frame(dst, HOST_MAC, RX_PAYLOAD.as_bytes()))
            .unwrap();
    }
    let run = p.wait(TIMEOUT);
    let b = parse_first_boot(&run.stdout);
    assert!(tx_ok, "no `VIRTIO: net tx ok`\n{}", run.dump());
    let f = got.unwrap_or_else(|| panic!("no frame from the guest on {name}\n{}", run.dump()));
    assert_clean_poweroff(&run, &b);
    assert_no_driver_errors(&run, &b);

    let mac = virtio_lines(&b)
        .into_iter()
        .find_map(|l| l.strip_prefix("net mac="))
        .and_then(parse_mac)
        .unwrap_or_else(|| panic!("no valid `VIRTIO: net mac=` line\n{}", run.dump()));
    assert_eq!(
        f,
        test_frame([0xff; 6], mac, TX_PAYLOAD.as_bytes()),
        "the guest's frame (broadcast from its MAC, payload {TX_PAYLOAD:?})"
    );
    assert_line(&run, &b, &format!("net rx {RX_PAYLOAD}"));
    assert!(
        tap.exists(),
        "petrel deleted tap {name}, which it did not create"
    );
}

/// A scratch directory under the system temporary directory (short: Unix socket paths are
/// limited to 107 bytes), removed on drop.
struct ScratchDir(PathBuf);

impl ScratchDir {
    fn new(name: &str) -> ScratchDir {
        let dir = std::env::temp_dir().join(format!("petrel-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        ScratchDir(dir)
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// What the host end of the guest's connection saw.
#[derive(Debug)]
struct Served {
    line: String,
    /// The connection was closed (EOF) after the answer.
    eof: bool,
}

/// Accepts one connection on `listener` (giving up at `timeout` or when `stop` is set),
/// reads a line, answers `pong\n` and reads until the peer closes.
fn serve_pong(
    listener: UnixListener,
    timeout: Duration,
    stop: &AtomicBool,
) -> Result<Served, String> {
    listener.set_nonblocking(true).map_err(|e| e.to_string())?;
    let deadline = Instant::now() + timeout;
    let stream = loop {
        match listener.accept() {
            Ok((s, _)) => break s,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if Instant::now() >= deadline || stop.load(Ordering::Relaxed) {
                    return Err("the guest did not connect".into());
                }
                thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return Err(format!("accept: {e}")),
        }
    };
    let io = |e: io::Error| e.to_string();
    stream.set_nonblocking(false).map_err(io)?;
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .map_err(io)?;
    let mut reader = BufReader::new(stream.try_clone().map_err(io)?);
    let mut line = String::new();
    reader.read_line(&mut line).map_err(io)?;
    (&stream).write_all(b"pong\n").map_err(io)?;
    let mut rest = Vec::new();
    let eof = reader.read_to_end(&mut rest).is_ok() && rest.is_empty();
    Ok(Served { line, eof })
}

fn boot_vsock(socket: &Path) -> (Run, GuestBoot) {
    let kernel = petrel_tests::guest_image(GuestKind::Pvh);
    let vsock_arg = format!("cid=3,socket={}", socket.display());
    let run = run_petrel(
        &[
            "--kernel",
            &kernel,
            "--virtio-mmio-cmdline",
            "--vsock",
            &vsock_arg,
            "--cmdline",
            "action=virtio-vsock",
        ],
        TIMEOUT,
    );
    let b = parse_first_boot(&run.stdout);
    (run, b)
}

#[test]
fn virtio_vsock_guest_connects_to_host_socket() {
    require_kvm!();
    let dir = ScratchDir::new("vsock");
    let socket = dir.0.join("v.sock");
    let listener = UnixListener::bind(dir.0.join("v.sock_5001")).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let server = thread::spawn(move || serve_pong(listener, TIMEOUT, &stop2));
    let (run, b) = boot_vsock(&socket);
    stop.store(true, Ordering::Relaxed);
    let served = server.join().unwrap();
    assert_clean_poweroff(&run, &b);
    assert_no_driver_errors(&run, &b);
    assert_line(&run, &b, "vsock cid=3");
    assert_line(&run, &b, "vsock reply pong");
    assert_line(&run, &b, "vsock closed");
    let served = served.unwrap_or_else(|e| panic!("host end: {e}\n{}", run.dump()));
    assert_eq!(served.line, "hello from petrel guest\n", "{}", run.dump());
    assert!(
        served.eof,
        "host connection not closed after the guest's SHUTDOWN"
    );
    assert!(
        !socket.exists(),
        "petrel left its vsock socket {} behind",
        socket.display()
    );
}

#[test]
fn virtio_vsock_connection_without_listener_is_refused() {
    require_kvm!();
    let dir = ScratchDir::new("vsock-refused");
    let (run, b) = boot_vsock(&dir.0.join("v.sock"));
    assert_clean_poweroff(&run, &b);
    assert_line(&run, &b, "vsock cid=3");
    assert_line(&run, &b, "error vsock connect to port 5001 refused (RST)");
}
