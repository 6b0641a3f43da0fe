//! The per-VM control API: Cloud Hypervisor's HTTP routes (`/api/v1/…`, the table in
//! [`api::request::ROUTES`]) in front of the [`Vmm`] state machine. The HTTP server runs on its
//! own thread and forwards each request over a channel; this module answers it on the
//! event-loop thread, so requests are serialized and the API thread never touches the VM.
//!
//! HTTP stays here: a request is parsed into a typed [`VmmRequest`] (its body through the
//! Cloud Hypervisor schemas of [`api::compat`]), the `Vmm` answers a typed [`Reply`] or
//! [`OpError`], and this module turns them into status codes and JSON.

use api::compat;
use api::request::{Endpoint, VmmRequest};
use api::{ConfigError, RngConfig, SerialConfig, SerialMode, VmConfig};
use petrel_http::{Request, Response};
use serde_json::json;

use crate::event_loop::EventLoop;
use crate::lifecycle::{ErrorKind, Next, OpError, Reply, Vmm};

/// The status an error is answered with.
fn status(kind: ErrorKind) -> u16 {
    match kind {
        ErrorKind::NotFound => 404,
        ErrorKind::Conflict => 409,
        ErrorKind::Invalid => 400,
        ErrorKind::Internal => 500,
    }
}

/// An error answer in Cloud Hypervisor's shape: a JSON array of messages (ch-remote prints
/// them one per line; petrel's message names the field or the state).
fn error(e: OpError) -> Response {
    Response::error_list(status(e.kind()), &[crate::error_chain(&e)])
}

/// Cloud Hypervisor's routes petrel does not serve yet, with what is missing. They answer 404
/// (as any unknown path) with a message naming it.
pub const UNSUPPORTED: &[(&str, &str)] = &[
    (
        "vm.add-device",
        "VFIO passthrough needs PCI, which petrel does not have yet",
    ),
    (
        "vm.add-user-device",
        "vfio-user devices need PCI, which petrel does not have yet",
    ),
    (
        "vm.add-fs",
        "virtio-fs needs vhost-user, which petrel does not have yet",
    ),
    ("vm.add-generic-vhost-user", "petrel has no vhost-user yet"),
    ("vm.add-pmem", "petrel has no virtio-pmem device yet"),
    ("vm.add-vdpa", "petrel has no vDPA support yet"),
    ("vm.resize-zone", "petrel has no memory zones yet"),
    ("vm.coredump", "petrel cannot write a guest core dump yet"),
    ("vm.nmi", "petrel cannot inject an NMI yet"),
];

/// Parses a body with one of the Cloud Hypervisor schema readers of `api::compat` (which
/// accept CH's unsupported fields only at their defaults and name any other).
fn parse<T>(
    req: &Request,
    what: &str,
    from_ch: fn(&[u8]) -> Result<T, ConfigError>,
) -> Result<T, OpError> {
    if req.body.is_empty() {
        return Err(OpError::invalid(format!("{what}: a JSON body is required")));
    }
    from_ch(&req.body).map_err(|e| OpError::invalid(format!("{what}: {e}")))
}

/// `vm.create`'s body: Cloud Hypervisor's defaults for the sections it leaves out (no serial
/// output; an entropy device), then petrel's validation.
fn vm_config(req: &Request) -> Result<VmConfig, OpError> {
    let mut cfg = parse(req, "vm.create", compat::vm_config_from_ch)?;
    let raw: serde_json::Value = serde_json::from_slice(&req.body).unwrap_or_default();
    if raw.get("serial").is_none() {
        cfg.serial = SerialConfig {
            mode: SerialMode::Off,
            file: None,
        };
    }
    if raw.get("rng").is_none() {
        cfg.rng = Some(RngConfig::default());
    }
    cfg.validate()
        .map_err(|e| OpError::invalid(format!("vm.create: {e}")))?;
    Ok(cfg)
}

