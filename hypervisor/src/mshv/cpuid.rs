//! CPUID on MSHV: the VMM's per-vCPU table is registered with the hypervisor as CPUID
//! intercept results (`HvCallRegisterInterceptResult`, one per leaf and subleaf, for that
//! vCPU), which the hypervisor then answers the guest's CPUID with, without an exit. A CPUID
//! intercept would not do: it is installed for one leaf (its `cpuid_index`), not for all.
//!
//! Each result carries a mask per register: set bits take petrel's value, clear bits keep
//! what the hypervisor computes. Bits that follow the vCPU's live state stay the
//! hypervisor's ([`LIVE_BITS`]): OSXSAVE and OSPKE mirror CR4, and leaf 0xD's sizes depend on
//! what XCR0 and IA32_XSS enable at the time of the CPUID, not at boot.

use mshv_bindings::{
    hv_input_register_intercept_result, hv_intercept_type_HV_INTERCEPT_TYPE_X64_CPUID,
    hv_register_intercept_result_parameters, hv_register_x64_cpuid_result_parameters,
    hv_register_x64_cpuid_result_parameters__bindgen_ty_1,
    hv_register_x64_cpuid_result_parameters__bindgen_ty_2,
};

use crate::{CpuidEntry, CPUID_FLAG_SIGNIFICANT_INDEX};

/// Register positions in a result.
const EBX: usize = 1;
const ECX: usize = 2;

/// Bits left to the hypervisor: (leaf, subleaf or any, register, bits).
const LIVE_BITS: &[(u32, Option<u32>, usize, u32)] = &[
    // OSXSAVE: CR4.OSXSAVE.
    (0x1, None, ECX, 1 << 27),
    // OSPKE: CR4.PKE.
    (0x7, Some(0), ECX, 1 << 4),
    // Size of the XSAVE area for the features XCR0 enables now.
    (0xd, Some(0), EBX, u32::MAX),
    // Size of the XSAVES area for XCR0 | IA32_XSS now.
    (0xd, Some(1), EBX, u32::MAX),
];

/// One leaf's (and subleaf's) result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct CpuidResult {
    pub leaf: u32,
    pub subleaf: u32,
    /// Only this subleaf (the leaf's ECX input selects a subleaf), or every subleaf.
    pub subleaf_specific: bool,
    /// EAX, EBX, ECX, EDX.
    pub values: [u32; 4],
    /// Which bits of each register take `values`.
    pub masks: [u32; 4],
}

/// The results for a vCPU's CPUID table.
pub(super) fn results(table: &[CpuidEntry]) -> Vec<CpuidResult> {
    table
        .iter()
        .map(|e| {
            let subleaf_specific = e.flags & CPUID_FLAG_SIGNIFICANT_INDEX != 0;
            let mut masks = [u32::MAX; 4];
            for &(leaf, sub, reg, bits) in LIVE_BITS {
                if leaf == e.function && sub.is_none_or(|s| s == e.index) {
                    masks[reg] &= !bits;
                }
            }
            CpuidResult {
                leaf: e.function,
                subleaf: e.index,
                subleaf_specific,
                values: [e.eax, e.ebx, e.ecx, e.edx],
                masks,
            }
        })
        .collect()
}

