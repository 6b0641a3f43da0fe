//! Where a split queue's three areas lie in guest memory, and whether they overlap.
//!
//! Sizes as in the virtio 1.x spec (2.7, "Virtqueue part sizes"): the descriptor table is
//! 16 × size bytes, the driver area (available ring) 6 + 2 × size, the device area (used
//! ring) 6 + 8 × size, including the event-index fields whether or not they are negotiated.
//! Overlapping areas break the spec and let a guest turn the device's own writes into new
//! work (a used ring over the available ring makes every returned chain a new available one),
//! so the transport refuses them at DRIVER_OK.

use virtio_queue::{Queue, QueueT};

/// The three areas of a queue of `size` entries at `desc`, `avail` and `used`, as
/// (name, start, length in bytes).
fn areas(size: u16, desc: u64, avail: u64, used: u64) -> [(&'static str, u64, u64); 3] {
    let size = u64::from(size);
    [
        ("descriptor table", desc, 16 * size),
        ("available ring", avail, 6 + 2 * size),
        ("used ring", used, 6 + 8 * size),
    ]
}

/// Whether `[a, a + a_len)` and `[b, b + b_len)` share a byte (computed without overflow at
/// the top of the address space).
fn overlap(a: u64, a_len: u64, b: u64, b_len: u64) -> bool {
    let (a, b) = (u128::from(a), u128::from(b));
    a < b + u128::from(b_len) && b < a + u128::from(a_len)
}

/// The first two of `queue`'s areas (by name) that overlap, if any.
pub(super) fn overlapping_areas(queue: &Queue) -> Option<(&'static str, &'static str)> {
    let areas = areas(
        queue.size(),
        queue.desc_table(),
        queue.avail_ring(),
        queue.used_ring(),
    );
    for (i, &(name_a, a, a_len)) in areas.iter().enumerate() {
        for &(name_b, b, b_len) in &areas[i + 1..] {
            if overlap(a, a_len, b, b_len) {
                return Some((name_a, name_b));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestAddress;

    fn queue(size: u16, desc: u64, avail: u64, used: u64) -> Queue {
        let mut q = Queue::new(256).unwrap();
        q.try_set_size(size).unwrap();
        q.try_set_desc_table_address(GuestAddress(desc)).unwrap();
        q.try_set_avail_ring_address(GuestAddress(avail)).unwrap();
        q.try_set_used_ring_address(GuestAddress(used)).unwrap();
        q
    }

    #[test]
    fn adjacent_areas_do_not_overlap() {
        // 16 entries: table 256 bytes, avail 38, used 134; packed back to back, in any order.
        assert_eq!(overlapping_areas(&queue(16, 0x1000, 0x1100, 0x1128)), None);
        assert_eq!(overlapping_areas(&queue(16, 0x1100, 0x10da, 0x1050)), None);
        assert_eq!(overlapping_areas(&queue(256, 0, 0x1000, 0x2000)), None);
    }

    #[test]
    fn any_shared_byte_is_an_overlap() {
        let cases = [
            (
                (16, 0x1000, 0x2000, 0x2000),
                ("available ring", "used ring"),
            ),
            (
                (16, 0x1000, 0x10fe, 0x2000),
                ("descriptor table", "available ring"),
            ),
            (
                (16, 0x1000, 0x2000, 0x0f7c),
                ("descriptor table", "used ring"),
            ),
            // The avail ring's last two bytes (used_event) on the used ring's first two.
            (
                (16, 0x1000, 0x1100, 0x1124),
                ("available ring", "used ring"),
            ),
            (
                (256, 0x1000, 0x2000, 0x1ffc),
                ("descriptor table", "used ring"),
            ),
        ];
        for ((size, desc, avail, used), want) in cases {
            let q = queue(size, desc, avail, used);
            assert_eq!(
                overlapping_areas(&q),
                Some(want),
                "{desc:#x} {avail:#x} {used:#x}"
            );
        }
    }

    #[test]
    fn top_of_the_address_space_does_not_overflow() {
        let top = u64::MAX - 3;
        assert_eq!(
            overlapping_areas(&queue(16, top & !15, top & !1, top)),
            Some(("descriptor table", "available ring"))
        );
        assert_eq!(overlapping_areas(&queue(16, 0, 0x100, top)), None);
    }
}
