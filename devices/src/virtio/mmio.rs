//! The virtio-mmio transport, modern register layout (version 2, virtio 1.x spec 4.2.2).
//!
//! One [`MmioTransport`] per device, inserted by the VMM on the MMIO bus with a
//! [`MMIO_WINDOW`]-byte window. It owns the driver-facing registers and the queues while the
//! driver negotiates features and configures them; at DRIVER_OK it validates the ready queues
//! against guest memory and hands them to [`VirtioDevice::activate`]. Writing 0 to Status
//! resets the device.
//!
//! Queue notifications normally never reach this code: the VMM registers each queue's eventfd
//! as an ioeventfd at `base + NOTIFY_REG_OFFSET` with the queue index as a 4-byte datamatch.
//! A QueueNotify write that does reach the transport writes the same eventfd, so both paths
//! work; it is counted ([`MmioTransport::slow_notifications`]) so that a broken fast path shows.
//!
//! The guest is not trusted: accesses of the wrong width, writes in the wrong state, unknown
//! offsets and out-of-range queues are ignored with a rate-limited warning; a queue set-up that
//! cannot work (outside guest memory, or with overlapping areas, see `rings`) makes DRIVER_OK
//! fail with DEVICE_NEEDS_RESET. Nothing here panics.

mod interrupt;
mod persist;
mod rings;
#[cfg(test)]
mod tests;

use std::cell::Cell;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

use log::warn;
use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FAILED, VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET,
};
use virtio_bindings::virtio_mmio::*;
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::EventFd;

pub use interrupt::{MmioInterrupt, INT_CONFIG, INT_USED_RING};
pub use persist::RestoreError;

use crate::bus::BusDevice;
use crate::virtio::{
    ActivateContext, GuestMemoryMmap, InterruptKind, VirtioDevice, VirtioInterrupt,
    VIRTIO_F_VERSION_1,
};

/// Size of each device's MMIO window.
pub const MMIO_WINDOW: u64 = 0x1000;
/// Offset of QueueNotify: the VMM registers queue `i`'s eventfd as an ioeventfd at
/// `base + NOTIFY_REG_OFFSET` (4 bytes) with datamatch `i`.
pub const NOTIFY_REG_OFFSET: u64 = VIRTIO_MMIO_QUEUE_NOTIFY as u64;
/// Offset of the device-specific configuration space.
pub const CONFIG_SPACE_OFFSET: u64 = VIRTIO_MMIO_CONFIG as u64;
/// MagicValue: "virt" in little-endian.
pub const MAGIC_VALUE: u32 = u32::from_le_bytes(*b"virt");
/// Version: 2 (the modern, virtio 1.x layout); legacy version 1 is not offered.
pub const MMIO_VERSION: u32 = 2;
/// VendorID: "PTRL" in little-endian.
pub const VENDOR_ID: u32 = u32::from_le_bytes(*b"PTRL");

/// Device status bits (virtio spec 2.1).
pub mod status {
    use super::*;
    /// The guest found the device.
    pub const ACKNOWLEDGE: u32 = VIRTIO_CONFIG_S_ACKNOWLEDGE;
    /// The guest knows how to drive the device.
    pub const DRIVER: u32 = VIRTIO_CONFIG_S_DRIVER;
    /// The driver is set up and ready to drive the device.
    pub const DRIVER_OK: u32 = VIRTIO_CONFIG_S_DRIVER_OK;
    /// Feature negotiation is complete.
    pub const FEATURES_OK: u32 = VIRTIO_CONFIG_S_FEATURES_OK;
    /// The device hit an error it cannot recover from without a reset.
    pub const DEVICE_NEEDS_RESET: u32 = VIRTIO_CONFIG_S_NEEDS_RESET;
    /// The driver gave up on the device.
    pub const FAILED: u32 = VIRTIO_CONFIG_S_FAILED;
}
use status::*;

/// QueueReset (only with VIRTIO_F_RING_RESET, which petrel does not offer).
const QUEUE_RESET: u32 = 0xc0;

