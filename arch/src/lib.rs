//! x86_64 boot: the guest memory map, kernel and initramfs loading (PVH ELF and bzImage),
//! the boot structures (PVH start info, zero page, ACPI tables) and the boot vCPU state.
//!
//! Everything here is computed as data and written to guest memory; vCPU state is applied
//! through the `hypervisor` traits, never through a backend directly.
#![deny(missing_docs)]

pub mod acpi;
pub mod bootinfo;
pub mod cpuid;
pub mod layout;
pub mod loader;
pub mod memory;
pub mod regs;

pub use bootinfo::write_boot_info;
pub use loader::{load_kernel, BootProtocol, LoadedKernel};
pub use memory::{e820_map, ram_ranges, E820Entry, E820_RAM, E820_RESERVED};

/// Guest memory as petrel maps it.
pub type GuestMemoryMmap = vm_memory::GuestMemoryMmap<()>;

/// Errors of the boot code.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The kernel file cannot be opened or read.
    #[error("kernel {path}: {source}")]
    KernelFile {
        /// Path given.
        path: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Neither an ELF file nor a bzImage.
    #[error("kernel {0}: not an ELF vmlinux or a bzImage")]
    KernelFormat(String),
    /// An ELF kernel without the PVH entry note.
    #[error("kernel {0}: ELF file has no PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY)")]
    NoPvhEntry(String),
    /// linux-loader refused the kernel.
    #[error("kernel {path}: cannot be loaded: {reason}")]
    KernelLoad {
        /// Path given.
        path: String,
        /// What the loader said.
        reason: String,
    },
    /// The initramfs cannot be opened or read.
    #[error("initramfs {path}: {source}")]
    InitramfsFile {
        /// Path given.
        path: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The initramfs does not fit.
    #[error("initramfs {path} ({size} bytes) does not fit in guest memory below {limit:#x} above the kernel (ends at {kernel_end:#x}); give more --memory")]
    InitramfsTooLarge {
        /// Path given.
        path: String,
        /// Its size.
        size: u64,
        /// The highest address it may end at.
        limit: u64,
        /// Where the kernel ends.
        kernel_end: u64,
    },
    /// The command line is too long or has a NUL.
    #[error("command line: {0}")]
    Cmdline(String),
    /// Writing a boot structure to guest memory failed.
    #[error("writing {what} to guest memory failed")]
    GuestMemory {
        /// Which structure.
        what: &'static str,
        /// The memory error.
        #[source]
        source: vm_memory::GuestMemoryError,
    },
    /// ACPI tables could not be built.
    #[error("ACPI tables")]
    Acpi(#[source] acpi::Error),
    /// Applying vCPU state failed.
    #[error("setting up vCPU {id}")]
    Vcpu {
        /// vCPU index.
        id: u32,
        /// The hypervisor error.
        #[source]
        source: hypervisor::Error,
    },
}

/// Result type of the boot code.
pub type Result<T> = std::result::Result<T, Error>;
