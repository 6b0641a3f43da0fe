//! Snapshot and restore: the PVH test guest counting fast (`action=count countspins=3000`,
//! 1 vCPU, 128 MiB) is paused and snapshotted; the VMM is killed; a new VMM process restores
//! the snapshot and resumes it, and the guest's next `COUNT` line on the new process's
//! console marks it running again.
//!
//! | VMM | snapshot | restore |
//! |---|---|---|
//! | petrel, Cloud Hypervisor | `vm.pause`, `vm.snapshot {"destination_url": "file://D"}` | `vm.restore {"source_url": "file://D"}`, `vm.resume` |
//! | Firecracker | `PATCH /vm {"state": "Paused"}`, `PUT /snapshot/create` (Full) | `PUT /snapshot/load {"resume_vm": true}` (memory file backend) |
//!
//! Metrics: the snapshot call (VM paused), the snapshot's size on disk (allocated blocks:
//! petrel's memory files are sparse), the restore call(s) on a VMM whose socket already
//! accepts, and restore → running (from just before the restore call to the first `COUNT`
//! line the restored guest prints; a line comes every few ms).

use std::fs::{self, File};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use super::{Metric, RunContext, RunRecord, Workload};
use crate::http::Conn;
use crate::interrupt;
use crate::live::Live;
use crate::peers::{Vmm, VmmKind};

const METRICS: &[Metric] = &[
    metric("snapshot_ms", "snapshot (paused VM)", "ms"),
    metric("snapshot_mib", "snapshot size on disk", "MiB"),
    metric("restore_ms", "restore call(s)", "ms"),
    metric("running_ms", "restore -> guest running", "ms"),
];

const fn metric(key: &'static str, label: &'static str, unit: &'static str) -> Metric {
    Metric { key, label, unit }
}

const MEMORY_MIB: u64 = 128;
const CMDLINE: &str = "action=count countspins=3000";

/// The workload.
#[derive(Debug)]
pub struct SnapshotBench {
    /// The PVH test guest.
    pub kernel: PathBuf,
    /// Directory of the sockets (short paths).
    dir: PathBuf,
}

