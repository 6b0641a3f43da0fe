//! The guest page walk: linear → guest-physical addresses for the paging modes x86 guests use
//! (none, 32-bit with 4 MiB pages, PAE, 4-level and 5-level with 2 MiB / 1 GiB pages).
//!
//! Only the present bits are checked: the hardware already checked access rights before the
//! access reached the hypervisor, and the emulator never injects page faults (a missing
//! translation is an error). Accessed/dirty bits are left as the hardware set them.

/// CR0.PE.
pub const CR0_PE: u64 = 1;
/// CR0.PG.
pub const CR0_PG: u64 = 1 << 31;
/// CR4.PSE.
pub const CR4_PSE: u64 = 1 << 4;
/// CR4.PAE.
pub const CR4_PAE: u64 = 1 << 5;
/// CR4.LA57.
pub const CR4_LA57: u64 = 1 << 12;
/// EFER.LME.
pub const EFER_LME: u64 = 1 << 8;
/// EFER.LMA.
pub const EFER_LMA: u64 = 1 << 10;

const PTE_P: u64 = 1;
const PTE_PS: u64 = 1 << 7;
/// Physical-address bits 51:12 of a 64-bit entry.
const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;

/// The registers that select and root the page tables.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Paging {
    /// CR0.
    pub cr0: u64,
    /// CR3.
    pub cr3: u64,
    /// CR4.
    pub cr4: u64,
    /// EFER.
    pub efer: u64,
}

/// Translates `linear` with the page tables described by `p`, reading the tables through
/// `read` (guest-physical address, bytes; false if not RAM). `None` when a level is not
/// present or a table is not in RAM.
pub fn translate(
    p: &Paging,
    linear: u64,
    read: &mut dyn FnMut(u64, &mut [u8]) -> bool,
) -> Option<u64> {
    if p.cr0 & CR0_PG == 0 {
        return Some(if p.efer & EFER_LMA != 0 {
            linear
        } else {
            linear & 0xffff_ffff
        });
    }
    if p.efer & EFER_LMA != 0 {
        let levels = if p.cr4 & CR4_LA57 != 0 { 5 } else { 4 };
        return walk64(p.cr3 & ADDR_MASK, linear, levels, read);
    }
    let linear = linear & 0xffff_ffff;
    if p.cr4 & CR4_PAE != 0 {
        let pdpte = read_u64(read, (p.cr3 & 0xffff_ffe0) + ((linear >> 30) & 3) * 8)?;
        if pdpte & PTE_P == 0 {
            return None;
        }
        return walk64(pdpte & ADDR_MASK, linear, 2, read);
    }
    let pde = read_u32(read, (p.cr3 & 0xffff_f000) + ((linear >> 22) & 0x3ff) * 4)?;
    if pde & PTE_P == 0 {
        return None;
    }
    if pde & PTE_PS != 0 && p.cr4 & CR4_PSE != 0 {
        // PSE-36: bits 20:13 of the entry are physical-address bits 39:32.
        let base = (pde & 0xffc0_0000) | (((pde >> 13) & 0xff) << 32);
        return Some(base | (linear & 0x3f_ffff));
    }
    let pte = read_u32(read, (pde & 0xffff_f000) + ((linear >> 12) & 0x3ff) * 4)?;
    if pte & PTE_P == 0 {
        return None;
    }
    Some((pte & 0xffff_f000) | (linear & 0xfff))
}

/// Walks `levels` levels of 512-entry tables from `table` (levels 3 and 2 may map 1 GiB and
/// 2 MiB pages).
fn walk64(
    mut table: u64,
    linear: u64,
    levels: u32,
    read: &mut dyn FnMut(u64, &mut [u8]) -> bool,
) -> Option<u64> {
    for level in (1..=levels).rev() {
        let shift = 12 + 9 * (level - 1);
        let entry = read_u64(read, table + ((linear >> shift) & 0x1ff) * 8)?;
        if entry & PTE_P == 0 {
            return None;
        }
        if level == 1 || ((level == 2 || level == 3) && entry & PTE_PS != 0) {
            let page_mask = (1u64 << shift) - 1;
            return Some((entry & ADDR_MASK & !page_mask) | (linear & page_mask));
        }
        table = entry & ADDR_MASK;
    }
    None
}

fn read_u64(read: &mut dyn FnMut(u64, &mut [u8]) -> bool, gpa: u64) -> Option<u64> {
    let mut b = [0u8; 8];
    read(gpa, &mut b).then(|| u64::from_le_bytes(b))
}

fn read_u32(read: &mut dyn FnMut(u64, &mut [u8]) -> bool, gpa: u64) -> Option<u64> {
    let mut b = [0u8; 4];
    read(gpa, &mut b).then(|| u64::from(u32::from_le_bytes(b)))
}
