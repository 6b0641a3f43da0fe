//! Workloads: what one run measures. A workload names its metrics and runs once against one
//! VMM; the [`crate::runner`] interleaves runs across VMMs and the [`crate::report`] turns the
//! records into summaries. Adding a workload means adding a module here.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use crate::peers::{Vmm, VmmKind};

pub mod api_ready;
pub mod create_rate;
pub mod create_rate_petreld;
pub mod device;
pub mod exit_cost;
pub mod fc_start;
pub mod guest_life;
pub mod linux_boot;
mod markers;
pub mod memory;
pub mod snapshot;
pub mod tap;
pub mod vsock;

pub use api_ready::ApiReady;
pub use create_rate::CreateRate;
pub use device::{Device, DeviceBench};
pub use exit_cost::ExitCost;
pub use guest_life::GuestLife;
pub use memory::Memory;

/// One quantity a workload measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Metric {
    /// Stable key used in the JSON and in file names (unit included, e.g. `exit_ms`).
    pub key: &'static str,
    /// Human label for tables and charts.
    pub label: &'static str,
    /// Unit of the values.
    pub unit: &'static str,
}

/// What a run needs besides the VMM.
#[derive(Debug, Clone)]
pub struct RunContext {
    /// Directory for configuration files and logs of the runs.
    pub scratch: PathBuf,
    /// A run is killed and counted as failed after this long.
    pub timeout: Duration,
    /// Round number (0-based; warm-up rounds are not recorded).
    pub round: usize,
}

/// The outcome of one run of a workload on one VMM.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunRecord {
    /// Round number (0-based).
    pub round: usize,
    /// The run did what the workload expects; only such runs enter the summaries.
    pub ok: bool,
    /// How the VMM process ended (`exit 0`, `signal 9`), when it was started.
    pub exit: Option<String>,
    /// Why the run is not ok.
    pub error: Option<String>,
    /// Measured values by metric key (`null` when not measured).
    pub values: BTreeMap<&'static str, Option<f64>>,
    /// The VMM's stderr, kept for failed runs.
    pub log: Option<PathBuf>,
}

impl RunRecord {
    /// A run that could not produce values.
    pub fn failed(round: usize, error: String) -> RunRecord {
        RunRecord {
            round,
            ok: false,
            exit: None,
            error: Some(error),
            values: BTreeMap::new(),
            log: None,
        }
    }

    /// A run whose VMM was killed once `metrics` were measured (`values`, in their order), or
    /// that failed with `error`; the VMM's `log` is removed after a success, kept otherwise.
    pub fn killed_after_measuring(
        round: usize,
        metrics: &[Metric],
        result: Result<impl AsRef<[f64]>, String>,
        log: PathBuf,
    ) -> RunRecord {
        match result {
            Ok(values) => {
                let _ = std::fs::remove_file(&log);
                RunRecord {
                    round,
                    ok: true,
                    exit: Some("signal 9 (killed after measuring)".into()),
                    error: None,
                    values: metrics
                        .iter()
                        .map(|m| m.key)
                        .zip(values.as_ref().iter().copied().map(Some))
                        .collect(),
                    log: None,
                }
            }
            Err(e) => {
                let mut r = RunRecord::failed(round, e);
                r.log = Some(log);
                r
            }
        }
    }

    /// The value of `key`, if measured.
    pub fn value(&self, key: &str) -> Option<f64> {
        self.values.get(key).copied().flatten()
    }
}

/// A benchmark workload.
pub trait Workload {
    /// Stable name (JSON, file names).
    fn name(&self) -> &'static str;
    /// One-line description for the report.
    fn description(&self) -> &'static str;
    /// The metrics every run reports, in table order.
    fn metrics(&self) -> &'static [Metric];
    /// Workload parameters for the report (guest, vCPUs, memory, …).
    fn parameters(&self) -> serde_json::Value;
    /// Whether VMMs of `kind` can run it (the others are left out of its runs and report).
    fn supports(&self, kind: VmmKind) -> bool {
        let _ = kind;
        true
    }
    /// The command line used for `vmm`, for the report.
    fn command_line(&self, vmm: &Vmm, scratch: &Path) -> Option<Vec<String>>;
    /// Runs once against `vmm`. Never leaves a process behind.
    fn run_once(&self, vmm: &Vmm, ctx: &RunContext) -> RunRecord;
}

/// Makes `ctx`'s log directory and the workload's own `dir`, and names this run's log
/// (`<workload>-<vmm>-<round>.log`); the error says what could not be made.
pub fn run_log(ctx: &RunContext, dir: &Path, workload: &str, vmm: &Vmm) -> Result<PathBuf, String> {
    let logs = ctx.scratch.join("logs");
    std::fs::create_dir_all(&logs)
        .and_then(|()| std::fs::create_dir_all(dir))
        .map_err(|e| format!("creating directories: {e}"))?;
    Ok(logs.join(format!("{workload}-{}-{}.log", vmm.name(), ctx.round)))
}
