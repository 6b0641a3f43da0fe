//! Fuzzes virtio-vsock packet handling: guest TX packets (44-byte headers with fuzzed fields,
//! payloads split over descriptors, raw descriptors) and guest RX buffers, served by the real
//! `Vsock` device's `process_tx` (which also fills RX buffers with the device's answers: RSTs,
//! RESPONSEs, credit updates). A host Unix listener waits at `<uds_path>_5000`, so guest
//! connections to host port 5000 are established and their data reaches a host socket; other
//! ports are refused.
//!
//! Invariants checked after every round:
//! - no panic;
//! - guest memory changes only inside the RX chains' writable buffers and the two used rings
//!   (when the device's writes did not change the rings or descriptor tables themselves);
//! - TX used elements have length 0; RX used lengths are 0 or at least a header and at most
//!   the chain's writable bytes; both follow their available chains in order;
//! - every packet the device gives the guest comes from the host (CID 2) to the guest's CID,
//!   is a stream packet with a known op, and its `len` matches the used length.
#![no_main]

use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use arbitrary::Arbitrary;
use devices::virtio::vsock::packet::{Header, HDR_SIZE, HOST_CID, TYPE_STREAM};
use devices::virtio::vsock::{Vsock, VsockConfig, QUEUE_SIZE};
use devices::virtio::{ActivateContext, InterruptKind, VirtioDevice, VirtioInterrupt};
use libfuzzer_sys::fuzz_target;
use petrel_fuzz::*;
use vm_memory::{Bytes, GuestAddress};

const MAX_ROUNDS: usize = 4;
const MAX_CHAINS: usize = 32;
const MAX_DESCS: usize = 300;
const GUEST_CID: u64 = 3;
const LISTEN_PORT: u32 = 5000;
/// The RX queue and its buffers sit in region C.
const RX_AREA: Area = Area {
    desc: 0x2_0000,
    avail: 0x2_0400,
    used: 0x2_0600,
    indirect: (0x2_0a00, 0x2_0c00),
    data: (0x2_0c00, 0x2_2000),
};

#[derive(Arbitrary, Debug)]
struct Input {
    tx: QueueSpec,
    /// log2 of the RX queue size (modulo 7: up to 64).
    rx_size_log2: u8,
    rounds: Vec<Round>,
}

#[derive(Arbitrary, Debug)]
struct Round {
    tx: Vec<TxChain>,
    rx: Vec<RxChain>,
    tx_avail_idx: Option<u16>,
    pokes: Vec<(Addr, Vec<u8>)>,
}

#[derive(Arbitrary, Debug)]
enum TxChain {
    Packet {
        hdr: Hdr,
        payload: Vec<u8>,
        cuts: Vec<u16>,
        writable: Option<u16>,
        indirect: bool,
    },
    Raw(Vec<RawDesc>),
    Head(u16),
}

#[derive(Arbitrary, Debug)]
struct Hdr {
    src_cid: Cid,
    dst_cid: Cid,
    src_port: u32,
    dst_port: Port,
    /// The real payload length, or a raw value.
    len: Option<u32>,
    type_: Option<u16>,
    op: u8,
    raw_op: Option<u16>,
    flags: u32,
    buf_alloc: u32,
    fwd_cnt: u32,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Cid {
    Guest,
    Host,
    Raw(u64),
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Port {
    Listener,
    Raw(u32),
}

#[derive(Arbitrary, Debug)]
enum RxChain {
    Buffer {
        len: u16,
        cuts: Vec<u16>,
        readable: Option<u8>,
        indirect: bool,
    },
    Raw(Vec<RawDesc>),
}

struct NoInterrupt;
impl VirtioInterrupt for NoInterrupt {
    fn trigger(&self, _kind: InterruptKind) -> std::io::Result<()> {
        Ok(())
    }
}

/// The per-process socket directory and the host listener at `<uds_path>_5000`.
fn host() -> &'static (PathBuf, UnixListener) {
    static HOST: OnceLock<(PathBuf, UnixListener)> = OnceLock::new();
    HOST.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("petrel-fuzz-vsock-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("socket dir");
        let uds = dir.join("v.sock");
        let listener =
            UnixListener::bind(dir.join(format!("v.sock_{LISTEN_PORT}"))).expect("listener");
        listener.set_nonblocking(true).expect("nonblocking");
        (uds, listener)
    })
}

fn cid(c: Cid) -> u64 {
    match c {
        Cid::Guest => GUEST_CID,
        Cid::Host => HOST_CID,
        Cid::Raw(v) => v,
    }
}

fn header(h: &Hdr, payload_len: usize) -> [u8; HDR_SIZE] {
    Header {
        src_cid: cid(h.src_cid),
        dst_cid: cid(h.dst_cid),
        src_port: h.src_port,
        dst_port: match h.dst_port {
            Port::Listener => LISTEN_PORT,
            Port::Raw(p) => p,
        },
        len: h.len.unwrap_or(payload_len as u32),
        type_: h.type_.unwrap_or(TYPE_STREAM),
        op: h.raw_op.unwrap_or(u16::from(h.op % 8)),
        flags: h.flags,
        buf_alloc: h.buf_alloc,
        fwd_cnt: h.fwd_cnt,
    }
    .to_bytes()
}

