//! `petrel-bench`: measures petrel side by side with QEMU, Firecracker and Cloud Hypervisor
//! on the same test guest, interleaving the runs, and writes JSON, Markdown and SVG charts.
//!
//! Modules: [`cli`] options, [`peers`] the VMMs and their command lines, [`workload`] what a
//! run measures, [`runner`] interleaving, [`child`] process measurement, [`live`] processes
//! the harness works with while they run, [`http`] a client for API sockets, [`interrupt`]
//! clean-up on signals, [`stats`], [`report`], [`svg`] and [`host`].

mod child;
mod cli;
mod host;
mod http;
mod interrupt;
mod live;
mod peers;
mod report;
mod runner;
mod stats;
mod svg;
mod workload;

use std::error::Error;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use peers::{Vmm, VmmKind};
use report::{Config, Document, VmmInfo, WorkloadReport, SCHEMA};
use runner::Plan;
use workload::{ApiReady, CreateRate, Device, DeviceBench, ExitCost, GuestLife, Memory, Workload};

/// VMs started together by the `create-rate` workload.
const CREATE_RATE_VMS: usize = 10;

/// Exit status after a stop signal (128 + SIGINT).
const EXIT_INTERRUPTED: u8 = 130;

/// The workspace root (parent of this crate).
fn workspace_dir() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

fn vmm(kind: VmmKind, path: &Path) -> Result<Vmm, String> {
    if !path.is_file() {
        return Err(format!(
            "{}: {} does not exist",
            kind.name(),
            path.display()
        ));
    }
    Ok(Vmm::new(kind, path.to_path_buf()))
}

fn vmms(o: &cli::Options) -> Result<Vec<Vmm>, String> {
    let petrel = o
        .petrel
        .clone()
        .unwrap_or_else(|| workspace_dir().join("target/release/petrel"));
    if !petrel.is_file() {
        return Err(format!(
            "petrel binary {} not found (build it: cargo build --release -p vmm, or pass --petrel)",
            petrel.display()
        ));
    }
    let mut list = vec![Vmm::new(VmmKind::Petrel, petrel.clone())];
    if o.petrel_pci {
        list.push(
            Vmm::new(VmmKind::Petrel, petrel.clone())
                .labelled("petrel-mmio")
                .with_extra(&["--rng"]),
        );
        list.push(
            Vmm::new(VmmKind::Petrel, petrel)
                .labelled("petrel-pci")
                .with_extra(&["--transport", "pci", "--rng"]),
        );
    }
    if let Some(path) = &o.petrel_baseline {
        list.push(vmm(VmmKind::Petrel, path)?.labelled("petrel-baseline"));
    }
    let peers = [
        (VmmKind::Qemu, &o.qemu),
        (VmmKind::Firecracker, &o.firecracker),
        (VmmKind::CloudHypervisor, &o.cloud_hypervisor),
    ];
    for (kind, path) in peers {
        if let Some(path) = path {
            let mut v = vmm(kind, path)?;
            if let (VmmKind::Qemu, Some(cpu)) = (kind, &o.qemu_cpu) {
                v.qemu_cpu = cpu.clone();
            }
            list.push(v);
        }
    }
    Ok(list)
}

/// The `petreld` binary: `$PETRELD_BIN`, else next to `petrel`.
fn petreld_bin(petrel: &Path) -> Result<PathBuf, String> {
    let bin = std::env::var_os("PETRELD_BIN")
        .filter(|p| !p.is_empty())
        .map_or_else(|| petrel.with_file_name("petreld"), PathBuf::from);
    if bin.is_file() {
        Ok(bin)
    } else {
        Err(format!(
            "{} not found (cargo build --release -p petreld, or set PETRELD_BIN)",
            bin.display()
        ))
    }
}

