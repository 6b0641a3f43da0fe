//! The DSDT: the `\_S5_` sleep package (soft-off) and, under `\_SB_`, COM1, the CMOS clock,
//! the power button with the Generic Event Device that signals it, and one `LNRO0005` device
//! per virtio-mmio window.
//!
//! The CMOS clock is a `PNP0B00` device with its two I/O ports and no interrupt. On a
//! hardware-reduced platform Linux has no legacy PIC, so ISA IRQ 8 does not exist for it:
//! without a `PNP0B00` device its x86 code registers a platform `rtc_cmos` device that asks
//! for IRQ 8, and the driver's probe fails (`request_irq` → -EINVAL: no `/dev/rtc0`). Found
//! through PNP with a port at 0x70 and no interrupt, the driver runs without one (no alarm,
//! which petrel's RTC does not raise anyway), and GSI 8 stays free for the virtio devices.
//!
//! The power button: the platform is hardware-reduced (no fixed-feature button, no SCI), so
//! the button is a control-method device `PWRB` (`PNP0C0C`), and its events come through a
//! Generic Event Device `GED0` (`ACPI0013`) that owns `layout::GED_GSI`. When the VMM pulses
//! that GSI, the guest's GED driver runs `GED0._EVT(GSI)`, which does
//! `Notify(\_SB_.PWRB, 0x80)` ("button pressed"), and the guest shuts down as if its power
//! button had been pressed.
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
    Arg, Device, EISAName, Equal, If, Interrupt, Memory32Fixed, Method, Name, Notify, Package,
    Path, ResourceTemplate, Scope, IO, ONE, ZERO,
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
/// PNP id of an AT-compatible CMOS clock (Linux `rtc_cmos` through PNP).
const RTC_HID: &str = "PNP0B00";
/// Number of I/O ports of the CMOS clock (index and data).
const RTC_PORT_COUNT: u8 = 2;
/// ACPI hardware id of the virtio-mmio transport (Linux `virtio_mmio_acpi_match`).
const VIRTIO_MMIO_HID: &str = "LNRO0005";
/// ACPI hardware id of the Generic Event Device (ACPI 6.1+, Linux `acpi_ged`).
const GED_HID: &str = "ACPI0013";
// The GED's GSI is an IOAPIC input that neither COM1 nor any virtio-mmio device uses.
const _: () = assert!(
    layout::GED_GSI < IOAPIC_PINS
        && layout::GED_GSI > layout::VIRTIO_MMIO_LAST_GSI
        && layout::GED_GSI != layout::COM1_IRQ
);
/// PNP id of a PS/2 keyboard controller (Linux `i8042` through PNP).
const I8042_HID: &str = "PNP0303";
/// PNP id of a control-method power button (Linux `acpi_button`).
const POWER_BUTTON_HID: &str = "PNP0C0C";
/// Notify value of a control-method power button: "button pressed".
const NOTIFY_BUTTON_PRESSED: u8 = 0x80;

