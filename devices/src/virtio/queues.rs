//! [`DeviceQueues`]: what every device keeps the same way, embedded in each: its queue
//! eventfds, the features the driver accepted, and once activated the queues, guest memory
//! and the interrupt. Activation, reset, the accessors of [`VirtioDevice`](super::VirtioDevice),
//! event-loop registration, serving a queue ([`serve_queue`]) and interrupting the driver
//! live here, once.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use event_manager::{EventOps, EventSet, Events};
use log::error;
use virtio_queue::{Queue, QueueState, QueueT};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::serve::{serve_queue, yield_queue, ChainHandler, QueueError, Turn};
use super::{ActivateContext, ActivateError, GuestMemoryMmap, InterruptKind, VirtioInterrupt};

/// An activated device's queues.
struct Active {
    mem: GuestMemoryMmap,
    queues: Vec<Queue>,
    interrupt: Arc<dyn VirtioInterrupt>,
}

/// A device's queues, their eventfds and its activation.
pub struct DeviceQueues {
    device: &'static str,
    device_type: u32,
    sizes: &'static [u16],
    features: u64,
    events: Vec<EventFd>,
    acked_features: u64,
    active: Option<Active>,
}

impl std::fmt::Debug for DeviceQueues {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceQueues")
            .field("device", &self.device)
            .field("sizes", &self.sizes)
            .field("features", &self.features)
            .field("acked_features", &self.acked_features)
            .field("activated", &self.active.is_some())
            .finish()
    }
}

impl DeviceQueues {
    /// The queues (of the maximum sizes `sizes`) of a device of type `device_type` that
    /// offers `features`, unactivated.
    pub(crate) fn new(
        device_type: u32,
        sizes: &'static [u16],
        features: u64,
    ) -> std::io::Result<Self> {
        Ok(Self {
            device: super::device_type::name(device_type),
            device_type,
            sizes,
            features,
            events: (0..sizes.len())
                .map(|_| EventFd::new(EFD_NONBLOCK))
                .collect::<std::io::Result<_>>()?,
            acked_features: 0,
            active: None,
        })
    }

    /// The virtio device type (see [`device_type`](super::device_type)).
    pub fn device_type(&self) -> u32 {
        self.device_type
    }

