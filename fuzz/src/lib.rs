//! Shared pieces of petrel's fuzz targets: a guest memory layout with several regions, a split
//! virtqueue written into it from fuzz input, and an independent walk of the available chains
//! that the targets use to check what a device may write.
//!
//! Guest memory has three regions: `A` and `B` are adjacent (a buffer may cross from one mmap
//! into the next), `C` lies after a hole (addresses in the hole are outside guest memory).
//! The queue's default layout puts the descriptor table, the available ring, the used ring and
//! indirect tables in `A`, and data buffers in [`DATA_START`, [`DATA_END`]), which crosses the
//! `A`/`B` boundary.

use arbitrary::Arbitrary;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

/// Guest memory as petrel's devices see it.
pub type GuestMemoryMmap = devices::virtio::GuestMemoryMmap;

/// Region A: [0, 0x8000).
pub const REGION_A: (u64, usize) = (0, 0x8000);
/// Region B: [0x8000, 0x10000), adjacent to A.
pub const REGION_B: (u64, usize) = (0x8000, 0x8000);
/// Region C: [0x20000, 0x22000), after a hole.
pub const REGION_C: (u64, usize) = (0x2_0000, 0x2000);
/// Default descriptor table (room for 256 descriptors).
pub const DESC_TABLE: u64 = 0x0;
/// Default available ring.
pub const AVAIL_RING: u64 = 0x1000;
/// Default used ring (6 + 8 * 256 bytes).
pub const USED_RING: u64 = 0x2000;
/// Indirect descriptor tables are bump-allocated here.
pub const INDIRECT_START: u64 = 0x3000;
/// End of the indirect table area.
pub const INDIRECT_END: u64 = 0x4000;
/// Data buffers are bump-allocated here (crossing from region A into region B).
pub const DATA_START: u64 = 0x4000;
/// End of the data area.
pub const DATA_END: u64 = 0x1_0000;

/// `VRING_DESC_F_NEXT`.
pub const F_NEXT: u16 = 1;
/// `VRING_DESC_F_WRITE`.
pub const F_WRITE: u16 = 2;
/// `VRING_DESC_F_INDIRECT`.
pub const F_INDIRECT: u16 = 4;

/// Builds the guest memory.
pub fn guest_memory() -> GuestMemoryMmap {
    let regions = [REGION_A, REGION_B, REGION_C].map(|(a, l)| (GuestAddress(a), l));
    GuestMemoryMmap::from_ranges(&regions).expect("guest memory")
}

/// A copy of every region's bytes, to compare before and after.
pub fn snapshot(mem: &GuestMemoryMmap) -> Vec<Vec<u8>> {
    [REGION_A, REGION_B, REGION_C]
        .iter()
        .map(|&(a, l)| {
            let mut v = vec![0u8; l];
            mem.read_slice(&mut v, GuestAddress(a)).expect("region");
            v
        })
        .collect()
}

/// Guest addresses whose bytes differ between two snapshots.
pub fn changed_addresses(before: &[Vec<u8>], after: &[Vec<u8>]) -> Vec<u64> {
    let mut out = Vec::new();
    for (i, &(base, _)) in [REGION_A, REGION_B, REGION_C].iter().enumerate() {
        // Slice comparisons first: a byte loop under coverage instrumentation is slow.
        if before[i] == after[i] {
            continue;
        }
        let chunks = before[i].chunks(64).zip(after[i].chunks(64));
        for (c, (x, y)) in chunks.enumerate().filter(|(_, (x, y))| x != y) {
            for (off, (a, b)) in x.iter().zip(y.iter()).enumerate() {
                if a != b {
                    out.push(base + (c * 64 + off) as u64);
                }
            }
        }
    }
    out
}

/// A guest address chosen by the fuzzer: mostly inside or near guest memory.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Addr {
    /// Regions A and B.
    Low(u16),
    /// Around region C: [0x1f000, 0x23000).
    High(u16),
    /// Anywhere.
    Raw(u64),
}

