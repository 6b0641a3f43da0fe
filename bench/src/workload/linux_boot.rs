//! "Full Linux boot": the Debian cloud kernel of the guest kit (`resources/build-guest-kit.sh`,
//! `$PETREL_GUEST_KIT`) booted as `vmlinux` (PVH) with the kit's initramfs, 1 vCPU and
//! 256 MiB, until its `/init` prints `PETREL-INIT-OK` and powers off. Metrics: time from just
//! before spawn to the `Linux version` banner on the serial console, to `PETREL-INIT-OK`, and
//! to process exit, and the VMM's peak RSS.
//!
//! A full boot needs guest ring 0 to run natively. Before the workload is set up, the
//! harness times the ring-0 loop of the PVH test guest (`action=calibrate`, as the tests'
//! `ring0_native` does, but with the petrel binary under test): where ring 0 is emulated
//! (PVM hosts) or the kit cannot be built, the workload is recorded as skipped, with its
//! reason, and runs nothing; `resources/bench-linux-boot.sh` then runs it one level down, in
//! the nested KVM of the Linux tests (the report's host line says so). petrel, QEMU
//! (`-M microvm,acpi=on`), Firecracker (the initramfs as `initrd_path`) and Cloud Hypervisor
//! (`--initramfs`) run it. The kit's init powers off with `poweroff -f` and, where that does
//! Firecracker has no ACPI sleep register (its guest would only halt), so its guest gets
//! `petrel.shutdown=reboot` and ends with `reboot -f` instead (`reboot=k`: the i8042 reset
//! Firecracker exits on).

use std::ffi::OsString;
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use petrel_tests::{build_linux_kit, LinuxKit, NATIVE_RING0_LIMIT};

use super::{Metric, RunContext, RunRecord, Workload};
use crate::child::{self, Measured};
use crate::cli::Options;
use crate::peers::{GuestSpec, Vmm, VmmKind};

/// The workload's name.
pub const NAME: &str = "linux-boot";

/// The kernel's banner, printed first once the serial console is registered.
const BANNER: &[u8] = b"Linux version ";
/// What the kit's `/init` prints just before it powers off.
const INIT_OK: &[u8] = b"PETREL-INIT-OK";
/// The report's description of the workload.
const DESCRIPTION: &str = "full Linux boot (Debian cloud kernel, PVH vmlinux + initramfs): \
     process start -> `Linux version` banner -> PETREL-INIT-OK -> process exit";
/// Kernel command line for every VMM.
const CMDLINE: &str = "console=ttyS0 reboot=k panic=-1";
/// The calibration guest is killed after this long (its loop takes ~2 s where emulated).
const CALIBRATE_TIMEOUT: Duration = Duration::from_secs(10);

const METRICS: &[Metric] = &[
    Metric {
        key: "banner_ms",
        label: "Linux banner",
        unit: "ms",
    },
    Metric {
        key: "init_ok_ms",
        label: "PETREL-INIT-OK",
        unit: "ms",
    },
    Metric {
        key: "exit_ms",
        label: "process exit",
        unit: "ms",
    },
    Metric {
        key: "peak_rss_mib",
        label: "peak RSS",
        unit: "MiB",
    },
];

/// The workload: one full boot and power-off per run, or nothing when skipped.
#[derive(Debug, Clone)]
pub struct LinuxBoot {
    /// The guest kit (`None` when skipped).
    kit: Option<LinuxKit>,
    /// Why the workload does not run on this host.
    skipped: Option<&'static str>,
    /// The report's description when skipped (the reason, marked as such).
    skipped_description: Option<&'static str>,
    /// The calibration loop's duration, when it finished.
    calibration: Option<Duration>,
    /// vCPUs given to the guest.
    pub cpus: u32,
    /// Guest memory in MiB.
    pub memory_mib: u32,
}

impl LinuxBoot {
    /// The workload booting `kit` (1 vCPU, 256 MiB); `calibration` is for the report.
    pub fn new(kit: LinuxKit, calibration: Option<Duration>) -> LinuxBoot {
        LinuxBoot {
            kit: Some(kit),
            skipped: None,
            skipped_description: None,
            calibration,
            cpus: 1,
            memory_mib: 256,
        }
    }

