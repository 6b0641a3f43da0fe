//! VMM memory overhead: boot the test guest with `action=halt` at 128 MiB and at 1 GiB,
//! and once it has halted read the VMM's `/proc/<pid>/status` and `/proc/<pid>/smaps`:
//! peak RSS (VmHWM), total RSS (the Rss of every mapping: anonymous, file and shmem), and the
//! part of it that is guest memory (the Rss of the guest RAM mappings, i.e. guest pages
//! touched so far). Total minus guest is what the VMM itself costs; it should not grow with
//! the guest's size.
//!
//! The guest RAM mappings are found by size: the largest anonymous (or memfd) mappings, taken
//! until they cover the guest's memory size. The first must be at least half of it, or the
//! run fails: no VMM under test maps its guest RAM in smaller pieces at these sizes.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::time::Instant;

use super::{Metric, RunContext, RunRecord, Workload};
use crate::live::Live;
use crate::peers::{GuestSpec, Vmm};

const HALTED: &[u8] = b"PETREL-GUEST: halt";

/// Guest sizes in MiB, with the metric keys of each.
const SIZES: [(u32, [&str; 3]); 2] = [
    (
        128,
        [
            "peak_rss_128m_mib",
            "vmm_rss_128m_mib",
            "guest_rss_128m_mib",
        ],
    ),
    (
        1024,
        ["peak_rss_1g_mib", "vmm_rss_1g_mib", "guest_rss_1g_mib"],
    ),
];

const METRICS: &[Metric] = &[
    metric("peak_rss_128m_mib", "peak RSS, 128 MiB guest", "MiB"),
    metric(
        "vmm_rss_128m_mib",
        "RSS not guest memory, 128 MiB guest",
        "MiB",
    ),
    metric(
        "guest_rss_128m_mib",
        "guest memory touched, 128 MiB guest",
        "MiB",
    ),
    metric("peak_rss_1g_mib", "peak RSS, 1 GiB guest", "MiB"),
    metric("vmm_rss_1g_mib", "RSS not guest memory, 1 GiB guest", "MiB"),
    metric(
        "guest_rss_1g_mib",
        "guest memory touched, 1 GiB guest",
        "MiB",
    ),
];

const fn metric(key: &'static str, label: &'static str, unit: &'static str) -> Metric {
    Metric { key, label, unit }
}

/// One mapping of `/proc/<pid>/smaps`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    /// Its pathname column (empty for anonymous memory).
    pub path: String,
    /// `Size:` in KiB.
    pub size_kib: u64,
    /// `Rss:` in KiB.
    pub rss_kib: u64,
}

impl Mapping {
    /// Anonymous memory or a memfd (where VMMs put guest RAM).
    fn anonymous(&self) -> bool {
        self.path.is_empty() || self.path.starts_with("/memfd:") || self.path == "[anon]"
    }
}

/// Parses `/proc/<pid>/smaps`.
pub fn parse_smaps(text: &str) -> Vec<Mapping> {
    let mut maps: Vec<Mapping> = Vec::new();
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        let Some(first) = fields.next() else {
            continue;
        };
        if first.ends_with(':') {
            let value = fields.next().and_then(|v| v.parse::<u64>().ok());
            if let (Some(m), Some(v)) = (maps.last_mut(), value) {
                match first {
                    "Size:" => m.size_kib = v,
                    "Rss:" => m.rss_kib = v,
                    _ => {}
                }
            }
        } else if first.contains('-') && first.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
            // address perms offset dev inode [pathname]
            let path: Vec<&str> = fields.skip(4).collect();
            maps.push(Mapping {
                path: path.join(" "),
                size_kib: 0,
                rss_kib: 0,
            });
        }
    }
    maps
}