/// Errors from building a transport (device bugs, never guest actions).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The device reports a queue maximum size that is 0, not a power of two, or > 32768.
    #[error("queue {index} has invalid maximum size {size}")]
    InvalidQueueMaxSize {
        /// Queue index.
        index: usize,
        /// The reported maximum size.
        size: u16,
    },
    /// The device has a different number of queue eventfds than queues.
    #[error("device has {queues} queues but {events} queue eventfds")]
    QueueEventCount {
        /// Number of queues.
        queues: usize,
        /// Number of eventfds.
        events: usize,
    },
    /// Duplicating a queue eventfd failed.
    #[error("cannot duplicate a queue eventfd")]
    CloneEventFd(#[source] std::io::Error),
}

/// Result type of transport construction.
pub type Result<T> = std::result::Result<T, Error>;

/// The driver's side of feature negotiation.
#[derive(Debug, Default)]
struct Features {
    device_sel: u32,
    driver_sel: u32,
    acked: u64,
    /// The driver set a bit in a features word beyond the first 64 bits (none is offered).
    acked_unknown: bool,
}

/// The status values a driver steps through, in order (spec 3.1.1).
const INIT_SEQUENCE: [u32; 5] = [
    0,
    ACKNOWLEDGE,
    ACKNOWLEDGE | DRIVER,
    ACKNOWLEDGE | DRIVER | FEATURES_OK,
    ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK,
];

/// A virtio device behind a virtio-mmio register window.
pub struct MmioTransport {
    mem: GuestMemoryMmap,
    device: Arc<Mutex<dyn VirtioDevice>>,
    device_type: u32,
    device_features: u64,
    queue_events: Vec<EventFd>,
    queues: Vec<Queue>,
    queue_sel: u32,
    /// A queue configuration write was rejected; DRIVER_OK will fail.
    queue_config_error: bool,
    interrupt: Arc<MmioInterrupt>,
    /// What the device raises (the same interrupt for virtio-mmio; virtio-pci's MSI-X).
    notifier: Arc<dyn VirtioInterrupt>,
    status: u32,
    features: Features,
    invalid_accesses: Cell<u64>,
    /// QueueNotify writes that reached the transport instead of the ioeventfd.
    slow_notifications: u64,
}

impl MmioTransport {
    /// A transport for `device`, raising its interrupt by writing `irq` (the VMM registers a
    /// clone as an irqfd). `mem` must stay valid for the life of the transport.
    pub fn new(
        mem: GuestMemoryMmap,
        device: Arc<Mutex<dyn VirtioDevice>>,
        irq: EventFd,
    ) -> Result<Self> {
        let interrupt = Arc::new(MmioInterrupt::new(irq));
        Self::with_interrupt(mem, device, interrupt.clone(), interrupt)
    }

    /// The same register state machine with the interrupt status kept in `interrupt` and the
    /// device raising `notifier` (the virtio-pci transport drives this one through its
    /// common configuration and delivers through MSI-X).
    pub fn with_interrupt(
        mem: GuestMemoryMmap,
        device: Arc<Mutex<dyn VirtioDevice>>,
        interrupt: Arc<MmioInterrupt>,
        notifier: Arc<dyn VirtioInterrupt>,
    ) -> Result<Self> {
        let (device_type, device_features, queues, queue_events) = {
            let dev = device.lock().unwrap_or_else(|e| e.into_inner());
            let sizes = dev.queue_max_sizes();
            let events = dev.queue_events();
            if sizes.len() != events.len() {
                return Err(Error::QueueEventCount {
                    queues: sizes.len(),
                    events: events.len(),
                });
            }
            let queues = sizes
                .iter()
                .enumerate()
                .map(|(index, &size)| {
                    Queue::new(size).map_err(|_| Error::InvalidQueueMaxSize { index, size })
                })
                .collect::<Result<Vec<_>>>()?;
            let events = events
                .iter()
                .map(|e| e.try_clone().map_err(Error::CloneEventFd))
                .collect::<Result<Vec<_>>>()?;
            (dev.device_type(), dev.features(), queues, events)
        };
        Ok(Self {
            mem,
            device,
            device_type,
            device_features,
            queue_events,
            queues,
            queue_sel: 0,
            queue_config_error: false,
            interrupt,
            notifier,
            status: 0,
            features: Features::default(),
            invalid_accesses: Cell::new(0),
            slow_notifications: 0,
        })
    }