impl Addr {
    /// The address.
    pub fn get(self) -> u64 {
        match self {
            Addr::Low(v) => u64::from(v),
            Addr::High(v) => 0x1_f000 + u64::from(v) % 0x4000,
            Addr::Raw(v) => v,
        }
    }
}

/// One split-queue descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Desc {
    /// Buffer address.
    pub addr: u64,
    /// Buffer length.
    pub len: u32,
    /// `F_*` flags.
    pub flags: u16,
    /// Next descriptor index.
    pub next: u16,
}

/// Writes `d` at `table[index]`; ignores writes outside guest memory.
pub fn write_desc(mem: &GuestMemoryMmap, table: u64, index: u64, d: Desc) {
    let mut b = [0u8; 16];
    b[0..8].copy_from_slice(&d.addr.to_le_bytes());
    b[8..12].copy_from_slice(&d.len.to_le_bytes());
    b[12..14].copy_from_slice(&d.flags.to_le_bytes());
    b[14..16].copy_from_slice(&d.next.to_le_bytes());
    let _ = mem.write_slice(&b, GuestAddress(table.wrapping_add(index.wrapping_mul(16))));
}

/// Writes a little-endian u16; ignores writes outside guest memory.
pub fn write_u16(mem: &GuestMemoryMmap, addr: u64, v: u16) {
    let _ = mem.write_slice(&v.to_le_bytes(), GuestAddress(addr));
}

/// Reads a little-endian u16 (0 outside guest memory).
pub fn read_u16(mem: &GuestMemoryMmap, addr: u64) -> u16 {
    let mut b = [0u8; 2];
    let _ = mem.read_slice(&mut b, GuestAddress(addr));
    u16::from_le_bytes(b)
}

/// Reads a little-endian u32 (0 outside guest memory).
pub fn read_u32(mem: &GuestMemoryMmap, addr: u64) -> u32 {
    let mut b = [0u8; 4];
    let _ = mem.read_slice(&mut b, GuestAddress(addr));
    u32::from_le_bytes(b)
}

/// Where the driver put the queue.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Layout {
    /// [`DESC_TABLE`], [`AVAIL_RING`], [`USED_RING`].
    Standard,
    /// Fuzzer-chosen (aligned down as the spec requires); the target skips layouts that are
    /// not within guest memory, as the transport would refuse them.
    Custom {
        /// Descriptor table.
        desc: Addr,
        /// Available ring.
        avail: Addr,
        /// Used ring.
        used: Addr,
    },
}

/// The driver's queue set-up.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub struct QueueSpec {
    /// log2 of the queue size (taken modulo 9: sizes 1 to 256).
    pub size_log2: u8,
    /// VIRTIO_RING_F_EVENT_IDX negotiated.
    pub event_idx: bool,
    /// Initial next_avail (and available index).
    pub next_avail: u16,
    /// Initial next_used (and used index).
    pub next_used: u16,
    /// Ring addresses.
    pub layout: Layout,
}

/// Where a queue's structures and buffers go.
#[derive(Debug, Clone, Copy)]
pub struct Area {
    /// Descriptor table.
    pub desc: u64,
    /// Available ring.
    pub avail: u64,
    /// Used ring.
    pub used: u64,
    /// Indirect tables are bump-allocated in [start, end).
    pub indirect: (u64, u64),
    /// Buffers are bump-allocated in [start, end).
    pub data: (u64, u64),
}

/// A raw descriptor from the fuzzer.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub struct RawDesc {
    /// Buffer address.
    pub addr: Addr,
    /// Buffer length.
    pub len: u32,
    /// Flags, as given.
    pub flags: u16,
    /// Next index, as given.
    pub next: u16,
}

impl RawDesc {
    /// The descriptor.
    pub fn get(self) -> Desc {
        Desc {
            addr: self.addr.get(),
            len: self.len,
            flags: self.flags,
            next: self.next,
        }
    }
}