    /// The workload recorded as skipped for `reason`; it runs on no VMM.
    pub fn skipped(reason: String, calibration: Option<Duration>) -> LinuxBoot {
        LinuxBoot {
            kit: None,
            // Leaked once per harness process: the report wants `&'static str`s.
            skipped_description: Some(format!("{DESCRIPTION} — **skipped**: {reason}").leak()),
            skipped: Some(reason.leak()),
            calibration,
            cpus: 1,
            memory_mib: 256,
        }
    }

    /// Why the workload is skipped, if it is.
    pub fn skip_reason(&self) -> Option<&'static str> {
        self.skipped
    }

    /// Arguments booting the kit on `vmm`: its usual line plus the initramfs (and, for
    /// petrel, `--no-reboot` so that a panic ends the process).
    fn args(&self, kit: &LinuxKit, vmm: &Vmm, scratch: &Path) -> io::Result<Vec<OsString>> {
        // Inside the nested KVM, the words L1 asks every L2 guest to take (see
        // resources/nested/l1-init: `noxsave`); the same for every VMM.
        let mut cmdline = CMDLINE.to_string();
        if let Ok(extra) = std::env::var("PETREL_L2_EXTRA_CMDLINE") {
            if !extra.trim().is_empty() {
                cmdline = format!("{cmdline} {}", extra.trim());
            }
        }
        if vmm.kind == VmmKind::Firecracker {
            cmdline.push_str(" petrel.shutdown=reboot");
        }
        let guest = GuestSpec {
            kernel: kit.vmlinux.clone(),
            cpus: self.cpus,
            memory_mib: self.memory_mib,
            cmdline,
        };
        let mut a = vmm.args(&guest, scratch)?;
        match vmm.kind {
            VmmKind::Petrel => {
                a.push("--initramfs".into());
                a.push(kit.initramfs.clone().into_os_string());
                a.push("--no-reboot".into());
            }
            VmmKind::Qemu => {
                a.push("-initrd".into());
                a.push(kit.initramfs.clone().into_os_string());
            }
            VmmKind::CloudHypervisor => {
                a.push("--initramfs".into());
                a.push(kit.initramfs.clone().into_os_string());
            }
            VmmKind::Firecracker => {
                // Firecracker takes the initramfs in the configuration file `args` wrote.
                let Some(config) = vmm.config_file(scratch) else {
                    return Err(io::Error::other("no Firecracker configuration file"));
                };
                let text = fs::read_to_string(&config)?;
                let mut json: serde_json::Value =
                    serde_json::from_str(&text).map_err(io::Error::other)?;
                json["boot-source"]["initrd_path"] = serde_json::json!(kit.initramfs);
                fs::write(
                    &config,
                    serde_json::to_string_pretty(&json).map_err(io::Error::other)?,
                )?;
            }
        }
        Ok(a)
    }
}

/// Whether the workload is to run: named in `--workloads`, or a full run without `--quick`
/// (it is slow and needs the guest kit).
pub fn wanted(o: &Options) -> bool {
    match &o.workloads {
        Some(_) => o.wants(NAME),
        None => !o.quick,
    }
}

/// Times the ring-0 loop of the PVH test `guest` (`action=calibrate`) on `petrel`: the
/// time between the arrival of `CALIBRATE: begin` and of `CALIBRATE: end`, or why it could
/// not be measured.
pub fn calibrate(petrel: &Vmm, guest: &Path) -> Result<Duration, String> {
    let spec = GuestSpec {
        kernel: guest.to_path_buf(),
        cpus: 1,
        memory_mib: 64,
        cmdline: "action=calibrate".into(),
    };
    let mut cmd = petrel
        .command(&spec, Path::new("."))
        .map_err(|e| format!("cannot set up the calibration guest: {e}"))?;
    cmd.arg("--no-reboot").stderr(Stdio::null());
    let m = child::run_measured(cmd, CALIBRATE_TIMEOUT)
        .map_err(|e| format!("cannot run the calibration guest: {e}"))?;
    if m.interrupted {
        return Err("calibration interrupted".into());
    }
    let Some(begin) = marker_time(&m, b"CALIBRATE: begin") else {
        return Err(format!(
            "the calibration guest did not start ({}): {:?}",
            m.status,
            head(&m.stdout)
        ));
    };
    match marker_time(&m, b"CALIBRATE: end") {
        Some(end) => Ok(end.saturating_sub(begin)),
        None => Err(format!(
            "guest ring 0 is emulated on this host (PVM?): the calibration loop did not \
             finish within {CALIBRATE_TIMEOUT:?}"
        )),
    }
}

