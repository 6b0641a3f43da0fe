//! The per-VM control API: Cloud Hypervisor's HTTP routes (`/api/v1/…`) mapped onto the
//! [`Vmm`] state machine. The HTTP server runs on its own thread and forwards each request
//! over a channel; this module answers it on the event-loop thread, so requests are
//! serialized and the API thread never touches the VM.

use api::compat::{self, VmRemoveDevice};
use api::http::{Request, Response};
use api::{ConfigError, RngConfig, SerialConfig, SerialMode, VmConfig};
use serde_json::json;

use crate::event_loop::EventLoop;
use crate::vmm::{Next, OpError, VmState, Vmm};

/// Every route the server answers: (method, path).
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/api/v1/vmm.ping"),
    ("PUT", "/api/v1/vmm.shutdown"),
    ("PUT", "/api/v1/vm.create"),
    ("PUT", "/api/v1/vm.boot"),
    ("GET", "/api/v1/vm.info"),
    ("PUT", "/api/v1/vm.pause"),
    ("PUT", "/api/v1/vm.resume"),
    ("PUT", "/api/v1/vm.reboot"),
    ("PUT", "/api/v1/vm.shutdown"),
    ("PUT", "/api/v1/vm.power-button"),
    ("PUT", "/api/v1/vm.delete"),
    ("GET", "/api/v1/vm.counters"),
    ("PUT", "/api/v1/vm.resize"),
    ("PUT", "/api/v1/vm.add-disk"),
    ("PUT", "/api/v1/vm.add-net"),
    ("PUT", "/api/v1/vm.add-vsock"),
    ("PUT", "/api/v1/vm.remove-device"),
];

fn error(e: OpError) -> Response {
    Response::error(e.status, &e.message)
}

fn done(r: std::result::Result<(), OpError>) -> Response {
    match r {
        Ok(()) => Response::no_content(),
        Err(e) => error(e),
    }
}

/// Parses a body with one of the Cloud Hypervisor schema readers of `api::compat` (which
/// accept CH's unsupported fields only at their defaults and name any other).
fn parse<T>(
    req: &Request,
    what: &str,
    from_ch: fn(&[u8]) -> Result<T, ConfigError>,
) -> Result<T, OpError> {
    if req.body.is_empty() {
        return Err(OpError::bad(format!("{what}: a JSON body is required")));
    }
    from_ch(&req.body).map_err(|e| OpError::bad(format!("{what}: {e}")))
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
        .map_err(|e| OpError::bad(format!("vm.create: {e}")))?;
    Ok(cfg)
}

/// Answers one API request. Returns the response and whether the process should end.
pub fn handle(vmm: &mut Vmm, event_loop: &mut EventLoop, req: Request) -> (Response, Next) {
    let path = req.path().to_string();
    let Some(&(method, _)) = ROUTES.iter().find(|(_, p)| *p == path) else {
        return (
            Response::error(404, &format!("no such endpoint: {path}")),
            Next::Continue,
        );
    };
    if req.method.as_str() != method {
        return (
            Response::error(
                405,
                &format!("{path} takes {method}, not {}", req.method.as_str()),
            ),
            Next::Continue,
        );
    }
    let op = path.trim_start_matches("/api/v1/");
    log::info!("api: {} {op}", req.method.as_str());
    let response = match op {
        "vmm.ping" => Response::json(200, &ping(vmm)),
        "vmm.shutdown" => {
            vmm.teardown();
            log::info!("exiting: vmm.shutdown");
            return (Response::no_content(), Next::Exit(0));
        }
        "vm.create" => done(vm_config(&req).and_then(|cfg| vmm.create(cfg))),
        "vm.boot" => done(vmm.boot(event_loop)),
        "vm.info" => info(vmm),
        "vm.pause" => done(vmm.pause()),
        "vm.resume" => done(vmm.resume()),
        "vm.reboot" => done(vmm.reboot(event_loop)),
        "vm.shutdown" => done(vmm.shutdown()),
        "vm.power-button" => done(vmm.power_button()),
        "vm.delete" => done(vmm.delete(event_loop)),
        "vm.counters" => counters(vmm),
        "vm.resize" => resize(vmm, &req),
        "vm.add-disk" => add_disk(vmm, &req),
        "vm.add-net" => add_net(vmm, req),
        "vm.add-vsock" => add_vsock(vmm, &req),
        "vm.remove-device" => remove_device(vmm, &req),
        _ => Response::error(404, &format!("no such endpoint: {path}")),
    };
    if !response.is_success() {
        log::warn!("api: {op} refused: {}", response.error_message());
    }
    (response, Next::Continue)
}

