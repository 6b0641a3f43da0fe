//! CPUID and MSR changes applied to every vCPU at boot: what Firecracker's custom CPU
//! templates (`PUT /cpu-config`) say, in a neutral form. Each change keeps the bits its mask
//! leaves out (the value the hypervisor and petrel would give) and sets the others.

use serde::{Deserialize, Serialize};

/// A CPUID output register.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CpuidRegister {
    /// EAX.
    Eax,
    /// EBX.
    Ebx,
    /// ECX.
    Ecx,
    /// EDX.
    Edx,
}

/// One register of one CPUID leaf (and subleaf) changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CpuidChange {
    /// The leaf (EAX in).
    pub leaf: u32,
    /// The subleaf (ECX in; 0 for leaves without subleaves).
    pub subleaf: u32,
    /// The register changed.
    pub register: CpuidRegister,
    /// The bits set from `value`; the others keep their value.
    pub mask: u32,
    /// The new bits.
    pub value: u32,
}

/// One MSR changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MsrChange {
    /// The MSR number.
    pub index: u32,
    /// The bits set from `value`; the others keep their value.
    pub mask: u64,
    /// The new bits.
    pub value: u64,
}

/// CPUID and MSR changes for every vCPU.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CpuTemplate {
    /// CPUID changes, applied in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cpuid: Vec<CpuidChange>,
    /// MSR changes, applied in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub msrs: Vec<MsrChange>,
}

impl CpuTemplate {
    /// Whether it changes nothing.
    pub fn is_empty(&self) -> bool {
        self.cpuid.is_empty() && self.msrs.is_empty()
    }
}

/// `old` with the bits of `mask` taken from `value`.
pub fn apply_bits(old: u64, mask: u64, value: u64) -> u64 {
    (old & !mask) | (value & mask)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masked_bits_change_and_the_others_stay() {
        assert_eq!(apply_bits(0b1010, 0b0110, 0b0101), 0b1100);
        assert_eq!(apply_bits(u64::MAX, 0, 0), u64::MAX);
    }
}
