//! How a virtio device on PCI interrupts its driver: the ISR bit is recorded (the driver may
//! read it), and the MSI-X vector the driver chose for the queue (or for configuration
//! changes) is raised, unless it chose none.

use std::io;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use super::common::{Vectors, NO_VECTOR};
use crate::pci::msix::Msix;
use crate::virtio::mmio::MmioInterrupt;
use crate::virtio::{InterruptKind, VirtioInterrupt};

/// The interrupt a virtio-pci device is activated with.
pub struct PciInterrupt {
    isr: Arc<MmioInterrupt>,
    msix: Arc<Mutex<Msix>>,
    vectors: Arc<Vectors>,
}

impl PciInterrupt {
    pub(super) fn new(
        isr: Arc<MmioInterrupt>,
        msix: Arc<Mutex<Msix>>,
        vectors: Arc<Vectors>,
    ) -> Self {
        PciInterrupt { isr, msix, vectors }
    }
}

impl VirtioInterrupt for PciInterrupt {
    fn trigger(&self, kind: InterruptKind) -> io::Result<()> {
        self.isr.record(kind);
        let vector = match kind {
            InterruptKind::Queue(q) => self
                .vectors
                .queues
                .get(usize::from(q))
                .map_or(NO_VECTOR, |v| v.load(Ordering::Acquire)),
            InterruptKind::Config => self.vectors.config.load(Ordering::Acquire),
        };
        if vector != NO_VECTOR {
            self.msix
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .trigger(vector);
        }
        Ok(())
    }
}
