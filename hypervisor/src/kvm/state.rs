//! Saving and restoring KVM vCPU and VM state through petrel's neutral types
//! ([`crate::state`]).

use kvm_bindings::{
    kvm_clock_data, kvm_irqchip, kvm_mp_state, kvm_msr_entry, kvm_pic_state, kvm_vcpu_events,
    kvm_xcrs, kvm_xsave, Msrs, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE,
    KVM_MAX_CPUID_ENTRIES, KVM_MP_STATE_HALTED, KVM_MP_STATE_INIT_RECEIVED, KVM_MP_STATE_RUNNABLE,
    KVM_MP_STATE_SIPI_RECEIVED, KVM_MP_STATE_UNINITIALIZED,
};
use kvm_ioctls::{VcpuFd, VmFd};

use super::convert;
use crate::{
    Error, IoapicState, MpState, Msr, PicState, PlatformState, Result, VcpuEvents, VcpuState, Xcr,
};

/// IA32_TSC_DEADLINE: written last, once the TSC and the LAPIC's timer mode are set (KVM
/// ignores a deadline while the LAPIC is not in TSC-deadline mode).
const MSR_TSC_DEADLINE: u32 = 0x6e0;
/// IA32_TSC: written first among the MSRs.
const MSR_TSC: u32 = 0x10;

fn msr_list(entries: &[kvm_msr_entry]) -> Result<Msrs> {
    Msrs::from_entries(entries).map_err(|e| {
        Error::call(
            "building the MSR list",
            std::io::Error::other(format!("{e:?}")),
        )
    })
}

/// Reads every MSR of `indices` the vCPU has: KVM stops at the first one it cannot read, which
/// is then left out.
fn read_msrs(fd: &VcpuFd, indices: &[u32]) -> Result<Vec<Msr>> {
    let mut out = Vec::with_capacity(indices.len());
    let mut rest = indices;
    while !rest.is_empty() {
        let entries: Vec<kvm_msr_entry> = rest
            .iter()
            .map(|&index| kvm_msr_entry {
                index,
                ..Default::default()
            })
            .collect();
        let mut msrs = msr_list(&entries)?;
        let read = fd
            .get_msrs(&mut msrs)
            .map_err(|e| Error::call("KVM_GET_MSRS", e))?;
        out.extend(msrs.as_slice().iter().take(read).map(|m| Msr {
            index: m.index,
            data: m.data,
        }));
        if let Some(skipped) = rest.get(read) {
            log::debug!("MSR {skipped:#x} cannot be read; left out of the saved state");
        }
        rest = rest.get(read + 1..).unwrap_or(&[]);
    }
    Ok(out)
}

/// The order MSRs are written back in: the TSC first, the TSC deadline last.
fn restore_order(msrs: &[Msr]) -> Vec<Msr> {
    let mut sorted = msrs.to_vec();
    sorted.sort_by_key(|m| match m.index {
        MSR_TSC => 0,
        MSR_TSC_DEADLINE => 2,
        _ => 1,
    });
    sorted
}

fn mp_state_from_kvm(v: u32) -> Result<MpState> {
    Ok(match v {
        KVM_MP_STATE_RUNNABLE => MpState::Runnable,
        KVM_MP_STATE_UNINITIALIZED => MpState::Uninitialized,
        KVM_MP_STATE_INIT_RECEIVED => MpState::InitReceived,
        KVM_MP_STATE_HALTED => MpState::Halted,
        KVM_MP_STATE_SIPI_RECEIVED => MpState::SipiReceived,
        other => return Err(Error::BadState(format!("unknown KVM mp_state {other}"))),
    })
}

fn mp_state_to_kvm(s: MpState) -> u32 {
    match s {
        MpState::Runnable => KVM_MP_STATE_RUNNABLE,
        MpState::Uninitialized => KVM_MP_STATE_UNINITIALIZED,
        MpState::InitReceived => KVM_MP_STATE_INIT_RECEIVED,
        MpState::Halted => KVM_MP_STATE_HALTED,
        MpState::SipiReceived => KVM_MP_STATE_SIPI_RECEIVED,
    }
}

fn events_from_kvm(e: &kvm_vcpu_events) -> VcpuEvents {
    VcpuEvents {
        exception_injected: e.exception.injected,
        exception_nr: e.exception.nr,
        exception_has_error_code: e.exception.has_error_code,
        exception_pending: e.exception.pending,
        exception_error_code: e.exception.error_code,
        exception_has_payload: e.exception_has_payload,
        exception_payload: e.exception_payload,
        interrupt_injected: e.interrupt.injected,
        interrupt_nr: e.interrupt.nr,
        interrupt_soft: e.interrupt.soft,
        interrupt_shadow: e.interrupt.shadow,
        nmi_injected: e.nmi.injected,
        nmi_pending: e.nmi.pending,
        nmi_masked: e.nmi.masked,
        sipi_vector: e.sipi_vector,
        smi_smm: e.smi.smm,
        smi_pending: e.smi.pending,
        smi_inside_nmi: e.smi.smm_inside_nmi,
        smi_latched_init: e.smi.latched_init,
        triple_fault_pending: e.triple_fault.pending,
        flags: e.flags,
    }
}

