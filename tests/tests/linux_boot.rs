//! Real Linux guests under `petrel`: the Debian cloud kernel from the guest kit
//! (`resources/build-guest-kit.sh`).
//!
//! * `early_boot_*`: boot the kernel as `vmlinux` (PVH) and as `bzImage` and check
//!   what Linux prints during early boot (banner, command line, e820 map, ACPI
//!   tables, CPU count). These run on PVM hosts too, where guest ring 0 is
//!   emulated, and stop the VM as soon as every marker was seen.
//! * `linux_full_boot_*`: boot to the initramfs `init` and power off. They need guest
//!   ring 0 to run natively; a calibration guest decides, and they skip otherwise.
//!
//! Every test skips (prints why on stderr and passes) when `/dev/kvm` is missing
//! or the kit cannot be built. The kit and the calibration come from
//! [`petrel_tests::linux_kit`]: the kit is built once per process, under a file
//! lock shared with other test processes; `PETREL_GUEST_KIT` selects its directory.

use std::path::Path;
use std::time::Duration;

use petrel_tests::{linux_kit_or_skip, ring0_native, run_petrel, run_petrel_until, Run};

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

/// Boots the kernel and initramfs to `PETREL-INIT-OK` and expects a clean power-off.
fn full_boot(test: &str, kernel: &Path, initramfs: &Path, cpus: u32) {
    let cpus_arg = cpus.to_string();
    let args = [
        "--kernel",
        path_str(kernel),
        "--initramfs",
        path_str(initramfs),
        "--cmdline",
        "console=ttyS0 panic=-1",
        "--cpus",
        &cpus_arg,
        "--memory",
        "512M",
        "--serial",
        "stdout",
        "--no-reboot",
    ];
    let run = run_petrel(&args, Duration::from_secs(120));
    let out = &run.stdout;
    let mut problems = Vec::new();
    if !out.contains("PETREL-INIT: modules loaded") {
        problems.push("no `PETREL-INIT: modules loaded`".to_string());
    }
    let want = format!("PETREL-INIT: cpus={cpus}");
    if !has_line(out, |l| l.trim_end() == want) {
        let got: Vec<&str> = lines(out)
            .filter(|l| l.contains("PETREL-INIT: cpus="))
            .collect();
        problems.push(format!("want `{want}`, got {got:?}"));
    }
    if !out.contains("PETREL-INIT-OK") {
        problems.push("no `PETREL-INIT-OK`".to_string());
    }
    if run.timed_out {
        problems.push("petrel did not exit (poweroff) within 120 s".to_string());
    } else if !run.status.is_some_and(|s| s.success()) {
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
    eprintln!("{test}: booted and powered off in {:.1?}", run.elapsed);
}

#[test]
fn linux_full_boot_1cpu() {
    let Some(kit) = linux_kit_or_skip("linux_full_boot_1cpu") else {
        return;
    };
    if !ring0_native("linux_full_boot_1cpu") {
        return;
    }
    // PVH entry (vmlinux) with one vCPU.
    full_boot("linux_full_boot_1cpu", &kit.vmlinux, &kit.initramfs, 1);
}

#[test]
fn linux_full_boot_2cpus() {
    let Some(kit) = linux_kit_or_skip("linux_full_boot_2cpus") else {
        return;
    };
    if !ring0_native("linux_full_boot_2cpus") {
        return;
    }
    // bzImage (Linux boot protocol) with two vCPUs.
    full_boot("linux_full_boot_2cpus", &kit.bzimage, &kit.initramfs, 2);
}
