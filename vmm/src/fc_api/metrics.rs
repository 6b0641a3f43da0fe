//! Firecracker's metrics: one JSON object per line, written to the file or FIFO of
//! `PUT /metrics` (or `--metrics-path`) on `FlushMetrics` and every [`PERIOD`]. Field names are
//! Firecracker's; counters are what happened since the previous line, as Firecracker's are.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use petrel_http::Method;
use serde_json::{json, Map, Value};

use crate::lifecycle::DeviceCounters;

/// How often metrics are written without being asked (Firecracker: every minute).
pub const PERIOD: Duration = Duration::from_secs(60);

/// A device kind's counter names: petrel's and Firecracker's.
type Names = &'static [(&'static str, &'static str)];

/// petrel's device counter names → Firecracker's, per device kind.
const BLOCK: &[(&str, &str)] = &[
    ("read_requests", "read_count"),
    ("read_bytes", "read_bytes"),
    ("write_requests", "write_count"),
    ("write_bytes", "write_bytes"),
    ("flushes", "flush_count"),
];
const NET: &[(&str, &str)] = &[
    ("rx_packets", "rx_packets_count"),
    ("rx_bytes", "rx_bytes_count"),
    ("rx_errors", "rx_fails"),
    ("rx_throttled", "rx_rate_limiter_throttled"),
    ("tx_packets", "tx_packets_count"),
    ("tx_bytes", "tx_bytes_count"),
    ("tx_errors", "tx_fails"),
    ("tx_throttled", "tx_rate_limiter_throttled"),
];
const VSOCK: &[(&str, &str)] = &[
    ("connections", "conns_added"),
    ("rx_packets", "rx_packets_count"),
    ("rx_bytes", "rx_bytes_count"),
    ("tx_packets", "tx_packets_count"),
    ("tx_bytes", "tx_bytes_count"),
];
const ENTROPY: &[(&str, &str)] = &[
    ("requests", "entropy_event_count"),
    ("bytes", "entropy_bytes"),
    ("errors", "entropy_event_fails"),
];

/// Fields that are values, not counters: written as they are.
const GAUGES: &[&str] = &["utc_timestamp_ms", "process_startup_time_us"];

/// Firecracker's request counters: (method, first path segment) → (section, counter name,
/// whether failures are counted too).
const REQUESTS: &[(Method, &str, &str, &str, bool)] = &[
    (Method::Get, "", "get_api_requests", "instance_info", false),
    (
        Method::Get,
        "machine-config",
        "get_api_requests",
        "machine_cfg",
        false,
    ),
    (Method::Get, "mmds", "get_api_requests", "mmds", false),
    (
        Method::Get,
        "version",
        "get_api_requests",
        "vmm_version",
        false,
    ),
    (Method::Put, "actions", "put_api_requests", "actions", true),
    (
        Method::Put,
        "boot-source",
        "put_api_requests",
        "boot_source",
        true,
    ),
    (
        Method::Put,
        "cpu-config",
        "put_api_requests",
        "cpu_cfg",
        true,
    ),
    (Method::Put, "drives", "put_api_requests", "drive", true),
    (Method::Put, "logger", "put_api_requests", "logger", true),
    (
        Method::Put,
        "machine-config",
        "put_api_requests",
        "machine_cfg",
        true,
    ),
    (Method::Put, "metrics", "put_api_requests", "metrics", true),
    (Method::Put, "mmds", "put_api_requests", "mmds", true),
    (
        Method::Put,
        "network-interfaces",
        "put_api_requests",
        "network",
        true,
    ),
    (Method::Put, "vsock", "put_api_requests", "vsock", true),
    (Method::Patch, "drives", "patch_api_requests", "drive", true),
    (
        Method::Patch,
        "machine-config",
        "patch_api_requests",
        "machine_cfg",
        true,
    ),
    (Method::Patch, "mmds", "patch_api_requests", "mmds", true),
    (
        Method::Patch,
        "network-interfaces",
        "patch_api_requests",
        "network",
        true,
    ),
];

