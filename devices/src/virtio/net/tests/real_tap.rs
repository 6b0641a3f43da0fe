//! Frames through a real tap interface: the guest's TX frame is seen on the host interface by
//! a raw `AF_PACKET` socket, and a frame that socket sends out of the interface lands in the
//! guest's RX buffer. Needs `/dev/net/tun` and `CAP_NET_ADMIN`; skipped (with a message)
//! without them.

use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use event_manager::{EventManager, SubscriberOps};

use super::*;

const ETHERTYPE: u16 = 0x88b5; // IEEE local experimental.
const HOST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
const RX_BUFFERS: u16 = 16;

/// Deletes the tap, if it is still there, on every path out of the test.
struct TapGuard(String);

impl Drop for TapGuard {
    fn drop(&mut self) {
        if Path::new("/sys/class/net").join(&self.0).exists() {
            let _ = std::process::Command::new("ip")
                .args(["link", "del", &self.0])
                .output();
        }
    }
}

fn unique_name() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "ptest{}n{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

fn ifreq_for(name: &str) -> libc::ifreq {
    // SAFETY: ifreq is plain data; all zeroes is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, &s) in ifr.ifr_name.iter_mut().zip(name.as_bytes()) {
        *d = s as libc::c_char;
    }
    ifr
}

fn socket(domain: i32, kind: i32, proto: i32) -> OwnedFd {
    // SAFETY: socket takes no pointers.
    let fd = unsafe { libc::socket(domain, kind | libc::SOCK_CLOEXEC, proto) };
    assert!(fd >= 0, "socket: {}", io::Error::last_os_error());
    // SAFETY: socket just returned this descriptor; nothing else owns it.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// Sets IFF_UP on the interface.
fn bring_up(name: &str) {
    let sock = socket(libc::AF_INET, libc::SOCK_DGRAM, 0);
    let mut ifr = ifreq_for(name);
    // SAFETY: SIOCGIFFLAGS fills the ifreq, valid for the call.
    let ret = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut ifr) };
    assert_eq!(ret, 0, "SIOCGIFFLAGS: {}", io::Error::last_os_error());
    // SAFETY: the flags member was filled in by SIOCGIFFLAGS.
    unsafe { ifr.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    // SAFETY: SIOCSIFFLAGS reads the ifreq, valid for the call.
    let ret = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &ifr) };
    assert_eq!(ret, 0, "SIOCSIFFLAGS: {}", io::Error::last_os_error());
}

/// A raw socket seeing every frame on the interface, with a 100 ms receive timeout.
fn packet_socket(name: &str) -> OwnedFd {
    let proto = (libc::ETH_P_ALL as u16).to_be();
    let sock = socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(proto));
    let cname = std::ffi::CString::new(name).unwrap();
    // SAFETY: cname is a valid NUL-terminated string for the call.
    let index = unsafe { libc::if_nametoindex(cname.as_ptr()) };
    assert_ne!(index, 0, "if_nametoindex: {}", io::Error::last_os_error());
    let addr = libc::sockaddr_ll {
        sll_family: libc::AF_PACKET as u16,
        sll_protocol: proto,
        sll_ifindex: index as i32,
        sll_hatype: 0,
        sll_pkttype: 0,
        sll_halen: 0,
        sll_addr: [0; 8],
    };
    // SAFETY: addr is a valid sockaddr_ll of the given size for the call.
    let ret = unsafe {
        libc::bind(
            sock.as_raw_fd(),
            (&addr as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    assert_eq!(ret, 0, "bind: {}", io::Error::last_os_error());
    let tv = libc::timeval {
        tv_sec: 0,
        tv_usec: 100_000,
    };
    // SAFETY: tv is a valid timeval of the given size for the call.
    let ret = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as u32,
        )
    };
    assert_eq!(ret, 0, "SO_RCVTIMEO: {}", io::Error::last_os_error());
    sock
}

/// A 60-byte Ethernet frame of our test type carrying `text`.
fn frame(dst: [u8; 6], src: [u8; 6], text: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(60);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ETHERTYPE.to_be_bytes());
    f.extend_from_slice(text);
    f.resize(60, 0);
    f
}

