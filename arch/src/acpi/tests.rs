//! Builds the tables into real guest memory and reads them back with a small parser that
//! shares nothing with the builder.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::*;

const MEM_SIZE: usize = 2 << 20;

fn guest_memory() -> GuestMemoryMmap<()> {
    GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap()
}

fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes(b[off..off + 2].try_into().unwrap())
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
}

fn sum(b: &[u8]) -> u8 {
    b.iter().fold(0u8, |acc, x| acc.wrapping_add(*x))
}

/// Reads the table at `addr`, checks its signature, bounds and checksum.
fn read_table(mem: &GuestMemoryMmap<()>, addr: u64, signature: &[u8; 4]) -> Vec<u8> {
    assert!(
        (layout::RSDP_START..layout::ACPI_END).contains(&addr),
        "{addr:#x}"
    );
    let mut header = [0u8; 36];
    mem.read_slice(&mut header, GuestAddress(addr)).unwrap();
    assert_eq!(&header[0..4], signature);
    let len = u32_at(&header, 4) as usize;
    assert!(len >= 36);
    assert!(addr + len as u64 <= layout::ACPI_END);
    let mut table = vec![0u8; len];
    mem.read_slice(&mut table, GuestAddress(addr)).unwrap();
    assert_eq!(
        sum(&table),
        0,
        "checksum of {}",
        String::from_utf8_lossy(signature)
    );
    table
}

/// A Generic Address Structure: (space id, bit width, bit offset, access size, address).
fn gas_at(b: &[u8], off: usize) -> (u8, u8, u8, u8, u64) {
    (
        b[off],
        b[off + 1],
        b[off + 2],
        b[off + 3],
        u64_at(b, off + 4),
    )
}

struct Parsed {
    fadt: Vec<u8>,
    madt: Vec<u8>,
    dsdt: Vec<u8>,
}

/// Follows RSDP → XSDT → FACP/APIC and FACP → DSDT.
fn parse(mem: &GuestMemoryMmap<()>, rsdp_addr: GuestAddress) -> Parsed {
    assert_eq!(rsdp_addr.0, layout::RSDP_START);
    let mut rsdp = [0u8; 36];
    mem.read_slice(&mut rsdp, rsdp_addr).unwrap();
    assert_eq!(&rsdp[0..8], b"RSD PTR ");
    assert_eq!(sum(&rsdp[0..20]), 0, "RSDP checksum");
    assert_eq!(rsdp[15], 2, "RSDP revision");
    assert_eq!(u32_at(&rsdp, 20), 36, "RSDP length");
    assert_eq!(sum(&rsdp), 0, "RSDP extended checksum");

    let xsdt = read_table(mem, u64_at(&rsdp, 24), b"XSDT");
    let mut fadt = None;
    let mut madt = None;
    for off in (36..xsdt.len()).step_by(8) {
        let addr = u64_at(&xsdt, off);
        let mut sig = [0u8; 4];
        mem.read_slice(&mut sig, GuestAddress(addr)).unwrap();
        match &sig {
            b"FACP" => fadt = Some(read_table(mem, addr, b"FACP")),
            b"APIC" => madt = Some(read_table(mem, addr, b"APIC")),
            other => panic!("unexpected table {other:?}"),
        }
    }
    let fadt = fadt.expect("XSDT lists no FACP");
    let madt = madt.expect("XSDT lists no APIC");
    let x_dsdt = u64_at(&fadt, 140);
    assert_eq!(u64::from(u32_at(&fadt, 40)), x_dsdt, "32-bit DSDT pointer");
    let dsdt = read_table(mem, x_dsdt, b"DSDT");
    Parsed { fadt, madt, dsdt }
}