/// The workload if [`wanted`]: calibrates ring 0 with `petrel` and the PVH test `guest`,
/// then builds the guest kit where ring 0 is native; otherwise the skipped workload (its
/// reason printed on stderr).
pub fn prepare(o: &Options, petrel: &Vmm, guest: &Path) -> Option<Box<dyn Workload>> {
    if !wanted(o) {
        return None;
    }
    let w = match calibrate(petrel, guest) {
        Ok(t) if t <= NATIVE_RING0_LIMIT => {
            eprintln!("petrel-bench: {NAME}: calibration loop took {t:.1?}: ring 0 is native");
            match build_linux_kit() {
                Ok(kit) => LinuxBoot::new(kit, Some(t)),
                Err(e) => LinuxBoot::skipped(format!("guest kit unavailable: {e}"), Some(t)),
            }
        }
        Ok(t) => LinuxBoot::skipped(
            format!(
                "guest ring 0 is emulated on this host (PVM): the calibration loop took \
                 {t:.1?} (native: at most {NATIVE_RING0_LIMIT:?}); full Linux boots need \
                 hardware virtualisation (VT-x/AMD-V)"
            ),
            Some(t),
        ),
        Err(e) => LinuxBoot::skipped(e, None),
    };
    if let Some(reason) = w.skip_reason() {
        eprintln!("petrel-bench: {NAME} skipped: {reason}");
    }
    Some(Box::new(w))
}

/// Index of the last byte of the first `marker` in `out`.
fn marker_end(out: &[u8], marker: &[u8]) -> Option<usize> {
    if marker.is_empty() {
        return None;
    }
    out.windows(marker.len())
        .position(|w| w == marker)
        .map(|i| i + marker.len() - 1)
}

/// When the whole of the first `marker` had arrived on stdout (from just before spawn).
fn marker_time(m: &Measured, marker: &[u8]) -> Option<Duration> {
    m.arrival(marker_end(&m.stdout, marker)?)
}

