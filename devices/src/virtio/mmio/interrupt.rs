//! Interrupts of a virtio-mmio device: the InterruptStatus bits and the irqfd.
//!
//! The device (on the event loop) sets a bit and writes the irqfd; the driver (through the
//! transport, on a vCPU thread) reads InterruptStatus and clears bits with InterruptACK. Both
//! sides share one [`MmioInterrupt`], so no lock is taken on either path.

use std::io;
use std::sync::atomic::{AtomicU32, Ordering};

use virtio_bindings::virtio_mmio::{VIRTIO_MMIO_INT_CONFIG, VIRTIO_MMIO_INT_VRING};
use vmm_sys_util::eventfd::EventFd;

use crate::virtio::{InterruptKind, VirtioInterrupt};

/// InterruptStatus bit: a used ring has new entries.
pub const INT_USED_RING: u32 = VIRTIO_MMIO_INT_VRING;
/// InterruptStatus bit: the configuration space changed.
pub const INT_CONFIG: u32 = VIRTIO_MMIO_INT_CONFIG;

/// The interrupt of one virtio-mmio device.
#[derive(Debug)]
pub struct MmioInterrupt {
    status: AtomicU32,
    config_generation: AtomicU32,
    /// The irqfd; `None` when another transport delivers the interrupt (virtio-pci keeps
    /// only the status bits here, its ISR, and raises an MSI-X vector itself).
    irq: Option<EventFd>,
}

impl MmioInterrupt {
    /// An interrupt that writes `irq` (registered by the VMM as an irqfd for the device's GSI).
    pub fn new(irq: EventFd) -> Self {
        Self {
            status: AtomicU32::new(0),
            config_generation: AtomicU32::new(0),
            irq: Some(irq),
        }
    }

    /// Status bits and configuration generation only: [`MmioInterrupt::record`] keeps them,
    /// the caller delivers the interrupt.
    pub fn status_only() -> Self {
        Self {
            status: AtomicU32::new(0),
            config_generation: AtomicU32::new(0),
            irq: None,
        }
    }

    /// Sets the status bit of `kind` (and moves the configuration generation on a
    /// configuration change) without raising anything.
    pub fn record(&self, kind: InterruptKind) {
        let bit = match kind {
            InterruptKind::Queue(_) => INT_USED_RING,
            InterruptKind::Config => {
                self.config_generation.fetch_add(1, Ordering::AcqRel);
                INT_CONFIG
            }
        };
        self.status.fetch_or(bit, Ordering::AcqRel);
    }

    /// The InterruptStatus register.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::Acquire)
    }

    /// InterruptACK: clears `bits` in InterruptStatus.
    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::AcqRel);
    }

    /// Clears InterruptStatus (device reset).
    pub fn clear(&self) {
        self.status.store(0, Ordering::Release);
    }

    /// Sets the pending bits to `bits` (restoring a snapshot).
    pub fn set_status(&self, bits: u32) {
        self.status.store(bits, Ordering::Release);
    }

    /// The ConfigGeneration register: changes on every configuration-change interrupt.
    pub fn config_generation(&self) -> u32 {
        self.config_generation.load(Ordering::Acquire)
    }

    /// The irqfd this interrupt writes, if it has one.
    pub fn eventfd(&self) -> Option<&EventFd> {
        self.irq.as_ref()
    }
}

impl VirtioInterrupt for MmioInterrupt {
    fn trigger(&self, kind: InterruptKind) -> io::Result<()> {
        self.record(kind);
        match &self.irq {
            Some(irq) => irq.write(1),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    #[test]
    fn trigger_sets_bits_and_writes_the_irqfd() {
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        let int = MmioInterrupt::new(irq.try_clone().unwrap());
        int.trigger(InterruptKind::Queue(3)).unwrap();
        assert_eq!(int.status(), INT_USED_RING);
        assert_eq!(int.config_generation(), 0);
        int.trigger(InterruptKind::Config).unwrap();
        assert_eq!(int.status(), INT_USED_RING | INT_CONFIG);
        assert_eq!(int.config_generation(), 1);
        assert_eq!(irq.read().unwrap(), 2);
        int.ack(INT_USED_RING);
        assert_eq!(int.status(), INT_CONFIG);
        int.clear();
        assert_eq!(int.status(), 0);
    }
}
