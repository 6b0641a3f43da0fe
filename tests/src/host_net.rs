//! The host side of a guest's virtio-net interface for tests: a tap opened by the test itself
//! (as an orchestrator does before handing its fd to petrel), and an `AF_PACKET` socket bound
//! to it that reads the guest's frames and sends it some.

use std::ffi::CString;
use std::fs::OpenOptions;
use std::io;
use std::mem::size_of;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

/// The tun/tap control device.
pub const TUN_DEVICE: &str = "/dev/net/tun";
/// IEEE 802 local experimental ethertype 1: what the test guest sends and looks for.
pub const TEST_ETHERTYPE: u16 = 0x88b5;
/// Shortest Ethernet frame without FCS.
pub const ETH_ZLEN: usize = 60;

/// A zeroed `ifreq` naming `name`.
fn ifreq(name: &str) -> io::Result<libc::ifreq> {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() >= libc::IFNAMSIZ || bytes.contains(&0) {
        return Err(io::Error::other(format!("bad interface name {name:?}")));
    }
    // SAFETY: ifreq holds only integers, byte arrays, plain C structs and a raw pointer, for
    // all of which the all-zero bit pattern is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, &src) in ifr.ifr_name.iter_mut().zip(bytes) {
        *dst = src as libc::c_char;
    }
    Ok(ifr)
}

/// A tap interface that exists while this descriptor is open (not persistent), opened with
/// `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR` as Kata and Cloud Hypervisor expect.
pub struct TapFd {
    fd: OwnedFd,
    name: String,
}

impl TapFd {
    /// Creates tap `name` (needs `CAP_NET_ADMIN`) and sets it up (a tap passed as a
    /// descriptor is used as it is: its owner brings it up).
    pub fn open(name: &str) -> io::Result<TapFd> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(TUN_DEVICE)?;
        let fd = OwnedFd::from(file);
        let mut ifr = ifreq(name)?;
        ifr.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as _;
        // SAFETY: TUNSETIFF reads the ifreq, which is valid and lives across the call; `fd` is
        // an open /dev/net/tun file.
        if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &mut ifr) } < 0 {
            return Err(io::Error::last_os_error());
        }
        let tap = TapFd {
            fd,
            name: name.to_string(),
        };
        // The kernel would send IPv6 router solicitations on it otherwise (harmless to the
        // test guest, which skips other ethertypes, but noise on the wire).
        let sysctl = format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6");
        if Path::new(&sysctl).exists() {
            let _ = std::fs::write(&sysctl, "1");
        }
        tap.set_up()?;
        Ok(tap)
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Sets IFF_UP on the interface.
    fn set_up(&self) -> io::Result<()> {
        // SAFETY: socket(2) takes no pointers; the result is checked.
        let sock = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if sock < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `sock` was just returned by socket(2) and nothing else owns it.
        let sock = unsafe { OwnedFd::from_raw_fd(sock) };
        let mut ifr = ifreq(&self.name)?;
        // SAFETY: SIOCGIFFLAGS fills the ifreq, which is valid for the call.
        if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut ifr) } < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
        let flags = unsafe { ifr.ifr_ifru.ifru_flags };
        ifr.ifr_ifru.ifru_flags = flags | libc::IFF_UP as libc::c_short;
        // SAFETY: SIOCSIFFLAGS reads the ifreq, which is valid for the call.
        if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &ifr) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

impl AsFd for TapFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// An `AF_PACKET` raw socket bound to one interface and to [`TEST_ETHERTYPE`].
pub struct PacketSocket(OwnedFd);

impl PacketSocket {
    /// Binds to interface `ifname`.
    pub fn bind(ifname: &str) -> io::Result<PacketSocket> {
        let name = CString::new(ifname).map_err(io::Error::other)?;
        // SAFETY: `name` is a valid NUL-terminated string that outlives the call.
        let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
        if index == 0 {
            return Err(io::Error::last_os_error());
        }
        let proto = TEST_ETHERTYPE.to_be();
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
                (&raw const sll).cast(),
                size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(PacketSocket(fd))
    }

    /// The next frame arriving from the interface (frames sent from this host are skipped),
    /// or `None` when none came within `timeout`.
    pub fn recv(&self, timeout: Duration) -> io::Result<Option<Vec<u8>>> {
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
            if n <= 0 {
                let e = io::Error::last_os_error();
                if n < 0 && e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
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
                    (&raw mut from).cast(),
                    &mut len,
                )
            };
            let Ok(r) = usize::try_from(r) else {
                let e = io::Error::last_os_error();
                if matches!(
                    e.kind(),
                    io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock
                ) {
                    continue;
                }
                return Err(e);
            };
            if from.sll_pkttype == libc::PACKET_OUTGOING {
                continue;
            }
            buf.truncate(r);
            return Ok(Some(buf));
        }
    }

    /// Transmits `frame` (a whole Ethernet frame) on the interface.
    pub fn send(&self, frame: &[u8]) -> io::Result<()> {
        // SAFETY: `frame` is valid for its length; the socket is bound to the interface.
        let r = unsafe { libc::send(self.0.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        match usize::try_from(r) {
            Ok(n) if n == frame.len() => Ok(()),
            Ok(n) => Err(io::Error::other(format!(
                "short send: {n} of {}",
                frame.len()
            ))),
            Err(_) => Err(io::Error::last_os_error()),
        }
    }
}

/// An Ethernet frame of [`TEST_ETHERTYPE`] carrying `payload`, zero-padded to [`ETH_ZLEN`].
pub fn test_frame(dst: [u8; 6], src: [u8; 6], payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(ETH_ZLEN.max(14 + payload.len()));
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&TEST_ETHERTYPE.to_be_bytes());
    f.extend_from_slice(payload);
    f.resize(f.len().max(ETH_ZLEN), 0);
    f
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut mac {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}
