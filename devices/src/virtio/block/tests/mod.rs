//! Tests of the block device on mock queues, guest memory and a temporary image file.

mod device;
mod requests;

use std::fs;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use event_manager::{EventManager, SubscriberOps};
use virtio_bindings::virtio_blk::*;
use virtio_bindings::virtio_ring::VRING_DESC_F_NEXT;
use virtio_queue::desc::{split::Descriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestAddress;
use vmm_sys_util::tempfile::TempFile;

use super::*;
use crate::rate_limiter::tests::ManualClock;
use crate::rate_limiter::{TokenBucketConfig, TokenKind};
use crate::virtio::test_utils::{activate, mem, read_guest, RecordingInterrupt, MEM_SIZE, W};
use crate::virtio::MAX_CHAINS_PER_TURN;

const HDR: u64 = 0x1_0000;
const DATA: u64 = 0x2_0000;
const STATUS: u64 = 0x8_0000;
const R: u32 = 0;
const DISK_SECTORS: u64 = 64;
/// What the status byte holds before the device writes it.
const UNTOUCHED: u8 = 0xee;

/// A disk image filled with a pattern, guest memory, a queue and an activated device.
struct Rig {
    file: TempFile,
    mem: GuestMemoryMmap,
    blk: Block,
    next_desc: u16,
    chains: u16,
    avail: u64,
    used: u64,
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(7) ^ seed).collect()
}

fn image() -> TempFile {
    let file = TempFile::new().unwrap();
    fs::write(
        file.as_path(),
        pattern((DISK_SECTORS * SECTOR_SIZE) as usize, 0x5a),
    )
    .unwrap();
    file
}

fn config(file: &TempFile) -> BlockConfig {
    BlockConfig {
        path: file.as_path().to_path_buf(),
        id: "petrel-disk-0".into(),
        ..Default::default()
    }
}

impl Rig {
    fn new(tweak: impl FnOnce(&mut BlockConfig)) -> Self {
        let file = image();
        let mut cfg = config(&file);
        tweak(&mut cfg);
        let blk = Block::new(cfg).unwrap();
        Self {
            file,
            mem: mem(),
            blk,
            next_desc: 0,
            chains: 0,
            avail: 0,
            used: 0,
        }
    }

    /// Creates the queue and activates the device (after the chains were added, or before).
    fn activate(&mut self) -> Arc<RecordingInterrupt> {
        self.activate_with(false)
    }

    fn activate_with(&mut self, event_idx: bool) -> Arc<RecordingInterrupt> {
        let vq = MockSplitQueue::new(&self.mem, QUEUE_SIZE);
        let mut queue: Queue = vq.create_queue().unwrap();
        queue.set_event_idx(event_idx);
        self.avail = vq.avail_addr().0;
        self.used = vq.used_addr().0;
        self.activate_on(queue, self.blk.features())
    }

    /// Activates the device on `queue` with the features `acked`.
    fn activate_on(&mut self, queue: Queue, acked: u64) -> Arc<RecordingInterrupt> {
        activate(&mut self.blk, &self.mem, vec![queue], acked)
    }

    /// Adds a chain of (addr, len, flags) descriptors; NEXT links are filled in.
    fn add_chain(&mut self, descs: &[(u64, u32, u32)]) {
        let first = self.next_desc;
        let raw: Vec<RawDescriptor> = descs
            .iter()
            .enumerate()
            .map(|(i, &(addr, len, flags))| {
                let last = i + 1 == descs.len();
                let flags = if last {
                    flags
                } else {
                    flags | VRING_DESC_F_NEXT
                };
                let next = if last { 0 } else { first + i as u16 + 1 };
                RawDescriptor::from(Descriptor::new(addr, len, flags as u16, next))
            })
            .collect();
        self.add_raw(&raw);
    }

    /// Adds descriptors exactly as given (one chain starting at the first).
    fn add_raw(&mut self, raw: &[RawDescriptor]) {
        let first = self.next_desc;
        for (i, d) in raw.iter().enumerate() {
            self.mem
                .write_obj(*d, GuestAddress(u64::from(first + i as u16) * 16))
                .unwrap();
        }
        // The avail ring: flags, idx, ring[]. (The mock's used ring overlaps its second half.)
        let avail = self.avail;
        assert!(self.chains < QUEUE_SIZE / 2);
        let slot = avail + 4 + 2 * u64::from(self.chains % QUEUE_SIZE);
        self.mem.write_obj(first, GuestAddress(slot)).unwrap();
        self.chains += 1;
        self.mem
            .write_obj(self.chains, GuestAddress(avail + 2))
            .unwrap();
        self.next_desc += raw.len() as u16;
    }

    fn header(&self, at: u64, req_type: u32, sector: u64) {
        self.mem.write_obj(req_type, GuestAddress(at)).unwrap();
        self.mem.write_obj(0u32, GuestAddress(at + 4)).unwrap();
        self.mem.write_obj(sector, GuestAddress(at + 8)).unwrap();
    }

    /// A simple request: header, optional data (readable or writable), status.
    fn request(&mut self, req_type: u32, sector: u64, data: Option<(u32, u32)>) {
        self.header(HDR, req_type, sector);
        self.mem.write_obj(UNTOUCHED, GuestAddress(STATUS)).unwrap();
        let mut descs = vec![(HDR, 16, R)];
        if let Some((len, flags)) = data {
            descs.push((DATA, len, flags));
        }
        descs.push((STATUS, 1, W));
        self.add_chain(&descs);
    }

    fn status(&self) -> u8 {
        self.mem.read_obj(GuestAddress(STATUS)).unwrap()
    }

    /// (used idx, len of used entry `i`).
    fn used(&self, i: u16) -> (u16, u32) {
        let used = self.used;
        let idx: u16 = self.mem.read_obj(GuestAddress(used + 2)).unwrap();
        let len: u32 = self
            .mem
            .read_obj(GuestAddress(used + 4 + 8 * u64::from(i) + 4))
            .unwrap();
        (idx, len)
    }

    fn guest(&self, addr: u64, len: usize) -> Vec<u8> {
        read_guest(&self.mem, addr, len)
    }

    fn disk(&self) -> Vec<u8> {
        fs::read(self.file.as_path()).unwrap()
    }
}
