//! The result document: a JSON file with a stable schema (`petrel-bench/1`), a Markdown
//! table, and one SVG bar chart per workload metric, all written to the results directory.
//!
//! Schema: `{schema, started_utc, finished_utc, command, config, host, vmms[], interrupted,
//! workloads[{name, description, parameters, metrics[{key,label,unit}], results[{vmm,
//! command, runs_ok, runs_failed, summary{<metric key>: {samples, median, min, max} | null},
//! runs[{round, ok, exit, error, values{<metric key>: number | null}, log}]}], ratios[{
//! baseline, peer, metric, pairs, summary}]}]}`. Summaries use successful runs only; failed
//! runs are listed with their error and never averaged in.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::host::HostInfo;
use crate::peers::{Vmm, VmmKind};
use crate::runner::Outcome;
use crate::stats::{paired_ratios, Summary};
use crate::svg::{self, Bar};
use crate::workload::{Metric, RunRecord, Workload};

/// Identifies the JSON layout; bump when a field changes meaning or goes away.
pub const SCHEMA: &str = "petrel-bench/1";

/// How the harness was run.
#[derive(Debug, Clone, Serialize)]
pub struct Config {
    /// Recorded rounds.
    pub runs: usize,
    /// Unrecorded warm-up rounds.
    pub warmup: usize,
    /// Per-run timeout in seconds.
    pub timeout_s: f64,
    /// `--quick` was given.
    pub quick: bool,
}

/// A VMM binary under test.
#[derive(Debug, Clone, Serialize)]
pub struct VmmInfo {
    /// Short name.
    pub name: String,
    /// Binary path.
    pub path: PathBuf,
    /// First line of `--version`.
    pub version: Option<String>,
}

/// One VMM's runs of one workload.
#[derive(Debug, Clone, Serialize)]
pub struct VmmResult {
    /// VMM name.
    pub vmm: String,
    /// The command line of a run.
    pub command: Option<Vec<String>>,
    /// The configuration file that command line names (Firecracker's `--config-file`), as
    /// written for it: with the command line, the VMM's exact configuration.
    pub config: Option<serde_json::Value>,
    /// Successful runs.
    pub runs_ok: usize,
    /// Failed runs.
    pub runs_failed: usize,
    /// Per metric key, over successful runs.
    pub summary: BTreeMap<&'static str, Option<Summary>>,
    /// Every recorded run.
    pub runs: Vec<RunRecord>,
}

/// Baseline/peer ratio of one metric over rounds where both runs succeeded.
#[derive(Debug, Clone, Serialize)]
pub struct Ratio {
    /// Numerator VMM (petrel).
    pub baseline: String,
    /// Denominator VMM.
    pub peer: String,
    /// Metric key.
    pub metric: &'static str,
    /// Number of usable pairs.
    pub pairs: usize,
    /// Summary of the per-pair ratios.
    pub summary: Option<Summary>,
}

/// Results of one workload.
#[derive(Debug, Clone, Serialize)]
pub struct WorkloadReport {
    /// Workload name.
    pub name: String,
    /// Workload description.
    pub description: String,
    /// Workload parameters.
    pub parameters: serde_json::Value,
    /// Metrics, in table order.
    pub metrics: Vec<Metric>,
    /// One entry per VMM, in run order (petrel first).
    pub results: Vec<VmmResult>,
    /// petrel/peer ratios, per peer and metric.
    pub ratios: Vec<Ratio>,
}

/// The whole result document.
#[derive(Debug, Clone, Serialize)]
pub struct Document {
    /// Always [`SCHEMA`].
    pub schema: &'static str,
    /// When the harness started.
    pub started_utc: String,
    /// When the last run ended.
    pub finished_utc: String,
    /// The harness's own command line.
    pub command: Vec<String>,
    /// Runs and timeout.
    pub config: Config,
    /// The machine.
    pub host: HostInfo,
    /// The VMMs, in run order.
    pub vmms: Vec<VmmInfo>,
    /// Per workload results.
    pub workloads: Vec<WorkloadReport>,
    /// A stop signal cut the run short.
    pub interrupted: bool,
}

