//! Fuzzes virtio-net TX: descriptor chains (vnet header + frame split over descriptors, with
//! fuzzed lengths, writable descriptors, indirect tables, and raw descriptors) on the TX queue,
//! served by the real `Net` device's `process_tx` over a real tap interface that the target
//! takes down right after opening it (the kernel refuses the frames with EIO, so nothing
//! reaches the host's network stack; the device counts them as dropped). Needs CAP_NET_ADMIN for the tap (root here); without it the
//! target does nothing and says so once.
//!
//! Invariants checked after every round:
//! - no panic;
//! - TX writes nothing to guest memory but the TX used ring;
//! - every used element has length 0, and the elements follow the available chains in order;
//! - each served chain is counted once (packets + dropped + errors), and exactly the chains
//!   that break the rules (a writable descriptor, a buffer outside guest memory, a chain cut
//!   short, too many descriptors, shorter than vnet + Ethernet headers, longer than
//!   `MAX_PACKET_LEN`) are counted as errors.
#![no_main]

use std::os::fd::AsRawFd;
use std::sync::{Arc, OnceLock};

use arbitrary::Arbitrary;
use devices::virtio::net::{Net, NetConfig, Tap, TapSource, MAX_PACKET_LEN, QUEUE_SIZE};
use devices::virtio::{ActivateContext, InterruptKind, VirtioDevice, VirtioInterrupt};
use libfuzzer_sys::fuzz_target;
use petrel_fuzz::*;
use vm_memory::{Bytes, GuestAddress};

const MAX_ROUNDS: usize = 4;
const MAX_CHAINS: usize = 48;
const MAX_DESCS: usize = 1100;
const VNET_HDR: usize = 12;
const ETH_HLEN: u64 = 14;
const MAX_DESCRIPTORS: usize = 1024;
/// The RX queue (activation needs it; this target never uses it) sits in region C.
const RX_AREA: Area = Area {
    desc: 0x2_0000,
    avail: 0x2_0100,
    used: 0x2_0200,
    indirect: (0x2_0400, 0x2_0400),
    data: (0x2_0400, 0x2_0400),
};

#[derive(Arbitrary, Debug)]
struct Input {
    queue: QueueSpec,
    rounds: Vec<Round>,
}

#[derive(Arbitrary, Debug)]
struct Round {
    chains: Vec<TxChain>,
    avail_idx: Option<u16>,
    used_event: Option<u16>,
    pokes: Vec<(Addr, Vec<u8>)>,
}

#[derive(Arbitrary, Debug)]
enum TxChain {
    Frame {
        vnet: [u8; VNET_HDR],
        frame: Vec<u8>,
        /// Split points (byte offsets of header + frame).
        cuts: Vec<u16>,
        /// An extra descriptor of this many bytes (modulo 0x20000) after the frame: makes long
        /// packets cheaply.
        pad: Option<u32>,
        /// A writable descriptor at the end.
        writable: Option<u16>,
        indirect: bool,
    },
    Raw(Vec<RawDesc>),
    Head(u16),
}

struct NoInterrupt;
impl VirtioInterrupt for NoInterrupt {
    fn trigger(&self, _kind: InterruptKind) -> std::io::Result<()> {
        Ok(())
    }
}

/// One tap per process, never brought up; each device gets a duplicate of its descriptor.
fn tap() -> Option<&'static Tap> {
    static TAP: OnceLock<Option<Tap>> = OnceLock::new();
    TAP.get_or_init(|| {
        let name = format!("pfz{}", std::process::id() % 1_000_000);
        match Tap::open_named(&name) {
            Ok(t) => match set_down(&name) {
                Ok(()) => Some(t),
                Err(e) => {
                    eprintln!("net_tx: cannot take tap {name} down ({e}). Not fuzzing.");
                    None
                }
            },
            Err(e) => {
                eprintln!("net_tx: cannot create a tap ({e}); needs CAP_NET_ADMIN. Not fuzzing.");
                None
            }
        }
    })
    .as_ref()
}

/// Clears IFF_UP on interface `name` (`Tap::open_named` brings taps up), so the kernel
/// refuses every frame and none reaches the host's network stack.
fn set_down(name: &str) -> std::io::Result<()> {
    // SAFETY: socket takes no pointers; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd was just created and nothing else owns it.
    let sock = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    // SAFETY: ifreq is plain data; all zeroes is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, &b) in ifr
        .ifr_name
        .iter_mut()
        .zip(name.as_bytes().iter().take(libc::IFNAMSIZ - 1))
    {
        *dst = b as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS reads the name and writes the flags of a valid, live ifreq.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut ifr) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: SIOCGIFFLAGS filled in the flags member of the union.
    let flags = unsafe { ifr.ifr_ifru.ifru_flags };
    ifr.ifr_ifru.ifru_flags = flags & !(libc::IFF_UP as libc::c_short);
    // SAFETY: SIOCSIFFLAGS only reads the valid, live ifreq.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &ifr) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn queue_spec(size_log2: u8, event_idx: bool) -> QueueSpec {
    QueueSpec {
        size_log2,
        event_idx,
        next_avail: 0,
        next_used: 0,
        layout: Layout::Standard,
    }
}

