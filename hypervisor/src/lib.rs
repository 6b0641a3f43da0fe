//! The hypervisor layer: `Hypervisor`, `Vm` and `Vcpu` traits with hypervisor-neutral types, the
//! KVM and MSHV backends, and the run-time choice of backend (`select`).
//!
//! No KVM or MSHV type crosses these traits: the VMM programs against them only, and port I/O
//! and MMIO are dispatched inside the backend through an [`IoHandler`].
#![deny(missing_docs)]

#[macro_use]
mod fields;

pub mod emulator;
mod kick;
pub mod kvm;
#[cfg(feature = "mshv")]
pub mod mshv;
pub mod select;
pub mod state;
pub mod types;

use std::sync::Arc;

pub use select::{capabilities, open, Capabilities, Kind, Request, Selection};
pub use state::{IoapicState, MpState, PicState, PlatformState, VcpuEvents, VcpuState, Xcr};
pub use types::*;
use vmm_sys_util::eventfd::EventFd;

/// Errors of the hypervisor layer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Opening the hypervisor device failed.
    #[error("cannot open {device}")]
    Open {
        /// Device node, e.g. `/dev/kvm`.
        device: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The requested hypervisor cannot be used.
    #[error("{0}")]
    Unavailable(String),
    /// A hypervisor call failed.
    #[error("{op} failed")]
    Call {
        /// What was attempted.
        op: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The hypervisor reported an internal error while running a vCPU.
    #[error("hypervisor internal error (suberror {suberror}) at rip {rip:#x}")]
    Internal {
        /// Hypervisor-specific sub-error code.
        suberror: u32,
        /// Instruction pointer of the vCPU.
        rip: u64,
    },
    /// The hypervisor could not enter the guest.
    #[error("vCPU entry failed (reason {reason:#x}) at rip {rip:#x}")]
    FailEntry {
        /// Hardware entry failure reason.
        reason: u64,
        /// Instruction pointer of the vCPU.
        rip: u64,
    },
    /// The backend cannot do this.
    #[error("{op} is not supported by the {backend} backend")]
    Unsupported {
        /// What was asked.
        op: &'static str,
        /// The backend's name.
        backend: &'static str,
    },
    /// A saved state does not fit this backend or host.
    #[error("saved state: {0}")]
    BadState(String),
    /// An exit petrel does not handle.
    #[error("unhandled vCPU exit {what} at rip {rip:#x}")]
    UnhandledExit {
        /// Name of the exit.
        what: String,
        /// Instruction pointer of the vCPU.
        rip: u64,
    },
}

/// Result type of the hypervisor layer.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    fn call(op: &'static str, source: impl Into<std::io::Error>) -> Self {
        Error::Call {
            op,
            source: source.into(),
        }
    }
}

/// A hypervisor: creates VMs.
pub trait Hypervisor: Send + Sync {
    /// Which backend this is.
    fn kind(&self) -> Kind;
    /// Creates an empty VM.
    fn create_vm(&self) -> Result<Arc<dyn Vm>>;
    /// The CPUID leaves the hypervisor can expose to a guest.
    fn supported_cpuid(&self) -> Result<Vec<CpuidEntry>>;
    /// The largest number of vCPUs a VM may have.
    fn max_vcpus(&self) -> u32;
    /// Whether the hypervisor pins guest RAM while the VM runs (MSHV does): a page the guest
    /// gives back cannot then be released with `MADV_DONTNEED` behind the hypervisor's back,
    /// so memory ballooning is refused.
    fn pins_guest_memory(&self) -> bool {
        false
    }
}