/// The counter a request counts in, if Firecracker's metrics have one.
pub fn request_counter(method: Method, route: &str) -> Option<(&'static str, &'static str, bool)> {
    REQUESTS
        .iter()
        .find(|(m, r, ..)| *m == method && *r == route)
        .map(|&(_, _, group, key, fails)| (group, key, fails))
}

/// Every request counter at zero, so that each line has all of them.
pub fn request_counters() -> BTreeMap<String, BTreeMap<String, u64>> {
    let mut out: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    for &(_, _, group, key, fails) in REQUESTS {
        let counts = out.entry(group.to_string()).or_default();
        counts.insert(format!("{key}_count"), 0);
        if fails {
            counts.insert(format!("{key}_fails"), 0);
        }
    }
    out
}

/// The metrics destination and what was last reported.
pub struct MetricsSink {
    file: File,
    path: String,
    last: Map<String, Value>,
    pub(super) next_periodic: Instant,
}

impl MetricsSink {
    /// Opens `path` for appending, without blocking on a FIFO with no reader yet.
    pub fn open(path: &str) -> Result<Self, String> {
        let file = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
            .map_err(|e| {
                format!(
                    "Metrics error: Cannot initialize the metrics system due to bad user input: {e}"
                )
            })?;
        Ok(MetricsSink {
            file,
            path: path.to_string(),
            last: Map::new(),
            next_periodic: Instant::now() + PERIOD,
        })
    }

    /// The path given.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Writes one line from cumulative values; counters become the change since the last line.
    pub fn flush(&mut self, totals: Map<String, Value>) -> Result<(), String> {
        let line = Value::Object(delta(&totals, &self.last));
        self.last = totals;
        self.next_periodic = Instant::now() + PERIOD;
        let mut text = line.to_string();
        text.push('\n');
        self.file
            .write_all(text.as_bytes())
            .map_err(|e| format!("Metrics error: Cannot flush the metrics: {e}"))
    }
}

fn delta(now: &Map<String, Value>, last: &Map<String, Value>) -> Map<String, Value> {
    now.iter()
        .map(|(k, v)| {
            let out = match (v, last.get(k)) {
                (Value::Object(inner), Some(Value::Object(prev))) => {
                    Value::Object(delta(inner, prev))
                }
                (Value::Number(n), Some(Value::Number(p))) if !GAUGES.contains(&k.as_str()) => {
                    json!(n
                        .as_u64()
                        .unwrap_or(0)
                        .saturating_sub(p.as_u64().unwrap_or(0)))
                }
                (v, _) => v.clone(),
            };
            (k.clone(), out)
        })
        .collect()
}

