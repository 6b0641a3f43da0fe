//! Create rate: N VMs (the quick test guest, 1 vCPU, 64 MiB each) started together, each
//! its own VMM process, and the wall time from the first spawn until the last has exited;
//! VMs per second is N over that time. A run counts only if every VM booted, printed the
//! guest's shutdown line and its VMM exited with status 0.
//!
//! Each VM is run by [`crate::child::run_measured`] on its own thread; the threads wait on
//! a barrier and then spawn at once. How the VMs are started is a [`Launch`]:
//! [`Launch::Direct`] (one `petrel` process per VM, as for the peers) or [`Launch::Petreld`]
//! (through the orchestrator's API, workload `create-rate-petreld`, see
//! [`super::create_rate_petreld`]).

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use super::{create_rate_petreld, Metric, RunContext, RunRecord, Workload};
use crate::child::{self, Measured};
use crate::live::contains;
use crate::peers::{GuestSpec, Vmm, VmmKind, POWEROFF_MARKER, QUICK_ACTION};

const METRICS: &[Metric] = &[
    Metric {
        key: "all_exited_ms",
        label: "all VMs started and exited",
        unit: "ms",
    },
    Metric {
        key: "vms_per_s",
        label: "VMs per second",
        unit: "VMs/s",
    },
    Metric {
        key: "slowest_vm_ms",
        label: "longest single VM life",
        unit: "ms",
    },
];

/// How the N VMs are started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Launch {
    /// One VMM process per VM, started from its command line.
    Direct,
    /// Through `petreld` (this binary), started once per run outside the timed window:
    /// N concurrent `POST /v1/vms` of the halting guest, timed until all are running.
    /// Only petrel runs it, as workload `create-rate-petreld`.
    Petreld {
        /// The `petreld` binary.
        bin: PathBuf,
    },
}

/// The workload.
#[derive(Debug, Clone)]
pub struct CreateRate {
    /// The PVH test guest image.
    pub kernel: PathBuf,
    /// VMs per run.
    pub vms: usize,
    /// Guest memory in MiB.
    pub memory_mib: u32,
    /// How the VMs are started.
    pub launch: Launch,
}

impl CreateRate {
    /// `vms` VMs of 64 MiB on `kernel`, each its own VMM process.
    pub fn new(kernel: PathBuf, vms: usize) -> CreateRate {
        CreateRate {
            kernel,
            vms,
            memory_mib: 64,
            launch: Launch::Direct,
        }
    }

    /// `vms` VMs of 64 MiB on `kernel`, created through the `petreld` at `bin`.
    pub fn petreld(kernel: PathBuf, vms: usize, bin: PathBuf) -> CreateRate {
        CreateRate {
            launch: Launch::Petreld { bin },
            ..CreateRate::new(kernel, vms)
        }
    }

    fn guest(&self) -> GuestSpec {
        GuestSpec {
            kernel: self.kernel.clone(),
            cpus: 1,
            memory_mib: self.memory_mib,
            cmdline: format!("action={QUICK_ACTION}"),
        }
    }

    fn commands(&self, vmm: &Vmm, ctx: &RunContext, logs: &Path) -> Result<Vec<Command>, String> {
        (0..self.vms)
            .map(|i| {
                let mut cmd = vmm
                    .command(&self.guest(), &ctx.scratch)
                    .map_err(|e| format!("cannot run {}: {e}", vmm.name()))?;
                let log = log_path(logs, self.name(), vmm, ctx.round, i);
                cmd.stderr(File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?);
                Ok(cmd)
            })
            .collect()
    }
}

fn log_path(logs: &Path, name: &str, vmm: &Vmm, round: usize, i: usize) -> PathBuf {
    logs.join(format!("{name}-{}-{round}-vm{i}.log", vmm.name()))
}

/// Why one VM's run does not count, if it does not.
fn check(m: &Measured, marker: &str) -> Option<String> {
    if m.interrupted {
        Some("interrupted".into())
    } else if m.timed_out {
        Some("timed out (killed)".into())
    } else if !m.status.success() {
        Some(format!("VMM ended with {}", m.status))
    } else if !contains(&m.stdout, marker.as_bytes()) {
        Some(format!("guest never printed {marker:?}"))
    } else {
        None
    }
}

/// Wall time from the earliest start to the latest exit, and the longest single life.
fn wall(lives: &[(Instant, Duration)]) -> Option<(Duration, Duration)> {
    let first = lives.iter().map(|l| l.0).min()?;
    let last = lives.iter().map(|&(t, d)| t + d).max()?;
    let slowest = lives.iter().map(|l| l.1).max()?;
    Some((last - first, slowest))
}