fuzz_target!(|input: Input| {
    let Some(tap) = tap() else {
        return;
    };
    let mem = guest_memory();
    let Some(mut q) = DriverQueue::new(&mem, &input.queue, QUEUE_SIZE) else {
        return;
    };
    let rx = DriverQueue::at(
        &mem,
        &queue_spec(4, input.queue.event_idx),
        QUEUE_SIZE,
        RX_AREA,
    )
    .expect("rx queue");
    let Ok(dup) = Tap::from_fd(tap.as_raw_fd()) else {
        return;
    };
    let cfg = NetConfig {
        tap: TapSource::Fd(tap.as_raw_fd()),
        mac: None,
        id: "fuzz0".into(),
        rate_limiter_rx: None,
        rate_limiter_tx: None,
    };
    let mut net = Net::with_tap(dup, &cfg).expect("net");
    let acked = net.features();
    let tx_queue = q.device_view(input.queue.next_avail);
    net.activate(ActivateContext {
        mem: mem.clone(),
        queues: vec![rx.device_view(0), tx_queue],
        acked_features: acked,
        interrupt: Arc::new(NoInterrupt),
    })
    .expect("activate");

    let mut next_avail = input.queue.next_avail;
    let mut dev_used = input.queue.next_used;
    let mut trusted = true;
    for round in input.rounds.iter().take(MAX_ROUNDS) {
        for c in round.chains.iter().take(MAX_CHAINS) {
            let head = match c {
                TxChain::Frame {
                    vnet,
                    frame,
                    cuts,
                    pad,
                    writable,
                    indirect,
                } => {
                    let mut bytes = vnet.to_vec();
                    bytes.extend_from_slice(frame);
                    let mut descs = q.place(&mem, &bytes, cuts, 0);
                    if let Some(p) = pad {
                        let len = p % 0x2_0000;
                        let at = q.alloc_data(u64::from(len).min(DATA_END - DATA_START));
                        descs.push(Desc {
                            addr: at,
                            len,
                            flags: 0,
                            next: 0,
                        });
                    }
                    if let Some(w) = writable {
                        let at = q.alloc_data(u64::from(*w));
                        descs.push(Desc {
                            addr: at,
                            len: u32::from(*w),
                            flags: F_WRITE,
                            next: 0,
                        });
                    }
                    descs.truncate(MAX_DESCS);
                    q.add_chain(&mem, &descs, *indirect)
                }
                TxChain::Raw(descs) => {
                    let descs: Vec<Desc> = descs.iter().take(MAX_DESCS).map(|d| d.get()).collect();
                    if descs.is_empty() {
                        continue;
                    }
                    q.add_raw(&mem, &descs)
                }
                TxChain::Head(h) => *h,
            };
            q.push_avail(&mem, head);
        }
        for (addr, bytes) in round.pokes.iter().take(8) {
            let _ = mem.write_slice(bytes, GuestAddress(addr.get()));
        }
        q.publish(&mem, round.avail_idx);
        if let Some(e) = round.used_event {
            q.set_used_event(&mem, e);
        }
        write_u16(&mem, q.used + 2, dev_used);

        let view = q.device_view(next_avail);
        let before_walk = walk_available(&mem, &view, usize::from(q.size) * 2);
        let before_mem = snapshot(&mem);
        let c0 = net.counters();

        net.process_tx();

        let after_mem = snapshot(&mem);
        let c1 = net.counters();
        let used_after = q.used_idx(&mem);
        let added = used_after.wrapping_sub(dev_used);
        let used_area = (q.used, q.used_ring_len());
        for a in changed_addresses(&before_mem, &after_mem) {
            assert!(
                covered(&[used_area], a),
                "TX wrote guest address {a:#x} outside its used ring"
            );
        }
        let after_walk = walk_available(&mem, &view, usize::from(q.size) * 2);
        let stable = trusted && before_walk.is_some() && before_walk == after_walk;
        let chains = before_walk.unwrap_or_default();
        trusted = stable
            && chains
                .get(usize::from(added))
                .is_none_or(|c| c.head < q.size);
        let tangled = q.structures().iter().any(|&s| overlaps(s, used_area));
        if stable && !tangled {
            assert!(
                usize::from(added) <= chains.len(),
                "{added} used for {} chains",
                chains.len()
            );
            for i in 0..added {
                let (id, len) = q.used_elem(&mem, dev_used.wrapping_add(i));
                assert_eq!(
                    u32::from(chains[usize::from(i)].head),
                    id,
                    "used element {i} out of order"
                );
                assert_eq!(len, 0, "TX used length");
            }
            let served = &chains[..usize::from(added)];
            // A head beyond the queue is popped, counted twice and never returned.
            if chains
                .iter()
                .take(usize::from(added) + 1)
                .all(|c| c.head < q.size)
            {
                let errors = c1.tx_errors - c0.tx_errors;
                let total =
                    (c1.tx_packets - c0.tx_packets) + (c1.tx_dropped - c0.tx_dropped) + errors;
                assert_eq!(
                    total,
                    u64::from(added),
                    "served chains vs counters {c0:?} -> {c1:?}"
                );
                let bad = served.iter().filter(|c| is_bad(&mem, c)).count() as u64;
                assert_eq!(
                    errors, bad,
                    "chains counted as errors vs chains that break the rules"
                );
            }
        }
        dev_used = used_after;
        next_avail = next_avail.wrapping_add(added);
    }
});

/// Whether the device must refuse the chain.
fn is_bad(mem: &GuestMemoryMmap, c: &ChainInfo) -> bool {
    let len = c.readable_len();
    !c.terminated
        || !c.writable.is_empty()
        || !c.in_memory(mem)
        || c.descriptors() > MAX_DESCRIPTORS
        || len < VNET_HDR as u64 + ETH_HLEN
        || len > MAX_PACKET_LEN as u64
}
