//! PCI segment 0: a host bridge at 00:00.0 and the devices on bus 0, reached through ECAM
//! (an MMIO window the ACPI MCFG names) and the legacy 0xCF8/0xCFC ports; BARs placed by a
//! real allocator in the windows the DSDT gives the root bus, followed when the guest moves
//! them.
//!
//! - `config_space` — one function's configuration registers, BAR sizing, capability list.
//! - `segment` — the bus: which device is in which slot, config accesses, BAR dispatch and
//!   the ioeventfds that follow BAR moves; `access` — ECAM, the 0xCF8 ports, the BAR windows
//!   as bus devices.
//! - `msix` — MSI-X table, pending bits and capability.
//! - `allocator` — BAR placement (`vm-allocator`); `host_bridge` — 00:00.0.
//! - `wiring` — what a device needs from the hypervisor ([`PciWiring`], implemented by the VMM).
//!
//! Functions are single-function devices on bus 0; there is no INTx (interrupt pin 0): devices
//! interrupt through MSI-X only, so the DSDT needs no `_PRT`.

mod access;
pub mod allocator;
pub mod config_space;
mod host_bridge;
pub mod msix;
mod segment;
pub mod wiring;

use vmm_sys_util::eventfd::EventFd;

pub use access::{ConfigPorts, Ecam, MmioWindow, CONFIG_PORTS_LEN};
pub use allocator::BarAllocator;
pub use config_space::{BarKind, ConfigSpace, Identity};
pub use host_bridge::HostBridge;
pub use segment::{PciSegment, SLOTS};
pub use wiring::{IoEventMatch, MsiMessage, NoWiring, PciWiring};

/// Bytes of ECAM per bus (32 devices × 8 functions × 4 KiB).
pub const ECAM_BUS_SIZE: u64 = 1 << 20;

/// An ioeventfd a device wants at a place in one of its BARs.
pub struct BarIoEvent {
    /// The BAR.
    pub bar: usize,
    /// Offset in the BAR.
    pub offset: u64,
    /// Which writes signal it.
    pub datamatch: IoEventMatch,
    /// The eventfd (a duplicate the segment keeps).
    pub evt: EventFd,
}

/// A PCI function on the segment.
pub trait PciDevice: Send {
    /// Reads configuration space (1, 2 or 4 bytes within one register).
    fn config_read(&mut self, offset: usize, data: &mut [u8]);
    /// Writes configuration space.
    fn config_write(&mut self, offset: usize, data: &[u8]);
    /// The BARs the function decodes now: (index, address, size).
    fn decoded_bars(&self) -> Vec<(usize, u64, u64)>;
    /// Reads `data.len()` bytes at `offset` in BAR `bar`.
    fn bar_read(&mut self, bar: usize, offset: u64, data: &mut [u8]);
    /// Writes `data` at `offset` in BAR `bar`.
    fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8]);
    /// The ioeventfds the function wants in its BARs (registered while the BAR is decoded).
    fn ioevents(&self) -> Vec<BarIoEvent> {
        Vec::new()
    }
    /// Function reset (a guest reboot): configuration space as first built.
    fn reset(&mut self);
}