fn run(o: &cli::Options) -> Result<ExitCode, Box<dyn Error>> {
    interrupt::install()?;
    let started = host::now_secs();
    let vmms = vmms(o)?;
    let guest = match &o.guest {
        Some(g) => g.clone(),
        None => petrel_tests::build_guest(petrel_tests::GuestKind::Pvh)
            .map_err(|e| format!("cannot build the PVH test guest: {e}"))?,
    };
    let out = o.out.clone().unwrap_or_else(|| {
        workspace_dir()
            .join("results")
            .join(host::compact_utc(started))
    });
    std::fs::create_dir_all(&out)?;
    let plan = Plan {
        runs: o.runs,
        warmup: o.warmup,
        timeout: o.timeout,
        scratch: out.clone(),
    };
    let mut workloads: Vec<Box<dyn Workload>> = vec![
        Box::new(GuestLife::new(guest.clone())),
        Box::new(Memory::new(guest.clone())),
        Box::new(ExitCost::new(guest.clone(), o.quick)),
        Box::new(ApiReady::new(guest.clone(), o.quick)),
        Box::new(workload::fc_start::FcStart::new(guest.clone())),
        Box::new(CreateRate::new(guest.clone(), CREATE_RATE_VMS)),
        Box::new(DeviceBench::new(guest.clone(), Device::Blk, o.quick)),
        Box::new(DeviceBench::new(guest.clone(), Device::BlkQcow2, o.quick)),
        Box::new(DeviceBench::new(guest.clone(), Device::Rng, o.quick)),
        Box::new(workload::vsock::VsockBench::new(guest.clone(), o.quick)),
        Box::new(workload::snapshot::SnapshotBench::new(guest.clone())),
    ];
    // create-rate through petreld: found next to petrel or at $PETRELD_BIN.
    if o.wants("create-rate-petreld") {
        match petreld_bin(&vmms[0].path) {
            Ok(bin) => workloads.push(Box::new(CreateRate::petreld(
                guest.clone(),
                CREATE_RATE_VMS,
                bin,
            ))),
            Err(e) => eprintln!("petrel-bench: create-rate-petreld skipped: {e}"),
        }
    }
    workloads.extend(workload::linux_boot::prepare(o, &vmms[0], &guest));
    // The net workload needs a tap, hence CAP_NET_ADMIN: left out (and said so) without.
    if o.wants("net") {
        match workload::tap::tap_available() {
            Ok(()) => workloads.push(Box::new(DeviceBench::new(guest, Device::Net, o.quick))),
            Err(e) => eprintln!("petrel-bench: net workload skipped: cannot create a tap ({e})"),
        }
    }
    // Names were checked against `cli::WORKLOADS` when the options were parsed.
    workloads.retain(|w| o.wants(w.name()));
    debug_assert!(workloads.iter().all(|w| cli::WORKLOADS.contains(&w.name())));
    eprintln!(
        "petrel-bench: {} run(s) x {} VMM(s) [{}], results in {}",
        o.runs,
        vmms.len(),
        vmms.iter().map(Vmm::name).collect::<Vec<_>>().join(", "),
        out.display()
    );
    let mut reports = Vec::new();
    let mut interrupted = false;
    for w in &workloads {
        let vmms: Vec<Vmm> = vmms
            .iter()
            .filter(|v| w.supports(v.kind))
            // The device variants (`--petrel-pci`) boot the same quick guest: only boot time
            // and memory compare them.
            .filter(|v| v.extra.is_empty() || matches!(w.name(), "guest-life" | "memory"))
            .cloned()
            .collect();
        let outcome = runner::run_interleaved(w.as_ref(), &vmms, &plan);
        interrupted |= outcome.interrupted;
        reports.push(WorkloadReport::build(w.as_ref(), &vmms, &outcome, &out));
        if interrupted {
            break;
        }
    }
    let failed: usize = reports
        .iter()
        .flat_map(|w| &w.results)
        .map(|r| r.runs_failed)
        .sum();
    let doc = Document {
        schema: SCHEMA,
        started_utc: host::iso_utc(started),
        finished_utc: host::iso_utc(host::now_secs()),
        command: std::env::args().collect(),
        config: Config {
            runs: o.runs,
            warmup: o.warmup,
            timeout_s: o.timeout.as_secs_f64(),
            quick: o.quick,
        },
        host: host::HostInfo::collect(),
        vmms: vmms
            .iter()
            .map(|v| VmmInfo {
                name: v.name().to_string(),
                path: v.path.clone(),
                version: v.version(),
            })
            .collect(),
        workloads: reports,
        interrupted,
    };
    let md = report::write_all(&doc, &out)?;
    println!("{md}");
    eprintln!("petrel-bench: wrote {}", out.display());
    if interrupted {
        eprintln!("petrel-bench: interrupted");
        return Ok(ExitCode::from(EXIT_INTERRUPTED));
    }
    if failed > 0 {
        eprintln!("petrel-bench: {failed} run(s) failed");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    let o = match cli::parse(std::env::args().skip(1)) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("petrel-bench: {e}");
            return ExitCode::from(2);
        }
    };
    if o.help {
        print!("{}", cli::USAGE);
        return ExitCode::SUCCESS;
    }
    match run(&o) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("petrel-bench: {e}");
            ExitCode::FAILURE
        }
    }
}
