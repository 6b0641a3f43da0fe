//! Guest memory statistics sent on the stats queue.
//!
//! A stats buffer is a device-readable array of packed entries: a little-endian 16-bit tag
//! and a little-endian 64-bit value (10 bytes each). Known tags are kept by name; unknown ones
//! (newer drivers add more) are ignored.

use virtio_queue::DescriptorChain;
use vm_memory::Bytes;

use super::BalloonCounters;
use crate::virtio::GuestMemoryMmap;

/// Bytes of one stats entry.
const ENTRY_BYTES: usize = 10;
/// Most stats bytes read from one buffer (far more than the tags the spec defines).
const MAX_STATS_BYTES: usize = 64 * ENTRY_BYTES;

/// Names of the stats tags, indexed by tag (virtio spec 5.5.6.3).
const TAG_NAMES: [&str; 10] = [
    "swap_in",
    "swap_out",
    "major_faults",
    "minor_faults",
    "free_memory",
    "total_memory",
    "available_memory",
    "disk_caches",
    "hugetlb_allocations",
    "hugetlb_failures",
];

/// The latest value the guest reported for each statistic (`None`: never reported).
///
/// Memory amounts are in bytes, the others are event counts.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BalloonStats {
    values: [Option<u64>; TAG_NAMES.len()],
}

impl BalloonStats {
    /// The value reported for `name` (one of [`BalloonStats::names`]).
    pub fn get(&self, name: &str) -> Option<u64> {
        let i = TAG_NAMES.iter().position(|&n| n == name)?;
        self.values[i]
    }

    /// The names of the statistics, in tag order.
    pub fn names() -> &'static [&'static str] {
        &TAG_NAMES
    }

    /// The statistics reported so far, by name, in tag order.
    pub fn values(&self) -> Vec<(&'static str, u64)> {
        TAG_NAMES
            .iter()
            .zip(self.values)
            .filter_map(|(&n, v)| v.map(|v| (n, v)))
            .collect()
    }

    /// Records one entry; returns false if the tag is unknown.
    fn set(&mut self, tag: u16, value: u64) -> bool {
        match self.values.get_mut(usize::from(tag)) {
            Some(slot) => {
                *slot = Some(value);
                true
            }
            None => false,
        }
    }
}

/// Reads the entries of a stats buffer into `stats`; problems are counted in `counters`.
pub(super) fn read_chain(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
    stats: &mut BalloonStats,
    counters: &mut BalloonCounters,
) {
    let mut bytes = Vec::new();
    for desc in chain {
        if !counters.readable(&desc, "stats") {
            continue;
        }
        let room = MAX_STATS_BYTES - bytes.len();
        let n = (desc.len() as usize).min(room);
        let start = bytes.len();
        bytes.resize(start + n, 0);
        if let Err(e) = mem.read_slice(&mut bytes[start..], desc.addr()) {
            counters.malformed(format_args!(
                "cannot read stats buffer at {:#x}: {e}",
                desc.addr().0
            ));
            bytes.truncate(start);
        }
        if bytes.len() == MAX_STATS_BYTES {
            break;
        }
    }
    if !bytes.len().is_multiple_of(ENTRY_BYTES) {
        counters.malformed(format_args!(
            "stats buffer of {} bytes is not a whole number of entries",
            bytes.len()
        ));
    }
    for entry in bytes.chunks_exact(ENTRY_BYTES) {
        let tag = u16::from_le_bytes([entry[0], entry[1]]);
        let mut value = [0u8; 8];
        value.copy_from_slice(&entry[2..]);
        // Unknown tags are newer statistics, not errors.
        stats.set(tag, u64::from_le_bytes(value));
    }
    counters.stats_updates += 1;
}