/// A VM: memory, interrupt controller, vCPUs and eventfd wiring.
pub trait Vm: Send + Sync {
    /// Maps `size` bytes of host memory at `host_addr` to guest physical `gpa` in `slot`.
    ///
    /// # Safety
    /// `host_addr..host_addr + size` must be a valid mapping that outlives the VM.
    unsafe fn map_memory(&self, slot: u32, gpa: u64, host_addr: u64, size: u64) -> Result<()>;
    /// Creates the in-kernel interrupt controllers (IOAPIC, LAPICs, PIC).
    fn setup_irqchip(&self) -> Result<()>;
    /// Creates vCPU `id`.
    fn create_vcpu(&self, id: u32) -> Result<Box<dyn Vcpu>>;
    /// Raises `gsi` whenever `evt` is written.
    fn register_irqfd(&self, evt: &EventFd, gsi: u32) -> Result<()>;
    /// Detaches `evt` from `gsi` before the VM goes away. The hypervisor releases a closed
    /// VM's irqfds asynchronously, and Linux (6.15+) refuses (EBUSY) to attach an eventfd that
    /// another VM's irqfd still waits on: a VMM that boots a new VM with the same eventfds
    /// (a guest reboot, a boot after a shutdown) detaches them first.
    fn unregister_irqfd(&self, evt: &EventFd, gsi: u32) -> Result<()>;
    /// Writes `evt` when the guest writes to `addr` a value `datamatch` matches (width
    /// included) instead of exiting to the VMM.
    fn register_ioevent(
        &self,
        evt: &EventFd,
        addr: IoEventAddress,
        datamatch: Datamatch,
    ) -> Result<()>;
    /// Undoes [`Vm::register_ioevent`] (same eventfd, address and datamatch): a device whose
    /// registers moved (a PCI BAR the guest relocated) listens at its new address instead.
    fn unregister_ioevent(
        &self,
        evt: &EventFd,
        addr: IoEventAddress,
        datamatch: Datamatch,
    ) -> Result<()>;
    /// Routes `gsi` to the message-signalled interrupt `msg` (`None`: removes the route). A
    /// GSI at or above [`FIRST_MSI_GSI`] written through an irqfd then raises that MSI: this is
    /// how a PCI device's MSI-X vectors reach the guest without a vCPU exit.
    fn set_msi_route(&self, gsi: u32, msg: Option<MsiMessage>) -> Result<()>;
    /// Starts (`on`) or stops recording which pages of memory slot `slot` the guest writes;
    /// the slot is set again with the same placement.
    ///
    /// # Safety
    /// As for [`Vm::map_memory`]: the same mapping as the slot's.
    unsafe fn set_dirty_log(
        &self,
        slot: u32,
        gpa: u64,
        host_addr: u64,
        size: u64,
        on: bool,
    ) -> Result<()>;
    /// The pages of `slot` (`size` bytes) written since the last call, one bit per 4 KiB page
    /// (bit `i` of word `i / 64`), and clears the record.
    fn dirty_log(&self, slot: u32, size: u64) -> Result<Vec<u64>>;
    /// The in-kernel interrupt controllers and the guest clock (vCPUs paused).
    fn save_platform(&self) -> Result<PlatformState>;
    /// Sets the interrupt controllers and the guest clock (after `setup_irqchip`, before the
    /// vCPUs run).
    fn restore_platform(&self, state: &PlatformState) -> Result<()>;
}

/// The first GSI that is not an interrupt-controller pin (the IOAPIC has 24): MSI routes use
/// GSIs from here on.
pub const FIRST_MSI_GSI: u32 = 24;

/// Where port I/O and MMIO land: implemented by the VMM over its buses.
pub trait IoHandler: Sync {
    /// The guest reads `data.len()` bytes from I/O port `port`.
    fn pio_read(&self, port: u16, data: &mut [u8]);
    /// The guest writes `data` to I/O port `port`.
    fn pio_write(&self, port: u16, data: &[u8]);
    /// The guest reads `data.len()` bytes at guest physical `addr`.
    fn mmio_read(&self, addr: u64, data: &mut [u8]);
    /// The guest writes `data` at guest physical `addr`.
    fn mmio_write(&self, addr: u64, data: &[u8]);
}

/// x86 vCPU state access.
pub trait CpuState {
    /// General-purpose registers.
    fn regs(&self) -> Result<Regs>;
    /// Sets the general-purpose registers.
    fn set_regs(&self, regs: &Regs) -> Result<()>;
    /// Segment, control and descriptor-table registers.
    fn sregs(&self) -> Result<SpecialRegs>;
    /// Sets the special registers.
    fn set_sregs(&self, sregs: &SpecialRegs) -> Result<()>;
    /// Sets the FPU control state.
    fn set_fpu(&self, fpu: &FpuState) -> Result<()>;
    /// Sets model-specific registers.
    fn set_msrs(&self, msrs: &[Msr]) -> Result<()>;
    /// Sets the CPUID the guest sees on this vCPU.
    fn set_cpuid(&self, entries: &[CpuidEntry]) -> Result<()>;
    /// The local APIC register page.
    fn lapic(&self) -> Result<LapicState>;
    /// Sets the local APIC register page.
    fn set_lapic(&self, lapic: &LapicState) -> Result<()>;
}

/// A virtual CPU. Runs on its own thread.
pub trait Vcpu: CpuState + Send {
    /// Runs the vCPU until a lifecycle event. Port I/O and MMIO are handed to `io` inside.
    fn run(&mut self, io: &dyn IoHandler) -> Result<VcpuExit>;
    /// Prepares the calling thread so that [`kick_signal`] interrupts `run` promptly, even
    /// when it arrives just before the guest is entered. Call once on the vCPU's thread
    /// before the first `run`.
    fn prepare_thread(&mut self) -> Result<()>;
    /// Everything the vCPU needs to continue elsewhere. Call only while it is not running
    /// (from its own thread, between runs).
    fn save_state(&self) -> Result<VcpuState>;
    /// Sets a saved state on a freshly created vCPU (before its first run).
    fn restore_state(&self, state: &VcpuState) -> Result<()>;
}

/// The signal that interrupts a vCPU thread's `run` (sent with `pthread_kill`).
pub fn kick_signal() -> i32 {
    vmm_sys_util::signal::SIGRTMIN()
}