    /// Maximum size of each queue.
    pub fn sizes(&self) -> &'static [u16] {
        self.sizes
    }

    /// Features offered to the driver.
    pub fn features(&self) -> u64 {
        self.features
    }

    /// One eventfd per queue, written when the driver notifies that queue.
    pub fn events(&self) -> &[EventFd] {
        &self.events
    }

    /// Whether the device is activated (and not reset since).
    pub fn is_activated(&self) -> bool {
        self.active.is_some()
    }

    /// The features the driver accepted at the last activation (0 if not activated).
    pub fn acked_features(&self) -> u64 {
        self.acked_features
    }

    /// Whether the driver accepted every feature in the mask `features`.
    pub fn acked(&self, features: u64) -> bool {
        self.acked_features & features == features
    }

    /// Every queue's index and ring state; empty when not activated.
    pub fn states(&self) -> Vec<(usize, QueueState)> {
        self.active
            .iter()
            .flat_map(|a| a.queues.iter().map(|q| q.state()).enumerate())
            .collect()
    }

    /// Checks that the queues at the indices `required` exist and are ready.
    pub(crate) fn check_ready(queues: &[Queue], required: &[usize]) -> Result<(), ActivateError> {
        match required
            .iter()
            .find(|&&i| !queues.get(i).is_some_and(|q| q.ready()))
        {
            Some(i) => Err(ActivateError::BadQueue(format!("queue {i} not enabled"))),
            None => Ok(()),
        }
    }

    /// Takes the queues, memory and interrupt of `ctx`; the queues at the indices `required`
    /// must be ready.
    pub(crate) fn activate(
        &mut self,
        ctx: ActivateContext,
        required: &[usize],
    ) -> Result<(), ActivateError> {
        Self::check_ready(&ctx.queues, required)?;
        self.acked_features = ctx.acked_features;
        self.active = Some(Active {
            mem: ctx.mem,
            queues: ctx.queues,
            interrupt: ctx.interrupt,
        });
        Ok(())
    }

    /// Drops the queues (a driver reset).
    pub(crate) fn reset(&mut self) {
        self.active = None;
        self.acked_features = 0;
    }

    /// The interrupt, once activated.
    pub(crate) fn interrupt(&self) -> Option<&dyn VirtioInterrupt> {
        self.active.as_ref().map(|a| &*a.interrupt)
    }

    /// Guest memory and queue `index`, for a device that takes chains its own way.
    pub(crate) fn ring(&mut self, index: usize) -> Option<(&GuestMemoryMmap, &mut Queue)> {
        let active = self.active.as_mut()?;
        let queue = active.queues.get_mut(index)?;
        Some((&active.mem, queue))
    }

    /// Writes every queue's eventfd, so that the event loop looks at each queue once (after
    /// activation: kicks that came before it were drained unserved).
    pub(crate) fn kick_all(&self) {
        for evt in &self.events {
            if let Err(e) = evt.write(1) {
                error!("{}: cannot kick own queue event: {e}", self.device);
            }
        }
    }

    /// Ends queue `index`'s turn early with work left: the event loop comes back to it.
    pub(crate) fn yield_queue(&self, index: usize) {
        if let Some(evt) = self.events.get(index) {
            yield_queue(evt, self.device);
        }
    }

    /// Registers every queue eventfd with the event loop.
    pub(crate) fn register(&self, ops: &mut EventOps) {
        for evt in &self.events {
            if let Err(e) = ops.add(Events::new(evt, EventSet::IN)) {
                error!("{}: cannot register a queue eventfd: {e}", self.device);
            }
        }
    }

    /// The queue whose eventfd is `fd`, with the eventfd drained; `None` for another fd.
    pub(crate) fn take_event(&self, fd: RawFd) -> Option<usize> {
        let index = self.events.iter().position(|e| e.as_raw_fd() == fd)?;
        // EAGAIN only means another path already drained it.
        let _ = self.events[index].read();
        Some(index)
    }

    /// Serves queue `index` for one turn ([`serve_queue`]) and interrupts the driver if
    /// chains were returned and it wants to know. Nothing before activation.
    pub(crate) fn serve(&mut self, index: usize, handler: &mut impl ChainHandler) -> Turn {
        self.serve_with(index, handler, || {})
    }

    /// [`Self::serve`], calling `before_enable` after each round's last chain and before
    /// notifications are re-enabled (tests use it to play a driver racing the device).
    pub(crate) fn serve_with(
        &mut self,
        index: usize,
        handler: &mut impl ChainHandler,
        before_enable: impl FnMut(),
    ) -> Turn {
        let (Some(active), Some(evt)) = (self.active.as_mut(), self.events.get(index)) else {
            return Turn::default();
        };
        let Some(queue) = active.queues.get_mut(index) else {
            return Turn::default();
        };
        let turn = serve_queue(queue, &active.mem, evt, self.device, handler, before_enable);
        if turn.returned > 0 {
            if let Err(e) = self.notify(index) {
                handler.queue_error(e);
            }
        }
        turn
    }

    /// Returns chain `head` of queue `index` with `len` bytes written.
    pub(crate) fn add_used(&mut self, index: usize, head: u16, len: u32) -> Result<(), QueueError> {
        let Some((mem, queue)) = self.ring(index) else {
            return Ok(());
        };
        queue
            .add_used(mem, head, len)
            .map_err(|source| QueueError::Return { head, source })
    }

    /// Interrupts the driver for queue `index` if it asked to be. When that cannot be read
    /// the interrupt is raised anyway (a spurious interrupt is harmless, a missing one stalls
    /// the driver) and the error returned.
    pub(crate) fn notify(&mut self, index: usize) -> Result<(), QueueError> {
        let Some(active) = self.active.as_mut() else {
            return Ok(());
        };
        let Some(queue) = active.queues.get_mut(index) else {
            return Ok(());
        };
        let (wanted, result) = match queue.needs_notification(&active.mem) {
            Ok(wanted) => (wanted, Ok(())),
            Err(e) => (true, Err(QueueError::Ring(e))),
        };
        if wanted {
            // Queue indices are below the transport's limit of 2^16.
            let kind = InterruptKind::Queue(index as u16);
            if let Err(e) = active.interrupt.trigger(kind) {
                error!("{}: cannot raise interrupt: {e}", self.device);
            }
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::test_utils::{mem, RecordingInterrupt};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::GuestAddress;

    fn ctx(m: &GuestMemoryMmap, queues: Vec<Queue>) -> (ActivateContext, Arc<RecordingInterrupt>) {
        let int = Arc::new(RecordingInterrupt::default());
        let ctx = ActivateContext {
            mem: m.clone(),
            queues,
            acked_features: 0b101,
            interrupt: int.clone(),
        };
        (ctx, int)
    }

    #[test]
    fn activation_needs_the_required_queues_ready_and_reset_undoes_it() {
        let m = mem();
        let vq = MockSplitQueue::new(&m, 16);
        let mut q = DeviceQueues::new(0x42, &[16, 16], 0).unwrap();
        assert_eq!(q.events().len(), 2);
        let not_ready = Queue::new(16).unwrap();
        let (c, _) = ctx(&m, vec![vq.create_queue().unwrap(), not_ready]);
        let e = q.activate(c, &[0, 1]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "bad queue configuration: queue 1 not enabled"
        );
        let (c, _) = ctx(&m, vec![vq.create_queue().unwrap()]);
        assert!(q.activate(c, &[0, 1]).is_err(), "a missing queue");
        assert!(!q.is_activated() && q.states().is_empty());
        let (c, _) = ctx(
            &m,
            vec![vq.create_queue().unwrap(), Queue::new(16).unwrap()],
        );
        q.activate(c, &[0]).unwrap();
        assert!(q.is_activated());
        assert!(q.acked(0b100) && !q.acked(0b110));
        assert_eq!(q.states().len(), 2);
        q.reset();
        assert!(!q.is_activated());
        assert_eq!(q.acked_features(), 0);
    }

    #[test]
    fn events_are_found_drained_and_kicked() {
        let q = DeviceQueues::new(0x42, &[16; 3], 0).unwrap();
        q.kick_all();
        let fd = q.events()[2].as_raw_fd();
        assert_eq!(q.take_event(fd), Some(2));
        assert!(q.events()[2].read().is_err(), "drained");
        assert_eq!(q.take_event(-1), None);
        q.yield_queue(1);
        assert_eq!(q.events()[1].read().unwrap(), 2);
    }

    #[test]
    fn notify_follows_the_driver_and_raises_on_a_broken_ring() {
        let m = mem();
        let vq = MockSplitQueue::new(&m, 16);
        let mut q = DeviceQueues::new(0x42, &[16], 0).unwrap();
        assert!(q.notify(0).is_ok(), "nothing before activation");
        let (c, int) = ctx(&m, vec![vq.create_queue().unwrap()]);
        q.activate(c, &[0]).unwrap();
        q.notify(0).unwrap();
        assert_eq!(int.take(), [InterruptKind::Queue(0)]);
        // With event-idx the driver's used_event decides.
        let used_event = vq.avail_addr().0 + 4 + 2 * 16;
        q.ring(0).unwrap().1.set_event_idx(true);
        for (used_event_value, wanted) in [(0u16, true), (5, false)] {
            vm_memory::Bytes::write_obj(&m, used_event_value, GuestAddress(used_event)).unwrap();
            q.add_used(0, 0, 0).unwrap();
            q.notify(0).unwrap();
            assert_eq!(
                int.take().len(),
                usize::from(wanted),
                "used_event {used_event_value}"
            );
        }
        // An avail ring outside memory: the interrupt is raised anyway, the error returned.
        let (_, queue) = q.ring(0).unwrap();
        queue.set_avail_ring_address(Some(0xffff_f000), Some(0));
        assert!(q.notify(0).is_err());
        assert_eq!(int.take(), [InterruptKind::Queue(0)]);
    }
}
