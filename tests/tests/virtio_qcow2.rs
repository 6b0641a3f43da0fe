//! qcow2 disks under the real `petrel` with the freestanding test guest's virtio-blk driver
//! (`tests/guests/virtio.c`), checked with the real `qemu-img` (Debian `qemu-utils`): a guest's
//! write read back through `qemu-img convert`, a backing file read through and left unchanged,
//! every flushed write still there after `kill -9` (and `qemu-img check` content), and broken
//! images refused with an error naming the file.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use petrel_tests::virtio_checks::{assert_clean_poweroff, assert_no_driver_errors, virtio_lines};
use petrel_tests::{parse_first_boot, require_kvm, run_petrel, GuestKind, Petrel, ScratchDir};

const TIMEOUT: Duration = Duration::from_secs(120);
const SECTOR: usize = 512;
/// `blk-log` writes entry n to sector n * 128.
const LOG_STRIDE: usize = 128 * SECTOR;

/// The 512 bytes `action=virtio-blk` writes to sector 1 (`pattern_byte` in virtio.c).
fn blk_pattern() -> Vec<u8> {
    let prefix = b"PETREL-BLK-";
    (0..SECTOR)
        .map(|i| prefix.get(i).copied().unwrap_or(0x5a ^ (i as u8)))
        .collect()
}

/// The sector `action=blk-log` writes as entry `n`.
fn log_entry(n: u64) -> Vec<u8> {
    let mut s: Vec<u8> = (0..SECTOR).map(|i| 0x5a ^ (i as u8)).collect();
    s[..4].copy_from_slice(b"PLOG");
    s[4..12].copy_from_slice(&n.to_le_bytes());
    s
}

/// `qemu-img` with `args`, or `None` (after a visible skip) when it is not installed.
fn qemu_img(args: &[&str]) -> Option<Output> {
    match Command::new("qemu-img").args(args).output() {
        Ok(out) => Some(out),
        Err(e) => {
            petrel_tests::skip(format!("qemu-img not available ({e}); install qemu-utils"));
            None
        }
    }
}

