//! API readiness: start the VMM with only its API socket (no VM), and measure the time from
//! just before spawn until a connect(2) to the socket succeeds and until the first ping is
//! answered; then the round-trip time of the ping and, after creating a VM (not booted), of
//! the VM information call, each the median of a series on one kept-alive connection.
//!
//! | VMM | command | ping | create | info |
//! |---|---|---|---|---|
//! | petrel | `petrel --api-socket S` | `GET /api/v1/vmm.ping` | `PUT /api/v1/vm.create` | `GET /api/v1/vm.info` |
//! | Cloud Hypervisor | `cloud-hypervisor --api-socket S` | same | same | same |
//! | Firecracker | `firecracker --api-sock S` | `GET /version` | `PUT /boot-source`, `PUT /machine-config` | `GET /vm/config` |
//!
//! QEMU has no such API (QMP is another protocol) and is left out. The socket lives in a
//! short per-harness directory under the system temporary directory (Unix socket paths are
//! limited to 107 bytes) and is removed after each run, as is the directory at the end.

use std::fs::{self, File};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{Metric, RunContext, RunRecord, Workload};
use crate::child;
use crate::http::Conn;
use crate::interrupt;
use crate::live::Live;
use crate::peers::{Vmm, VmmKind};
use crate::stats::Summary;

/// Pause between connect attempts.
const RETRY: Duration = Duration::from_micros(50);

const METRICS: &[Metric] = &[
    metric("accepting_ms", "socket accepting", "ms"),
    metric("ping_ms", "first ping answered", "ms"),
    metric("ping_rtt_us", "ping round trip", "us"),
    metric("info_rtt_us", "VM info round trip", "us"),
];

const fn metric(key: &'static str, label: &'static str, unit: &'static str) -> Metric {
    Metric { key, label, unit }
}

/// The calls of one VMM's API.
struct Calls {
    ping: &'static str,
    /// `(path, JSON body)` of the calls that create the VM.
    create: Vec<(&'static str, serde_json::Value)>,
    info: &'static str,
}

/// The workload: one VMM process per run.
#[derive(Debug)]
pub struct ApiReady {
    /// The PVH test guest image (named in the VM created; never booted).
    pub kernel: PathBuf,
    /// Calls timed per series.
    pub rtt_calls: usize,
    /// Directory of the sockets.
    dir: PathBuf,
}

impl ApiReady {
    /// The workload (200 calls per series, 50 with `quick`).
    pub fn new(kernel: PathBuf, quick: bool) -> ApiReady {
        ApiReady {
            kernel,
            rtt_calls: if quick { 50 } else { 200 },
            dir: std::env::temp_dir().join(format!("pb-{}", std::process::id())),
        }
    }

    fn calls(&self, kind: VmmKind) -> Calls {
        let kernel = self.kernel.clone();
        match kind {
            VmmKind::Firecracker => Calls {
                ping: "/version",
                create: vec![
                    (
                        "/boot-source",
                        serde_json::json!({"kernel_image_path": kernel, "boot_args": "action=quick"}),
                    ),
                    (
                        "/machine-config",
                        serde_json::json!({"vcpu_count": 1, "mem_size_mib": 64}),
                    ),
                ],
                info: "/vm/config",
            },
            _ => Calls {
                ping: "/api/v1/vmm.ping",
                create: vec![(
                    "/api/v1/vm.create",
                    serde_json::json!({
                        "payload": {"kernel": kernel, "cmdline": "action=quick"},
                        "cpus": {"boot_vcpus": 1, "max_vcpus": 1},
                        "memory": {"size": 64u64 << 20},
                    }),
                )],
                info: "/api/v1/vm.info",
            },
        }
    }

    fn args(kind: VmmKind, socket: &Path) -> Vec<String> {
        let s = socket.to_string_lossy().into_owned();
        match kind {
            VmmKind::Firecracker => {
                vec!["--api-sock".into(), s, "--level".into(), "Warning".into()]
            }
            _ => vec!["--api-socket".into(), s],
        }
    }

    fn measure(
        &self,
        vmm: &Vmm,
        socket: &Path,
        ctx: &RunContext,
        log: &Path,
    ) -> Result<[f64; 4], String> {
        let mut cmd = Command::new(&vmm.path);
        cmd.args(Self::args(vmm.kind, socket)).stdin(Stdio::null());
        cmd.stderr(File::create(log).map_err(|e| format!("{}: {e}", log.display()))?);
        let live = Live::spawn(cmd).map_err(|e| format!("cannot run {}: {e}", vmm.name()))?;
        let r = self.talk(&live, socket, vmm.kind, ctx.timeout);
        let ended = live.kill();
        if r.is_ok() {
            ended.map_err(|e| format!("reaping: {e}"))?;
        }
        r
    }

