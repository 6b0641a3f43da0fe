//! Device throughput through the test guest's ring-3 request loop (`tests/guests/bench.c`):
//! virtio-blk sequential reads and writes (4 KiB and 64 KiB at queue depth 1, 4 KiB at queue
//! depth 16), virtio-rng requests, and virtio-net TX of 1514-byte frames into a tap that the
//! harness creates (and always deletes) and whose received-frame counter it checks.
//!
//! One run of a workload boots the guest once per case (`action=bench-blk rw=… bs=… qd=…
//! n=…`). The guest prints `BENCH: begin` just before it enters ring 3 and `BENCH: end n=<N>
//! bytes=<B> …` just after; the time between the arrival of the end of the first line and of
//! the start of the second on the VMM's stdout is the loop's duration. Where guest ring 0 is
//! emulated (PVM) the two prints and the ring switches cost well under a millisecond, against
//! loops of a few hundred milliseconds.
//!
//! Only VMMs with virtio-mmio whose windows the guest can be told with `virtio_mmio.device=`
//! run it: petrel (`--virtio-mmio-cmdline`), Firecracker (which appends the tokens itself;
//! its devices are in its configuration file: `drives`, `entropy`, `network-interfaces`) and
//! QEMU `-M microvm` (its first virtio-mmio device sits in the last of its 24 transports).
//! Cloud Hypervisor only has virtio-pci.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use super::markers;
use super::tap::Tap;
use super::{Metric, RunContext, RunRecord, Workload};
use crate::child::{self, Measured};
use crate::peers::{FirecrackerDevices, GuestSpec, Vmm, VmmKind};

/// Size of the scratch disk image (filled with data, so reads come from the page cache
/// rather than from holes).
const DISK_BYTES: usize = 64 << 20;
/// QEMU microvm (ACPI on, 24 transports) puts its first virtio-mmio device in transport 23;
/// the driver does not use the interrupt.
const QEMU_FIRST_MMIO: &str = "virtio_mmio.device=512@0xfeb02e00:28";

/// What one case derives from its loop's duration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Derive {
    /// Decimal megabytes per second.
    MegabytesPerSec,
    /// Microseconds per request.
    MicrosPerRequest,
    /// Thousands of requests per second.
    KiloRequestsPerSec,
}

/// One boot of the guest and the metrics it yields.
#[derive(Debug, Clone, Copy)]
struct Case {
    /// Guest arguments after `action=bench-<dev>`.
    args: &'static str,
    /// Requests in a full run and in `--quick`.
    n: (u64, u64),
    /// Metric key and what it is, for each metric of this case.
    yields: &'static [(&'static str, Derive)],
}

/// Which device a workload drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Device {
    /// virtio-blk on a raw image file.
    Blk,
    /// virtio-blk on a qcow2 image with the same data (every cluster allocated; petrel and
    /// QEMU only).
    BlkQcow2,
    /// virtio-rng.
    Rng,
    /// virtio-net on a tap (needs CAP_NET_ADMIN).
    Net,
}

const BLK_METRICS: &[Metric] = &[
    metric("read_4k_mbps", "4 KiB seq. read, QD1", "MB/s"),
    metric("read_4k_us", "4 KiB read latency, QD1", "us"),
    metric("write_4k_mbps", "4 KiB seq. write, QD1", "MB/s"),
    metric("write_4k_us", "4 KiB write latency, QD1", "us"),
    metric("read_64k_mbps", "64 KiB seq. read, QD1", "MB/s"),
    metric("read_64k_us", "64 KiB read latency, QD1", "us"),
    metric("write_64k_mbps", "64 KiB seq. write, QD1", "MB/s"),
    metric("write_64k_us", "64 KiB write latency, QD1", "us"),
    metric("read_4k_qd16_kiops", "4 KiB read IOPS, QD16", "kIOPS"),
    metric("write_4k_qd16_kiops", "4 KiB write IOPS, QD16", "kIOPS"),
];

use Derive::{KiloRequestsPerSec as Kps, MegabytesPerSec as Mbps, MicrosPerRequest as Us};