fn ping(vmm: &Vmm) -> serde_json::Value {
    let sel = vmm.selection();
    json!({
        "build_version": env!("CARGO_PKG_VERSION"),
        "version": env!("CARGO_PKG_VERSION"),
        "pid": std::process::id(),
        "features": ["kvm", "virtio-mmio"],
        "hypervisor": sel.kind.to_string(),
        "hypervisor_reason": sel.reason,
    })
}

fn info(vmm: &Vmm) -> Response {
    let Some(cfg) = vmm.config() else {
        return error(OpError::state("vm.info", VmState::NotCreated));
    };
    let balloon = vmm
        .machine()
        .and_then(|m| m.virtio.balloon.as_ref())
        .map(|b| b.lock().unwrap_or_else(|e| e.into_inner()).actual_mib() << 20)
        .unwrap_or(0);
    Response::json(
        200,
        &json!({
            "config": cfg,
            "state": vmm.state().to_string(),
            "memory_actual_size": cfg.memory.size.saturating_sub(balloon),
            "hypervisor": vmm.selection().kind.to_string(),
        }),
    )
}

fn counters(vmm: &Vmm) -> Response {
    if vmm.config().is_none() {
        return error(OpError::state("vm.counters", VmState::NotCreated));
    }
    let mut out = serde_json::Map::new();
    if let Some(machine) = vmm.machine() {
        for slot in machine.virtio.slots() {
            let values: serde_json::Map<String, serde_json::Value> = slot
                .counter_values()
                .into_iter()
                .map(|(k, v)| (k.to_string(), json!(v)))
                .collect();
            out.insert(slot.name.clone(), serde_json::Value::Object(values));
        }
    }
    Response::json(200, &serde_json::Value::Object(out))
}

fn resize(vmm: &mut Vmm, req: &Request) -> Response {
    let r = match parse(req, "vm.resize", compat::resize_from_ch) {
        Ok(r) => r,
        Err(e) => return error(e),
    };
    let Some(cfg) = vmm.config() else {
        return error(OpError::state("vm.resize", VmState::NotCreated));
    };
    match r.balloon_target(cfg) {
        Ok(Some(target)) => done(vmm.set_balloon(target)),
        Ok(None) => Response::no_content(),
        Err(e) => error(OpError::bad(format!("vm.resize: {e}"))),
    }
}

fn add_disk(vmm: &mut Vmm, req: &Request) -> Response {
    let disk = match parse(req, "vm.add-disk", compat::disk_config_from_ch) {
        Ok(d) => d,
        Err(e) => return error(e),
    };
    let id = disk.id.clone();
    let r = vmm.edit_config("vm.add-disk", |cfg| {
        cfg.disks.get_or_insert_with(Vec::new).push(disk);
        Ok(())
    });
    added(r, id)
}

