//! Real Linux guests under `petrel`: the Debian cloud kernel from the guest kit
//! (`resources/build-guest-kit.sh`).
//!
//! * `early_boot_*`: boot the kernel as `vmlinux` (PVH) and as `bzImage` and check
//!   what Linux prints during early boot (banner, command line, e820 map, ACPI
//!   tables, CPU count). These run on PVM hosts too, where guest ring 0 is
//!   emulated, and stop the VM as soon as every marker was seen.
//! * `linux_full_boot_*`: boot to the initramfs `init` (vmlinux and bzImage, 1, 2 and 4
//!   vCPUs) with a virtio-rng device, check what the guest reports (CPUs, memory, its clock
//!   against the host's, the CMOS RTC as `/dev/rtc0` and `hwclock`, the virtio device found
//!   through the DSDT alone) and that its poweroff ends petrel with status 0.
//! * `linux_boot_without_initramfs`: the kernel alone gets to mounting its root file system.
//!   They need guest ring 0 to run natively; a calibration guest decides, and they skip
//!   otherwise.
//!
//! Every test skips (prints why on stderr and passes) when `/dev/kvm` is missing
//! or the kit cannot be built. The kit and the calibration come from
//! [`petrel_tests::linux_kit`]: the kit is built once per process, under a file
//! lock shared with other test processes; `PETREL_GUEST_KIT` selects its directory.

use std::path::Path;
use std::time::Duration;

use petrel_tests::linux_guest::{
    count_lines, host_epoch, initramfs_with_hooks, parse_hwclock, Report, Scratch, REPORT_HOOK,
};
use petrel_tests::{linux_kit_or_skip, ring0_native, run_petrel, run_petrel_until, Petrel, Run};

/// Command line for the early-boot tests; the token proves the command line arrived.
const EARLY_TOKEN: &str = "petrel-early-boot-token-7f3a";
const EARLY_CMDLINE: &str =
    "console=ttyS0 earlyprintk=ttyS0 clearcpuid=cx16 noxsave petrel-early-boot-token-7f3a";
/// Guest memory for the early-boot tests, in MiB.
const EARLY_MEM_MIB: u64 = 512;
fn path_str(p: &Path) -> &str {
    p.to_str().expect("kit paths are UTF-8")
}

/// Lines of serial output without the `\r` of the serial line discipline.
fn lines(out: &str) -> impl Iterator<Item = &str> {
    out.lines().map(|l| l.trim_end_matches('\r'))
}

fn tail(out: &str, n: usize) -> String {
    let all: Vec<&str> = lines(out).collect();
    all[all.len().saturating_sub(n)..].join("\n")
}

/// Usable `BIOS-e820:` ranges as (start, end inclusive).
fn usable_e820(out: &str) -> Vec<(u64, u64)> {
    lines(out)
        .filter(|l| l.contains("BIOS-e820: [mem ") && l.trim_end().ends_with("] usable"))
        .filter_map(|l| {
            let range = l.split("[mem ").nth(1)?.split(']').next()?;
            let (a, b) = range.split_once('-')?;
            let parse = |s: &str| u64::from_str_radix(s.trim_start_matches("0x"), 16).ok();
            Some((parse(a)?, parse(b)?))
        })
        .collect()
}

/// One thing early boot must print.
struct Marker {
    name: &'static str,
    seen: fn(&str) -> bool,
}

fn has_line(out: &str, pred: impl Fn(&str) -> bool) -> bool {
    lines(out).any(pred)
}

