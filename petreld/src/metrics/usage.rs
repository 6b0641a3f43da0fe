//! What a VM's petrel really uses: CPU time and memory, read from the VM's cgroup when
//! petreld put it in one (cgroup v2 `cpu.stat` / `memory.current`; v1 `cpuacct.usage` is not
//! mounted with the controllers petreld uses, so v1 reads `memory.usage_in_bytes` and the
//! process's own CPU time), else from the process itself (`/proc/PID/stat` utime + stime,
//! `/proc/PID/status` VmRSS).

use std::path::Path;

use crate::cgroup::{self, Hierarchy};

/// One VM's use of the host.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Usage {
    /// CPU time, user + system, in seconds.
    pub cpu_seconds: f64,
    /// Memory charged to the VM, in bytes.
    pub memory_bytes: u64,
    /// Where the figures came from: `"cgroup"` or `"process"`.
    pub source: &'static str,
}

/// The value of `key` in a `key value` per line file (cgroup `cpu.stat`).
fn keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let mut w = l.split_whitespace();
        (w.next() == Some(key)).then(|| w.next()?.parse().ok())?
    })
}

/// `(utime + stime)` ticks of `/proc/PID/stat`'s text.
fn stat_ticks(text: &str) -> Option<u64> {
    // The command name is in parentheses and may hold anything: split after the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3 of the whole line, utime 14 and stime 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// `VmRSS` of `/proc/PID/status`'s text, in bytes.
fn status_rss(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Clock ticks per second of `/proc/PID/stat`'s times.
fn ticks_per_second() -> f64 {
    // SAFETY: sysconf only reads a configuration value.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

fn read(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

/// From the process alone.
fn of_process(pid: u32) -> Option<Usage> {
    let ticks = stat_ticks(&read(Path::new(&format!("/proc/{pid}/stat")))?)?;
    let rss = status_rss(&read(Path::new(&format!("/proc/{pid}/status")))?)?;
    Some(Usage {
        cpu_seconds: ticks as f64 / ticks_per_second(),
        memory_bytes: rss,
        source: "process",
    })
}

/// From VM `id`'s cgroup in `h`, falling back to the process for what the group lacks.
fn of_cgroup(h: &Hierarchy, id: &str, pid: u32) -> Option<Usage> {
    match h {
        Hierarchy::V2(_) => {
            let dir = cgroup::dirs(h, id).into_iter().next()?;
            let usec = keyed(&read(&dir.join("cpu.stat"))?, "usage_usec")?;
            let mem: u64 = read(&dir.join("memory.current"))?.trim().parse().ok()?;
            Some(Usage {
                cpu_seconds: usec as f64 / 1e6,
                memory_bytes: mem,
                source: "cgroup",
            })
        }
        Hierarchy::V1 { .. } => {
            let dir = cgroup::dirs(h, id).into_iter().next()?;
            let mem: u64 = read(&dir.join("memory.usage_in_bytes"))?
                .trim()
                .parse()
                .ok()?;
            let process = of_process(pid)?;
            Some(Usage {
                memory_bytes: mem,
                source: "cgroup",
                ..process
            })
        }
    }
}

/// VM `id`'s use, its petrel being `pid`; `None` when neither source can be read (the
/// process has just ended).
pub fn of_vm(hierarchy: Option<&Hierarchy>, id: &str, pid: u32) -> Option<Usage> {
    hierarchy
        .and_then(|h| of_cgroup(h, id, pid))
        .or_else(|| of_process(pid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_ticks_survive_a_name_with_spaces_and_parentheses() {
        let line = "42 (a (b) c) S 1 42 42 0 -1 4194560 100 0 0 0 7 5 0 0 20 0 3 0 99 1 2";
        assert_eq!(stat_ticks(line), Some(12));
        assert_eq!(stat_ticks("42 (x) S 1"), None);
    }

    #[test]
    fn rss_and_cpu_stat_parse() {
        assert_eq!(
            status_rss("Name:\tpetrel\nVmRSS:\t    3072 kB\n"),
            Some(3 << 20)
        );
        assert_eq!(status_rss("Name:\tx\n"), None);
        let stat = "usage_usec 1500000\nuser_usec 1000000\nsystem_usec 500000\n";
        assert_eq!(keyed(stat, "usage_usec"), Some(1_500_000));
        assert_eq!(keyed(stat, "nr_periods"), None);
    }

    #[test]
    fn this_process_has_a_real_usage() {
        // Burn some CPU so the figure is above zero at the kernel's tick granularity.
        let start = std::time::Instant::now();
        let mut x = 0u64;
        while start.elapsed() < std::time::Duration::from_millis(60) {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        std::hint::black_box(x);
        let u = of_vm(None, "none", std::process::id()).expect("own /proc entry");
        assert_eq!(u.source, "process");
        assert!(u.cpu_seconds > 0.0, "{u:?}");
        assert!(u.memory_bytes > 1 << 20, "{u:?}");
    }
}