/// A split queue in guest memory that the harness fills as a driver would.
pub struct DriverQueue {
    /// Queue size.
    pub size: u16,
    /// Descriptor table address.
    pub desc: u64,
    /// Available ring address.
    pub avail: u64,
    /// Used ring address.
    pub used: u64,
    /// The available index the harness will publish next.
    pub avail_idx: u16,
    /// The next descriptor slot to fill.
    pub next_slot: u16,
    indirect: (u64, u64),
    data: (u64, u64),
    next_indirect: u64,
    next_data: u64,
    /// The device's view, before activation.
    pub queue: Queue,
}

impl DriverQueue {
    /// Sets up the queue for `spec`, or `None` if the layout is not within guest memory
    /// (the transport refuses to activate such a queue, so the device never sees it).
    pub fn new(mem: &GuestMemoryMmap, spec: &QueueSpec, max_size: u16) -> Option<Self> {
        let (desc, avail, used) = match spec.layout {
            Layout::Standard => (DESC_TABLE, AVAIL_RING, USED_RING),
            Layout::Custom { desc, avail, used } => {
                (desc.get() & !15, avail.get() & !1, used.get() & !3)
            }
        };
        let area = Area {
            desc,
            avail,
            used,
            indirect: (INDIRECT_START, INDIRECT_END),
            data: (DATA_START, DATA_END),
        };
        Self::at(mem, spec, max_size, area)
    }

    /// Like [`DriverQueue::new`], with every address given (the layout in `spec` is ignored).
    pub fn at(mem: &GuestMemoryMmap, spec: &QueueSpec, max_size: u16, area: Area) -> Option<Self> {
        let size = (1u16 << (spec.size_log2 % 9)).min(max_size);
        let Area {
            desc, avail, used, ..
        } = area;
        let mut queue = Queue::new(max_size).ok()?;
        queue.try_set_size(size).ok()?;
        queue.try_set_desc_table_address(GuestAddress(desc)).ok()?;
        queue.try_set_avail_ring_address(GuestAddress(avail)).ok()?;
        queue.try_set_used_ring_address(GuestAddress(used)).ok()?;
        queue.set_event_idx(spec.event_idx);
        queue.set_next_avail(spec.next_avail);
        queue.set_next_used(spec.next_used);
        queue.set_ready(true);
        if !queue.is_valid(mem) {
            return None;
        }
        write_u16(mem, avail + 2, spec.next_avail);
        write_u16(mem, used + 2, spec.next_used);
        Some(Self {
            size,
            desc,
            avail,
            used,
            avail_idx: spec.next_avail,
            next_slot: 0,
            indirect: area.indirect,
            data: area.data,
            next_indirect: area.indirect.0,
            next_data: area.data.0,
            queue,
        })
    }

    /// A copy of the device's view of the queue, starting at `next_avail`.
    pub fn device_view(&self, next_avail: u16) -> Queue {
        let mut q = Queue::try_from(self.queue.state()).expect("queue state");
        q.set_next_avail(next_avail);
        q
    }

    /// The guest memory the driver's structures use (descriptor table, available ring,
    /// indirect tables).
    pub fn structures(&self) -> [(u64, u64); 3] {
        [
            (self.desc, 16 * u64::from(self.size)),
            (self.avail, self.avail_ring_len()),
            (self.indirect.0, self.indirect.1 - self.indirect.0),
        ]
    }