const EARLY_MARKERS: &[Marker] = &[
    Marker {
        name: "`Linux version` banner",
        seen: |o| has_line(o, |l| l.contains("Linux version ")),
    },
    Marker {
        name: "`Command line:` with the test token",
        seen: |o| {
            has_line(o, |l| {
                l.contains("Command line:") && l.contains(EARLY_TOKEN)
            })
        },
    },
    Marker {
        name: "`BIOS-provided physical RAM map:`",
        seen: |o| o.contains("BIOS-provided physical RAM map:"),
    },
    Marker {
        name: "usable e820 RAM starting at 0",
        seen: |o| usable_e820(o).iter().any(|&(start, _)| start == 0),
    },
    Marker {
        name: "usable e820 RAM ending near 512M (448M..=512M)",
        seen: |o| {
            usable_e820(o).iter().any(|&(_, end)| {
                let top = end + 1;
                top > (EARLY_MEM_MIB - 64) << 20 && top <= EARLY_MEM_MIB << 20
            })
        },
    },
    Marker {
        name: "`ACPI: RSDP`",
        seen: |o| o.contains("ACPI: RSDP "),
    },
    Marker {
        name: "`ACPI: XSDT`",
        seen: |o| o.contains("ACPI: XSDT "),
    },
    Marker {
        name: "`ACPI: FACP`",
        seen: |o| o.contains("ACPI: FACP "),
    },
    Marker {
        name: "`ACPI: APIC`",
        seen: |o| o.contains("ACPI: APIC "),
    },
    Marker {
        name: "`ACPI: DSDT`",
        seen: |o| o.contains("ACPI: DSDT "),
    },
    Marker {
        name: "`smpboot: Allowing 2 CPUs`",
        seen: |o| o.contains("smpboot: Allowing 2 CPUs"),
    },
];

fn missing_markers(out: &str) -> Vec<&'static str> {
    EARLY_MARKERS
        .iter()
        .filter(|m| !(m.seen)(out))
        .map(|m| m.name)
        .collect()
}

fn describe(run: &Run) -> String {
    format!(
        "status {:?}, timed_out {}, elapsed {:.1?}\n--- last 40 lines of stdout ---\n{}\n--- stderr ---\n{}",
        run.status,
        run.timed_out,
        run.elapsed,
        tail(&run.stdout, 40),
        tail(&run.stderr, 40)
    )
}

/// Boots `kernel` with 2 vCPUs and 512M until every early-boot marker was printed.
fn early_boot(test: &str, kernel: &Path, timeout: Duration) {
    let mem = format!("{EARLY_MEM_MIB}M");
    let args = [
        "--kernel",
        path_str(kernel),
        "--cpus",
        "2",
        "--memory",
        &mem,
        "--cmdline",
        EARLY_CMDLINE,
        "--serial",
        "stdout",
        "--no-reboot",
    ];
    let run = run_petrel_until(&args, timeout, |out| missing_markers(out).is_empty());
    let missing = missing_markers(&run.stdout);
    if !missing.is_empty() {
        eprintln!("{test}: {}", describe(&run));
    }
    assert!(
        missing.is_empty(),
        "{test}: early boot of {} did not print: {}",
        kernel.display(),
        missing.join(", ")
    );
    eprintln!("{test}: all early-boot markers seen in {:.1?}", run.elapsed);
}

#[test]
fn early_boot_vmlinux_pvh() {
    let Some(kit) = linux_kit_or_skip("early_boot_vmlinux_pvh") else {
        return;
    };
    early_boot(
        "early_boot_vmlinux_pvh",
        &kit.vmlinux,
        Duration::from_secs(120),
    );
}

#[test]
fn early_boot_bzimage() {
    let Some(kit) = linux_kit_or_skip("early_boot_bzimage") else {
        return;
    };
    // The bzImage decompresses itself first; emulated ring 0 makes that ~140 s.
    early_boot("early_boot_bzimage", &kit.bzimage, Duration::from_secs(300));
}

/// Largest difference between the guest's clocks and the host's, in seconds.
const CLOCK_SLACK: i64 = 5;
/// Linux's message when its RTC driver refuses the CMOS clock.
const RTC_PROBE_FAILED: &str = "probe of rtc_cmos failed";

