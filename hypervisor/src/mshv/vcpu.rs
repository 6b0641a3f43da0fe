//! An MSHV vCPU: register access, the run loop and the kick.
//!
//! The kick: the signal handler sets a per-thread flag that `run` checks before entering the
//! guest, and the signal itself makes `MSHV_RUN_VP` return `EINTR` when it arrives while the
//! guest runs. MSHV has no `immediate_exit`, so a signal landing between the flag check and
//! the ioctl's entry is only seen at the next exit (a window of a few instructions).

use std::cell::{Cell, RefCell};
use std::sync::Arc;

use mshv_bindings::{
    mshv_root_hvcall, msr_entry, FloatingPointUnit, LapicState as MshvLapic, Msrs,
    HVCALL_REGISTER_INTERCEPT_RESULT,
};
use mshv_ioctls::VcpuFd;

use super::cpuid;
use super::intercept::{self, Vp};
use super::{convert, mshv_err, Dispatch, VmShared};
use crate::emulator::GuestRam;
use crate::{
    CpuState, CpuidEntry, Error, FpuState, IoHandler, LapicState, Msr, Regs, Result, SpecialRegs,
    Vcpu, VcpuExit,
};

thread_local! {
    /// Set by the kick signal on this thread; cleared when `run` reports `Interrupted`.
    static KICKED: Cell<bool> = const { Cell::new(false) };
}

extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // `try_with` fails only while the thread is being torn down. A Cell write is
    // async-signal-safe.
    let _ = KICKED.try_with(|k| k.set(true));
}

/// One MSHV virtual processor.
pub struct MshvVcpu {
    fd: VcpuFd,
    /// Its index in the partition (the hypervisor's VP index).
    index: u32,
    vm: Arc<VmShared>,
    /// The CPUID table (`set_cpuid` takes `&self`; only this vCPU's thread uses it).
    cpuid: RefCell<Vec<CpuidEntry>>,
}

impl MshvVcpu {
    pub(super) fn new(fd: VcpuFd, index: u32, vm: Arc<VmShared>) -> Self {
        MshvVcpu {
            fd,
            index,
            vm,
            cpuid: RefCell::new(Vec::new()),
        }
    }
}

impl Vp for MshvVcpu {
    fn ram(&self) -> &dyn GuestRam {
        self.vm.as_ref()
    }

    fn cpuid(&self, leaf: u32, subleaf: u32) -> Option<CpuidEntry> {
        intercept::cpuid_lookup(&self.cpuid.borrow(), leaf, subleaf).copied()
    }

    fn set_rip_rax(&self, rip: u64, rax: u64) -> Result<()> {
        use mshv_bindings::{
            hv_register_assoc, hv_register_name_HV_X64_REGISTER_RAX,
            hv_register_name_HV_X64_REGISTER_RIP, hv_register_value,
        };
        let regs = [
            (hv_register_name_HV_X64_REGISTER_RIP, rip),
            (hv_register_name_HV_X64_REGISTER_RAX, rax),
        ]
        .map(|(name, v)| hv_register_assoc {
            name,
            value: hv_register_value { reg64: v },
            ..Default::default()
        });
        self.fd
            .set_reg(&regs)
            .map_err(|e| mshv_err("setting RIP and RAX", e))
    }
}

impl Vcpu for MshvVcpu {
    fn prepare_thread(&mut self) -> Result<()> {
        crate::kick::prepare_thread(kick_handler)
    }

    fn save_state(&self) -> Result<crate::VcpuState> {
        Err(super::unsupported("saving a vCPU's state"))
    }

    fn restore_state(&self, _state: &crate::VcpuState) -> Result<()> {
        Err(super::unsupported("restoring a vCPU's state"))
    }

    fn run(&mut self, io: &dyn IoHandler) -> Result<VcpuExit> {
        let dispatch = Dispatch { vm: &self.vm, io };
        loop {
            if KICKED.with(|k| k.replace(false)) {
                return Ok(VcpuExit::Interrupted);
            }
            match self.fd.run() {
                Ok(msg) => {
                    if let Some(exit) = intercept::handle(&msg, self, &dispatch)? {
                        return Ok(exit);
                    }
                }
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                    KICKED.with(|k| k.set(false));
                    return Ok(VcpuExit::Interrupted);
                }
                Err(e) => return Err(mshv_err("MSHV_RUN_VP", e)),
            }
        }
    }
}

