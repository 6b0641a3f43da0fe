//! Firecracker-dialect start: the same Firecracker command line and API calls to petrel (in its
//! Firecracker dialect) and to Firecracker itself. From just before spawn: the API socket
//! accepting, `PUT /boot-source` + `PUT /machine-config` answered, `PUT /actions InstanceStart`
//! answered, and the guest's first serial line (`PETREL-GUEST: start`).
//!
//! | VMM | command | calls |
//! |---|---|---|
//! | petrel | `petrel --api-sock S --level Error` | `PUT /boot-source`, `PUT /machine-config`, `PUT /actions` |
//! | Firecracker | `firecracker --api-sock S --level Error` | same |
//!
//! The guest runs `action=quick-reset` (an i8042 reset, which ends both). Serial output is on
//! stdout for both.

use std::fs::{self, File};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{Metric, RunContext, RunRecord, Workload};
use crate::http::Conn;
use crate::interrupt;
use crate::live::Live;
use crate::peers::{Vmm, VmmKind};

/// Pause between connect attempts.
const RETRY: Duration = Duration::from_micros(50);

/// The guest's first line.
const FIRST_OUTPUT: &[u8] = b"PETREL-GUEST: start";

const METRICS: &[Metric] = &[
    metric("accepting_ms", "socket accepting", "ms"),
    metric(
        "configured_ms",
        "boot source and machine config answered",
        "ms",
    ),
    metric("start_answered_ms", "InstanceStart answered", "ms"),
    metric("first_output_ms", "first guest output", "ms"),
];

const fn metric(key: &'static str, label: &'static str, unit: &'static str) -> Metric {
    Metric { key, label, unit }
}

/// The workload: one VMM process per run.
#[derive(Debug)]
pub struct FcStart {
    /// The PVH test guest image.
    pub kernel: PathBuf,
    /// Directory of the sockets.
    dir: PathBuf,
}

impl FcStart {
    /// The workload.
    pub fn new(kernel: PathBuf) -> FcStart {
        FcStart {
            kernel,
            dir: std::env::temp_dir().join(format!("pbf-{}", std::process::id())),
        }
    }

    fn args(socket: &Path) -> Vec<String> {
        let s = socket.to_string_lossy().into_owned();
        vec!["--api-sock".into(), s, "--level".into(), "Error".into()]
    }

    fn calls(&self) -> [(&'static str, serde_json::Value); 3] {
        [
            (
                "/boot-source",
                serde_json::json!({"kernel_image_path": self.kernel, "boot_args": "action=quick-reset"}),
            ),
            (
                "/machine-config",
                serde_json::json!({"vcpu_count": 1, "mem_size_mib": 64}),
            ),
            (
                "/actions",
                serde_json::json!({"action_type": "InstanceStart"}),
            ),
        ]
    }

    fn measure(
        &self,
        vmm: &Vmm,
        socket: &Path,
        ctx: &RunContext,
        log: &Path,
    ) -> Result<[f64; 4], String> {
        let mut cmd = Command::new(&vmm.path);
        cmd.args(Self::args(socket)).stdin(Stdio::null());
        cmd.stderr(File::create(log).map_err(|e| format!("{}: {e}", log.display()))?);
        let mut live = Live::spawn(cmd).map_err(|e| format!("cannot run {}: {e}", vmm.name()))?;
        let r = self.talk(&mut live, socket, ctx.timeout);
        let _ = live.kill();
        r
    }

    fn talk(&self, live: &mut Live, socket: &Path, timeout: Duration) -> Result<[f64; 4], String> {
        let deadline = live.start + timeout;
        let accepting = loop {
            if UnixStream::connect(socket).is_ok() {
                break live.start.elapsed();
            }
            if interrupt::interrupted() {
                return Err("interrupted".into());
            }
            if Instant::now() >= deadline {
                return Err("timed out before the socket accepted".into());
            }
            std::thread::sleep(RETRY);
        };
        let io_timeout = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1));
        let mut conn = Conn::connect(socket, io_timeout).map_err(|e| format!("connect: {e}"))?;
        let mut marks = Vec::new();
        for (path, body) in self.calls() {
            let bytes = body.to_string().into_bytes();
            let r = conn
                .request("PUT", path, Some(&bytes))
                .map_err(|e| format!("PUT {path}: {e}"))?;
            if !(200..300).contains(&r.status) {
                return Err(format!(
                    "PUT {path}: status {} {}",
                    r.status,
                    String::from_utf8_lossy(&r.body)
                ));
            }
            marks.push(live.start.elapsed());
        }
        let first = live
            .wait_for(FIRST_OUTPUT, deadline)
            .map_err(|e| format!("reading the serial output: {e}"))?
            .ok_or("no guest output before the timeout")?;
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        Ok([ms(accepting), ms(marks[1]), ms(marks[2]), ms(first)])
    }
}

impl Drop for FcStart {
    fn drop(&mut self) {
        let _ = fs::remove_dir(&self.dir);
    }
}

impl Workload for FcStart {
    fn name(&self) -> &'static str {
        "fc-start"
    }

    fn description(&self) -> &'static str {
        "Firecracker dialect: process start -> API accepting -> configured -> InstanceStart answered -> first guest output (petrel --api-sock vs firecracker)"
    }

    fn metrics(&self) -> &'static [Metric] {
        METRICS
    }

    fn parameters(&self) -> serde_json::Value {
        serde_json::json!({
            "kernel": self.kernel,
            "vm": {"cpus": 1, "memory_mib": 64, "cmdline": "action=quick-reset"},
            "connect_retry_us": RETRY.as_micros() as u64,
            "calls": ["PUT /boot-source", "PUT /machine-config", "PUT /actions InstanceStart"],
        })
    }

    fn supports(&self, kind: VmmKind) -> bool {
        matches!(kind, VmmKind::Petrel | VmmKind::Firecracker)
    }

    fn command_line(&self, vmm: &Vmm, _scratch: &Path) -> Option<Vec<String>> {
        let mut line = vec![vmm.path.to_string_lossy().into_owned()];
        line.extend(Self::args(&self.dir.join(format!("{}.sock", vmm.name()))));
        Some(line)
    }

    fn run_once(&self, vmm: &Vmm, ctx: &RunContext) -> RunRecord {
        let round = ctx.round;
        let log = match super::run_log(ctx, &self.dir, self.name(), vmm) {
            Ok(log) => log,
            Err(e) => return RunRecord::failed(round, e),
        };
        let socket = self.dir.join(format!("{}.sock", vmm.name()));
        let _ = fs::remove_file(&socket);
        let result = self.measure(vmm, &socket, ctx, &log);
        let _ = fs::remove_file(&socket);
        RunRecord::killed_after_measuring(round, METRICS, result, log)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_command_line_and_calls_for_both() {
        let w = FcStart::new(PathBuf::from("/g.elf"));
        assert_eq!(FcStart::args(Path::new("/s"))[..2], ["--api-sock", "/s"]);
        let calls = w.calls();
        assert_eq!(calls[2].1["action_type"], "InstanceStart");
        assert_eq!(calls[0].1["kernel_image_path"], "/g.elf");
        assert!(w.supports(VmmKind::Petrel) && w.supports(VmmKind::Firecracker));
        assert!(!w.supports(VmmKind::CloudHypervisor));
    }
}