/// `qemu-img` that must succeed.
fn qemu_img_ok(args: &[&str]) -> Option<Output> {
    let out = qemu_img(args)?;
    assert!(
        out.status.success(),
        "qemu-img {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(out)
}

/// The guest-visible bytes of `image` (any format qemu-img reads), through a raw copy.
fn raw_contents(dir: &Path, image: &Path) -> Vec<u8> {
    let raw = dir.join("contents.raw");
    let _ = fs::remove_file(&raw);
    qemu_img_ok(&["convert", "-O", "raw", s(image), s(&raw)]).expect("qemu-img ran before");
    let data = fs::read(&raw).unwrap();
    let _ = fs::remove_file(&raw);
    data
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The PVH test guest with `args` after `--kernel`.
fn guest_args(args: &[&str]) -> Vec<String> {
    let kernel = petrel_tests::guest_image(GuestKind::Pvh);
    let mut all = vec!["--kernel".to_string(), kernel];
    all.extend(args.iter().map(|a| a.to_string()));
    all
}

fn run(args: &[&str]) -> petrel_tests::Run {
    let all = guest_args(args);
    let refs: Vec<&str> = all.iter().map(String::as_str).collect();
    run_petrel(&refs, TIMEOUT)
}

#[test]
fn qcow2_made_by_qemu_img_holds_the_guests_write() {
    guest_write_lands_in_qcow2("qcow2-rw", "");
}

#[test]
fn qcow2_with_o_direct_holds_the_guests_write() {
    // imago bounces the guest's unaligned buffers itself.
    guest_write_lands_in_qcow2("qcow2-direct", ",direct=on");
}

fn guest_write_lands_in_qcow2(name: &str, extra: &str) {
    require_kvm!();
    let dir = ScratchDir::new(name);
    let img = dir.0.join("disk.qcow2");
    if qemu_img(&["create", "-q", "-f", "qcow2", s(&img), "64M"]).is_none() {
        return;
    }
    // No image_type: the format is detected from the header.
    let disk = format!("path={},id=petrel-disk-1{extra}", s(&img));
    let r = run(&[
        "--virtio-mmio-cmdline",
        "--disk",
        &disk,
        "--cmdline",
        "action=virtio-blk",
    ]);
    let b = parse_first_boot(&r.stdout);
    assert_clean_poweroff(&r, &b);
    assert_no_driver_errors(&r, &b);
    let lines = virtio_lines(&b);
    for want in [
        format!("blk dev=0 capacity={} ro=0", (64 << 20) / SECTOR),
        "blk write-read ok".to_string(),
        "blk flush status=0".to_string(),
    ] {
        assert!(
            lines.contains(&want.as_str()),
            "missing {want}\n{}",
            r.dump()
        );
    }
    let check = qemu_img(&["check", s(&img)]).unwrap();
    assert!(
        check.status.success(),
        "qemu-img check: {}",
        String::from_utf8_lossy(&check.stdout)
    );
    let data = raw_contents(&dir.0, &img);
    assert_eq!(data.len(), 64 << 20);
    assert_eq!(
        &data[SECTOR..2 * SECTOR],
        blk_pattern().as_slice(),
        "sector 1"
    );
    assert!(data[..SECTOR].iter().all(|&x| x == 0), "sector 0 changed");
    assert!(
        data[2 * SECTOR..].iter().all(|&x| x == 0),
        "sectors 2.. changed"
    );
    // The image stayed sparse: a few clusters, not 64 MiB.
    let used = fs::metadata(&img).unwrap().len();
    assert!(used < 4 << 20, "qcow2 file grew to {used} bytes");
}

/// A raw base image: sector i starts with "BASE" and i (u32 LE), the rest 0xb5.
fn base_contents(bytes: usize) -> Vec<u8> {
    let mut v = vec![0xb5u8; bytes];
    for (i, sector) in v.chunks_mut(SECTOR).enumerate() {
        sector[..4].copy_from_slice(b"BASE");
        sector[4..8].copy_from_slice(&(i as u32).to_le_bytes());
    }
    v
}

#[test]
fn qcow2_overlay_reads_its_base_and_writes_only_itself() {
    require_kvm!();
    let dir = ScratchDir::new("qcow2-backing");
    let base = dir.0.join("base.raw");
    let overlay = dir.0.join("overlay.qcow2");
    let base_bytes = 4 << 20;
    let base_data = base_contents(base_bytes);
    fs::write(&base, &base_data).unwrap();
    let created = qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        "base.raw",
        "-F",
        "raw",
        s(&overlay),
    ]);
    if created.is_none() {
        return;
    }

    // Backing files are off unless asked: the error names the backing file.
    let plain = format!("path={}", s(&overlay));
    let r = run(&[
        "--virtio-mmio-cmdline",
        "--disk",
        &plain,
        "--cmdline",
        "action=blk-log",
    ]);
    assert!(!r.success(), "{}", r.dump());
    assert!(
        r.stderr.contains("base.raw") && r.stderr.contains("backing_files"),
        "{}",
        r.dump()
    );
    assert!(!r.stderr.contains("panicked"), "{}", r.dump());

    let disk = format!("path={},image_type=qcow2,backing_files=on", s(&overlay));
    let r = run(&[
        "--virtio-mmio-cmdline",
        "--disk",
        &disk,
        "--cmdline",
        "action=blk-log",
    ]);
    let b = parse_first_boot(&r.stdout);
    assert_clean_poweroff(&r, &b);
    assert_no_driver_errors(&r, &b);
    let lines = virtio_lines(&b);
    // Sector 0 as the guest read it before writing: the base's.
    let want0: String = base_data[..16].iter().map(|x| format!("{x:02x}")).collect();
    assert!(
        lines.contains(&format!("blk sector0={want0}").as_str()),
        "guest did not read the base's sector 0\n{}",
        r.dump()
    );
    let entries = (base_bytes / LOG_STRIDE) as u64;
    assert!(
        lines.contains(&format!("blk log done entries={entries}").as_str()),
        "{}",
        r.dump()
    );
    assert_eq!(
        fs::read(&base).unwrap(),
        base_data,
        "the base image changed"
    );
    let check = qemu_img(&["check", s(&overlay)]).unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );
    let data = raw_contents(&dir.0, &overlay);
    for n in 0..entries {
        let at = n as usize * LOG_STRIDE;
        assert_eq!(&data[at..at + SECTOR], log_entry(n).as_slice(), "entry {n}");
        // The sector after each entry is still the base's, read through.
        let next = at + SECTOR;
        assert_eq!(&data[next..next + SECTOR], &base_data[next..next + SECTOR]);
    }
}