/// The problems in `report` for a boot with `cpus` vCPUs and `mem_mib` MiB, whose last report
/// line the host saw at `host_seen` (seconds since the epoch).
fn report_problems(report: &Report, cpus: u32, mem_mib: i64, host_seen: i64) -> Vec<String> {
    let mut problems = Vec::new();
    let mut check = |r: Result<(), String>| {
        if let Err(e) = r {
            problems.push(e);
        }
    };
    check(report.int("nproc").and_then(|n| {
        (n == i64::from(cpus))
            .then_some(())
            .ok_or(format!("nproc={n}, want {cpus}"))
    }));
    // MemTotal is the RAM less what the kernel keeps (its image, page structs): between 85%
    // and 100% of what was asked for.
    check(report.int("memtotal_kib").and_then(|kib| {
        let asked = mem_mib * 1024;
        (kib <= asked && kib * 100 >= asked * 85)
            .then_some(())
            .ok_or(format!("MemTotal {kib} KiB for --memory {mem_mib}M"))
    }));
    check(report.int("date").and_then(|d| {
        ((host_seen - d).abs() <= CLOCK_SLACK)
            .then_some(())
            .ok_or(format!(
                "guest date {d} vs host {host_seen}: more than {CLOCK_SLACK} s apart"
            ))
    }));
    check(report.get("rtc0").and_then(|v| {
        (v == "yes")
            .then_some(())
            .ok_or("no /dev/rtc0 in the guest".to_string())
    }));
    check(report.get("rtc_name").and_then(|v| {
        v.contains("rtc_cmos")
            .then_some(())
            .ok_or(format!("rtc0 is {v:?}, not rtc_cmos"))
    }));
    check(report.get("hwclock").and_then(|line| {
        let t = parse_hwclock(line).ok_or(format!("hwclock -r printed {line:?}"))?;
        ((host_seen - t).abs() <= CLOCK_SLACK)
            .then_some(())
            .ok_or(format!(
                "hwclock -r {t} ({line:?}) vs host {host_seen}: more than {CLOCK_SLACK} s apart"
            ))
    }));
    // The virtio-rng device, found through the DSDT alone.
    check(report.get("cmdline_virtio").and_then(|v| {
        (v == "no")
            .then_some(())
            .ok_or("virtio_mmio.device= on the command line".to_string())
    }));
    check(report.int("virtio_acpi").and_then(|n| {
        (n == 1)
            .then_some(())
            .ok_or(format!("{n} LNRO0005 platform devices, want 1"))
    }));
    check(report.int("virtio_devices").and_then(|n| {
        (n == 1)
            .then_some(())
            .ok_or(format!("{n} virtio devices bound to a driver, want 1"))
    }));
    problems
}

/// Boots `kernel` and the kit's initramfs (plus the report hook) with `cpus` vCPUs, `mem_mib`
/// MiB and a virtio-rng device; checks the report and a clean power-off.
fn full_boot(test: &str, kernel: &Path, cpus: u32, mem_mib: u32) {
    let Some(kit) = linux_kit_or_skip(test) else {
        return;
    };
    if !ring0_native(test) {
        return;
    }
    let kernel = kit.dir.join(kernel);
    let dir = Scratch::new(test);
    let initramfs = initramfs_with_hooks(kit, &dir.0, &[("50-report.sh", REPORT_HOOK)])
        .unwrap_or_else(|e| panic!("{test}: cannot write the initramfs: {e}"));
    let (cpus_arg, mem_arg) = (cpus.to_string(), format!("{mem_mib}M"));
    let cmdline = petrel_tests::linux_guest::kernel_cmdline("console=ttyS0 panic=-1");
    let args = [
        "--kernel",
        path_str(&kernel),
        "--initramfs",
        path_str(&initramfs),
        "--cmdline",
        &cmdline,
        "--cpus",
        &cpus_arg,
        "--memory",
        &mem_arg,
        "--rng",
        "--serial",
        "stdout",
        "--no-reboot",
    ];
    let mut petrel = Petrel::spawn(&args);
    let reported = petrel.wait_for_stdout(TIMEOUT, |o| o.contains("PETREL-R: cmdline_virtio="));
    let host_seen = host_epoch();
    let run = petrel.wait(TIMEOUT);
    let out = &run.stdout;
    let mut problems = Vec::new();
    if !out.contains("PETREL-INIT: modules loaded") {
        problems.push("no `PETREL-INIT: modules loaded`".to_string());
    }
    if reported {
        problems.extend(report_problems(
            &Report::parse(out),
            cpus,
            i64::from(mem_mib),
            host_seen,
        ));
    } else {
        problems.push("the report hook never finished".to_string());
    }
    if out.contains(RTC_PROBE_FAILED) {
        problems.push(format!("Linux logged `{RTC_PROBE_FAILED}`"));
    }
    if !out.contains("PETREL-INIT-OK") {
        problems.push("no `PETREL-INIT-OK`".to_string());
    }
    if count_lines(out, "PETREL-INIT: modules loaded") > 1 {
        problems.push("the guest booted more than once".to_string());
    }
    if run.timed_out {
        problems.push(format!("petrel did not exit (poweroff) within {TIMEOUT:?}"));
    } else if !run.success() {
        problems.push(format!("petrel exit status {:?}, want 0", run.status));
    }
    if !problems.is_empty() {
        eprintln!("{test}: {}", describe(&run));
    }
    assert!(
        problems.is_empty(),
        "{test}: full boot of {}: {}",
        kernel.display(),
        problems.join("; ")
    );
    eprintln!(
        "{test}: booted, reported and powered off in {:.1?}",
        run.elapsed
    );
}

