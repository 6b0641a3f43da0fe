//! ACPI tables for x86_64 guests: RSDP, XSDT, FADT, MADT and DSDT, built with `acpi_tables`
//! and written into guest memory between `layout::RSDP_START` and `layout::ACPI_END`.
//!
//! The platform is described as *hardware-reduced* ACPI: no fixed-hardware PM blocks, no SCI,
//! no PM timer, no FACS. Power-off goes through the FADT sleep control register (an I/O port
//! the VMM watches) and the `\_S5_` package in the DSDT; reset goes through the FADT reset
//! register (the i8042 command port), and a guest that resets through the BIOS instead finds
//! a stub at the reset vector that does the same (`reset_vector.rs`). CPUs come from the MADT, the serial port and
//! virtio-mmio devices from the DSDT: a guest kernel without MP-table or command-line virtio
//! support finds everything here.

mod dsdt;
mod madt;
mod pci;
mod reset_vector;
#[cfg(test)]
mod tests;

use acpi_tables::fadt::{FADTBuilder, Flags, FADT};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::xsdt::XSDT;
use acpi_tables::Aml;
use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryError};

pub use pci::PciAcpi;

use crate::layout;

pub use dsdt::MAX_VIRTIO_MMIO_DEVICES;

/// OEM ID in every table header.
const OEM_ID: [u8; 6] = *b"PETREL";
/// OEM table ID in every table header.
const OEM_TABLE_ID: [u8; 8] = *b"PETRELVM";
/// OEM revision in every table header.
const OEM_REVISION: u32 = 1;
/// Each table starts on this boundary.
const TABLE_ALIGN: u64 = 16;
/// Length of a standard ACPI table header.
const SDT_HEADER_LEN: u64 = 36;
/// Tables the XSDT lists: FADT and MADT (the DSDT is reached through the FADT).
const XSDT_ENTRIES: u64 = 2;

/// FADT `IAPC_BOOT_ARCH` bit: VGA not present (do not probe legacy VGA).
const IAPC_BOOT_ARCH_VGA_NOT_PRESENT: u16 = 1 << 2;
/// The i8042 command/status port: writing `I8042_CMD_RESET` there pulses the CPU reset line.
const I8042_COMMAND_PORT: u16 = layout::I8042_COMMAND_PORT;
/// i8042 "pulse output line" command that resets the machine.
const I8042_CMD_RESET: u8 = 0xfe;
/// Hypervisor vendor identity in the FADT (ACPI 6.0+), space-padded to 8 bytes.
const HYPERVISOR_VENDOR: [u8; 8] = *b"PETREL  ";

/// What the ACPI tables describe.
#[derive(Clone, Copy, Debug)]
pub struct AcpiConfig<'a> {
    /// Number of vCPUs; their local APIC ids (and ACPI processor UIDs) are `0..cpus`.
    pub cpus: u32,
    /// Virtio-mmio devices, in the order the guest should enumerate them.
    pub virtio_mmio: &'a [VirtioMmioAcpi],
    /// PCI segment 0, if the VM has one (an MCFG and the root bridge in the DSDT).
    pub pci: Option<PciAcpi>,
}

/// One virtio-mmio device as the DSDT describes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VirtioMmioAcpi {
    /// Guest physical base of the register window (must end below 4 GiB).
    pub base: u64,
    /// Size of the register window in bytes.
    pub size: u64,
    /// IOAPIC input (GSI) the device interrupts on; edge-triggered, active-high.
    pub gsi: u32,
}

/// Errors building or writing the ACPI tables.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `cpus` was zero.
    #[error("the ACPI tables need at least one vCPU")]
    NoCpus,
    /// More virtio-mmio devices than the DSDT naming scheme (`VR00`..`VRFF`) allows.
    #[error("{0} virtio-mmio devices given, at most {MAX_VIRTIO_MMIO_DEVICES} are supported")]
    TooManyVirtioDevices(usize),
    /// A virtio-mmio window is empty or does not end below 4 GiB.
    #[error("virtio-mmio device {index}: window {base:#x}+{size:#x} must be non-empty and end below 4 GiB")]
    InvalidVirtioWindow {
        /// Position in `AcpiConfig::virtio_mmio`.
        index: usize,
        /// Window base.
        base: u64,
        /// Window size.
        size: u64,
    },
    /// A virtio-mmio GSI is not an IOAPIC input.
    #[error(
        "virtio-mmio device {index}: GSI {gsi} is not an IOAPIC input (0..{})",
        dsdt::IOAPIC_PINS
    )]
    InvalidVirtioGsi {
        /// Position in `AcpiConfig::virtio_mmio`.
        index: usize,
        /// The GSI given.
        gsi: u32,
    },
    /// The tables do not fit between `layout::RSDP_START` and `layout::ACPI_END`.
    #[error("ACPI tables need {needed} bytes, only {available} are reserved")]
    TooLarge {
        /// Bytes the tables need (at least).
        needed: u64,
        /// Bytes reserved for them.
        available: u64,
    },
    /// Writing a table into guest memory failed.
    #[error("cannot write the ACPI tables into guest memory")]
    GuestMemory(#[source] GuestMemoryError),
}

/// Result of this module.
pub type Result<T> = std::result::Result<T, Error>;

