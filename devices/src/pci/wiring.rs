//! What a PCI device needs from the hypervisor while the guest runs, without knowing which
//! hypervisor it is: ioeventfds that follow a BAR the guest moves, and MSI routes that follow
//! the MSI-X table. The VMM implements [`PciWiring`] over its hypervisor VM.

use vmm_sys_util::eventfd::EventFd;

/// Which writes at an ioeventfd's address signal it; the width is part of the match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoEventMatch {
    /// 2-byte writes of this value (a virtio-pci queue notification: the queue index).
    U16(u16),
    /// 4-byte writes of this value.
    U32(u32),
}

/// A message-signalled interrupt: address and data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsiMessage {
    /// Message address.
    pub address: u64,
    /// Message data.
    pub data: u32,
}

/// The hypervisor side of PCI devices (implemented by the VMM).
pub trait PciWiring: Send + Sync {
    /// Signals `evt` instead of exiting when the guest writes a matching value at `addr`.
    fn add_ioevent(&self, evt: &EventFd, addr: u64, datamatch: IoEventMatch) -> Result<(), String>;
    /// Undoes [`PciWiring::add_ioevent`].
    fn remove_ioevent(
        &self,
        evt: &EventFd,
        addr: u64,
        datamatch: IoEventMatch,
    ) -> Result<(), String>;
    /// Routes `gsi` (an irqfd the device writes) to `msg`.
    fn set_msi_route(&self, gsi: u32, msg: MsiMessage) -> Result<(), String>;
}

/// Wiring that does nothing: for a segment without a hypervisor (tests, before boot).
#[derive(Debug, Default)]
pub struct NoWiring;

impl PciWiring for NoWiring {
    fn add_ioevent(&self, _: &EventFd, _: u64, _: IoEventMatch) -> Result<(), String> {
        Ok(())
    }
    fn remove_ioevent(&self, _: &EventFd, _: u64, _: IoEventMatch) -> Result<(), String> {
        Ok(())
    }
    fn set_msi_route(&self, _: u32, _: MsiMessage) -> Result<(), String> {
        Ok(())
    }
}
