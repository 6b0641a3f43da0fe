//! Devices petrel emulates: the buses, the legacy x86 devices, and (later) virtio.
//! This crate knows nothing of KVM or MSHV: devices raise interrupts through eventfds and
//! signal lifecycle events (poweroff, reset) through eventfds the VMM watches.
#![deny(missing_docs)]

pub mod bus;
pub use bus::{Bus, BusDevice};