fn ok_values(records: &[RunRecord], key: &str) -> Vec<Option<f64>> {
    records
        .iter()
        .map(|r| if r.ok { r.value(key) } else { None })
        .collect()
}

impl WorkloadReport {
    /// Summarises `outcome` (runs of `w` over `vmms`); ratios use `vmms[0]` as baseline when
    /// it is petrel.
    pub fn build(w: &dyn Workload, vmms: &[Vmm], outcome: &Outcome, scratch: &Path) -> Self {
        let metrics = w.metrics();
        let results = vmms
            .iter()
            .zip(&outcome.records)
            .map(|(vmm, records)| {
                let summary = metrics
                    .iter()
                    .map(|m| {
                        let v: Vec<f64> = ok_values(records, m.key).into_iter().flatten().collect();
                        (m.key, Summary::of(&v))
                    })
                    .collect();
                let runs_ok = records.iter().filter(|r| r.ok).count();
                // `command_line` writes the configuration file it names, if any.
                let command = w.command_line(vmm, scratch);
                let config = vmm
                    .config_file(scratch)
                    .filter(|_| command.is_some())
                    .and_then(|p| fs::read_to_string(p).ok())
                    .and_then(|t| serde_json::from_str(&t).ok());
                VmmResult {
                    vmm: vmm.name().to_string(),
                    command,
                    config,
                    runs_ok,
                    runs_failed: records.len() - runs_ok,
                    summary,
                    runs: records.clone(),
                }
            })
            .collect();
        let mut ratios = Vec::new();
        if let (Some(base), Some(base_runs)) = (vmms.first(), outcome.records.first()) {
            if base.kind == VmmKind::Petrel {
                for (peer, peer_runs) in vmms.iter().zip(&outcome.records).skip(1) {
                    for m in metrics {
                        let r = paired_ratios(
                            &ok_values(base_runs, m.key),
                            &ok_values(peer_runs, m.key),
                        );
                        ratios.push(Ratio {
                            baseline: base.name().to_string(),
                            peer: peer.name().to_string(),
                            metric: m.key,
                            pairs: r.len(),
                            summary: Summary::of(&r),
                        });
                    }
                }
            }
        }
        WorkloadReport {
            name: w.name().to_string(),
            description: w.description().to_string(),
            parameters: w.parameters(),
            metrics: metrics.to_vec(),
            results,
            ratios,
        }
    }

    /// File name of the chart of `metric`.
    pub fn chart_file(&self, metric: &Metric) -> String {
        format!("{}-{}.svg", self.name, metric.key)
    }

    /// One SVG per metric: `(file name, svg text)`.
    pub fn charts(&self) -> Vec<(String, String)> {
        self.metrics
            .iter()
            .map(|m| {
                let bars: Vec<Bar> = self
                    .results
                    .iter()
                    .filter_map(|r| {
                        let s = r.summary.get(m.key)?.as_ref()?;
                        Some(Bar {
                            label: r.vmm.clone(),
                            median: s.median,
                            min: s.min,
                            max: s.max,
                        })
                    })
                    .collect();
                let title = format!("{}: {} ({})", self.name, m.label, m.unit);
                (self.chart_file(m), svg::bar_chart(&title, m.unit, &bars))
            })
            .collect()
    }
}

fn cell(s: Option<&Summary>, fmt: fn(f64) -> String) -> String {
    match s {
        Some(s) => format!("{} [{} – {}]", fmt(s.median), fmt(s.min), fmt(s.max)),
        None => "–".to_string(),
    }
}

fn ratio_fmt(v: f64) -> String {
    format!("{v:.2}")
}

