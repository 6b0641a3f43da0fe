//! Boots the freestanding test guest's virtio-net and virtio-vsock drivers
//! (`tests/guests/virtio_net.c`, `virtio_vsock.c`) under the real `petrel` binary.
//!
//! - net: the test creates a tap, listens on it with an `AF_PACKET` socket, reads the frame
//!   the guest sends and answers with one the guest must print. The tap is deleted on every
//!   path, and must survive petrel's exit (petrel did not create it).
//! - vsock: a Unix listener at `<socket>_5001` answers the guest's line with `pong`; without
//!   the listener the guest's connection is refused with an RST.

use std::ffi::CString;
use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::mem::size_of;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use petrel_tests::{parse_first_boot, require_kvm, run_petrel, GuestBoot, GuestKind, Petrel, Run};

const TIMEOUT: Duration = Duration::from_secs(120);
/// IEEE 802 local experimental ethertype 1, what the guest sends and looks for.
const ETHERTYPE: u16 = 0x88b5;
const ETH_HLEN: usize = 14;
/// Shortest Ethernet frame without FCS.
const ETH_ZLEN: usize = 60;
const TX_PAYLOAD: &str = "PETREL-NET-TX 1";
const RX_PAYLOAD: &str = "PETREL-NET-RX hello";
/// The source MAC of the host's answer (locally administered, unicast).
const HOST_MAC: [u8; 6] = [0x02, 0x50, 0x45, 0x54, 0x00, 0x01];

/// Returns from the calling test when `/dev/net/tun` is missing.
macro_rules! require_tun {
    () => {
        if !Path::new("/dev/net/tun").exists() {
            eprintln!("skipped: /dev/net/tun not available");
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

/// An `AF_PACKET` raw socket bound to one interface and to [`ETHERTYPE`].
struct PacketSocket(OwnedFd);

impl PacketSocket {
    fn bind(ifname: &str) -> io::Result<PacketSocket> {
        let name = CString::new(ifname).map_err(io::Error::other)?;
        // SAFETY: `name` is a valid NUL-terminated string that outlives the call.
        let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
        if index == 0 {
            return Err(io::Error::last_os_error());
        }
        let proto = ETHERTYPE.to_be();
        // SAFETY: socket(2) with constant arguments; the result is checked.
        let fd = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::c_int::from(proto),
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a descriptor socket(2) just returned, owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: sockaddr_ll is plain old data; all zeroes is a valid value.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = proto;
        sll.sll_ifindex = i32::try_from(index).map_err(io::Error::other)?;
        // SAFETY: `sll` is a valid sockaddr_ll and the length passed is its size.
        let r = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&sll as *const libc::sockaddr_ll).cast(),
                size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(PacketSocket(fd))
    }

    /// The next frame arriving on the interface (frames we sent are skipped), or `None`
    /// when none came within `timeout`.
    fn recv(&self, timeout: Duration) -> io::Result<Option<Vec<u8>>> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            let mut pfd = libc::pollfd {
                fd: self.0.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            let ms = left.as_millis().clamp(1, 1000) as libc::c_int;
            // SAFETY: one valid pollfd for the duration of the call.
            let n = unsafe { libc::poll(&mut pfd, 1, ms) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if n == 0 {
                continue;
            }
            let mut buf = vec![0u8; 4096];
            // SAFETY: sockaddr_ll is plain old data; all zeroes is a valid value.
            let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut len = size_of::<libc::sockaddr_ll>() as libc::socklen_t;
            // SAFETY: `buf` and `from` are valid for the lengths passed, `len` is in-out.
            let r = unsafe {
                libc::recvfrom(
                    self.0.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                    (&mut from as *mut libc::sockaddr_ll).cast(),
                    &mut len,
                )
            };
            if r < 0 {
                let e = io::Error::last_os_error();
                if matches!(
                    e.kind(),
                    io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock
                ) {
                    continue;
                }
                return Err(e);
            }
            if from.sll_pkttype == libc::PACKET_OUTGOING {
                continue;
            }
            buf.truncate(r as usize);
            return Ok(Some(buf));
        }
    }

    /// Transmits `frame` (a whole Ethernet frame) on the interface.
    fn send(&self, frame: &[u8]) -> io::Result<()> {
        // SAFETY: `frame` is valid for its length; the socket is bound to the interface.
        let r = unsafe { libc::send(self.0.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        match r {
            n if n < 0 => Err(io::Error::last_os_error()),
            n if n as usize == frame.len() => Ok(()),
            n => Err(io::Error::other(format!(
                "short send: {n} of {}",
                frame.len()
            ))),
        }
    }
}

/// An Ethernet frame of [`ETHERTYPE`] carrying `payload`, zero-padded to [`ETH_ZLEN`].
fn frame(dst: [u8; 6], src: [u8; 6], payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(ETH_ZLEN.max(ETH_HLEN + payload.len()));
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ETHERTYPE.to_be_bytes());
    f.extend_from_slice(payload);
    f.resize(f.len().max(ETH_ZLEN), 0);
    f
}

fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut mac {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// The guest's `VIRTIO: …` lines (without the prefix).
fn virtio_lines(b: &GuestBoot) -> Vec<&str> {
    b.other
        .iter()
        .filter_map(|l| l.strip_prefix("VIRTIO: "))
        .collect()
}

fn assert_clean_poweroff(run: &Run, b: &GuestBoot) {
    assert!(!run.timed_out, "petrel did not exit\n{}", run.dump());
    assert!(run.success(), "poweroff must exit 0\n{}", run.dump());
    assert!(b.exception.is_none(), "guest exception\n{}", run.dump());
    assert_eq!(b.action.as_deref(), Some("poweroff"), "{}", run.dump());
    assert!(
        virtio_lines(b).contains(&"done"),
        "driver did not finish\n{}",
        run.dump()
    );
}

fn assert_no_driver_errors(run: &Run, b: &GuestBoot) {
    let errors: Vec<&str> = virtio_lines(b)
        .into_iter()
        .filter(|l| l.starts_with("error"))
        .collect();
    assert!(
        errors.is_empty(),
        "driver errors {errors:?}\n{}",
        run.dump()
    );
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
            eprintln!("skipped: cannot create tap {name}: {e}");
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
        sock.send(&frame(dst, HOST_MAC, RX_PAYLOAD.as_bytes()))
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
        frame([0xff; 6], mac, TX_PAYLOAD.as_bytes()),
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