fn events_to_kvm(e: &VcpuEvents) -> kvm_vcpu_events {
    let mut k = kvm_vcpu_events::default();
    k.exception.injected = e.exception_injected;
    k.exception.nr = e.exception_nr;
    k.exception.has_error_code = e.exception_has_error_code;
    k.exception.pending = e.exception_pending;
    k.exception.error_code = e.exception_error_code;
    k.exception_has_payload = e.exception_has_payload;
    k.exception_payload = e.exception_payload;
    k.interrupt.injected = e.interrupt_injected;
    k.interrupt.nr = e.interrupt_nr;
    k.interrupt.soft = e.interrupt_soft;
    k.interrupt.shadow = e.interrupt_shadow;
    k.nmi.injected = e.nmi_injected;
    k.nmi.pending = e.nmi_pending;
    k.nmi.masked = e.nmi_masked;
    k.sipi_vector = e.sipi_vector;
    k.smi.smm = e.smi_smm;
    k.smi.pending = e.smi_pending;
    k.smi.smm_inside_nmi = e.smi_inside_nmi;
    k.smi.latched_init = e.smi_latched_init;
    k.triple_fault.pending = e.triple_fault_pending;
    k.flags = e.flags;
    k
}

/// Saves a KVM vCPU. `msr_indices` is the host's list of MSRs KVM saves.
pub fn save_vcpu(fd: &VcpuFd, msr_indices: &[u32]) -> Result<VcpuState> {
    let regs = fd.get_regs().map_err(|e| Error::call("KVM_GET_REGS", e))?;
    let sregs = fd
        .get_sregs()
        .map_err(|e| Error::call("KVM_GET_SREGS", e))?;
    let xsave = fd
        .get_xsave()
        .map_err(|e| Error::call("KVM_GET_XSAVE", e))?;
    let xcrs = fd.get_xcrs().map_err(|e| Error::call("KVM_GET_XCRS", e))?;
    let lapic = fd
        .get_lapic()
        .map_err(|e| Error::call("KVM_GET_LAPIC", e))?;
    let events = fd
        .get_vcpu_events()
        .map_err(|e| Error::call("KVM_GET_VCPU_EVENTS", e))?;
    let mp = fd
        .get_mp_state()
        .map_err(|e| Error::call("KVM_GET_MP_STATE", e))?;
    let cpuid = fd
        .get_cpuid2(KVM_MAX_CPUID_ENTRIES)
        .map_err(|e| Error::call("KVM_GET_CPUID2", e))?;
    let count = usize::try_from(xcrs.nr_xcrs).unwrap_or(0);
    Ok(VcpuState {
        regs: convert::regs_from_kvm(&regs),
        sregs: convert::sregs_from_kvm(&sregs),
        interrupt_bitmap: sregs.interrupt_bitmap,
        xsave: xsave.region.to_vec(),
        xcrs: xcrs
            .xcrs
            .iter()
            .take(count)
            .map(|x| Xcr {
                index: x.xcr,
                value: x.value,
            })
            .collect(),
        msrs: read_msrs(fd, msr_indices)?,
        lapic: lapic.regs.iter().map(|&b| b as u8).collect(),
        events: events_from_kvm(&events),
        mp_state: mp_state_from_kvm(mp.mp_state)?,
        cpuid: cpuid
            .as_slice()
            .iter()
            .map(convert::cpuid_from_kvm)
            .collect(),
    })
}