    fn talk(
        &self,
        live: &Live,
        socket: &Path,
        kind: VmmKind,
        timeout: Duration,
    ) -> Result<[f64; 4], String> {
        let deadline = live.start + timeout;
        let pidfd = child::pidfd_open(live.pid()).map_err(|e| format!("pidfd: {e}"))?;
        let accepting = loop {
            if UnixStream::connect(socket).is_ok() {
                break live.start.elapsed();
            }
            if interrupt::interrupted() {
                return Err("interrupted".into());
            }
            if exited(&pidfd) {
                return Err("the VMM exited before its socket accepted".into());
            }
            if Instant::now() >= deadline {
                return Err("timed out before the socket accepted".into());
            }
            std::thread::sleep(RETRY);
        };
        let calls = self.calls(kind);
        let io_timeout = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1));
        let mut conn = Conn::connect(socket, io_timeout).map_err(|e| format!("connect: {e}"))?;
        let call = |conn: &mut Conn, method: &str, path: &str, body: Option<&serde_json::Value>| {
            let bytes = body.map(|b| b.to_string().into_bytes());
            let r = conn
                .request(method, path, bytes.as_deref())
                .map_err(|e| format!("{method} {path}: {e}"))?;
            if (200..300).contains(&r.status) {
                Ok(())
            } else {
                Err(format!(
                    "{method} {path}: status {} {}",
                    r.status,
                    String::from_utf8_lossy(&r.body)
                ))
            }
        };
        call(&mut conn, "GET", calls.ping, None)?;
        let ping = live.start.elapsed();
        let ping_rtt = self.series(|| call(&mut conn, "GET", calls.ping, None))?;
        for (path, body) in &calls.create {
            call(&mut conn, "PUT", path, Some(body))?;
        }
        let info_rtt = self.series(|| call(&mut conn, "GET", calls.info, None))?;
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        Ok([ms(accepting), ms(ping), ping_rtt, info_rtt])
    }

    /// Median duration (µs) of `rtt_calls` calls of `f`.
    fn series(&self, mut f: impl FnMut() -> Result<(), String>) -> Result<f64, String> {
        let mut us = Vec::with_capacity(self.rtt_calls);
        for _ in 0..self.rtt_calls {
            if interrupt::interrupted() {
                return Err("interrupted".into());
            }
            let t = Instant::now();
            f()?;
            us.push(t.elapsed().as_secs_f64() * 1e6);
        }
        Summary::of(&us)
            .map(|s| s.median)
            .ok_or_else(|| "no calls".into())
    }
}

/// The process behind `pidfd` has exited.
fn exited(pidfd: &OwnedFd) -> bool {
    let mut fds = [libc::pollfd {
        fd: pidfd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    }];
    // SAFETY: `fds` is one initialised pollfd; a zero timeout makes poll return at once.
    let rc = unsafe { libc::poll(fds.as_mut_ptr(), 1, 0) };
    rc > 0 && fds[0].revents != 0
}

impl Drop for ApiReady {
    fn drop(&mut self) {
        let _ = fs::remove_dir(&self.dir);
    }
}

/// Removes a socket file when dropped (the VMM is killed and cannot remove it).
struct SocketFile(PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

impl Workload for ApiReady {
    fn name(&self) -> &'static str {
        "api-ready"
    }

    fn description(&self) -> &'static str {
        "API readiness: process start -> socket accepting -> ping answered; ping and VM-info round trips (after vm.create, not booted)"
    }

    fn metrics(&self) -> &'static [Metric] {
        METRICS
    }

    fn parameters(&self) -> serde_json::Value {
        serde_json::json!({
            "kernel": self.kernel,
            "vm_created": {"cpus": 1, "memory_mib": 64, "booted": false},
            "rtt_calls": self.rtt_calls,
            "connect_retry_us": RETRY.as_micros() as u64,
            "rtt": "median per run of rtt_calls calls on one kept-alive HTTP/1.1 connection",
        })
    }

    fn supports(&self, kind: VmmKind) -> bool {
        kind != VmmKind::Qemu
    }

    fn command_line(&self, vmm: &Vmm, _scratch: &Path) -> Option<Vec<String>> {
        let mut line = vec![vmm.path.to_string_lossy().into_owned()];
        line.extend(Self::args(
            vmm.kind,
            &self.dir.join(format!("{}.sock", vmm.name())),
        ));
        Some(line)
    }

    fn run_once(&self, vmm: &Vmm, ctx: &RunContext) -> RunRecord {
        let round = ctx.round;
        let log = match super::run_log(ctx, &self.dir, self.name(), vmm) {
            Ok(log) => log,
            Err(e) => return RunRecord::failed(round, e),
        };
        let socket = SocketFile(self.dir.join(format!("{}.sock", vmm.name())));
        let _ = fs::remove_file(&socket.0);
        let result = self.measure(vmm, &socket.0, ctx, &log);
        RunRecord::killed_after_measuring(round, METRICS, result, log)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_and_args_per_vmm() {
        let w = ApiReady::new(PathBuf::from("/g.elf"), true);
        assert_eq!(w.rtt_calls, 50);
        let p = w.calls(VmmKind::Petrel);
        assert_eq!((p.ping, p.info), ("/api/v1/vmm.ping", "/api/v1/vm.info"));
        assert_eq!(p.create[0].1["memory"]["size"], 64u64 << 20);
        assert_eq!(p.create[0].1["payload"]["kernel"], "/g.elf");
        let f = w.calls(VmmKind::Firecracker);
        assert_eq!(f.create.len(), 2);
        assert_eq!(
            ApiReady::args(VmmKind::Firecracker, Path::new("/s"))[..2],
            ["--api-sock", "/s"]
        );
        assert_eq!(
            ApiReady::args(VmmKind::CloudHypervisor, Path::new("/s")),
            ["--api-socket", "/s"]
        );
        assert!(!w.supports(VmmKind::Qemu) && w.supports(VmmKind::Petrel));
    }
}
