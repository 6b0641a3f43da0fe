//! A Linux guest's own `reboot` under petrel: without `--no-reboot` the same process boots
//! the guest again (the machine, its disk and its devices are kept); with `--no-reboot` the
//! reboot ends petrel with status 0.
//!
//! The guest counts its boots on a raw virtio-blk disk: a hook reads the disk's first bytes;
//! on a blank disk it writes `PETREL-BOOT-1` (flushed) and runs `reboot -f`, on a marked one
//! it reports the second boot and lets init power off. The host checks the serial markers,
//! the number of kernel banners, and the marker in the disk image after petrel exits.
//!
//! Skips visibly like the other full boots (no `/dev/kvm`, no kit, guest ring 0 emulated).

use std::fs;
use std::time::Duration;

use petrel_tests::linux_guest::{
    count_lines, initramfs_with_hooks, serial_tail, Report, Scratch, REPORT_HOOK,
};
use petrel_tests::{linux_kit_or_skip, ring0_native, run_petrel, Run};

const TIMEOUT: Duration = Duration::from_secs(240);
const MARK: &str = "PETREL-BOOT-1";

/// The boot counter (a hook; `/init` has loaded virtio_blk before it runs).
const BOOT_HOOK: &str = r#"
i=0
while [ ! -b /dev/vda ] && [ "$i" -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
mark=$(head -c 13 /dev/vda | tr -d '\000')
if [ "$mark" = "PETREL-BOOT-1" ]; then
    echo "PETREL-BOOT: second boot"
else
    echo "PETREL-BOOT: first boot, disk holds '$mark'"
    printf 'PETREL-BOOT-1' | dd of=/dev/vda conv=notrunc,fsync 2>/dev/null ||
        echo "PETREL-BOOT: cannot write the disk"
    echo "PETREL-BOOT: rebooting"
    reboot -f
    sleep 30
fi
"#;

/// Boots with a blank 1 MiB disk and the boot counter; returns the run and the disk's
/// first bytes afterwards.
fn boot(test: &str, no_reboot: bool) -> Option<(Run, Vec<u8>)> {
    let kit = linux_kit_or_skip(test)?;
    if !ring0_native(test) {
        return None;
    }
    let dir = Scratch::new(test);
    let initramfs = initramfs_with_hooks(
        kit,
        &dir.0,
        &[("40-boot.sh", BOOT_HOOK), ("50-report.sh", REPORT_HOOK)],
    )
    .unwrap_or_else(|e| panic!("{test}: cannot write the initramfs: {e}"));
    let disk = dir.join("count.img");
    fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let disk_arg = format!("path={}", disk.display());
    let cmdline = petrel_tests::linux_guest::kernel_cmdline("console=ttyS0 panic=-1");
    let mut args = vec![
        "--kernel",
        kit.vmlinux.to_str().unwrap(),
        "--initramfs",
        initramfs.to_str().unwrap(),
        "--cmdline",
        &cmdline,
        "--cpus",
        "2",
        "--memory",
        "512M",
        "--disk",
        &disk_arg,
        "--serial",
        "stdout",
    ];
    if no_reboot {
        args.push("--no-reboot");
    }
    let run = run_petrel(&args, TIMEOUT);
    let head = fs::read(&disk).unwrap()[..MARK.len()].to_vec();
    Some((run, head))
}

fn common_problems(run: &Run, head: &[u8]) -> Vec<String> {
    let mut problems = Vec::new();
    if head != MARK.as_bytes() {
        problems.push(format!(
            "the disk starts with {:?}, want {MARK:?}",
            String::from_utf8_lossy(head)
        ));
    }
    if !run
        .stdout
        .contains("PETREL-BOOT: first boot, disk holds ''")
    {
        problems.push("no `PETREL-BOOT: first boot` on a blank disk".to_string());
    }
    if run.timed_out {
        problems.push(format!("petrel did not exit within {TIMEOUT:?}"));
    } else if !run.success() {
        problems.push(format!("petrel exit status {:?}, want 0", run.status));
    }
    problems
}

fn report(test: &str, run: &Run, problems: &[String]) {
    if !problems.is_empty() {
        eprintln!(
            "{test}: status {:?}, timed_out {}, elapsed {:.1?}\n--- last 60 serial lines ---\n{}\n\
             --- stderr ---\n{}",
            run.status,
            run.timed_out,
            run.elapsed,
            serial_tail(&run.stdout, 60),
            run.stderr
        );
    }
    assert!(problems.is_empty(), "{test}: {}", problems.join("; "));
}

#[test]
fn linux_guest_reboot() {
    const TEST: &str = "linux_guest_reboot";
    let Some((run, head)) = boot(TEST, false) else {
        return;
    };
    let out = &run.stdout;
    let mut problems = common_problems(&run, &head);
    let banners = out.matches("Linux version ").count();
    if banners != 2 {
        problems.push(format!("{banners} `Linux version` banners, want 2"));
    }
    if !out.contains("PETREL-BOOT: second boot") {
        problems.push("no `PETREL-BOOT: second boot`".to_string());
    }
    if count_lines(out, "PETREL-INIT-OK") != 1 {
        problems.push(format!(
            "{} `PETREL-INIT-OK` lines, want 1 (after the second boot)",
            count_lines(out, "PETREL-INIT-OK")
        ));
    }
    // The second boot is a whole machine again: both vCPUs and the disk.
    let second = out.rfind("Linux version ").map_or("", |at| &out[at..]);
    match Report::parse(second).int("nproc") {
        Ok(2) => {}
        other => problems.push(format!("second boot: nproc {other:?}, want 2")),
    }
    report(TEST, &run, &problems);
    eprintln!("{TEST}: two boots, then poweroff, in {:.1?}", run.elapsed);
}

#[test]
fn linux_guest_reboot_with_no_reboot_exits() {
    const TEST: &str = "linux_guest_reboot_with_no_reboot_exits";
    let Some((run, head)) = boot(TEST, true) else {
        return;
    };
    let out = &run.stdout;
    let mut problems = common_problems(&run, &head);
    if !out.contains("PETREL-BOOT: rebooting") {
        problems.push("no `PETREL-BOOT: rebooting`".to_string());
    }
    let banners = out.matches("Linux version ").count();
    if banners != 1 {
        problems.push(format!("{banners} `Linux version` banners, want 1"));
    }
    if out.contains("PETREL-INIT-OK") {
        problems.push("init went on to power off: the reboot did not end petrel".to_string());
    }
    report(TEST, &run, &problems);
    eprintln!(
        "{TEST}: the guest's reboot ended petrel in {:.1?}",
        run.elapsed
    );
}
