//! The ACPI power button, signalled through the Generic Event Device of petrel's DSDT.
//!
//! The GED (`\_SB_.GED0`, `ACPI0013`) has no registers: it is an interrupt line (the GSI
//! `arch::layout::GED_GSI`) whose `_EVT` method notifies the power button `\_SB_.PWRB`. So a
//! press is one edge on that GSI: a write of 1 to an eventfd that the VMM registers as the
//! irqfd of the GED GSI. The guest's GED driver runs `_EVT`, its button driver sees the
//! notification and the guest shuts down (in the end writing the ACPI sleep register, which
//! `acpi_pm` turns into the poweroff event).
//!
//! The guest must have bound its GED driver (unmasked the IOAPIC pin) for a press to reach it:
//! an edge on a masked pin is dropped, like a button pressed before the OS is up.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// The power button: owns the GED interrupt eventfd.
#[derive(Debug)]
pub struct PowerButton {
    irq: EventFd,
    presses: AtomicU64,
}

impl PowerButton {
    /// A power button with a new non-blocking eventfd; register [`PowerButton::irq_evt`] (or a
    /// [`PowerButton::try_clone_irq_evt`] duplicate) as the irqfd of `layout::GED_GSI`.
    pub fn new() -> io::Result<Self> {
        EventFd::new(EFD_NONBLOCK).map(Self::with_eventfd)
    }

    /// A power button that raises its interrupt by writing `irq`.
    pub fn with_eventfd(irq: EventFd) -> Self {
        Self {
            irq,
            presses: AtomicU64::new(0),
        }
    }

    /// Presses the button: one edge on the GED GSI.
    pub fn press(&self) -> io::Result<()> {
        self.irq.write(1)?;
        self.presses.fetch_add(1, Ordering::Relaxed);
        log::info!("ged: power button pressed");
        Ok(())
    }

    /// How many presses were delivered to the eventfd since creation.
    pub fn presses(&self) -> u64 {
        self.presses.load(Ordering::Relaxed)
    }

    /// The interrupt eventfd (to register as an irqfd).
    pub fn irq_evt(&self) -> &EventFd {
        &self.irq
    }

    /// A second handle on the interrupt eventfd (for an irqfd registration that outlives a
    /// borrow of the button).
    pub fn try_clone_irq_evt(&self) -> io::Result<EventFd> {
        self.irq.try_clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn press_writes_one_edge() {
        let button = PowerButton::new().unwrap();
        let irqfd = button.try_clone_irq_evt().unwrap();
        assert!(irqfd.read().is_err(), "nothing pending before a press");
        button.press().unwrap();
        assert_eq!(irqfd.read().unwrap(), 1);
        button.press().unwrap();
        button.press().unwrap();
        assert_eq!(button.irq_evt().read().unwrap(), 2);
        assert_eq!(button.presses(), 3);
    }

    #[test]
    fn with_eventfd_uses_the_given_eventfd() {
        let evt = EventFd::new(EFD_NONBLOCK).unwrap();
        let button = PowerButton::with_eventfd(evt.try_clone().unwrap());
        button.press().unwrap();
        assert_eq!(evt.read().unwrap(), 1);
    }
}
