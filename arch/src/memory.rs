//! Guest RAM ranges and the e820 / PVH memory map petrel reports.

use crate::layout::*;

/// e820 type: usable RAM.
pub const E820_RAM: u32 = 1;
/// e820 type: reserved.
pub const E820_RESERVED: u32 = 2;

/// One memory map entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct E820Entry {
    /// Start address.
    pub addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// `E820_RAM` or `E820_RESERVED`.
    pub kind: u32,
}

/// The guest RAM ranges for `size` bytes of memory: below the 32-bit MMIO hole, and the rest
/// from 4 GiB.
pub fn ram_ranges(size: u64) -> Vec<(u64, u64)> {
    let low = size.min(MMIO_HOLE_START);
    let mut ranges = vec![(0, low)];
    if size > low {
        ranges.push((HIGH_RAM_START, size - low));
    }
    ranges
}

/// The memory map the guest sees: low RAM up to the EBDA, the reserved legacy area (where the
/// ACPI tables live), RAM from 1 MiB to the hole, and RAM above 4 GiB.
pub fn e820_map(size: u64) -> Vec<E820Entry> {
    let low_end = size.min(MMIO_HOLE_START);
    let mut map = vec![
        E820Entry {
            addr: 0,
            size: EBDA_START.min(low_end),
            kind: E820_RAM,
        },
        E820Entry {
            addr: EBDA_START,
            size: HIMEM_START - EBDA_START,
            kind: E820_RESERVED,
        },
    ];
    if low_end > HIMEM_START {
        map.push(E820Entry {
            addr: HIMEM_START,
            size: low_end - HIMEM_START,
            kind: E820_RAM,
        });
    }
    if size > low_end {
        map.push(E820Entry {
            addr: HIGH_RAM_START,
            size: size - low_end,
            kind: E820_RAM,
        });
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_memory_is_one_low_range() {
        assert_eq!(ram_ranges(128 << 20), vec![(0, 128 << 20)]);
        let map = e820_map(128 << 20);
        let ram: u64 = map
            .iter()
            .filter(|e| e.kind == E820_RAM)
            .map(|e| e.size)
            .sum();
        assert_eq!(ram, (128 << 20) - (HIMEM_START - EBDA_START));
        assert_eq!(map[0].addr, 0);
    }

    #[test]
    fn large_memory_splits_around_the_hole() {
        let size = 4u64 << 30;
        assert_eq!(
            ram_ranges(size),
            vec![
                (0, MMIO_HOLE_START),
                (HIGH_RAM_START, size - MMIO_HOLE_START)
            ]
        );
        let map = e820_map(size);
        let last = map.last().unwrap();
        assert_eq!(last.addr, HIGH_RAM_START);
        assert_eq!(last.size, size - MMIO_HOLE_START);
        for w in map.windows(2) {
            assert!(w[0].addr + w[0].size <= w[1].addr, "overlap in {map:?}");
        }
    }
}