fn head(out: &[u8]) -> String {
    String::from_utf8_lossy(&out[..out.len().min(120)]).into_owned()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Why a finished run does not count, if it does not.
fn check(m: &Measured) -> Option<String> {
    if m.interrupted {
        Some("interrupted".into())
    } else if m.timed_out {
        Some("timed out (killed)".into())
    } else if marker_end(&m.stdout, BANNER).is_none() {
        Some(format!("no `Linux version` banner: {:?}", head(&m.stdout)))
    } else if marker_end(&m.stdout, INIT_OK).is_none() {
        Some("init never printed PETREL-INIT-OK".into())
    } else if !m.status.success() {
        Some(format!("VMM ended with {}", m.status))
    } else {
        None
    }
}

impl Workload for LinuxBoot {
    fn name(&self) -> &'static str {
        NAME
    }

    fn description(&self) -> &'static str {
        self.skipped_description.unwrap_or(DESCRIPTION)
    }

    fn metrics(&self) -> &'static [Metric] {
        // A skipped workload has no columns and no (empty) charts.
        if self.skipped.is_some() {
            &[]
        } else {
            METRICS
        }
    }

    fn parameters(&self) -> serde_json::Value {
        serde_json::json!({
            "skipped": self.skipped,
            "kernel": self.kit.as_ref().map(|k| &k.vmlinux),
            "initramfs": self.kit.as_ref().map(|k| &k.initramfs),
            "boot": "PVH",
            "cmdline": CMDLINE,
            "cpus": self.cpus,
            "memory_mib": self.memory_mib,
            "ring0_calibration_ms": self.calibration.map(ms),
            "ring0_native_limit_ms": ms(NATIVE_RING0_LIMIT),
        })
    }

    fn supports(&self, kind: VmmKind) -> bool {
        self.skipped.is_none()
            && matches!(
                kind,
                VmmKind::Petrel | VmmKind::Qemu | VmmKind::Firecracker | VmmKind::CloudHypervisor
            )
    }

    fn command_line(&self, vmm: &Vmm, scratch: &Path) -> Option<Vec<String>> {
        let args = self.args(self.kit.as_ref()?, vmm, scratch).ok()?;
        let mut line = vec![vmm.path.to_string_lossy().into_owned()];
        line.extend(args.iter().map(|s| s.to_string_lossy().into_owned()));
        Some(line)
    }

    fn run_once(&self, vmm: &Vmm, ctx: &RunContext) -> RunRecord {
        let round = ctx.round;
        let Some(kit) = &self.kit else {
            return RunRecord::failed(round, self.skipped.unwrap_or("skipped").to_string());
        };
        let logs = ctx.scratch.join("logs");
        let log: PathBuf = logs.join(format!("{NAME}-{}-{round}.log", vmm.name()));
        let cmd = fs::create_dir_all(&logs)
            .and_then(|()| self.args(kit, vmm, &ctx.scratch))
            .and_then(|args| {
                let mut cmd = Command::new(&vmm.path);
                cmd.args(args)
                    .stdin(Stdio::null())
                    .stderr(File::create(&log)?);
                Ok(cmd)
            });
        let m = match cmd.and_then(|cmd| child::run_measured(cmd, ctx.timeout)) {
            Ok(m) => m,
            Err(e) => {
                let _ = fs::remove_file(&log);
                return RunRecord::failed(round, format!("cannot run {}: {e}", vmm.name()));
            }
        };
        let error = check(&m);
        let ok = error.is_none();
        let log = if ok {
            let _ = fs::remove_file(&log);
            None
        } else {
            let _ = fs::write(log.with_extension("serial"), &m.stdout);
            Some(log)
        };
        RunRecord {
            round,
            ok,
            exit: Some(m.status.to_string()),
            error,
            values: [
                ("banner_ms", marker_time(&m, BANNER).map(ms)),
                ("init_ok_ms", marker_time(&m, INIT_OK).map(ms)),
                ("exit_ms", Some(ms(m.exit))),
                ("peak_rss_mib", Some(m.max_rss_kib as f64 / 1024.0)),
            ]
            .into_iter()
            .collect(),
            log,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::child::Exit;

    fn measured(chunks: &[(u64, &str)], status: Exit) -> Measured {
        let mut stdout = Vec::new();
        let mut at = Vec::new();
        for &(t, s) in chunks {
            stdout.extend_from_slice(s.as_bytes());
            at.push((Duration::from_millis(t), stdout.len()));
        }
        Measured {
            first_byte: at.first().map(|c| c.0),
            exit: Duration::from_millis(at.last().map_or(0, |c| c.0.as_millis() as u64) + 5),
            status,
            max_rss_kib: 2048,
            stdout,
            chunks: at,
            timed_out: false,
            interrupted: false,
        }
    }

    const BOOT: &[(u64, &str)] = &[
        (40, "[    0.000000] Linux ver"),
        (
            41,
            "sion 6.1.0-28-cloud-amd64 (debian-kernel@lists.debian.org)\n",
        ),
        (300, "PETREL-INIT: modules loaded\nPETREL-INIT: cpus=1\n"),
        (310, "PETREL-INIT-OK\n"),
    ];

    #[test]
    fn marker_end_finds_first_occurrence() {
        assert_eq!(marker_end(b"xxabcab", b"ab"), Some(3));
        assert_eq!(marker_end(b"abc", b"abcd"), None);
        assert_eq!(marker_end(b"abc", b""), None);
        assert_eq!(marker_end(b"", b"a"), None);
    }

    #[test]
    fn marker_split_across_chunks_counts_when_complete() {
        let m = measured(BOOT, Exit::Code(0));
        assert_eq!(marker_time(&m, BANNER), Some(Duration::from_millis(41)));
        assert_eq!(marker_time(&m, INIT_OK), Some(Duration::from_millis(310)));
        assert_eq!(marker_time(&m, b"PETREL-INIT-FAILED"), None);
        assert_eq!(check(&m), None);
    }

    #[test]
    fn check_reports_what_is_missing() {
        let m = measured(&BOOT[..3], Exit::Code(0));
        assert_eq!(
            check(&m).as_deref(),
            Some("init never printed PETREL-INIT-OK")
        );
        let m = measured(&[(5, "early panic\n")], Exit::Code(0));
        assert!(check(&m).unwrap().contains("no `Linux version` banner"));
        let m = measured(BOOT, Exit::Code(1));
        assert_eq!(check(&m).as_deref(), Some("VMM ended with exit 1"));
        let mut m = measured(BOOT, Exit::Signal(9));
        m.timed_out = true;
        assert_eq!(check(&m).as_deref(), Some("timed out (killed)"));
    }

    #[test]
    fn skipped_workload_runs_nowhere() {
        let w = LinuxBoot::skipped("ring 0 is emulated".into(), Some(Duration::from_secs(2)));
        for kind in [
            VmmKind::Petrel,
            VmmKind::Qemu,
            VmmKind::Firecracker,
            VmmKind::CloudHypervisor,
        ] {
            assert!(!w.supports(kind));
        }
        assert!(w.metrics().is_empty());
        assert!(w
            .description()
            .ends_with("— **skipped**: ring 0 is emulated"));
        let p = w.parameters();
        assert_eq!(p["skipped"], "ring 0 is emulated");
        assert_eq!(p["ring0_calibration_ms"], 2000.0);
        let vmm = Vmm::new(VmmKind::Petrel, "/p".into());
        assert_eq!(w.command_line(&vmm, Path::new("/tmp")), None);
    }

    fn kit() -> LinuxKit {
        LinuxKit {
            dir: "/kit".into(),
            bzimage: "/kit/bzImage".into(),
            vmlinux: "/kit/vmlinux".into(),
            initramfs: "/kit/initramfs.cpio.gz".into(),
            rootfs: "/kit/rootfs.ext4".into(),
        }
    }

    #[test]
    fn command_lines() {
        let w = LinuxBoot::new(kit(), None);
        for kind in [
            VmmKind::Petrel,
            VmmKind::Qemu,
            VmmKind::Firecracker,
            VmmKind::CloudHypervisor,
        ] {
            assert!(w.supports(kind), "{kind:?}");
        }
        let p = Vmm::new(VmmKind::Petrel, "/p".into());
        let line = w.command_line(&p, Path::new("/tmp")).unwrap().join(" ");
        assert!(line.starts_with("/p --kernel /kit/vmlinux --cpus 1 --memory 256M"));
        assert!(line.contains("--cmdline console=ttyS0 reboot=k panic=-1"));
        assert!(line.ends_with("--initramfs /kit/initramfs.cpio.gz --no-reboot"));
        let q = Vmm::new(VmmKind::Qemu, "/q".into());
        let line = w.command_line(&q, Path::new("/tmp")).unwrap().join(" ");
        assert!(line.contains("-M microvm,acpi=on"));
        assert!(line.contains("-kernel /kit/vmlinux -append console=ttyS0 reboot=k panic=-1"));
        assert!(line.ends_with("-initrd /kit/initramfs.cpio.gz"));
        let c = Vmm::new(VmmKind::CloudHypervisor, "/c".into());
        let line = w.command_line(&c, Path::new("/tmp")).unwrap().join(" ");
        assert!(
            line.ends_with("--initramfs /kit/initramfs.cpio.gz"),
            "{line}"
        );
        // Firecracker: the initramfs and the reset at the end go into its config file.
        let dir = std::env::temp_dir().join(format!("lb-fc-{}", std::process::id()));
        let f = Vmm::new(VmmKind::Firecracker, "/f".into());
        assert!(w.command_line(&f, &dir).is_some());
        let config = std::fs::read_to_string(dir.join("firecracker-config.json")).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        let json: serde_json::Value = serde_json::from_str(&config).unwrap();
        assert_eq!(json["boot-source"]["initrd_path"], "/kit/initramfs.cpio.gz");
        assert!(json["boot-source"]["boot_args"]
            .as_str()
            .unwrap()
            .ends_with("petrel.shutdown=reboot"));
        assert!(json["drives"].is_array(), "Firecracker requires drives");
    }

    #[test]
    fn wanted_only_when_named_or_full_run() {
        let mut o = Options::default();
        assert!(wanted(&o));
        o.quick = true;
        assert!(!wanted(&o));
        o.workloads = Some(vec![NAME.to_string()]);
        assert!(wanted(&o));
        o.quick = false;
        o.workloads = Some(vec!["guest-life".to_string()]);
        assert!(!wanted(&o));
    }
}
