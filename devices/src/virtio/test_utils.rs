//! Helpers shared by the devices' tests: guest memory, descriptors, an interrupt that records
//! what it is asked, and hostile queue layouts.

use std::io;
use std::sync::{Arc, Mutex};

use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE, VRING_USED_F_NO_NOTIFY};
use virtio_queue::desc::{split::Descriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueState, QueueT};
use vm_memory::{Address, Bytes, GuestAddress};

use super::{ActivateContext, GuestMemoryMmap, InterruptKind, VirtioDevice, VirtioInterrupt};

/// Size of the guest memory [`mem`] gives.
pub(crate) const MEM_SIZE: usize = 0x10_0000;
/// A device-writable descriptor.
pub(crate) const W: u32 = VRING_DESC_F_WRITE;
/// A descriptor followed by another.
pub(crate) const N: u32 = VRING_DESC_F_NEXT;

/// [`MEM_SIZE`] bytes of guest memory from address 0.
pub(crate) fn mem() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap()
}

/// A descriptor (flags as the `VRING_DESC_F_*` constants are typed).
pub(crate) fn desc(addr: u64, len: u32, flags: u32, next: u16) -> RawDescriptor {
    RawDescriptor::from(Descriptor::new(addr, len, flags as u16, next))
}

/// (used ring index, (head, len) of used entry `i`).
pub(crate) fn used(vq: &MockSplitQueue<GuestMemoryMmap>, i: usize) -> (u16, (u32, u32)) {
    let e = vq.used().ring().ref_at(i).unwrap().load();
    (vq.used().idx().load(), (e.id(), e.len()))
}

/// `len` bytes of guest memory at `addr`.
pub(crate) fn read_guest(mem: &GuestMemoryMmap, addr: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
    v
}

/// An interrupt that records what it was asked to raise.
#[derive(Default)]
pub(crate) struct RecordingInterrupt(pub Mutex<Vec<InterruptKind>>);

impl VirtioInterrupt for RecordingInterrupt {
    fn trigger(&self, kind: InterruptKind) -> io::Result<()> {
        self.0.lock().unwrap().push(kind);
        Ok(())
    }
}

impl RecordingInterrupt {
    /// What was raised since the last call.
    pub(crate) fn take(&self) -> Vec<InterruptKind> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }

    /// How many interrupts were raised (and not taken).
    pub(crate) fn count(&self) -> usize {
        self.0.lock().unwrap().len()
    }
}

/// Activates `dev` on `queues` with the features `acked`, interrupting through `int`.
/// Panics if the device refuses.
pub(crate) fn activate_with(
    dev: &mut impl VirtioDevice,
    mem: &GuestMemoryMmap,
    queues: Vec<Queue>,
    acked: u64,
    int: Arc<RecordingInterrupt>,
) {
    dev.activate(ActivateContext {
        mem: mem.clone(),
        queues,
        acked_features: acked,
        interrupt: int,
    })
    .unwrap();
}

/// [`activate_with`] a new [`RecordingInterrupt`], which it returns.
pub(crate) fn activate(
    dev: &mut impl VirtioDevice,
    mem: &GuestMemoryMmap,
    queues: Vec<Queue>,
    acked: u64,
) -> Arc<RecordingInterrupt> {
    let int = Arc::new(RecordingInterrupt::default());
    activate_with(dev, mem, queues, acked, int.clone());
    int
}

/// Whether the device wants notifications on the split queue whose used ring is at `used`
/// (without event-idx: `VRING_USED_F_NO_NOTIFY` is clear).
pub(crate) fn notifications_on(mem: &GuestMemoryMmap, used: u64) -> bool {
    let flags: u16 = mem.read_obj(GuestAddress(used)).unwrap();
    flags & VRING_USED_F_NO_NOTIFY as u16 == 0
}

/// A driver racing the device: a chain already in the ring but not yet counted in the avail
/// index is published (index set to 1) at the first [`LateChain::publish`], which the device
/// calls after a round found the ring empty and before it turns notifications back on. The
/// driver sees notifications off then, so it does not notify: the device must find the chain
/// by itself.
pub(crate) struct LateChain<'a> {
    mem: &'a GuestMemoryMmap,
    avail: u64,
    used: u64,
    /// Whether the chain was published.
    pub published: bool,
    /// Whether to check that the device has `VRING_USED_F_NO_NOTIFY` set (without
    /// event-idx); with event-idx the driver looks at `avail_event` instead.
    pub check_flag: bool,
}

impl<'a> LateChain<'a> {
    /// The queue with its avail ring at `avail` and used ring at `used`.
    pub(crate) fn new(mem: &'a GuestMemoryMmap, avail: u64, used: u64) -> Self {
        Self {
            mem,
            avail,
            used,
            published: false,
            check_flag: true,
        }
    }

    /// Publishes the chain the first time; does nothing afterwards.
    pub(crate) fn publish(&mut self) {
        if self.published {
            return;
        }
        self.published = true;
        if self.check_flag {
            assert!(
                !notifications_on(self.mem, self.used),
                "driver would notify"
            );
        }
        self.mem
            .write_obj(1u16, GuestAddress(self.avail + 2))
            .unwrap();
    }
}

/// A ready queue on `vq`'s descriptor table whose avail ring sits at the very end of `mem`
/// (as [`mem`] gives it): its flags and index fit, `ring[0]` does not, and the index
/// announces one chain, which the device can never read.
pub(crate) fn unreadable_avail_queue(
    mem: &GuestMemoryMmap,
    vq: &MockSplitQueue<GuestMemoryMmap>,
) -> Queue {
    let avail = MEM_SIZE as u64 - 4;
    mem.write_obj(1u16, GuestAddress(avail + 2)).unwrap();
    let mut queue: Queue = vq.create_queue().unwrap();
    queue.set_avail_ring_address(Some(avail as u32), Some(0));
    queue
}

/// The device's available index in [`aliased_rings_queue`] (close to wrapping).
const ALIASED_NEXT_AVAIL: u16 = 0xfff0;

/// A ready queue on `vq`'s descriptor table and available ring whose used ring lies on
/// top of the available ring, with the device's used index `lead` ahead of its available
/// index: the state a guest reaches by returning chains with heads beyond the queue
/// (popped, never used) and then laying the rings over each other. Every `add_used` then
/// advances `avail.idx` too, so a device that serves until the ring is empty never stops.
/// The slots it reads hold the low and high halves of used elements: with used lengths
/// below the queue size, every head is a valid (all-zero) descriptor.
pub(crate) fn aliased_rings_queue(
    mem: &GuestMemoryMmap,
    vq: &MockSplitQueue<GuestMemoryMmap>,
    lead: u16,
) -> Queue {
    let mut queue: Queue = vq.create_queue().unwrap();
    let avail = vq.avail_addr();
    queue
        .try_set_used_ring_address(avail)
        .expect("aligned avail ring");
    let next_avail = ALIASED_NEXT_AVAIL;
    queue.set_next_avail(next_avail);
    queue.set_next_used(next_avail.wrapping_add(lead));
    // `avail.idx` is `used.idx`: what the device last published.
    mem.write_obj(next_avail.wrapping_add(lead), avail.unchecked_add(2))
        .unwrap();
    queue
}

/// How many chains the device took from an [`aliased_rings_queue`] whose state is now
/// `state`.
pub(crate) fn taken(state: &QueueState) -> u16 {
    state.next_avail.wrapping_sub(ALIASED_NEXT_AVAIL)
}
