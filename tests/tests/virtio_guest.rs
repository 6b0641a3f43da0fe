//! Boots the freestanding test guest's virtio-mmio driver (`tests/guests/virtio.c`) under the
//! real `petrel` binary: virtio-blk write, read-back, flush, get-id and a rejected write to a
//! read-only disk (checked on the host after petrel exits), a virtio-rng read, and a window
//! with no device behind it (the guest reports the error and still powers off).

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use arch::layout::{VIRTIO_MMIO_FIRST_GSI, VIRTIO_MMIO_START};
use petrel_tests::virtio_checks::{assert_clean_poweroff, assert_no_driver_errors, virtio_lines};
use petrel_tests::{
    parse_first_boot, require_kvm, run_petrel, scratch_path, GuestBoot, GuestKind, Run,
};

const TIMEOUT: Duration = Duration::from_secs(120);
const SECTOR: usize = 512;
/// Sizes of the two images: different, so each `blk dev=` line names its disk.
const DISK_BYTES: usize = 1 << 20;
const RO_BYTES: usize = 512 << 10;

/// The 512 bytes the guest writes to sector 1 (`pattern_byte` in virtio.c).
fn pattern() -> Vec<u8> {
    let prefix = b"PETREL-BLK-";
    (0..SECTOR)
        .map(|i| match prefix.get(i) {
            Some(&b) => b,
            None => 0x5a ^ (i as u8),
        })
        .collect()
}

/// A scratch file removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str, contents: &[u8]) -> Scratch {
        let path = scratch_path(name);
        fs::write(&path, contents).unwrap();
        Scratch(path)
    }

    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

/// Runs the PVH guest with `args` after `--kernel` and returns the run and its first boot.
fn boot(args: &[&str]) -> (Run, GuestBoot) {
    let kernel = petrel_tests::guest_image(GuestKind::Pvh);
    let mut all = vec!["--kernel", kernel.as_str()];
    all.extend_from_slice(args);
    let run = run_petrel(&all, TIMEOUT);
    let b = parse_first_boot(&run.stdout);
    (run, b)
}

/// The `window=` lines: (address, irq, device id).
fn windows(b: &GuestBoot) -> Vec<(u64, u32, u32)> {
    virtio_lines(b)
        .into_iter()
        .filter_map(|l| {
            let l = l.strip_prefix("window=")?;
            let field = |k: &str| l.split_whitespace().find_map(|w| w.strip_prefix(k));
            let addr = u64::from_str_radix(field("addr=0x")?, 16).ok()?;
            Some((
                addr,
                field("irq=")?.parse().ok()?,
                field("device=")?.parse().ok()?,
            ))
        })
        .collect()
}