impl Document {
    /// The Markdown report: host, VMMs, one table per workload, ratios, failed runs, charts.
    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "# petrel-bench results ({})\n", self.started_utc);
        let _ = writeln!(s, "- Host: {}", self.host.summary());
        for v in &self.vmms {
            let version = v.version.as_deref().unwrap_or("version unknown");
            let _ = writeln!(s, "- {}: `{}` ({version})", v.name, v.path.display());
        }
        let _ = writeln!(
            s,
            "- {} recorded runs per VMM after {} warm-up round(s), interleaved; cells are median [min – max] over successful runs{}\n",
            self.config.runs,
            self.config.warmup,
            if self.interrupted { "; **interrupted**" } else { "" }
        );
        for w in &self.workloads {
            w.markdown_into(&mut s);
        }
        s
    }
}

impl WorkloadReport {
    fn markdown_into(&self, s: &mut String) {
        let _ = writeln!(s, "## {}\n\n{}\n", self.name, self.description);
        let _ = write!(s, "| VMM | ok |");
        for m in &self.metrics {
            let _ = write!(s, " {} ({}) |", m.label, m.unit);
        }
        let _ = write!(s, "\n|---|---:|");
        for _ in &self.metrics {
            let _ = write!(s, "---:|");
        }
        s.push('\n');
        for r in &self.results {
            let total = r.runs_ok + r.runs_failed;
            let _ = write!(s, "| {} | {}/{} |", r.vmm, r.runs_ok, total);
            for m in &self.metrics {
                let sum = r.summary.get(m.key).and_then(Option::as_ref);
                let _ = write!(s, " {} |", cell(sum, svg::format_value));
            }
            s.push('\n');
        }
        if !self.ratios.is_empty() {
            let _ = writeln!(
                s,
                "\npetrel / peer, per pair of runs of the same round where both have the metric (below 1: petrel is lower; (n) = pairs):\n"
            );
            let _ = write!(s, "| peer |");
            for m in &self.metrics {
                let _ = write!(s, " {} |", m.label);
            }
            let _ = write!(s, "\n|---|");
            for _ in &self.metrics {
                let _ = write!(s, "---:|");
            }
            s.push('\n');
            let mut peers: Vec<&str> = self.ratios.iter().map(|r| r.peer.as_str()).collect();
            peers.dedup();
            for peer in peers {
                let of = |key: &str| {
                    self.ratios
                        .iter()
                        .find(|r| r.peer == peer && r.metric == key)
                };
                let _ = write!(s, "| {peer} |");
                for m in &self.metrics {
                    let r = of(m.key);
                    let sum = r.and_then(|r| r.summary.as_ref());
                    let pairs = r.map_or(0, |r| r.pairs);
                    let _ = write!(s, " {} ({pairs}) |", cell(sum, ratio_fmt));
                }
                s.push('\n');
            }
        }
        let failed: Vec<(&str, &RunRecord)> = self
            .results
            .iter()
            .flat_map(|r| r.runs.iter().filter(|x| !x.ok).map(|x| (r.vmm.as_str(), x)))
            .collect();
        if !failed.is_empty() {
            let _ = writeln!(s, "\nFailed runs (not in the summaries):\n");
            for (vmm, r) in failed {
                let _ = write!(
                    s,
                    "- {vmm} run {}: {}",
                    r.round + 1,
                    r.error.as_deref().unwrap_or("failed")
                );
                if let Some(log) = &r.log {
                    let _ = write!(s, " (log: `{}`)", log.display());
                }
                s.push('\n');
            }
        }
        s.push('\n');
        self.commands_into(s);
        for m in &self.metrics {
            let _ = writeln!(s, "![{} ({})]({})", m.label, m.unit, self.chart_file(m));
        }
        s.push('\n');
    }
}

