//! Fuzzes virtio-blk request handling: descriptor chains (well-formed requests with fuzzed
//! fields, and raw descriptors) on a split queue in guest memory, served by the real `Block`
//! device over a temporary disk image.
//!
//! Invariants checked after every round of `process_queue`:
//! - no panic (including arithmetic overflow: the target builds with debug assertions);
//! - every used element names a chain head and its length is at most that chain's
//!   device-writable bytes;
//! - no more used elements than available chains;
//! - guest memory changes only inside the chains' writable buffers and the used ring (checked
//!   when the device's writes did not change the rings or descriptor tables themselves);
//! - a read-only disk's file never changes and no write is counted; no disk file changes size;
//! - a read that completed with `VIRTIO_BLK_S_OK` put the disk's bytes in the buffers.
#![no_main]

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::sync::{Arc, OnceLock};

use arbitrary::Arbitrary;
use devices::rate_limiter::{RateLimiterConfig, TokenBucketConfig};
use devices::virtio::block::{Block, BlockConfig, QUEUE_SIZE};
use devices::virtio::{ActivateContext, InterruptKind, VirtioDevice, VirtioInterrupt};
use libfuzzer_sys::fuzz_target;
use petrel_fuzz::*;
use vm_memory::{Bytes, GuestAddress};

const MAX_ROUNDS: usize = 4;
const MAX_CHAINS: usize = 48;
const MAX_DESCS: usize = 300;
const SECTOR: u64 = 512;
const T_IN: u32 = 0;
const T_OUT: u32 = 1;
const T_FLUSH: u32 = 4;
const T_GET_ID: u32 = 8;
const T_DISCARD: u32 = 11;
const T_WRITE_ZEROES: u32 = 13;

#[derive(Arbitrary, Debug)]
struct Input {
    readonly: bool,
    /// Disk size in sectors (modulo 65).
    sectors: u8,
    /// Bytes past the last whole sector (modulo 512; the device ignores them).
    tail: u16,
    /// (operations per bucket, bytes per bucket) with a refill far in the future.
    rate_limit: Option<(u8, u16)>,
    queue: QueueSpec,
    rounds: Vec<Round>,
}

#[derive(Arbitrary, Debug)]
struct Round {
    chains: Vec<Chain>,
    /// Replaces the published available index.
    avail_idx: Option<u16>,
    used_event: Option<u16>,
    /// Raw guest memory writes, after the chains.
    pokes: Vec<(Addr, Vec<u8>)>,
}

#[derive(Arbitrary, Debug)]
enum Chain {
    Request(Request),
    /// Descriptors exactly as given (flags and next included).
    Raw(Vec<RawDesc>),
    /// A head index put in the available ring as is.
    Head(u16),
}

#[derive(Arbitrary, Debug)]
struct RawDesc {
    addr: Addr,
    len: u32,
    flags: u16,
    next: u16,
}