#[test]
fn frames_cross_a_real_tap_both_ways() {
    if !Path::new(tap::TUN_DEVICE).exists() {
        test_skip::skip(format!("{} is missing", tap::TUN_DEVICE));
        return;
    }
    let name = unique_name();
    let guard = TapGuard(name.clone());
    let mut cfg = config("net-real");
    cfg.tap = TapSource::Name(name.clone());
    let net = match Net::new(cfg) {
        Ok(net) => net,
        Err(e) => {
            test_skip::skip(format!(
                "cannot create tap {name}: {e}: {:?}",
                std::error::Error::source(&e)
            ));
            return;
        }
    };
    assert_eq!(net.tap().name(), name);
    // Keep the host's own traffic (IPv6 router solicitations and the like) off the tap.
    let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6"), "1");
    bring_up(&name);
    let sniffer = packet_socket(&name);
    let guest_mac = net.mac();
    let (_, unused) = socket_pair();
    let mut rig = Rig::around(net, unused);
    // Every offload the device offers: TUNSETOFFLOAD must accept the matching flags.
    rig.activate(rig.net.features());

    // Guest → host.
    let tx = frame(HOST_MAC, guest_mac, b"petrel guest to host");
    let mut p = vec![0u8; VNET_HDR_LEN];
    p.extend_from_slice(&tx);
    rig.put(BUF, &p);
    rig.add_chain(TX_QUEUE, &[(BUF, p.len() as u32, R)]);
    rig.net.process_tx();
    let c = rig.net.counters();
    assert_eq!(
        (c.tx_packets, c.tx_dropped, c.tx_errors),
        (1, 0, 0),
        "{c:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut buf = [0u8; 2048];
    loop {
        assert!(
            Instant::now() < deadline,
            "the guest's frame never reached the host"
        );
        // SAFETY: buf is valid for writes of its length for the call.
        let n = unsafe { libc::recv(sniffer.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n >= 60 && buf[..60] == tx[..] {
            break;
        }
    }

    // Host → guest.
    for i in 0..RX_BUFFERS {
        rig.add_chain(
            RX_QUEUE,
            &[(BUF + 0x1_0000 + u64::from(i) * 0x1000, 4096, W)],
        );
    }
    let rx = frame(guest_mac, HOST_MAC, b"petrel host to guest");
    // SAFETY: rx is valid for reads of its length for the call.
    let n = unsafe { libc::send(sniffer.as_raw_fd(), rx.as_ptr().cast(), rx.len(), 0) };
    assert_eq!(n, 60, "send: {}", io::Error::last_os_error());
    let net = Arc::new(Mutex::new(rig.take_net()));
    let mut em = EventManager::<Arc<Mutex<Net>>>::new().unwrap();
    em.add_subscriber(net.clone());
    let deadline = Instant::now() + Duration::from_secs(5);
    let found = 'wait: loop {
        assert!(
            Instant::now() < deadline,
            "the host's frame never reached the guest"
        );
        em.run_with_timeout(100).unwrap();
        for i in 0..rig.used_idx(RX_QUEUE).min(RX_BUFFERS) {
            let (head, len) = rig.used(RX_QUEUE, i);
            let at = BUF + 0x1_0000 + u64::from(head) * 0x1000;
            let got = rig.guest(at, len as usize);
            if got.len() >= VNET_HDR_LEN + 60 && got[VNET_HDR_LEN..VNET_HDR_LEN + 60] == rx[..] {
                break 'wait got;
            }
        }
    };
    // num_buffers is 1: the frame fits one buffer.
    assert_eq!(found[NUM_BUFFERS_OFFSET..VNET_HDR_LEN], [1, 0]);
    let c = net.lock().unwrap().counters();
    assert!(c.rx_packets >= 1 && c.rx_errors == 0, "{c:?}");
    assert!(rig.int.take().contains(&InterruptKind::Queue(RX_QUEUE)));

    // Closing the only descriptor removes the interface (the guard would otherwise).
    drop(em);
    drop(net);
    assert!(!Path::new("/sys/class/net").join(&name).exists());
    drop(guard);
}

#[test]
fn inherited_descriptors_are_checked() {
    if !Path::new(tap::TUN_DEVICE).exists() {
        test_skip::skip(format!("{} is missing", tap::TUN_DEVICE));
        return;
    }
    let name = unique_name();
    let _guard = TapGuard(name.clone());
    let owner = match Tap::open_named(&name) {
        Ok(t) => t,
        Err(e) => {
            test_skip::skip(format!("cannot create tap {name}: {e}"));
            return;
        }
    };
    // Opening by name brought the new interface up (through a Unix socket's ioctls).
    let flags = std::fs::read_to_string(format!("/sys/class/net/{name}/flags")).unwrap();
    let flags = u32::from_str_radix(flags.trim().trim_start_matches("0x"), 16).unwrap();
    assert_ne!(
        flags & libc::IFF_UP as u32,
        0,
        "{name} is down: flags {flags:#x}"
    );
    // A good inherited tap: same interface, the caller's descriptor stays usable.
    let adopted = Tap::from_fd(owner.as_raw_fd()).unwrap();
    assert_eq!(adopted.name(), name);
    assert_ne!(adopted.as_raw_fd(), owner.as_raw_fd());
    adopted
        .set_offload(libc::TUN_F_CSUM | libc::TUN_F_TSO4)
        .unwrap();
    drop(adopted);
    owner.set_offload(0).unwrap();
    drop(owner);

    // A tap opened without IFF_VNET_HDR is refused.
    let name = unique_name();
    let _guard = TapGuard(name.clone());
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(tap::TUN_DEVICE)
        .unwrap();
    let mut ifr = ifreq_for(&name);
    ifr.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short;
    // SAFETY: TUNSETIFF reads the ifreq, valid for the call.
    let ret = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut ifr) };
    assert_eq!(ret, 0, "TUNSETIFF: {}", io::Error::last_os_error());
    let e = Tap::from_fd(file.as_raw_fd()).unwrap_err();
    assert!(matches!(e, TapError::WrongFlags { .. }), "{e}");
    assert!(e.to_string().contains(&name), "{e}");
}
