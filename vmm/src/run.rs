//! A VM's whole life in this process: checks, hypervisor choice, boots and reboots, and how
//! it ends.

use std::fs::File;

use api::{SerialMode, VmConfig};
use hypervisor::Request;

use crate::devices::clone_eventfd;
use std::sync::Arc;

use crate::event_loop::{Controller, EventLoop, LoopInputs, Outcome};
use crate::signals::SignalFd;
use crate::vcpu::VcpuShared;
use crate::{vcpu, vm, Error, Result};

/// Process-level options besides the VM config.
#[derive(Debug, Clone)]
pub struct Options {
    /// The VM.
    pub config: VmConfig,
    /// `--hypervisor`.
    pub hypervisor: Request,
    /// Whether the `mshv` feature gate is on.
    pub mshv_gate: bool,
    /// Exit instead of rebooting when the guest resets.
    pub no_reboot: bool,
}

/// Total host RAM in bytes, from /proc/meminfo.
pub fn host_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn check_readable(path: &std::path::Path, what: &str) -> Result<()> {
    let f = File::open(path).map_err(|e| Error::io(format!("{what} {}", path.display()), e))?;
    let meta = f
        .metadata()
        .map_err(|e| Error::io(format!("{what} {}", path.display()), e))?;
    if meta.is_dir() {
        return Err(Error::io(
            format!("{what} {}", path.display()),
            std::io::Error::other("is a directory"),
        ));
    }
    Ok(())
}

/// Checks the config against this host before anything is created.
fn preflight(cfg: &VmConfig) -> Result<()> {
    cfg.validate()?;
    check_readable(&cfg.payload.kernel, "kernel")?;
    if let Some(initramfs) = &cfg.payload.initramfs {
        check_readable(initramfs, "initramfs")?;
    }
    if let Some(host) = host_memory() {
        if cfg.memory.size > host {
            return Err(api::ConfigError::new(
                "memory.size",
                format!(
                    "{} MiB is more than the host's {} MiB",
                    cfg.memory.size >> 20,
                    host >> 20
                ),
            )
            .into());
        }
    }
    Ok(())
}

/// Runs the VM until it powers off (Ok), or fails.
pub fn run(opts: &Options) -> Result<()> {
    let cfg = &opts.config;
    preflight(cfg)?;
    let signals = SignalFd::new(&[libc::SIGTERM, libc::SIGINT])
        .map_err(|e| Error::io("setting up signal handling", e))?;
    let (hv, selection) = hypervisor::open(opts.hypervisor, opts.mshv_gate)?;
    log::info!("hypervisor: {} ({})", selection.kind, selection.reason);
    let max = hv.max_vcpus();
    if cfg.cpus.boot_vcpus > max {
        return Err(api::ConfigError::new(
            "cpus.boot_vcpus",
            format!(
                "{} is more than {} allows ({max})",
                cfg.cpus.boot_vcpus, selection.kind
            ),
        )
        .into());
    }
    let machine = vm::Machine::new(cfg, crate::logger::start_time())?;
    let devices = &machine.legacy;
    let shared =
        Arc::new(VcpuShared::new().map_err(|e| Error::io("creating the vCPU event eventfd", e))?);
    let stdin = match cfg.serial.mode {
        SerialMode::Tty => Some((
            devices.serial.clone(),
            clone_eventfd(&devices.serial_drained, "serial input")?,
        )),
        _ => None,
    };
    let controller = Controller::new(
        LoopInputs {
            exit_evt: clone_eventfd(&devices.exit_evt, "poweroff")?,
            reset_evt: clone_eventfd(&devices.reset_evt, "reset")?,
            signals,
            stdin,
        },
        shared.clone(),
    );
    let mut event_loop = EventLoop::new(controller, machine.virtio.subscribers())?;
    let mut boots = 0u32;
    loop {
        boots += 1;
        devices.clear_events();
        shared.reset_for_boot();
        let running = vm::boot(cfg, hv.as_ref(), &machine, shared.clone())?;
        log::info!(
            "guest started (boot {boots}, {} vCPUs, {} MiB)",
            cfg.cpus.boot_vcpus,
            cfg.memory.size >> 20
        );
        let outcome = event_loop.run_boot();
        vcpu::stop_all(running.threads, &shared);
        log::debug!("vCPUs stopped");
        drop(running.vm);
        log::debug!("VM closed");
        match outcome? {
            Outcome::PowerOff => {
                log::info!("exiting: guest powered off");
                return Ok(());
            }
            Outcome::Reset if opts.no_reboot => {
                log::info!("exiting: guest reset and --no-reboot was given");
                return Ok(());
            }
            Outcome::Reset => {
                log::info!("rebooting the guest");
                machine.virtio.reset_all();
            }
            Outcome::Signal(sig) => {
                log::info!("exiting: stopped by signal {sig}");
                return Ok(());
            }
            Outcome::Failed(msg) => return Err(Error::Guest(msg)),
        }
    }
}
