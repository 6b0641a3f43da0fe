//! Boots the freestanding test guests (`tests/guests/`) under the real `petrel` binary and
//! checks what the guest reports on its serial console: the command line, the memory map,
//! the ACPI tables, the CPUs, and the power-off / reset paths; and that bad input is refused
//! with a one-line error.

use std::path::PathBuf;
use std::time::Duration;

use arch::layout::{
    ACPI_END, ACPI_S5_SLP_TYP, ACPI_SLEEP_CONTROL_PORT, EBDA_START, HIGH_RAM_START, HIMEM_START,
    MMIO_HOLE_END, MMIO_HOLE_START, RSDP_START,
};
use petrel_tests::{
    build_guest, parse_boots, parse_first_boot, require_kvm, run_petrel, target_dir, GuestBoot,
    GuestKind, Run,
};

const TIMEOUT: Duration = Duration::from_secs(120);
const MIB: u64 = 1 << 20;

fn guest(kind: GuestKind) -> String {
    build_guest(kind)
        .expect("building the test guest")
        .to_string_lossy()
        .into_owned()
}

/// Runs petrel and returns the run and the first boot it printed.
fn boot(kind: GuestKind, extra: &[&str]) -> (Run, GuestBoot) {
    let kernel = guest(kind);
    let mut args = vec!["--kernel", kernel.as_str()];
    args.extend_from_slice(extra);
    let run = run_petrel(&args, TIMEOUT);
    let b = parse_first_boot(&run.stdout);
    (run, b)
}

fn assert_powered_off(run: &Run, b: &GuestBoot) {
    assert!(!run.timed_out, "petrel did not exit\n{}", run.dump());
    assert!(run.success(), "poweroff must exit 0\n{}", run.dump());
    assert_eq!(b.action.as_deref(), Some("poweroff"), "{}", run.dump());
    assert!(b.exception.is_none(), "guest exception\n{}", run.dump());
}

/// Memory map: starts at 0, no overlaps, RAM total is --memory minus the legacy hole
/// petrel reserves (EBDA..1 MiB), and the reserved ranges are not RAM.
fn assert_memmap(run: &Run, b: &GuestBoot, memory: u64) {
    if let Err(e) = b.check_memmap() {
        panic!("bad memory map: {e}\n{}", run.dump());
    }
    let ram = b.ram_total.unwrap_or(0);
    let legacy_hole = HIMEM_START - EBDA_START;
    assert!(
        ram <= memory && memory - ram <= legacy_hole + 0x1000,
        "RAM total {ram:#x} vs --memory {memory:#x}\n{}",
        run.dump()
    );
    assert!(
        !b.ram_overlaps(EBDA_START, HIMEM_START),
        "EBDA..1MiB is RAM\n{}",
        run.dump()
    );
    assert!(
        !b.ram_overlaps(RSDP_START, ACPI_END),
        "ACPI area is RAM\n{}",
        run.dump()
    );
    assert!(
        !b.ram_overlaps(MMIO_HOLE_START, MMIO_HOLE_END),
        "MMIO hole is RAM\n{}",
        run.dump()
    );
}

fn assert_acpi(run: &Run, b: &GuestBoot) {
    for sig in ["RSDP", "XSDT", "FACP", "APIC", "DSDT"] {
        assert!(
            b.acpi_ok.iter().any(|s| s == sig),
            "ACPI {sig} not ok\n{}",
            run.dump()
        );
    }
    assert!(b.acpi_bad.is_empty(), "bad ACPI tables\n{}", run.dump());
    let fadt = b
        .fadt
        .unwrap_or_else(|| panic!("no FADT line\n{}", run.dump()));
    assert!(
        fadt.hw_reduced,
        "FADT must be hardware-reduced\n{}",
        run.dump()
    );
    assert_eq!(
        fadt.sleep_ctl,
        u64::from(ACPI_SLEEP_CONTROL_PORT),
        "{}",
        run.dump()
    );
    assert_eq!(
        b.s5,
        Some(Some(u32::from(ACPI_S5_SLP_TYP))),
        "{}",
        run.dump()
    );
}

fn assert_cpus(run: &Run, b: &GuestBoot, cpus: u32) {
    assert_eq!(b.madt_cpus, Some(cpus), "MADT cpus\n{}", run.dump());
    assert!(!b.cpus_timeout, "APs did not come up\n{}", run.dump());
    assert_eq!(b.cpus, Some((cpus, cpus)), "CPUS line\n{}", run.dump());
    let mut ids = b.cpu_up.clone();
    ids.sort_unstable();
    let want: Vec<u32> = (0..cpus).collect();
    assert_eq!(ids, want, "`CPU k up` lines\n{}", run.dump());
}