    /// Places `bytes` in the data area split at `cuts` (offsets into `bytes`), as descriptors
    /// with `flags`.
    pub fn place(
        &mut self,
        mem: &GuestMemoryMmap,
        bytes: &[u8],
        cuts: &[u16],
        flags: u16,
    ) -> Vec<Desc> {
        let mut points: Vec<usize> = cuts
            .iter()
            .map(|&c| usize::from(c))
            .filter(|&c| c < bytes.len())
            .collect();
        points.push(0);
        points.push(bytes.len());
        points.sort_unstable();
        points.dedup();
        let mut out = Vec::new();
        for w in points.windows(2) {
            let part = &bytes[w[0]..w[1]];
            let at = self.alloc_data(part.len() as u64);
            let _ = mem.write_slice(part, GuestAddress(at));
            out.push(Desc {
                addr: at,
                len: part.len() as u32,
                flags,
                next: 0,
            });
        }
        if out.is_empty() {
            out.push(Desc {
                addr: self.alloc_data(0),
                len: 0,
                flags,
                next: 0,
            });
        }
        out
    }

    /// Bytes of the used ring (with the trailing avail_event).
    pub fn used_ring_len(&self) -> u64 {
        6 + 8 * u64::from(self.size)
    }

    /// Bytes of the available ring (with the trailing used_event).
    pub fn avail_ring_len(&self) -> u64 {
        6 + 2 * u64::from(self.size)
    }

    /// Allocates `len` bytes in the data area (wrapping around when full).
    pub fn alloc_data(&mut self, len: u64) -> u64 {
        let (start, end) = self.data;
        if self.next_data + len > end {
            self.next_data = start;
        }
        let at = self.next_data;
        self.next_data = (at + len).min(end);
        at
    }

    /// Writes `descs` as one chain: into consecutive descriptor slots with NEXT links, or
    /// into an indirect table that one head descriptor points to. Flags given in `descs` are
    /// kept; NEXT and `next` are set to link the chain. Returns the head index.
    pub fn add_chain(&mut self, mem: &GuestMemoryMmap, descs: &[Desc], indirect: bool) -> u16 {
        let head = self.next_slot % self.size;
        if indirect {
            let table_len = 16 * descs.len() as u64;
            if self.next_indirect + table_len > self.indirect.1 {
                self.next_indirect = self.indirect.0;
            }
            let table = self.next_indirect;
            self.next_indirect += table_len;
            for (i, d) in descs.iter().enumerate() {
                let last = i + 1 == descs.len();
                let d = Desc {
                    flags: if last { d.flags } else { d.flags | F_NEXT },
                    next: if last { 0 } else { i as u16 + 1 },
                    ..*d
                };
                write_desc(mem, table, i as u64, d);
            }
            let head_desc = Desc {
                addr: table,
                len: table_len as u32,
                flags: F_INDIRECT,
                next: 0,
            };
            write_desc(mem, self.desc, u64::from(head), head_desc);
            self.next_slot = self.next_slot.wrapping_add(1);
        } else {
            for (i, d) in descs.iter().enumerate() {
                let slot = self.next_slot % self.size;
                let last = i + 1 == descs.len();
                let d = Desc {
                    flags: if last { d.flags } else { d.flags | F_NEXT },
                    next: if last { 0 } else { (slot + 1) % self.size },
                    ..*d
                };
                write_desc(mem, self.desc, u64::from(slot), d);
                self.next_slot = self.next_slot.wrapping_add(1);
            }
        }
        head
    }

    /// Writes raw descriptors (flags and `next` as given) into consecutive slots; returns the
    /// first slot.
    pub fn add_raw(&mut self, mem: &GuestMemoryMmap, descs: &[Desc]) -> u16 {
        let head = self.next_slot % self.size;
        for d in descs {
            let slot = self.next_slot % self.size;
            write_desc(mem, self.desc, u64::from(slot), *d);
            self.next_slot = self.next_slot.wrapping_add(1);
        }
        head
    }

    /// Puts `head` in the next available-ring slot (not yet published).
    pub fn push_avail(&mut self, mem: &GuestMemoryMmap, head: u16) {
        let slot = u64::from(self.avail_idx % self.size);
        write_u16(mem, self.avail + 4 + 2 * slot, head);
        self.avail_idx = self.avail_idx.wrapping_add(1);
    }