/// Walks the MADT; returns (xAPIC ids, x2APIC ids) of enabled processors.
fn madt_cpus(madt: &[u8]) -> (Vec<u32>, Vec<u32>) {
    assert_eq!(u64::from(u32_at(madt, 36)), layout::APIC_START);
    assert_eq!(u32_at(madt, 40) & 1, 0, "PCAT_COMPAT");
    let (mut xapic, mut x2apic) = (Vec::new(), Vec::new());
    let (mut ioapics, mut nmi) = (0, false);
    let mut off = 44;
    while off < madt.len() {
        let (kind, len) = (madt[off], madt[off + 1] as usize);
        assert!(len >= 2 && off + len <= madt.len());
        let e = &madt[off..off + len];
        match kind {
            0 => {
                assert_eq!(len, 8);
                assert_eq!(e[2], e[3], "uid == apic id");
                assert_eq!(u32_at(e, 4) & 1, 1, "enabled");
                xapic.push(u32::from(e[3]));
            }
            1 => {
                assert_eq!(len, 12);
                assert_eq!(e[2], 0, "IOAPIC id");
                assert_eq!(u64::from(u32_at(e, 4)), layout::IOAPIC_START);
                assert_eq!(u32_at(e, 8), 0, "GSI base");
                ioapics += 1;
            }
            4 => {
                assert_eq!(len, 6);
                assert_eq!((e[2], e[5]), (0xff, 1), "all processors, LINT1");
                nmi = true;
            }
            9 => {
                assert_eq!(len, 16);
                assert_eq!(u32_at(e, 4), u32_at(e, 12), "uid == x2apic id");
                assert_eq!(u32_at(e, 8) & 1, 1, "enabled");
                x2apic.push(u32_at(e, 4));
            }
            0xa => {
                assert_eq!(len, 12);
                assert_eq!((u32_at(e, 4), e[8]), (u32::MAX, 1));
            }
            other => panic!("unexpected MADT structure {other}"),
        }
        off += len;
    }
    assert_eq!(off, madt.len());
    assert_eq!(ioapics, 1);
    assert!(nmi);
    (xapic, x2apic)
}

fn count(haystack: &[u8], needle: &[u8]) -> usize {
    haystack
        .windows(needle.len())
        .filter(|w| *w == needle)
        .count()
}

fn check_fadt(fadt: &[u8]) {
    assert_eq!(fadt.len(), 276);
    assert_eq!((fadt[8], fadt[131]), (6, 5), "FADT revision 6.5");
    let flags = u32_at(fadt, 112);
    assert_ne!(flags & (1 << 20), 0, "HW_REDUCED_ACPI");
    assert_ne!(flags & (1 << 10), 0, "RESET_REG_SUP");
    assert_eq!(
        u16_at(fadt, 109),
        1 << 2,
        "IAPC_BOOT_ARCH: VGA not present only"
    );
    assert_eq!(u32_at(fadt, 76), 0, "no PM timer");
    assert_eq!(gas_at(fadt, 208).4, 0, "no X_PM_TMR_BLK");
    assert_eq!(gas_at(fadt, 116), (1, 8, 0, 1, 0x64), "RESET_REG");
    assert_eq!(fadt[128], 0xfe, "RESET_VALUE");
    let control = u64::from(layout::ACPI_SLEEP_CONTROL_PORT);
    let status = u64::from(layout::ACPI_SLEEP_STATUS_PORT);
    assert_eq!(
        gas_at(fadt, 244),
        (1, 8, 0, 1, control),
        "SLEEP_CONTROL_REG"
    );
    assert_eq!(gas_at(fadt, 256), (1, 8, 0, 1, status), "SLEEP_STATUS_REG");
    assert_eq!(&fadt[268..274], b"PETREL", "hypervisor vendor");
}

/// Finds `Name(_S5_, Package(){...})` and returns the SLP_TYPa it declares.
fn s5_slp_typ(dsdt: &[u8]) -> u8 {
    assert_eq!(count(dsdt, b"_S5_"), 1);
    let at = dsdt.windows(4).position(|w| w == b"_S5_").unwrap();
    assert_eq!(dsdt[at - 1], 0x08, "NameOp");
    assert_eq!(dsdt[at + 4], 0x12, "PackageOp");
    assert_eq!(dsdt[at + 6], 4, "NumElements");
    match dsdt[at + 7] {
        0x0a => dsdt[at + 8], // BytePrefix
        0x00 => 0,
        0x01 => 1,
        other => panic!("unexpected opcode {other:#x}"),
    }
}

