//! A VM's whole life in this process: checks, hypervisor choice, boots and reboots, and how
//! it ends.

use api::{SerialMode, VmConfig};
use hypervisor::Request;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::mpsc::Receiver;
use std::sync::Arc;

use petrel_http::{Dialect, Exchange, Forwarder, Server, ServerConfig, SocketSpec};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::api_server;
use crate::event_loop::{Controller, EventLoop, LoopInputs};
use crate::fc_api::FcApi;
use crate::landlock;
use crate::legacy::{clone_eventfd, LifecycleEvents};
use crate::lifecycle::{Next, Vmm};
use crate::seccomp::{self, SeccompMode, ThreadKind};
use crate::serial_input::SerialInput;
use crate::signals::SignalFd;
use crate::vcpu::VcpuShared;
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
    /// `--restore`: the snapshot to restore at start (the VM stays Paused until `vm.resume`).
    pub restore: Option<api::compat::VmRestore>,
    /// Launched in Firecracker's dialect (its command line and API).
    pub firecracker: Option<crate::fc_api::cli::FcLaunch>,
    /// `--landlock` (Cloud Hypervisor's flag): with an API socket, limit the files of the
    /// main thread to the VM's own at its first boot (see [`landlock::Deferred`]). Off by
    /// default under an API, as in Cloud Hypervisor, since snapshot destinations and
    /// migration files named later would be refused; a VM given whole on the command line is
    /// always limited.
    pub landlock: bool,
}