impl WorkloadReport {
    /// Each VMM's command line and configuration file, folded away.
    fn commands_into(&self, s: &mut String) {
        if self.results.iter().all(|r| r.command.is_none()) {
            return;
        }
        let _ = writeln!(
            s,
            "<details><summary>command lines and configurations</summary>\n"
        );
        for r in &self.results {
            if let Some(cmd) = &r.command {
                let _ = writeln!(s, "- {}: `{}`", r.vmm, cmd.join(" "));
            }
            if let Some(cfg) = &r.config {
                let text = serde_json::to_string(cfg).unwrap_or_default();
                let _ = writeln!(s, "  - config file: `{text}`");
            }
        }
        let _ = writeln!(s, "\n</details>\n");
    }
}

/// Writes `results.json`, `results.md` and the charts into `dir`; returns the Markdown.
pub fn write_all(doc: &Document, dir: &Path) -> io::Result<String> {
    fs::create_dir_all(dir)?;
    let json = serde_json::to_string_pretty(doc).map_err(io::Error::other)?;
    fs::write(dir.join("results.json"), json + "\n")?;
    let md = doc.markdown();
    fs::write(dir.join("results.md"), &md)?;
    for w in &doc.workloads {
        for (name, svg) in w.charts() {
            fs::write(dir.join(name), svg)?;
        }
    }
    Ok(md)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::RunContext;

    struct Fake;

    const METRICS: &[Metric] = &[
        Metric {
            key: "a_ms",
            label: "a",
            unit: "ms",
        },
        Metric {
            key: "b_mib",
            label: "b",
            unit: "MiB",
        },
    ];

    impl Workload for Fake {
        fn name(&self) -> &'static str {
            "fake"
        }
        fn description(&self) -> &'static str {
            "a fake workload"
        }
        fn metrics(&self) -> &'static [Metric] {
            METRICS
        }
        fn parameters(&self) -> serde_json::Value {
            serde_json::json!({"cpus": 1})
        }
        fn command_line(&self, vmm: &Vmm, _: &Path) -> Option<Vec<String>> {
            Some(vec![vmm.name().to_string()])
        }
        fn run_once(&self, _: &Vmm, ctx: &RunContext) -> RunRecord {
            RunRecord::failed(ctx.round, "unused".into())
        }
    }

    fn rec(round: usize, a: f64, b: f64, ok: bool) -> RunRecord {
        RunRecord {
            round,
            ok,
            exit: Some("exit 0".into()),
            error: (!ok).then(|| "VMM ended with exit 1".to_string()),
            values: [("a_ms", Some(a)), ("b_mib", Some(b))]
                .into_iter()
                .collect(),
            log: None,
        }
    }

    fn doc() -> Document {
        let vmms = [
            Vmm::new(VmmKind::Petrel, "/p".into()),
            Vmm::new(VmmKind::Qemu, "/q".into()),
        ];
        let outcome = Outcome {
            records: vec![
                vec![rec(0, 10.0, 5.0, true), rec(1, 20.0, 5.0, true), {
                    let mut r = rec(2, 30.0, 6.0, true);
                    r.values.insert("b_mib", None);
                    r
                }],
                vec![
                    rec(0, 20.0, 50.0, true),
                    rec(1, 40.0, 40.0, false),
                    rec(2, 60.0, 60.0, true),
                ],
            ],
            interrupted: false,
        };
        let w = WorkloadReport::build(&Fake, &vmms, &outcome, Path::new("/tmp"));
        Document {
            schema: SCHEMA,
            started_utc: "2024-01-01T00:00:00Z".into(),
            finished_utc: "2024-01-01T00:01:00Z".into(),
            command: vec!["petrel-bench".into()],
            config: Config {
                runs: 3,
                warmup: 0,
                timeout_s: 60.0,
                quick: false,
            },
            host: HostInfo::collect(),
            vmms: vec![],
            workloads: vec![w],
            interrupted: false,
        }
    }

    #[test]
    fn summaries_exclude_failed_runs_and_ratios_pair_rounds() {
        let d = doc();
        let w = &d.workloads[0];
        let q = &w.results[1];
        assert_eq!((q.runs_ok, q.runs_failed), (2, 1));
        let qa = q.summary["a_ms"].as_ref().unwrap();
        assert_eq!(qa.samples, vec![20.0, 60.0]);
        assert_eq!(qa.median, 40.0);
        let ra = w.ratios.iter().find(|r| r.metric == "a_ms").unwrap();
        assert_eq!(ra.pairs, 2);
        assert_eq!(ra.summary.as_ref().unwrap().samples, vec![0.5, 0.5]);
        // petrel's round 3 has no b: one pair fewer for b than for a.
        let rb = w.ratios.iter().find(|r| r.metric == "b_mib").unwrap();
        assert_eq!(rb.pairs, 1);
    }

    #[test]
    fn json_shape() {
        let v = serde_json::to_value(doc()).unwrap();
        assert_eq!(v["schema"], SCHEMA);
        let w = &v["workloads"][0];
        assert_eq!(w["metrics"][0]["key"], "a_ms");
        assert_eq!(w["results"][0]["vmm"], "petrel");
        assert_eq!(w["results"][0]["summary"]["a_ms"]["median"], 20.0);
        assert_eq!(
            w["results"][0]["summary"]["a_ms"]["samples"]
                .as_array()
                .unwrap()
                .len(),
            3
        );
        assert_eq!(w["results"][1]["runs"][1]["ok"], false);
        assert_eq!(w["results"][1]["runs"][1]["values"]["a_ms"], 40.0);
        assert_eq!(w["ratios"][0]["peer"], "qemu");
        assert!(v["host"]["kernel"].is_string());
    }

    #[test]
    fn markdown_shape() {
        let md = doc().markdown();
        let lines: Vec<&str> = md.lines().collect();
        let header = lines
            .iter()
            .position(|l| l.starts_with("| VMM | ok |"))
            .unwrap();
        assert_eq!(lines[header], "| VMM | ok | a (ms) | b (MiB) |");
        assert_eq!(lines[header + 1], "|---|---:|---:|---:|");
        assert_eq!(
            lines[header + 2],
            "| petrel | 3/3 | 20.0 [10.0 – 30.0] | 5.00 [5.00 – 5.00] |"
        );
        assert_eq!(
            lines[header + 3],
            "| qemu | 2/3 | 40.0 [20.0 – 60.0] | 55.0 [50.0 – 60.0] |"
        );
        assert!(
            md.contains("| qemu | 0.50 [0.50 – 0.50] (2) | 0.10 [0.10 – 0.10] (1) |"),
            "{md}"
        );
        assert!(md.contains("- qemu run 2: VMM ended with exit 1"));
        assert!(md.contains("![a (ms)](fake-a_ms.svg)"));
        // Every table row has as many cells as its header.
        let ratio_header = lines
            .iter()
            .position(|l| l.starts_with("| peer |"))
            .unwrap();
        for (i, l) in lines.iter().enumerate().filter(|(_, l)| l.starts_with('|')) {
            let cells = if i >= ratio_header { 4 } else { 5 };
            assert_eq!(l.matches('|').count(), cells, "{l}");
        }
        assert!(md.contains("- petrel: `petrel`"), "{md}");
    }

    #[test]
    fn writes_files() {
        let dir = std::env::temp_dir().join(format!("petrel-bench-report-{}", std::process::id()));
        let md = write_all(&doc(), &dir).unwrap();
        assert!(md.contains("## fake"));
        for f in [
            "results.json",
            "results.md",
            "fake-a_ms.svg",
            "fake-b_mib.svg",
        ] {
            assert!(dir.join(f).is_file(), "{f}");
        }
        let svg = fs::read_to_string(dir.join("fake-a_ms.svg")).unwrap();
        assert_eq!(svg.matches("<g class=\"bar\">").count(), 2);
        fs::remove_dir_all(&dir).unwrap();
    }
}
