//! virtio-rng (device type 4): an entropy source that fills the driver's buffers from
//! getrandom(2).
//!
//! One queue. Every available chain's device-writable buffers are filled (at most
//! [`MAX_REQUEST_BYTES`] per chain; a partial fill is allowed by the spec) and returned with
//! the number of bytes written. A chain with no writable buffer, or with a buffer outside guest
//! memory, is returned with length 0 and counted as an error.

use std::io;

use event_manager::{EventOps, Events, MutEventSubscriber};
use log::warn;
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use vm_memory::{Bytes, GuestMemoryBackend};

use crate::virtio::serve::{count_error, Chain, ChainHandler, Disposition, QueueError};
use crate::virtio::{
    device_counters, device_type, ActivateContext, ActivateError, DeviceQueues, GuestMemoryMmap,
    VirtioDevice, VIRTIO_F_VERSION_1,
};

/// Size of the request queue.
pub const QUEUE_SIZE: u16 = 256;
/// Most bytes written for one request.
pub const MAX_REQUEST_BYTES: u32 = 64 * 1024;

const QUEUE_SIZES: &[u16] = &[QUEUE_SIZE];
const FEATURES: u64 = VIRTIO_F_VERSION_1 | (1 << VIRTIO_RING_F_EVENT_IDX);
/// Bytes fetched from getrandom(2) at a time.
const CHUNK: usize = 4096;

device_counters! {
    /// What the device has done, for the API.
    pub struct RngCounters {
        /// Requests (descriptor chains) served.
        requests,
        /// Random bytes written to the guest.
        bytes,
        /// Requests refused (no writable buffer, buffer outside guest memory, getrandom failure)
        /// and queue errors.
        errors,
    }
}

/// Why a request could not be served.
#[derive(Debug, thiserror::Error)]
enum RequestError {
    #[error("chain has no device-writable buffer")]
    NoWritableBuffer,
    #[error("buffer {addr:#x}+{len:#x} is outside guest memory")]
    OutsideMemory { addr: u64, len: u32 },
    #[error("getrandom failed")]
    GetRandom(#[source] io::Error),
    #[error("cannot write guest memory")]
    Memory(#[source] vm_memory::GuestMemoryError),
}

const DEVICE: &str = "virtio-rng";

/// A virtio-rng device.
pub struct Rng {
    queues: DeviceQueues,
    counters: RngCounters,
}

impl Rng {
    /// A new, unactivated device.
    pub fn new() -> io::Result<Self> {
        Ok(Self {
            queues: DeviceQueues::new(device_type::RNG, QUEUE_SIZES, FEATURES)?,
            counters: RngCounters::default(),
        })
    }

    /// The counters so far.
    pub fn counters(&self) -> RngCounters {
        self.counters
    }

    /// Serves every available chain, at most [`MAX_CHAINS_PER_TURN`](crate::virtio::MAX_CHAINS_PER_TURN)
    /// (then, with more available, writes the queue eventfd so the event loop comes back),
    /// then interrupts the driver if it wants to know.
    fn process_queue(&mut self) {
        self.process_queue_with(|| {});
    }

    /// [`Self::process_queue`], calling `before_enable` after each round's last chain and
    /// before notifications are re-enabled (tests use it to play a driver racing the device).
    fn process_queue_with(&mut self, before_enable: impl FnMut()) {
        let mut fill = Fill(&mut self.counters);
        self.queues.serve_with(0, &mut fill, before_enable);
    }
}

/// Serves the request queue: fills each chain.
struct Fill<'a>(&'a mut RngCounters);

impl ChainHandler for Fill<'_> {
    fn handle(&mut self, mem: &GuestMemoryMmap, chain: Chain<'_>) -> Disposition {
        let head = chain.head_index();
        match fill_chain(mem, chain) {
            Ok(len) => {
                self.0.requests += 1;
                self.0.bytes += u64::from(len);
                Disposition::Used(len)
            }
            Err(e) => {
                let what = format_args!("request {head}: {e}");
                count_error(&mut self.0.errors, DEVICE, what);
                Disposition::Used(0)
            }
        }
    }

    fn queue_error(&mut self, error: QueueError) {
        count_error(&mut self.0.errors, DEVICE, format_args!("{error}"));
    }
}