impl Workload for CreateRate {
    fn name(&self) -> &'static str {
        match self.launch {
            Launch::Direct => "create-rate",
            Launch::Petreld { .. } => "create-rate-petreld",
        }
    }

    fn description(&self) -> &'static str {
        match self.launch {
            Launch::Direct => "create rate: N quick test guests (64 MiB) started together, one VMM process each; wall time until all exited",
            Launch::Petreld { .. } => "create rate through petreld: N concurrent POST /v1/vms of the halting test guest (64 MiB); wall time until all running; petreld's RSS and CPU per managed VM",
        }
    }

    fn metrics(&self) -> &'static [Metric] {
        match self.launch {
            Launch::Direct => METRICS,
            Launch::Petreld { .. } => create_rate_petreld::METRICS,
        }
    }

    fn supports(&self, kind: VmmKind) -> bool {
        match self.launch {
            Launch::Direct => true,
            Launch::Petreld { .. } => kind == VmmKind::Petrel,
        }
    }

    fn parameters(&self) -> serde_json::Value {
        serde_json::json!({
            "kernel": self.kernel,
            "boot": "PVH",
            "vms": self.vms,
            "cpus": 1,
            "memory_mib": self.memory_mib,
            "launch": format!("{:?}", self.launch),
            "host_cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        })
    }

    fn command_line(&self, vmm: &Vmm, scratch: &Path) -> Option<Vec<String>> {
        match &self.launch {
            Launch::Direct => vmm.command_line(&self.guest(), scratch).ok(),
            Launch::Petreld { bin } => Some(create_rate_petreld::command_line(
                bin,
                &self.kernel,
                self.memory_mib,
            )),
        }
    }

    fn run_once(&self, vmm: &Vmm, ctx: &RunContext) -> RunRecord {
        if let Launch::Petreld { bin } = &self.launch {
            return create_rate_petreld::run_once(
                bin,
                &vmm.path,
                &self.kernel,
                self.vms,
                self.memory_mib,
                ctx,
            );
        }
        let round = ctx.round;
        let logs = ctx.scratch.join("logs");
        let commands = fs::create_dir_all(&logs)
            .map_err(|e| format!("{}: {e}", logs.display()))
            .and_then(|()| self.commands(vmm, ctx, &logs));
        let commands = match commands {
            Ok(c) => c,
            Err(e) => return RunRecord::failed(round, e),
        };
        let barrier = Barrier::new(commands.len());
        let results: Vec<Result<(Instant, Measured), String>> = std::thread::scope(|s| {
            let handles: Vec<_> = commands
                .into_iter()
                .map(|cmd| {
                    let barrier = &barrier;
                    s.spawn(move || {
                        barrier.wait();
                        let t = Instant::now();
                        child::run_measured(cmd, ctx.timeout)
                            .map(|m| (t, m))
                            .map_err(|e| format!("cannot run {}: {e}", vmm.name()))
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|_| Err("thread panicked".into())))
                .collect()
        });
        let marker = POWEROFF_MARKER;
        let mut lives = Vec::new();
        let mut errors = Vec::new();
        for (i, r) in results.iter().enumerate() {
            let log = log_path(&logs, self.name(), vmm, round, i);
            let e = match r {
                Ok((t, m)) => {
                    lives.push((*t, m.exit));
                    let e = check(m, marker);
                    if e.is_some() {
                        let _ = fs::write(log.with_extension("serial"), &m.stdout);
                    }
                    e
                }
                Err(e) => Some(e.clone()),
            };
            match e {
                Some(e) => errors.push((i, e, log)),
                None => {
                    let _ = fs::remove_file(&log);
                }
            }
        }
        let wall = wall(&lives);
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let values = [
            ("all_exited_ms", wall.map(|w| ms(w.0))),
            (
                "vms_per_s",
                wall.filter(|w| !w.0.is_zero())
                    .map(|w| self.vms as f64 / w.0.as_secs_f64()),
            ),
            ("slowest_vm_ms", wall.map(|w| ms(w.1))),
        ]
        .into_iter()
        .collect();
        let failed = errors.len();
        let first = errors.into_iter().next();
        RunRecord {
            round,
            ok: first.is_none() && wall.is_some(),
            exit: None,
            error: first
                .as_ref()
                .map(|(i, e, _)| format!("{failed} of {} VMs failed; VM {i}: {e}", self.vms)),
            values,
            log: first.map(|(_, _, log)| log),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wall_spans_first_start_to_last_exit() {
        let t = Instant::now();
        let ms = Duration::from_millis;
        let lives = [(t, ms(100)), (t + ms(5), ms(120)), (t + ms(2), ms(50))];
        assert_eq!(wall(&lives), Some((ms(125), ms(120))));
        assert_eq!(wall(&[]), None);
    }

    #[test]
    fn check_wants_the_marker_and_exit_0() {
        let mut m = Measured {
            first_byte: None,
            exit: Duration::from_millis(1),
            status: child::Exit::Code(0),
            max_rss_kib: 0,
            stdout: b"PETREL-GUEST: start\nPETREL-GUEST: poweroff\n".to_vec(),
            chunks: Vec::new(),
            timed_out: false,
            interrupted: false,
        };
        assert_eq!(check(&m, "PETREL-GUEST: poweroff"), None);
        assert!(check(&m, "PETREL-GUEST: reset").is_some());
        m.status = child::Exit::Code(1);
        assert!(check(&m, "PETREL-GUEST: poweroff")
            .unwrap()
            .contains("exit 1"));
    }
}