/// Restores a KVM vCPU created just before (CPUID, registers, FPU/XSAVE, LAPIC, MSRs, events,
/// mp_state, in an order KVM accepts).
pub fn restore_vcpu(fd: &VcpuFd, s: &VcpuState) -> Result<()> {
    let kvm_cpuid: Vec<_> = s.cpuid.iter().map(convert::cpuid_to_kvm).collect();
    let cpuid = kvm_bindings::CpuId::from_entries(&kvm_cpuid)
        .map_err(|e| Error::BadState(format!("CPUID list: {e:?}")))?;
    fd.set_cpuid2(&cpuid)
        .map_err(|e| Error::call("KVM_SET_CPUID2", e))?;
    fd.set_mp_state(kvm_mp_state {
        mp_state: mp_state_to_kvm(s.mp_state),
    })
    .map_err(|e| Error::call("KVM_SET_MP_STATE", e))?;
    let mut base = fd
        .get_sregs()
        .map_err(|e| Error::call("KVM_GET_SREGS", e))?;
    base.interrupt_bitmap = s.interrupt_bitmap;
    fd.set_sregs(&convert::sregs_to_kvm(&s.sregs, &base))
        .map_err(|e| Error::call("KVM_SET_SREGS", e))?;
    fd.set_regs(&convert::regs_to_kvm(&s.regs))
        .map_err(|e| Error::call("KVM_SET_REGS", e))?;
    let mut xsave = kvm_xsave::default();
    if s.xsave.len() != xsave.region.len() {
        return Err(Error::BadState(format!(
            "XSAVE area of {} words, KVM's is {}",
            s.xsave.len(),
            xsave.region.len()
        )));
    }
    xsave.region.copy_from_slice(&s.xsave);
    // SAFETY: `xsave` is a plain kvm_xsave with no trailing FAM data, the size KVM_SET_XSAVE
    // reads.
    unsafe { fd.set_xsave(&xsave) }.map_err(|e| Error::call("KVM_SET_XSAVE", e))?;
    let mut xcrs = kvm_xcrs::default();
    if s.xcrs.len() > xcrs.xcrs.len() {
        return Err(Error::BadState(format!("{} XCRs", s.xcrs.len())));
    }
    xcrs.nr_xcrs = s.xcrs.len() as u32;
    for (dst, x) in xcrs.xcrs.iter_mut().zip(&s.xcrs) {
        dst.xcr = x.index;
        dst.value = x.value;
    }
    fd.set_xcrs(&xcrs)
        .map_err(|e| Error::call("KVM_SET_XCRS", e))?;
    let mut lapic = kvm_bindings::kvm_lapic_state::default();
    if s.lapic.len() != lapic.regs.len() {
        return Err(Error::BadState(format!(
            "LAPIC page of {} bytes, expected {}",
            s.lapic.len(),
            lapic.regs.len()
        )));
    }
    for (dst, src) in lapic.regs.iter_mut().zip(&s.lapic) {
        *dst = *src as libc::c_char;
    }
    fd.set_lapic(&lapic)
        .map_err(|e| Error::call("KVM_SET_LAPIC", e))?;
    let entries: Vec<kvm_msr_entry> = restore_order(&s.msrs)
        .iter()
        .map(|m| kvm_msr_entry {
            index: m.index,
            data: m.data,
            ..Default::default()
        })
        .collect();
    let set = fd
        .set_msrs(&msr_list(&entries)?)
        .map_err(|e| Error::call("KVM_SET_MSRS", e))?;
    if set != entries.len() {
        let bad = entries.get(set).map(|m| m.index).unwrap_or(0);
        return Err(Error::BadState(format!("MSR {bad:#x} was refused")));
    }
    fd.set_vcpu_events(&events_to_kvm(&s.events))
        .map_err(|e| Error::call("KVM_SET_VCPU_EVENTS", e))
}

fn pic_from_kvm(p: &kvm_pic_state) -> PicState {
    PicState {
        last_irr: p.last_irr,
        irr: p.irr,
        imr: p.imr,
        isr: p.isr,
        priority_add: p.priority_add,
        irq_base: p.irq_base,
        read_reg_select: p.read_reg_select,
        poll: p.poll,
        special_mask: p.special_mask,
        init_state: p.init_state,
        auto_eoi: p.auto_eoi,
        rotate_on_auto_eoi: p.rotate_on_auto_eoi,
        special_fully_nested_mode: p.special_fully_nested_mode,
        init4: p.init4,
        elcr: p.elcr,
        elcr_mask: p.elcr_mask,
    }
}

fn pic_to_kvm(p: &PicState) -> kvm_pic_state {
    kvm_pic_state {
        last_irr: p.last_irr,
        irr: p.irr,
        imr: p.imr,
        isr: p.isr,
        priority_add: p.priority_add,
        irq_base: p.irq_base,
        read_reg_select: p.read_reg_select,
        poll: p.poll,
        special_mask: p.special_mask,
        init_state: p.init_state,
        auto_eoi: p.auto_eoi,
        rotate_on_auto_eoi: p.rotate_on_auto_eoi,
        special_fully_nested_mode: p.special_fully_nested_mode,
        init4: p.init4,
        elcr: p.elcr,
        elcr_mask: p.elcr_mask,
    }
}