/// Full check of one boot: command line, memory map, ACPI, CPUs, poweroff.
fn check_full_boot(kind: GuestKind, boot_name: &str) {
    let cmdline = "action=poweroff petrel.test=\"quoted words\" x=1,2,3 ~!@#$%^&*()_+";
    let (run, b) = boot(
        kind,
        &["--cmdline", cmdline, "--cpus", "2", "--memory", "128M"],
    );
    assert_eq!(b.boot, boot_name, "{}", run.dump());
    assert_eq!(b.cmdline.as_deref(), Some(cmdline), "{}", run.dump());
    assert_memmap(&run, &b, 128 * MIB);
    assert_acpi(&run, &b);
    assert_cpus(&run, &b, 2);
    assert_powered_off(&run, &b);
}

#[test]
fn pvh_boot_reports_cmdline_memmap_acpi_cpus_and_powers_off() {
    require_kvm!();
    check_full_boot(GuestKind::Pvh, "pvh");
}

#[test]
fn bzimage_boot_reports_cmdline_memmap_acpi_cpus_and_powers_off() {
    require_kvm!();
    check_full_boot(GuestKind::BzImage, "bzimage");
}

fn check_cpus(cpus: u32) {
    let n = cpus.to_string();
    let (run, b) = boot(GuestKind::Pvh, &["--cpus", &n, "--memory", "64M"]);
    assert_cpus(&run, &b, cpus);
    assert_powered_off(&run, &b);
}

#[test]
fn one_cpu() {
    require_kvm!();
    check_cpus(1);
}

#[test]
fn two_cpus() {
    require_kvm!();
    check_cpus(2);
}

#[test]
fn four_cpus() {
    require_kvm!();
    check_cpus(4);
}

#[test]
fn memory_above_4g_is_reported_at_4g() {
    require_kvm!();
    let memory = 4u64 << 30;
    let (run, b) = boot(GuestKind::Pvh, &["--memory", "4G"]);
    assert_memmap(&run, &b, memory);
    let high = b
        .memmap
        .iter()
        .find(|r| r.kind == 1 && r.start == HIGH_RAM_START)
        .unwrap_or_else(|| panic!("no RAM at 4 GiB\n{}", run.dump()));
    assert_eq!(high.size, memory - MMIO_HOLE_START, "{}", run.dump());
    assert_powered_off(&run, &b);
}

#[test]
fn reset_with_no_reboot_exits_zero() {
    require_kvm!();
    let (run, b) = boot(
        GuestKind::Pvh,
        &["--cmdline", "action=reset", "--no-reboot"],
    );
    assert!(!run.timed_out, "{}", run.dump());
    assert_eq!(b.action.as_deref(), Some("reset"), "{}", run.dump());
    assert!(run.success(), "{}", run.dump());
    assert!(
        run.stderr.to_lowercase().contains("reset"),
        "{}",
        run.dump()
    );
    assert_eq!(
        parse_boots(&run.stdout).len(),
        1,
        "rebooted despite --no-reboot"
    );
}

#[test]
fn reset_reboots_in_process_and_cmos_survives() {
    require_kvm!();
    let (run, _) = boot(
        GuestKind::Pvh,
        &["--cmdline", "action=reset-once", "--cpus", "2"],
    );
    let boots = parse_boots(&run.stdout);
    assert_eq!(boots.len(), 2, "expected two boots\n{}", run.dump());
    assert_eq!(boots[0].action.as_deref(), Some("reset (first boot)"));
    assert_eq!(boots[1].action.as_deref(), Some("poweroff (second boot)"));
    // The second boot is a full boot too: both CPUs start again.
    assert_cpus(&run, &boots[1], 2);
    assert!(run.success(), "{}", run.dump());
}

#[test]
fn reset_reboots_bzimage_too() {
    require_kvm!();
    let (run, _) = boot(GuestKind::BzImage, &["--cmdline", "action=reset-once"]);
    let boots = parse_boots(&run.stdout);
    assert_eq!(boots.len(), 2, "expected two boots\n{}", run.dump());
    assert_eq!(boots[1].boot, "bzimage");
    assert!(run.success(), "{}", run.dump());
}

fn scratch_file(name: &str) -> PathBuf {
    let dir = target_dir().join("test-guests");
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(format!("{name}-{}", std::process::id()))
}

