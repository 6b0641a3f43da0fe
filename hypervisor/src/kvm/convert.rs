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

pub fn regs_to_kvm(r: &Regs) -> kvm_regs {
    gp_fields!(r, kvm_regs)
}

pub fn regs_from_kvm(r: &kvm_regs) -> Regs {
    gp_fields!(r, Regs)
}

fn seg_to_kvm(s: &Segment) -> kvm_segment {
    seg_fields!(s, kvm_segment; padding: 0)
}

fn seg_from_kvm(s: &kvm_segment) -> Segment {
    seg_fields!(s, Segment)
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
    sregs!(s, kvm_sregs, seg_to_kvm, dt_to_kvm; interrupt_bitmap: base.interrupt_bitmap)
}

pub fn sregs_from_kvm(s: &kvm_sregs) -> SpecialRegs {
    sregs!(s, SpecialRegs, seg_from_kvm, dt_from_kvm)
}