impl SnapshotBench {
    /// The workload on `kernel`.
    pub fn new(kernel: PathBuf) -> SnapshotBench {
        SnapshotBench {
            kernel,
            dir: std::env::temp_dir().join(format!("pbs-{}", std::process::id())),
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

    fn spawn(&self, vmm: &Vmm, socket: &Path, log: &Path) -> Result<Live, String> {
        let _ = fs::remove_file(socket);
        let mut cmd = Command::new(&vmm.path);
        cmd.args(Self::args(vmm.kind, socket)).stdin(Stdio::null());
        let err = File::options()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|e| format!("{}: {e}", log.display()))?;
        cmd.stderr(err);
        Live::spawn(cmd).map_err(|e| format!("cannot run {}: {e}", vmm.name()))
    }

    /// Boots the counting guest in the VMM at `socket`.
    fn boot(&self, kind: VmmKind, c: &mut Conn) -> Result<(), String> {
        if kind == VmmKind::Firecracker {
            call(
                c,
                "PUT",
                "/boot-source",
                json!({"kernel_image_path": self.kernel, "boot_args": CMDLINE}),
            )?;
            call(
                c,
                "PUT",
                "/machine-config",
                json!({"vcpu_count": 1, "mem_size_mib": MEMORY_MIB}),
            )?;
            return call(
                c,
                "PUT",
                "/actions",
                json!({"action_type": "InstanceStart"}),
            );
        }
        call(
            c,
            "PUT",
            "/api/v1/vm.create",
            json!({
                "payload": {"kernel": self.kernel, "cmdline": CMDLINE},
                "cpus": {"boot_vcpus": 1, "max_vcpus": 1},
                "memory": {"size": MEMORY_MIB << 20},
                "serial": {"mode": "Tty"},
                "console": {"mode": "Off"},
            }),
        )?;
        call_empty(c, "PUT", "/api/v1/vm.boot")
    }

    fn snapshot(&self, kind: VmmKind, c: &mut Conn, dir: &Path) -> Result<Duration, String> {
        if kind == VmmKind::Firecracker {
            call(c, "PATCH", "/vm", json!({"state": "Paused"}))?;
            let t = Instant::now();
            call(
                c,
                "PUT",
                "/snapshot/create",
                json!({"snapshot_type": "Full", "snapshot_path": dir.join("vmstate"),
                       "mem_file_path": dir.join("memory")}),
            )?;
            return Ok(t.elapsed());
        }
        call_empty(c, "PUT", "/api/v1/vm.pause")?;
        let t = Instant::now();
        call(
            c,
            "PUT",
            "/api/v1/vm.snapshot",
            json!({"destination_url": format!("file://{}", dir.display())}),
        )?;
        Ok(t.elapsed())
    }

    fn restore(&self, kind: VmmKind, c: &mut Conn, dir: &Path) -> Result<(), String> {
        if kind == VmmKind::Firecracker {
            return call(
                c,
                "PUT",
                "/snapshot/load",
                json!({"snapshot_path": dir.join("vmstate"),
                       "mem_backend": {"backend_type": "File", "backend_path": dir.join("memory")},
                       "resume_vm": true}),
            );
        }
        call(
            c,
            "PUT",
            "/api/v1/vm.restore",
            json!({"source_url": format!("file://{}", dir.display())}),
        )?;
        call_empty(c, "PUT", "/api/v1/vm.resume")
    }

    fn measure(&self, vmm: &Vmm, ctx: &RunContext, log: &Path) -> Result<[f64; 4], String> {
        let socket = self.dir.join(format!("{}.sock", vmm.name()));
        let snap = ctx
            .scratch
            .join("snapshots")
            .join(format!("{}-{}", vmm.name(), ctx.round));
        let _ = fs::remove_dir_all(&snap);
        fs::create_dir_all(&snap).map_err(|e| format!("{}: {e}", snap.display()))?;
        let result = self.measure_in(vmm, ctx, log, &socket, &snap);
        let _ = fs::remove_dir_all(&snap);
        let _ = fs::remove_file(&socket);
        result
    }

    fn measure_in(
        &self,
        vmm: &Vmm,
        ctx: &RunContext,
        log: &Path,
        socket: &Path,
        snap: &Path,
    ) -> Result<[f64; 4], String> {
        let deadline = Instant::now() + ctx.timeout;
        let mut source = self.spawn(vmm, socket, log)?;
        let taken = (|| {
            let mut c = connect(socket, deadline)?;
            self.boot(vmm.kind, &mut c)?;
            match source.wait_for(b"COUNT 20\n", deadline) {
                Ok(Some(_)) => {}
                Ok(None) => return Err("the guest did not count".to_string()),
                Err(e) => return Err(format!("reading the console: {e}")),
            }
            self.snapshot(vmm.kind, &mut c, snap)
        })();
        let _ = source.kill();
        let took = taken?;
        let size = disk_usage(snap);

        let mut target = self.spawn(vmm, socket, log)?;
        let restored = (|| {
            let mut c = connect(socket, deadline)?;
            let t = Instant::now();
            self.restore(vmm.kind, &mut c, snap)?;
            let restore = t.elapsed();
            match target.wait_for(b"COUNT ", deadline) {
                Ok(Some(_)) => Ok((restore, t.elapsed())),
                Ok(None) => Err("the restored guest did not count".to_string()),
                Err(e) => Err(format!("reading the console: {e}")),
            }
        })();
        let _ = target.kill();
        let (restore, running) = restored?;
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        Ok([
            ms(took),
            size as f64 / f64::from(1u32 << 20),
            ms(restore),
            ms(running),
        ])
    }
}

/// Connects to `socket` once it accepts.
fn connect(socket: &Path, deadline: Instant) -> Result<Conn, String> {
    loop {
        if UnixStream::connect(socket).is_ok() {
            let left = deadline.saturating_duration_since(Instant::now());
            return Conn::connect(socket, left.max(Duration::from_millis(1)))
                .map_err(|e| format!("connect: {e}"));
        }
        if interrupt::interrupted() {
            return Err("interrupted".into());
        }
        if Instant::now() >= deadline {
            return Err("timed out before the socket accepted".into());
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

fn call(c: &mut Conn, method: &str, path: &str, body: serde_json::Value) -> Result<(), String> {
    request(c, method, path, Some(body.to_string().as_bytes()))
}

fn call_empty(c: &mut Conn, method: &str, path: &str) -> Result<(), String> {
    request(c, method, path, None)
}

fn request(c: &mut Conn, method: &str, path: &str, body: Option<&[u8]>) -> Result<(), String> {
    let r = c
        .request(method, path, body)
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
}

/// Bytes the files under `dir` take on disk.
fn disk_usage(dir: &Path) -> u64 {
    fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.blocks() * 512)
                .sum()
        })
        .unwrap_or(0)
}

impl Drop for SnapshotBench {
    fn drop(&mut self) {
        let _ = fs::remove_dir(&self.dir);
    }
}

impl Workload for SnapshotBench {
    fn name(&self) -> &'static str {
        "snapshot"
    }

    fn description(&self) -> &'static str {
        "snapshot of a paused counting guest, then restore into a new VMM process until the guest counts again"
    }

    fn metrics(&self) -> &'static [Metric] {
        METRICS
    }

    fn parameters(&self) -> serde_json::Value {
        json!({
            "kernel": self.kernel,
            "cmdline": CMDLINE,
            "cpus": 1,
            "memory_mib": MEMORY_MIB,
            "snapshot_size": "allocated blocks of the snapshot's files",
            "running": "from just before the restore call to the restored guest's first COUNT line",
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
        let result = self.measure(vmm, ctx, &log);
        RunRecord::killed_after_measuring(round, METRICS, result, log)
    }
}