const BLK_CASES: &[Case] = &[
    Case {
        args: "rw=read bs=4096 qd=1",
        n: (5000, 1000),
        yields: &[("read_4k_mbps", Mbps), ("read_4k_us", Us)],
    },
    Case {
        args: "rw=write bs=4096 qd=1",
        n: (5000, 1000),
        yields: &[("write_4k_mbps", Mbps), ("write_4k_us", Us)],
    },
    Case {
        args: "rw=read bs=65536 qd=1",
        n: (2000, 400),
        yields: &[("read_64k_mbps", Mbps), ("read_64k_us", Us)],
    },
    Case {
        args: "rw=write bs=65536 qd=1",
        n: (2000, 400),
        yields: &[("write_64k_mbps", Mbps), ("write_64k_us", Us)],
    },
    Case {
        args: "rw=read bs=4096 qd=16",
        n: (20000, 4000),
        yields: &[("read_4k_qd16_kiops", Kps)],
    },
    Case {
        args: "rw=write bs=4096 qd=16",
        n: (20000, 4000),
        yields: &[("write_4k_qd16_kiops", Kps)],
    },
];

const RNG_METRICS: &[Metric] = &[
    metric("request_us", "64-byte request", "us"),
    metric("krequests_per_s", "requests per second", "k/s"),
];

const RNG_CASES: &[Case] = &[Case {
    args: "bs=64",
    n: (10000, 2000),
    yields: &[("request_us", Us), ("krequests_per_s", Kps)],
}];

const NET_METRICS: &[Metric] = &[
    metric("tx_kfps", "1514-byte TX frames", "kframes/s"),
    metric("tx_mbps", "TX throughput", "MB/s"),
];

const NET_CASES: &[Case] = &[Case {
    args: "bs=1514",
    n: (50000, 10000),
    yields: &[("tx_kfps", Kps), ("tx_mbps", Mbps)],
}];

const fn metric(key: &'static str, label: &'static str, unit: &'static str) -> Metric {
    Metric { key, label, unit }
}

/// A device benchmark workload.
#[derive(Debug)]
pub struct DeviceBench {
    /// The PVH test guest image.
    pub kernel: PathBuf,
    /// The device driven.
    pub device: Device,
    /// Fewer requests per case (`--quick`).
    pub quick: bool,
    /// Guest memory in MiB.
    pub memory_mib: u32,
    /// The scratch disk, created by the first blk run and removed on drop.
    disk: Mutex<Option<PathBuf>>,
}

impl DeviceBench {
    /// The workload for `device` on `kernel` (1 vCPU, 128 MiB).
    pub fn new(kernel: PathBuf, device: Device, quick: bool) -> DeviceBench {
        DeviceBench {
            kernel,
            device,
            quick,
            memory_mib: 128,
            disk: Mutex::new(None),
        }
    }

