//! The petrel process around a guest: `--version` and `--capabilities`, the choice of
//! hypervisor, SIGTERM/SIGINT, serial input from stdin, a guest triple fault, debug-port
//! timing, `--config-file` (and flags overriding it), and where the initramfs is placed (PVH
//! module list, bzImage ramdisk fields) — each checked against the real binary.

use std::path::Path;
use std::time::{Duration, Instant};

use arch::layout::{HIMEM_START, MMIO_HOLE_START};
use petrel_tests::{
    debug_port_lines, guest_image, kvm_available, loaded_bytes, loaded_extent, parse_boots,
    parse_first_boot, require_kvm, run_petrel, scratch_path, GuestBoot, GuestKind, Petrel, Run,
};

const TIMEOUT: Duration = Duration::from_secs(120);
/// How long petrel may take to exit once signalled.
const STOP_WITHIN: Duration = Duration::from_secs(5);
const MIB: u64 = 1 << 20;
const MSHV_DEVICE: &str = "/dev/mshv";

fn mshv_present() -> bool {
    Path::new(MSHV_DEVICE).exists()
}

/// Runs the test guest (`kind`) with `extra` arguments.
fn boot(kind: GuestKind, extra: &[&str]) -> (Run, GuestBoot) {
    let kernel = guest_image(kind);
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
    assert!(!run.stderr.contains("panicked"), "{}", run.dump());
}

/// petrel exited with `code` and exactly one non-log stderr line, which names `word`; the
/// guest never ran.
fn assert_one_line_error(run: &Run, code: i32, word: &str) {
    assert!(!run.timed_out, "petrel did not exit\n{}", run.dump());
    assert_eq!(run.code(), Some(code), "exit code\n{}", run.dump());
    assert!(!run.stderr.contains("panicked"), "{}", run.dump());
    let lines = run.error_lines();
    assert_eq!(lines.len(), 1, "want one error line\n{}", run.dump());
    assert!(
        lines[0].starts_with("petrel: "),
        "error line not prefixed `petrel: `\n{}",
        run.dump()
    );
    assert!(
        lines[0].contains(word),
        "error does not name {word:?}\n{}",
        run.dump()
    );
    assert!(!run.stdout.contains("PETREL-GUEST"), "{}", run.dump());
}

// ---- --version, --capabilities ----

/// `MAJOR.MINOR.PATCH` with an optional `-pre` / `+build` suffix, no leading zeros.
fn is_semver(v: &str) -> bool {
    let core = v.split(['-', '+']).next().unwrap_or_default();
    let parts: Vec<&str> = core.split('.').collect();
    parts.len() == 3
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.bytes().all(|b| b.is_ascii_digit())
                && (*p == "0" || !p.starts_with('0'))
        })
}

#[test]
fn semver_check_itself() {
    for good in ["0.1.0", "1.22.333", "1.0.0-rc.1", "2.0.1+abc"] {
        assert!(is_semver(good), "{good}");
    }
    for bad in ["", "1", "1.2", "1.2.x", "01.2.3", "1.2.3.4", "v1.2.3"] {
        assert!(!is_semver(bad), "{bad}");
    }
}

#[test]
fn version_prints_petrel_and_semver() {
    let run = run_petrel(&["--version"], Duration::from_secs(30));
    assert_eq!(run.code(), Some(0), "{}", run.dump());
    let line = run.stdout.strip_suffix('\n').unwrap_or(&run.stdout);
    assert!(!line.contains('\n'), "more than one line\n{}", run.dump());
    // `NAME vSEMVER`, the form `cloud-hypervisor --version` prints.
    let version = line
        .strip_prefix("petrel v")
        .unwrap_or_else(|| panic!("want `petrel v<version>`\n{}", run.dump()));
    assert!(is_semver(version), "not semver: {version:?}");
    // The binary and this crate share the workspace version.
    assert_eq!(version, env!("CARGO_PKG_VERSION"));
}