/// Builds the DSDT bytes, validating `virtio`.
pub(super) fn build(virtio: &[VirtioMmioAcpi], pci: Option<&super::PciAcpi>) -> Result<Vec<u8>> {
    if virtio.len() > MAX_VIRTIO_MMIO_DEVICES {
        return Err(Error::TooManyVirtioDevices(virtio.len()));
    }

    let mut sb = Vec::new();
    com1(&mut sb);
    rtc(&mut sb);
    i8042(&mut sb);
    power_button(&mut sb);
    ged(&mut sb);
    for (index, dev) in virtio.iter().enumerate() {
        virtio_mmio(index, dev, &mut sb)?;
    }
    if let Some(pci) = pci {
        super::pci::dsdt_devices(pci, &mut sb);
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

/// `Device(PS2K)`: the i8042 keyboard controller, PNP0303, its data and command ports and
/// the keyboard interrupt (edge, active high), so that Linux's i8042 driver finds it through
/// PNP (as on a PC; without it Linux does not probe the controller on this ACPI machine).
fn i8042(sink: &mut Vec<u8>) {
    let hid = Name::new(Path::new("_HID"), &EISAName::new(I8042_HID));
    let uid = Name::new(Path::new("_UID"), &ZERO);
    let data = IO::new(layout::I8042_PORT, layout::I8042_PORT, 1, 1);
    let cmd = IO::new(layout::I8042_COMMAND_PORT, layout::I8042_COMMAND_PORT, 1, 1);
    let irq = Interrupt::new(true, true, false, false, layout::I8042_KBD_IRQ);
    let crs = Name::new(
        Path::new("_CRS"),
        &ResourceTemplate::new(vec![&data, &cmd, &irq]),
    );
    Device::new(Path::new("PS2K"), vec![&hid, &uid, &crs]).to_aml_bytes(sink);
}

/// `Device(RTC0)`: PNP0B00 at `layout::RTC_PORT`, two ports, no interrupt (see the module
/// documentation).
fn rtc(sink: &mut Vec<u8>) {
    let hid = Name::new(Path::new("_HID"), &EISAName::new(RTC_HID));
    let uid = Name::new(Path::new("_UID"), &ZERO);
    let io = IO::new(layout::RTC_PORT, layout::RTC_PORT, 1, RTC_PORT_COUNT);
    let crs = Name::new(Path::new("_CRS"), &ResourceTemplate::new(vec![&io]));
    Device::new(Path::new("RTC0"), vec![&hid, &uid, &crs]).to_aml_bytes(sink);
}

/// `Device(PWRB)`: the control-method power button the GED notifies.
fn power_button(sink: &mut Vec<u8>) {
    let hid = Name::new(Path::new("_HID"), &EISAName::new(POWER_BUTTON_HID));
    let uid = Name::new(Path::new("_UID"), &ZERO);
    Device::new(Path::new("PWRB"), vec![&hid, &uid]).to_aml_bytes(sink);
}

/// `Device(GED0)`: owns `layout::GED_GSI` (edge, active-high, exclusive); its `_EVT(GSI)`
/// notifies `\_SB_.PWRB` when the GSI is the power button's.
fn ged(sink: &mut Vec<u8>) {
    let gsi = layout::GED_GSI;
    let hid = Name::new(Path::new("_HID"), &GED_HID);
    let uid = Name::new(Path::new("_UID"), &ZERO);
    let irq = Interrupt::new(true, true, false, false, gsi);
    let crs = Name::new(Path::new("_CRS"), &ResourceTemplate::new(vec![&irq]));
    // A single NameSeg: ACPI name resolution searches up from `GED0` and finds `\_SB_.PWRB`.
    let button = Path::new("PWRB");
    let notify = Notify::new(&button, &NOTIFY_BUTTON_PRESSED);
    let is_button = Equal::new(&Arg(0), &gsi);
    let on_button = If::new(&is_button, vec![&notify]);
    let evt = Method::new(Path::new("_EVT"), 1, true, vec![&on_button]);
    Device::new(Path::new("GED0"), vec![&hid, &uid, &crs, &evt]).to_aml_bytes(sink);
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

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::process::Command;

    use super::*;

    fn count(haystack: &[u8], needle: &[u8]) -> usize {
        haystack
            .windows(needle.len())
            .filter(|w| *w == needle)
            .count()
    }

    fn virtio(n: u32) -> Vec<VirtioMmioAcpi> {
        (0..n)
            .map(|i| VirtioMmioAcpi {
                base: layout::VIRTIO_MMIO_START + 0x1000 * u64::from(i),
                size: 0x1000,
                gsi: layout::VIRTIO_MMIO_FIRST_GSI + i,
            })
            .collect()
    }

    #[test]
    fn ged_and_power_button() {
        let dsdt = build(&virtio(2), None).unwrap();
        // Name(_HID, "ACPI0013") and Name(_HID, EisaId("PNP0C0C")).
        assert_eq!(count(&dsdt, b"_HID\x0dACPI0013\x00"), 1);
        assert_eq!(
            count(
                &dsdt,
                &[b'_', b'H', b'I', b'D', 0x0c, 0x41, 0xd0, 0x0c, 0x0c]
            ),
            1
        );
        assert_eq!(count(&dsdt, b"GED0"), 1);
        assert_eq!(count(&dsdt, b"_EVT"), 1);
        // Method(_EVT, 1, Serialized): MethodOp, PkgLength (1 byte), name, flags.
        let at = dsdt.windows(4).position(|w| w == b"_EVT").unwrap();
        assert_eq!(dsdt[at - 2], 0x14, "MethodOp");
        assert_eq!(dsdt[at + 4], 0x09, "one argument, serialized");
        // If (LEqual(Arg0, GED_GSI)) { Notify(\_SB_.PWRB, 0x80) }
        let gsi = u8::try_from(layout::GED_GSI).unwrap();
        let mut body = vec![0x93, 0x68, 0x0a, gsi, 0x86];
        body.extend_from_slice(b"PWRB");
        body.extend_from_slice(&[0x0a, 0x80]);
        assert_eq!(count(&dsdt, &body), 1);
        // _CRS: Extended Interrupt, consumer, edge, active-high, exclusive, GSI 23.
        let mut irq = vec![0x89, 6, 0, 0b0011, 1];
        irq.extend_from_slice(&layout::GED_GSI.to_le_bytes());
        assert_eq!(count(&dsdt, &irq), 1);
        // The virtio devices keep their own GSIs.
        assert_eq!(count(&dsdt, b"LNRO0005"), 2);
    }

    /// The CMOS clock: `PNP0B00` whose `_CRS` is exactly its two ports (no interrupt, so Linux
    /// does not ask for the ISA IRQ 8 a hardware-reduced platform does not have).
    #[test]
    fn rtc_is_a_pnp_device_with_ports_and_no_interrupt() {
        let dsdt = build(&virtio(1), None).unwrap();
        // EisaId("PNP0B00") = 0x41d0 0x0b00, as a DWordConst.
        assert_eq!(
            count(
                &dsdt,
                &[b'_', b'H', b'I', b'D', 0x0c, 0x41, 0xd0, 0x0b, 0x00]
            ),
            1
        );
        let at = dsdt.windows(4).position(|w| w == b"RTC0").unwrap();
        // _CRS: Buffer { IO(Decode16, 0x70, 0x70, 1, 2), EndTag } and nothing else.
        let io = [0x47, 0x01, 0x70, 0x00, 0x70, 0x00, 0x01, 0x02, 0x79];
        let crs = dsdt[at..].windows(4).position(|w| w == b"_CRS").unwrap() + at;
        let io_at = dsdt[crs..].windows(io.len()).position(|w| w == io).unwrap() + crs;
        // Name(_CRS, Buffer(PkgLength, BufferSize, bytes)): the buffer holds only the port
        // descriptor and the end tag (2 bytes).
        assert_eq!(dsdt[crs + 4], 0x11, "BufferOp");
        assert_eq!(usize::from(dsdt[crs + 7]), io.len() + 1, "buffer size");
        assert_eq!(io_at, crs + 8);
    }

    /// A scratch directory of this test process.
    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("petrel-dsdt-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// Disassembles the DSDT with ACPICA's `iasl -d` when it is installed (package
    /// acpica-tools) and checks the devices read back as written.
    #[test]
    fn iasl_disassembles_the_dsdt() {
        if Command::new("iasl").arg("-v").output().is_err() {
            test_skip::skip("iasl not installed (Debian acpica-tools)");
            return;
        }
        let dir = scratch("iasl");
        let dat = dir.join("dsdt.dat");
        std::fs::write(&dat, build(&virtio(3), None).unwrap()).unwrap();
        let out = Command::new("iasl").arg("-d").arg(&dat).output().unwrap();
        let log = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "iasl -d failed:\n{log}");
        let dsl = std::fs::read_to_string(dir.join("dsdt.dsl")).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        for want in [
            "Device (GED0)",
            "Name (_HID, \"ACPI0013\"",
            "Device (PWRB)",
            "Name (_HID, EisaId (\"PNP0C0C\")",
            "Method (_EVT, 1, Serialized)",
            "If ((Arg0 == 0x17))",
            "Notify (PWRB, 0x80)",
            "Interrupt (ResourceConsumer, Edge, ActiveHigh, Exclusive, ,, )",
            "0x00000017,",
            "Name (_HID, EisaId (\"PNP0501\")",
            "Device (RTC0)",
            "Name (_HID, EisaId (\"PNP0B00\")",
            "Name (_HID, EisaId (\"PNP0303\")",
            "Device (VR02)",
            "Name (_S5, Package (0x04)",
        ] {
            assert!(dsl.contains(want), "missing {want:?} in\n{dsl}");
        }
    }

    /// Runs `_EVT` in ACPICA's AML interpreter (`acpiexec`, package acpica-tools, when
    /// installed): the power button's GSI must notify `\_SB.PWRB` with 0x80, another must not.
    #[test]
    fn acpiexec_evt_notifies_the_power_button() {
        if Command::new("acpiexec").arg("-v").output().is_err() {
            test_skip::skip("acpiexec not installed (Debian acpica-tools)");
            return;
        }
        let dir = scratch("acpiexec");
        let dat = dir.join("dsdt.dat");
        std::fs::write(&dat, build(&virtio(1), None).unwrap()).unwrap();
        let run = |gsi: u32| {
            let out = Command::new("acpiexec")
                .arg("-b")
                .arg(format!("evaluate \\_SB.GED0._EVT {gsi:#x}"))
                .arg(&dat)
                .output()
                .unwrap();
            let log = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(out.status.success(), "acpiexec failed:\n{log}");
            log
        };
        let pressed = run(layout::GED_GSI);
        let other = run(layout::VIRTIO_MMIO_FIRST_GSI);
        let _ = std::fs::remove_dir_all(&dir);
        assert!(
            pressed.contains("Notify on [PWRB]") && pressed.contains("Value 0x80"),
            "_EVT(GED_GSI) did not notify PWRB:\n{pressed}"
        );
        assert!(
            !other.contains("Notify"),
            "_EVT(other GSI) notified:\n{other}"
        );
    }
}
