//! Conversions between petrel's neutral register types and mshv-bindings' types.

use mshv_bindings::{SegmentRegister, SpecialRegisters, StandardRegisters, TableRegister};

use crate::{DescriptorTable, Regs, Segment, SpecialRegs};

/// Neutral → MSHV general-purpose registers.
pub fn regs_to_mshv(r: &Regs) -> StandardRegisters {
    gp_fields!(r, StandardRegisters)
}

/// MSHV → neutral general-purpose registers.
pub fn regs_from_mshv(r: &StandardRegisters) -> Regs {
    gp_fields!(r, Regs)
}

fn seg_to_mshv(s: &Segment) -> SegmentRegister {
    seg_fields!(s, SegmentRegister; padding: 0)
}

fn seg_from_mshv(s: &SegmentRegister) -> Segment {
    seg_fields!(s, Segment)
}

fn dt_to_mshv(d: &DescriptorTable) -> TableRegister {
    TableRegister {
        base: d.base,
        limit: d.limit,
    }
}

fn dt_from_mshv(d: &TableRegister) -> DescriptorTable {
    DescriptorTable {
        base: d.base,
        limit: d.limit,
    }
}

/// Neutral → MSHV special registers over `base` (keeps the pending-interrupt bitmap).
pub fn sregs_to_mshv(s: &SpecialRegs, base: &SpecialRegisters) -> SpecialRegisters {
    sregs!(s, SpecialRegisters, seg_to_mshv, dt_to_mshv; interrupt_bitmap: base.interrupt_bitmap)
}

/// MSHV → neutral special registers.
pub fn sregs_from_mshv(s: &SpecialRegisters) -> SpecialRegs {
    sregs!(s, SpecialRegs, seg_from_mshv, dt_from_mshv)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(n: u64) -> Segment {
        Segment {
            base: n << 12,
            limit: n as u32 * 3,
            selector: n as u16 * 8,
            type_: 11,
            present: 1,
            dpl: (n % 4) as u8,
            db: (n % 2) as u8,
            s: 1,
            l: ((n + 1) % 2) as u8,
            g: 1,
            avl: 0,
            unusable: 0,
        }
    }

    #[test]
    fn regs_round_trip_field_by_field() {
        let r = Regs {
            rax: 1,
            rbx: 2,
            rcx: 3,
            rdx: 4,
            rsi: 5,
            rdi: 6,
            rsp: 7,
            rbp: 8,
            r8: 9,
            r9: 10,
            r10: 11,
            r11: 12,
            r12: 13,
            r13: 14,
            r14: 15,
            r15: 16,
            rip: 0xffff_ffff_8100_0000,
            rflags: 0x202,
        };
        let m = regs_to_mshv(&r);
        assert_eq!((m.rax, m.r15, m.rip, m.rflags), (1, 16, r.rip, 0x202));
        assert_eq!((m.rsp, m.rbp, m.rsi, m.rdi), (7, 8, 5, 6));
        assert_eq!(regs_from_mshv(&m), r);
    }

    #[test]
    fn sregs_round_trip_and_keep_the_interrupt_bitmap() {
        let s = SpecialRegs {
            cs: seg(1),
            ds: seg(2),
            es: seg(3),
            fs: seg(4),
            gs: seg(5),
            ss: seg(6),
            tr: seg(7),
            ldt: seg(8),
            gdt: DescriptorTable {
                base: 0x500,
                limit: 0x1f,
            },
            idt: DescriptorTable {
                base: 0x520,
                limit: 0xfff,
            },
            cr0: 0x8000_0011,
            cr2: 0x1234,
            cr3: 0x9000,
            cr4: 0x20,
            cr8: 2,
            efer: 0x500,
            apic_base: 0xfee0_0900,
        };
        let base = SpecialRegisters {
            interrupt_bitmap: [1, 2, 3, 4],
            ..Default::default()
        };
        let m = sregs_to_mshv(&s, &base);
        assert_eq!(m.interrupt_bitmap, [1, 2, 3, 4]);
        assert_eq!((m.cs.selector, m.cs.base, m.cs.l), (8, 0x1000, 0));
        assert_eq!((m.tr.selector, m.ldt.base), (56, 0x8000));
        assert_eq!((m.gdt.base, m.idt.limit), (0x500, 0xfff));
        assert_eq!(
            (m.cr0, m.cr3, m.efer, m.apic_base),
            (s.cr0, 0x9000, 0x500, s.apic_base)
        );
        assert_eq!(sregs_from_mshv(&m), s);
    }
}
