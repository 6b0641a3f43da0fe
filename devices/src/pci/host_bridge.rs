//! The host bridge at 00:00.0: an identity (class 06 00 00) and nothing else.

use super::config_space::{ConfigSpace, Identity};
use super::PciDevice;

/// PCI vendor ID of Red Hat, whose 0x0008 is the generic PCIe host bridge other VMMs use too.
const VENDOR: u16 = 0x1b36;
const DEVICE: u16 = 0x0008;
/// Class: bridge, host bridge.
const CLASS: u32 = 0x06_0000;

/// The host bridge.
pub struct HostBridge {
    config: ConfigSpace,
}

impl Default for HostBridge {
    fn default() -> Self {
        Self::new()
    }
}

impl HostBridge {
    /// A host bridge.
    pub fn new() -> Self {
        HostBridge {
            config: ConfigSpace::new(Identity {
                vendor: VENDOR,
                device: DEVICE,
                class: CLASS,
                revision: 0,
                subsystem_vendor: 0,
                subsystem: 0,
            }),
        }
    }
}

impl PciDevice for HostBridge {
    fn config_read(&mut self, offset: usize, data: &mut [u8]) {
        self.config.read(offset, data);
    }

    fn config_write(&mut self, offset: usize, data: &[u8]) {
        self.config.write(offset, data);
    }

    fn decoded_bars(&self) -> Vec<(usize, u64, u64)> {
        Vec::new()
    }

    fn bar_read(&mut self, _bar: usize, _offset: u64, data: &mut [u8]) {
        data.fill(0xff);
    }

    fn bar_write(&mut self, _bar: usize, _offset: u64, _data: &[u8]) {}

    fn reset(&mut self) {
        self.config.write(super::config_space::COMMAND, &[0, 0]);
    }
}
