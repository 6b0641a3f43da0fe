//! `create-rate-petreld`: the create rate through the orchestrator. One `petreld` per run,
//! in a scratch state directory, started outside the timed window; then N clients, released
//! together by a barrier, each `POST /v1/vms` one VM (the test guest with `action=halt`,
//! 1 vCPU, 64 MiB, `start: true`), and the harness polls `GET /v1/vms?state=running` until
//! all N are running. VMs per second is N over the time from the release to that moment.
//!
//! petreld's own cost is read from `/proc/<petreld pid>`: an idle baseline with no VM, then
//! with the N VMs running. Per managed VM: RSS growth (VmRSS and VmHWM minus the baseline),
//! CPU time spent creating and booting (utime + stime from the release until all run), and
//! the steady CPU of managing it (CPU over [`STEADY_WINDOW`] with N VMs minus the same window
//! idle). Afterwards every VM is deleted and petreld is killed, and any petrel left under
//! the state directory (they outlive petreld by design) is killed too, on every path.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{Metric, RunContext, RunRecord};
use crate::child::Reaper;
use crate::http::Conn;
use crate::interrupt;

/// How long petreld's steady CPU is sampled, idle and with the N VMs.
pub const STEADY_WINDOW: Duration = Duration::from_secs(2);

/// The metrics of `create-rate-petreld`.
pub const METRICS: &[Metric] = &[
    Metric {
        key: "all_running_ms",
        label: "all VMs created and running",
        unit: "ms",
    },
    Metric {
        key: "vms_per_s",
        label: "VMs per second",
        unit: "VMs/s",
    },
    Metric {
        key: "vms_per_s_per_core",
        label: "VMs per second per host core",
        unit: "VMs/s/core",
    },
    Metric {
        key: "slowest_create_ms",
        label: "slowest POST /v1/vms",
        unit: "ms",
    },
    Metric {
        key: "rss_kib_per_vm",
        label: "petreld VmRSS growth per VM",
        unit: "KiB",
    },
    Metric {
        key: "hwm_kib_per_vm",
        label: "petreld VmHWM growth per VM",
        unit: "KiB",
    },
    Metric {
        key: "create_cpu_ms_per_vm",
        label: "petreld CPU to create and boot one VM",
        unit: "ms",
    },
    Metric {
        key: "steady_cpu_permille_per_vm",
        label: "petreld steady CPU per managed VM",
        unit: "‰ of a core",
    },
];

/// petreld's memory and CPU at one moment.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Usage {
    rss_kib: u64,
    hwm_kib: u64,
    cpu: Duration,
}

fn usage(pid: libc::pid_t) -> Result<Usage, String> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("petreld status: {e}"))?;
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| format!("petreld stat: {e}"))?;
    let kib = |k| super::memory::status_kib(&status, k).ok_or(format!("no {k} in status"));
    Ok(Usage {
        rss_kib: kib("VmRSS")?,
        hwm_kib: kib("VmHWM")?,
        cpu: cpu_time(&stat).ok_or("cannot parse /proc/<pid>/stat")?,
    })
}

/// utime + stime of a `/proc/<pid>/stat` line.
fn cpu_time(stat: &str) -> Option<Duration> {
    // Fields after the command (which may hold spaces) start at field 3 (state).
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no memory effects.
    let hz = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) })
        .ok()
        .filter(|&h| h > 0)?;
    Some(Duration::from_micros(ticks * 1_000_000 / hz))
}

/// A petreld in a scratch directory; dropping it deletes what it runs.
struct Daemon {
    dir: PathBuf,
    socket: PathBuf,
    reaper: Option<Reaper>,
    pid: libc::pid_t,
}