/// The typed request for `endpoint`, with its body parsed (what the VMM is handed).
pub fn request(endpoint: Endpoint, mut req: Request) -> Result<VmmRequest, OpError> {
    Ok(match endpoint {
        Endpoint::VmmPing => VmmRequest::Ping,
        Endpoint::VmmShutdown => VmmRequest::ShutdownVmm,
        Endpoint::VmCreate => VmmRequest::Create(Box::new(vm_config(&req)?)),
        Endpoint::VmBoot => VmmRequest::Boot,
        Endpoint::VmInfo => VmmRequest::Info,
        Endpoint::VmPause => VmmRequest::Pause,
        Endpoint::VmResume => VmmRequest::Resume,
        Endpoint::VmReboot => VmmRequest::Reboot,
        Endpoint::VmShutdown => VmmRequest::Shutdown,
        Endpoint::VmPowerButton => VmmRequest::PowerButton,
        Endpoint::VmDelete => VmmRequest::Delete,
        Endpoint::VmCounters => VmmRequest::Counters,
        Endpoint::VmResize => {
            VmmRequest::Resize(parse(&req, endpoint.name(), compat::resize_from_ch)?)
        }
        Endpoint::VmResizeDisk => {
            VmmRequest::ResizeDisk(parse(&req, endpoint.name(), compat::resize_disk_from_ch)?)
        }
        Endpoint::VmAddDisk => {
            VmmRequest::AddDisk(parse(&req, endpoint.name(), compat::disk_config_from_ch)?)
        }
        Endpoint::VmAddNet => {
            // With a tap fd the host side is the caller's: Kata's `ip`/`mask` (the address
            // Cloud Hypervisor would give a tap it creates) do not apply and are ignored.
            if !req.fds.is_empty() {
                if let Ok(serde_json::Value::Object(mut m)) = serde_json::from_slice(&req.body) {
                    m.remove("ip");
                    m.remove("mask");
                    req.body = serde_json::Value::Object(m).to_string().into_bytes();
                }
            }
            let mut net = parse(&req, endpoint.name(), compat::net_config_from_ch)?;
            // Tap fds passed with SCM_RIGHTS (as Kata does) replace the numbers in the body.
            let fds = req.take_fds();
            if !fds.is_empty() {
                use std::os::fd::AsRawFd;
                net.fds = Some(fds.iter().map(|fd| fd.as_raw_fd()).collect());
            }
            VmmRequest::AddNet { net, fds }
        }
        Endpoint::VmAddVsock => {
            VmmRequest::AddVsock(parse(&req, endpoint.name(), compat::vsock_config_from_ch)?)
        }
        Endpoint::VmRemoveDevice => {
            VmmRequest::RemoveDevice(parse(&req, endpoint.name(), compat::remove_device_from_ch)?)
        }
        Endpoint::VmSnapshot => {
            VmmRequest::Snapshot(parse(&req, endpoint.name(), compat::snapshot_from_ch)?)
        }
        Endpoint::VmRestore => {
            let mut restore = parse(&req, endpoint.name(), compat::restore_from_ch)?;
            // Tap fds passed with SCM_RIGHTS are numbered into net_fds, in order.
            let fds = req.take_fds();
            if let Some(list) = restore.net_fds.as_mut() {
                use std::os::fd::AsRawFd;
                let mut raw = fds.iter().map(|fd| fd.as_raw_fd());
                for entry in list {
                    entry.fds = Some(raw.by_ref().take(entry.num_fds).collect());
                }
            }
            VmmRequest::Restore { restore, fds }
        }
        Endpoint::VmSendMigration => VmmRequest::SendMigration(parse(
            &req,
            endpoint.name(),
            compat::send_migration_from_ch,
        )?),
        Endpoint::VmReceiveMigration => VmmRequest::ReceiveMigration(parse(
            &req,
            endpoint.name(),
            compat::receive_migration_from_ch,
        )?),
    })
}

/// The response to a reply.
fn response(reply: Reply) -> Response {
    match reply {
        Reply::Done => Response::no_content(),
        // Cloud Hypervisor answers vmm.shutdown 200 with an empty body (ch-remote prints an
        // empty line).
        Reply::Exit(_) => Response::new(200),
        Reply::Ping(sel) => Response::json(
            200,
            &json!({
                "build_version": env!("CARGO_PKG_VERSION"),
                "version": env!("CARGO_PKG_VERSION"),
                "pid": std::process::id(),
                "features": ["kvm", "virtio-mmio"],
                "hypervisor": sel.kind.to_string(),
                "hypervisor_reason": sel.reason,
            }),
        ),
        Reply::Info(mut info) => {
            // Cloud Hypervisor's clients read cpus.max_vcpus (Kata caps vm.resize with it).
            let cpus = &mut info.config.cpus;
            cpus.max_vcpus = Some(cpus.max_vcpus.unwrap_or(cpus.boot_vcpus));
            let mut body = json!({
                "config": info.config,
                "state": info.state.to_string(),
                "memory_actual_size": info.memory_actual_size,
                "hypervisor": info.hypervisor.to_string(),
            });
            if let Some(reason) = info.end_reason {
                body["end_reason"] = json!(reason.to_string());
            }
            Response::json(200, &body)
        }
        Reply::Counters(devices) => {
            let mut out = serde_json::Map::new();
            for (name, counters) in devices {
                let values: serde_json::Map<String, serde_json::Value> = counters
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), json!(v)))
                    .collect();
                out.insert(name, serde_json::Value::Object(values));
            }
            Response::json(200, &serde_json::Value::Object(out))
        }
        // Added to the config of a VM not booted yet: 204, as Cloud Hypervisor (which answers
        // 200 with the device's PCI address only for a hotplug).
        Reply::Added(_) => Response::no_content(),
    }
}

/// The endpoint a request names, or the 404/405 answer.
pub fn route(req: &Request) -> Result<Endpoint, Response> {
    let path = req.path();
    let Some(endpoint) = Endpoint::from_path(path) else {
        let op = path.trim_start_matches("/api/v1/");
        let message = match UNSUPPORTED.iter().find(|(name, _)| *name == op) {
            Some((name, why)) => format!("{name}: not supported: {why}"),
            None => format!("no such endpoint: {path}"),
        };
        return Err(Response::error_list(404, &[message]));
    };
    let method = endpoint.verb().as_str();
    if req.method.as_str() != method {
        let message = format!("{path} takes {method}, not {}", req.method.as_str());
        return Err(Response::error_list(405, &[message]));
    }
    Ok(endpoint)
}

/// Answers one API request. Returns the response and whether the process should end.
pub fn handle(vmm: &mut Vmm, event_loop: &mut EventLoop, req: Request) -> (Response, Next) {
    let endpoint = match route(&req) {
        Ok(e) => e,
        Err(response) => return (response, Next::Continue),
    };
    let op = endpoint.name();
    // Reads (a supervisor polls `vm.info` every few hundred ms) are not worth a line each
    // in an idle VM's log; changes are.
    if req.method == petrel_http::Method::Get {
        log::debug!("api: {} {op}", req.method.as_str());
    } else {
        log::info!("api: {} {op}", req.method.as_str());
    }
    let (response, next) = match request(endpoint, req).and_then(|r| vmm.handle(r, event_loop)) {
        Ok(Reply::Exit(code)) => (response(Reply::Exit(code)), Next::Exit(code)),
        Ok(reply) => (response(reply), Next::Continue),
        Err(e) => (error(e), Next::Continue),
    };
    if !response.is_success() {
        log::warn!("api: {op} refused: {}", response.error_message());
    }
    (response, next)
}
