//! A KVM vCPU: register access, the run loop and the kick mechanism.

use std::cell::Cell;

use kvm_bindings::{
    kvm_fpu, kvm_lapic_state, kvm_msr_entry, kvm_run, CpuId, Msrs, KVM_SYSTEM_EVENT_RESET,
    KVM_SYSTEM_EVENT_SHUTDOWN,
};
use kvm_ioctls::{VcpuExit as KvmExit, VcpuFd};

use super::convert;
use crate::{
    CpuState, CpuidEntry, Error, FpuState, IoHandler, LapicState, Msr, Regs, Result, SpecialRegs,
    Vcpu, VcpuExit,
};

thread_local! {
    /// The `kvm_run` page of the vCPU that runs on this thread, for the kick signal handler.
    static KVM_RUN: Cell<*mut kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // `try_with` fails only while the thread is being torn down; then there is no vCPU to stop.
    let _ = KVM_RUN.try_with(|run| {
        let ptr = run.get();
        if !ptr.is_null() {
            // SAFETY: the pointer was set by `prepare_thread` on this very thread to the kvm_run
            // page of the vCPU it runs, and is cleared before that vCPU is dropped. A volatile
            // byte write is async-signal-safe.
            unsafe { std::ptr::addr_of_mut!((*ptr).immediate_exit).write_volatile(1) };
        }
    });
}

/// One KVM vCPU.
pub struct KvmVcpu {
    fd: VcpuFd,
    /// The MSRs a saved state holds.
    msrs: std::sync::Arc<Vec<u32>>,
}

impl KvmVcpu {
    pub(super) fn new(fd: VcpuFd, msrs: std::sync::Arc<Vec<u32>>) -> Self {
        KvmVcpu { fd, msrs }
    }

    fn rip(&self) -> u64 {
        self.fd.get_regs().map(|r| r.rip).unwrap_or(0)
    }
}

impl Drop for KvmVcpu {
    fn drop(&mut self) {
        let mine = self.fd.get_kvm_run() as *mut kvm_run;
        let _ = KVM_RUN.try_with(|run| {
            if run.get() == mine {
                run.set(std::ptr::null_mut());
            }
        });
    }
}

/// What one KVM_RUN came back with, once the borrow of the run page has ended.
enum Step {
    Continue,
    Exit(VcpuExit),
    Internal(u32),
    FailEntry(u64),
    Unhandled(String),
}

impl Vcpu for KvmVcpu {
    fn prepare_thread(&mut self) -> Result<()> {
        let ptr = self.fd.get_kvm_run() as *mut kvm_run;
        KVM_RUN.with(|run| run.set(ptr));
        crate::kick::prepare_thread(kick_handler)
    }

    fn save_state(&self) -> Result<crate::VcpuState> {
        super::state::save_vcpu(&self.fd, &self.msrs)
    }

    fn restore_state(&self, state: &crate::VcpuState) -> Result<()> {
        super::state::restore_vcpu(&self.fd, state)
    }

    fn run(&mut self, io: &dyn IoHandler) -> Result<VcpuExit> {
        loop {
            let step = match self.fd.run() {
                Ok(KvmExit::IoIn(port, data)) => {
                    io.pio_read(port, data);
                    Step::Continue
                }
                Ok(KvmExit::IoOut(port, data)) => {
                    io.pio_write(port, data);
                    Step::Continue
                }
                Ok(KvmExit::MmioRead(addr, data)) => {
                    io.mmio_read(addr, data);
                    Step::Continue
                }
                Ok(KvmExit::MmioWrite(addr, data)) => {
                    io.mmio_write(addr, data);
                    Step::Continue
                }
                Ok(KvmExit::Hlt) => Step::Exit(VcpuExit::Hlt),
                Ok(KvmExit::Shutdown) => Step::Exit(VcpuExit::TripleFault),
                Ok(KvmExit::SystemEvent(KVM_SYSTEM_EVENT_RESET, _)) => Step::Exit(VcpuExit::Reset),
                Ok(KvmExit::SystemEvent(KVM_SYSTEM_EVENT_SHUTDOWN, _)) => {
                    Step::Exit(VcpuExit::PowerOff)
                }
                Ok(KvmExit::Intr) => Step::Exit(VcpuExit::Interrupted),
                Ok(KvmExit::InternalError) => Step::Internal(
                    // SAFETY: on KVM_EXIT_INTERNAL_ERROR the `internal` member of the exit
                    // union is the one KVM filled in.
                    unsafe { self.fd.get_kvm_run().__bindgen_anon_1.internal.suberror },
                ),
                Ok(KvmExit::FailEntry(reason, _)) => Step::FailEntry(reason),
                Ok(other) => Step::Unhandled(format!("{other:?}")),
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                    Step::Exit(VcpuExit::Interrupted)
                }
                Err(e) => return Err(Error::call("KVM_RUN", e)),
            };
            match step {
                Step::Continue => continue,
                Step::Exit(exit) => {
                    if exit == VcpuExit::Interrupted {
                        self.fd.set_kvm_immediate_exit(0);
                    }
                    return Ok(exit);
                }
                Step::Internal(suberror) => {
                    return Err(Error::Internal {
                        suberror,
                        rip: self.rip(),
                    })
                }
                Step::FailEntry(reason) => {
                    return Err(Error::FailEntry {
                        reason,
                        rip: self.rip(),
                    })
                }
                Step::Unhandled(what) => {
                    return Err(Error::UnhandledExit {
                        what,
                        rip: self.rip(),
                    })
                }
            }
        }
    }
}

