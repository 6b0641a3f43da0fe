//! Hypervisor-neutral x86_64 register, CPUID and exit types.

use serde::{Deserialize, Serialize};

/// Why `Vcpu::run` returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VcpuExit {
    /// The guest halted with nothing to wake it (only without an in-kernel LAPIC).
    Hlt,
    /// Triple fault: the hypervisor shut the vCPU down.
    TripleFault,
    /// The guest asked for a reset through a hypervisor system event.
    Reset,
    /// The guest asked to power off through a hypervisor system event.
    PowerOff,
    /// The run was interrupted by [`crate::kick_signal`].
    Interrupted,
}

/// Where an ioeventfd listens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoEventAddress {
    /// An I/O port.
    Pio(u64),
    /// A guest physical address.
    Mmio(u64),
}

/// Which guest writes to an ioeventfd's address signal it. The width is part of the match:
/// a `U32` datamatch only matches 4-byte writes of that value, a `U64` one only 8-byte writes
/// (a virtio-mmio QueueNotify is a 4-byte write, so it needs `U32`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Datamatch {
    /// Every write, whatever its width and value.
    Any,
    /// 2-byte writes of this value (a virtio-pci queue notification).
    U16(u16),
    /// 4-byte writes of this value.
    U32(u32),
    /// 8-byte writes of this value.
    U64(u64),
}

impl Datamatch {
    /// Whether a guest write of `data` (little-endian, `data.len()` bytes wide) matches.
    pub fn matches(&self, data: &[u8]) -> bool {
        match *self {
            Datamatch::Any => true,
            Datamatch::U16(v) => data == v.to_le_bytes(),
            Datamatch::U32(v) => data == v.to_le_bytes(),
            Datamatch::U64(v) => data == v.to_le_bytes(),
        }
    }
}

/// A message-signalled interrupt as a device writes it (MSI or an MSI-X table entry): the
/// address (the LAPIC window, with the destination in it) and the data (vector, delivery).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsiMessage {
    /// Message address (64 bits; on x86 the low 32 bits lie in the 0xfee00000 window, the high
    /// bits carry the extended destination for x2APIC).
    pub address: u64,
    /// Message data.
    pub data: u32,
}

/// General-purpose registers.
#[allow(missing_docs)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Regs {
    pub rax: u64,
    pub rbx: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub rsp: u64,
    pub rbp: u64,
    pub r8: u64,
    pub r9: u64,
    pub r10: u64,
    pub r11: u64,
    pub r12: u64,
    pub r13: u64,
    pub r14: u64,
    pub r15: u64,
    pub rip: u64,
    pub rflags: u64,
}

/// A segment register in its unpacked (descriptor cache) form.
#[allow(missing_docs)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Segment {
    pub base: u64,
    pub limit: u32,
    pub selector: u16,
    pub type_: u8,
    pub present: u8,
    pub dpl: u8,
    pub db: u8,
    pub s: u8,
    pub l: u8,
    pub g: u8,
    pub avl: u8,
    pub unusable: u8,
}

/// A descriptor-table register (GDTR, IDTR).
#[allow(missing_docs)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DescriptorTable {
    pub base: u64,
    pub limit: u16,
}

/// Segment, control and descriptor-table registers.
#[allow(missing_docs)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpecialRegs {
    pub cs: Segment,
    pub ds: Segment,
    pub es: Segment,
    pub fs: Segment,
    pub gs: Segment,
    pub ss: Segment,
    pub tr: Segment,
    pub ldt: Segment,
    pub gdt: DescriptorTable,
    pub idt: DescriptorTable,
    pub cr0: u64,
    pub cr2: u64,
    pub cr3: u64,
    pub cr4: u64,
    pub cr8: u64,
    pub efer: u64,
    pub apic_base: u64,
}

/// The FPU control state petrel sets at boot.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FpuState {
    /// x87 control word.
    pub fcw: u16,
    /// SSE control and status.
    pub mxcsr: u32,
}

/// A model-specific register and its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Msr {
    /// MSR number.
    pub index: u32,
    /// Value.
    pub data: u64,
}

/// One CPUID leaf/subleaf.
#[allow(missing_docs)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuidEntry {
    pub function: u32,
    pub index: u32,
    /// Set when `index` selects a subleaf.
    pub flags: u32,
    pub eax: u32,
    pub ebx: u32,
    pub ecx: u32,
    pub edx: u32,
}

/// `CpuidEntry::flags` bit: the leaf has subleaves selected by ECX.
pub const CPUID_FLAG_SIGNIFICANT_INDEX: u32 = 1;

/// The 1 KiB local APIC register page.
#[derive(Clone, PartialEq, Eq)]
pub struct LapicState(pub [u8; 1024]);

impl Default for LapicState {
    fn default() -> Self {
        LapicState([0; 1024])
    }
}

impl std::fmt::Debug for LapicState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LapicState(..)")
    }
}

impl LapicState {
    /// Reads the 32-bit register at byte offset `reg`.
    pub fn get(&self, reg: usize) -> u32 {
        let mut b = [0u8; 4];
        if let Some(s) = self.0.get(reg..reg + 4) {
            b.copy_from_slice(s);
        }
        u32::from_le_bytes(b)
    }

    /// Writes the 32-bit register at byte offset `reg`.
    pub fn set(&mut self, reg: usize, value: u32) {
        if let Some(s) = self.0.get_mut(reg..reg + 4) {
            s.copy_from_slice(&value.to_le_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Datamatch;

    #[test]
    fn datamatch_compares_width_and_value() {
        assert!(Datamatch::Any.matches(&[1]));
        assert!(Datamatch::Any.matches(&[1, 0, 0, 0, 0, 0, 0, 0]));
        assert!(Datamatch::U32(1).matches(&[1, 0, 0, 0]));
        assert!(!Datamatch::U32(1).matches(&[2, 0, 0, 0]));
        assert!(!Datamatch::U32(1).matches(&[1, 0]));
        assert!(!Datamatch::U32(1).matches(&[1, 0, 0, 0, 0, 0, 0, 0]));
        assert!(Datamatch::U64(1).matches(&[1, 0, 0, 0, 0, 0, 0, 0]));
        assert!(!Datamatch::U64(1).matches(&[1, 0, 0, 0]));
    }
}