/// Fills the writable buffers of `chain` with random bytes; returns the number written.
fn fill_chain(mem: &GuestMemoryMmap, chain: Chain<'_>) -> Result<u32, RequestError> {
    // The chain iterator stops after queue-size descriptors, so a looping chain ends.
    let buffers: Vec<_> = chain.writable().collect();
    if buffers.is_empty() {
        return Err(RequestError::NoWritableBuffer);
    }
    if let Some(d) = buffers
        .iter()
        .find(|d| !GuestMemoryBackend::check_range(mem, d.addr(), d.len() as usize))
    {
        return Err(RequestError::OutsideMemory {
            addr: d.addr().0,
            len: d.len(),
        });
    }
    let mut buf = [0u8; CHUNK];
    let mut written = 0u32;
    for d in buffers {
        let mut offset = 0u32;
        while offset < d.len() && written < MAX_REQUEST_BYTES {
            let n = (d.len() - offset).min(MAX_REQUEST_BYTES - written) as usize;
            let n = n.min(CHUNK);
            getrandom(&mut buf[..n]).map_err(RequestError::GetRandom)?;
            // Cannot overflow: the range was checked to be within guest memory.
            let addr = d.addr().0 + u64::from(offset);
            mem.write_slice(&buf[..n], vm_memory::GuestAddress(addr))
                .map_err(RequestError::Memory)?;
            offset += n as u32;
            written += n as u32;
        }
    }
    Ok(written)
}

/// Fills `buf` from getrandom(2), retrying on EINTR and short reads.
fn getrandom(buf: &mut [u8]) -> io::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        let rest = &mut buf[filled..];
        // SAFETY: `rest` is valid for writes of `rest.len()` bytes for the whole call, and
        // getrandom writes at most that many.
        let ret = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        match ret {
            n if n > 0 => filled += n as usize,
            0 => return Err(io::ErrorKind::UnexpectedEof.into()),
            _ => {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
    Ok(())
}

impl VirtioDevice for Rng {
    fn queues(&self) -> Option<&DeviceQueues> {
        Some(&self.queues)
    }

    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        // No configuration space.
        data.fill(0);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        let what = format_args!("{}-byte config write at {offset:#x} ignored", data.len());
        count_error(&mut self.counters.errors, DEVICE, what);
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        self.queues.activate(ctx, &[0])
    }

    fn reset(&mut self) {
        self.queues.reset();
    }

    fn counter_values(&self) -> Vec<(&'static str, u64)> {
        self.counters.values()
    }
}

