//! A VM's whole life in this process: checks, hypervisor choice, boots and reboots, and how
//! it ends.

use std::fs::File;

use api::{SerialMode, VmConfig};
use hypervisor::Request;

use std::sync::mpsc::Receiver;
use std::sync::Arc;

use api::http::{Exchange, Forwarder, Server, ServerConfig, SocketSpec};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::api_server;
use crate::devices::{clone_eventfd, LifecycleEvents};
use crate::event_loop::{Controller, EventLoop, LoopInputs};
use crate::landlock;
use crate::seccomp::{self, SeccompMode, ThreadKind};
use crate::signals::SignalFd;
use crate::vcpu::VcpuShared;
use crate::vmm::{Next, Vmm};
use crate::{Error, Result};

/// Process-level options besides the VM config.
#[derive(Debug, Clone)]
pub struct Options {
    /// The VM to create and boot at start, if any.
    pub config: Option<VmConfig>,
    /// `--hypervisor`.
    pub hypervisor: Request,
    /// Whether the `mshv` feature gate is on.
    pub mshv_gate: bool,
    /// Exit instead of rebooting when the guest resets.
    pub no_reboot: bool,
    /// `--api-socket`: serve the per-VM API there.
    pub api_socket: Option<SocketSpec>,
    /// Serial mode for stdin forwarding when there is no config yet.
    pub serial_mode: SerialMode,
    /// `--log-level`.
    pub log_level: Option<log::LevelFilter>,
    /// `--log-file`.
    pub log_file: Option<std::path::PathBuf>,
    /// `--id`: the VM's name in every log line.
    pub id: Option<String>,
    /// `--seccomp`.
    pub seccomp: SeccompMode,
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
pub fn preflight(cfg: &VmConfig) -> Result<()> {
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

/// Runs the VMM: boots the VM given on the command line, serves the API if asked, and
/// returns the process exit status when it is time to end.
pub fn run(opts: &Options) -> Result<i32> {
    crate::logger::configure(opts.log_level, opts.log_file.as_deref(), opts.id.as_deref())
        .map_err(|e| Error::io("opening the log file", e))?;
    if let Some(cfg) = &opts.config {
        preflight(cfg)?;
    }
    let signals = SignalFd::new(&[libc::SIGTERM, libc::SIGINT])
        .map_err(|e| Error::io("setting up signal handling", e))?;
    let (hv, selection) = hypervisor::open(opts.hypervisor, opts.mshv_gate)?;
    log::info!("hypervisor: {} ({})", selection.kind, selection.reason);
    let seccomp_mode = opts.seccomp;
    let backend = selection.kind;
    let events = LifecycleEvents::new()?;
    let shared = Arc::new(
        VcpuShared::new((seccomp_mode, backend))
            .map_err(|e| Error::io("creating the vCPU event eventfd", e))?,
    );
    let serial_mode = opts
        .config
        .as_ref()
        .map_or(opts.serial_mode, |c| c.serial.mode);
    let (api_evt, api_rx, _server) = match &opts.api_socket {
        Some(spec) => {
            let (evt, rx, server) = start_api(spec, seccomp_mode, backend)?;
            (Some(evt), Some(rx), Some(server))
        }
        None => (None, None, None),
    };
    let controller = Controller::new(
        LoopInputs {
            exit_evt: clone_eventfd(&events.exit_evt, "poweroff")?,
            reset_evt: clone_eventfd(&events.reset_evt, "reset")?,
            signals,
            stdin: match serial_mode {
                SerialMode::Tty => Some(clone_eventfd(&events.serial_drained, "serial input")?),
                _ => None,
            },
            api_evt,
        },
        shared.clone(),
    );
    let mut event_loop = EventLoop::new(controller)?;
    if seccomp_mode == SeccompMode::Enforce && opts.api_socket.is_none() {
        if let Some(cfg) = &opts.config {
            restrict_files(cfg)?;
        }
    }
    seccomp::apply(ThreadKind::Vmm, seccomp_mode, backend)
        .map_err(|e| Error::Device(e.to_string()))?;
    seccomp::selftest_if_requested(ThreadKind::Vmm);
    let mut vmm = Vmm::new(
        hv,
        selection,
        shared,
        events,
        opts.no_reboot,
        opts.api_socket.is_none(),
    );
    if let Some(cfg) = &opts.config {
        vmm.create(cfg.clone())
            .map_err(|e| Error::Guest(e.message))?;
        vmm.boot(&mut event_loop)
            .map_err(|e| Error::Guest(e.message))?;
    }
    loop {
        let turn = event_loop.run_turn()?;
        if let Some(outcome) = turn.outcome {
            if let Next::Exit(code) = vmm.on_outcome(outcome, &mut event_loop)? {
                return Ok(code);
            }
        }
        if turn.api {
            while let Some(exchange) = api_rx.as_ref().and_then(|rx| rx.try_recv().ok()) {
                let (request, responder) = exchange.into_parts();
                let (response, next) = api_server::handle(&mut vmm, &mut event_loop, request);
                responder.reply(response);
                if let Next::Exit(code) = next {
                    return Ok(code);
                }
            }
        }
    }
}

/// Limits the files the main thread may open to what `cfg` needs (see [`landlock`]); every
/// path is known because no API socket can name others later.
fn restrict_files(cfg: &VmConfig) -> Result<()> {
    let rules = landlock::rules(cfg);
    match landlock::restrict(&rules) {
        Ok(true) => log::debug!("landlock: main thread limited to {} paths", rules.len()),
        Ok(false) => log::warn!("landlock: not in this kernel; file access is not narrowed"),
        Err(e) => return Err(Error::Device(crate::error_chain(&e))),
    }
    Ok(())
}

/// How long the API thread waits for the event loop to answer a request.
const API_REPLY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// Starts the API server thread; requests come back over the returned channel, announced
/// by writes to the returned eventfd.
fn start_api(
    spec: &SocketSpec,
    seccomp_mode: SeccompMode,
    backend: seccomp::Backend,
) -> Result<(EventFd, Receiver<Exchange>, Server)> {
    let evt = EventFd::new(EFD_NONBLOCK).map_err(|e| Error::io("creating the API eventfd", e))?;
    let notify = clone_eventfd(&evt, "API")?;
    let (forwarder, rx) = Forwarder::new(move || {
        if let Err(e) = notify.write(1) {
            log::error!("api: cannot wake the event loop: {e}");
        }
    });
    // A stuck VMM answers 504 rather than leaving the API thread waiting forever.
    let forwarder = forwarder.with_timeout(API_REPLY_TIMEOUT);
    // A socket petrel binds by path is removed again when the server stops; an inherited one
    // belongs to whoever passed it.
    // Fails closed: without its filter the API thread serves nothing and petrel stops.
    let init = move || {
        seccomp::apply(ThreadKind::Api, seccomp_mode, backend).map_err(std::io::Error::other)?;
        seccomp::selftest_if_requested(ThreadKind::Api);
        Ok(())
    };
    let server = match spec {
        SocketSpec::Path(path) => {
            Server::bind_with_init(path, ServerConfig::default(), forwarder, init)
        }
        SocketSpec::Fd(_) => spec.listen().and_then(|listener| {
            Server::start_with_init(listener, ServerConfig::default(), forwarder, init)
        }),
    }
    .map_err(|e| Error::Guest(format!("api socket: {}", crate::error_chain(&e))))?;
    log::info!("api: listening on {spec:?}");
    Ok((evt, rx, server))
}