fn build(cpus: u32, virtio: &[VirtioMmioAcpi]) -> (GuestMemoryMmap<()>, Parsed) {
    let mem = guest_memory();
    let cfg = AcpiConfig {
        cpus,
        virtio_mmio: virtio,
        pci: None,
    };
    let rsdp = create_acpi_tables(&mem, &cfg).unwrap();
    let parsed = parse(&mem, rsdp);
    (mem, parsed)
}

fn virtio_devices(n: usize) -> Vec<VirtioMmioAcpi> {
    (0..n)
        .map(|i| VirtioMmioAcpi {
            base: layout::VIRTIO_MMIO_START + 0x1000 * i as u64,
            size: 0x1000,
            gsi: 5 + (i as u32 % 19),
        })
        .collect()
}

#[test]
fn tables_for_various_cpu_counts() {
    for cpus in [1u32, 2, 255, 300] {
        let (_mem, p) = build(cpus, &[]);
        check_fadt(&p.fadt);
        let (xapic, x2apic) = madt_cpus(&p.madt);
        assert_eq!(xapic.len() + x2apic.len(), cpus as usize, "cpus = {cpus}");
        let mut all: Vec<u32> = xapic.iter().chain(&x2apic).copied().collect();
        all.sort_unstable();
        assert_eq!(all, (0..cpus).collect::<Vec<_>>());
        assert!(xapic.iter().all(|&id| id <= 254));
        assert!(x2apic.iter().all(|&id| id > 254));
        assert_eq!(x2apic.len(), cpus.saturating_sub(255) as usize);
        assert_eq!(s5_slp_typ(&p.dsdt), layout::ACPI_S5_SLP_TYP);
        assert_eq!(count(&p.dsdt, b"LNRO0005"), 0);
    }
}

#[test]
fn poweroff_write_value() {
    // What ACPICA's hardware-reduced sleep writes: SLP_TYP << 2 | SLP_EN (bit 5), as a byte
    // to the FADT sleep control register.
    let (_mem, p) = build(1, &[]);
    let slp_typ = s5_slp_typ(&p.dsdt);
    let (space, width, _, _, port) = gas_at(&p.fadt, 244);
    assert_eq!((space, width), (1, 8));
    assert_eq!(port, u64::from(layout::ACPI_SLEEP_CONTROL_PORT));
    assert_eq!((slp_typ << 2) | (1 << 5), 0x34);
}

#[test]
fn dsdt_devices() {
    let (_mem, p) = build(2, &virtio_devices(2));
    assert_eq!(count(&p.dsdt, b"LNRO0005"), 2);
    assert_eq!(count(&p.dsdt, b"_SB_"), 1);
    for name in [&b"COM1"[..], b"VR00", b"VR01", b"_CCA"] {
        assert!(
            count(&p.dsdt, name) >= 1,
            "{}",
            String::from_utf8_lossy(name)
        );
    }
    // COM1 _CRS: IO(Decode16, 0x3f8, 0x3f8, 1, 8) and an edge/active-high IRQ 4.
    assert_eq!(count(&p.dsdt, &[0x47, 1, 0xf8, 3, 0xf8, 3, 1, 8]), 1);
    assert_eq!(count(&p.dsdt, &[0x89, 6, 0, 0b0011, 1, 4, 0, 0, 0]), 1);
    // Second virtio device: Memory32Fixed(ReadWrite, base, 0x1000), edge IRQ on GSI 6.
    let base = (layout::VIRTIO_MMIO_START + 0x1000) as u32;
    let mut mem32 = vec![0x86, 9, 0, 1];
    mem32.extend_from_slice(&base.to_le_bytes());
    mem32.extend_from_slice(&0x1000u32.to_le_bytes());
    assert_eq!(count(&p.dsdt, &mem32), 1);
    assert_eq!(count(&p.dsdt, &[0x89, 6, 0, 0b0011, 1, 6, 0, 0, 0]), 1);
}

