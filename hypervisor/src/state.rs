//! Hypervisor-neutral saved state of a vCPU and of a VM's platform (in-kernel interrupt
//! controllers, guest clock): what a snapshot or a migration carries. Every field is in an
//! architectural (x86) form, not a backend's ioctl layout, so a backend converts on its side
//! and the VMM never looks at which backend produced it.

use serde::{Deserialize, Serialize};

use crate::{CpuidEntry, Msr, Regs, SpecialRegs};

/// Exceptions, interrupts, NMIs and SMIs in flight on a vCPU (Intel SDM "event injection").
#[allow(missing_docs)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VcpuEvents {
    pub exception_injected: u8,
    pub exception_nr: u8,
    pub exception_has_error_code: u8,
    pub exception_pending: u8,
    pub exception_error_code: u32,
    pub exception_has_payload: u8,
    pub exception_payload: u64,
    pub interrupt_injected: u8,
    pub interrupt_nr: u8,
    pub interrupt_soft: u8,
    /// Interrupt shadow (after `sti` / `mov ss`).
    pub interrupt_shadow: u8,
    pub nmi_injected: u8,
    pub nmi_pending: u8,
    pub nmi_masked: u8,
    pub sipi_vector: u32,
    pub smi_smm: u8,
    pub smi_pending: u8,
    pub smi_inside_nmi: u8,
    pub smi_latched_init: u8,
    pub triple_fault_pending: u8,
    /// Which of the groups above are valid (the backend's validity flags).
    pub flags: u32,
}

/// An extended control register (XCR0 …) and its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Xcr {
    /// Register number.
    pub index: u32,
    /// Value.
    pub value: u64,
}

/// The multiprocessor state of a vCPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MpState {
    /// Running (or ready to).
    Runnable,
    /// An application processor waiting for INIT/SIPI.
    Uninitialized,
    /// INIT received.
    InitReceived,
    /// Halted, waiting for an interrupt.
    Halted,
    /// SIPI received.
    SipiReceived,
}

/// Everything a vCPU needs to continue where it stopped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VcpuState {
    /// General-purpose registers.
    pub regs: Regs,
    /// Segment, control and descriptor-table registers.
    pub sregs: SpecialRegs,
    /// Pending external interrupts (one bit per vector) not yet delivered.
    pub interrupt_bitmap: [u64; 4],
    /// The XSAVE area (x87, SSE, AVX …) in its architectural layout, as 32-bit words.
    pub xsave: Vec<u32>,
    /// Extended control registers.
    pub xcrs: Vec<Xcr>,
    /// Model-specific registers (TSC, TSC deadline, syscall MSRs, the paravirtual clock …).
    pub msrs: Vec<Msr>,
    /// The local APIC register page (1 KiB).
    pub lapic: Vec<u8>,
    /// Events in flight.
    pub events: VcpuEvents,
    /// Multiprocessor state.
    pub mp_state: MpState,
    /// The CPUID the guest sees.
    pub cpuid: Vec<CpuidEntry>,
}

/// One 8259 PIC.
#[allow(missing_docs)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PicState {
    pub last_irr: u8,
    pub irr: u8,
    pub imr: u8,
    pub isr: u8,
    pub priority_add: u8,
    pub irq_base: u8,
    pub read_reg_select: u8,
    pub poll: u8,
    pub special_mask: u8,
    pub init_state: u8,
    pub auto_eoi: u8,
    pub rotate_on_auto_eoi: u8,
    pub special_fully_nested_mode: u8,
    pub init4: u8,
    pub elcr: u8,
    pub elcr_mask: u8,
}

/// The I/O APIC.
#[allow(missing_docs)]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IoapicState {
    pub base_address: u64,
    pub ioregsel: u32,
    pub id: u32,
    pub irr: u32,
    /// The 24 redirection-table entries, 64 bits each.
    pub redirtbl: Vec<u64>,
}

/// What the VM (not one vCPU) holds: the interrupt controllers and the guest clock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlatformState {
    /// The master PIC.
    pub pic_master: PicState,
    /// The slave PIC.
    pub pic_slave: PicState,
    /// The I/O APIC.
    pub ioapic: IoapicState,
    /// The paravirtual (kvmclock-style) guest clock, in nanoseconds.
    pub clock_ns: u64,
}
