//! The DSDT: the `\_S5_` sleep package (soft-off) and, under `\_SB_`, COM1 and one
//! `LNRO0005` device per virtio-mmio window.
//!
//! Interrupts are Extended Interrupt descriptors, edge-triggered, active-high, exclusive:
//! - COM1 is an ISA device, and ISA interrupts are edge/active-high.
//! - A virtio-mmio device interrupts through a KVM irqfd, which injects a pulse (assert then
//!   deassert) with no resample eventfd. Described as level-triggered, the line would already
//!   be low again when the guest handler runs, so nothing would keep it asserted until the
//!   driver acknowledges `InterruptStatus`. As an edge, each irqfd write is exactly one
//!   interrupt, and `vm_interrupt()` drains all the work the device has posted. Each device
//!   has a GSI of its own, hence exclusive.

use acpi_tables::aml::{
    Device, EISAName, Interrupt, Memory32Fixed, Name, Package, Path, ResourceTemplate, Scope, IO,
    ONE, ZERO,
};
use acpi_tables::sdt::Sdt;
use acpi_tables::Aml;

use super::{Error, Result, VirtioMmioAcpi, OEM_ID, OEM_REVISION, OEM_TABLE_ID};
use crate::layout;

/// Most virtio-mmio devices the DSDT can name (`VR00`..`VRFF`).
pub const MAX_VIRTIO_MMIO_DEVICES: usize = 256;
/// Number of KVM IOAPIC inputs (GSIs 0..24).
pub(super) const IOAPIC_PINS: u32 = 24;
/// DSDT revision 2: AML integers are 64-bit.
const DSDT_REVISION: u8 = 2;
/// Header length the `Sdt` builder starts from.
const SDT_HEADER_LEN: u32 = 36;
/// Number of I/O ports of an 8250 UART.
const COM1_PORT_COUNT: u8 = 8;
/// ACPI hardware id of the virtio-mmio transport (Linux `virtio_mmio_acpi_match`).
const VIRTIO_MMIO_HID: &str = "LNRO0005";

/// Builds the DSDT bytes, validating `virtio`.
pub(super) fn build(virtio: &[VirtioMmioAcpi]) -> Result<Vec<u8>> {
    if virtio.len() > MAX_VIRTIO_MMIO_DEVICES {
        return Err(Error::TooManyVirtioDevices(virtio.len()));
    }

    let mut sb = Vec::new();
    com1(&mut sb);
    for (index, dev) in virtio.iter().enumerate() {
        virtio_mmio(index, dev, &mut sb)?;
    }

    let mut body = Vec::new();
    s5(&mut body);
    body.extend_from_slice(&Scope::raw(Path::new("\\_SB_"), sb));

    let mut dsdt = Sdt::new(
        *b"DSDT",
        SDT_HEADER_LEN,
        DSDT_REVISION,
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
    );
    dsdt.append_slice(&body);
    Ok(dsdt.as_slice().to_vec())
}

/// `Name(_S5_, Package() { ACPI_S5_SLP_TYP, 0, 0, 0 })`: SLP_TYPa for soft-off.
fn s5(sink: &mut Vec<u8>) {
    let slp_typ = layout::ACPI_S5_SLP_TYP;
    Name::new(
        Path::new("_S5_"),
        &Package::new(vec![&slp_typ, &ZERO, &ZERO, &ZERO]),
    )
    .to_aml_bytes(sink);
}

/// `Device(COM1)`: PNP0501 at `layout::COM1_PORT`, interrupt `layout::COM1_IRQ`.
fn com1(sink: &mut Vec<u8>) {
    let hid = Name::new(Path::new("_HID"), &EISAName::new("PNP0501"));
    let uid = Name::new(Path::new("_UID"), &ZERO);
    let io = IO::new(layout::COM1_PORT, layout::COM1_PORT, 1, COM1_PORT_COUNT);
    let irq = Interrupt::new(true, true, false, false, layout::COM1_IRQ);
    let crs = Name::new(Path::new("_CRS"), &ResourceTemplate::new(vec![&io, &irq]));
    Device::new(Path::new("COM1"), vec![&hid, &uid, &crs]).to_aml_bytes(sink);
}

/// `Device(VRxx)` for virtio-mmio device number `index`.
fn virtio_mmio(index: usize, dev: &VirtioMmioAcpi, sink: &mut Vec<u8>) -> Result<()> {
    let bad_window = || Error::InvalidVirtioWindow {
        index,
        base: dev.base,
        size: dev.size,
    };
    let base = u32::try_from(dev.base).map_err(|_| bad_window())?;
    let size = u32::try_from(dev.size).map_err(|_| bad_window())?;
    if size == 0 || dev.base + dev.size > layout::MMIO_HOLE_END {
        return Err(bad_window());
    }
    if dev.gsi >= IOAPIC_PINS {
        return Err(Error::InvalidVirtioGsi {
            index,
            gsi: dev.gsi,
        });
    }
    // `index` < 256 (checked by `build`), so two hex digits suffice.
    let name = format!("VR{index:02X}");
    let uid_value = index as u32;

    let hid = Name::new(Path::new("_HID"), &VIRTIO_MMIO_HID);
    let uid = Name::new(Path::new("_UID"), &uid_value);
    let cca = Name::new(Path::new("_CCA"), &ONE);
    let mem = Memory32Fixed::new(true, base, size);
    let irq = Interrupt::new(true, true, false, false, dev.gsi);
    let crs = Name::new(Path::new("_CRS"), &ResourceTemplate::new(vec![&mem, &irq]));
    Device::new(Path::new(&name), vec![&hid, &uid, &cca, &crs]).to_aml_bytes(sink);
    Ok(())
}
