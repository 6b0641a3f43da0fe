//! Interrupt delivery from devices to the guest.
//!
//! A device raises an interrupt by writing to an eventfd; the VMM registers that eventfd with
//! the hypervisor as an irqfd for the device's GSI, so no code here knows about KVM or MSHV.

use std::io;

use vmm_sys_util::eventfd::EventFd;

/// Something a device calls to raise its interrupt line (edge: one call, one interrupt).
pub trait Interrupt: Send + Sync {
    /// Raises the interrupt.
    fn trigger(&self) -> io::Result<()>;
}

/// An interrupt raised by writing 1 to an eventfd the VMM registered as an irqfd.
#[derive(Debug)]
pub struct EventFdTrigger(EventFd);

impl EventFdTrigger {
    /// Wraps `evt`; the VMM keeps a clone (`EventFd::try_clone`) to register as the irqfd.
    pub fn new(evt: EventFd) -> Self {
        Self(evt)
    }

    /// The underlying eventfd.
    pub fn eventfd(&self) -> &EventFd {
        &self.0
    }

    /// A second handle on the same eventfd.
    pub fn try_clone(&self) -> io::Result<Self> {
        self.0.try_clone().map(Self)
    }
}

impl Interrupt for EventFdTrigger {
    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

impl vm_superio::Trigger for EventFdTrigger {
    type E = io::Error;

    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    #[test]
    fn trigger_writes_one_to_the_eventfd() {
        let evt = EventFd::new(EFD_NONBLOCK).unwrap();
        let trigger = EventFdTrigger::new(evt.try_clone().unwrap());
        Interrupt::trigger(&trigger).unwrap();
        vm_superio::Trigger::trigger(&trigger).unwrap();
        assert_eq!(evt.read().unwrap(), 2);
        assert!(evt.read().is_err(), "counter is reset by the read");
        let clone = trigger.try_clone().unwrap();
        Interrupt::trigger(&clone).unwrap();
        assert_eq!(trigger.eventfd().read().unwrap(), 1);
    }
}