/// Builds the ACPI tables for `cfg`, writes them into `mem` at `layout::RSDP_START` ..
/// `layout::ACPI_END` (and the reset stub at `layout::RESET_VECTOR`), and returns the guest address of the RSDP (to hand to the kernel in
/// `boot_params.acpi_rsdp_addr` / `hvm_start_info.rsdp_paddr`; it also sits in the legacy
/// 0xE0000 scan window).
pub fn create_acpi_tables<M: GuestMemory>(mem: &M, cfg: &AcpiConfig) -> Result<GuestAddress> {
    if cfg.cpus == 0 {
        return Err(Error::NoCpus);
    }
    let available = layout::ACPI_END - layout::RSDP_START;
    // Reject absurd CPU counts before allocating anything: each CPU costs at least 8 bytes.
    let madt_lower_bound = madt::min_len(cfg.cpus);
    if madt_lower_bound > available {
        return Err(Error::TooLarge {
            needed: madt_lower_bound,
            available,
        });
    }

    let dsdt = dsdt::build(cfg.virtio_mmio, cfg.pci.as_ref())?;
    let mcfg = cfg.pci.as_ref().map(pci::mcfg).unwrap_or_default();
    let entries = XSDT_ENTRIES + u64::from(cfg.pci.is_some());
    let madt = madt::build(cfg.cpus);

    let rsdp_addr = layout::RSDP_START;
    let xsdt_addr = align_up(rsdp_addr + Rsdp::len() as u64);
    let fadt_addr = align_up(xsdt_addr + SDT_HEADER_LEN + 8 * entries);
    let madt_addr = align_up(fadt_addr + FADT::len() as u64);
    let dsdt_addr = align_up(madt_addr + madt.len() as u64);
    let mcfg_addr = align_up(dsdt_addr + dsdt.len() as u64);
    let end = mcfg_addr + mcfg.len() as u64;
    if end > layout::ACPI_END {
        return Err(Error::TooLarge {
            needed: end - layout::RSDP_START,
            available,
        });
    }

    let fadt = to_bytes(&build_fadt(dsdt_addr));
    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    xsdt.add_entry(fadt_addr);
    xsdt.add_entry(madt_addr);
    if cfg.pci.is_some() {
        xsdt.add_entry(mcfg_addr);
    }
    let xsdt = to_bytes(&xsdt);
    let rsdp = to_bytes(&Rsdp::new(OEM_ID, xsdt_addr));
    debug_assert_eq!(xsdt.len() as u64, SDT_HEADER_LEN + 8 * entries);

    for (addr, bytes) in [
        (rsdp_addr, &rsdp),
        (xsdt_addr, &xsdt),
        (fadt_addr, &fadt),
        (madt_addr, &madt),
        (dsdt_addr, &dsdt),
        (mcfg_addr, &mcfg),
    ] {
        mem.write_slice(bytes, GuestAddress(addr))
            .map_err(Error::GuestMemory)?;
    }
    reset_vector::write(mem)?;
    log::debug!(
        "ACPI: RSDP {rsdp_addr:#x}, XSDT {xsdt_addr:#x}, FADT {fadt_addr:#x}, MADT {madt_addr:#x} \
         ({} cpus), DSDT {dsdt_addr:#x} ({} virtio-mmio), end {end:#x}",
        cfg.cpus,
        cfg.virtio_mmio.len()
    );
    Ok(GuestAddress(rsdp_addr))
}

/// The FADT: hardware-reduced, sleep and reset registers in I/O space, DSDT at `dsdt_addr`.
fn build_fadt(dsdt_addr: u64) -> FADT {
    let io_byte = |port: u16| {
        GAS::new(
            AddressSpace::SystemIo,
            8,
            0,
            AccessSize::ByteAccess,
            u64::from(port),
        )
    };
    let mut fadt = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION)
        .dsdt_64(dsdt_addr)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::ResetRegSup)
        // No fixed-feature power/sleep buttons.
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton);
    // The tables live below 1 MiB, so the legacy 32-bit DSDT pointer can carry the same
    // address (ACPICA accepts equal 32/64-bit values without complaint).
    if let Ok(dsdt32) = u32::try_from(dsdt_addr) {
        fadt.dsdt = dsdt32.into();
    }
    fadt.iapc_boot_arch = IAPC_BOOT_ARCH_VGA_NOT_PRESENT.into();
    fadt.reset_reg = io_byte(I8042_COMMAND_PORT);
    fadt.reset_value = I8042_CMD_RESET;
    fadt.sleep_control_reg = io_byte(layout::ACPI_SLEEP_CONTROL_PORT);
    fadt.sleep_status_reg = io_byte(layout::ACPI_SLEEP_STATUS_PORT);
    fadt.hypervisor_vendor_identity = u64::from_le_bytes(HYPERVISOR_VENDOR).into();
    fadt.finalize()
}

/// Serialises an `acpi_tables` object.
fn to_bytes(table: &dyn Aml) -> Vec<u8> {
    let mut bytes = Vec::new();
    table.to_aml_bytes(&mut bytes);
    bytes
}

/// Rounds `addr` up to `TABLE_ALIGN`.
fn align_up(addr: u64) -> u64 {
    addr.next_multiple_of(TABLE_ALIGN)
}
