//! vsock guest → host throughput (petrel only): the test guest's `action=bench-vsock`
//! (`tests/guests/bench.c`) connects to host CID 2 port 5001 in ring 0, then its ring-3 loop
//! sends `n` RW packets of 4 KiB within petrel's credit. petrel's hybrid vsock bridges the
//! connection to the Unix socket `<socket>_5001`, where the harness reads and discards
//! everything, counting bytes.
//!
//! Timed like the device workloads (`device.rs`): between the arrival of the guest's
//! `BENCH: begin` and `BENCH: end n=… bytes=…` lines on petrel's stdout. A run counts only if
//! the guest sent all `n` packets, the host socket received exactly the `bytes=` the guest
//! reports, and the guest powered off. QEMU has no hybrid (Unix socket) vsock.

use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use super::markers;
use super::{Metric, RunContext, RunRecord, Workload};
use crate::child::{self, Measured};
use crate::peers::{GuestSpec, Vmm, VmmKind};

/// Host port the guest connects to.
const PORT: u32 = 5001;
/// Payload bytes per RW packet.
const BS: u64 = 4096;

const METRICS: &[Metric] = &[
    Metric {
        key: "tx_mbps",
        label: "4 KiB RW packets, guest to host socket",
        unit: "MB/s",
    },
    Metric {
        key: "tx_kpps",
        label: "4 KiB RW packets per second",
        unit: "kpackets/s",
    },
];

/// The vsock throughput workload.
#[derive(Debug)]
pub struct VsockBench {
    /// The PVH test guest image.
    pub kernel: PathBuf,
    /// Fewer packets (`--quick`).
    pub quick: bool,
}

impl VsockBench {
    /// The workload on `kernel` (1 vCPU, 128 MiB).
    pub fn new(kernel: PathBuf, quick: bool) -> VsockBench {
        VsockBench { kernel, quick }
    }

    fn packets(&self) -> u64 {
        if self.quick {
            10_000
        } else {
            50_000
        }
    }

    fn guest(&self) -> GuestSpec {
        GuestSpec {
            kernel: self.kernel.clone(),
            cpus: 1,
            memory_mib: 128,
            cmdline: format!("action=bench-vsock bs={BS} n={}", self.packets()),
        }
    }

    fn vsock_args(socket: &Path) -> Vec<String> {
        vec![
            "--virtio-mmio-cmdline".into(),
            "--vsock".into(),
            format!("cid=3,socket={}", socket.display()),
        ]
    }

    /// Boots once; the loop's duration and the packets sent.
    fn run_boot(&self, vmm: &Vmm, ctx: &RunContext, log: &Path) -> Result<(Duration, u64), String> {
        // Unix socket paths are limited to 107 bytes: a short directory, not the scratch one.
        let dir = std::env::temp_dir().join(format!("pbv-{}", std::process::id()));
        fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let socket = dir.join("v.sock");
        let listen = dir.join(format!("v.sock_{PORT}"));
        let _ = fs::remove_file(&listen);
        let listener =
            UnixListener::bind(&listen).map_err(|e| format!("{}: {e}", listen.display()))?;
        let stop = Arc::new(AtomicBool::new(false));
        let sink = {
            let stop = stop.clone();
            let timeout = ctx.timeout;
            thread::spawn(move || drain(listener, &stop, timeout))
        };
        let r = self.boot(vmm, ctx, log, &socket);
        stop.store(true, Ordering::Relaxed);
        let received = sink
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the host reader panicked")));
        let _ = fs::remove_file(&listen);
        let _ = fs::remove_dir(&dir);
        let (m, r) = r?;
        let r = r.and_then(|(d, n, bytes)| {
            let got = received.map_err(|e| format!("host socket: {e}"))?;
            if got != bytes {
                return Err(format!(
                    "the host received {got} of the {bytes} bytes the guest sent"
                ));
            }
            Ok((d, n))
        });
        if r.is_err() {
            let _ = fs::write(log.with_extension("serial"), &m.stdout);
        }
        r
    }

    /// Runs petrel; its output and what it yields.
    #[allow(clippy::type_complexity)]
    fn boot(
        &self,
        vmm: &Vmm,
        ctx: &RunContext,
        log: &Path,
        socket: &Path,
    ) -> Result<(Measured, Result<(Duration, u64, u64), String>), String> {
        let mut cmd = vmm
            .command(&self.guest(), &ctx.scratch)
            .map_err(|e| format!("cannot run {}: {e}", vmm.name()))?;
        cmd.args(Self::vsock_args(socket));
        let stderr = File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
        cmd.stderr(stderr);
        let m = child::run_measured(cmd, ctx.timeout)
            .map_err(|e| format!("cannot run {}: {e}", vmm.name()))?;
        let r = evaluate(&m, self.packets());
        Ok((m, r))
    }
}