    fn cases(&self) -> &'static [Case] {
        match self.device {
            Device::Blk | Device::BlkQcow2 => BLK_CASES,
            Device::Rng => RNG_CASES,
            Device::Net => NET_CASES,
        }
    }

    fn requests(&self, case: &Case) -> u64 {
        if self.quick {
            case.n.1
        } else {
            case.n.0
        }
    }

    fn action(&self) -> &'static str {
        match self.device {
            Device::Blk | Device::BlkQcow2 => "bench-blk",
            Device::Rng => "bench-rng",
            Device::Net => "bench-net",
        }
    }

    fn guest(&self, vmm: &Vmm, case: &Case) -> GuestSpec {
        let mut cmdline = format!(
            "action={} {} n={}",
            self.action(),
            case.args,
            self.requests(case)
        );
        if vmm.kind == VmmKind::Qemu {
            cmdline.push(' ');
            cmdline.push_str(QEMU_FIRST_MMIO);
        }
        GuestSpec {
            kernel: self.kernel.clone(),
            cpus: 1,
            memory_mib: self.memory_mib,
            cmdline,
        }
    }

    /// The VMM's arguments for the device, after its usual ones.
    /// `disk` is the image (blk) or the tap's name (net).
    fn device_args(&self, vmm: &Vmm, disk: &Path) -> Vec<String> {
        let disk = disk.to_string_lossy();
        let v: Vec<String> = match (vmm.kind, self.device) {
            (VmmKind::Petrel, Device::Blk) => {
                vec![
                    "--virtio-mmio-cmdline".into(),
                    "--disk".into(),
                    format!("path={disk},image_type=raw"),
                ]
            }
            (VmmKind::Petrel, Device::BlkQcow2) => {
                vec![
                    "--virtio-mmio-cmdline".into(),
                    "--disk".into(),
                    format!("path={disk},image_type=qcow2"),
                ]
            }
            (VmmKind::Petrel, Device::Rng) => vec!["--virtio-mmio-cmdline".into(), "--rng".into()],
            (VmmKind::Petrel, Device::Net) => {
                vec![
                    "--virtio-mmio-cmdline".into(),
                    "--net".into(),
                    format!("tap={disk}"),
                ]
            }
            (VmmKind::Qemu, dev) => {
                let mut a = vec!["-global".into(), "virtio-mmio.force-legacy=false".into()];
                match dev {
                    Device::Blk | Device::BlkQcow2 => a.extend([
                        "-drive".into(),
                        format!(
                            "if=none,id=d0,file={disk},format={},cache=writeback",
                            if dev == Device::Blk { "raw" } else { "qcow2" }
                        ),
                        "-device".into(),
                        "virtio-blk-device,drive=d0".into(),
                    ]),
                    Device::Rng => a.extend(["-device".into(), "virtio-rng-device".into()]),
                    Device::Net => a.extend([
                        "-netdev".into(),
                        format!("tap,id=n0,ifname={disk},script=no,downscript=no"),
                        "-device".into(),
                        "virtio-net-device,netdev=n0".into(),
                    ]),
                }
                a
            }
            _ => Vec::new(),
        };
        v
    }

    /// Firecracker's device sections for this workload (empty for the other VMMs).
    /// `disk` is the image (blk) or the tap's name (net).
    fn fc_devices(&self, vmm: &Vmm, disk: &Path) -> FirecrackerDevices {
        let mut m = FirecrackerDevices::new();
        if vmm.kind != VmmKind::Firecracker {
            return m;
        }
        let (key, value) = match self.device {
            Device::Blk => (
                "drives",
                serde_json::json!([{
                    "drive_id": "d0",
                    "path_on_host": disk,
                    "is_root_device": false,
                    "is_read_only": false,
                }]),
            ),
            // Not offered to Firecracker (`supports`).
            Device::BlkQcow2 => return m,
            Device::Rng => ("entropy", serde_json::json!({})),
            Device::Net => (
                "network-interfaces",
                serde_json::json!([{"iface_id": "n0", "host_dev_name": disk}]),
            ),
        };
        m.insert(key.to_string(), value);
        m
    }

    /// The scratch disk (created on first use).
    fn disk(&self, scratch: &Path) -> io::Result<PathBuf> {
        let mut slot = self.disk.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = slot.as_ref() {
            return Ok(p.clone());
        }
        fs::create_dir_all(scratch)?;
        let path = scratch.join(format!("bench-disk-{}.img", std::process::id()));
        let mut f = File::create(&path)?;
        let block: Vec<u8> = (0..1 << 20).map(|i| (i * 7 + 1) as u8).collect();
        for _ in 0..DISK_BYTES / block.len() {
            f.write_all(&block)?;
        }
        f.sync_all()?;
        drop(f);
        let path = if self.device == Device::BlkQcow2 {
            let qcow2 = path.with_extension("qcow2");
            let out = std::process::Command::new("qemu-img")
                .args(["convert", "-f", "raw", "-O", "qcow2"])
                .arg(&path)
                .arg(&qcow2)
                .output();
            let _ = fs::remove_file(&path);
            match out {
                Ok(o) if o.status.success() => qcow2,
                Ok(o) => {
                    return Err(io::Error::other(format!(
                        "qemu-img convert: {}",
                        String::from_utf8_lossy(&o.stderr).trim()
                    )))
                }
                Err(e) => return Err(io::Error::other(format!("qemu-img: {e}"))),
            }
        } else {
            path
        };
        *slot = Some(path.clone());
        Ok(path)
    }

    /// Boots once for `case` and returns the loop's duration and the requests completed.
    fn run_case(
        &self,
        vmm: &Vmm,
        case: &Case,
        ctx: &RunContext,
        log: &Path,
    ) -> Result<(Duration, u64), String> {
        let tap = match self.device {
            Device::Net => Some(Tap::create()?),
            _ => None,
        };
        let disk = match (&tap, self.device) {
            (_, Device::Blk | Device::BlkQcow2) => self
                .disk(&ctx.scratch)
                .map_err(|e| format!("scratch disk: {e}"))?,
            (Some(tap), _) => PathBuf::from(&tap.name),
            _ => PathBuf::new(),
        };
        let frames_before = tap.as_ref().map(Tap::rx_packets).transpose()?;
        let fc = self.fc_devices(vmm, &disk);
        let mut cmd = vmm
            .command_with(&self.guest(vmm, case), &ctx.scratch, &fc)
            .map_err(|e| format!("cannot run {}: {e}", vmm.name()))?;
        cmd.args(self.device_args(vmm, &disk));
        let stderr = File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
        cmd.stderr(stderr);
        let m = child::run_measured(cmd, ctx.timeout)
            .map_err(|e| format!("cannot run {}: {e}", vmm.name()))?;
        let mut r = evaluate(&m, self.requests(case));
        if let (Ok((_, n)), Some(tap), Some(before)) = (&r, &tap, frames_before) {
            let seen = tap.rx_packets()?.saturating_sub(before);
            if seen != *n {
                r = Err(format!(
                    "the tap received {seen} of the {n} frames the guest sent"
                ));
            }
        }
        if r.is_err() {
            let _ = fs::write(log.with_extension("serial"), &m.stdout);
        }
        r.map_err(|e| format!("{} ({}): {e}", self.action(), case.args))
    }
}