    /// The device behind this transport.
    pub fn device(&self) -> &Arc<Mutex<dyn VirtioDevice>> {
        &self.device
    }

    /// The virtio device type.
    pub fn device_type(&self) -> u32 {
        self.device_type
    }

    /// Duplicates of the device's queue eventfds, in queue order, for the VMM to register as
    /// ioeventfds at `base + NOTIFY_REG_OFFSET` with datamatch = queue index.
    pub fn queue_events(&self) -> &[EventFd] {
        &self.queue_events
    }

    /// The device status register.
    pub fn status(&self) -> u32 {
        self.status
    }

    /// The interrupt shared with the device.
    pub fn interrupt(&self) -> &Arc<MmioInterrupt> {
        &self.interrupt
    }

    /// How many invalid guest accesses were ignored so far.
    pub fn invalid_accesses(&self) -> u64 {
        self.invalid_accesses.get()
    }

    /// How many queue notifications reached the transport (a vCPU exit each) instead of
    /// signalling the queue's ioeventfd in the hypervisor. 0 while the fast path works.
    pub fn slow_notifications(&self) -> u64 {
        self.slow_notifications
    }

    fn lock_device(&self) -> MutexGuard<'_, dyn VirtioDevice + 'static> {
        // A poisoned lock means the device panicked earlier; keep serving the guest.
        self.device.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts an invalid access and logs it, rate-limited (the 1st, 2nd, 4th, 8th, ... one).
    fn invalid(&self, what: fmt::Arguments<'_>) {
        let count = self.invalid_accesses.get() + 1;
        self.invalid_accesses.set(count);
        if count.is_power_of_two() {
            warn!(
                "virtio-mmio (device type {}): {what} ({count} invalid accesses so far)",
                self.device_type
            );
        }
    }

    /// The selected queue, if the driver may configure it now.
    /// `while_ready`: whether the register may be written while the queue is ready.
    fn configurable_queue(&mut self, what: &str, while_ready: bool) -> Option<&mut Queue> {
        let sel = self.queue_sel;
        if self.status & (FEATURES_OK | DRIVER_OK | FAILED | DEVICE_NEEDS_RESET) != FEATURES_OK {
            self.invalid(format_args!(
                "{what} write in status {:#x} ignored",
                self.status
            ));
            return None;
        }
        match self.queues.get(sel as usize) {
            None => {
                self.invalid(format_args!("{what} write for absent queue {sel} ignored"));
                None
            }
            Some(q) if q.ready() && !while_ready => {
                self.invalid(format_args!("{what} write for ready queue {sel} ignored"));
                None
            }
            Some(_) => self.queues.get_mut(sel as usize),
        }
    }

    fn selected_queue(&self) -> Option<&Queue> {
        self.queues.get(self.queue_sel as usize)
    }

    /// `offset` is below the config space.
    fn read_register(&self, offset: u32) -> u32 {
        match offset {
            VIRTIO_MMIO_MAGIC_VALUE => MAGIC_VALUE,
            VIRTIO_MMIO_VERSION => MMIO_VERSION,
            VIRTIO_MMIO_DEVICE_ID => self.device_type,
            VIRTIO_MMIO_VENDOR_ID => VENDOR_ID,
            VIRTIO_MMIO_DEVICE_FEATURES => match self.features.device_sel {
                0 => self.device_features as u32,
                1 => (self.device_features >> 32) as u32,
                _ => 0,
            },
            VIRTIO_MMIO_QUEUE_NUM_MAX => {
                self.selected_queue().map_or(0, |q| u32::from(q.max_size()))
            }
            VIRTIO_MMIO_QUEUE_NUM => self.selected_queue().map_or(0, |q| u32::from(q.size())),
            VIRTIO_MMIO_QUEUE_READY => self.selected_queue().map_or(0, |q| u32::from(q.ready())),
            VIRTIO_MMIO_QUEUE_DESC_LOW => self.queue_addr(|q| q.desc_table(), 0),
            VIRTIO_MMIO_QUEUE_DESC_HIGH => self.queue_addr(|q| q.desc_table(), 32),
            VIRTIO_MMIO_QUEUE_AVAIL_LOW => self.queue_addr(|q| q.avail_ring(), 0),
            VIRTIO_MMIO_QUEUE_AVAIL_HIGH => self.queue_addr(|q| q.avail_ring(), 32),
            VIRTIO_MMIO_QUEUE_USED_LOW => self.queue_addr(|q| q.used_ring(), 0),
            VIRTIO_MMIO_QUEUE_USED_HIGH => self.queue_addr(|q| q.used_ring(), 32),
            VIRTIO_MMIO_INTERRUPT_STATUS => self.interrupt.status(),
            VIRTIO_MMIO_STATUS => self.status,
            // No shared memory regions: their length and base read as all ones (spec 4.2.2).
            VIRTIO_MMIO_SHM_LEN_LOW..=VIRTIO_MMIO_SHM_BASE_HIGH => u32::MAX,
            QUEUE_RESET => 0,
            VIRTIO_MMIO_CONFIG_GENERATION => self.interrupt.config_generation(),
            _ => {
                self.invalid(format_args!("read of unknown register {offset:#x}"));
                0
            }
        }
    }

    fn queue_addr(&self, get: impl Fn(&Queue) -> u64, shift: u32) -> u32 {
        self.selected_queue()
            .map_or(0, |q| (get(q) >> shift) as u32)
    }

    /// `offset` is below the config space.
    fn write_register(&mut self, offset: u32, value: u32) {
        match offset {
            VIRTIO_MMIO_DEVICE_FEATURES_SEL => self.features.device_sel = value,
            VIRTIO_MMIO_DRIVER_FEATURES => self.write_driver_features(value),
            VIRTIO_MMIO_DRIVER_FEATURES_SEL => self.features.driver_sel = value,
            VIRTIO_MMIO_QUEUE_SEL => self.queue_sel = value,
            VIRTIO_MMIO_QUEUE_NUM => self.write_queue_num(value),
            VIRTIO_MMIO_QUEUE_READY => self.write_queue_ready(value),
            VIRTIO_MMIO_QUEUE_NOTIFY => self.notify(value),
            VIRTIO_MMIO_INTERRUPT_ACK => self.interrupt.ack(value),
            VIRTIO_MMIO_STATUS => self.write_status(value),
            VIRTIO_MMIO_QUEUE_DESC_LOW => self.write_queue_addr(Area::Desc, false, value),
            VIRTIO_MMIO_QUEUE_DESC_HIGH => self.write_queue_addr(Area::Desc, true, value),
            VIRTIO_MMIO_QUEUE_AVAIL_LOW => self.write_queue_addr(Area::Driver, false, value),
            VIRTIO_MMIO_QUEUE_AVAIL_HIGH => self.write_queue_addr(Area::Driver, true, value),
            VIRTIO_MMIO_QUEUE_USED_LOW => self.write_queue_addr(Area::Device, false, value),
            VIRTIO_MMIO_QUEUE_USED_HIGH => self.write_queue_addr(Area::Device, true, value),
            VIRTIO_MMIO_SHM_SEL => {}
            _ => self.invalid(format_args!(
                "write of {value:#x} to read-only or unknown register {offset:#x} ignored"
            )),
        }
    }

    fn write_driver_features(&mut self, value: u32) {
        if self.status != ACKNOWLEDGE | DRIVER {
            self.invalid(format_args!(
                "DriverFeatures write in status {:#x} ignored",
                self.status
            ));
            return;
        }
        match self.features.driver_sel {
            0 => self.features.acked = (self.features.acked & !0xffff_ffff) | u64::from(value),
            1 => {
                self.features.acked = (self.features.acked & 0xffff_ffff) | (u64::from(value) << 32)
            }
            _ => self.features.acked_unknown |= value != 0,
        }
    }

    fn write_queue_num(&mut self, value: u32) {
        let Some(q) = self.configurable_queue("QueueNum", false) else {
            return;
        };
        let ok = u16::try_from(value).is_ok_and(|n| q.try_set_size(n).is_ok());
        if !ok {
            self.queue_config_error = true;
            self.invalid(format_args!("invalid QueueNum {value}"));
        }
    }

    fn write_queue_ready(&mut self, value: u32) {
        // Linux disables each queue after resetting the device: a harmless no-op.
        if value == 0 && self.selected_queue().is_some_and(|q| !q.ready()) {
            return;
        }
        let Some(q) = self.configurable_queue("QueueReady", true) else {
            return;
        };
        match value {
            0 | 1 => q.set_ready(value == 1),
            _ => self.invalid(format_args!("invalid QueueReady {value}")),
        }
    }

    fn write_queue_addr(&mut self, area: Area, high: bool, value: u32) {
        let Some(q) = self.configurable_queue(area.name(), false) else {
            return;
        };
        let current = match area {
            Area::Desc => q.desc_table(),
            Area::Driver => q.avail_ring(),
            Area::Device => q.used_ring(),
        };
        let addr = GuestAddress(if high {
            (current & 0xffff_ffff) | (u64::from(value) << 32)
        } else {
            (current & !0xffff_ffff) | u64::from(value)
        });
        let res = match area {
            Area::Desc => q.try_set_desc_table_address(addr),
            Area::Driver => q.try_set_avail_ring_address(addr),
            Area::Device => q.try_set_used_ring_address(addr),
        };
        if res.is_err() {
            self.queue_config_error = true;
            self.invalid(format_args!(
                "misaligned {} address {:#x}",
                area.name(),
                addr.0
            ));
        }
    }

    fn notify(&mut self, value: u32) {
        if self.status & (DRIVER_OK | DEVICE_NEEDS_RESET | FAILED) != DRIVER_OK {
            self.invalid(format_args!(
                "QueueNotify in status {:#x} ignored",
                self.status
            ));
            return;
        }
        match self.queue_events.get(value as usize) {
            Some(evt) => {
                self.slow_notifications += 1;
                if let Err(e) = evt.write(1) {
                    warn!("virtio-mmio: cannot signal queue {value}: {e}");
                }
            }
            None => self.invalid(format_args!("QueueNotify for absent queue {value}")),
        }
    }

    fn write_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        // DEVICE_NEEDS_RESET belongs to the device: keep ours whatever the driver writes back.
        let value = (value & !DEVICE_NEEDS_RESET) | (self.status & DEVICE_NEEDS_RESET);
        let old = self.status;
        if value == old {
            return;
        }
        if value & old != old {
            self.invalid(format_args!(
                "Status {value:#x} clears bits of {old:#x}; ignored"
            ));
            return;
        }
        if value == old | FAILED {
            warn!(
                "virtio-mmio (device type {}): driver marked the device FAILED",
                self.device_type
            );
            self.status = value;
            return;
        }
        let from = INIT_SEQUENCE.iter().position(|&s| s == old);
        let to = INIT_SEQUENCE.iter().position(|&s| s == value);
        // One step at a time, except that ACKNOWLEDGE and DRIVER may be set together.
        let allowed = matches!((from, to), (Some(f), Some(t)) if t == f + 1 || (f == 0 && t == 2));
        if !allowed {
            self.invalid(format_args!(
                "Status change {old:#x} -> {value:#x} out of order; ignored"
            ));
            return;
        }
        if value & !old == FEATURES_OK {
            if !self.features_acceptable() {
                // FEATURES_OK stays clear: the driver reads Status back and gives up.
                self.invalid(format_args!(
                    "driver features {:#x} not acceptable (offered {:#x})",
                    self.features.acked, self.device_features
                ));
                return;
            }
        } else if value & !old == DRIVER_OK && !self.activate() {
            self.status = value | DEVICE_NEEDS_RESET;
            if let Err(e) = self.notifier.trigger(InterruptKind::Config) {
                warn!("virtio-mmio: cannot raise interrupt: {e}");
            }
            return;
        }
        self.status = value;
    }

