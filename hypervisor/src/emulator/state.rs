//! [`StateCpu`]: an [`EmulatorCpu`] over petrel's neutral register types and a guest-RAM
//! accessor, used by the MSHV backend (registers fetched once per intercept, written back
//! after emulation) and by the tests.

use super::paging::{CR0_PE, EFER_LMA};
use super::{CpuMode, EmulatorCpu, Gpr, Paging, Seg};
use crate::{Regs, SpecialRegs};

/// Guest RAM by guest-physical address.
pub trait GuestRam {
    /// Reads `data.len()` bytes at `gpa`; false if the range is not entirely RAM.
    fn read(&self, gpa: u64, data: &mut [u8]) -> bool;
    /// Writes `data` at `gpa`; false if the range is not entirely RAM.
    fn write(&self, gpa: u64, data: &[u8]) -> bool;
}

/// A vCPU's registers plus its guest RAM.
pub struct StateCpu<'a> {
    /// General-purpose registers, RIP and RFLAGS (updated by emulation).
    pub regs: Regs,
    /// Segment and control registers (read only).
    pub sregs: SpecialRegs,
    ram: &'a dyn GuestRam,
}

impl<'a> StateCpu<'a> {
    /// Wraps a register snapshot and the guest's RAM.
    pub fn new(regs: Regs, sregs: SpecialRegs, ram: &'a dyn GuestRam) -> Self {
        StateCpu { regs, sregs, ram }
    }

    fn gpr_mut(&mut self, r: Gpr) -> &mut u64 {
        let g = &mut self.regs;
        match r {
            Gpr::Rax => &mut g.rax,
            Gpr::Rcx => &mut g.rcx,
            Gpr::Rdx => &mut g.rdx,
            Gpr::Rbx => &mut g.rbx,
            Gpr::Rsp => &mut g.rsp,
            Gpr::Rbp => &mut g.rbp,
            Gpr::Rsi => &mut g.rsi,
            Gpr::Rdi => &mut g.rdi,
            Gpr::R8 => &mut g.r8,
            Gpr::R9 => &mut g.r9,
            Gpr::R10 => &mut g.r10,
            Gpr::R11 => &mut g.r11,
            Gpr::R12 => &mut g.r12,
            Gpr::R13 => &mut g.r13,
            Gpr::R14 => &mut g.r14,
            Gpr::R15 => &mut g.r15,
        }
    }
}

/// The code's default size from CR0.PE, EFER.LMA and the CS descriptor.
pub fn mode_of(sregs: &SpecialRegs) -> CpuMode {
    if sregs.cr0 & CR0_PE == 0 {
        CpuMode::Bits16
    } else if sregs.efer & EFER_LMA != 0 && sregs.cs.l != 0 {
        CpuMode::Bits64
    } else if sregs.cs.db != 0 {
        CpuMode::Bits32
    } else {
        CpuMode::Bits16
    }
}

impl EmulatorCpu for StateCpu<'_> {
    fn reg(&self, r: Gpr) -> u64 {
        let g = &self.regs;
        match r {
            Gpr::Rax => g.rax,
            Gpr::Rcx => g.rcx,
            Gpr::Rdx => g.rdx,
            Gpr::Rbx => g.rbx,
            Gpr::Rsp => g.rsp,
            Gpr::Rbp => g.rbp,
            Gpr::Rsi => g.rsi,
            Gpr::Rdi => g.rdi,
            Gpr::R8 => g.r8,
            Gpr::R9 => g.r9,
            Gpr::R10 => g.r10,
            Gpr::R11 => g.r11,
            Gpr::R12 => g.r12,
            Gpr::R13 => g.r13,
            Gpr::R14 => g.r14,
            Gpr::R15 => g.r15,
        }
    }

    fn set_reg(&mut self, r: Gpr, value: u64) {
        *self.gpr_mut(r) = value;
    }

    fn rip(&self) -> u64 {
        self.regs.rip
    }

    fn set_rip(&mut self, rip: u64) {
        self.regs.rip = rip;
    }

    fn rflags(&self) -> u64 {
        self.regs.rflags
    }

    fn set_rflags(&mut self, rflags: u64) {
        self.regs.rflags = rflags;
    }

    fn mode(&self) -> CpuMode {
        mode_of(&self.sregs)
    }

    fn paging(&self) -> Paging {
        Paging {
            cr0: self.sregs.cr0,
            cr3: self.sregs.cr3,
            cr4: self.sregs.cr4,
            efer: self.sregs.efer,
        }
    }

    fn segment_base(&self, seg: Seg) -> u64 {
        let s = &self.sregs;
        match seg {
            Seg::Es => s.es.base,
            Seg::Cs => s.cs.base,
            Seg::Ss => s.ss.base,
            Seg::Ds => s.ds.base,
            Seg::Fs => s.fs.base,
            Seg::Gs => s.gs.base,
        }
    }

    fn read_phys(&self, gpa: u64, data: &mut [u8]) -> bool {
        self.ram.read(gpa, data)
    }

    fn write_phys(&mut self, gpa: u64, data: &[u8]) -> bool {
        self.ram.write(gpa, data)
    }
}
