//! PCI segment 0 in ACPI: the MCFG (where ECAM is) and, in the DSDT, the root bridge `PCI0`
//! (`PNP0A08`, compatible `PNP0A03`) with its bus range, the 0xCF8 ports and its two memory
//! windows (below 4 GiB and above), plus a `PNP0C02` motherboard resource reserving ECAM, which
//! Linux wants before it uses ECAM. Devices interrupt through MSI-X only: no `_PRT`.

use acpi_tables::aml::{
    AddressSpace, AddressSpaceCacheable, Device, EISAName, Memory32Fixed, Name, Path,
    ResourceTemplate, IO, ZERO,
};
use acpi_tables::sdt::Sdt;
use acpi_tables::Aml;

use super::{OEM_ID, OEM_REVISION, OEM_TABLE_ID};

/// What the tables say about PCI segment 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PciAcpi {
    /// ECAM base (bus 0 at offset 0).
    pub ecam_base: u64,
    /// Last bus number (ECAM covers `(last_bus + 1) << 20` bytes).
    pub last_bus: u8,
    /// The window below 4 GiB: base and size.
    pub mmio32: (u64, u64),
    /// The window above 4 GiB: base and size.
    pub mmio64: (u64, u64),
}

/// The legacy configuration ports.
const CONFIG_PORTS: u16 = 0xcf8;
const CONFIG_PORTS_LEN: u8 = 8;

/// The MCFG: one allocation for segment 0, buses 0..=last_bus.
pub(super) fn mcfg(pci: &PciAcpi) -> Vec<u8> {
    let mut t = Sdt::new(*b"MCFG", 36, 1, OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    t.append_slice(&[0; 8]);
    t.append_slice(&pci.ecam_base.to_le_bytes());
    t.append_slice(&0u16.to_le_bytes());
    t.append_slice(&[0, pci.last_bus]);
    t.append_slice(&[0; 4]);
    t.as_slice().to_vec()
}

/// `Device(PCI0)` and `Device(MRES)` for the DSDT's `\_SB_` scope.
pub(super) fn dsdt_devices(pci: &PciAcpi, sink: &mut Vec<u8>) {
    let hid = Name::new(Path::new("_HID"), &EISAName::new("PNP0A08"));
    let cid = Name::new(Path::new("_CID"), &EISAName::new("PNP0A03"));
    let adr = Name::new(Path::new("_ADR"), &ZERO);
    let seg = Name::new(Path::new("_SEG"), &ZERO);
    let uid = Name::new(Path::new("_UID"), &ZERO);
    let bbn = Name::new(Path::new("_BBN"), &ZERO);
    let buses = AddressSpace::new_bus_number(0u16, u16::from(pci.last_bus));
    let ports = IO::new(CONFIG_PORTS, CONFIG_PORTS, 1, CONFIG_PORTS_LEN);
    let (b32, s32) = pci.mmio32;
    let mem32 = AddressSpace::new_memory(
        AddressSpaceCacheable::NotCacheable,
        true,
        b32 as u32,
        (b32 + s32 - 1) as u32,
        None,
    );
    let (b64, s64) = pci.mmio64;
    let mem64 = AddressSpace::new_memory(
        AddressSpaceCacheable::NotCacheable,
        true,
        b64,
        b64 + s64 - 1,
        None,
    );
    let crs = Name::new(
        Path::new("_CRS"),
        &ResourceTemplate::new(vec![&buses, &ports, &mem32, &mem64]),
    );
    Device::new(
        Path::new("PCI0"),
        vec![&hid, &cid, &adr, &seg, &uid, &bbn, &crs],
    )
    .to_aml_bytes(sink);

    let ecam_len = (u64::from(pci.last_bus) + 1) << 20;
    let hid = Name::new(Path::new("_HID"), &EISAName::new("PNP0C02"));
    let uid = Name::new(Path::new("_UID"), &ZERO);
    let ecam = Memory32Fixed::new(false, pci.ecam_base as u32, ecam_len as u32);
    let crs = Name::new(Path::new("_CRS"), &ResourceTemplate::new(vec![&ecam]));
    Device::new(Path::new("MRES"), vec![&hid, &uid, &crs]).to_aml_bytes(sink);
}

#[cfg(test)]
mod tests {
    use super::*;

    const PCI: PciAcpi = PciAcpi {
        ecam_base: 0xe000_0000,
        last_bus: 0,
        mmio32: (0xc000_0000, 0x1000_0000),
        mmio64: (0x1_0000_0000, 0x10_0000_0000),
    };

    #[test]
    fn the_mcfg_has_one_allocation_for_bus_0() {
        let t = mcfg(&PCI);
        assert_eq!(&t[..4], b"MCFG");
        assert_eq!(t.len(), 36 + 8 + 16);
        assert_eq!(u32::from_le_bytes(t[4..8].try_into().unwrap()), 60);
        assert_eq!(
            u64::from_le_bytes(t[44..52].try_into().unwrap()),
            0xe000_0000
        );
        assert_eq!(&t[52..56], &[0, 0, 0, 0], "segment 0, buses 0..=0");
        assert_eq!(t.iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0, "checksum");
    }

    #[test]
    fn the_root_bridge_names_its_windows() {
        let mut aml = Vec::new();
        dsdt_devices(&PCI, &mut aml);
        let find = |needle: &[u8]| aml.windows(needle.len()).any(|w| w == needle);
        assert!(find(b"PCI0") && find(b"MRES") && find(b"_CRS") && find(b"_SEG"));
        // The 32-bit window's last byte and the 64-bit window's last byte.
        assert!(find(&0xcfff_ffffu32.to_le_bytes()));
        assert!(find(&0x10_ffff_ffffu64.to_le_bytes()));
    }
}