impl MutEventSubscriber for Rng {
    fn init(&mut self, ops: &mut EventOps) {
        self.queues.register(ops);
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        match self.queues.take_event(events.fd()) {
            Some(_) => self.process_queue(),
            None => warn!("{DEVICE}: event on unknown fd {}", events.fd()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    use event_manager::{EventManager, SubscriberOps};
    use virtio_queue::mock::MockSplitQueue;
    use virtio_queue::{Queue, QueueT};
    use vm_memory::Address;

    use crate::virtio::test_utils::{
        activate, desc, mem, notifications_on, read_guest, used, LateChain, RecordingInterrupt,
        MEM_SIZE, N, W,
    };
    use crate::virtio::{ActivateContext, InterruptKind, MAX_CHAINS_PER_TURN};

    const BUF: u64 = 0x8_0000;

    /// An rng activated on `queue`.
    fn activated_on(mem: &GuestMemoryMmap, queue: Queue) -> (Rng, Arc<RecordingInterrupt>) {
        let mut rng = Rng::new().unwrap();
        let int = activate(&mut rng, mem, vec![queue], FEATURES);
        (rng, int)
    }

    fn activated(
        mem: &GuestMemoryMmap,
        vq: &MockSplitQueue<GuestMemoryMmap>,
        event_idx: bool,
    ) -> (Rng, Arc<RecordingInterrupt>) {
        let mut queue: Queue = vq.create_queue().unwrap();
        queue.set_event_idx(event_idx);
        activated_on(mem, queue)
    }

    #[test]
    fn fills_a_64_byte_buffer() {
        let m = mem();
        let vq = MockSplitQueue::new(&m, QUEUE_SIZE);
        vq.add_desc_chains(&[desc(BUF, 64, W, 0)], 0).unwrap();
        let (mut rng, int) = activated(&m, &vq, false);
        rng.process_queue();
        assert_eq!(used(&vq, 0), (1, (0, 64)));
        assert!(read_guest(&m, BUF, 64).iter().any(|&b| b != 0));
        assert!(read_guest(&m, BUF + 64, 64).iter().all(|&b| b == 0));
        let c = rng.counters();
        assert_eq!((c.requests, c.bytes, c.errors), (1, 64, 0));
        assert_eq!(int.take(), vec![InterruptKind::Queue(0)]);
    }

    #[test]
    fn skips_readable_buffers_and_fills_several_writable_ones() {
        let m = mem();
        let vq = MockSplitQueue::new(&m, QUEUE_SIZE);
        let chain = [
            desc(BUF, 32, N, 1),
            desc(BUF + 0x100, 16, W | N, 2),
            desc(BUF + 0x200, 16, W, 0),
        ];
        vq.add_desc_chains(&chain, 0).unwrap();
        let (mut rng, _) = activated(&m, &vq, true);
        rng.process_queue();
        assert_eq!(used(&vq, 0), (1, (0, 32)));
        assert!(read_guest(&m, BUF, 32).iter().all(|&b| b == 0));
    }

    #[test]
    fn read_only_chain_is_an_error_with_length_0() {
        let m = mem();
        let vq = MockSplitQueue::new(&m, QUEUE_SIZE);
        vq.add_desc_chains(&[desc(BUF, 64, 0, 0)], 0).unwrap();
        let (mut rng, _) = activated(&m, &vq, false);
        rng.process_queue();
        assert_eq!(used(&vq, 0), (1, (0, 0)));
        assert!(read_guest(&m, BUF, 64).iter().all(|&b| b == 0));
        assert_eq!(rng.counters().errors, 1);
        assert_eq!(rng.counters().requests, 0);
    }

    #[test]
    fn buffer_outside_memory_is_an_error_and_nothing_is_written() {
        let m = mem();
        let vq = MockSplitQueue::new(&m, QUEUE_SIZE);
        let end = MEM_SIZE as u64;
        // The first buffer is fine; the second crosses the end of memory.
        let chain = [desc(BUF, 16, W | N, 1), desc(end - 16, 64, W, 0)];
        vq.add_desc_chains(&chain, 0).unwrap();
        vq.add_desc_chains(&[desc(u64::MAX - 8, 64, W, 0)], 2)
            .unwrap();
        let (mut rng, _) = activated(&m, &vq, false);
        rng.process_queue();
        assert_eq!(used(&vq, 0), (2, (0, 0)));
        assert_eq!(used(&vq, 1), (2, (2, 0)));
        assert!(read_guest(&m, BUF, 16).iter().all(|&b| b == 0));
        assert!(read_guest(&m, end - 16, 16).iter().all(|&b| b == 0));
        assert_eq!(rng.counters().errors, 2);
    }

    #[test]
    fn looping_chain_ends() {
        let m = mem();
        let vq = MockSplitQueue::new(&m, QUEUE_SIZE);
        let chain = [desc(BUF, 16, W | N, 1), desc(BUF + 16, 16, W | N, 0)];
        vq.add_desc_chains(&chain, 0).unwrap();
        let (mut rng, _) = activated(&m, &vq, false);
        rng.process_queue();
        let (idx, (head, len)) = used(&vq, 0);
        assert_eq!((idx, head), (1, 0));
        // At most one queue's worth of descriptors is followed.
        assert!(len > 0 && len <= u32::from(QUEUE_SIZE) * 16, "len {len}");
    }

    #[test]
    fn large_buffer_is_filled_up_to_the_cap() {
        let m = mem();
        let vq = MockSplitQueue::new(&m, QUEUE_SIZE);
        vq.add_desc_chains(&[desc(BUF, 2 * MAX_REQUEST_BYTES, W, 0)], 0)
            .unwrap();
        let (mut rng, _) = activated(&m, &vq, false);
        rng.process_queue();
        assert_eq!(used(&vq, 0), (1, (0, MAX_REQUEST_BYTES)));
    }

    #[test]
    fn bogus_avail_index_does_not_hang() {
        let m = mem();
        let vq = MockSplitQueue::new(&m, QUEUE_SIZE);
        let (mut rng, int) = activated(&m, &vq, false);
        m.write_obj(1000u16, vq.avail_addr().unchecked_add(2))
            .unwrap();
        rng.process_queue();
        assert_eq!(vq.used().idx().load(), 0);
        assert_eq!(rng.counters().errors, 1);
        assert_eq!(int.count(), 0);
    }

    #[test]
    fn used_ring_over_avail_ring_ends_the_turn_and_rekicks_the_queue() {
        use crate::virtio::test_utils::{aliased_rings_queue, taken};
        let m = mem();
        let vq = MockSplitQueue::new(&m, QUEUE_SIZE);
        let (mut rng, int) = activated_on(&m, aliased_rings_queue(&m, &vq, 100));
        rng.process_queue();
        let (_, state) = rng.active_queue_states()[0];
        assert_eq!(u32::from(taken(&state)), MAX_CHAINS_PER_TURN);
        // Every chain is a zero-length read-only descriptor: an error.
        assert_eq!(rng.counters().errors, u64::from(MAX_CHAINS_PER_TURN));
        assert_eq!(rng.queue_events()[0].read().unwrap(), 1);
        assert_eq!(int.count(), 1);
    }

    /// The driver makes a chain available after a round found the ring empty but before
    /// notifications are back on: it sees NO_NOTIFY and does not notify, so the device must
    /// serve the chain in the same turn (the ring-3 rng benchmark once stalled on this).
    #[test]
    fn chain_made_available_in_an_empty_round_is_served() {
        let m = mem();
        let vq = MockSplitQueue::new(&m, QUEUE_SIZE);
        let (mut rng, int) = activated(&m, &vq, false);
        // Written but not published yet; a turn started by a stale kick finds nothing.
        vq.add_desc_chains(&[desc(BUF, 64, W, 0)], 0).unwrap();
        m.write_obj(0u16, vq.avail_addr().unchecked_add(2)).unwrap();
        let mut late = LateChain::new(&m, vq.avail_addr().0, vq.used_addr().0);
        rng.process_queue_with(|| late.publish());
        assert!(late.published);
        assert_eq!(used(&vq, 0), (1, (0, 64)));
        assert_eq!(rng.counters().errors, 0);
        assert!(
            notifications_on(&m, vq.used_addr().0),
            "notifications left off"
        );
        assert_eq!(int.count(), 1);
    }

    /// Chains announced by the avail index that cannot be read (the ring runs off the end of
    /// memory) make two empty rounds in a row: the turn ends instead of spinning.
    #[test]
    fn unreadable_avail_ring_ends_the_turn() {
        let m = mem();
        let vq = MockSplitQueue::new(&m, QUEUE_SIZE);
        let queue = crate::virtio::test_utils::unreadable_avail_queue(&m, &vq);
        let (mut rng, int) = activated_on(&m, queue);
        let mut rounds = 0;
        rng.process_queue_with(|| rounds += 1);
        assert_eq!(rounds, 2);
        assert_eq!(rng.counters().errors, 1);
        assert_eq!(vq.used().idx().load(), 0);
        assert_eq!(int.count(), 0);
    }

    #[test]
    fn activation_needs_a_ready_queue_and_reset_deactivates() {
        let m = mem();
        let mut rng = Rng::new().unwrap();
        assert_eq!(rng.device_type(), device_type::RNG);
        assert_eq!(rng.queue_max_sizes(), &[QUEUE_SIZE]);
        rng.process_queue(); // Not activated: nothing happens.
        let queue = Queue::new(QUEUE_SIZE).unwrap();
        let ctx = ActivateContext {
            mem: m.clone(),
            queues: vec![queue],
            acked_features: VIRTIO_F_VERSION_1,
            interrupt: Arc::new(RecordingInterrupt::default()),
        };
        assert!(rng.activate(ctx).is_err());
        assert!(!rng.is_activated());
        let vq = MockSplitQueue::new(&m, QUEUE_SIZE);
        let (mut rng, _) = activated(&m, &vq, false);
        assert!(rng.is_activated());
        rng.reset();
        assert!(!rng.is_activated());
        assert_eq!(rng.acked_features(), 0);
        let mut cfg = [0xffu8; 4];
        rng.read_config(0, &mut cfg);
        assert_eq!(cfg, [0; 4]);
    }

    #[test]
    fn queue_event_on_the_event_loop_serves_the_queue() {
        let m = mem();
        let vq = MockSplitQueue::new(&m, QUEUE_SIZE);
        let (rng, int) = activated(&m, &vq, false);
        let evt = rng.queue_events()[0].try_clone().unwrap();
        let rng = Arc::new(Mutex::new(rng));
        let mut manager = EventManager::<Arc<Mutex<Rng>>>::new().unwrap();
        manager.add_subscriber(rng.clone());
        vq.add_desc_chains(&[desc(BUF, 64, W, 0)], 0).unwrap();
        evt.write(1).unwrap();
        assert_eq!(manager.run_with_timeout(1000).unwrap(), 1);
        assert_eq!(used(&vq, 0), (1, (0, 64)));
        assert!(evt.read().is_err(), "eventfd drained");
        assert_eq!(int.count(), 1);
        assert_eq!(rng.lock().unwrap().counters().bytes, 64);
    }
}