#[test]
fn max_virtio_devices_fit() {
    let (_mem, p) = build(300, &virtio_devices(MAX_VIRTIO_MMIO_DEVICES));
    assert_eq!(count(&p.dsdt, b"LNRO0005"), MAX_VIRTIO_MMIO_DEVICES);
    assert_eq!(count(&p.dsdt, b"VRFF"), 1);
}

#[test]
fn too_many_virtio_devices() {
    let devs = virtio_devices(MAX_VIRTIO_MMIO_DEVICES + 1);
    let cfg = AcpiConfig {
        cpus: 1,
        virtio_mmio: &devs,
        pci: None,
    };
    let err = create_acpi_tables(&guest_memory(), &cfg).unwrap_err();
    assert!(matches!(err, Error::TooManyVirtioDevices(257)), "{err}");
}

#[test]
fn too_many_cpus() {
    for cpus in [20_000, u32::MAX] {
        let cfg = AcpiConfig {
            cpus,
            virtio_mmio: &[],
            pci: None,
        };
        let err = create_acpi_tables(&guest_memory(), &cfg).unwrap_err();
        assert!(matches!(err, Error::TooLarge { .. }), "{err}");
    }
}

#[test]
fn invalid_inputs() {
    let mem = guest_memory();
    let cfg = AcpiConfig {
        cpus: 0,
        virtio_mmio: &[],
        pci: None,
    };
    assert!(matches!(create_acpi_tables(&mem, &cfg), Err(Error::NoCpus)));

    let bad_windows = [
        (0xffff_f000, 0x2000),
        (0x1_0000_0000, 0x1000),
        (0xd000_0000, 0),
    ];
    for (base, size) in bad_windows {
        let dev = [VirtioMmioAcpi { base, size, gsi: 5 }];
        let cfg = AcpiConfig {
            cpus: 1,
            virtio_mmio: &dev,
            pci: None,
        };
        let err = create_acpi_tables(&mem, &cfg).unwrap_err();
        assert!(
            matches!(err, Error::InvalidVirtioWindow { index: 0, .. }),
            "{err}"
        );
    }

    let mut devs = virtio_devices(2);
    devs[1].gsi = 24;
    let cfg = AcpiConfig {
        cpus: 1,
        virtio_mmio: &devs,
        pci: None,
    };
    let err = create_acpi_tables(&mem, &cfg).unwrap_err();
    assert!(
        matches!(err, Error::InvalidVirtioGsi { index: 1, gsi: 24 }),
        "{err}"
    );
}

#[test]
fn missing_guest_memory() {
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0x10_0000), 0x1000)]).unwrap();
    let cfg = AcpiConfig {
        cpus: 1,
        virtio_mmio: &[],
        pci: None,
    };
    let err = create_acpi_tables(&mem, &cfg).unwrap_err();
    assert!(matches!(err, Error::GuestMemory(_)), "{err}");
}

/// The reset vector holds the stub that resets through the i8042 command port, as decoded
/// here by hand: `mov al, 0xfe; out 0x64, al; hlt; jmp short` back to the `hlt`.
#[test]
fn reset_vector_resets_through_the_i8042() {
    let (mem, _) = build(2, &virtio_devices(2));
    let mut code = [0u8; 16];
    mem.read_slice(&mut code, GuestAddress(0xffff0)).unwrap();
    assert_eq!(code[0..2], [0xb0, 0xfe], "mov al, 0xfe");
    assert_eq!(code[2..4], [0xe6, 0x64], "out 0x64, al");
    assert_eq!(code[4], 0xf4, "hlt");
    assert_eq!(code[5], 0xeb, "jmp short");
    assert_eq!(
        6 + 1 + i64::from(code[6] as i8),
        4,
        "the jmp goes back to the hlt"
    );
}