#[derive(Arbitrary, Debug)]
struct Request {
    req_type: ReqType,
    ioprio: u32,
    sector: Sector,
    /// Header split into two descriptors at this byte (1..=15), or whole, or cut short.
    header: HeaderShape,
    /// Discard / write-zeroes segments, in a readable descriptor after the header.
    ranges: Vec<Range>,
    data: Vec<Seg>,
    status: Status,
    indirect: bool,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum ReqType {
    In,
    Out,
    Flush,
    GetId,
    Discard,
    WriteZeroes,
    Other(u32),
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Sector {
    Small(u8),
    FromEnd(u8),
    Raw(u64),
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum HeaderShape {
    Whole,
    Split(u8),
    Short(u8),
    Absent,
}

#[derive(Arbitrary, Debug)]
struct Range {
    sector: Sector,
    sectors: RangeLen,
    flags: u32,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum RangeLen {
    Small(u8),
    Raw(u32),
}

#[derive(Arbitrary, Debug)]
struct Seg {
    len: SegLen,
    write: bool,
    at: Option<Addr>,
    fill: u8,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum SegLen {
    Sectors(u8),
    Bytes(u16),
    Raw(u32),
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Status {
    Byte,
    Long(u8),
    Missing,
    Readable,
    At(Addr),
}

/// Never-blocking interrupt that the target ignores.
struct NoInterrupt;
impl VirtioInterrupt for NoInterrupt {
    fn trigger(&self, _kind: InterruptKind) -> std::io::Result<()> {
        Ok(())
    }
}

/// One unlinked disk file per process (on tmpfs when available), reopened by the device through /proc/self/fd.
fn disk_file() -> &'static (File, String) {
    static DISK: OnceLock<(File, String)> = OnceLock::new();
    DISK.get_or_init(|| {
        // tmpfs when there is one: fdatasync is free there, and it can punch holes.
        let shm = std::path::Path::new("/dev/shm");
        let dir = if shm.is_dir() {
            shm.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        let path = dir.join(format!("petrel-fuzz-blk-{}", std::process::id()));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .expect("disk image");
        std::fs::remove_file(&path).expect("unlink disk image");
        let proc_path = format!("/proc/self/fd/{}", file.as_raw_fd());
        (file, proc_path)
    })
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ (i >> 9) as u8)
        .collect()
}

fn read_disk(mut f: &File) -> Vec<u8> {
    let mut v = Vec::new();
    f.seek(SeekFrom::Start(0)).expect("seek");
    f.read_to_end(&mut v).expect("read disk");
    v
}

fn sector_value(s: Sector, disk_sectors: u64) -> u64 {
    match s {
        Sector::Small(v) => u64::from(v),
        Sector::FromEnd(v) => disk_sectors.wrapping_sub(u64::from(v)),
        Sector::Raw(v) => v,
    }
}

/// Lays out a request; returns its descriptors.
fn build_request(
    mem: &GuestMemoryMmap,
    q: &mut DriverQueue,
    r: &Request,
    disk_sectors: u64,
) -> Vec<Desc> {
    let req_type = match r.req_type {
        ReqType::In => T_IN,
        ReqType::Out => T_OUT,
        ReqType::Flush => T_FLUSH,
        ReqType::GetId => T_GET_ID,
        ReqType::Discard => T_DISCARD,
        ReqType::WriteZeroes => T_WRITE_ZEROES,
        ReqType::Other(t) => t,
    };
    let mut descs = Vec::new();
    let mut hdr = [0u8; 16];
    hdr[0..4].copy_from_slice(&req_type.to_le_bytes());
    hdr[4..8].copy_from_slice(&r.ioprio.to_le_bytes());
    hdr[8..16].copy_from_slice(&sector_value(r.sector, disk_sectors).to_le_bytes());
    let at = q.alloc_data(16);
    let _ = mem.write_slice(&hdr, GuestAddress(at));
    match r.header {
        HeaderShape::Whole => descs.push(Desc {
            addr: at,
            len: 16,
            flags: 0,
            next: 0,
        }),
        HeaderShape::Split(n) => {
            let n = u64::from(n % 15 + 1);
            descs.push(Desc {
                addr: at,
                len: n as u32,
                flags: 0,
                next: 0,
            });
            descs.push(Desc {
                addr: at + n,
                len: (16 - n) as u32,
                flags: 0,
                next: 0,
            });
        }
        HeaderShape::Short(n) => descs.push(Desc {
            addr: at,
            len: u32::from(n % 16),
            flags: 0,
            next: 0,
        }),
        HeaderShape::Absent => {}
    }
    if !r.ranges.is_empty() {
        let mut seg = Vec::new();
        for range in r.ranges.iter().take(40) {
            seg.extend_from_slice(&sector_value(range.sector, disk_sectors).to_le_bytes());
            let n = match range.sectors {
                RangeLen::Small(v) => u32::from(v),
                RangeLen::Raw(v) => v,
            };
            seg.extend_from_slice(&n.to_le_bytes());
            seg.extend_from_slice(&range.flags.to_le_bytes());
        }
        let at = q.alloc_data(seg.len() as u64);
        let _ = mem.write_slice(&seg, GuestAddress(at));
        descs.push(Desc {
            addr: at,
            len: seg.len() as u32,
            flags: 0,
            next: 0,
        });
    }
    for s in r.data.iter().take(MAX_DESCS) {
        let len = match s.len {
            SegLen::Sectors(v) => u32::from(v % 17) * SECTOR as u32,
            SegLen::Bytes(v) => u32::from(v),
            SegLen::Raw(v) => v,
        };
        let addr = match s.at {
            Some(a) => a.get(),
            None => q.alloc_data(u64::from(len).min(DATA_END - DATA_START)),
        };
        if !s.write && len <= 0x1_0000 {
            let _ = mem.write_slice(&vec![s.fill; len as usize], GuestAddress(addr));
        }
        let flags = if s.write { F_WRITE } else { 0 };
        descs.push(Desc {
            addr,
            len,
            flags,
            next: 0,
        });
    }
    match r.status {
        Status::Byte => descs.push(Desc {
            addr: q.alloc_data(1),
            len: 1,
            flags: F_WRITE,
            next: 0,
        }),
        Status::Long(n) => {
            let n = u64::from(n) + 1;
            descs.push(Desc {
                addr: q.alloc_data(n),
                len: n as u32,
                flags: F_WRITE,
                next: 0,
            });
        }
        Status::Missing => {}
        Status::Readable => descs.push(Desc {
            addr: q.alloc_data(1),
            len: 1,
            flags: 0,
            next: 0,
        }),
        Status::At(a) => descs.push(Desc {
            addr: a.get(),
            len: 1,
            flags: F_WRITE,
            next: 0,
        }),
    }
    descs
}

fn new_block(input: &Input, path: &str) -> Option<Block> {
    let rate_limiter = input.rate_limit.map(|(ops, kib)| RateLimiterConfig {
        ops: Some(TokenBucketConfig {
            size: u64::from(ops) + 1,
            one_time_burst: 0,
            refill_time_ms: 1_000_000,
        }),
        bandwidth: Some(TokenBucketConfig {
            size: (u64::from(kib) + 1) * 1024,
            one_time_burst: 0,
            refill_time_ms: 1_000_000,
        }),
    });
    Block::new(BlockConfig {
        path: path.into(),
        readonly: input.readonly,
        direct: false,
        id: "fuzz-disk".into(),
        rate_limiter,
        ..Default::default()
    })
    .ok()
}

fuzz_target!(|input: Input| {
    let (file, path) = disk_file();
    let disk_sectors = u64::from(input.sectors % 65);
    let disk_len = disk_sectors * SECTOR + u64::from(input.tail % 512);
    let original = pattern(disk_len as usize);
    file.set_len(0).expect("truncate");
    (&*file).seek(SeekFrom::Start(0)).expect("seek");
    (&*file).write_all(&original).expect("write disk");

    let mem = guest_memory();
    let Some(mut q) = DriverQueue::new(&mem, &input.queue, QUEUE_SIZE) else {
        return;
    };
    let Some(mut blk) = new_block(&input, path) else {
        return;
    };
    let acked = blk.features();
    blk.activate(ActivateContext {
        mem: mem.clone(),
        queues: vec![Queue::try_from(q.queue.state()).expect("queue")],
        acked_features: acked,
        interrupt: Arc::new(NoInterrupt),
    })
    .expect("activate");

    // The device's queue position, tracked from the used index it publishes.
    let mut next_avail = input.queue.next_avail;
    let mut trusted = true;
    let mut dev_used = input.queue.next_used;
    for round in input.rounds.iter().take(MAX_ROUNDS) {
        for c in round.chains.iter().take(MAX_CHAINS) {
            let head = match c {
                Chain::Request(r) => {
                    let descs = build_request(&mem, &mut q, r, disk_sectors);
                    if descs.is_empty() {
                        continue;
                    }
                    q.add_chain(&mem, &descs, r.indirect)
                }
                Chain::Raw(descs) => {
                    let descs: Vec<Desc> = descs
                        .iter()
                        .take(MAX_DESCS)
                        .map(|d| Desc {
                            addr: d.addr.get(),
                            len: d.len,
                            flags: d.flags,
                            next: d.next,
                        })
                        .collect();
                    if descs.is_empty() {
                        continue;
                    }
                    q.add_raw(&mem, &descs)
                }
                Chain::Head(h) => *h,
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
        // The device never reads the used index; keep the harness's count of it exact.
        write_u16(&mem, q.used + 2, dev_used);

        // What the device may do, walked independently on a copy of its queue state.
        let mut view = Queue::try_from(q.queue.state()).expect("queue");
        view.set_next_avail(next_avail);
        let before_walk = walk_available(&mem, &view, usize::from(q.size) * 2);
        let before_mem = snapshot(&mem);
        let used_before = dev_used;
        let disk_before = read_disk(file);
        let counted = |c: devices::virtio::block::BlockCounters| c.write_requests + c.discards;
        let writes_before = counted(blk.counters());

        blk.process_queue();

        let disk_written = counted(blk.counters()) != writes_before;

        let after_walk = walk_available(&mem, &view, usize::from(q.size) * 2);
        let after_mem = snapshot(&mem);
        let used_after = q.used_idx(&mem);
        let added = used_after.wrapping_sub(used_before);
        dev_used = used_after;
        next_avail = next_avail.wrapping_add(added);
        let stable = trusted && before_walk.is_some() && before_walk == after_walk;
        let chains = before_walk.unwrap_or_default();
        // A head beyond the queue is popped but cannot be returned: the device stops there
        // and its position runs ahead of the used index. Stop checking positions then.
        trusted = stable
            && chains
                .get(usize::from(added))
                .is_none_or(|c| c.head < q.size);

        let used_area = (q.used, q.used_ring_len());
        // The used ring's writes must not change what the walk saw, nor data writes the ring.
        let used_clean = !chains
            .iter()
            .flat_map(|c| &c.writable)
            .any(|&w| overlaps(w, used_area))
            && !q.structures().iter().any(|&s| overlaps(s, used_area));
        trusted &= used_clean;
        if stable && used_clean {
            assert!(
                usize::from(added) <= chains.len(),
                "{added} used elements for {} available chains",
                chains.len()
            );
            for i in 0..added {
                let (id, len) = q.used_elem(&mem, used_before.wrapping_add(i));
                let chain = &chains[usize::from(i)];
                assert_eq!(u32::from(chain.head), id, "used element {i} out of order");
                assert!(
                    u64::from(len) <= chain.writable_len(),
                    "used len {len} > writable bytes {} of chain {id}",
                    chain.writable_len()
                );
            }
        }

        if stable {
            let mut allowed: Vec<(u64, u64)> = chains
                .iter()
                .flat_map(|c| c.writable.iter().copied())
                .collect();
            let structures = [
                (q.desc, 16 * u64::from(q.size)),
                (q.avail, q.avail_ring_len()),
                (INDIRECT_START, INDIRECT_END - INDIRECT_START),
            ];
            let tangled = structures
                .iter()
                .any(|&s| overlaps(s, used_area) || allowed.iter().any(|&w| overlaps(s, w)));
            allowed.push(used_area);
            if !tangled {
                for a in changed_addresses(&before_mem, &after_mem) {
                    assert!(covered(&allowed, a), "device wrote guest address {a:#x} outside every writable buffer and the used ring");
                }
                if !disk_written {
                    check_reads(&mem, &q, &chains, used_before, added, &disk_before);
                }
            }
        }

        let now = read_disk(file);
        assert_eq!(now.len() as u64, disk_len, "disk file changed size");
        if input.readonly {
            assert!(now == original, "read-only disk file changed");
            let c = blk.counters();
            assert_eq!(
                c.write_requests + c.discards,
                0,
                "write counted on a read-only disk"
            );
        }
    }
});

/// A read answered with OK holds the disk's bytes, when no two buffers overlap and nothing
/// wrote the disk during the round.
fn check_reads(
    mem: &GuestMemoryMmap,
    q: &DriverQueue,
    chains: &[ChainInfo],
    used_before: u16,
    added: u16,
    disk: &[u8],
) {
    let writable: Vec<(u64, u64)> = chains
        .iter()
        .flat_map(|c| c.writable.iter().copied())
        .collect();
    for (i, a) in writable.iter().enumerate() {
        if writable[i + 1..].iter().any(|&b| overlaps(*a, b)) {
            return;
        }
    }
    let readable = chains.iter().flat_map(|c| c.readable.iter().copied());
    if readable
        .clone()
        .any(|r| writable.iter().any(|&w| overlaps(r, w)))
    {
        return;
    }
    for i in 0..added {
        let chain = &chains[usize::from(i)];
        let (_, len) = q.used_elem(mem, used_before.wrapping_add(i));
        let total = chain.writable_len();
        if total == 0 || u64::from(len) != total {
            continue;
        }
        let Some(hdr) = gather(mem, &chain.readable, 16) else {
            continue;
        };
        if u32::from_le_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]) != T_IN {
            continue;
        }
        let mut sector = [0u8; 8];
        sector.copy_from_slice(&hdr[8..16]);
        let sector = u64::from_le_bytes(sector);
        let Some(mut got) = gather(mem, &chain.writable, total) else {
            continue;
        };
        if got.pop() != Some(0) {
            continue;
        }
        let start = (sector * SECTOR) as usize;
        assert_eq!(
            &got[..],
            &disk[start..start + got.len()],
            "read of sector {sector} returned other bytes"
        );
    }
}

/// The first `n` bytes of the stream `spans`, if it has that many in guest memory.
fn gather(mem: &GuestMemoryMmap, spans: &[(u64, u64)], n: u64) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    for &(addr, len) in spans {
        let take = len.min(n - out.len() as u64);
        let mut v = vec![0u8; usize::try_from(take).ok()?];
        mem.read_slice(&mut v, GuestAddress(addr)).ok()?;
        out.extend_from_slice(&v);
        if out.len() as u64 == n {
            return Some(out);
        }
    }
    None
}

use virtio_queue::{Queue, QueueT};