#[test]
fn capabilities_report_is_json_describing_this_host() {
    let run = run_petrel(&["--capabilities"], Duration::from_secs(30));
    assert_eq!(run.code(), Some(0), "{}", run.dump());
    let caps: serde_json::Value = serde_json::from_str(&run.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON: {e}\n{}", run.dump()));
    let kvm_status = caps["hypervisors"]["kvm"]["status"].as_str();
    let mshv_status = caps["hypervisors"]["mshv"]["status"].as_str();
    assert!(kvm_status.is_some(), "no hypervisors.kvm.status\n{caps:#}");
    assert!(
        mshv_status.is_some(),
        "no hypervisors.mshv.status\n{caps:#}"
    );
    assert_eq!(
        kvm_status == Some("available"),
        kvm_available(),
        "hypervisors.kvm.status disagrees with opening /dev/kvm\n{caps:#}"
    );
    let reason = caps["auto"]["reason"].as_str().unwrap_or_default();
    if !mshv_present() {
        assert_eq!(mshv_status, Some("missing"), "{caps:#}");
        assert!(
            reason.contains(MSHV_DEVICE),
            "auto.reason does not mention {MSHV_DEVICE}\n{caps:#}"
        );
        if kvm_available() {
            assert_eq!(caps["auto"]["hypervisor"].as_str(), Some("kvm"), "{caps:#}");
        }
    }
}

// ---- --hypervisor ----

#[test]
fn hypervisor_mshv_without_dev_mshv_is_refused_naming_it() {
    if mshv_present() {
        petrel_tests::skip(format!("{MSHV_DEVICE} exists on this host"));
        return;
    }
    let kernel = guest_image(GuestKind::Pvh);
    for extra in [&[][..], &["--feature-gates", "mshv"][..]] {
        let mut args = vec!["--kernel", kernel.as_str(), "--hypervisor", "mshv"];
        args.extend_from_slice(extra);
        let run = run_petrel(&args, Duration::from_secs(30));
        assert_one_line_error(&run, 1, MSHV_DEVICE);
    }
}

#[test]
fn hypervisor_kvm_boots_the_guest() {
    require_kvm!();
    let (run, b) = boot(GuestKind::Pvh, &["--hypervisor", "kvm"]);
    assert_powered_off(&run, &b);
}

#[test]
fn hypervisor_unknown_is_a_command_line_error() {
    let kernel = guest_image(GuestKind::Pvh);
    let run = run_petrel(
        &["--kernel", &kernel, "--hypervisor", "xen"],
        Duration::from_secs(30),
    );
    assert_one_line_error(&run, 2, "--hypervisor");
}

// ---- signals ----

/// Boots `action=halt` on `cpus` vCPUs, sends `sig` once the guest has halted, and checks
/// petrel stops every vCPU thread and exits 0 promptly, saying why.
fn check_stops_on_signal(sig: libc::c_int, cpus: u32) {
    let kernel = guest_image(GuestKind::Pvh);
    let n = cpus.to_string();
    let mut p = Petrel::spawn(&[
        "--kernel",
        &kernel,
        "--cmdline",
        "action=halt",
        "--cpus",
        &n,
        "--memory",
        "64M",
    ]);
    let halted = p.wait_for_stdout(TIMEOUT, |s| s.contains("PETREL-GUEST: halt\n"));
    assert!(
        halted,
        "guest did not halt\n--- stdout ---\n{}\n--- stderr ---\n{}",
        p.stdout(),
        p.stderr()
    );
    let threads = p.thread_names();
    for i in 0..cpus {
        assert!(
            threads.contains(&format!("vcpu{i}")),
            "no vcpu{i} thread before the signal: {threads:?}"
        );
    }
    let sent = Instant::now();
    p.signal(sig);
    let run = p.wait(STOP_WITHIN);
    let took = sent.elapsed();
    assert!(
        !run.timed_out,
        "petrel still running {STOP_WITHIN:?} after signal {sig} ({cpus} vCPUs)\n{}",
        run.dump()
    );
    assert_eq!(
        run.code(),
        Some(0),
        "signal {sig}: exit code\n{}",
        run.dump()
    );
    assert!(took < STOP_WITHIN, "took {took:?}");
    assert!(
        run.stderr.to_lowercase().contains("signal"),
        "stderr does not say it stopped on a signal\n{}",
        run.dump()
    );
    assert!(run.error_lines().is_empty(), "{}", run.dump());
    assert!(!run.stderr.contains("panicked"), "{}", run.dump());
    let b = parse_first_boot(&run.stdout);
    assert_eq!(b.cpus, Some((cpus, cpus)), "{}", run.dump());
    assert_eq!(parse_boots(&run.stdout).len(), 1, "{}", run.dump());
}

#[test]
fn sigterm_stops_a_running_guest() {
    require_kvm!();
    check_stops_on_signal(libc::SIGTERM, 1);
}

#[test]
fn sigint_stops_a_running_guest() {
    require_kvm!();
    check_stops_on_signal(libc::SIGINT, 1);
}

#[test]
fn sigterm_stops_both_vcpus() {
    require_kvm!();
    check_stops_on_signal(libc::SIGTERM, 2);
}

#[test]
fn sigint_stops_both_vcpus() {
    require_kvm!();
    check_stops_on_signal(libc::SIGINT, 2);
}

// ---- serial input ----

/// Boots `action=echo`, writes `line` + '\n' to petrel's stdin once the guest is ready, and
/// checks the guest read it back from COM1.
fn check_echo(line: &str) {
    let kernel = guest_image(GuestKind::Pvh);
    let mut p = Petrel::spawn_with_stdin(&["--kernel", &kernel, "--cmdline", "action=echo"]);
    let ready = p.wait_for_stdout(TIMEOUT, |s| s.contains("ECHO: ready\n"));
    assert!(
        ready,
        "guest not ready\n--- stdout ---\n{}\n--- stderr ---\n{}",
        p.stdout(),
        p.stderr()
    );
    p.write_stdin(format!("{line}\n").as_bytes())
        .expect("writing petrel's stdin");
    let run = p.wait(TIMEOUT);
    let b = parse_first_boot(&run.stdout);
    assert_eq!(b.echo, ["ready", line], "{}", run.dump());
    assert_powered_off(&run, &b);
}

#[test]
fn serial_input_from_stdin_reaches_the_guest() {
    require_kvm!();
    check_echo("hello petrel");
}

#[test]
fn serial_input_longer_than_the_uart_fifo() {
    require_kvm!();
    let line: String = (0..150u8).map(|i| char::from(b'a' + i % 26)).collect();
    check_echo(&line);
}

// ---- triple fault ----

fn check_triple_fault(kind: GuestKind) {
    let kernel = guest_image(kind);
    let run = run_petrel(
        &["--kernel", &kernel, "--cmdline", "action=triple-fault"],
        TIMEOUT,
    );
    assert!(!run.timed_out, "petrel did not exit\n{}", run.dump());
    assert!(
        run.code().is_some_and(|c| c != 0),
        "a triple fault must fail\n{}",
        run.dump()
    );
    assert!(!run.stderr.contains("panicked"), "{}", run.dump());
    let boots = parse_boots(&run.stdout);
    assert_eq!(boots.len(), 1, "guest rebooted\n{}", run.dump());
    assert_eq!(boots[0].action.as_deref(), Some("triple-fault"));
    let lines = run.error_lines();
    assert_eq!(lines.len(), 1, "want one error line\n{}", run.dump());
    let line = lines[0];
    assert!(line.starts_with("petrel: error:"), "{}", run.dump());
    assert!(line.contains("triple fault"), "{}", run.dump());
    assert!(line.to_lowercase().contains("vcpu"), "{}", run.dump());
    // On AMD SVM the faulting rip is lost (KVM resets the vCPU on shutdown): petrel says so.
    if line.contains("rip unknown: the hypervisor reset the vCPU on shutdown") {
        return;
    }
    let rip = line
        .split_once("rip 0x")
        .map(|(_, r)| r.split(|c: char| !c.is_ascii_hexdigit()).next())
        .and_then(|h| u64::from_str_radix(h.unwrap_or_default(), 16).ok())
        .unwrap_or_else(|| panic!("no `rip 0x…`\n{}", run.dump()));
    // The guest faults on its `ud2` (0f 0b): the reported rip must point there.
    assert_eq!(
        loaded_bytes(kind, Path::new(&kernel), rip, 2),
        Some(vec![0x0f, 0x0b]),
        "rip {rip:#x} is not the guest's ud2\n{}",
        run.dump()
    );
}

#[test]
fn triple_fault_pvh_is_an_error_naming_rip() {
    require_kvm!();
    check_triple_fault(GuestKind::Pvh);
}

#[test]
fn triple_fault_bzimage_is_an_error_naming_rip() {
    require_kvm!();
    check_triple_fault(GuestKind::BzImage);
}

// ---- debug port ----

#[test]
fn debug_port_writes_are_logged_with_their_time() {
    require_kvm!();
    let (run, b) = boot(GuestKind::Pvh, &["--cmdline", "exits=3"]);
    assert_powered_off(&run, &b);
    assert_eq!(b.exits, Some(3), "{}", run.dump());
    let writes: Vec<_> = debug_port_lines(&run.stderr)
        .into_iter()
        .map(|l| l.unwrap_or_else(|bad| panic!("malformed line {bad:?}\n{}", run.dump())))
        .collect();
    assert_eq!(writes.len(), 3, "{}", run.dump());
    let values: Vec<u8> = writes.iter().map(|w| w.value).collect();
    assert_eq!(values, [0, 1, 2], "{}", run.dump());
    let elapsed_ms = run.elapsed.as_secs_f64() * 1000.0;
    for w in writes.windows(2) {
        assert!(w[0].ms <= w[1].ms, "times go backwards\n{}", run.dump());
    }
    assert!(writes[2].ms <= elapsed_ms, "{}", run.dump());
}

// ---- --config-file ----

const CONFIG_CMDLINE: &str = "action=poweroff config-file-test";
const CONFIG_MEMORY: u64 = 128 * MIB;

/// Writes a config file (2 vCPUs, 128 MiB, serial to `serial`) and returns its path.
fn write_config(name: &str, kernel: &str, serial: &Path) -> std::path::PathBuf {
    let config = serde_json::json!({
        "payload": {"kernel": kernel, "cmdline": CONFIG_CMDLINE},
        "cpus": {"boot_vcpus": 2},
        "memory": {"size": CONFIG_MEMORY},
        "serial": {"mode": "File", "file": serial},
    });
    let path = scratch_path(name);
    std::fs::write(&path, config.to_string()).unwrap();
    path
}

/// Runs petrel with a config file plus `flags`; returns the run and the serial file's boot.
fn boot_from_config(name: &str, flags: &[&str]) -> (Run, GuestBoot) {
    let kernel = guest_image(GuestKind::Pvh);
    let serial = scratch_path(&format!("{name}.serial"));
    let _ = std::fs::remove_file(&serial);
    let config = write_config(&format!("{name}.json"), &kernel, &serial);
    let mut args = vec!["--config-file", config.to_str().unwrap()];
    args.extend_from_slice(flags);
    let run = run_petrel(&args, TIMEOUT);
    let log = std::fs::read_to_string(&serial)
        .unwrap_or_else(|e| panic!("no serial file {}: {e}\n{}", serial.display(), run.dump()));
    let b = parse_first_boot(&log);
    assert!(
        !run.stdout.contains("PETREL-GUEST"),
        "guest output on stdout despite the serial file\n{}",
        run.dump()
    );
    assert_powered_off(&run, &b);
    assert_eq!(b.cmdline.as_deref(), Some(CONFIG_CMDLINE), "{log}");
    let ram = b.ram_total.unwrap_or(0);
    assert!(
        ram <= CONFIG_MEMORY && CONFIG_MEMORY - ram <= 2 * MIB,
        "RAM {ram:#x} is not the file's 128 MiB\n{log}"
    );
    std::fs::remove_file(&serial).unwrap();
    std::fs::remove_file(&config).unwrap();
    (run, b)
}

#[test]
fn config_file_boots_the_guest_it_describes() {
    require_kvm!();
    let (run, b) = boot_from_config("config", &[]);
    assert_eq!(b.madt_cpus, Some(2), "{b:?}\n{}", run.dump());
    assert_eq!(b.cpus, Some((2, 2)), "{b:?}\n{}", run.dump());
}

#[test]
fn flags_override_the_config_file() {
    require_kvm!();
    let (run, b) = boot_from_config("config-override", &["--cpus", "1"]);
    assert_eq!(b.madt_cpus, Some(1), "{b:?}\n{}", run.dump());
    assert_eq!(b.cpus, Some((1, 1)), "{b:?}\n{}", run.dump());
}

// ---- initramfs ----

/// Boots `kind` with an initramfs of a known, not page-multiple size and checks where the
/// guest was told it is; without `--initramfs` no module is reported.
fn check_initramfs(kind: GuestKind, memory: &str) {
    let kernel = guest_image(kind);
    let path = scratch_path(&format!("initramfs-{kind:?}-{memory}"));
    let size: u64 = 12345;
    let data: Vec<u8> = (0..size).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&path, &data).unwrap();
    let (run, b) = boot(
        kind,
        &["--memory", memory, "--initramfs", path.to_str().unwrap()],
    );
    std::fs::remove_file(&path).unwrap();
    assert_powered_off(&run, &b);
    let [m] = b.modules[..] else {
        panic!("want one MODULE line\n{}", run.dump());
    };
    assert_eq!(m.size, size, "{}", run.dump());
    assert_eq!(m.addr % 4096, 0, "not page-aligned\n{}", run.dump());
    assert!(m.addr >= HIMEM_START, "below 1 MiB\n{}", run.dump());
    let ram_end = b
        .memmap
        .iter()
        .filter(|r| r.kind == 1)
        .map(|r| r.end())
        .max()
        .unwrap_or(0);
    assert!(m.end() <= ram_end, "past the end of RAM\n{}", run.dump());
    assert!(
        m.end() <= MMIO_HOLE_START,
        "in the MMIO hole\n{}",
        run.dump()
    );
    assert!(
        b.ram_contains(m.addr, m.end()),
        "not inside one RAM entry\n{}",
        run.dump()
    );
    let (k_start, k_end) = loaded_extent(kind, Path::new(&kernel)).unwrap();
    assert!(
        m.end() <= k_start || m.addr >= k_end,
        "overlaps the kernel [{k_start:#x}, {k_end:#x})\n{}",
        run.dump()
    );
    if kind == GuestKind::BzImage {
        // The setup header's initrd_addr_max (0x22c) bounds the ramdisk's last byte.
        let image = std::fs::read(&kernel).unwrap();
        let max = u64::from(u32::from_le_bytes(image[0x22c..0x230].try_into().unwrap()));
        assert!(
            m.end() - 1 <= max,
            "above initrd_addr_max {max:#x}\n{}",
            run.dump()
        );
    }

    let (run, b) = boot(kind, &["--memory", memory]);
    assert_powered_off(&run, &b);
    assert!(
        b.modules.is_empty(),
        "module without --initramfs\n{}",
        run.dump()
    );
}

#[test]
fn initramfs_is_reported_to_a_pvh_guest() {
    require_kvm!();
    check_initramfs(GuestKind::Pvh, "128M");
}

#[test]
fn initramfs_is_reported_to_a_bzimage_guest() {
    require_kvm!();
    check_initramfs(GuestKind::BzImage, "128M");
}

#[test]
fn initramfs_respects_bzimage_initrd_addr_max_with_3g() {
    require_kvm!();
    check_initramfs(GuestKind::BzImage, "3G");
}
