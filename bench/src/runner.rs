//! Runs a workload on every VMM, interleaved (A B C A B C …) so that drift of the machine
//! (other load, thermal state, page cache) spreads over all VMMs alike, after optional
//! warm-up rounds that are not recorded. Stops early when the harness is interrupted.

use std::path::PathBuf;
use std::time::Duration;

use crate::interrupt;
use crate::peers::Vmm;
use crate::workload::{RunContext, RunRecord, Workload};

/// How many runs and how long each may take.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Recorded rounds (each round runs every VMM once).
    pub runs: usize,
    /// Unrecorded rounds before them.
    pub warmup: usize,
    /// Per-run timeout.
    pub timeout: Duration,
    /// Directory for configuration files and logs.
    pub scratch: PathBuf,
}

/// The records of every VMM, in the order of the `vmms` given to [`run_interleaved`].
#[derive(Debug, Clone)]
pub struct Outcome {
    /// `records[v]` holds the runs of VMM `v`, in round order.
    pub records: Vec<Vec<RunRecord>>,
    /// Stopped by a signal before all rounds ran.
    pub interrupted: bool,
}

fn context(plan: &Plan, round: usize) -> RunContext {
    RunContext {
        scratch: plan.scratch.clone(),
        timeout: plan.timeout,
        round,
    }
}

fn brief(w: &dyn Workload, r: &RunRecord) -> String {
    match (&r.error, w.metrics().first()) {
        (Some(e), _) => format!("FAILED ({e})"),
        (None, Some(m)) => match r.value(m.key) {
            Some(v) => format!("{v:.1} {}", m.unit),
            None => "ok".into(),
        },
        (None, None) => "ok".into(),
    }
}

/// Runs `plan.warmup` unrecorded and then `plan.runs` recorded rounds of `w` over `vmms`,
/// printing one progress line per round on stderr.
pub fn run_interleaved(w: &dyn Workload, vmms: &[Vmm], plan: &Plan) -> Outcome {
    let mut records: Vec<Vec<RunRecord>> = vec![Vec::new(); vmms.len()];
    for round in 0..plan.warmup {
        for vmm in vmms {
            if interrupt::interrupted() {
                return Outcome {
                    records,
                    interrupted: true,
                };
            }
            let r = w.run_once(vmm, &context(plan, round));
            if !r.ok {
                eprintln!(
                    "{} warm-up {}: {} {}",
                    w.name(),
                    round + 1,
                    vmm.name(),
                    brief(w, &r)
                );
            }
        }
    }
    for round in 0..plan.runs {
        let mut line = format!("{} run {}/{}:", w.name(), round + 1, plan.runs);
        for (v, vmm) in vmms.iter().enumerate() {
            if interrupt::interrupted() {
                eprintln!("{line} interrupted");
                return Outcome {
                    records,
                    interrupted: true,
                };
            }
            let r = w.run_once(vmm, &context(plan, round));
            line.push_str(&format!(" {} {}", vmm.name(), brief(w, &r)));
            records[v].push(r);
        }
        eprintln!("{line}");
    }
    Outcome {
        records,
        interrupted: interrupt::interrupted(),
    }
}