/// Tracks one queue across rounds: the device's position and the used index it published.
struct Track {
    next_avail: u16,
    used: u16,
    trusted: bool,
}

fuzz_target!(|input: Input| {
    let (uds, listener) = host();
    // Drop the host ends of earlier iterations' connections so the backlog never fills.
    while listener.accept().is_ok() {}
    let mem = guest_memory();
    let Some(mut tx) = DriverQueue::new(&mem, &input.tx, QUEUE_SIZE) else {
        return;
    };
    let rx_spec = QueueSpec {
        size_log2: input.rx_size_log2 % 7,
        event_idx: input.tx.event_idx,
        next_avail: input.tx.next_avail.rotate_left(3),
        next_used: input.tx.next_used.rotate_left(5),
        layout: Layout::Standard,
    };
    let mut rx = DriverQueue::at(&mem, &rx_spec, QUEUE_SIZE, RX_AREA).expect("rx queue");
    let event = DriverQueue::at(
        &mem,
        &QueueSpec {
            size_log2: 0,
            ..rx_spec
        },
        QUEUE_SIZE,
        Area {
            desc: 0x2_0900,
            avail: 0x2_0980,
            used: 0x2_09c0,
            ..RX_AREA
        },
    )
    .expect("event queue");
    let mut vsock = Vsock::new(VsockConfig {
        guest_cid: GUEST_CID,
        uds_path: uds.clone(),
        id: "fuzz".into(),
    })
    .expect("vsock");
    let acked = vsock.features();
    vsock
        .activate(ActivateContext {
            mem: mem.clone(),
            queues: vec![
                rx.device_view(rx_spec.next_avail),
                tx.device_view(input.tx.next_avail),
                event.device_view(rx_spec.next_avail),
            ],
            acked_features: acked,
            interrupt: Arc::new(NoInterrupt),
        })
        .expect("activate");

    let mut tt = Track {
        next_avail: input.tx.next_avail,
        used: input.tx.next_used,
        trusted: true,
    };
    let mut rt = Track {
        next_avail: rx_spec.next_avail,
        used: rx_spec.next_used,
        trusted: true,
    };
    for round in input.rounds.iter().take(MAX_ROUNDS) {
        for c in round.tx.iter().take(MAX_CHAINS) {
            let head = match c {
                TxChain::Packet {
                    hdr,
                    payload,
                    cuts,
                    writable,
                    indirect,
                } => {
                    let mut bytes = header(hdr, payload.len()).to_vec();
                    bytes.extend_from_slice(payload);
                    let mut descs = tx.place(&mem, &bytes, cuts, 0);
                    if let Some(w) = writable {
                        let at = tx.alloc_data(u64::from(*w));
                        descs.push(Desc {
                            addr: at,
                            len: u32::from(*w),
                            flags: F_WRITE,
                            next: 0,
                        });
                    }
                    descs.truncate(MAX_DESCS);
                    tx.add_chain(&mem, &descs, *indirect)
                }
                TxChain::Raw(d) => {
                    let d: Vec<Desc> = d.iter().take(MAX_DESCS).map(|d| d.get()).collect();
                    if d.is_empty() {
                        continue;
                    }
                    tx.add_raw(&mem, &d)
                }
                TxChain::Head(h) => *h,
            };
            tx.push_avail(&mem, head);
        }
        for c in round.rx.iter().take(MAX_CHAINS) {
            let head = match c {
                RxChain::Buffer {
                    len,
                    cuts,
                    readable,
                    indirect,
                } => {
                    let zeros = vec![0u8; usize::from(len % 0x800)];
                    let mut descs = rx.place(&mem, &zeros, cuts, F_WRITE);
                    if let Some(r) = readable {
                        let at = rx.alloc_data(u64::from(*r));
                        descs.insert(
                            0,
                            Desc {
                                addr: at,
                                len: u32::from(*r),
                                flags: 0,
                                next: 0,
                            },
                        );
                    }
                    rx.add_chain(&mem, &descs, *indirect)
                }
                RxChain::Raw(d) => {
                    let d: Vec<Desc> = d.iter().take(MAX_DESCS).map(|d| d.get()).collect();
                    if d.is_empty() {
                        continue;
                    }
                    rx.add_raw(&mem, &d)
                }
            };
            rx.push_avail(&mem, head);
        }
        for (addr, bytes) in round.pokes.iter().take(8) {
            let _ = mem.write_slice(bytes, GuestAddress(addr.get()));
        }
        tx.publish(&mem, round.tx_avail_idx);
        rx.publish(&mem, None);
        write_u16(&mem, tx.used + 2, tt.used);
        write_u16(&mem, rx.used + 2, rt.used);

        let (tx_view, rx_view) = (tx.device_view(tt.next_avail), rx.device_view(rt.next_avail));
        let walk = |q: &Queue| walk_available(&mem, q, usize::from(QUEUE_SIZE) * 2);
        let (tx_before, rx_before) = (walk(&tx_view), walk(&rx_view));
        let before_mem = snapshot(&mem);

        vsock.process_tx();
        vsock.process_rx();

        let after_mem = snapshot(&mem);
        let stable = tx_before.is_some()
            && rx_before.is_some()
            && tx_before == walk(&tx_view)
            && rx_before == walk(&rx_view);
        let (tx_chains, rx_chains) = (tx_before.unwrap_or_default(), rx_before.unwrap_or_default());
        let writable: Vec<(u64, u64)> = rx_chains
            .iter()
            .flat_map(|c| c.writable.iter().copied())
            .collect();
        let used_areas = [(tx.used, tx.used_ring_len()), (rx.used, rx.used_ring_len())];
        let structures: Vec<(u64, u64)> = tx
            .structures()
            .into_iter()
            .chain(rx.structures())
            .chain(used_areas)
            .collect();
        let tangled = structures.iter().enumerate().any(|(i, &s)| {
            writable.iter().any(|&w| overlaps(s, w))
                || structures[i + 1..].iter().any(|&t| overlaps(s, t))
        });
        if stable && !tangled {
            let mut allowed = writable.clone();
            allowed.extend(used_areas);
            for a in changed_addresses(&before_mem, &after_mem) {
                assert!(
                    covered(&allowed, a),
                    "vsock wrote guest address {a:#x} outside RX buffers and used rings"
                );
            }
        }
        let disjoint = writable
            .iter()
            .enumerate()
            .all(|(i, &a)| writable[i + 1..].iter().all(|&b| !overlaps(a, b)));
        check_used(
            &mem,
            &tx,
            &mut tt,
            &tx_chains,
            stable && !tangled,
            |_, len| {
                assert_eq!(len, 0, "TX used length");
            },
        );
        check_used(
            &mem,
            &rx,
            &mut rt,
            &rx_chains,
            stable && !tangled,
            |chain, len| {
                assert!(
                    u64::from(len) <= chain.writable_len(),
                    "RX used len {len} > writable {}",
                    chain.writable_len()
                );
                assert!(
                    len == 0 || len as usize >= HDR_SIZE,
                    "RX used len {len} shorter than a header"
                );
                if len > 0 && disjoint {
                    check_rx_packet(&mem, chain, len);
                }
            },
        );
    }
});