fn read(path: &Path) -> Vec<u8> {
    fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

#[test]
fn virtio_blk_write_read_flush_id_and_readonly() {
    require_kvm!();
    let disk = Scratch::new("virtio-disk.img", &vec![0u8; DISK_BYTES]);
    let ro_contents: Vec<u8> = (0..RO_BYTES).map(|i| (i % 253) as u8 ^ 0xa5).collect();
    let ro = Scratch::new("virtio-ro.img", &ro_contents);
    let disk_arg = format!("path={},id=petrel-disk-1", disk.path());
    let ro_arg = format!("path={},readonly=on", ro.path());
    let (run, b) = boot(&[
        "--virtio-mmio-cmdline",
        "--disk",
        &disk_arg,
        "--disk",
        &ro_arg,
        "--rng",
        "--cmdline",
        "action=virtio-blk",
    ]);
    assert_clean_poweroff(&run, &b);
    assert_no_driver_errors(&run, &b);

    // Disks in order, then the rng: 4 KiB windows from VIRTIO_MMIO_START, GSIs from 5.
    let want: Vec<(u64, u32, u32)> = [2, 2, 4]
        .iter()
        .enumerate()
        .map(|(i, &id)| {
            let addr = VIRTIO_MMIO_START + 0x1000 * i as u64;
            (addr, VIRTIO_MMIO_FIRST_GSI + i as u32, id)
        })
        .collect();
    assert_eq!(windows(&b), want, "device windows\n{}", run.dump());

    let lines = virtio_lines(&b);
    for want in [
        format!("blk dev=0 capacity={} ro=0", DISK_BYTES / SECTOR),
        format!("blk dev=1 capacity={} ro=1", RO_BYTES / SECTOR),
        "blk write-read ok".to_string(),
        "blk flush status=0".to_string(),
        "blk id=petrel-disk-1".to_string(),
        "blk ro-write status=1".to_string(),
    ] {
        assert!(
            lines.contains(&want.as_str()),
            "missing `VIRTIO: {want}`\n{}",
            run.dump()
        );
    }

    // On the host, after petrel exited: sector 1 holds the pattern, the rest is untouched,
    // and the read-only image did not change.
    let data = read(&disk.0);
    assert_eq!(data.len(), DISK_BYTES, "disk size changed");
    assert_eq!(&data[SECTOR..2 * SECTOR], pattern().as_slice(), "sector 1");
    assert!(data[..SECTOR].iter().all(|&x| x == 0), "sector 0 changed");
    assert!(
        data[2 * SECTOR..].iter().all(|&x| x == 0),
        "sectors 2.. changed"
    );
    assert!(read(&ro.0) == ro_contents, "the read-only image changed");
}

#[test]
fn virtio_rng_read() {
    require_kvm!();
    let (run, b) = boot(&[
        "--virtio-mmio-cmdline",
        "--rng",
        "--cmdline",
        "action=virtio-rng",
    ]);
    assert_clean_poweroff(&run, &b);
    assert_no_driver_errors(&run, &b);
    let want = vec![(VIRTIO_MMIO_START, VIRTIO_MMIO_FIRST_GSI, 4)];
    assert_eq!(windows(&b), want, "device windows\n{}", run.dump());
    let line = virtio_lines(&b)
        .into_iter()
        .find_map(|l| l.strip_prefix("rng bytes="))
        .unwrap_or_else(|| panic!("no `VIRTIO: rng` line\n{}", run.dump()));
    let (bytes, nonzero) = line
        .split_once(" nonzero=")
        .and_then(|(b, n)| Some((b.parse::<u32>().ok()?, n.parse::<u32>().ok()?)))
        .unwrap_or_else(|| panic!("bad rng line {line:?}"));
    assert_eq!(bytes, 32, "{}", run.dump());
    // 32 random bytes: more than 8 zeros has a probability far below 1e-10.
    assert!(
        nonzero >= 24,
        "{nonzero} of 32 bytes nonzero\n{}",
        run.dump()
    );
}

#[test]
fn window_without_device_is_reported_and_guest_powers_off() {
    require_kvm!();
    // A window past the last device petrel placed: nothing answers there.
    let token = format!(
        "action=virtio-blk virtio_mmio.device=4K@{:#x}:{}",
        VIRTIO_MMIO_START + 0x10_0000,
        VIRTIO_MMIO_FIRST_GSI
    );
    let (run, b) = boot(&["--cmdline", &token]);
    assert_clean_poweroff(&run, &b);
    let lines = virtio_lines(&b);
    assert!(
        lines.iter().any(|l| l.starts_with("error bad magic")),
        "{}",
        run.dump()
    );
    assert!(
        lines.contains(&"error no virtio-blk device"),
        "{}",
        run.dump()
    );
}

/// The `PCI: ` lines of the first boot.
fn pci_lines(b: &GuestBoot) -> Vec<&str> {
    b.other
        .iter()
        .filter_map(|l| l.strip_prefix("PCI: "))
        .collect()
}

/// Both configuration mechanisms list the host bridge and the virtio functions; each BAR 0
/// is a 32 KiB 64-bit BAR first placed above 4 GiB, which the guest moved below.
fn assert_pci_enumeration(run: &Run, b: &GuestBoot, devices: &[(u32, u16)]) {
    let lines = pci_lines(b);
    let want_n = devices.len() + 1;
    assert!(
        lines.contains(&format!("cf8 and ecam agree n={want_n}").as_str()),
        "ECAM and 0xCF8 disagree or miss functions\n{}",
        run.dump()
    );
    assert!(
        lines.contains(&"00:00.0 1b36:0008 class=060000"),
        "no host bridge\n{}",
        run.dump()
    );
    for (i, &(slot, device_id)) in devices.iter().enumerate() {
        let id = format!("00:{slot:02x}.0 1af4:{:04x} ", 0x1040 + device_id);
        assert!(
            lines.iter().any(|l| l.starts_with(&id)),
            "missing {id}\n{}",
            run.dump()
        );
        let bar = format!("00:{slot:02x}.0 bar0 size=0x8000 64-bit=1 first=0x");
        let first = lines
            .iter()
            .find_map(|l| l.strip_prefix(bar.as_str()))
            .unwrap_or_else(|| panic!("missing `PCI: {bar}`\n{}", run.dump()));
        let first = u64::from_str_radix(first, 16).unwrap();
        assert!(first >= 1 << 32, "BAR 0 first at {first:#x}");
        let moved = format!(
            "00:{slot:02x}.0 virtio device={device_id} bar0={:#x} msix vectors=",
            0xc000_0000u64 + 0x10_0000 * (i as u64 + 1)
        );
        assert!(
            lines.iter().any(|l| l.starts_with(&moved)),
            "missing `PCI: {moved}`\n{}",
            run.dump()
        );
    }
}

#[test]
fn virtio_pci_enumerates_relocates_and_drives_rng_with_msix() {
    require_kvm!();
    let (run, b) = boot(&[
        "--transport",
        "pci",
        "--rng",
        "--cmdline",
        "action=virtio-rng",
    ]);
    assert_clean_poweroff(&run, &b);
    assert_no_driver_errors(&run, &b);
    assert_pci_enumeration(&run, &b, &[(1, 4)]);
    assert!(
        windows(&b).is_empty(),
        "no virtio-mmio windows with transport pci\n{}",
        run.dump()
    );
    let line = virtio_lines(&b)
        .into_iter()
        .find_map(|l| l.strip_prefix("rng bytes="))
        .unwrap_or_else(|| panic!("no `VIRTIO: rng` line\n{}", run.dump()));
    assert!(line.starts_with("32 "), "{line}\n{}", run.dump());
    assert!(
        pci_lines(&b).contains(&"msix 00:01.0 vector=0x51 delivered"),
        "queue 0's MSI-X vector did not reach the local APIC\n{}",
        run.dump()
    );
}

#[test]
fn virtio_pci_blk_write_read_flush_id_and_readonly() {
    require_kvm!();
    let disk = Scratch::new("virtio-pci-disk.img", &vec![0u8; DISK_BYTES]);
    let ro_contents: Vec<u8> = (0..RO_BYTES).map(|i| (i % 251) as u8 ^ 0x5a).collect();
    let ro = Scratch::new("virtio-pci-ro.img", &ro_contents);
    let disk_arg = format!("path={},id=petrel-disk-1", disk.path());
    let ro_arg = format!("path={},readonly=on", ro.path());
    let (run, b) = boot(&[
        "--transport",
        "pci",
        "--disk",
        &disk_arg,
        "--disk",
        &ro_arg,
        "--rng",
        "--cmdline",
        "action=virtio-blk",
    ]);
    assert_clean_poweroff(&run, &b);
    assert_no_driver_errors(&run, &b);
    assert_pci_enumeration(&run, &b, &[(1, 2), (2, 2), (3, 4)]);
    let lines = virtio_lines(&b);
    for want in [
        format!("blk dev=0 capacity={} ro=0", DISK_BYTES / SECTOR),
        format!("blk dev=1 capacity={} ro=1", RO_BYTES / SECTOR),
        "blk write-read ok".to_string(),
        "blk flush status=0".to_string(),
        "blk id=petrel-disk-1".to_string(),
        "blk ro-write status=1".to_string(),
    ] {
        assert!(
            lines.contains(&want.as_str()),
            "missing `VIRTIO: {want}`\n{}",
            run.dump()
        );
    }
    assert!(
        pci_lines(&b).contains(&"msix 00:01.0 vector=0x51 delivered"),
        "{}",
        run.dump()
    );
    let data = read(&disk.0);
    assert_eq!(&data[SECTOR..2 * SECTOR], pattern().as_slice(), "sector 1");
    assert!(read(&ro.0) == ro_contents, "the read-only image changed");
}
