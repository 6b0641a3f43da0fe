//! The guest physical memory map petrel builds on x86_64: where boot structures, the kernel,
//! the ACPI tables and the 32-bit MMIO hole live.

/// Boot GDT (four 8-byte entries).
pub const BOOT_GDT_START: u64 = 0x500;
/// Boot IDT (empty, one 8-byte entry).
pub const BOOT_IDT_START: u64 = 0x520;
/// PVH `hvm_start_info`.
pub const PVH_INFO_START: u64 = 0x6000;
/// PVH module list (one `hvm_modlist_entry` for the initramfs).
pub const PVH_MODLIST_START: u64 = 0x6040;
/// PVH memory map (array of `hvm_memmap_table_entry`).
pub const PVH_MEMMAP_START: u64 = 0x6100;
/// Maximum number of PVH memory map entries.
pub const PVH_MEMMAP_MAX: usize = 64;
/// Linux zero page (`boot_params`) for the bzImage protocol.
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Boot page tables: PML4, PDPT and four page directories (identity map of the first 4 GiB).
pub const PML4_START: u64 = 0x9000;
/// Page-directory-pointer table.
pub const PDPT_START: u64 = 0xa000;
/// First of the four page directories.
pub const PD_START: u64 = 0xb000;
/// Kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// Largest command line petrel accepts, including the terminating NUL.
pub const CMDLINE_MAX_SIZE: usize = 0x1000;
/// Start of the extended BIOS data area: low RAM usable by the guest ends here.
pub const EBDA_START: u64 = 0x9fc00;
/// ACPI RSDP; the other ACPI tables follow it up to `ACPI_END`.
pub const RSDP_START: u64 = 0xe0000;
/// End (exclusive) of the ACPI table area (the reset vector follows it).
pub const ACPI_END: u64 = 0xffff0;
/// The x86 reset vector (`F000:FFF0`): petrel's reset stub, the last 16 bytes below 1 MiB.
pub const RESET_VECTOR: u64 = 0xffff0;
/// Where the kernel is loaded (1 MiB).
pub const HIMEM_START: u64 = 0x100000;
/// Start of the 32-bit MMIO hole: RAM below 4 GiB ends here.
pub const MMIO_HOLE_START: u64 = 0xc000_0000;
/// End (exclusive) of the 32-bit MMIO hole.
pub const MMIO_HOLE_END: u64 = 0x1_0000_0000;
/// IOAPIC registers.
pub const IOAPIC_START: u64 = 0xfec0_0000;
/// Local APIC registers.
pub const APIC_START: u64 = 0xfee0_0000;
/// Virtio-mmio device windows start here, 4 KiB each.
pub const VIRTIO_MMIO_START: u64 = 0xd000_0000;
/// PCI segment 0's window below 4 GiB (BARs): from the start of the hole up to the virtio-mmio
/// windows.
pub const PCI_MMIO32_START: u64 = MMIO_HOLE_START;
/// Size of the 32-bit PCI window.
pub const PCI_MMIO32_SIZE: u64 = VIRTIO_MMIO_START - MMIO_HOLE_START;
/// ECAM of PCI segment 0 (bus 0 only: 1 MiB).
pub const PCI_ECAM_START: u64 = 0xe000_0000;
/// Size of the ECAM window.
pub const PCI_ECAM_SIZE: u64 = 1 << 20;
/// Size of the PCI window above 4 GiB (it starts after RAM, see [`pci_mmio64_start`]).
pub const PCI_MMIO64_SIZE: u64 = 64 << 30;
/// The legacy PCI configuration ports (address at 0xCF8, data at 0xCFC).
pub const PCI_CONFIG_PORT: u16 = 0xcf8;

/// Where the 64-bit PCI window starts for a guest whose RAM ends at `ram_end`: the first
/// 1 GiB boundary above both RAM and 4 GiB.
pub fn pci_mmio64_start(ram_end: u64) -> u64 {
    ram_end.max(HIGH_RAM_START).next_multiple_of(1 << 30)
}

/// RAM above the hole starts here.
pub const HIGH_RAM_START: u64 = 0x1_0000_0000;

/// ACPI sleep control register (I/O port, 1 byte): SLP_TYP in bits 2..=4, SLP_EN is bit 5.
pub const ACPI_SLEEP_CONTROL_PORT: u16 = 0x3c0;
/// ACPI sleep status register (I/O port, 1 byte).
pub const ACPI_SLEEP_STATUS_PORT: u16 = 0x3c1;
/// The SLP_TYP value petrel's DSDT gives for S5 (soft off).
pub const ACPI_S5_SLP_TYP: u8 = 5;
/// First serial port.
pub const COM1_PORT: u16 = 0x3f8;
/// IRQ (GSI) of the first serial port.
pub const COM1_IRQ: u32 = 4;
/// i8042 data/command ports.
pub const I8042_PORT: u16 = 0x60;
/// The i8042 command/status port.
pub const I8042_COMMAND_PORT: u16 = 0x64;
/// IRQ (GSI) of the i8042's keyboard port.
pub const I8042_KBD_IRQ: u32 = 1;
/// CMOS RTC index/data ports.
pub const RTC_PORT: u16 = 0x70;
/// POST debug port.
pub const DEBUG_PORT: u16 = 0x80;
/// GSI of the first virtio-mmio device; each next device takes the next GSI.
pub const VIRTIO_MMIO_FIRST_GSI: u32 = 5;
/// Last GSI available to virtio-mmio devices (the IOAPIC has 24 pins; the last is `GED_GSI`).
pub const VIRTIO_MMIO_LAST_GSI: u32 = 22;
/// GSI of the ACPI Generic Event Device (`\_SB_.GED0`): an edge on it makes the guest run
/// `_EVT`, which notifies the power button (`\_SB_.PWRB`).
pub const GED_GSI: u32 = 23;
