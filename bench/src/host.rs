//! Facts about the machine a result was measured on (kernel, CPU, /dev/kvm), and UTC
//! timestamps for result directories.

use std::fs;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

/// The host, as recorded in every result.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HostInfo {
    /// Kernel release (`uname -r`).
    pub kernel: String,
    /// CPU model name from /proc/cpuinfo.
    pub cpu_model: String,
    /// Online CPUs.
    pub cpus: usize,
    /// /dev/kvm exists.
    pub kvm_present: bool,
    /// /dev/kvm opens read-write.
    pub kvm_accessible: bool,
    /// Loaded kernel modules whose name starts with `kvm` (e.g. `kvm_intel`, `kvm_pvm`).
    pub kvm_modules: Vec<String>,
    /// Where the run happened when that is not plain hardware (`$PETREL_BENCH_ENVIRONMENT`,
    /// set by `resources/bench-linux-boot.sh` inside the nested KVM); empty otherwise.
    pub environment: String,
    /// 1-minute load average when the run started.
    pub load_1min: Option<f64>,
    /// The harness's scheduling policy, which the VMMs it starts inherit (`SCHED_OTHER`, or
    /// e.g. `SCHED_FIFO 50` under `chrt -f 50`).
    pub scheduler: String,
}

impl HostInfo {
    /// Reads the host facts; unknown values are empty strings.
    pub fn collect() -> HostInfo {
        let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_default();
        let cpu_model = fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, v)| v.trim().to_string())
            })
            .unwrap_or_default();
        let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
        let mut kvm_modules: Vec<String> = fs::read_dir("/sys/module")
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with("kvm"))
                    .collect()
            })
            .unwrap_or_default();
        kvm_modules.sort();
        let load_1min = fs::read_to_string("/proc/loadavg")
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse().ok());
        HostInfo {
            kernel,
            cpu_model,
            cpus,
            kvm_present: fs::metadata("/dev/kvm").is_ok(),
            kvm_accessible: petrel_tests::kvm_available(),
            kvm_modules,
            environment: std::env::var("PETREL_BENCH_ENVIRONMENT").unwrap_or_default(),
            load_1min,
            scheduler: scheduler(),
        }
    }

    /// One line for the Markdown report.
    pub fn summary(&self) -> String {
        let kvm = match (self.kvm_present, self.kvm_accessible) {
            (false, _) => "no /dev/kvm".to_string(),
            (true, false) => "/dev/kvm not accessible".to_string(),
            (true, true) => format!("/dev/kvm ({})", self.kvm_modules.join(", ")),
        };
        let environment = if self.environment.is_empty() {
            String::new()
        } else {
            format!(" — **{}**", self.environment)
        };
        let load = self
            .load_1min
            .map_or_else(|| "unknown".to_string(), |l| format!("{l:.2}"));
        format!(
            "{}, {} CPUs, Linux {}, {kvm}; load {load} at the start; harness and VMMs under {}{environment}",
            self.cpu_model, self.cpus, self.kernel, self.scheduler
        )
    }
}

/// This process's scheduling policy and priority.
fn scheduler() -> String {
    // SAFETY: sched_getscheduler takes a pid (0: this thread) and reads nothing else.
    let policy = unsafe { libc::sched_getscheduler(0) };
    let mut param = libc::sched_param { sched_priority: 0 };
    // SAFETY: sched_getparam writes one sched_param, which `param` is.
    let prio = if unsafe { libc::sched_getparam(0, &mut param) } == 0 {
        param.sched_priority
    } else {
        0
    };
    match policy {
        libc::SCHED_OTHER => "SCHED_OTHER".to_string(),
        libc::SCHED_FIFO => format!("SCHED_FIFO {prio}"),
        libc::SCHED_RR => format!("SCHED_RR {prio}"),
        libc::SCHED_BATCH => "SCHED_BATCH".to_string(),
        libc::SCHED_IDLE => "SCHED_IDLE".to_string(),
        other => format!("policy {other}"),
    }
}

/// Civil date (year, month, day) of a day count since 1970-01-01.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// `secs` since the epoch as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn iso_utc(secs: u64) -> String {
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    let (y, mo, d) = civil_from_days(days);
    format!(
        "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// Seconds since the epoch, now.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `YYYYMMDDTHHMMSSZ`, for a results directory name.
pub fn compact_utc(secs: u64) -> String {
    iso_utc(secs).replace(['-', ':'], "")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps() {
        assert_eq!(iso_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(iso_utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(iso_utc(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(compact_utc(1_700_000_000), "20231114T221320Z");
    }

    #[test]
    fn host_info_reads_something() {
        let h = HostInfo::collect();
        assert!(!h.kernel.is_empty());
        assert!(h.cpus > 0);
        assert!(h.summary().contains(&h.kernel));
        assert!(h.load_1min.is_some_and(|l| l >= 0.0));
        assert!(h.scheduler.starts_with("SCHED_"), "{}", h.scheduler);
        assert!(h.summary().contains(&h.scheduler));
    }
}