#[test]
fn serial_to_file() {
    require_kvm!();
    let path = scratch_file("serial.log");
    let _ = std::fs::remove_file(&path);
    let arg = format!("file={}", path.display());
    let (run, b) = boot(
        GuestKind::Pvh,
        &["--serial", &arg, "--cmdline", "serial-file-test"],
    );
    assert!(run.success(), "{}", run.dump());
    assert!(b.boot.is_empty(), "guest output on stdout\n{}", run.dump());
    let log = std::fs::read_to_string(&path).expect("serial file");
    let fb = parse_first_boot(&log);
    assert_eq!(fb.cmdline.as_deref(), Some("serial-file-test"), "{log}");
    assert_eq!(fb.action.as_deref(), Some("poweroff"), "{log}");
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn serial_off() {
    require_kvm!();
    let (run, _) = boot(GuestKind::Pvh, &["--serial", "off"]);
    assert!(run.success(), "{}", run.dump());
    assert!(!run.stdout.contains("PETREL-GUEST"), "{}", run.dump());
}

#[test]
fn calibrate_and_exits_actions_complete() {
    require_kvm!();
    let (run, b) = boot(
        GuestKind::Pvh,
        &["--cmdline", "action=calibrate exits=1000"],
    );
    assert!(
        run.stdout.contains("CALIBRATE: begin\nCALIBRATE: end\n"),
        "{}",
        run.dump()
    );
    assert_eq!(b.exits, Some(1000), "{}", run.dump());
    assert_powered_off(&run, &b);
}

// ---- bad input ----

fn is_log_line(line: &str) -> bool {
    let w: Vec<&str> = line.split_whitespace().take(3).collect();
    matches!(w.as_slice(), [_, t, lvl] if t.parse::<f64>().is_ok()
        && ["TRACE", "DEBUG", "INFO", "WARN"].contains(lvl))
}

/// petrel refuses `args` with a non-zero exit and one stderr line naming `word`.
fn assert_rejected(args: &[&str], word: &str) {
    let run = run_petrel(args, Duration::from_secs(30));
    assert!(
        !run.timed_out,
        "{args:?}: petrel did not exit\n{}",
        run.dump()
    );
    let code = run.status.and_then(|s| s.code());
    assert!(
        code.is_some_and(|c| c != 0),
        "{args:?}: want a non-zero exit code\n{}",
        run.dump()
    );
    assert!(
        !run.stderr.contains("panicked"),
        "{args:?}: panic\n{}",
        run.dump()
    );
    let lines: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| !l.trim().is_empty() && !is_log_line(l))
        .collect();
    assert_eq!(
        lines.len(),
        1,
        "{args:?}: want one error line\n{}",
        run.dump()
    );
    assert!(
        lines[0].to_lowercase().contains(&word.to_lowercase()),
        "{args:?}: error does not name {word:?}\n{}",
        run.dump()
    );
    assert!(
        !run.stdout.contains("PETREL-GUEST"),
        "{args:?}: guest ran\n{}",
        run.dump()
    );
}

#[test]
fn rejects_missing_kernel() {
    require_kvm!();
    let path = scratch_file("no-such-kernel");
    assert_rejected(&["--kernel", path.to_str().unwrap()], "kernel");
}

#[test]
fn rejects_kernel_that_is_neither_elf_nor_bzimage() {
    require_kvm!();
    let path = scratch_file("text-kernel.txt");
    std::fs::write(&path, "this is not a kernel\n".repeat(100)).unwrap();
    assert_rejected(&["--kernel", path.to_str().unwrap()], "kernel");
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn rejects_zero_cpus() {
    require_kvm!();
    assert_rejected(&["--kernel", &guest(GuestKind::Pvh), "--cpus", "0"], "cpus");
}

#[test]
fn rejects_too_many_cpus() {
    require_kvm!();
    assert_rejected(
        &["--kernel", &guest(GuestKind::Pvh), "--cpus", "10000"],
        "cpus",
    );
}

#[test]
fn rejects_zero_memory() {
    require_kvm!();
    assert_rejected(
        &["--kernel", &guest(GuestKind::Pvh), "--memory", "0"],
        "memory",
    );
}

#[test]
fn rejects_malformed_memory() {
    require_kvm!();
    assert_rejected(
        &["--kernel", &guest(GuestKind::Pvh), "--memory", "12Q"],
        "memory",
    );
}

#[test]
fn rejects_memory_larger_than_host() {
    require_kvm!();
    assert_rejected(
        &["--kernel", &guest(GuestKind::Pvh), "--memory", "100T"],
        "memory",
    );
}

#[test]
fn rejects_initramfs_larger_than_memory() {
    require_kvm!();
    let path = scratch_file("big-initramfs");
    let f = std::fs::File::create(&path).unwrap();
    f.set_len(200 * MIB).unwrap(); // sparse
    let kernel = guest(GuestKind::Pvh);
    let args = [
        "--kernel",
        &kernel,
        "--memory",
        "64M",
        "--initramfs",
        path.to_str().unwrap(),
    ];
    assert_rejected(&args, "initramfs");
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn rejects_unknown_config_file_field() {
    require_kvm!();
    let path = scratch_file("bad-config.json");
    std::fs::write(&path, "{\"no_such_field\": 1}\n").unwrap();
    assert_rejected(&["--config-file", path.to_str().unwrap()], "no_such_field");
    std::fs::remove_file(&path).unwrap();
}