    fn features_acceptable(&self) -> bool {
        let f = &self.features;
        !f.acked_unknown
            && f.acked & !self.device_features == 0
            && f.acked & VIRTIO_F_VERSION_1 != 0
    }

    /// Validates the queues and activates the device; false if it cannot work.
    fn activate(&mut self) -> bool {
        if self.queue_config_error {
            self.invalid(format_args!(
                "DRIVER_OK after a rejected queue configuration"
            ));
            return false;
        }
        if let Some(i) = self
            .queues
            .iter()
            .position(|q| q.ready() && !q.is_valid(&self.mem))
        {
            self.invalid(format_args!("queue {i} is not within guest memory"));
            return false;
        }
        let overlap = self.queues.iter().enumerate().find_map(|(i, q)| {
            q.ready()
                .then(|| rings::overlapping_areas(q))
                .flatten()
                .map(|areas| (i, areas))
        });
        if let Some((i, (a, b))) = overlap {
            self.invalid(format_args!("queue {i}: the {a} overlaps the {b}"));
            return false;
        }
        let event_idx = self.features.acked & (1 << VIRTIO_RING_F_EVENT_IDX) != 0;
        let queues = self.queues.iter().map(|q| {
            let mut state = q.state();
            state.event_idx_enabled = event_idx;
            Queue::try_from(state)
        });
        let queues = match queues.collect::<std::result::Result<Vec<_>, _>>() {
            Ok(q) => q,
            Err(e) => {
                self.invalid(format_args!("queue state rejected: {e}"));
                return false;
            }
        };
        let interrupt = self.notifier.clone();
        let ctx = ActivateContext {
            mem: self.mem.clone(),
            queues,
            acked_features: self.features.acked,
            interrupt,
        };
        let res = self.lock_device().activate(ctx);
        match res {
            Ok(()) => true,
            Err(e) => {
                warn!(
                    "virtio-mmio (device type {}): activation failed: {e}",
                    self.device_type
                );
                false
            }
        }
    }

