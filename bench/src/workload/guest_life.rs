//! "Life of a test guest": start the VMM with the PVH test guest, and measure the time to
//! the first guest serial byte, the time to process exit (the guest powers off right after
//! a few lines), and the VMM's peak RSS.

use std::fs::{self, File};
use std::path::{Path, PathBuf};

use super::{Metric, RunContext, RunRecord, Workload};
use crate::child::{self, Measured};
use crate::peers::{GuestSpec, Vmm};

/// First line the PVH test guest prints.
const GUEST_FIRST_LINE: &[u8] = b"PETREL-GUEST: start";

const METRICS: &[Metric] = &[
    Metric {
        key: "first_serial_byte_ms",
        label: "first serial byte",
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

/// The workload: one guest boot and power-off per run.
#[derive(Debug, Clone)]
pub struct GuestLife {
    /// The PVH test guest image.
    pub kernel: PathBuf,
    /// vCPUs given to the guest.
    pub cpus: u32,
    /// Guest memory in MiB.
    pub memory_mib: u32,
}

impl GuestLife {
    /// The workload on `kernel` with 1 vCPU and 128 MiB.
    pub fn new(kernel: PathBuf) -> GuestLife {
        GuestLife {
            kernel,
            cpus: 1,
            memory_mib: 128,
        }
    }

    fn guest_for(&self, vmm: &Vmm) -> GuestSpec {
        GuestSpec {
            kernel: self.kernel.clone(),
            cpus: self.cpus,
            memory_mib: self.memory_mib,
            cmdline: format!("action={}", vmm.kind.shutdown().guest_action()),
        }
    }

    /// Why a finished run does not count, if it does not.
    fn check(vmm: &Vmm, m: &Measured) -> Option<String> {
        let marker = vmm.kind.shutdown().guest_marker();
        if m.interrupted {
            Some("interrupted".into())
        } else if m.timed_out {
            Some("timed out (killed)".into())
        } else if !m.status.success() {
            Some(format!("VMM ended with {}", m.status))
        } else if m.first_byte.is_none() {
            Some("no serial output".into())
        } else if !m.stdout.starts_with(GUEST_FIRST_LINE) {
            Some(format!(
                "stdout does not start with the guest's first line: {:?}",
                head(&m.stdout)
            ))
        } else if !contains(&m.stdout, marker.as_bytes()) {
            Some(format!("guest never printed {marker:?}"))
        } else {
            None
        }
    }
}

fn head(out: &[u8]) -> String {
    String::from_utf8_lossy(&out[..out.len().min(80)]).into_owned()
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn ms(d: std::time::Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

impl Workload for GuestLife {
    fn name(&self) -> &'static str {
        "guest-life"
    }

    fn description(&self) -> &'static str {
        "life of a test guest: process start -> first guest serial byte -> process exit"
    }

    fn metrics(&self) -> &'static [Metric] {
        METRICS
    }

    fn parameters(&self) -> serde_json::Value {
        serde_json::json!({
            "kernel": self.kernel,
            "boot": "PVH",
            "cpus": self.cpus,
            "memory_mib": self.memory_mib,
        })
    }

    fn command_line(&self, vmm: &Vmm, scratch: &Path) -> Option<Vec<String>> {
        vmm.command_line(&self.guest_for(vmm), scratch).ok()
    }

    fn run_once(&self, vmm: &Vmm, ctx: &RunContext) -> RunRecord {
        let round = ctx.round;
        let logs = ctx.scratch.join("logs");
        let log = logs.join(format!("{}-{}-{round}.log", self.name(), vmm.name()));
        let cmd = fs::create_dir_all(&logs)
            .and_then(|()| vmm.command(&self.guest_for(vmm), &ctx.scratch))
            .and_then(|mut cmd| {
                cmd.stderr(File::create(&log)?);
                Ok(cmd)
            });
        let measured = cmd.and_then(|cmd| child::run_measured(cmd, ctx.timeout));
        let m = match measured {
            Ok(m) => m,
            Err(e) => {
                let _ = fs::remove_file(&log);
                return RunRecord::failed(round, format!("cannot run {}: {e}", vmm.name()));
            }
        };
        let error = Self::check(vmm, &m);
        let ok = error.is_none();
        let log = if ok {
            let _ = fs::remove_file(&log);
            None
        } else {
            // Keep what the guest printed next to what the VMM logged.
            let _ = fs::write(log.with_extension("serial"), &m.stdout);
            Some(log)
        };
        let rss_mib = m.max_rss_kib as f64 / 1024.0;
        RunRecord {
            round,
            ok,
            exit: Some(m.status.to_string()),
            error,
            values: [
                ("first_serial_byte_ms", m.first_byte.map(ms)),
                ("exit_ms", Some(ms(m.exit))),
                ("peak_rss_mib", Some(rss_mib)),
            ]
            .into_iter()
            .collect(),
            log,
        }
    }
}