fn get_chip(fd: &VmFd, chip_id: u32) -> Result<kvm_irqchip> {
    let mut chip = kvm_irqchip {
        chip_id,
        ..Default::default()
    };
    fd.get_irqchip(&mut chip)
        .map_err(|e| Error::call("KVM_GET_IRQCHIP", e))?;
    Ok(chip)
}

/// Saves the PICs, the IOAPIC and the clock of a KVM VM.
pub fn save_platform(fd: &VmFd) -> Result<PlatformState> {
    let master = get_chip(fd, KVM_IRQCHIP_PIC_MASTER)?;
    let slave = get_chip(fd, KVM_IRQCHIP_PIC_SLAVE)?;
    let ioapic = get_chip(fd, KVM_IRQCHIP_IOAPIC)?;
    let clock = fd
        .get_clock()
        .map_err(|e| Error::call("KVM_GET_CLOCK", e))?;
    // SAFETY: KVM filled the union member that matches each chip_id asked for.
    let (master, slave, io) = unsafe { (master.chip.pic, slave.chip.pic, ioapic.chip.ioapic) };
    Ok(PlatformState {
        pic_master: pic_from_kvm(&master),
        pic_slave: pic_from_kvm(&slave),
        ioapic: IoapicState {
            base_address: io.base_address,
            ioregsel: io.ioregsel,
            id: io.id,
            irr: io.irr,
            // SAFETY: every redirection entry is a plain u64 (`bits` covers the whole union).
            redirtbl: io.redirtbl.iter().map(|r| unsafe { r.bits }).collect(),
        },
        clock_ns: clock.clock,
    })
}

/// Restores the PICs, the IOAPIC and the clock of a KVM VM (after KVM_CREATE_IRQCHIP).
pub fn restore_platform(fd: &VmFd, s: &PlatformState) -> Result<()> {
    let mut io = get_chip(fd, KVM_IRQCHIP_IOAPIC)?;
    // SAFETY: this chip is the IOAPIC, whose union member is `ioapic`.
    let ioapic = unsafe { &mut io.chip.ioapic };
    if s.ioapic.redirtbl.len() != ioapic.redirtbl.len() {
        return Err(Error::BadState(format!(
            "IOAPIC with {} pins, KVM's has {}",
            s.ioapic.redirtbl.len(),
            ioapic.redirtbl.len()
        )));
    }
    ioapic.base_address = s.ioapic.base_address;
    ioapic.ioregsel = s.ioapic.ioregsel;
    ioapic.id = s.ioapic.id;
    ioapic.irr = s.ioapic.irr;
    for (dst, &bits) in ioapic.redirtbl.iter_mut().zip(&s.ioapic.redirtbl) {
        dst.bits = bits;
    }
    for (chip_id, pic) in [
        (KVM_IRQCHIP_PIC_MASTER, &s.pic_master),
        (KVM_IRQCHIP_PIC_SLAVE, &s.pic_slave),
    ] {
        let mut chip = kvm_irqchip {
            chip_id,
            ..Default::default()
        };
        chip.chip.pic = pic_to_kvm(pic);
        fd.set_irqchip(&chip)
            .map_err(|e| Error::call("KVM_SET_IRQCHIP", e))?;
    }
    fd.set_irqchip(&io)
        .map_err(|e| Error::call("KVM_SET_IRQCHIP", e))?;
    let clock = kvm_clock_data {
        clock: s.clock_ns,
        ..Default::default()
    };
    fd.set_clock(&clock)
        .map_err(|e| Error::call("KVM_SET_CLOCK", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tsc_first_and_deadline_last() {
        let msrs = [
            Msr {
                index: MSR_TSC_DEADLINE,
                data: 5,
            },
            Msr {
                index: 0xc000_0081,
                data: 1,
            },
            Msr {
                index: MSR_TSC,
                data: 9,
            },
        ];
        let order: Vec<u32> = restore_order(&msrs).iter().map(|m| m.index).collect();
        assert_eq!(order, [MSR_TSC, 0xc000_0081, MSR_TSC_DEADLINE]);
    }

    #[test]
    fn events_and_mp_state_round_trip() {
        let e = VcpuEvents {
            exception_nr: 14,
            exception_error_code: 2,
            nmi_masked: 1,
            interrupt_shadow: 1,
            sipi_vector: 7,
            flags: 0x1f,
            ..Default::default()
        };
        assert_eq!(events_from_kvm(&events_to_kvm(&e)), e);
        for s in [
            MpState::Runnable,
            MpState::Uninitialized,
            MpState::InitReceived,
            MpState::Halted,
            MpState::SipiReceived,
        ] {
            assert_eq!(mp_state_from_kvm(mp_state_to_kvm(s)).unwrap(), s);
        }
        assert!(mp_state_from_kvm(99).is_err());
    }
}