#[test]
fn qcow2_keeps_every_flushed_write_across_kill_9() {
    require_kvm!();
    let dir = ScratchDir::new("qcow2-crash");
    let img = dir.0.join("crash.qcow2");
    // 1 GiB: 8192 entries, far more than the guest writes before the kill.
    if qemu_img(&["create", "-q", "-f", "qcow2", s(&img), "1G"]).is_none() {
        return;
    }
    let disk = format!("path={}", s(&img));
    let args = guest_args(&[
        "--virtio-mmio-cmdline",
        "--disk",
        &disk,
        "--cmdline",
        "action=blk-log",
    ]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut p = Petrel::spawn(&refs);
    let enough = |out: &str| last_flushed(out).is_some_and(|n| n >= 200);
    let reached = p.wait_for_stdout(TIMEOUT, enough);
    p.signal(libc::SIGKILL);
    let r = p.wait(Duration::from_secs(10));
    assert!(reached, "the guest did not flush 200 entries\n{}", r.dump());
    assert!(
        r.status.is_none() || !r.success(),
        "petrel was not killed\n{}",
        r.dump()
    );
    let flushed = last_flushed(&r.stdout).unwrap();

    let check = qemu_img(&["check", s(&img)]).unwrap();
    let report = String::from_utf8_lossy(&check.stdout);
    // 0: clean; 3: leaked clusters only (allocated after the last flush, harmless).
    assert!(
        matches!(check.status.code(), Some(0 | 3)) && !report.contains("ERROR"),
        "qemu-img check after kill -9 (code {:?}):\n{report}{}",
        check.status.code(),
        String::from_utf8_lossy(&check.stderr)
    );
    let data = raw_contents(&dir.0, &img);
    for n in 0..=flushed {
        let at = n as usize * LOG_STRIDE;
        assert_eq!(
            &data[at..at + SECTOR],
            log_entry(n).as_slice(),
            "flushed entry {n} (of 0..={flushed}) lost"
        );
    }
}

/// The last `FLUSHED <n>` line's n.
fn last_flushed(out: &str) -> Option<u64> {
    out.lines()
        .filter_map(|l| l.trim().strip_prefix("FLUSHED "))
        .filter_map(|n| n.trim().parse().ok())
        .next_back()
}

/// Runs the guest on `image` (backing files allowed) and returns petrel's stderr, after
/// checking that petrel refused it without panicking and named `names`.
fn assert_refused(image: &Path, extra: &str, names: &[&str]) {
    let disk = format!("path={},backing_files=on{extra}", s(image));
    let r = run(&[
        "--virtio-mmio-cmdline",
        "--disk",
        &disk,
        "--cmdline",
        "action=blk-log",
    ]);
    assert!(!r.success() && r.status.is_some(), "{}", r.dump());
    assert!(!r.stderr.contains("panicked"), "{}", r.dump());
    for name in names {
        assert!(
            r.stderr.contains(name),
            "error does not name {name}\n{}",
            r.dump()
        );
    }
}

#[test]
fn broken_qcow2_images_are_refused_naming_the_file() {
    require_kvm!();
    let dir = ScratchDir::new("qcow2-bad");
    let path = |n: &str| -> PathBuf { dir.0.join(n) };
    let good = path("good.qcow2");
    if qemu_img(&["create", "-q", "-f", "qcow2", s(&good), "1M"]).is_none() {
        return;
    }
    let header = fs::read(&good).unwrap();

    // Truncated: the magic and a few bytes.
    let truncated = path("truncated.qcow2");
    fs::write(&truncated, &header[..20]).unwrap();
    assert_refused(&truncated, "", &["truncated.qcow2"]);

    // Garbled: version 99 and an L1 table far past the end of the file.
    let mut garbled = header.clone();
    garbled[4..8].copy_from_slice(&99u32.to_be_bytes());
    let garbled_v = path("garbled-version.qcow2");
    fs::write(&garbled_v, &garbled).unwrap();
    assert_refused(&garbled_v, "", &["garbled-version.qcow2"]);
    let mut garbled = header.clone();
    garbled[20..24].copy_from_slice(&1u32.to_be_bytes()); // cluster_bits = 1
    let garbled_c = path("garbled-cluster.qcow2");
    fs::write(&garbled_c, &garbled).unwrap();
    assert_refused(&garbled_c, "", &["garbled-cluster.qcow2"]);

    // Asked for qcow2, but a raw file.
    let raw = path("plain.raw");
    fs::write(&raw, vec![0u8; 1 << 20]).unwrap();
    assert_refused(&raw, ",image_type=qcow2", &["plain.raw", "qcow2"]);

    // A missing backing file.
    let orphan = path("orphan.qcow2");
    qemu_img_ok(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-u",
        "-b",
        "gone.raw",
        "-F",
        "raw",
        s(&orphan),
        "1M",
    ]);
    assert_refused(&orphan, "", &["orphan.qcow2", "gone.raw", "No such file"]);

    // A loop: a -> b -> a.
    let a = path("loop-a.qcow2");
    let b = path("loop-b.qcow2");
    qemu_img_ok(&["create", "-q", "-f", "qcow2", s(&b), "1M"]);
    qemu_img_ok(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-u",
        "-b",
        "loop-b.qcow2",
        "-F",
        "qcow2",
        s(&a),
        "1M",
    ]);
    qemu_img_ok(&[
        "rebase",
        "-q",
        "-u",
        "-b",
        "loop-a.qcow2",
        "-F",
        "qcow2",
        s(&b),
    ]);
    assert_refused(
        &a,
        "",
        &["loop-a.qcow2", "loop-b.qcow2", "backing chain loop"],
    );

    // Formats petrel does not serve are named, not served as raw.
    let vhdx = path("disk.vhdx");
    qemu_img_ok(&["create", "-q", "-f", "vhdx", s(&vhdx), "1M"]);
    assert_refused(&vhdx, "", &["disk.vhdx", "VHDX"]);
}