/// Checks a queue's new used elements against its walked chains and advances the tracking.
fn check_used(
    mem: &GuestMemoryMmap,
    q: &DriverQueue,
    t: &mut Track,
    chains: &[ChainInfo],
    stable: bool,
    check: impl Fn(&ChainInfo, u32),
) {
    let used_after = q.used_idx(mem);
    let added = used_after.wrapping_sub(t.used);
    let stable = stable && t.trusted;
    if stable {
        assert!(
            usize::from(added) <= chains.len(),
            "{added} used for {} chains",
            chains.len()
        );
        for i in 0..added {
            let (id, len) = q.used_elem(mem, t.used.wrapping_add(i));
            let chain = &chains[usize::from(i)];
            assert_eq!(u32::from(chain.head), id, "used element {i} out of order");
            check(chain, len);
        }
    }
    t.trusted = stable
        && chains
            .get(usize::from(added))
            .is_none_or(|c| c.head < q.size);
    t.used = used_after;
    t.next_avail = t.next_avail.wrapping_add(added);
}

/// The packet the device wrote in an RX chain.
fn check_rx_packet(mem: &GuestMemoryMmap, chain: &ChainInfo, len: u32) {
    let mut bytes = Vec::new();
    for &(addr, l) in &chain.writable {
        let take = l.min(HDR_SIZE as u64 - bytes.len() as u64);
        let mut v = vec![0u8; take as usize];
        mem.read_slice(&mut v, GuestAddress(addr))
            .expect("rx buffer");
        bytes.extend_from_slice(&v);
        if bytes.len() == HDR_SIZE {
            break;
        }
    }
    let raw: [u8; HDR_SIZE] = bytes.try_into().expect("header bytes");
    let h = Header::from_bytes(&raw);
    assert_eq!(h.src_cid, HOST_CID, "RX packet source {h:?}");
    assert_eq!(h.dst_cid, GUEST_CID, "RX packet destination {h:?}");
    assert_eq!(h.type_, TYPE_STREAM, "RX packet type {h:?}");
    assert!((1..=7).contains(&h.op), "RX packet op {h:?}");
    assert_eq!(
        h.len as usize + HDR_SIZE,
        len as usize,
        "RX packet len vs used len {h:?}"
    );
}

use virtio_queue::Queue;
