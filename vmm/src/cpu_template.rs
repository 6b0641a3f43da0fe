//! A CPU template ([`api::cpu_template::CpuTemplate`]) applied to a vCPU at boot: its CPUID
//! changes to the CPUID petrel computed (an entry the template names must be there: a
//! template for another CPU is refused, not half applied), its MSR changes over the values the
//! vCPU has after petrel's setup (read back from the hypervisor).

use api::cpu_template::{apply_bits, CpuTemplate, CpuidRegister};
use hypervisor::{CpuidEntry, Msr, Vcpu, CPUID_FLAG_SIGNIFICANT_INDEX};

use crate::{Error, Result};

/// Applies the template's CPUID changes to `entries`.
pub fn apply_cpuid(entries: &mut [CpuidEntry], t: &CpuTemplate) -> Result<()> {
    for c in &t.cpuid {
        let entry = entries
            .iter_mut()
            .find(|e| {
                e.function == c.leaf
                    && (e.flags & CPUID_FLAG_SIGNIFICANT_INDEX == 0 || e.index == c.subleaf)
            })
            .ok_or_else(|| {
                Error::CpuTemplate(format!(
                    "CPUID leaf {:#x} subleaf {:#x} is not in the guest's CPUID",
                    c.leaf, c.subleaf
                ))
            })?;
        let reg = match c.register {
            CpuidRegister::Eax => &mut entry.eax,
            CpuidRegister::Ebx => &mut entry.ebx,
            CpuidRegister::Ecx => &mut entry.ecx,
            CpuidRegister::Edx => &mut entry.edx,
        };
        *reg = apply_bits(u64::from(*reg), u64::from(c.mask), u64::from(c.value)) as u32;
    }
    Ok(())
}

/// Applies the template's MSR changes to `vcpu` (after its boot MSRs are set).
pub fn apply_msrs(vcpu: &dyn Vcpu, t: &CpuTemplate) -> Result<()> {
    if t.msrs.is_empty() {
        return Ok(());
    }
    let current = vcpu.save_state()?.msrs;
    let msrs: Vec<Msr> = t
        .msrs
        .iter()
        .map(|c| {
            let old = current
                .iter()
                .find(|m| m.index == c.index)
                .map_or(0, |m| m.data);
            Msr {
                index: c.index,
                data: apply_bits(old, c.mask, c.value),
            }
        })
        .collect();
    vcpu.set_msrs(&msrs).map_err(|e| {
        Error::CpuTemplate(format!(
            "the hypervisor refused the MSRs {:x?}: {e}",
            msrs.iter().map(|m| m.index).collect::<Vec<_>>()
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use api::cpu_template::CpuidChange;

    #[test]
    fn cpuid_changes_touch_only_their_bits_and_a_missing_leaf_is_refused() {
        let mut entries = vec![
            CpuidEntry {
                function: 1,
                index: 0,
                flags: 0,
                eax: 0x1234_5678,
                ebx: 0,
                ecx: 0xffff_ffff,
                edx: 0,
            },
            CpuidEntry {
                function: 7,
                index: 1,
                flags: CPUID_FLAG_SIGNIFICANT_INDEX,
                eax: 0,
                ebx: 0,
                ecx: 0,
                edx: 0,
            },
        ];
        let t = CpuTemplate {
            cpuid: vec![
                CpuidChange {
                    leaf: 1,
                    subleaf: 0,
                    register: CpuidRegister::Ecx,
                    mask: 0x8000_0001,
                    value: 0,
                },
                CpuidChange {
                    leaf: 7,
                    subleaf: 1,
                    register: CpuidRegister::Ebx,
                    mask: 0xf0,
                    value: 0x50,
                },
            ],
            msrs: vec![],
        };
        apply_cpuid(&mut entries, &t).unwrap();
        assert_eq!(entries[0].ecx, 0x7fff_fffe);
        assert_eq!(entries[0].eax, 0x1234_5678);
        assert_eq!(entries[1].ebx, 0x50);
        let missing = CpuTemplate {
            cpuid: vec![CpuidChange {
                leaf: 7,
                subleaf: 2,
                register: CpuidRegister::Eax,
                mask: 1,
                value: 1,
            }],
            msrs: vec![],
        };
        let e = apply_cpuid(&mut entries, &missing).unwrap_err();
        assert!(e.to_string().contains("leaf 0x7 subleaf 0x2"), "{e}");
    }
}