/// How long a full boot may take (nested TCG is slow, and slower when the machine is busy).
const TIMEOUT: Duration = Duration::from_secs(180);

#[test]
fn linux_full_boot_1cpu() {
    // PVH entry (vmlinux), one vCPU.
    full_boot("linux_full_boot_1cpu", Path::new("vmlinux"), 1, 512);
}

#[test]
fn linux_full_boot_2cpus() {
    // bzImage (Linux boot protocol), two vCPUs.
    full_boot("linux_full_boot_2cpus", Path::new("bzImage"), 2, 512);
}

#[test]
fn linux_full_boot_4cpus() {
    // PVH entry, four vCPUs and 1 GiB.
    full_boot("linux_full_boot_4cpus", Path::new("vmlinux"), 4, 1024);
}

/// Without an initramfs the kernel cannot reach userspace: the Debian cloud kernel has
/// virtio_mmio and virtio_blk as modules, so with no initramfs to load them there is no root
/// device. What is checked is that it gets as far as mounting its root file system (and says
/// it cannot), then `panic=-1` reboots at once and `--no-reboot` turns that into exit 0.
#[test]
fn linux_boot_without_initramfs() {
    const TEST: &str = "linux_boot_without_initramfs";
    let Some(kit) = linux_kit_or_skip(TEST) else {
        return;
    };
    if !ring0_native(TEST) {
        return;
    }
    let cmdline = petrel_tests::linux_guest::kernel_cmdline("console=ttyS0 panic=-1 root=/dev/vda");
    let args = [
        "--kernel",
        path_str(&kit.bzimage),
        "--cmdline",
        &cmdline,
        "--cpus",
        "2",
        "--memory",
        "256M",
        "--serial",
        "stdout",
        "--no-reboot",
    ];
    let run = run_petrel(&args, TIMEOUT);
    let out = &run.stdout;
    let mut problems = Vec::new();
    if !out.contains("VFS: Cannot open root device") {
        problems.push("no `VFS: Cannot open root device`".to_string());
    }
    if !out.contains("Kernel panic - not syncing: VFS: Unable to mount root fs") {
        problems.push("no `Kernel panic - not syncing: VFS: Unable to mount root fs`".to_string());
    }
    if out.contains(RTC_PROBE_FAILED) {
        problems.push(format!("Linux logged `{RTC_PROBE_FAILED}`"));
    }
    // panic=-1 reboots at once, silently: petrel's exit 0 under --no-reboot shows the reset.
    if out.matches("Linux version ").count() != 1 {
        problems.push(format!(
            "{} `Linux version` banners, want 1 (--no-reboot)",
            out.matches("Linux version ").count()
        ));
    }
    if run.timed_out {
        problems.push(format!("petrel did not exit within {TIMEOUT:?}"));
    } else if !run.success() {
        problems.push(format!("petrel exit status {:?}, want 0", run.status));
    }
    if !problems.is_empty() {
        eprintln!("{TEST}: {}", describe(&run));
    }
    assert!(problems.is_empty(), "{TEST}: {}", problems.join("; "));
    eprintln!(
        "{TEST}: reached the root mount, panicked, rebooted → exit in {:.1?}",
        run.elapsed
    );
}
