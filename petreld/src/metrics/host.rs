//! The host's series: its CPUs and their time by mode (`/proc/stat`), its memory
//! (`/proc/meminfo`), and what the VMs petreld should run commit of both against the
//! overcommit ratios petreld admits VMs with.

use std::fmt::Write;

use super::header;
use crate::host::Allocation;

/// `/proc/stat`'s first line's modes, in its order.
const MODES: [&str; 8] = [
    "user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal",
];

/// Seconds per mode from `/proc/stat`'s text (`cpu` line, USER_HZ ticks).
fn cpu_seconds(text: &str, ticks_per_second: f64) -> Vec<(&'static str, f64)> {
    let Some(line) = text.lines().find(|l| l.starts_with("cpu ")) else {
        return Vec::new();
    };
    MODES
        .iter()
        .zip(line.split_whitespace().skip(1))
        .filter_map(|(m, v)| Some((*m, v.parse::<u64>().ok()? as f64 / ticks_per_second)))
        .collect()
}

/// `key` of `/proc/meminfo`'s text, in bytes.
fn meminfo(text: &str, key: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with(key))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// What the host is and what is committed of it.
pub struct HostFacts {
    /// Online CPUs.
    pub cpus: u64,
    /// What VMs that should run use.
    pub committed: Allocation,
    /// The admission ratios: memory, then CPU.
    pub overcommit: (f64, f64),
}

/// Appends the host's series to `out`.
pub fn render(out: &mut String, facts: &HostFacts) {
    // SAFETY: sysconf only reads a configuration value.
    let hz = match unsafe { libc::sysconf(libc::_SC_CLK_TCK) } {
        t if t > 0 => t as f64,
        _ => 100.0,
    };
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let mem = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    header(
        out,
        "petreld_host_cpus",
        "gauge",
        "Online CPUs of the host.",
    );
    let _ = writeln!(out, "petreld_host_cpus {}", facts.cpus);
    header(
        out,
        "petreld_host_cpu_seconds_total",
        "counter",
        "Host CPU time by mode, all CPUs together (/proc/stat).",
    );
    for (mode, secs) in cpu_seconds(&stat, hz) {
        let _ = writeln!(
            out,
            "petreld_host_cpu_seconds_total{{mode=\"{mode}\"}} {secs}"
        );
    }
    header(
        out,
        "petreld_host_memory_bytes",
        "gauge",
        "Host memory (/proc/meminfo): total and available.",
    );
    let total = meminfo(&mem, "MemTotal:").unwrap_or(0);
    for (kind, key) in [("total", "MemTotal:"), ("available", "MemAvailable:")] {
        if let Some(v) = meminfo(&mem, key) {
            let _ = writeln!(out, "petreld_host_memory_bytes{{kind=\"{kind}\"}} {v}");
        }
    }
    header(
        out,
        "petreld_host_committed_memory_bytes",
        "gauge",
        "Guest memory of the VMs that should run (running or paused).",
    );
    let _ = writeln!(
        out,
        "petreld_host_committed_memory_bytes {}",
        facts.committed.memory_bytes
    );
    header(
        out,
        "petreld_host_committed_vcpus",
        "gauge",
        "vCPUs of the VMs that should run (running or paused).",
    );
    let _ = writeln!(
        out,
        "petreld_host_committed_vcpus {}",
        facts.committed.vcpus
    );
    header(
        out,
        "petreld_host_overcommit_ratio",
        "gauge",
        "Committed over physical, by resource (memory, cpu).",
    );
    if total > 0 {
        let r = facts.committed.memory_bytes as f64 / total as f64;
        let _ = writeln!(
            out,
            "petreld_host_overcommit_ratio{{resource=\"memory\"}} {r}"
        );
    }
    if facts.cpus > 0 {
        let r = facts.committed.vcpus as f64 / facts.cpus as f64;
        let _ = writeln!(out, "petreld_host_overcommit_ratio{{resource=\"cpu\"}} {r}");
    }
    header(
        out,
        "petreld_host_overcommit_limit_ratio",
        "gauge",
        "The overcommit ratio petreld admits VMs up to, by resource.",
    );
    let (m, c) = facts.overcommit;
    let _ = writeln!(
        out,
        "petreld_host_overcommit_limit_ratio{{resource=\"memory\"}} {m}"
    );
    let _ = writeln!(
        out,
        "petreld_host_overcommit_limit_ratio{{resource=\"cpu\"}} {c}"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_stat_and_meminfo_parse() {
        let stat = "cpu  100 0 50 1000 5 0 1 0 0 0\ncpu0 50 0 25 500 2 0 0 0 0 0\n";
        let s = cpu_seconds(stat, 100.0);
        assert_eq!(s[0], ("user", 1.0));
        assert_eq!(s[3], ("idle", 10.0));
        assert_eq!(s.len(), 8);
        assert!(cpu_seconds("intr 5\n", 100.0).is_empty());
        let mem = "MemTotal:       1024 kB\nMemAvailable:    512 kB\n";
        assert_eq!(meminfo(mem, "MemTotal:"), Some(1 << 20));
        assert_eq!(meminfo(mem, "MemFree:"), None);
    }

    #[test]
    fn the_host_series_are_real_figures() {
        let mut out = String::new();
        render(
            &mut out,
            &HostFacts {
                cpus: 2,
                committed: Allocation {
                    memory_bytes: 1 << 30,
                    vcpus: 3,
                },
                overcommit: (1.0, 4.0),
            },
        );
        assert!(
            out.contains("petreld_host_overcommit_ratio{resource=\"cpu\"} 1.5"),
            "{out}"
        );
        assert!(
            out.contains("petreld_host_committed_memory_bytes 1073741824"),
            "{out}"
        );
        let idle = out
            .lines()
            .find(|l| l.starts_with("petreld_host_cpu_seconds_total{mode=\"idle\"}"))
            .and_then(|l| l.split(' ').nth(1)?.parse::<f64>().ok());
        assert!(idle.is_some_and(|v| v > 0.0), "{out}");
        assert!(
            out.contains("petreld_host_memory_bytes{kind=\"available\"}"),
            "{out}"
        );
    }
}
