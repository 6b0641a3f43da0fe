//! Virtio devices, independent of their transport.
//!
//! A device offers features, a config space and queues. The transport (`mmio`, later PCI)
//! owns the driver-facing registers and the queues until the driver sets DRIVER_OK; it then
//! hands the configured queues to [`VirtioDevice::activate`]. From then on the device serves
//! its queues on the event loop: each queue has an eventfd (`queue_events`) that the VMM
//! registers as an ioeventfd on the transport's notify register, and the device's
//! `MutEventSubscriber` implementation handles those events (and any of its own fds, such as
//! a tap). Completions are signalled through the [`VirtioInterrupt`] it was activated with.
//!
//! Guest input is hostile: a bad descriptor chain gets an error status or marks the device
//! as needing a reset; it never panics, hangs, or touches memory outside the guest.
//!
//! All devices share one event-loop thread, so no queue may hold it for long: a device
//! serves at most [`MAX_CHAINS_PER_TURN`] chains of a queue per call, and if the driver has
//! made more available it writes that queue's own eventfd so the event
//! loop comes back to the queue after serving everything else that is ready. Without the
//! bound a guest could keep a device busy forever: by refilling the available ring from a
//! second vCPU, or by laying the used ring over the available ring so that every returned
//! chain makes a new one appear (the transport refuses such a layout, but devices do not
//! rely on it). That turn is written once, in `serve` ([`DeviceQueues`] runs it for a device).

pub mod balloon;
pub mod block;
pub mod mmio;
pub mod net;
pub mod pci;
mod queues;
pub mod rng;
mod serve;
pub mod state;
#[cfg(test)]
pub(crate) mod test_utils;
pub mod vsock;

use std::sync::Arc;

use event_manager::MutEventSubscriber;
use virtio_queue::Queue;
use vmm_sys_util::eventfd::EventFd;

pub use queues::DeviceQueues;

/// Guest memory as devices see it (cheap to clone: the regions are shared).
pub type GuestMemoryMmap = vm_memory::GuestMemoryMmap<()>;

/// `VIRTIO_F_VERSION_1`: petrel's devices are modern (virtio 1.x) only.
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;

/// Most descriptor chains a device takes from one queue in one turn on the event loop (four
/// times the largest queue); see the module documentation.
pub const MAX_CHAINS_PER_TURN: u32 = 1024;

// Every device's queues fit the budget a few times over.
const _: () = {
    let largest = [
        block::QUEUE_SIZE,
        net::QUEUE_SIZE,
        rng::QUEUE_SIZE,
        balloon::QUEUE_SIZE,
        vsock::QUEUE_SIZE,
    ];
    let mut i = 0;
    while i < largest.len() {
        assert!(4 * largest[i] as u32 <= MAX_CHAINS_PER_TURN);
        i += 1;
    }
};

/// Device type numbers (virtio spec 5).
pub mod device_type {
    /// Network card.
    pub const NET: u32 = 1;
    /// Block device.
    pub const BLOCK: u32 = 2;
    /// Entropy source.
    pub const RNG: u32 = 4;
    /// Memory balloon.
    pub const BALLOON: u32 = 5;
    /// Socket device.
    pub const VSOCK: u32 = 19;

    /// The name of device type `t` in logs.
    pub fn name(t: u32) -> &'static str {
        match t {
            NET => "virtio-net",
            BLOCK => "virtio-blk",
            RNG => "virtio-rng",
            BALLOON => "virtio-balloon",
            VSOCK => "virtio-vsock",
            _ => "virtio",
        }
    }
}

/// What a device tells the driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InterruptKind {
    /// A queue's used ring has new entries.
    Queue(u16),
    /// The configuration space changed.
    Config,
}

/// How a device interrupts the driver; implemented by the transport.
pub trait VirtioInterrupt: Send + Sync {
    /// Raises the interrupt.
    fn trigger(&self, kind: InterruptKind) -> std::io::Result<()>;
}

/// Why a device could not be activated.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    /// The driver set up the queues wrongly.
    #[error("bad queue configuration: {0}")]
    BadQueue(String),
    /// The device's own resources failed.
    #[error("device activation failed: {0}")]
    Device(String),
}

/// What a device gets when the driver sets DRIVER_OK.
pub struct ActivateContext {
    /// Guest memory.
    pub mem: GuestMemoryMmap,
    /// The queues in index order, one per entry of `queue_max_sizes`. A queue the driver did
    /// not enable has `ready() == false` (a device must not serve it); every ready queue lies
    /// within guest memory and has event-idx set as negotiated.
    pub queues: Vec<Queue>,
    /// The features the driver accepted.
    pub acked_features: u64,
    /// How to interrupt the driver.
    pub interrupt: Arc<dyn VirtioInterrupt>,
}

