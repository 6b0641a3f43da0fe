//! Devices petrel emulates: the buses, the legacy x86 devices, and the virtio devices with their
//! virtio-mmio and virtio-pci transports, and PCI segment 0.
//! This crate knows nothing of KVM or MSHV: devices raise interrupts through eventfds and
//! signal lifecycle events (poweroff, reset) through eventfds the VMM watches.
#![deny(missing_docs)]

pub mod acpi_pm;
pub mod bus;
pub mod debug_port;
pub mod ged;
pub mod i8042;
pub mod interrupt;
pub mod mmds;
pub mod pci;
pub mod rate_limiter;
pub mod rtc;
pub mod serial;
pub mod virtio;
pub use bus::{Bus, BusDevice};
pub use interrupt::{EventFdTrigger, Interrupt};
