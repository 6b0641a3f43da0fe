//! The boot vCPU state: GDT and identity page tables in guest memory, registers, MSRs, FPU and
//! the local APIC's LINT pins, applied through the `hypervisor` traits.

use hypervisor::{CpuState, DescriptorTable, FpuState, Msr, Regs, Segment, SpecialRegs};
use vm_memory::{Bytes, GuestAddress};

use crate::layout::*;
use crate::loader::{BootProtocol, LoadedKernel};
use crate::{Error, GuestMemoryMmap, Result};

const CR0_PE: u64 = 1;
const CR0_ET: u64 = 1 << 4;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
/// Stack pointer for the 64-bit entry (below the page tables, above the zero page).
const BOOT_STACK: u64 = 0x8ff0;

/// GDT entries: null, code, data, TSS. The code entry is 64-bit for the bzImage entry and
/// 32-bit for PVH.
fn gdt(long_mode: bool) -> [u64; 4] {
    let code = if long_mode {
        gdt_entry(0xa09b, 0, 0xfffff)
    } else {
        gdt_entry(0xc09b, 0, 0xfffff)
    };
    [
        0,
        code,
        gdt_entry(0xc093, 0, 0xfffff),
        gdt_entry(0x808b, 0, 0xfffff),
    ]
}

/// Packs a segment descriptor from `flags` (access byte in bits 0..8, G/DB/L/AVL in 12..16).
fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((u64::from(base) & 0xff00_0000) << 32)
        | ((u64::from(flags) & 0xf0ff) << 40)
        | ((u64::from(limit) & 0x000f_0000) << 32)
        | ((u64::from(base) & 0x00ff_ffff) << 16)
        | (u64::from(limit) & 0xffff)
}