impl CpuState for MshvVcpu {
    fn regs(&self) -> Result<Regs> {
        let r = self
            .fd
            .get_regs()
            .map_err(|e| mshv_err("getting the registers", e))?;
        Ok(convert::regs_from_mshv(&r))
    }

    fn set_regs(&self, regs: &Regs) -> Result<()> {
        self.fd
            .set_regs(&convert::regs_to_mshv(regs))
            .map_err(|e| mshv_err("setting the registers", e))
    }

    fn sregs(&self) -> Result<SpecialRegs> {
        let s = self
            .fd
            .get_sregs()
            .map_err(|e| mshv_err("getting the special registers", e))?;
        Ok(convert::sregs_from_mshv(&s))
    }

    fn set_sregs(&self, sregs: &SpecialRegs) -> Result<()> {
        let base = self
            .fd
            .get_sregs()
            .map_err(|e| mshv_err("getting the special registers", e))?;
        self.fd
            .set_sregs(&convert::sregs_to_mshv(sregs, &base))
            .map_err(|e| mshv_err("setting the special registers", e))
    }

    fn set_fpu(&self, fpu: &FpuState) -> Result<()> {
        let f = FloatingPointUnit {
            fcw: fpu.fcw,
            mxcsr: fpu.mxcsr,
            ..Default::default()
        };
        self.fd
            .set_fpu(&f)
            .map_err(|e| mshv_err("setting the FPU state", e))
    }

    fn set_msrs(&self, msrs: &[Msr]) -> Result<()> {
        if let Some(m) = msrs
            .iter()
            .find(|m| mshv_bindings::msr_to_hv_reg_name(m.index).is_err())
        {
            return Err(Error::call(
                "setting MSRs",
                std::io::Error::other(format!("MSR {:#x} has no MSHV register", m.index)),
            ));
        }
        let entries: Vec<msr_entry> = msrs
            .iter()
            .map(|m| msr_entry {
                index: m.index,
                data: m.data,
                ..Default::default()
            })
            .collect();
        let list = Msrs::from_entries(&entries).map_err(|e| {
            Error::call(
                "building the MSR list",
                std::io::Error::other(format!("{e:?}")),
            )
        })?;
        self.fd
            .set_msrs(&list)
            .map_err(|e| mshv_err("setting MSRs", e))
            .map(|_| ())
    }

    /// Registered with the hypervisor as this vCPU's CPUID results, leaf by leaf (see
    /// [`super::cpuid`]; leaves not in the table keep the hypervisor's values). Also kept to
    /// answer a CPUID intercept, should one arrive.
    fn set_cpuid(&self, entries: &[CpuidEntry]) -> Result<()> {
        for r in cpuid::results(entries) {
            let input = cpuid::hvcall_input(self.index, &r);
            let mut args = mshv_root_hvcall {
                code: HVCALL_REGISTER_INTERCEPT_RESULT as u16,
                in_sz: std::mem::size_of_val(&input) as u16,
                in_ptr: std::ptr::addr_of!(input) as u64,
                ..Default::default()
            };
            self.fd.hvcall(&mut args).map_err(|e| {
                Error::call(
                    "registering a CPUID result",
                    std::io::Error::other(format!(
                        "leaf {:#x} subleaf {}: errno {}",
                        r.leaf,
                        r.subleaf,
                        e.errno()
                    )),
                )
            })?;
        }
        self.cpuid.replace(entries.to_vec());
        Ok(())
    }

    fn lapic(&self) -> Result<LapicState> {
        let l = self
            .fd
            .get_lapic()
            .map_err(|e| mshv_err("getting the LAPIC state", e))?;
        let mut state = LapicState::default();
        for (dst, src) in state.0.iter_mut().zip(l.regs.iter()) {
            *dst = *src as u8;
        }
        Ok(state)
    }

    fn set_lapic(&self, lapic: &LapicState) -> Result<()> {
        let mut l = MshvLapic::default();
        for (dst, src) in l.regs.iter_mut().zip(lapic.0.iter()) {
            *dst = *src as libc::c_char;
        }
        self.fd
            .set_lapic(&l)
            .map_err(|e| mshv_err("setting the LAPIC state", e))
    }
}
