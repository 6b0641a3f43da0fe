//! Where BARs go: the PCI segment's two memory windows (below 4 GiB and above) and an
//! allocator (`vm-allocator`) for each.

use vm_allocator::{AddressAllocator, AllocPolicy};

/// Why a BAR could not be placed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A window that cannot be managed (empty or wrapping).
    #[error("PCI window {base:#x}+{size:#x} is invalid")]
    Window {
        /// Start.
        base: u64,
        /// Size.
        size: u64,
    },
    /// No room left (or a size that cannot be a BAR).
    #[error("no room for a {size:#x}-byte BAR in the {window} PCI window")]
    Full {
        /// The BAR's size.
        size: u64,
        /// "32-bit" or "64-bit".
        window: &'static str,
    },
}

/// The segment's BAR space.
pub struct BarAllocator {
    mmio32: AddressAllocator,
    mmio64: AddressAllocator,
}

impl BarAllocator {
    /// Allocators over `[base32, base32 + size32)` and `[base64, base64 + size64)`.
    pub fn new(window32: (u64, u64), window64: (u64, u64)) -> Result<Self, Error> {
        let make = |(base, size): (u64, u64)| {
            AddressAllocator::new(base, size).map_err(|_| Error::Window { base, size })
        };
        Ok(BarAllocator {
            mmio32: make(window32)?,
            mmio64: make(window64)?,
        })
    }

    /// A naturally aligned range of `size` bytes from the 64-bit window (`high`) or the
    /// 32-bit one.
    pub fn allocate(&mut self, size: u64, high: bool) -> Result<u64, Error> {
        let (alloc, window) = if high {
            (&mut self.mmio64, "64-bit")
        } else {
            (&mut self.mmio32, "32-bit")
        };
        alloc
            .allocate(size, size, AllocPolicy::FirstMatch)
            .map(|r| r.start())
            .map_err(|_| Error::Full { size, window })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_are_aligned_to_their_size_and_do_not_overlap() {
        let mut a = BarAllocator::new((0xc000_0000, 0x10_0000), (1 << 32, 1 << 30)).unwrap();
        let x = a.allocate(0x1000, false).unwrap();
        let y = a.allocate(0x8000, false).unwrap();
        let z = a.allocate(0x8000, true).unwrap();
        assert_eq!(x, 0xc000_0000);
        assert_eq!(y % 0x8000, 0);
        assert!(y >= x + 0x1000);
        assert_eq!(z, 1 << 32);
        assert!(matches!(
            a.allocate(0x10_0000, false),
            Err(Error::Full {
                window: "32-bit",
                ..
            })
        ));
    }
}