impl CpuState for KvmVcpu {
    fn regs(&self) -> Result<Regs> {
        let r = self
            .fd
            .get_regs()
            .map_err(|e| Error::call("KVM_GET_REGS", e))?;
        Ok(convert::regs_from_kvm(&r))
    }

    fn set_regs(&self, regs: &Regs) -> Result<()> {
        self.fd
            .set_regs(&convert::regs_to_kvm(regs))
            .map_err(|e| Error::call("KVM_SET_REGS", e))
    }

    fn sregs(&self) -> Result<SpecialRegs> {
        let s = self
            .fd
            .get_sregs()
            .map_err(|e| Error::call("KVM_GET_SREGS", e))?;
        Ok(convert::sregs_from_kvm(&s))
    }

    fn set_sregs(&self, sregs: &SpecialRegs) -> Result<()> {
        let base = self
            .fd
            .get_sregs()
            .map_err(|e| Error::call("KVM_GET_SREGS", e))?;
        self.fd
            .set_sregs(&convert::sregs_to_kvm(sregs, &base))
            .map_err(|e| Error::call("KVM_SET_SREGS", e))
    }

    fn set_fpu(&self, fpu: &FpuState) -> Result<()> {
        let f = kvm_fpu {
            fcw: fpu.fcw,
            mxcsr: fpu.mxcsr,
            ..Default::default()
        };
        self.fd
            .set_fpu(&f)
            .map_err(|e| Error::call("KVM_SET_FPU", e))
    }

    fn set_msrs(&self, msrs: &[Msr]) -> Result<()> {
        let entries: Vec<kvm_msr_entry> = msrs
            .iter()
            .map(|m| kvm_msr_entry {
                index: m.index,
                data: m.data,
                ..Default::default()
            })
            .collect();
        let kvm_msrs = Msrs::from_entries(&entries).map_err(|e| {
            Error::call(
                "building the MSR list",
                std::io::Error::other(format!("{e:?}")),
            )
        })?;
        let set = self
            .fd
            .set_msrs(&kvm_msrs)
            .map_err(|e| Error::call("KVM_SET_MSRS", e))?;
        if set != entries.len() {
            let bad = entries.get(set).map(|m| m.index).unwrap_or(0);
            return Err(Error::call(
                "KVM_SET_MSRS",
                std::io::Error::other(format!("MSR {bad:#x} was refused")),
            ));
        }
        Ok(())
    }

    fn set_cpuid(&self, entries: &[CpuidEntry]) -> Result<()> {
        let kvm: Vec<_> = entries.iter().map(convert::cpuid_to_kvm).collect();
        let cpuid = CpuId::from_entries(&kvm).map_err(|e| {
            Error::call(
                "building the CPUID list",
                std::io::Error::other(format!("{e:?}")),
            )
        })?;
        self.fd
            .set_cpuid2(&cpuid)
            .map_err(|e| Error::call("KVM_SET_CPUID2", e))
    }

    fn lapic(&self) -> Result<LapicState> {
        let l = self
            .fd
            .get_lapic()
            .map_err(|e| Error::call("KVM_GET_LAPIC", e))?;
        let mut state = LapicState::default();
        for (dst, src) in state.0.iter_mut().zip(l.regs.iter()) {
            *dst = *src as u8;
        }
        Ok(state)
    }

    fn set_lapic(&self, lapic: &LapicState) -> Result<()> {
        let mut l = kvm_lapic_state::default();
        for (dst, src) in l.regs.iter_mut().zip(lapic.0.iter()) {
            *dst = *src as libc::c_char;
        }
        self.fd
            .set_lapic(&l)
            .map_err(|e| Error::call("KVM_SET_LAPIC", e))
    }
}