/// The hypercall input registering `r` for vCPU `vp_index` (the kernel fills in the
/// partition).
pub(super) fn hvcall_input(vp_index: u32, r: &CpuidResult) -> hv_input_register_intercept_result {
    let cpuid = hv_register_x64_cpuid_result_parameters {
        input: hv_register_x64_cpuid_result_parameters__bindgen_ty_1 {
            eax: r.leaf,
            ecx: r.subleaf,
            subleaf_specific: u8::from(r.subleaf_specific),
            // Apply it even where the hypervisor's own value is zero.
            always_override: 1,
            padding: 0,
        },
        result: hv_register_x64_cpuid_result_parameters__bindgen_ty_2 {
            eax: r.values[0],
            eax_mask: r.masks[0],
            ebx: r.values[1],
            ebx_mask: r.masks[1],
            ecx: r.values[2],
            ecx_mask: r.masks[2],
            edx: r.values[3],
            edx_mask: r.masks[3],
        },
    };
    hv_input_register_intercept_result {
        vp_index,
        intercept_type: hv_intercept_type_HV_INTERCEPT_TYPE_X64_CPUID,
        parameters: hv_register_intercept_result_parameters { cpuid },
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32, flags: u32, regs: [u32; 4]) -> CpuidEntry {
        CpuidEntry {
            function,
            index,
            flags,
            eax: regs[0],
            ebx: regs[1],
            ecx: regs[2],
            edx: regs[3],
        }
    }

    #[test]
    fn every_leaf_is_registered_with_live_bits_left_to_the_hypervisor() {
        let sig = CPUID_FLAG_SIGNIFICANT_INDEX;
        let table = [
            entry(0x0, 0, 0, [0xd, 1, 2, 3]),
            // vCPU 3's leaf 1: APIC id 3 in EBX[31:24], hypervisor bit, OSXSAVE set at boot.
            entry(0x1, 0, 0, [0x806f8, 3 << 24, (1 << 31) | (1 << 27), 0]),
            entry(0x7, 0, sig, [0, 0, 1 << 4, 0]),
            entry(0xb, 1, sig, [4, 2, 0x201, 3]),
            entry(0xd, 0, sig, [7, 0x340, 0x340, 0]),
            entry(0xd, 1, sig, [0xf, 0x340, 0, 0]),
            entry(0xd, 2, sig, [0x100, 0x240, 0, 0]),
        ];
        let r = results(&table);
        assert_eq!(r.len(), table.len(), "every leaf and subleaf is registered");
        // Whole registers, APIC id and hypervisor bit included, except OSXSAVE.
        assert_eq!(r[1].values, [0x806f8, 3 << 24, (1 << 31) | (1 << 27), 0]);
        assert_eq!(r[1].masks, [u32::MAX, u32::MAX, !(1 << 27), u32::MAX]);
        assert!(!r[1].subleaf_specific);
        assert_eq!(r[2].masks[ECX], !(1 << 4));
        assert!(r[3].subleaf_specific && r[3].subleaf == 1);
        assert_eq!(r[3].masks, [u32::MAX; 4]);
        // Leaf 0xD's current sizes stay live; its other fields and subleaves are petrel's.
        assert_eq!(r[4].masks, [u32::MAX, 0, u32::MAX, u32::MAX]);
        assert_eq!(r[5].masks, [u32::MAX, 0, u32::MAX, u32::MAX]);
        assert_eq!(r[6].masks, [u32::MAX; 4]);
    }

    #[test]
    fn the_hypercall_input_names_the_vcpu_leaf_and_masks() {
        let r = CpuidResult {
            leaf: 0xb,
            subleaf: 1,
            subleaf_specific: true,
            values: [1, 2, 3, 4],
            masks: [5, 6, 7, 8],
        };
        let input = hvcall_input(3, &r);
        // Copies: the structure is packed.
        let (vp, ty) = (input.vp_index, input.intercept_type);
        assert_eq!(vp, 3);
        assert_eq!(ty, hv_intercept_type_HV_INTERCEPT_TYPE_X64_CPUID);
        // SAFETY: `cpuid` is the union member `hvcall_input` wrote.
        let c = unsafe { input.parameters.cpuid };
        assert_eq!((c.input.eax, c.input.ecx), (0xb, 1));
        assert_eq!((c.input.subleaf_specific, c.input.always_override), (1, 1));
        let res = c.result;
        assert_eq!([res.eax, res.ebx, res.ecx, res.edx], [1, 2, 3, 4]);
        assert_eq!(
            [res.eax_mask, res.ebx_mask, res.ecx_mask, res.edx_mask],
            [5, 6, 7, 8]
        );
    }
}
