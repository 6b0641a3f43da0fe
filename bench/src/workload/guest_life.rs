//! "Life of a test guest": start the VMM with the PVH test guest (`action=quick` for every
//! VMM: the start line, a silent ACPI walk, the poweroff line, then ACPI S5 or, without a
//! sleep register, an i8042 reset), and measure the time to the first guest serial byte, the
//! time to process exit, and the VMM's peak RSS. The life is split into the VMM's share
//! (start: spawn to the first serial byte; stop: the poweroff line to process exit) and the
//! guest's (first byte to the poweroff line: mostly its ACPI walk, which PVM hosts emulate
//! and which grows with the size of each VMM's DSDT).

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{Metric, RunContext, RunRecord, Workload};
use crate::child::{self, Measured};
use crate::peers::{GuestSpec, Vmm, POWEROFF_MARKER, QUICK_ACTION};

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
        key: "guest_ms",
        label: "guest: first byte to poweroff line",
        unit: "ms",
    },
    Metric {
        key: "stop_ms",
        label: "VMM stop: poweroff line to exit",
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

    fn guest_for(&self) -> GuestSpec {
        GuestSpec {
            kernel: self.kernel.clone(),
            cpus: self.cpus,
            memory_mib: self.memory_mib,
            cmdline: format!("action={QUICK_ACTION}"),
        }
    }

    /// Why a finished run does not count, if it does not.
    fn check(m: &Measured) -> Option<String> {
        let marker = POWEROFF_MARKER;
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

/// The guest's share (first byte to the arrival of the poweroff line) and the VMM's stop
/// (that arrival to process exit).
fn split(m: &Measured) -> (Option<Duration>, Option<Duration>) {
    let marker = m
        .stdout
        .windows(POWEROFF_MARKER.len())
        .position(|w| w == POWEROFF_MARKER.as_bytes());
    let Some(at) = marker.and_then(|i| m.arrival(i)) else {
        return (None, None);
    };
    let guest = m.first_byte.and_then(|f| at.checked_sub(f));
    (guest, m.exit.checked_sub(at))
}

fn head(out: &[u8]) -> String {
    String::from_utf8_lossy(&out[..out.len().min(80)]).into_owned()
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

impl Workload for GuestLife {
    fn name(&self) -> &'static str {
        "guest-life"
    }

    fn description(&self) -> &'static str {
        "life of a test guest (the same action on every VMM): process start -> first guest serial byte -> poweroff line (the guest's share) -> process exit (the VMM's stop)"
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
            "guest_cmdline": format!("action={QUICK_ACTION}"),
        })
    }

    fn command_line(&self, vmm: &Vmm, scratch: &Path) -> Option<Vec<String>> {
        vmm.command_line(&self.guest_for(), scratch).ok()
    }

    fn run_once(&self, vmm: &Vmm, ctx: &RunContext) -> RunRecord {
        let round = ctx.round;
        let logs = ctx.scratch.join("logs");
        let log = logs.join(format!("{}-{}-{round}.log", self.name(), vmm.name()));
        let cmd = fs::create_dir_all(&logs)
            .and_then(|()| vmm.command(&self.guest_for(), &ctx.scratch))
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
        let error = Self::check(&m);
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
        let (guest, stop) = split(&m);
        RunRecord {
            round,
            ok,
            exit: Some(m.status.to_string()),
            error,
            values: [
                ("first_serial_byte_ms", m.first_byte.map(ms)),
                ("exit_ms", Some(ms(m.exit))),
                ("guest_ms", guest.map(ms)),
                ("stop_ms", stop.map(ms)),
                ("peak_rss_mib", Some(rss_mib)),
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
    use std::time::Duration;

    #[test]
    fn the_life_splits_at_the_poweroff_line() {
        let out = "PETREL-GUEST: start boot=pvh\nPETREL-GUEST: poweroff\n";
        let at = out.find("PETREL-GUEST: poweroff").unwrap();
        let m = Measured {
            first_byte: Some(Duration::from_millis(10)),
            exit: Duration::from_millis(50),
            status: child::Exit::Code(0),
            max_rss_kib: 1,
            stdout: out.as_bytes().to_vec(),
            // The start line arrives at 10 ms, the poweroff line at 40 ms.
            chunks: vec![
                (Duration::from_millis(10), at),
                (Duration::from_millis(40), out.len()),
            ],
            timed_out: false,
            interrupted: false,
        };
        assert_eq!(
            split(&m),
            (
                Some(Duration::from_millis(30)),
                Some(Duration::from_millis(10))
            )
        );
        assert_eq!(GuestLife::check(&m), None);
        let mut no_marker = m.clone();
        no_marker.stdout.truncate(at);
        assert_eq!(split(&no_marker), (None, None));
        assert!(GuestLife::check(&no_marker).is_some());
    }
}
