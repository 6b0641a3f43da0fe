//! Conversions between petrel's neutral register types and KVM's.

use kvm_bindings::{kvm_cpuid_entry2, kvm_dtable, kvm_regs, kvm_segment, kvm_sregs};

use crate::{CpuidEntry, DescriptorTable, Regs, Segment, SpecialRegs};

pub fn cpuid_from_kvm(e: &kvm_cpuid_entry2) -> CpuidEntry {
    CpuidEntry {
        function: e.function,
        index: e.index,
        flags: e.flags,
        eax: e.eax,
        ebx: e.ebx,
        ecx: e.ecx,
        edx: e.edx,
    }
}

pub fn cpuid_to_kvm(e: &CpuidEntry) -> kvm_cpuid_entry2 {
    kvm_cpuid_entry2 {
        function: e.function,
        index: e.index,
        flags: e.flags,
        eax: e.eax,
        ebx: e.ebx,
        ecx: e.ecx,
        edx: e.edx,
        ..Default::default()
    }
}

/// Builds `$ty` from `$src` by copying the listed fields of the same names, plus any
/// `extra: value` fields after a `;`.
macro_rules! copy_fields {
    ($src:expr, $ty:ident { $($f:ident),* $(,)? } $(; $($x:ident: $v:expr),*)?) => {
        $ty { $($f: $src.$f,)* $($($x: $v),*)? }
    };
}

/// Copies the general-purpose register fields (shared by both directions).
macro_rules! with_gp_fields {
    ($src:expr, $ty:ident) => {
        copy_fields!(
            $src,
            $ty {
                rax,
                rbx,
                rcx,
                rdx,
                rsi,
                rdi,
                rsp,
                rbp,
                r8,
                r9,
                r10,
                r11,
                r12,
                r13,
                r14,
                r15,
                rip,
                rflags,
            }
        )
    };
}

/// Copies the segment descriptor-cache fields.
macro_rules! with_seg_fields {
    ($src:expr, $ty:ident $(; $($x:ident: $v:expr),*)?) => {
        copy_fields!($src, $ty {
            base, limit, selector, type_, present, dpl, db, s, l, g, avl, unusable,
        } $(; $($x: $v),*)?)
    };
}

pub fn regs_to_kvm(r: &Regs) -> kvm_regs {
    with_gp_fields!(r, kvm_regs)
}

pub fn regs_from_kvm(r: &kvm_regs) -> Regs {
    with_gp_fields!(r, Regs)
}

fn seg_to_kvm(s: &Segment) -> kvm_segment {
    with_seg_fields!(s, kvm_segment; padding: 0)
}

fn seg_from_kvm(s: &kvm_segment) -> Segment {
    with_seg_fields!(s, Segment)
}

fn dt_to_kvm(d: &DescriptorTable) -> kvm_dtable {
    kvm_dtable {
        base: d.base,
        limit: d.limit,
        padding: [0; 3],
    }
}

fn dt_from_kvm(d: &kvm_dtable) -> DescriptorTable {
    DescriptorTable {
        base: d.base,
        limit: d.limit,
    }
}

/// Applies `s` over `base` (the vCPU's current sregs), keeping KVM-only fields such as the
/// pending-interrupt bitmap.
pub fn sregs_to_kvm(s: &SpecialRegs, base: &kvm_sregs) -> kvm_sregs {
    kvm_sregs {
        cs: seg_to_kvm(&s.cs),
        ds: seg_to_kvm(&s.ds),
        es: seg_to_kvm(&s.es),
        fs: seg_to_kvm(&s.fs),
        gs: seg_to_kvm(&s.gs),
        ss: seg_to_kvm(&s.ss),
        tr: seg_to_kvm(&s.tr),
        ldt: seg_to_kvm(&s.ldt),
        gdt: dt_to_kvm(&s.gdt),
        idt: dt_to_kvm(&s.idt),
        cr0: s.cr0,
        cr2: s.cr2,
        cr3: s.cr3,
        cr4: s.cr4,
        cr8: s.cr8,
        efer: s.efer,
        apic_base: s.apic_base,
        interrupt_bitmap: base.interrupt_bitmap,
    }
}

pub fn sregs_from_kvm(s: &kvm_sregs) -> SpecialRegs {
    SpecialRegs {
        cs: seg_from_kvm(&s.cs),
        ds: seg_from_kvm(&s.ds),
        es: seg_from_kvm(&s.es),
        fs: seg_from_kvm(&s.fs),
        gs: seg_from_kvm(&s.gs),
        ss: seg_from_kvm(&s.ss),
        tr: seg_from_kvm(&s.tr),
        ldt: seg_from_kvm(&s.ldt),
        gdt: dt_from_kvm(&s.gdt),
        idt: dt_from_kvm(&s.idt),
        cr0: s.cr0,
        cr2: s.cr2,
        cr3: s.cr3,
        cr4: s.cr4,
        cr8: s.cr8,
        efer: s.efer,
        apic_base: s.apic_base,
    }
}