    /// Device reset (Status = 0): back to the state after construction.
    fn reset(&mut self) {
        self.lock_device().reset();
        self.status = 0;
        self.features = Features::default();
        self.queue_sel = 0;
        self.queue_config_error = false;
        for q in &mut self.queues {
            q.reset();
        }
        self.interrupt.clear();
    }

    fn config_access_ok(&mut self, offset: u64, len: usize, write: bool) -> bool {
        let ok = matches!(len, 1 | 2 | 4 | 8) && offset + len as u64 <= MMIO_WINDOW;
        if !ok {
            let dir = if write { "write" } else { "read" };
            self.invalid(format_args!(
                "config {dir} of {len} bytes at {offset:#x} ignored"
            ));
        }
        ok
    }
}

/// The three areas of a split queue, named as in the MMIO registers.
#[derive(Clone, Copy)]
enum Area {
    Desc,
    Driver,
    Device,
}

impl Area {
    fn name(self) -> &'static str {
        match self {
            Area::Desc => "QueueDesc",
            Area::Driver => "QueueDriver",
            Area::Device => "QueueDevice",
        }
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if offset >= CONFIG_SPACE_OFFSET {
            if self.config_access_ok(offset, data.len(), false) {
                self.lock_device()
                    .read_config(offset - CONFIG_SPACE_OFFSET, data);
            }
            return;
        }
        if data.len() != 4 || offset & 3 != 0 {
            self.invalid(format_args!(
                "{}-byte register read at {offset:#x} ignored",
                data.len()
            ));
            return;
        }
        let value = self.read_register(offset as u32);
        data.copy_from_slice(&value.to_le_bytes());
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG_SPACE_OFFSET {
            if self.config_access_ok(offset, data.len(), true) {
                self.lock_device()
                    .write_config(offset - CONFIG_SPACE_OFFSET, data);
            }
            return;
        }
        let value = match <[u8; 4]>::try_from(data) {
            Ok(bytes) if offset & 3 == 0 => u32::from_le_bytes(bytes),
            _ => {
                self.invalid(format_args!(
                    "{}-byte register write at {offset:#x} ignored",
                    data.len()
                ));
                return;
            }
        };
        self.write_register(offset as u32, value);
    }
}