impl Drop for DeviceBench {
    fn drop(&mut self) {
        if let Some(p) = self.disk.get_mut().ok().and_then(|d| d.take()) {
            let _ = fs::remove_file(p);
        }
    }
}

/// The loop's duration and request count from one boot's output, or why it does not count.
fn evaluate(m: &Measured, want: u64) -> Result<(Duration, u64), String> {
    let run = markers::read(m, &[])?;
    if run.n != want {
        return Err(format!("guest completed {} of {want} requests", run.n));
    }
    Ok((run.duration(m)?, run.n))
}

fn derive(how: Derive, d: Duration, n: u64, bytes_per_request: f64) -> f64 {
    let secs = d.as_secs_f64();
    match how {
        Derive::MegabytesPerSec => n as f64 * bytes_per_request / secs / 1e6,
        Derive::MicrosPerRequest => secs * 1e6 / n as f64,
        Derive::KiloRequestsPerSec => n as f64 / secs / 1e3,
    }
}

/// `bs=` of a case's arguments.
fn block_size(args: &str) -> f64 {
    args.split(' ')
        .find_map(|t| t.strip_prefix("bs="))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

impl Workload for DeviceBench {
    fn name(&self) -> &'static str {
        match self.device {
            Device::Blk => "blk",
            Device::BlkQcow2 => "blk-qcow2",
            Device::Rng => "rng",
            Device::Net => "net",
        }
    }

    fn description(&self) -> &'static str {
        match self.device {
            Device::Blk => "virtio-blk through the test guest's ring-3 loop: sequential 4 KiB and 64 KiB reads and writes at QD1, 4 KiB IOPS at QD16 (64 MiB raw image, host page cache)",
            Device::BlkQcow2 => "blk on a qcow2 image holding the same 64 MiB (qemu-img convert: every cluster allocated, 64 KiB clusters), through imago in petrel",
            Device::Rng => "virtio-rng through the test guest's ring-3 loop: 64-byte requests at QD1",
            Device::Net => "virtio-net TX through the test guest's ring-3 loop: 1514-byte broadcast frames keeping the TX queue full, into a tap that is up (the host counts the frames)",
        }
    }

    fn metrics(&self) -> &'static [Metric] {
        match self.device {
            Device::Blk | Device::BlkQcow2 => BLK_METRICS,
            Device::Rng => RNG_METRICS,
            Device::Net => NET_METRICS,
        }
    }

    fn parameters(&self) -> serde_json::Value {
        let cases: Vec<String> = self
            .cases()
            .iter()
            .map(|c| format!("action={} {} n={}", self.action(), c.args, self.requests(c)))
            .collect();
        serde_json::json!({
            "kernel": self.kernel,
            "boot": "PVH",
            "cpus": 1,
            "memory_mib": self.memory_mib,
            "guest_cmdlines": cases,
            "disk_bytes": matches!(self.device, Device::Blk | Device::BlkQcow2).then_some(DISK_BYTES),
            "timing": "host wall clock between the guest's BENCH: begin and BENCH: end lines",
        })
    }

    fn supports(&self, kind: VmmKind) -> bool {
        match self.device {
            // Firecracker reads raw images only.
            Device::BlkQcow2 => matches!(kind, VmmKind::Petrel | VmmKind::Qemu),
            _ => matches!(kind, VmmKind::Petrel | VmmKind::Qemu | VmmKind::Firecracker),
        }
    }

    fn command_line(&self, vmm: &Vmm, scratch: &Path) -> Option<Vec<String>> {
        let case = self.cases().first()?;
        let disk = match self.device {
            Device::Net => PathBuf::from("TAP"),
            _ => scratch.join("bench-disk.img"),
        };
        let fc = self.fc_devices(vmm, &disk);
        let mut line = vmm
            .command_line_with(&self.guest(vmm, case), scratch, &fc)
            .ok()?;
        line.extend(self.device_args(vmm, &disk));
        Some(line)
    }

    fn run_once(&self, vmm: &Vmm, ctx: &RunContext) -> RunRecord {
        let round = ctx.round;
        let logs = ctx.scratch.join("logs");
        if let Err(e) = fs::create_dir_all(&logs) {
            return RunRecord::failed(round, format!("{}: {e}", logs.display()));
        }
        let mut values = std::collections::BTreeMap::new();
        for (i, case) in self.cases().iter().enumerate() {
            let log = logs.join(format!("{}-{}-{round}-{i}.log", self.name(), vmm.name()));
            match self.run_case(vmm, case, ctx, &log) {
                Ok((d, n)) => {
                    let _ = fs::remove_file(&log);
                    let bs = block_size(case.args);
                    for &(key, how) in case.yields {
                        values.insert(key, Some(derive(how, d, n, bs)));
                    }
                }
                Err(e) => {
                    return RunRecord {
                        round,
                        ok: false,
                        exit: None,
                        error: Some(e),
                        values,
                        log: Some(log),
                    }
                }
            }
        }
        RunRecord {
            round,
            ok: true,
            exit: Some("exit 0".into()),
            error: None,
            values,
            log: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_comes_from_one_case() {
        let all = [
            (BLK_METRICS, BLK_CASES),
            (RNG_METRICS, RNG_CASES),
            (NET_METRICS, NET_CASES),
        ];
        for (metrics, cases) in all {
            for m in metrics {
                let n = cases
                    .iter()
                    .flat_map(|c| c.yields)
                    .filter(|(k, _)| *k == m.key)
                    .count();
                assert_eq!(n, 1, "{}", m.key);
            }
            assert_eq!(
                cases.iter().map(|c| c.yields.len()).sum::<usize>(),
                metrics.len()
            );
        }
    }

    fn measured(out: &str, chunk: usize) -> Measured {
        // One chunk of `chunk` bytes per millisecond.
        let chunks = (1..=out.len().div_ceil(chunk))
            .map(|i| (Duration::from_millis(i as u64), (i * chunk).min(out.len())))
            .collect();
        Measured {
            first_byte: Some(Duration::from_millis(1)),
            exit: Duration::from_secs(1),
            status: child::Exit::Code(0),
            max_rss_kib: 1,
            stdout: out.as_bytes().to_vec(),
            chunks,
            timed_out: false,
            interrupted: false,
        }
    }

    #[test]
    fn evaluate_times_the_markers() {
        let out = "BENCH: begin\nBENCH: end n=7 bytes=28 cycles=9\nPETREL-GUEST: poweroff\n";
        // "BENCH: begin\n" ends at byte 12 (chunk 2 with 10-byte chunks); "BENCH: end" starts
        // at byte 13 (chunk 2 as well): too close to time.
        assert!(evaluate(&measured(out, 10), 7).is_err());
        let (d, n) = evaluate(&measured(out, 1), 7).unwrap();
        assert_eq!((d, n), (Duration::from_millis(1), 7));
        let e = evaluate(&measured(out, 1), 8).unwrap_err();
        assert!(e.contains("7 of 8"), "{e}");
        let e = evaluate(&measured("BENCH: error no virtio-blk device\nx", 4), 1).unwrap_err();
        assert_eq!(e, "BENCH: error no virtio-blk device");
        let mut m = measured(out, 1);
        m.status = child::Exit::Signal(9);
        assert!(evaluate(&m, 7).unwrap_err().contains("signal 9"));
    }

    #[test]
    fn derived_values() {
        let d = Duration::from_millis(500);
        assert!((derive(Derive::MegabytesPerSec, d, 1000, 4096.0) - 8.192).abs() < 1e-9);
        assert!((derive(Derive::MicrosPerRequest, d, 1000, 0.0) - 500.0).abs() < 1e-9);
        assert!((derive(Derive::KiloRequestsPerSec, d, 1000, 0.0) - 2.0).abs() < 1e-9);
        assert_eq!(block_size("rw=read bs=65536 qd=1"), 65536.0);
    }
}