fn add_net(vmm: &mut Vmm, mut req: Request) -> Response {
    let mut net = match parse(&req, "vm.add-net", compat::net_config_from_ch) {
        Ok(n) => n,
        Err(e) => return error(e),
    };
    // Tap fds passed with SCM_RIGHTS (as Kata does) replace the numbers in the body. They stay
    // open (owned by the Vmm) only if the device is added; otherwise dropping them closes them.
    let fds = req.take_fds();
    if !fds.is_empty() {
        use std::os::fd::AsRawFd;
        net.fds = Some(fds.iter().map(|fd| fd.as_raw_fd()).collect());
    }
    let id = net.id.clone();
    let r = vmm.edit_config("vm.add-net", |cfg| {
        cfg.net.get_or_insert_with(Vec::new).push(net);
        Ok(())
    });
    if r.is_ok() {
        vmm.keep_fds(fds);
    }
    added(r, id)
}

fn add_vsock(vmm: &mut Vmm, req: &Request) -> Response {
    let vsock = match parse(req, "vm.add-vsock", compat::vsock_config_from_ch) {
        Ok(v) => v,
        Err(e) => return error(e),
    };
    let id = vsock.id.clone();
    let r = vmm.edit_config("vm.add-vsock", |cfg| {
        if cfg.vsock.is_some() {
            return Err(OpError::bad(
                "vm.add-vsock: the VM already has a vsock device",
            ));
        }
        cfg.vsock = Some(vsock);
        Ok(())
    });
    added(r, id)
}

fn added(r: std::result::Result<(), OpError>, id: Option<String>) -> Response {
    match r {
        Ok(()) => Response::json(200, &json!({ "id": id })),
        Err(e) => error(e),
    }
}

fn remove_device(vmm: &mut Vmm, req: &Request) -> Response {
    let VmRemoveDevice { id } = match parse(req, "vm.remove-device", compat::remove_device_from_ch)
    {
        Ok(r) => r,
        Err(e) => return error(e),
    };
    done(vmm.edit_config("vm.remove-device", |cfg| {
        let before = (
            cfg.disks.as_ref().map_or(0, Vec::len),
            cfg.net.as_ref().map_or(0, Vec::len),
            cfg.vsock.is_some(),
        );
        if let Some(d) = cfg.disks.as_mut() {
            d.retain(|d| d.id.as_deref() != Some(id.as_str()));
        }
        if let Some(n) = cfg.net.as_mut() {
            n.retain(|n| n.id.as_deref() != Some(id.as_str()));
        }
        if cfg
            .vsock
            .as_ref()
            .is_some_and(|v| v.id.as_deref() == Some(id.as_str()))
        {
            cfg.vsock = None;
        }
        let after = (
            cfg.disks.as_ref().map_or(0, Vec::len),
            cfg.net.as_ref().map_or(0, Vec::len),
            cfg.vsock.is_some(),
        );
        if before == after {
            return Err(OpError {
                status: 404,
                message: format!("vm.remove-device: no device with id '{id}'"),
            });
        }
        Ok(())
    }))
}

/// The methods the Vmm needs for the API beyond its lifecycle.
impl Vmm {
    /// `vm.resize` with `desired_balloon`: sets the balloon target.
    pub fn set_balloon(&mut self, bytes: u64) -> std::result::Result<(), OpError> {
        let Some(balloon) = self.machine().and_then(|m| m.virtio.balloon.clone()) else {
            return Err(OpError::bad(
                "desired_balloon: the VM has no balloon (or has not been booted)",
            ));
        };
        let mut b = balloon.lock().unwrap_or_else(|e| e.into_inner());
        b.set_target_mib(bytes >> 20)
            .map_err(|e| OpError::bad(format!("desired_balloon: {e}")))
    }

    /// `vm.power-button`: presses the ACPI power button; the guest shuts itself down.
    pub fn power_button(&mut self) -> std::result::Result<(), OpError> {
        if !matches!(self.state(), VmState::Running) {
            return Err(OpError::state("vm.power-button", self.state()));
        }
        let Some(machine) = self.machine() else {
            return Err(OpError::state("vm.power-button", self.state()));
        };
        machine.legacy.power_button.press().map_err(|e| OpError {
            status: 500,
            message: format!("vm.power-button: {e}"),
        })
    }
}
