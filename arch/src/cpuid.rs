//! petrel's CPUID filter: the hypervisor's supported leaves, adjusted per vCPU (APIC ids,
//! topology, the hypervisor bit).

use hypervisor::CpuidEntry;

const LEAF_FEATURES: u32 = 0x1;
const LEAF_CACHE: u32 = 0x4;
const LEAF_TOPOLOGY: u32 = 0xb;
const LEAF_TOPOLOGY_V2: u32 = 0x1f;
const ECX_HYPERVISOR: u32 = 1 << 31;
const EDX_HTT: u32 = 1 << 28;
const LEAF_EXT_FEATURES: u32 = 0x8000_0001;
const ECX_VMX: u32 = 1 << 5;
const ECX_SVM: u32 = 1 << 2;

/// Number of bits needed to number `n` items.
fn bits_for(n: u32) -> u32 {
    if n <= 1 {
        0
    } else {
        32 - (n - 1).leading_zeros()
    }
}

/// The CPUID vCPU `id` of `cpus` sees: one socket of `cpus` single-threaded cores.
pub fn filter(supported: &[CpuidEntry], id: u32, cpus: u32) -> Vec<CpuidEntry> {
    let mut out: Vec<CpuidEntry> = supported.to_vec();
    for e in out.iter_mut() {
        match e.function {
            LEAF_FEATURES => {
                e.ebx = (e.ebx & 0x0000_ffff) | ((id & 0xff) << 24) | ((cpus.min(255)) << 16);
                e.ebx = (e.ebx & !0xff00) | (8 << 8); // CLFLUSH line size: 8 quadwords
                e.ecx |= ECX_HYPERVISOR;
                if cpus > 1 {
                    e.edx |= EDX_HTT;
                } else {
                    e.edx &= !EDX_HTT;
                }
            }
            LEAF_CACHE => {
                // Cores per package - 1 in EAX[31:26]; each cache is private to its core.
                let cores = cpus.min(64) - 1;
                e.eax = (e.eax & 0x3fff) | (cores << 26);
            }
            LEAF_TOPOLOGY | LEAF_TOPOLOGY_V2 => {
                e.edx = id;
                match e.index {
                    0 => {
                        e.eax = 0;
                        e.ebx = 1;
                        e.ecx = (1 << 8) | e.index;
                    }
                    1 => {
                        e.eax = bits_for(cpus);
                        e.ebx = cpus;
                        e.ecx = (2 << 8) | e.index;
                    }
                    _ => {
                        e.eax = 0;
                        e.ebx = 0;
                        e.ecx = e.index;
                    }
                }
            }
            _ => {}
        }
    }
    out
}

/// Clears VMX (leaf 1 ECX bit 5) and SVM (leaf 0x8000_0001 ECX bit 2): the guest sees no
/// virtualization extensions (`cpus.nested: false`).
pub fn hide_virtualization(entries: &mut [CpuidEntry]) {
    for e in entries.iter_mut() {
        match e.function {
            LEAF_FEATURES => e.ecx &= !ECX_VMX,
            LEAF_EXT_FEATURES => e.ecx &= !ECX_SVM,
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(function: u32, index: u32) -> CpuidEntry {
        CpuidEntry {
            function,
            index,
            ebx: 0xdead_0000,
            ..Default::default()
        }
    }

    #[test]
    fn apic_ids_and_topology_follow_the_vcpu() {
        let supported = vec![leaf(1, 0), leaf(0xb, 0), leaf(0xb, 1), leaf(0xb, 2)];
        let out = filter(&supported, 3, 4);
        assert_eq!(out[0].ebx >> 24, 3);
        assert_eq!((out[0].ebx >> 16) & 0xff, 4);
        assert_ne!(out[0].ecx & ECX_HYPERVISOR, 0);
        assert_ne!(out[0].edx & EDX_HTT, 0);
        assert!(out[1..].iter().all(|e| e.edx == 3));
        assert_eq!(out[2].ebx, 4);
        assert_eq!(out[2].eax, 2);
        assert_eq!(out[3].ecx >> 8, 0, "level type 0 ends the list");
        assert_eq!(bits_for(1), 0);
        assert_eq!(bits_for(5), 3);
    }

    #[test]
    fn hiding_virtualization_clears_vmx_and_svm_only() {
        let mut entries = vec![leaf(1, 0), leaf(0x8000_0001, 0), leaf(7, 0)];
        for e in entries.iter_mut() {
            e.ecx = u32::MAX;
        }
        hide_virtualization(&mut entries);
        assert_eq!(entries[0].ecx, !ECX_VMX);
        assert_eq!(entries[1].ecx, !ECX_SVM);
        assert_eq!(entries[2].ecx, u32::MAX);
    }
}
