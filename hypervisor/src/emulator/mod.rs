//! An x86 instruction emulator for MMIO, for backends whose hypervisor does not decode the
//! instruction that touched an unmapped guest-physical address (MSHV).
//!
//! Decoding is done by `iced-x86`; the semantics are ours. The emulator sees the vCPU through
//! the small [`EmulatorCpu`] trait (registers, flags, mode, paging registers and guest RAM) and
//! sends every access that does not land in guest RAM to an [`IoHandler`] as MMIO, so it can be
//! tested without a hypervisor.
//!
//! Supported: `mov` between memory and registers or immediates (1/2/4/8 bytes, including
//! `moffs` forms), `movzx`/`movsx`/`movsxd`, `add`/`sub`/`and`/`or`/`xor`/`cmp`/`test` with a
//! memory operand (RFLAGS as the hardware computes them), and `stos`/`lods`/`movs` with or
//! without `rep`, in 16-, 32- and 64-bit code with any address size. Linear addresses are
//! translated by our own page walk ([`paging`]). Anything else is an [`EmuError`] naming the
//! instruction bytes and RIP.

mod alu;
mod exec;
pub mod paging;
mod state;

#[cfg(test)]
pub(crate) mod tests;

use std::fmt;

pub use paging::Paging;
pub use state::{GuestRam, StateCpu};

use crate::IoHandler;

/// The longest x86 instruction.
pub const MAX_INSN_LEN: usize = 15;

/// A general-purpose register, numbered as in the instruction encoding.
#[allow(missing_docs)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Gpr {
    Rax = 0,
    Rcx,
    Rdx,
    Rbx,
    Rsp,
    Rbp,
    Rsi,
    Rdi,
    R8,
    R9,
    R10,
    R11,
    R12,
    R13,
    R14,
    R15,
}

impl Gpr {
    /// All sixteen, in encoding order.
    pub const ALL: [Gpr; 16] = [
        Gpr::Rax,
        Gpr::Rcx,
        Gpr::Rdx,
        Gpr::Rbx,
        Gpr::Rsp,
        Gpr::Rbp,
        Gpr::Rsi,
        Gpr::Rdi,
        Gpr::R8,
        Gpr::R9,
        Gpr::R10,
        Gpr::R11,
        Gpr::R12,
        Gpr::R13,
        Gpr::R14,
        Gpr::R15,
    ];

    /// The register with encoding number `n` (0..16).
    pub fn from_index(n: usize) -> Option<Gpr> {
        Self::ALL.get(n).copied()
    }
}

/// A segment register.
#[allow(missing_docs)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seg {
    Es,
    Cs,
    Ss,
    Ds,
    Fs,
    Gs,
}

/// The default operand/address size of the code the vCPU runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CpuMode {
    /// Real mode or 16-bit protected/compatibility code.
    Bits16,
    /// 32-bit protected or compatibility code.
    Bits32,
    /// 64-bit long mode.
    Bits64,
}

impl CpuMode {
    /// 16, 32 or 64.
    pub fn bitness(self) -> u32 {
        match self {
            CpuMode::Bits16 => 16,
            CpuMode::Bits32 => 32,
            CpuMode::Bits64 => 64,
        }
    }
}

/// The vCPU as the emulator sees it.
pub trait EmulatorCpu {
    /// A general-purpose register (all 64 bits).
    fn reg(&self, r: Gpr) -> u64;
    /// Sets a general-purpose register (all 64 bits).
    fn set_reg(&mut self, r: Gpr, value: u64);
    /// The instruction pointer.
    fn rip(&self) -> u64;
    /// Sets the instruction pointer.
    fn set_rip(&mut self, rip: u64);
    /// RFLAGS.
    fn rflags(&self) -> u64;
    /// Sets RFLAGS.
    fn set_rflags(&mut self, rflags: u64);
    /// The default operand size of the running code.
    fn mode(&self) -> CpuMode;
    /// CR0, CR3, CR4 and EFER, for the page walk.
    fn paging(&self) -> Paging;
    /// The base of a segment (ignored for all but FS/GS in 64-bit mode).
    fn segment_base(&self, seg: Seg) -> u64;
    /// Reads guest RAM at `gpa`; false when `gpa..gpa + len` is not (entirely) RAM.
    fn read_phys(&self, gpa: u64, data: &mut [u8]) -> bool;
    /// Writes guest RAM at `gpa`; false when `gpa..gpa + len` is not (entirely) RAM.
    fn write_phys(&mut self, gpa: u64, data: &[u8]) -> bool;
}

