//! The MADT ("APIC" table): local APIC per vCPU (x2APIC entries above id 254), the IOAPIC
//! and the LINT1 NMI wiring.
//!
//! `acpi_tables::madt::MADT` cannot set the flags field nor hold x2APIC or NMI structures, so
//! the table is assembled on `acpi_tables::sdt::Sdt` with the crate's local APIC and IOAPIC
//! structures and hand-encoded x2APIC / NMI structures (ACPI 6.5 §5.2.12).
//!
//! Flags are 0 (no `PCAT_COMPAT`): KVM does emulate an 8259 pair, but the FADT declares a
//! hardware-reduced platform, for which Linux installs `null_legacy_pic` before it parses the
//! MADT, so the flag would change nothing; every interrupt petrel describes goes through the
//! IOAPIC. No interrupt source override either: with KVM's default GSI routing the in-kernel
//! PIT drives IOAPIC pin 0, not 2, and a hardware-reduced Linux guest does not use the PIT.

use acpi_tables::madt::{EnabledStatus, IoApic, ProcessorLocalApic};
use acpi_tables::sdt::Sdt;
use acpi_tables::Aml;

use super::{OEM_ID, OEM_REVISION, OEM_TABLE_ID};
use crate::layout;

/// MADT revision of ACPI 6.5.
const MADT_REVISION: u8 = 6;
/// Header plus local interrupt controller address and flags.
const MADT_HEADER_LEN: u32 = 44;
/// Offset of the local interrupt controller address.
const LAPIC_ADDRESS_OFFSET: usize = 36;
/// Offset of the MADT flags.
const FLAGS_OFFSET: usize = 40;
/// MADT flags: no `PCAT_COMPAT` (see the module doc).
const MADT_FLAGS: u32 = 0;

/// Highest APIC id a type-0 entry may carry (0xff is the broadcast id).
const MAX_XAPIC_ID: u32 = 254;
/// Processor Local x2APIC structure.
const TYPE_LOCAL_X2APIC: u8 = 9;
const LOCAL_X2APIC_LEN: u8 = 16;
/// Local APIC NMI structure.
const TYPE_LOCAL_APIC_NMI: u8 = 4;
const LOCAL_APIC_NMI_LEN: u8 = 6;
/// Local x2APIC NMI structure.
const TYPE_LOCAL_X2APIC_NMI: u8 = 0xa;
const LOCAL_X2APIC_NMI_LEN: u8 = 12;
/// Local APIC flags: enabled.
const LAPIC_ENABLED: u32 = 1;
/// MPS INTI flags: conforms to the bus (edge, active-high for NMI).
const INTI_CONFORMS: u16 = 0;
/// The NMI is wired to LINT1 of every local APIC.
const NMI_LINT: u8 = 1;
/// ACPI processor UID meaning "all processors" in a Local APIC NMI structure.
const ALL_PROCESSORS_UID8: u8 = 0xff;
/// ACPI processor UID meaning "all processors" in a Local x2APIC NMI structure.
const ALL_PROCESSORS_UID32: u32 = u32::MAX;
/// The only IOAPIC: id 0 (KVM's reset value), GSIs from 0.
const IOAPIC_ID: u8 = 0;
const IOAPIC_GSI_BASE: u32 = 0;

/// Smallest type-0 processor structure.
const LOCAL_APIC_LEN: u64 = 8;

const _: () = assert!(layout::APIC_START <= u32::MAX as u64);
const _: () = assert!(layout::IOAPIC_START <= u32::MAX as u64);

/// A lower bound of the MADT's size for `cpus` vCPUs, computed without building it.
pub(super) fn min_len(cpus: u32) -> u64 {
    u64::from(MADT_HEADER_LEN) + LOCAL_APIC_LEN * u64::from(cpus)
}

/// Builds the MADT bytes for `cpus` vCPUs (APIC id = ACPI processor UID = vCPU index).
pub(super) fn build(cpus: u32) -> Vec<u8> {
    let mut entries = Vec::new();
    let xapic_cpus = cpus.min(MAX_XAPIC_ID + 1);
    for id in 0..xapic_cpus {
        // `id` <= 254 here, so it fits the 8-bit fields.
        let id = id as u8;
        ProcessorLocalApic::new(id, id, EnabledStatus::Enabled).to_aml_bytes(&mut entries);
    }
    for id in xapic_cpus..cpus {
        entries.extend_from_slice(&local_x2apic(id));
    }
    IoApic::new(IOAPIC_ID, layout::IOAPIC_START as u32, IOAPIC_GSI_BASE).to_aml_bytes(&mut entries);
    entries.extend_from_slice(&local_apic_nmi());
    if cpus > xapic_cpus {
        entries.extend_from_slice(&local_x2apic_nmi());
    }

    let mut madt = Sdt::new(
        *b"APIC",
        MADT_HEADER_LEN,
        MADT_REVISION,
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
    );
    madt.write_u32(LAPIC_ADDRESS_OFFSET, layout::APIC_START as u32);
    madt.write_u32(FLAGS_OFFSET, MADT_FLAGS);
    madt.append_slice(&entries);
    madt.as_slice().to_vec()
}

/// Processor Local x2APIC structure for an enabled vCPU.
fn local_x2apic(id: u32) -> [u8; LOCAL_X2APIC_LEN as usize] {
    let mut s = [0u8; LOCAL_X2APIC_LEN as usize];
    s[0] = TYPE_LOCAL_X2APIC;
    s[1] = LOCAL_X2APIC_LEN;
    // s[2..4] reserved.
    s[4..8].copy_from_slice(&id.to_le_bytes()); // x2APIC id
    s[8..12].copy_from_slice(&LAPIC_ENABLED.to_le_bytes());
    s[12..16].copy_from_slice(&id.to_le_bytes()); // ACPI processor UID
    s
}

/// Local APIC NMI structure: NMI on LINT1 of all processors.
fn local_apic_nmi() -> [u8; LOCAL_APIC_NMI_LEN as usize] {
    let mut s = [0u8; LOCAL_APIC_NMI_LEN as usize];
    s[0] = TYPE_LOCAL_APIC_NMI;
    s[1] = LOCAL_APIC_NMI_LEN;
    s[2] = ALL_PROCESSORS_UID8;
    s[3..5].copy_from_slice(&INTI_CONFORMS.to_le_bytes());
    s[5] = NMI_LINT;
    s
}

/// Local x2APIC NMI structure: NMI on LINT1 of all processors.
fn local_x2apic_nmi() -> [u8; LOCAL_X2APIC_NMI_LEN as usize] {
    let mut s = [0u8; LOCAL_X2APIC_NMI_LEN as usize];
    s[0] = TYPE_LOCAL_X2APIC_NMI;
    s[1] = LOCAL_X2APIC_NMI_LEN;
    s[2..4].copy_from_slice(&INTI_CONFORMS.to_le_bytes());
    s[4..8].copy_from_slice(&ALL_PROCESSORS_UID32.to_le_bytes());
    s[8] = NMI_LINT;
    // s[9..12] reserved.
    s
}