/// A `Key:  N kB` field of `/proc/<pid>/status`, in KiB.
pub fn status_kib(status: &str, key: &str) -> Option<u64> {
    status.lines().find_map(|l| {
        let rest = l.strip_prefix(key)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// Total RSS and the RSS of the guest RAM mappings (KiB) for a guest of `guest_kib`.
pub fn split_rss(maps: &[Mapping], guest_kib: u64) -> Result<(u64, u64), String> {
    let total = maps.iter().map(|m| m.rss_kib).sum();
    let mut anon: Vec<&Mapping> = maps.iter().filter(|m| m.anonymous()).collect();
    anon.sort_by_key(|m| std::cmp::Reverse(m.size_kib));
    match anon.first() {
        Some(m) if m.size_kib >= guest_kib / 2 => {}
        _ => return Err("no mapping of the guest's RAM found in smaps".into()),
    }
    let (mut covered, mut guest) = (0, 0);
    for m in anon {
        if covered >= guest_kib {
            break;
        }
        covered += m.size_kib;
        guest += m.rss_kib;
    }
    Ok((total, guest))
}

/// The workload: one halted guest per size per run.
#[derive(Debug, Clone)]
pub struct Memory {
    /// The PVH test guest image.
    pub kernel: PathBuf,
}

impl Memory {
    /// The workload on `kernel` (1 vCPU; 128 MiB and 1 GiB).
    pub fn new(kernel: PathBuf) -> Memory {
        Memory { kernel }
    }

    fn guest(&self, memory_mib: u32) -> GuestSpec {
        GuestSpec {
            kernel: self.kernel.clone(),
            cpus: 1,
            memory_mib,
            cmdline: "action=halt".into(),
        }
    }

    /// Boots one halted guest of `mib` and returns (peak, non-guest, guest) RSS in MiB.
    fn sample(
        &self,
        vmm: &Vmm,
        mib: u32,
        ctx: &RunContext,
        log: &Path,
    ) -> Result<[f64; 3], String> {
        let mut cmd = vmm
            .command(&self.guest(mib), &ctx.scratch)
            .map_err(|e| format!("cannot run {}: {e}", vmm.name()))?;
        cmd.stderr(File::create(log).map_err(|e| format!("{}: {e}", log.display()))?);
        let mut live = Live::spawn(cmd).map_err(|e| format!("cannot run {}: {e}", vmm.name()))?;
        let deadline = live.start + ctx.timeout;
        let halted = live
            .wait_for(HALTED, deadline)
            .map_err(|e| format!("reading stdout: {e}"))?;
        let read = |f: &str| fs::read_to_string(format!("/proc/{}/{f}", live.pid()));
        let sampled = match halted {
            None if Instant::now() >= deadline => Err("timed out before the guest halted".into()),
            None => Err("the guest never halted".into()),
            Some(_) => read("status")
                .and_then(|s| Ok((s, read("smaps")?)))
                .map_err(|e| format!("reading /proc: {e}")),
        };
        let out = std::mem::take(&mut live.out);
        let ended = live.kill().map_err(|e| format!("reaping: {e}"));
        let result = sampled.and_then(|(status, smaps)| {
            let (total, guest) = split_rss(&parse_smaps(&smaps), u64::from(mib) << 10)?;
            let hwm = status_kib(&status, "VmHWM").ok_or("no VmHWM in status")?;
            let mib = |kib: u64| kib as f64 / 1024.0;
            Ok([mib(hwm), mib(total.saturating_sub(guest)), mib(guest)])
        });
        if result.is_err() {
            let _ = fs::write(log.with_extension("serial"), &out);
        }
        ended?;
        result
    }
}

impl Workload for Memory {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn description(&self) -> &'static str {
        "VMM memory with a halted guest (action=halt) of 128 MiB and 1 GiB: peak RSS, RSS that is not guest memory, guest pages touched"
    }

    fn metrics(&self) -> &'static [Metric] {
        METRICS
    }

    fn parameters(&self) -> serde_json::Value {
        serde_json::json!({
            "kernel": self.kernel,
            "boot": "PVH",
            "cpus": 1,
            "memory_mib": SIZES.iter().map(|s| s.0).collect::<Vec<_>>(),
            "guest_cmdline": "action=halt",
            "sampling": "/proc/<pid>/status VmHWM and /proc/<pid>/smaps after `PETREL-GUEST: halt`; guest = Rss of the largest anonymous/memfd mappings covering the guest size",
        })
    }

    fn command_line(&self, vmm: &Vmm, scratch: &Path) -> Option<Vec<String>> {
        vmm.command_line(&self.guest(SIZES[0].0), scratch).ok()
    }

    fn run_once(&self, vmm: &Vmm, ctx: &RunContext) -> RunRecord {
        let round = ctx.round;
        let logs = ctx.scratch.join("logs");
        if let Err(e) = fs::create_dir_all(&logs) {
            return RunRecord::failed(round, format!("{}: {e}", logs.display()));
        }
        let mut values = std::collections::BTreeMap::new();
        for (mib, keys) in SIZES {
            let log = logs.join(format!("{}-{}-{round}-{mib}.log", self.name(), vmm.name()));
            match self.sample(vmm, mib, ctx, &log) {
                Ok(v) => {
                    let _ = fs::remove_file(&log);
                    for (k, v) in keys.into_iter().zip(v) {
                        values.insert(k, Some(v));
                    }
                }
                Err(e) => {
                    return RunRecord {
                        round,
                        ok: false,
                        exit: None,
                        error: Some(format!("{mib} MiB: {e}")),
                        values,
                        log: Some(log),
                    }
                }
            }
        }
        RunRecord {
            round,
            ok: true,
            exit: Some("signal 9 (killed after sampling)".into()),
            error: None,
            values,
            log: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
55d0c0000000-55d0c0100000 r-xp 00000000 08:01 1234                       /usr/bin/petrel
Size:               1024 kB
Rss:                 800 kB
Pss:                 800 kB
7f0000000000-7f0008000000 rw-p 00000000 00:00 0 
Size:             131072 kB
Rss:                2048 kB
7f1000000000-7f1000800000 rw-p 00000000 00:00 0 
Size:               8192 kB
Rss:                 100 kB
7f2000000000-7f2000021000 rw-p 00000000 00:00 0                          [heap]
Size:                132 kB
Rss:                  60 kB
VmFlags: rd wr mr mw me ac
";

    #[test]
    fn parses_smaps() {
        let m = parse_smaps(SMAPS);
        assert_eq!(m.len(), 4);
        assert_eq!(m[0].path, "/usr/bin/petrel");
        assert_eq!(
            (m[1].path.as_str(), m[1].size_kib, m[1].rss_kib),
            ("", 131072, 2048)
        );
        assert_eq!(m[3].path, "[heap]");
        assert!(m[1].anonymous() && !m[3].anonymous());
    }

    #[test]
    fn splits_guest_from_vmm() {
        let m = parse_smaps(SMAPS);
        assert_eq!(split_rss(&m, 128 << 10), Ok((800 + 2048 + 100 + 60, 2048)));
        // A guest split in two mappings (below and above a hole).
        let two = [
            Mapping {
                path: String::new(),
                size_kib: 600,
                rss_kib: 10,
            },
            Mapping {
                path: "/memfd:guest (deleted)".into(),
                size_kib: 424,
                rss_kib: 5,
            },
            Mapping {
                path: String::new(),
                size_kib: 100,
                rss_kib: 50,
            },
        ];
        assert_eq!(split_rss(&two, 1024), Ok((65, 15)));
        assert!(split_rss(&m, 1 << 20).is_err());
    }

    #[test]
    fn reads_status_fields() {
        let s = "Name:\tpetrel\nVmHWM:\t   12345 kB\nVmRSS:\t    999 kB\n";
        assert_eq!(status_kib(s, "VmHWM"), Some(12345));
        assert_eq!(status_kib(s, "VmRSS"), Some(999));
        assert_eq!(status_kib(s, "RssAnon"), None);
    }
}