/// Accepts one connection and reads it to its end; the bytes read. Gives up on accepting
/// once `stop` is set (petrel has exited).
fn drain(listener: UnixListener, stop: &AtomicBool, timeout: Duration) -> io::Result<u64> {
    listener.set_nonblocking(true)?;
    let mut stream = loop {
        match listener.accept() {
            Ok((s, _)) => break s,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if stop.load(Ordering::Relaxed) {
                    return Err(io::Error::other("the guest never connected"));
                }
                thread::sleep(Duration::from_millis(1));
            }
            Err(e) => return Err(e),
        }
    };
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(timeout))?;
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => total += n as u64,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// The loop's duration, packets and bytes from one boot's output, or why it does not count.
fn evaluate(m: &Measured, want: u64) -> Result<(Duration, u64, u64), String> {
    let run = markers::read(m, &[b"VIRTIO: error"])?;
    if run.n != want {
        return Err(format!("guest sent {} of {want} packets", run.n));
    }
    let bytes = markers::find(run.rest, b"bytes=")
        .map(|i| markers::number(&run.rest[i + 6..]))
        .ok_or("no bytes= in `BENCH: end`")?;
    Ok((run.duration(m)?, run.n, bytes))
}

impl Workload for VsockBench {
    fn name(&self) -> &'static str {
        "vsock"
    }

    fn description(&self) -> &'static str {
        "virtio-vsock guest to host through the test guest's ring-3 loop: 4 KiB RW packets within petrel's credit, bridged to a Unix socket the harness drains and counts (hybrid vsock: petrel only)"
    }

    fn metrics(&self) -> &'static [Metric] {
        METRICS
    }

    fn parameters(&self) -> serde_json::Value {
        serde_json::json!({
            "kernel": self.kernel,
            "boot": "PVH",
            "cpus": 1,
            "memory_mib": 128,
            "guest_cmdline": self.guest().cmdline,
            "host_port": PORT,
            "timing": "host wall clock between the guest's BENCH: begin and BENCH: end lines",
        })
    }

    fn supports(&self, kind: VmmKind) -> bool {
        kind == VmmKind::Petrel
    }

    fn command_line(&self, vmm: &Vmm, scratch: &Path) -> Option<Vec<String>> {
        let mut line = vmm.command_line(&self.guest(), scratch).ok()?;
        line.extend(Self::vsock_args(Path::new("<tmp>/v.sock")));
        Some(line)
    }

    fn run_once(&self, vmm: &Vmm, ctx: &RunContext) -> RunRecord {
        let round = ctx.round;
        let logs = ctx.scratch.join("logs");
        if let Err(e) = fs::create_dir_all(&logs) {
            return RunRecord::failed(round, format!("{}: {e}", logs.display()));
        }
        let log = logs.join(format!("vsock-{}-{round}.log", vmm.name()));
        match self.run_boot(vmm, ctx, &log) {
            Ok((d, n)) => {
                let _ = fs::remove_file(&log);
                let secs = d.as_secs_f64();
                let mut values = std::collections::BTreeMap::new();
                values.insert("tx_mbps", Some(n as f64 * BS as f64 / secs / 1e6));
                values.insert("tx_kpps", Some(n as f64 / secs / 1e3));
                RunRecord {
                    round,
                    ok: true,
                    exit: Some("exit 0".into()),
                    error: None,
                    values,
                    log: None,
                }
            }
            Err(e) => RunRecord {
                round,
                ok: false,
                exit: None,
                error: Some(format!("bench-vsock: {e}")),
                values: Default::default(),
                log: Some(log),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evaluate_reads_the_end_line() {
        let out = "BENCH: begin\nBENCH: end n=7 bytes=28672 cycles=9\nPETREL-GUEST: poweroff\n";
        let chunks = (1..=out.len())
            .map(|i| (Duration::from_millis(i as u64), i))
            .collect();
        let m = Measured {
            first_byte: Some(Duration::from_millis(1)),
            exit: Duration::from_secs(1),
            status: child::Exit::Code(0),
            max_rss_kib: 1,
            stdout: out.as_bytes().to_vec(),
            chunks,
            timed_out: false,
            interrupted: false,
        };
        let (d, n, bytes) = evaluate(&m, 7).unwrap();
        assert_eq!((d, n, bytes), (Duration::from_millis(1), 7, 28672));
        assert!(evaluate(&m, 8).unwrap_err().contains("7 of 8"));
    }
}