/// A virtio device. Its `MutEventSubscriber` side runs on the event loop and serves the
/// queues; the transport calls the other methods from vCPU threads.
pub trait VirtioDevice: MutEventSubscriber + Send {
    /// The device's type, features, queues, their eventfds and its activation, when it keeps
    /// them in a [`DeviceQueues`] (every petrel device does; the accessors below read
    /// it). A device that keeps them otherwise returns `None` and provides those
    /// methods itself.
    fn queues(&self) -> Option<&DeviceQueues> {
        None
    }
    /// The virtio device type (see [`device_type`]).
    fn device_type(&self) -> u32 {
        self.queues().map_or(0, |q| q.device_type())
    }
    /// Maximum size of each queue; the number of entries is the number of queues.
    fn queue_max_sizes(&self) -> &[u16] {
        self.queues().map_or(&[], |q| q.sizes())
    }
    /// Features offered to the driver (including [`VIRTIO_F_VERSION_1`]).
    fn features(&self) -> u64 {
        self.queues().map_or(0, |q| q.features())
    }
    /// Reads the device-specific configuration space at `offset`.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes the device-specific configuration space at `offset`.
    fn write_config(&mut self, offset: u64, data: &[u8]);
    /// Starts serving the queues.
    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError>;
    /// Stops serving (driver reset): drops the queues and returns to the unactivated state.
    fn reset(&mut self);
    /// One eventfd per queue, written when the driver notifies that queue.
    fn queue_events(&self) -> &[EventFd] {
        self.queues().map_or(&[], |q| q.events())
    }
    /// Whether `activate` succeeded and no `reset` followed.
    fn is_activated(&self) -> bool {
        self.queues().is_some_and(|q| q.is_activated())
    }
    /// The features the driver accepted at the last activation (0 if not activated).
    fn acked_features(&self) -> u64 {
        self.queues().map_or(0, |q| q.acked_features())
    }
    /// The queues the device is serving, as (queue index, state): their ring positions move
    /// on as it works, so a snapshot takes them from here. Empty when not activated.
    fn active_queue_states(&self) -> Vec<(usize, virtio_queue::QueueState)> {
        self.queues().map_or_else(Vec::new, |q| q.states())
    }
    /// The device's counters (requests, bytes, errors, throttling …) by name, for the API.
    fn counter_values(&self) -> Vec<(&'static str, u64)> {
        Vec::new()
    }
    /// Called once after the device was restored from a snapshot (activated on its saved
    /// queues), before the guest runs again: a device whose host side cannot be carried over
    /// tells the driver here (vsock: a transport reset event).
    fn restored(&mut self) {}
    /// Takes back what a snapshot read from the configuration space (`read_config` from
    /// offset 0), before the device is activated on its saved queues: state the device keeps
    /// there (the balloon's target and `actual`) is restored. Returns what is wrong if the
    /// bytes cannot be this device's.
    fn restore_config(&mut self, _config: &[u8]) -> Result<(), String> {
        Ok(())
    }
    /// Releases (`held == false`) or takes back the locks the device holds on host resources
    /// (a disk image's advisory lock), so that a migration destination on this host can open
    /// them while this paused VM still exists.
    fn set_host_locks(&mut self, _held: bool) -> Result<(), String> {
        Ok(())
    }
    /// The device's rate limiters in a fixed order (a slot the config leaves unlimited is
    /// `None`), so that a snapshot carries their budgets.
    fn rate_limiters(&mut self) -> Vec<Option<&mut crate::rate_limiter::RateLimiter>> {
        Vec::new()
    }
}

/// Defines a device's counters: a struct of `u64` fields (each documented) and `values()`,
/// every counter with its name, which is what [`VirtioDevice::counter_values`] reports.
macro_rules! device_counters {
    ($(#[$meta:meta])* pub struct $name:ident { $($(#[$doc:meta])* $field:ident,)* }) => {
        $(#[$meta])*
        #[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
        pub struct $name {
            $($(#[$doc])* pub $field: u64,)*
        }

        impl $name {
            /// Every counter with its name.
            pub fn values(&self) -> Vec<(&'static str, u64)> {
                vec![$((stringify!($field), self.$field)),*]
            }
        }
    };
}
pub(crate) use device_counters;

/// Answers a read of a device's configuration space `space` at `offset`: the bytes there,
/// zeros past its end.
pub(crate) fn read_config_space(space: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Some(src) = usize::try_from(offset).ok().and_then(|o| space.get(o..)) else {
        return;
    };
    let n = src.len().min(data.len());
    data[..n].copy_from_slice(&src[..n]);
}