impl Daemon {
    fn start(bin: &Path, petrel: &Path, dir: PathBuf, timeout: Duration) -> Result<Daemon, String> {
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let config = json!({"petrel": petrel, "cpu_overcommit": 64.0});
        fs::write(dir.join("config.json"), config.to_string()).map_err(|e| e.to_string())?;
        let log = File::create(dir.join("petreld.log")).map_err(|e| e.to_string())?;
        let socket = dir.join("petreld.sock");
        let child = Command::new(bin)
            .arg("--socket")
            .arg(&socket)
            .arg("--state-dir")
            .arg(dir.join("state"))
            .arg("--config")
            .arg(dir.join("config.json"))
            .env("PETRELD_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", bin.display()))?;
        let pid = libc::pid_t::try_from(child.id()).map_err(|e| e.to_string())?;
        let d = Daemon {
            dir,
            socket,
            reaper: Some(Reaper::register(pid).map_err(|e| e.to_string())?),
            pid,
        };
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(r) = d.call("GET", "/v1/ping", None) {
                if r.0 == 200 {
                    return Ok(d);
                }
            }
            if Instant::now() > deadline || interrupt::interrupted() {
                return Err(format!("petreld never answered: {}", d.log_tail()));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn conn(&self) -> Result<Conn, String> {
        Conn::connect(&self.socket, Duration::from_secs(120)).map_err(|e| format!("connect: {e}"))
    }

    /// One request on a fresh connection: status and JSON body (`Null` when empty).
    fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Result<(u16, Value), String> {
        request(&mut self.conn()?, method, path, body)
    }

    fn log_tail(&self) -> String {
        let log = fs::read_to_string(self.dir.join("petreld.log")).unwrap_or_default();
        let start = log.len().saturating_sub(2000);
        log.get(start..).unwrap_or_default().to_string()
    }

    fn running(&self) -> Result<usize, String> {
        let (status, page) = self.call("GET", "/v1/vms?state=running&limit=1000", None)?;
        if status != 200 {
            return Err(format!("GET /v1/vms: {status} {page}"));
        }
        Ok(page["items"].as_array().map_or(0, Vec::len))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok((200, page)) = self.call("GET", "/v1/vms?limit=1000", None) {
            for vm in page["items"].as_array().into_iter().flatten() {
                if let Some(id) = vm["id"].as_str() {
                    let _ = self.call("DELETE", &format!("/v1/vms/{id}"), None);
                }
            }
        }
        drop(self.reaper.take());
        kill_under(&self.dir);
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn request(
    conn: &mut Conn,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> Result<(u16, Value), String> {
    let bytes = body.map(|b| b.to_string().into_bytes());
    let r = conn
        .request(method, path, bytes.as_deref())
        .map_err(|e| format!("{method} {path}: {e}"))?;
    let v = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
    Ok((r.status, v))
}

/// SIGKILLs every process whose command line mentions `dir` (petrels left by petreld).
fn kill_under(dir: &Path) {
    let want = dir.to_string_lossy().into_owned();
    let Ok(entries) = fs::read_dir("/proc") else {
        return;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        let cmdline = fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(&want) {
            // SAFETY: kill has no memory effects; a petrel of this run's state directory.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

/// The VM asked for (the halting test guest).
fn create_body(name: &str, kernel: &Path, memory_mib: u32) -> Value {
    json!({
        "name": name,
        "start": true,
        "config": {
            "payload": {"kernel": kernel, "cmdline": "action=halt"},
            "cpus": {"boot_vcpus": 1},
            "memory": {"size": u64::from(memory_mib) << 20},
        },
    })
}

/// The request line and body of one create, for the report.
pub fn command_line(bin: &Path, kernel: &Path, memory_mib: u32) -> Vec<String> {
    vec![
        bin.display().to_string(),
        "--socket S --state-dir D --config C".into(),
        format!("POST /v1/vms {}", create_body("cr-<i>", kernel, memory_mib)),
    ]
}

/// One run: petreld started, N concurrent creates, timed until all run; cost per VM.
pub fn run_once(
    bin: &Path,
    petrel: &Path,
    kernel: &Path,
    vms: usize,
    memory_mib: u32,
    ctx: &RunContext,
) -> RunRecord {
    let round = ctx.round;
    match measure(bin, petrel, kernel, vms, memory_mib, ctx) {
        Ok(values) => RunRecord {
            round,
            ok: true,
            exit: None,
            error: None,
            values,
            log: None,
        },
        Err(e) => RunRecord::failed(round, e),
    }
}

type Values = std::collections::BTreeMap<&'static str, Option<f64>>;

fn measure(
    bin: &Path,
    petrel: &Path,
    kernel: &Path,
    vms: usize,
    memory_mib: u32,
    ctx: &RunContext,
) -> Result<Values, String> {
    // Unix socket paths are short: the state directory lives in /tmp, not in the results.
    let dir = std::env::temp_dir().join(format!("pbd-{}-{}", std::process::id(), ctx.round));
    let d = Daemon::start(bin, petrel, dir, ctx.timeout)?;
    let deadline = Instant::now() + ctx.timeout;
    std::thread::sleep(Duration::from_millis(300));
    let idle0 = usage(d.pid)?;
    std::thread::sleep(STEADY_WINDOW);
    let idle1 = usage(d.pid)?;

    let barrier = Barrier::new(vms + 1);
    let mut conns = (0..vms).map(|_| d.conn()).collect::<Result<Vec<_>, _>>()?;
    let (t0, posts) = std::thread::scope(|s| {
        let handles: Vec<_> = conns
            .iter_mut()
            .enumerate()
            .map(|(i, conn)| {
                let barrier = &barrier;
                let body = create_body(&format!("cr-{i}"), kernel, memory_mib);
                s.spawn(move || {
                    barrier.wait();
                    let t = Instant::now();
                    let r = request(conn, "POST", "/v1/vms", Some(&body));
                    (t.elapsed(), r)
                })
            })
            .collect();
        barrier.wait();
        let t0 = Instant::now();
        let posts: Vec<_> = handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| (Duration::ZERO, Err("thread panicked".into())))
            })
            .collect();
        (t0, posts)
    });
    let mut slowest = Duration::ZERO;
    for (i, (took, r)) in posts.into_iter().enumerate() {
        match r? {
            (201, _) => slowest = slowest.max(took),
            (status, body) => {
                return Err(format!(
                    "VM {i}: POST /v1/vms answered {status} {body}\n{}",
                    d.log_tail()
                ))
            }
        }
    }
    loop {
        if d.running()? == vms {
            break;
        }
        if Instant::now() > deadline || interrupt::interrupted() {
            return Err(format!("not all {vms} VMs running in time"));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let all = t0.elapsed();
    let busy0 = usage(d.pid)?;
    std::thread::sleep(STEADY_WINDOW);
    let busy1 = usage(d.pid)?;
    if d.running()? != vms {
        return Err(format!("not all {vms} VMs still running after the window"));
    }
    drop(d);

    let n = vms as f64;
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get()) as f64;
    let secs = all.as_secs_f64();
    let kib = |a: u64, b: u64| (a as f64 - b as f64) / n;
    let steady = |a: Usage, b: Usage| (b.cpu.saturating_sub(a.cpu)).as_secs_f64();
    let window = STEADY_WINDOW.as_secs_f64();
    Ok([
        ("all_running_ms", Some(secs * 1e3)),
        ("vms_per_s", Some(n / secs)),
        ("vms_per_s_per_core", Some(n / secs / cores)),
        ("slowest_create_ms", Some(slowest.as_secs_f64() * 1e3)),
        ("rss_kib_per_vm", Some(kib(busy1.rss_kib, idle1.rss_kib))),
        ("hwm_kib_per_vm", Some(kib(busy1.hwm_kib, idle1.hwm_kib))),
        (
            "create_cpu_ms_per_vm",
            Some(busy0.cpu.saturating_sub(idle1.cpu).as_secs_f64() * 1e3 / n),
        ),
        (
            "steady_cpu_permille_per_vm",
            Some((steady(busy0, busy1) - steady(idle0, idle1)) / window * 1e3 / n),
        ),
    ]
    .into_iter()
    .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_time_reads_utime_and_stime() {
        // SAFETY: sysconf has no memory effects.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
        let stat = format!(
            "42 (a b) c) S 1 2 3 4 5 6 7 8 9 10 {} {} 0 0",
            hz * 2,
            hz / 2
        );
        assert_eq!(cpu_time(&stat), Some(Duration::from_millis(2500)));
        assert_eq!(cpu_time("42 (x) S 1"), None);
    }
}