/// Why an instruction could not be emulated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EmuError {
    /// The bytes do not decode to a valid instruction.
    Decode {
        /// Instruction pointer.
        rip: u64,
        /// The bytes at RIP.
        bytes: Vec<u8>,
    },
    /// A valid instruction the emulator does not implement (for MMIO).
    Unsupported {
        /// Instruction pointer.
        rip: u64,
        /// The instruction's bytes.
        bytes: Vec<u8>,
        /// What it is, e.g. `Imul` or `Mov with a segment register`.
        what: String,
    },
    /// A linear address has no valid translation in the guest's page tables.
    PageFault {
        /// Instruction pointer.
        rip: u64,
        /// The linear address.
        addr: u64,
    },
    /// The instruction bytes at RIP could not be fetched from guest RAM.
    Fetch {
        /// Instruction pointer.
        rip: u64,
    },
}

fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

impl fmt::Display for EmuError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EmuError::Decode { rip, bytes } => write!(
                f,
                "cannot decode the instruction at rip {rip:#x} (bytes {})",
                hex(bytes)
            ),
            EmuError::Unsupported { rip, bytes, what } => write!(
                f,
                "cannot emulate MMIO by {what} at rip {rip:#x} (bytes {})",
                hex(bytes)
            ),
            EmuError::PageFault { rip, addr } => write!(
                f,
                "no translation for linear address {addr:#x} (instruction at rip {rip:#x})"
            ),
            EmuError::Fetch { rip } => {
                write!(f, "cannot fetch the instruction at rip {rip:#x}")
            }
        }
    }
}

impl std::error::Error for EmuError {}

impl EmuError {
    /// The instruction pointer of the failing instruction.
    pub fn rip(&self) -> u64 {
        match self {
            EmuError::Decode { rip, .. }
            | EmuError::Unsupported { rip, .. }
            | EmuError::PageFault { rip, .. }
            | EmuError::Fetch { rip } => *rip,
        }
    }
}

/// All-ones of `size` bytes (1, 2, 4 or 8).
pub fn size_mask(size: usize) -> u64 {
    alu::mask(size)
}

pub use exec::{string_io, MAX_REP_ITERATIONS};

/// Emulates one instruction at the vCPU's RIP and advances RIP past it (a `rep` instruction
/// may stop early with RIP unchanged and rCX > 0: it resumes on the next entry).
///
/// `insn` are the instruction bytes the hypervisor supplied (possibly fewer than the
/// instruction's length, or none); missing bytes are fetched from guest memory at CS:RIP.
pub fn emulate(cpu: &mut dyn EmulatorCpu, io: &dyn IoHandler, insn: &[u8]) -> Result<(), EmuError> {
    let rip = cpu.rip();
    let mode = cpu.mode();
    let decoded = match exec::decode(mode, rip, insn) {
        Some(d) => d,
        None => {
            let mut bytes = [0u8; MAX_INSN_LEN];
            let n = exec::fetch(cpu, &mut bytes);
            if n == 0 {
                return Err(EmuError::Fetch { rip });
            }
            let fetched = bytes.get(..n).unwrap_or(&[]);
            exec::decode(mode, rip, fetched).ok_or_else(|| EmuError::Decode {
                rip,
                bytes: fetched.to_vec(),
            })?
        }
    };
    exec::execute(cpu, io, &decoded)
}
