//! Runs a workload on every VMM, interleaved so that drift of the machine (other load, thermal
//! state, page cache) spreads over all VMMs alike, with the order rotated every round (A B C,
//! B C A, C A B, …) so that no VMM always runs first or right after the same one, after
//! optional warm-up rounds that are not recorded. Stops early when the harness is interrupted.

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

/// The indexes of `count` VMMs in the order round `round` runs them: rotated by one per
/// round.
pub fn round_order(count: usize, round: usize) -> Vec<usize> {
    (0..count).map(|i| (i + round) % count.max(1)).collect()
}

/// Runs `plan.warmup` unrecorded and then `plan.runs` recorded rounds of `w` over `vmms`
/// (in [`round_order`]), printing one progress line per round on stderr.
pub fn run_interleaved(w: &dyn Workload, vmms: &[Vmm], plan: &Plan) -> Outcome {
    let mut records: Vec<Vec<RunRecord>> = vec![Vec::new(); vmms.len()];
    for round in 0..plan.warmup {
        for v in round_order(vmms.len(), round) {
            let vmm = &vmms[v];
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
        // Warm-up rounds count in the rotation, so recorded round 0 need not start with A.
        for v in round_order(vmms.len(), plan.warmup + round) {
            let vmm = &vmms[v];
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

#[cfg(test)]
mod tests {
    use super::round_order;

    #[test]
    fn every_round_runs_every_vmm_once_starting_one_later() {
        assert_eq!(round_order(3, 0), vec![0, 1, 2]);
        assert_eq!(round_order(3, 1), vec![1, 2, 0]);
        assert_eq!(round_order(3, 2), vec![2, 0, 1]);
        assert_eq!(round_order(3, 3), vec![0, 1, 2]);
        assert_eq!(round_order(1, 5), vec![0]);
        assert!(round_order(0, 2).is_empty());
    }
}