/// Unpacks descriptor `entry` (GDT index `index`) into the segment register form.
fn segment(entry: u64, index: u16) -> Segment {
    let base = ((entry >> 16) & 0xff_ffff) | ((entry >> 32) & 0xff00_0000);
    let limit_raw = ((entry & 0xffff) | ((entry >> 32) & 0xf_0000)) as u32;
    let g = ((entry >> 55) & 1) as u8;
    let limit = if g == 1 {
        (limit_raw << 12) | 0xfff
    } else {
        limit_raw
    };
    Segment {
        base,
        limit,
        selector: index * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present: ((entry >> 47) & 1) as u8,
        dpl: ((entry >> 45) & 3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g,
        avl: ((entry >> 52) & 1) as u8,
        unusable: if (entry >> 47) & 1 == 1 { 0 } else { 1 },
    }
}

fn write_u64(mem: &GuestMemoryMmap, val: u64, addr: u64, what: &'static str) -> Result<()> {
    mem.write_obj(val, GuestAddress(addr))
        .map_err(|source| Error::GuestMemory { what, source })
}

/// Identity-maps the first 4 GiB with 2 MiB pages (for the 64-bit bzImage entry).
fn write_page_tables(mem: &GuestMemoryMmap) -> Result<()> {
    const PRESENT_RW: u64 = 0x3;
    const PAGE_2M: u64 = 0x80;
    write_u64(mem, PDPT_START | PRESENT_RW, PML4_START, "page tables")?;
    for dir in 0..4u64 {
        let pd = PD_START + dir * 0x1000;
        write_u64(mem, pd | PRESENT_RW, PDPT_START + dir * 8, "page tables")?;
        let mut table = [0u8; 4096];
        for (i, chunk) in table.chunks_exact_mut(8).enumerate() {
            let addr = ((dir << 30) | ((i as u64) << 21)) | PRESENT_RW | PAGE_2M;
            chunk.copy_from_slice(&addr.to_le_bytes());
        }
        mem.write_slice(&table, GuestAddress(pd))
            .map_err(|source| Error::GuestMemory {
                what: "page tables",
                source,
            })?;
    }
    Ok(())
}

/// Writes the GDT/IDT (and page tables for the 64-bit entry) and computes the boot vCPU's
/// registers for `kernel`.
pub fn boot_state(mem: &GuestMemoryMmap, kernel: &LoadedKernel) -> Result<(Regs, SpecialRegs)> {
    let long_mode = matches!(kernel.protocol, BootProtocol::BzImage { .. });
    let table = gdt(long_mode);
    for (i, e) in table.iter().enumerate() {
        write_u64(mem, *e, BOOT_GDT_START + 8 * i as u64, "GDT")?;
    }
    write_u64(mem, 0, BOOT_IDT_START, "IDT")?;
    let code = segment(table[1], 1);
    let data = segment(table[2], 2);
    let mut sregs = SpecialRegs {
        cs: code,
        ds: data,
        es: data,
        fs: data,
        gs: data,
        ss: data,
        tr: segment(table[3], 3),
        gdt: DescriptorTable {
            base: BOOT_GDT_START,
            limit: (table.len() * 8 - 1) as u16,
        },
        idt: DescriptorTable {
            base: BOOT_IDT_START,
            limit: 7,
        },
        cr0: CR0_PE | CR0_ET,
        ..Default::default()
    };
    sregs.ldt.unusable = 1;
    let mut regs = Regs {
        rip: kernel.entry(),
        rflags: 0x2,
        ..Default::default()
    };
    if long_mode {
        write_page_tables(mem)?;
        sregs.cr3 = PML4_START;
        sregs.cr4 = CR4_PAE;
        sregs.cr0 |= CR0_PG;
        sregs.efer = EFER_LME | EFER_LMA;
        regs.rsi = ZERO_PAGE_START;
        regs.rsp = BOOT_STACK;
        regs.rbp = BOOT_STACK;
    } else {
        regs.rbx = PVH_INFO_START;
    }
    Ok((regs, sregs))
}

/// MSRs every vCPU starts with.
pub fn boot_msrs() -> Vec<Msr> {
    const MSR_IA32_SYSENTER_CS: u32 = 0x174;
    const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
    const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
    const MSR_STAR: u32 = 0xc000_0081;
    const MSR_LSTAR: u32 = 0xc000_0082;
    const MSR_CSTAR: u32 = 0xc000_0083;
    const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
    const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
    const MSR_IA32_TSC: u32 = 0x10;
    const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
    const MISC_ENABLE_FAST_STRING: u64 = 1;
    [
        (MSR_IA32_SYSENTER_CS, 0),
        (MSR_IA32_SYSENTER_ESP, 0),
        (MSR_IA32_SYSENTER_EIP, 0),
        (MSR_STAR, 0),
        (MSR_CSTAR, 0),
        (MSR_KERNEL_GS_BASE, 0),
        (MSR_SYSCALL_MASK, 0),
        (MSR_LSTAR, 0),
        (MSR_IA32_TSC, 0),
        (MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
    ]
    .into_iter()
    .map(|(index, data)| Msr { index, data })
    .collect()
}

/// Sets the state every vCPU needs (MSRs, FPU, LAPIC LINT0 = ExtINT, LINT1 = NMI).
pub fn setup_common(vcpu: &dyn CpuState, id: u32) -> Result<()> {
    const APIC_LVT0: usize = 0x350;
    const APIC_LVT1: usize = 0x360;
    const MODE_EXTINT: u32 = 0x7;
    const MODE_NMI: u32 = 0x4;
    let err = |source| Error::Vcpu { id, source };
    vcpu.set_msrs(&boot_msrs()).map_err(err)?;
    vcpu.set_fpu(&FpuState {
        fcw: 0x37f,
        mxcsr: 0x1f80,
    })
    .map_err(err)?;
    let mut lapic = vcpu.lapic().map_err(err)?;
    let set_mode = |v: u32, mode: u32| (v & !0x700) | (mode << 8);
    lapic.set(APIC_LVT0, set_mode(lapic.get(APIC_LVT0), MODE_EXTINT));
    lapic.set(APIC_LVT1, set_mode(lapic.get(APIC_LVT1), MODE_NMI));
    vcpu.set_lapic(&lapic).map_err(err)
}

/// Puts the boot vCPU at the kernel's entry with `regs`/`sregs` from [`boot_state`].
pub fn setup_boot_vcpu(vcpu: &dyn CpuState, regs: &Regs, sregs: &SpecialRegs) -> Result<()> {
    let err = |source| Error::Vcpu { id: 0, source };
    let current = vcpu.sregs().map_err(err)?;
    let sregs = SpecialRegs {
        apic_base: current.apic_base,
        ..*sregs
    };
    vcpu.set_sregs(&sregs).map_err(err)?;
    vcpu.set_regs(regs).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptors_round_trip() {
        let code64 = gdt_entry(0xa09b, 0, 0xfffff);
        assert_eq!(code64, 0x00af_9b00_0000_ffff);
        let s = segment(code64, 1);
        assert_eq!(
            (s.l, s.db, s.g, s.present, s.type_, s.s),
            (1, 0, 1, 1, 0xb, 1)
        );
        assert_eq!(s.limit, 0xffff_ffff);
        assert_eq!(s.selector, 8);
        let data = segment(gdt_entry(0xc093, 0, 0xfffff), 2);
        assert_eq!((data.db, data.type_, data.unusable), (1, 3, 0));
        assert_eq!(gdt_entry(0xc09b, 0, 0xfffff), 0x00cf_9b00_0000_ffff);
    }
}