/// Which kind of device a set of counters belongs to, by the names it has.
fn kind(counters: &[(&'static str, u64)]) -> Option<(&'static str, Names)> {
    let has = |n: &str| counters.iter().any(|(k, _)| *k == n);
    if has("read_requests") {
        Some(("block", BLOCK))
    } else if has("connections") {
        Some(("vsock", VSOCK))
    } else if has("tx_dropped") {
        Some(("net", NET))
    } else if has("requests") && has("bytes") {
        Some(("entropy", ENTROPY))
    } else {
        None
    }
}

/// Everything a metrics line reports, cumulative: per-device-kind sums, per-device sections
/// (`block_<id>`, `net_<id>`), the API request counts and the process's start-up time.
pub fn totals(
    devices: &[DeviceCounters],
    api_counts: &BTreeMap<String, BTreeMap<String, u64>>,
    startup_us: u64,
) -> Map<String, Value> {
    let mut out = Map::new();
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    out.insert("utc_timestamp_ms".into(), json!(now_ms));
    out.insert(
        "api_server".into(),
        json!({
            "process_startup_time_us": startup_us,
            "process_startup_time_cpu_us": 0,
        }),
    );
    for section in ["block", "net", "vsock", "entropy"] {
        let names = match section {
            "block" => BLOCK,
            "net" => NET,
            "vsock" => VSOCK,
            _ => ENTROPY,
        };
        let zero: Map<String, Value> = names
            .iter()
            .map(|(_, fc)| (fc.to_string(), json!(0)))
            .collect();
        out.insert(section.into(), Value::Object(zero));
    }
    for (name, counters) in devices {
        let Some((section, names)) = kind(counters) else {
            continue;
        };
        let mut own = Map::new();
        for (petrel, fc) in names {
            let v = counters
                .iter()
                .find(|(k, _)| k == petrel)
                .map_or(0, |(_, v)| *v);
            own.insert(fc.to_string(), json!(v));
            if let Some(Value::Object(sum)) = out.get_mut(section) {
                let total = sum.get(*fc).and_then(Value::as_u64).unwrap_or(0) + v;
                sum.insert(fc.to_string(), json!(total));
            }
        }
        if matches!(section, "block" | "net") {
            out.insert(format!("{section}_{name}"), Value::Object(own));
        }
    }
    for (group, counts) in api_counts {
        let map: Map<String, Value> = counts.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
        out.insert(group.clone(), Value::Object(map));
    }
    out
}

/// Starts the thread that writes `evt` (the API eventfd, or a new one without an API) every
/// `period` ([`PERIOD`]), so the event loop looks whether a metrics line is due; returns the
/// eventfd the loop watches.
pub fn start_ticker(
    evt: Option<vmm_sys_util::eventfd::EventFd>,
    period: Duration,
) -> crate::Result<vmm_sys_util::eventfd::EventFd> {
    let evt = match evt {
        Some(evt) => evt,
        None => vmm_sys_util::eventfd::EventFd::new(vmm_sys_util::eventfd::EFD_NONBLOCK)
            .map_err(|e| crate::Error::io("creating the metrics timer eventfd", e))?,
    };
    let tick = crate::legacy::clone_eventfd(&evt, "metrics timer")?;
    std::thread::Builder::new()
        .name("fc_metrics".into())
        .spawn(move || loop {
            std::thread::sleep(period);
            if tick.write(1).is_err() {
                return;
            }
        })
        .map_err(|e| crate::Error::io("starting the metrics timer thread", e))?;
    Ok(evt)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_reported_as_changes_and_gauges_as_values() {
        let dir = std::env::temp_dir().join(format!("petrel-fc-metrics-{}", std::process::id()));
        let _ = std::fs::remove_file(&dir);
        let path = dir.to_string_lossy().to_string();
        let mut sink = MetricsSink::open(&path).unwrap();
        let blk = |n| {
            vec![(
                "disk0".to_string(),
                vec![
                    ("read_requests", n),
                    ("read_bytes", 512 * n),
                    ("write_requests", 0),
                ],
            )]
        };
        sink.flush(totals(&blk(3), &BTreeMap::new(), 1234)).unwrap();
        sink.flush(totals(&blk(5), &BTreeMap::new(), 1234)).unwrap();
        let text = std::fs::read_to_string(&dir).unwrap();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["block"]["read_count"], 3);
        assert_eq!(lines[1]["block"]["read_count"], 2);
        assert_eq!(lines[1]["block_disk0"]["read_bytes"], 1024);
        assert_eq!(lines[1]["api_server"]["process_startup_time_us"], 1234);
        assert!(lines[1]["utc_timestamp_ms"].as_u64().unwrap() > 0);
        assert_eq!(lines[1]["net"]["tx_bytes_count"], 0);
        let _ = std::fs::remove_file(&dir);
    }

    #[test]
    fn the_ticker_wakes_the_loop_periodically() {
        let evt = start_ticker(None, Duration::from_millis(20)).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut wakes = 0;
        while wakes < 2 && Instant::now() < deadline {
            if evt.read().is_ok() {
                wakes += 1;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(wakes, 2, "the ticker did not write its eventfd twice");
    }

    #[test]
    fn a_bad_path_is_a_metrics_error() {
        let e = MetricsSink::open("/nonexistent-dir/m.json").err().unwrap();
        assert!(e.starts_with("Metrics error"), "{e}");
    }
}