/// Runs the VMM: boots the VM given on the command line, serves the API if asked, and
/// returns the process exit status when it is time to end.
pub fn run(opts: &Options) -> Result<i32> {
    crate::logger::configure(opts.log_level, opts.log_file.as_deref(), opts.id.as_deref())
        .map_err(|e| Error::io("opening the log file", e))?;
    if let Some(cfg) = &opts.config {
        crate::preflight::check(cfg)?;
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
    let dialect = match opts.firecracker {
        Some(_) => Dialect::Firecracker,
        None => Dialect::CloudHypervisor,
    };
    let (api_evt, api_rx, _server) = match &opts.api_socket {
        Some(spec) => {
            let (evt, rx, server) = start_api(spec, seccomp_mode, backend, dialect)?;
            (Some(evt), Some(rx), Some(server))
        }
        None => (None, None, None),
    };
    // Firecracker's periodic metrics: a timer thread wakes the loop as the API does.
    let api_evt = match (&opts.firecracker, api_evt) {
        (Some(_), evt) => Some(crate::fc_api::metrics::start_ticker(
            evt,
            crate::fc_api::metrics::PERIOD,
        )?),
        (None, evt) => evt,
    };
    let controller = Controller::new(
        LoopInputs {
            exit_evt: clone_eventfd(&events.exit_evt, "poweroff")?,
            reset_evt: clone_eventfd(&events.reset_evt, "reset")?,
            signals,
            api_evt,
        },
        shared.clone(),
    );
    let serial_input = match serial_mode {
        SerialMode::Tty => Some(SerialInput::stdin(clone_eventfd(
            &events.serial_drained,
            "serial input",
        )?)),
        _ => None,
    };
    let mut event_loop = EventLoop::new(controller, serial_input)?;
    if seccomp_mode == SeccompMode::Enforce && opts.api_socket.is_none() {
        let log = opts.log_file.as_deref();
        if let Some(cfg) = &opts.config {
            restrict_files(&landlock::rules(cfg, log))?;
        } else if let Some(rules) = opts
            .firecracker
            .as_ref()
            .and_then(|l| crate::fc_api::cli::landlock_rules(l, log))
        {
            restrict_files(&rules)?;
        }
    }
    seccomp::apply(ThreadKind::Vmm, seccomp_mode, backend)?;
    seccomp::selftest_if_requested(ThreadKind::Vmm);
    let mut vmm = Vmm::new(
        hv,
        selection,
        shared,
        events,
        opts.no_reboot,
        // Firecracker's process ends with its guest, API or not.
        opts.api_socket.is_none() || opts.firecracker.is_some(),
    );
    if seccomp_mode == SeccompMode::Enforce && opts.landlock {
        if let Some(spec) = &opts.api_socket {
            let socket = match spec {
                SocketSpec::Path(p) => Some(p.as_path()),
                SocketSpec::Fd(_) => None,
            };
            vmm.set_landlock(landlock::Deferred::new(socket, opts.log_file.as_deref()));
        }
    }
    if let Some(cfg) = &opts.config {
        vmm.create(cfg.clone())?;
        vmm.boot(&mut event_loop)?;
    }
    if let Some(r) = &opts.restore {
        vmm.restore(r, Vec::new(), &mut event_loop)?;
        if r.resume {
            vmm.resume()?;
        }
    }
    let mut fc = opts.firecracker.as_ref().map(|l| FcApi::new(&l.id));
    if let (Some(fc), Some(launch)) = (fc.as_mut(), &opts.firecracker) {
        crate::fc_api::cli::start(fc, launch, &mut vmm, &mut event_loop)
            .map_err(|e| Error::Refused(crate::lifecycle::OpError::invalid(e)))?;
    }
    let code = (|| loop {
        let turn = event_loop.run_turn()?;
        if let Some(outcome) = turn.outcome {
            if let Next::Exit(code) = vmm.on_outcome(outcome, &mut event_loop)? {
                return Ok(code);
            }
        }
        if turn.api {
            if let Some(fc) = fc.as_mut() {
                fc.tick(&vmm);
            }
            while let Some(exchange) = api_rx.as_ref().and_then(|rx| rx.try_recv().ok()) {
                let (request, responder) = exchange.into_parts();
                let (response, next) = match fc.as_mut() {
                    Some(fc) => fc.handle(&mut vmm, &mut event_loop, request),
                    None => api_server::handle(&mut vmm, &mut event_loop, request),
                };
                responder.reply(response);
                if let Next::Exit(code) = next {
                    return Ok(code);
                }
            }
        }
    })();
    // Requests still queued (a client that asked while the last one ran) are dropped first,
    // so their callers get 503 at once: the API server, stopped next, waits for its thread,
    // which would otherwise wait out the reply timeout (60 s) before petrel could exit.
    drop(api_rx);
    code
}

/// Limits the files the main thread may open to `rules` (see [`landlock`]); every path is
/// known because no API socket can name others later.
fn restrict_files(rules: &[landlock::Rule]) -> Result<()> {
    match landlock::restrict(rules) {
        Ok(true) => log::debug!("landlock: main thread limited to {} paths", rules.len()),
        Ok(false) => log::warn!("landlock: not in this kernel; file access is not narrowed"),
        Err(e) => return Err(e.into()),
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
    dialect: Dialect,
) -> Result<(EventFd, Receiver<Exchange>, Server)> {
    let evt = EventFd::new(EFD_NONBLOCK).map_err(|e| Error::io("creating the API eventfd", e))?;
    let notify = clone_eventfd(&evt, "API")?;
    let (forwarder, rx) = Forwarder::new(move || {
        if let Err(e) = notify.write(1) {
            log::error!("api: cannot wake the event loop: {e}");
        }
    });
    // A stuck VMM answers 504 rather than leaving the API thread waiting forever.
    let forwarder = forwarder
        .with_timeout(API_REPLY_TIMEOUT)
        .with_dialect(dialect);
    // The dialect's wire form (Cloud Hypervisor's or Firecracker's), so that its clients
    // (ch-remote, Kata, the Firecracker SDKs) read every answer.
    let config = ServerConfig {
        dialect,
        ..ServerConfig::default()
    };
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
            check_socket_dir(path)?;
            // Created 0600 whatever the umask (the file never exists with a wider mode), and
            // set again after bind in case the umask was changed by someone else meanwhile.
            let old = set_umask(0o177);
            let server = Server::bind_with_init(path, config, forwarder, init);
            set_umask(old);
            let server = server.map_err(Error::ApiSocket)?;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                .map_err(|e| Error::io(format!("chmod 0600 {}", path.display()), e))?;
            Ok(server)
        }
        SocketSpec::Fd(_) => spec
            .listen()
            .and_then(|listener| Server::start_with_init(listener, config, forwarder, init))
            .map_err(Error::ApiSocket),
    }?;
    log::info!("api: listening on {spec:?}");
    Ok((evt, rx, server))
}

/// Sets the process umask, returning the previous one.
fn set_umask(mask: libc::mode_t) -> libc::mode_t {
    // SAFETY: umask only swaps the process's file creation mask; it cannot fail.
    unsafe { libc::umask(mask) }
}

/// Refuses to put the API socket in a directory anyone may write to without the sticky bit:
/// there another user could replace the socket file with their own between our bind and the
/// client's connect. (`/tmp`, world-writable but sticky, is fine.)
fn check_socket_dir(path: &Path) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let meta = std::fs::metadata(dir)
        .map_err(|e| Error::io(format!("api socket directory {}", dir.display()), e))?;
    let mode = meta.mode();
    if mode & 0o002 != 0 && mode & 0o1000 == 0 {
        return Err(Error::io(
            format!("api socket directory {}", dir.display()),
            std::io::Error::other(format!(
                "is world-writable (mode {:04o}) without the sticky bit: anyone could replace the socket; use a private directory",
                mode & 0o7777
            )),
        ));
    }
    Ok(())
}