    /// Publishes the available index (`over` replaces the harness's own count).
    pub fn publish(&mut self, mem: &GuestMemoryMmap, over: Option<u16>) {
        write_u16(mem, self.avail + 2, over.unwrap_or(self.avail_idx));
    }

    /// Writes used_event (the driver's interrupt threshold with EVENT_IDX).
    pub fn set_used_event(&self, mem: &GuestMemoryMmap, v: u16) {
        write_u16(mem, self.avail + 4 + 2 * u64::from(self.size), v);
    }

    /// The used index in guest memory.
    pub fn used_idx(&self, mem: &GuestMemoryMmap) -> u16 {
        read_u16(mem, self.used + 2)
    }

    /// Used element `i` (ring position, wrapped): (id, len).
    pub fn used_elem(&self, mem: &GuestMemoryMmap, i: u16) -> (u32, u32) {
        let at = self.used + 4 + 8 * u64::from(i % self.size);
        (read_u32(mem, at), read_u32(mem, at + 4))
    }
}

/// What a chain lets the device write, as virtio-queue walks it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainInfo {
    /// Head index.
    pub head: u16,
    /// Device-writable buffers (address, length).
    pub writable: Vec<(u64, u64)>,
    /// Device-readable buffers (address, length).
    pub readable: Vec<(u64, u64)>,
    /// A readable buffer came after a writable one.
    pub readable_after_writable: bool,
    /// The last descriptor had no NEXT flag (the walk was not cut short).
    pub terminated: bool,
}

impl ChainInfo {
    /// Total device-readable bytes.
    pub fn readable_len(&self) -> u64 {
        self.readable.iter().map(|r| r.1).sum()
    }

    /// Number of descriptors.
    pub fn descriptors(&self) -> usize {
        self.readable.len() + self.writable.len()
    }

    /// Whether every buffer lies inside guest memory.
    pub fn in_memory(&self, mem: &GuestMemoryMmap) -> bool {
        self.readable
            .iter()
            .chain(&self.writable)
            .all(|&(a, l)| in_memory(mem, a, l))
    }

    /// Total device-writable bytes.
    pub fn writable_len(&self) -> u64 {
        self.writable.iter().map(|w| w.1).sum()
    }
}

/// The chains available to a queue in `state`, walked on a copy of it: at most `max` chains,
/// `None` if the available ring is unusable.
pub fn walk_available(mem: &GuestMemoryMmap, queue: &Queue, max: usize) -> Option<Vec<ChainInfo>> {
    let mut q = Queue::try_from(queue.state()).ok()?;
    let mut out = Vec::new();
    let iter = q.iter(mem).ok()?;
    for chain in iter.take(max) {
        let head = chain.head_index();
        let mut info = ChainInfo {
            head,
            writable: Vec::new(),
            readable: Vec::new(),
            readable_after_writable: false,
            terminated: false,
        };
        for d in chain {
            let span = (d.addr().0, u64::from(d.len()));
            info.terminated = !d.has_next();
            if d.is_write_only() {
                info.writable.push(span);
            } else {
                info.readable_after_writable |= !info.writable.is_empty();
                info.readable.push(span);
            }
        }
        out.push(info);
    }
    Some(out)
}

/// Whether `[addr, addr + len)` lies inside guest memory.
pub fn in_memory(mem: &GuestMemoryMmap, addr: u64, len: u64) -> bool {
    usize::try_from(len).is_ok_and(|l| GuestMemoryBackend::check_range(mem, GuestAddress(addr), l))
}

/// Whether `a` lies in one of `ranges` (address, length).
pub fn covered(ranges: &[(u64, u64)], a: u64) -> bool {
    ranges.iter().any(|&(s, l)| a >= s && a - s < l)
}

/// Whether two ranges overlap.
pub fn overlaps(a: (u64, u64), b: (u64, u64)) -> bool {
    a.1 > 0 && b.1 > 0 && a.0 < b.0.saturating_add(b.1) && b.0 < a.0.saturating_add(a.1)
}
