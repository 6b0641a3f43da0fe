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

fn error(e: OpError) -> Response {
    Response::error(status(e.kind()), &crate::error_chain(&e))
}

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

/// The typed request for `endpoint`, with its body parsed.
fn request(endpoint: Endpoint, mut req: Request) -> Result<VmmRequest, OpError> {
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
        Endpoint::VmResize => VmmRequest::Resize(parse(&req, "vm.resize", compat::resize_from_ch)?),
        Endpoint::VmAddDisk => {
            VmmRequest::AddDisk(parse(&req, "vm.add-disk", compat::disk_config_from_ch)?)
        }
        Endpoint::VmAddNet => {
            let mut net = parse(&req, "vm.add-net", compat::net_config_from_ch)?;
            // Tap fds passed with SCM_RIGHTS (as Kata does) replace the numbers in the body.
            let fds = req.take_fds();
            if !fds.is_empty() {
                use std::os::fd::AsRawFd;
                net.fds = Some(fds.iter().map(|fd| fd.as_raw_fd()).collect());
            }
            VmmRequest::AddNet { net, fds }
        }
        Endpoint::VmAddVsock => {
            VmmRequest::AddVsock(parse(&req, "vm.add-vsock", compat::vsock_config_from_ch)?)
        }
        Endpoint::VmRemoveDevice => VmmRequest::RemoveDevice(parse(
            &req,
            "vm.remove-device",
            compat::remove_device_from_ch,
        )?),
    })
}

/// The response to a reply.
fn response(reply: Reply) -> Response {
    match reply {
        Reply::Done | Reply::Exit(_) => Response::no_content(),
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
        Reply::Info(info) => {
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
        Reply::Added(id) => Response::json(200, &json!({ "id": id })),
    }
}

/// Answers one API request. Returns the response and whether the process should end.
pub fn handle(vmm: &mut Vmm, event_loop: &mut EventLoop, req: Request) -> (Response, Next) {
    let path = req.path().to_string();
    let Some(endpoint) = Endpoint::from_path(&path) else {
        return (
            Response::error(404, &format!("no such endpoint: {path}")),
            Next::Continue,
        );
    };
    let method = endpoint.verb().as_str();
    if req.method.as_str() != method {
        return (
            Response::error(
                405,
                &format!("{path} takes {method}, not {}", req.method.as_str()),
            ),
            Next::Continue,
        );
    }
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
