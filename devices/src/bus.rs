//! Address buses: a port-I/O bus and an MMIO bus map address ranges to devices.
//!
//! A bus is built before the vCPUs start and is then shared read-only between the vCPU threads;
//! each device sits behind its own mutex so that vCPUs touching different devices never contend.

use std::sync::{Arc, Mutex};

/// A device that answers reads and writes on a bus.
///
/// `offset` is relative to the start of the range the device was inserted at. A read fills all
/// of `data` (devices answer 0xff for what they do not implement); writes a device does not
/// understand are ignored (and may be logged).
pub trait BusDevice: Send {
    /// Reads `data.len()` bytes at `offset`.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// Writes `data` at `offset`.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// Errors from building a bus.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// The new range overlaps one already on the bus.
    #[error("bus range {base:#x}+{len:#x} overlaps an existing device")]
    Overlap {
        /// Start of the rejected range.
        base: u64,
        /// Length of the rejected range.
        len: u64,
    },
    /// A zero-length or wrapping range.
    #[error("invalid bus range {base:#x}+{len:#x}")]
    InvalidRange {
        /// Start of the rejected range.
        base: u64,
        /// Length of the rejected range.
        len: u64,
    },
}

/// Result type of bus operations.
pub type Result<T> = std::result::Result<T, Error>;

/// A shared, lockable bus device.
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

struct Range {
    base: u64,
    len: u64,
    device: SharedDevice,
}

/// A set of non-overlapping address ranges, each served by one device.
#[derive(Default)]
pub struct Bus {
    ranges: Vec<Range>,
}

impl Bus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Maps `device` at `[base, base + len)`.
    pub fn insert(&mut self, device: SharedDevice, base: u64, len: u64) -> Result<()> {
        let end = base.checked_add(len).filter(|_| len > 0);
        let Some(end) = end else {
            return Err(Error::InvalidRange { base, len });
        };
        if self
            .ranges
            .iter()
            .any(|r| base < r.base + r.len && r.base < end)
        {
            return Err(Error::Overlap { base, len });
        }
        let pos = self.ranges.partition_point(|r| r.base < base);
        self.ranges.insert(pos, Range { base, len, device });
        Ok(())
    }

    fn find(&self, addr: u64, size: usize) -> Option<(&Range, u64)> {
        let idx = self
            .ranges
            .partition_point(|r| r.base <= addr)
            .checked_sub(1)?;
        let range = &self.ranges[idx];
        let offset = addr - range.base;
        (offset + size as u64 <= range.len).then_some((range, offset))
    }

    /// Reads from the device at `addr`. Returns false (and leaves `data` alone) if no device
    /// covers the whole access.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        self.access(addr, data.len(), |dev, offset| dev.read(offset, data))
    }

    /// Writes to the device at `addr`. Returns false if no device covers the whole access.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        self.access(addr, data.len(), |dev, offset| dev.write(offset, data))
    }

    /// Runs `f` on the device covering `len` bytes at `addr` with the offset into it; false
    /// if there is none.
    fn access(&self, addr: u64, len: usize, f: impl FnOnce(&mut dyn BusDevice, u64)) -> bool {
        let Some((range, offset)) = self.find(addr, len) else {
            return false;
        };
        // A poisoned lock means a device panicked earlier; keep serving the guest.
        let mut dev = range.device.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut *dev, offset);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Echo(u8);
    impl BusDevice for Echo {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(self.0.wrapping_add(offset as u8));
        }
        fn write(&mut self, _offset: u64, data: &[u8]) {
            self.0 = data[0];
        }
    }

    #[test]
    fn dispatches_by_range_and_rejects_overlaps() {
        let mut bus = Bus::new();
        bus.insert(Arc::new(Mutex::new(Echo(1))), 0x10, 8).unwrap();
        bus.insert(Arc::new(Mutex::new(Echo(10))), 0x20, 8).unwrap();
        assert_eq!(
            bus.insert(Arc::new(Mutex::new(Echo(0))), 0x14, 8),
            Err(Error::Overlap { base: 0x14, len: 8 })
        );
        assert!(bus.insert(Arc::new(Mutex::new(Echo(0))), 0x30, 0).is_err());
        let mut b = [0u8; 1];
        assert!(bus.read(0x12, &mut b));
        assert_eq!(b[0], 3);
        assert!(bus.write(0x20, &[7]));
        assert!(bus.read(0x21, &mut b));
        assert_eq!(b[0], 8);
        assert!(!bus.read(0x18, &mut b));
        let mut w = [0u8; 4];
        assert!(
            !bus.read(0x16, &mut w),
            "access crossing the end of a range"
        );
        assert!(!bus.read(0x0, &mut b));
    }
}
