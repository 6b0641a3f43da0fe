//! What a test guest image puts where in guest memory, read from the image file: for checks
//! such as "the reported instruction pointer is at a `ud2`" or "the initramfs does not overlap
//! the kernel".

use std::path::Path;

use crate::guest_build::GuestKind;

/// One loaded piece: `len` bytes from file offset `offset` at guest-physical `addr`, followed
/// by zeroes up to `mem_len`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Segment {
    addr: u64,
    offset: u64,
    len: u64,
    mem_len: u64,
}

fn le(data: &[u8], at: usize, n: usize) -> Option<u64> {
    let b = data.get(at..at.checked_add(n)?)?;
    Some(b.iter().rev().fold(0u64, |v, &x| (v << 8) | u64::from(x)))
}

/// PT_LOAD segments of an ELF64 image, placed at their physical addresses.
fn elf_segments(data: &[u8]) -> Option<Vec<Segment>> {
    if data.get(..4)? != b"\x7fELF" || *data.get(4)? != 2 {
        return None;
    }
    let phoff = usize::try_from(le(data, 0x20, 8)?).ok()?;
    let phentsize = usize::try_from(le(data, 0x36, 2)?).ok()?;
    let phnum = usize::try_from(le(data, 0x38, 2)?).ok()?;
    let mut segs = Vec::new();
    for i in 0..phnum {
        let ph = phoff.checked_add(i.checked_mul(phentsize)?)?;
        if le(data, ph, 4)? != 1 {
            continue;
        }
        segs.push(Segment {
            offset: le(data, ph + 8, 8)?,
            addr: le(data, ph + 0x18, 8)?,
            len: le(data, ph + 0x20, 8)?,
            mem_len: le(data, ph + 0x28, 8)?,
        });
    }
    Some(segs)
}

/// The protected-mode part of a bzImage, at `code32_start`, reserving `init_size`.
fn bzimage_segment(data: &[u8]) -> Option<Segment> {
    let sects = match le(data, 0x1f1, 1)? {
        0 => 4,
        n => n,
    };
    let offset = (sects + 1) * 512;
    let len = u64::try_from(data.len()).ok()?.checked_sub(offset)?;
    Some(Segment {
        addr: le(data, 0x214, 4)?,
        offset,
        len,
        mem_len: len.max(le(data, 0x260, 4)?),
    })
}

fn segments(kind: GuestKind, image: &Path) -> Option<(Vec<u8>, Vec<Segment>)> {
    let data = std::fs::read(image).ok()?;
    let segs = match kind {
        GuestKind::Pvh => elf_segments(&data)?,
        GuestKind::BzImage => vec![bzimage_segment(&data)?],
    };
    Some((data, segs))
}

/// The `len` bytes the image loads at guest-physical `addr` (from the file; `None` when that
/// range is not file-backed by one segment, or the image cannot be read).
pub fn loaded_bytes(kind: GuestKind, image: &Path, addr: u64, len: usize) -> Option<Vec<u8>> {
    let (data, segs) = segments(kind, image)?;
    let end = addr.checked_add(u64::try_from(len).ok()?)?;
    let seg = segs
        .iter()
        .find(|s| s.addr <= addr && s.addr.checked_add(s.len).is_some_and(|e| end <= e))?;
    let start = usize::try_from(seg.offset.checked_add(addr - seg.addr)?).ok()?;
    data.get(start..start.checked_add(len)?).map(<[u8]>::to_vec)
}

/// The guest-physical range `[start, end)` the image occupies once loaded (including its
/// zero-filled parts: .bss, page tables, stacks).
pub fn loaded_extent(kind: GuestKind, image: &Path) -> Option<(u64, u64)> {
    let (_, segs) = segments(kind, image)?;
    let start = segs.iter().map(|s| s.addr).min()?;
    let end = segs
        .iter()
        .map(|s| s.addr.checked_add(s.mem_len))
        .collect::<Option<Vec<_>>>()?
        .into_iter()
        .max()?;
    Some((start, end))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guest_build::build_guest;

    #[test]
    fn both_images_start_at_1mib_with_their_entry() {
        for (kind, entry, first) in [
            (GuestKind::Pvh, 0x100000, 0xfa),
            (GuestKind::BzImage, 0x100200, 0xfa),
        ] {
            let image = build_guest(kind).unwrap();
            let (start, end) = loaded_extent(kind, &image).unwrap();
            assert_eq!(start, 0x100000, "{kind:?}");
            assert!(
                end > start + 0x1000 && end < 0x400000,
                "{kind:?} end {end:#x}"
            );
            // Both entry points begin with `cli`.
            assert_eq!(
                loaded_bytes(kind, &image, entry, 1),
                Some(vec![first]),
                "{kind:?}"
            );
            assert_eq!(loaded_bytes(kind, &image, end + 0x1000, 1), None);
        }
    }
}
