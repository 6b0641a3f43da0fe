//! The page walk in each paging mode.

use super::*;
use crate::emulator::paging::{translate, Paging, CR4_LA57, CR4_PSE};

fn tr(ram: &Ram, p: &Paging, linear: u64) -> Option<u64> {
    translate(p, linear, &mut |a, b| ram.read(a, b))
}

#[test]
fn four_and_five_level_with_large_pages() {
    let ram = Ram::new();
    let s = paged64(&ram);
    let mut p = Paging {
        cr0: s.cr0,
        cr3: s.cr3,
        cr4: s.cr4,
        efer: s.efer,
    };
    assert_eq!(tr(&ram, &p, 0x1234), Some(0x1234), "2 MiB identity");
    assert_eq!(tr(&ram, &p, 0x20_5678), Some(0x20_5678));
    // 4 KiB page: PD[2] → PT; PT[5] → MMIO.
    ram.put_u64(0x10_2010, 0x11_0003);
    ram.put_u64(0x11_0000 + 5 * 8, MMIO | 3);
    assert_eq!(tr(&ram, &p, 0x40_5abc), Some(MMIO + 0xabc));
    // 1 GiB page: PDPT[3].
    ram.put_u64(0x10_1000 + 3 * 8, 0x1_c000_0000 | 0x83);
    assert_eq!(tr(&ram, &p, 0xc123_4567), Some(0x1_c123_4567));
    // Not present at each level.
    assert_eq!(tr(&ram, &p, 0x40_6000), None, "PTE");
    assert_eq!(tr(&ram, &p, 0x80_0000), None, "PDE");
    assert_eq!(tr(&ram, &p, 0x4000_0000), None, "PDPTE");
    assert_eq!(tr(&ram, &p, 0x8000_0000_0000), None, "PML4E");
    // A table outside RAM is no translation either.
    ram.put_u64(0x10_1000 + 4 * 8, MMIO | 3);
    assert_eq!(tr(&ram, &p, 0x1_0000_0000), None);
    // 5-level: CR3 → PML5 whose entry 0 is the PML4 above.
    ram.put_u64(0x12_0000, 0x10_0003);
    p.cr3 = 0x12_0000;
    p.cr4 |= CR4_LA57;
    assert_eq!(tr(&ram, &p, 0x40_5abc), Some(MMIO + 0xabc));
    assert_eq!(tr(&ram, &p, 1 << 48), None);
}

#[test]
fn pae_and_32_bit_paging() {
    let ram = Ram::new();
    // PAE: CR3 → 4 PDPTEs.
    ram.put_u64(0x2_0000, 0x2_1001);
    ram.put_u64(0x2_1000, 0x2_2001); // PD[0] → PT
    ram.put_u64(0x2_2000 + 3 * 8, 0xab_c001);
    ram.put_u64(0x2_1008, 0x60_0081); // PD[1]: 2 MiB
    let p = Paging {
        cr0: 0x8000_0001,
        cr3: 0x2_0000,
        cr4: 0x20,
        efer: 0,
    };
    assert_eq!(tr(&ram, &p, 0x3123), Some(0xab_c123));
    assert_eq!(tr(&ram, &p, 0x20_0042), Some(0x60_0042));
    assert_eq!(tr(&ram, &p, 0x4000_0000), None, "PDPTE 1 not present");
    // 32-bit: 4-byte entries, 4 MiB pages with PSE (and PSE-36 high bits).
    ram.put(0x3_0000 + 4, &0x3_1001u32.to_le_bytes()); // PDE[1] → PT
    ram.put(0x3_1000 + 2 * 4, &0x77_7001u32.to_le_bytes());
    ram.put(0x3_0000 + 8, &(0x180_0081u32 | (1 << 13)).to_le_bytes()); // PDE[2]: 4 MiB, bit 32
    let mut p = Paging {
        cr0: 0x8000_0001,
        cr3: 0x3_0000,
        cr4: CR4_PSE,
        efer: 0,
    };
    assert_eq!(tr(&ram, &p, 0x40_2123), Some(0x77_7123));
    assert_eq!(tr(&ram, &p, 0x80_1234), Some(0x1_0180_1234));
    assert_eq!(tr(&ram, &p, 0xc0_0000), None);
    // Without CR4.PSE the PS bit is ignored: the entry points at a page table.
    p.cr4 = 0;
    assert_eq!(tr(&ram, &p, 0x80_1234), tr(&ram, &p, 0x80_1234));
}

#[test]
fn paging_off_is_identity_truncated_outside_long_mode() {
    let ram = Ram::new();
    let p = Paging::default();
    assert_eq!(tr(&ram, &p, 0x1_2345_6789), Some(0x2345_6789));
    let p = Paging {
        efer: crate::emulator::paging::EFER_LMA,
        ..Default::default()
    };
    assert_eq!(tr(&ram, &p, 0x1_2345_6789), Some(0x1_2345_6789));
}

/// An operand crossing from one 4 KiB page into the next, each mapped to its own MMIO page,
/// reaches each page with its own piece (2 + 2 bytes), as the hardware splits it; the pieces
/// make up the register. (Found by the `x86_emulator` fuzz target, which had assumed whole
/// 1/2/4/8-byte accesses.)
#[test]
fn an_access_crossing_a_page_is_split_between_the_two_physical_pages() {
    let ram = Ram::new();
    let s = paged64(&ram);
    ram.put_u64(0x10_2010, 0x11_0003); // PD[2] → PT at 0x110000
    ram.put_u64(0x11_0000 + 5 * 8, MMIO | 3);
    ram.put_u64(0x11_0000 + 6 * 8, (MMIO + 0x1_0000) | 3);
    let io = RecIo::new(0x1122_3344_5566_7788);
    let mut r = regs();
    r.rbx = 0x40_5ffe;
    let after = run(&ram, r, s, &io, &[0x8b, 0x03]).expect("mov eax, [rbx]");
    assert_eq!(
        io.take(),
        vec![
            Access::MmioRead(MMIO + 0xffe, 2),
            Access::MmioRead(MMIO + 0x1_0000, 2)
        ]
    );
    assert_eq!(after.rax, 0x7788_7788);
    assert_eq!(after.rip, CODE + 2);
}
