//! Firecracker's dialect: its REST API (the paths of its swagger document) and its command line,
//! a second front end over the same [`Vmm`] state machine as the Cloud Hypervisor API.
//!
//! Firecracker configures a microVM piece by piece before `InstanceStart`; this front end keeps
//! those pieces in Firecracker's shape ([`types::FcConfig`]), checks each as Firecracker does,
//! and at `InstanceStart` turns them into one petrel [`api::VmConfig`] handed to the `Vmm` as
//! the typed `Create` and `Boot` requests. After the start, requests map to `Pause`, `Resume`,
//! `Info` and the balloon target. Every error is a 400 with `{"fault_message": "..."}`.

use std::collections::BTreeMap;

use api::request::VmmRequest;
use petrel_http::{Dialect, Method, Request, Response};
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::event_loop::EventLoop;
use crate::lifecycle::{Next, VmState, Vmm};

pub mod cli;
pub mod cpu_config;
pub mod metrics;
pub mod mmds;
mod patch;
pub mod snapshot;
pub mod types;

use types::*;

/// The Firecracker API version petrel's dialect follows (`--version`, `GET /version`).
pub const FC_API_VERSION: &str = "1.12.0";

const NOT_AFTER_START: &str =
    "The requested operation is not supported after starting the microVM.";
const NOT_BEFORE_START: &str =
    "The requested operation is not supported before starting the microVM.";

/// Firecracker's routes petrel does not serve yet, with why.
const UNSUPPORTED: &[(&str, &str)] = &[
    ("hotplug", "memory hotplug is not supported by petrel yet"),
    ("pmem", "virtio-pmem is not supported by petrel yet"),
    (
        "serial",
        "serial output redirection is not supported by petrel yet",
    ),
];

/// The Firecracker front end's state: the pieces configured so far and the metrics sink.
pub struct FcApi {
    id: String,
    config: FcConfig,
    metrics: Option<metrics::MetricsSink>,
    /// Per-route request counts for the metrics (`put_api_requests.drive_count`, ...).
    api_counts: BTreeMap<String, BTreeMap<String, u64>>,
    startup_us: u64,
    /// The MMDS data store, shared with the net devices that answer for it.
    mmds: devices::mmds::SharedMmds,
}

type FcResult<T> = Result<T, String>;

fn fault(message: &str) -> Response {
    Dialect::Firecracker.error(400, message)
}

/// A request body as `T`, with Firecracker's messages for an empty or malformed one.
fn body<T: DeserializeOwned>(req: &Request) -> FcResult<T> {
    if req.body.is_empty() {
        return Err(format!("Empty {} request.", req.method.as_str()));
    }
    serde_json::from_slice(&req.body).map_err(|e| {
        format!("An error occurred when deserializing the json body of a request: {e}.")
    })
}

/// The state `GET /` reports.
fn state_name(state: VmState) -> &'static str {
    match state {
        VmState::Running => "Running",
        VmState::Paused => "Paused",
        _ => "Not started",
    }
}

fn started(vmm: &Vmm) -> bool {
    matches!(vmm.state(), VmState::Running | VmState::Paused)
}

impl FcApi {
    /// A front end for the microVM named `id`.
    pub fn new(id: &str) -> Self {
        FcApi {
            id: id.to_string(),
            config: FcConfig::default(),
            metrics: None,
            api_counts: metrics::request_counters(),
            startup_us: crate::logger::start_time().elapsed().as_micros() as u64,
            mmds: mmds::new_store(),
        }
    }

    /// The microVM's configuration so far.
    pub fn config(&self) -> &FcConfig {
        &self.config
    }

    /// Applies a `--config-file`, section by section with the API's checks.
    pub fn apply_config(&mut self, cfg: FcConfig) -> FcResult<()> {
        if let Some(c) = cfg.cpu_config {
            cpu_config::parse(&c)?;
            self.config.cpu_config = Some(c);
        }
        if let Some(logger) = cfg.logger {
            self.put_logger(logger)?;
        }
        if let Some(m) = cfg.metrics {
            self.put_metrics(m)?;
        }
        if let Some(m) = cfg.machine_config {
            m.validate()?;
            self.config.machine_config = Some(m);
        }
        if let Some(b) = cfg.boot_source {
            self.put_boot_source(b)?;
        }
        for d in cfg.drives {
            self.put_drive(&d.drive_id.clone(), d)?;
        }
        for n in cfg.network_interfaces {
            self.put_net(&n.iface_id.clone(), n)?;
        }
        if let Some(v) = cfg.vsock {
            self.put_vsock(v)?;
        }
        if let Some(e) = cfg.entropy {
            self.put_entropy(e)?;
        }
        if let Some(b) = cfg.balloon {
            self.put_balloon(b)?;
        }
        // After the interfaces it names.
        if let Some(m) = cfg.mmds_config {
            self.put_mmds_config(m)?;
        }
        Ok(())
    }

    fn put_boot_source(&mut self, b: BootSource) -> FcResult<()> {
        std::fs::File::open(&b.kernel_image_path)
            .map_err(|e| format!("Boot source error: The kernel file cannot be opened: {e}"))?;
        if let Some(initrd) = &b.initrd_path {
            std::fs::File::open(initrd)
                .map_err(|e| format!("Boot source error: The initrd file cannot be opened: {e}"))?;
        }
        self.config.boot_source = Some(b);
        Ok(())
    }

    fn put_drive(&mut self, id: &str, d: Drive) -> FcResult<()> {
        if d.drive_id != id {
            return Err("The id from the path does not match the id from the body!".into());
        }
        d.validate()?;
        if d.is_root_device
            && self
                .config
                .drives
                .iter()
                .any(|o| o.is_root_device && o.drive_id != d.drive_id)
        {
            return Err("Drive config error: A root block device already exists!".into());
        }
        match self
            .config
            .drives
            .iter_mut()
            .find(|o| o.drive_id == d.drive_id)
        {
            Some(slot) => *slot = d,
            None => self.config.drives.push(d),
        }
        Ok(())
    }

    fn put_net(&mut self, id: &str, n: NetIface) -> FcResult<()> {
        if n.iface_id != id {
            return Err("The id from the path does not match the id from the body!".into());
        }
        if let Some(mac) = &n.guest_mac {
            api::parse_mac(mac)
                .map_err(|e| format!("Network interface config error: guest_mac: {e}"))?;
        }
        n.rate_limiters()?;
        if let Some(other) = self
            .config
            .network_interfaces
            .iter()
            .find(|o| o.iface_id != n.iface_id && o.host_dev_name == n.host_dev_name)
        {
            return Err(format!(
                "Network interface config error: the host device {} is already used by {}",
                n.host_dev_name, other.iface_id
            ));
        }
        match self
            .config
            .network_interfaces
            .iter_mut()
            .find(|o| o.iface_id == n.iface_id)
        {
            Some(slot) => *slot = n,
            None => self.config.network_interfaces.push(n),
        }
        Ok(())
    }

    fn put_vsock(&mut self, v: Vsock) -> FcResult<()> {
        if v.guest_cid < 3 {
            return Err(format!(
                "Vsock config error: guest_cid {} is reserved (it must be 3 or more)",
                v.guest_cid
            ));
        }
        self.config.vsock = Some(v);
        Ok(())
    }

    fn put_entropy(&mut self, e: Entropy) -> FcResult<()> {
        if e.rate_limiter
            .as_ref()
            .is_some_and(|r| r.bandwidth.is_some() || r.ops.is_some())
        {
            return Err(
                "Entropy device error: petrel's entropy device has no rate limiter yet".into(),
            );
        }
        self.config.entropy = Some(e);
        Ok(())
    }

    fn put_balloon(&mut self, b: Balloon) -> FcResult<()> {
        if b.free_page_hinting || b.free_page_reporting {
            return Err(
                "Balloon config error: free page hinting and reporting are not supported by petrel"
                    .into(),
            );
        }
        let mem = self
            .config
            .machine_config
            .clone()
            .unwrap_or_default()
            .mem_size_mib;
        if u64::from(b.amount_mib) > mem {
            return Err(format!(
                "Balloon config error: Amount of pages requested is too large: {} MiB of {mem}",
                b.amount_mib
            ));
        }
        self.config.balloon = Some(b);
        Ok(())
    }

    fn put_logger(&mut self, l: Logger) -> FcResult<()> {
        let level = l.level.as_deref().map(parse_level).transpose()?;
        if l.module.is_some() {
            return Err("Logger error: petrel cannot filter the log by module".into());
        }
        let path = l.log_path.as_deref().map(std::path::Path::new);
        if let Some(path) = path {
            // As Firecracker: opened without blocking, so a FIFO with no reader is an error
            // rather than an API that hangs; with a reader, the logger's own open returns at once.
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .append(true)
                .create(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(path)
                .map_err(|e| format!("Logger error: Failed to open the log file: {e}"))?;
        }
        if let Some(on) = l.show_log_origin {
            crate::logger::show_origin(on);
        }
        crate::logger::configure(level, path, Some(&self.id))
            .map_err(|e| format!("Logger error: Failed to open the log file: {e}"))?;
        self.config.logger = Some(l);
        Ok(())
    }

    fn put_metrics(&mut self, m: Metrics) -> FcResult<()> {
        if self.metrics.is_some() {
            return Err("Metrics error: Reinitialization of metrics not allowed.".into());
        }
        self.metrics = Some(metrics::MetricsSink::open(&m.metrics_path)?);
        self.config.metrics = Some(m);
        Ok(())
    }

    /// `InstanceStart`: the configured microVM as petrel's config, created and booted.
    pub fn instance_start(&mut self, vmm: &mut Vmm, event_loop: &mut EventLoop) -> FcResult<()> {
        if started(vmm) {
            return Err(NOT_AFTER_START.into());
        }
        let cfg = self.config.to_vm_config()?;
        let chain = |e: crate::lifecycle::OpError| {
            format!("Start microvm error: {}", crate::error_chain(&e))
        };
        if vmm.state() != VmState::NotCreated {
            vmm.handle(VmmRequest::Delete, event_loop).map_err(chain)?;
        }
        self.attach_mmds(vmm);
        vmm.handle(VmmRequest::Create(Box::new(cfg)), event_loop)
            .map_err(chain)?;
        vmm.handle(VmmRequest::Boot, event_loop).map_err(chain)?;
        Ok(())
    }

    /// Writes a metrics line now (`FlushMetrics`); nothing to do without a metrics path (as
    /// Firecracker, which answers 204 then).
    pub fn flush_metrics(&mut self, vmm: &Vmm) -> FcResult<()> {
        let devices = vmm.counters().unwrap_or_default();
        let totals = metrics::totals(&devices, &self.api_counts, self.startup_us);
        match self.metrics.as_mut() {
            Some(sink) => sink.flush(totals),
            None => Ok(()),
        }
    }

    /// Writes the periodic metrics line when it is due.
    pub fn tick(&mut self, vmm: &Vmm) {
        let due = self
            .metrics
            .as_ref()
            .is_some_and(|m| std::time::Instant::now() >= m.next_periodic);
        if due {
            if let Err(e) = self.flush_metrics(vmm) {
                log::warn!("metrics: {e}");
            }
        }
    }

    /// Counts a request in Firecracker's request metrics (`put_api_requests.drive_count`…);
    /// routes those metrics do not name are not counted.
    fn count(&mut self, method: Method, route: &str, ok: bool) {
        let Some((group, key, fails)) = metrics::request_counter(method, route) else {
            return;
        };
        let counts = self.api_counts.entry(group.to_string()).or_default();
        *counts.entry(format!("{key}_count")).or_default() += 1;
        if fails && !ok {
            *counts.entry(format!("{key}_fails")).or_default() += 1;
        }
    }

    /// Answers one request of Firecracker's API.
    pub fn handle(
        &mut self,
        vmm: &mut Vmm,
        event_loop: &mut EventLoop,
        req: Request,
    ) -> (Response, Next) {
        let path = req.path().trim_start_matches('/').to_string();
        let method = req.method;
        log::info!("api: {} /{path}", method.as_str());
        let result = self.route(vmm, event_loop, &req, &path);
        let route = path.split('/').next().unwrap_or("");
        let ok = matches!(&result, Ok(r) if r.status < 400);
        self.count(method, route, ok);
        match result {
            Ok(response) => (response, Next::Continue),
            Err(message) => {
                log::warn!("api: {} /{path} refused: {message}", method.as_str());
                (fault(&message), Next::Continue)
            }
        }
    }

    fn route(
        &mut self,
        vmm: &mut Vmm,
        event_loop: &mut EventLoop,
        req: &Request,
        path: &str,
    ) -> FcResult<Response> {
        let parts: Vec<&str> = path.split('/').collect();
        let ok = || Ok(Response::no_content());
        let pre_boot = |vmm: &Vmm| {
            if started(vmm) {
                Err(NOT_AFTER_START.to_string())
            } else {
                Ok(())
            }
        };
        let post_boot = |vmm: &Vmm| {
            if started(vmm) {
                Ok(())
            } else {
                Err(NOT_BEFORE_START.to_string())
            }
        };
        use Method::{Get, Patch, Put};
        match (req.method, parts.as_slice()) {
            (Get, [""]) => Ok(Response::json(
                200,
                &json!({
                    "id": self.id,
                    "state": state_name(vmm.state()),
                    "vmm_version": FC_API_VERSION,
                    "app_name": "petrel",
                }),
            )),
            (Get, ["version"]) => Ok(Response::json(
                200,
                &json!({ "firecracker_version": FC_API_VERSION }),
            )),
            (Get, ["vm", "config"]) => Ok(Response::json(200, &full_config_json(&self.config))),
            (Get, ["machine-config"]) => Ok(Response::json(
                200,
                &self.config.machine_config.clone().unwrap_or_default(),
            )),
            (Put, ["machine-config"]) => {
                let m: MachineConfig = body(req)?;
                pre_boot(vmm)?;
                m.validate()?;
                self.config.machine_config = Some(m);
                ok()
            }
            (Patch, ["machine-config"]) => {
                let p: MachineConfigPatch = body(req)?;
                pre_boot(vmm)?;
                let m = self
                    .config
                    .machine_config
                    .clone()
                    .unwrap_or_default()
                    .patched(p);
                m.validate()?;
                self.config.machine_config = Some(m);
                ok()
            }
            (Put, ["boot-source"]) => {
                let b = body(req)?;
                pre_boot(vmm)?;
                self.put_boot_source(b)?;
                ok()
            }
            (Put, ["drives", id]) => {
                let d = body(req)?;
                pre_boot(vmm)?;
                self.put_drive(id, d)?;
                ok()
            }
            (Patch, ["drives", id]) => {
                let p: DrivePatch = body(req)?;
                if p.drive_id != *id {
                    return Err("The id from the path does not match the id from the body!".into());
                }
                post_boot(vmm)?;
                self.patch_drive(vmm, p)?;
                ok()
            }
            (Put, ["network-interfaces", id]) => {
                let n = body(req)?;
                pre_boot(vmm)?;
                self.put_net(id, n)?;
                ok()
            }
            (Patch, ["network-interfaces", id]) => {
                let p: NetIfacePatch = body(req)?;
                if p.iface_id != *id {
                    return Err("The id from the path does not match the id from the body!".into());
                }
                post_boot(vmm)?;
                self.patch_net(vmm, p)?;
                ok()
            }
            (Put, ["vsock"]) => {
                let v = body(req)?;
                pre_boot(vmm)?;
                self.put_vsock(v)?;
                ok()
            }
            (Put, ["entropy"]) => {
                let e = body(req)?;
                pre_boot(vmm)?;
                self.put_entropy(e)?;
                ok()
            }
            (Put, ["balloon"]) => {
                let b = body(req)?;
                pre_boot(vmm)?;
                self.put_balloon(b)?;
                ok()
            }
            (Get, ["balloon"]) => match &self.config.balloon {
                Some(b) => {
                    let mut out = b.clone();
                    if let Some(dev) = vmm.machine().and_then(|m| m.virtio.balloon.as_ref()) {
                        let dev = dev.lock().unwrap_or_else(|e| e.into_inner());
                        out.amount_mib = u32::try_from(dev.target_mib()).unwrap_or(u32::MAX);
                    }
                    Ok(Response::json(200, &out))
                }
                None => Err("Balloon config error: No balloon device found.".into()),
            },
            (Patch, ["balloon"]) => {
                let p: BalloonPatch = body(req)?;
                post_boot(vmm)?;
                if self.config.balloon.is_none() {
                    return Err("Balloon config error: No balloon device found.".into());
                }
                let active = vmm
                    .machine()
                    .and_then(|m| m.virtio.balloon.as_ref())
                    .is_some_and(|b| {
                        use devices::virtio::VirtioDevice;
                        b.lock().unwrap_or_else(|e| e.into_inner()).is_activated()
                    });
                if !active {
                    return Err("Balloon update error: Balloon: Device not activated yet.".into());
                }
                vmm.set_balloon(u64::from(p.amount_mib) << 20)
                    .map_err(|e| format!("Balloon update error: {e}"))?;
                ok()
            }
            (Get, ["balloon", "statistics"]) => {
                post_boot(vmm)?;
                self.balloon_statistics(vmm)
            }
            (Patch, ["balloon", "statistics"]) => {
                let _: BalloonStatsPatch = body(req)?;
                post_boot(vmm)?;
                Err(
                    "Balloon update error: petrel cannot change the statistics interval after \
                     start yet"
                        .into(),
                )
            }
            (Put, ["logger"]) => {
                let l = body(req)?;
                pre_boot(vmm)?;
                self.put_logger(l)?;
                ok()
            }
            (Put, ["metrics"]) => {
                let m = body(req)?;
                pre_boot(vmm)?;
                self.put_metrics(m)?;
                ok()
            }
            (Put, ["actions"]) => {
                let a: Action = body(req)?;
                match a.action_type {
                    ActionType::InstanceStart => {
                        self.instance_start(vmm, event_loop)?;
                        // Firecracker writes a metrics line as the microVM starts.
                        self.flush_metrics(vmm)?;
                    }
                    ActionType::FlushMetrics => {
                        post_boot(vmm)?;
                        self.flush_metrics(vmm)?;
                    }
                    ActionType::SendCtrlAltDel => {
                        post_boot(vmm)?;
                        let Some(machine) = vmm.machine() else {
                            return Err(NOT_BEFORE_START.into());
                        };
                        machine.legacy.send_ctrl_alt_del();
                    }
                }
                ok()
            }
            (Put, ["snapshot", "create"]) => {
                let b = body(req)?;
                post_boot(vmm)?;
                self.snapshot_create(vmm, b)?;
                ok()
            }
            (Put, ["snapshot", "load"]) => {
                let b = body(req)?;
                pre_boot(vmm)?;
                self.snapshot_load(vmm, event_loop, b)?;
                ok()
            }
            (Put, ["cpu-config"]) => {
                let v: serde_json::Value = body(req)?;
                pre_boot(vmm)?;
                cpu_config::parse(&v)?;
                self.config.cpu_config = Some(v);
                ok()
            }
            (Put, ["mmds", "config"]) => {
                let m = body(req)?;
                pre_boot(vmm)?;
                self.put_mmds_config(m)?;
                ok()
            }
            (Put, ["mmds"]) => {
                let v = body(req)?;
                Ok(self
                    .put_mmds(v)
                    .map_or_else(|r| r, |()| Response::no_content()))
            }
            (Patch, ["mmds"]) => {
                let v = body(req)?;
                Ok(self
                    .patch_mmds(v)
                    .map_or_else(|r| r, |()| Response::no_content()))
            }
            (Get, ["mmds"]) => Ok(Response::json(200, &self.get_mmds())),
            (Patch, ["vm"]) => {
                let p: VmStatePatch = body(req)?;
                post_boot(vmm)?;
                let (want, request) = match p.state {
                    VmStateName::Paused => (VmState::Paused, VmmRequest::Pause),
                    VmStateName::Resumed => (VmState::Running, VmmRequest::Resume),
                };
                if vmm.state() != want {
                    vmm.handle(request, event_loop)
                        .map_err(|e| crate::error_chain(&e))?;
                }
                ok()
            }
            (_, [first, ..]) if UNSUPPORTED.iter().any(|(p, _)| p == first) => {
                let why = UNSUPPORTED
                    .iter()
                    .find(|(p, _)| p == first)
                    .map_or("", |u| u.1);
                Err(format!(
                    "{} /{path}: not supported: {why}",
                    req.method.as_str()
                ))
            }
            _ => Err(format!(
                "Invalid request method and/or path: {} {path}.",
                req.method.as_str()
            )),
        }
    }

    fn balloon_statistics(&self, vmm: &Vmm) -> FcResult<Response> {
        let Some(cfg) = &self.config.balloon else {
            return Err("Balloon config error: No balloon device found.".into());
        };
        if cfg.stats_polling_interval_s == 0 {
            return Err(
                "Balloon config error: Statistics for the balloon device are not enabled".into(),
            );
        }
        let Some(dev) = vmm.machine().and_then(|m| m.virtio.balloon.as_ref()) else {
            return Err("Balloon config error: No balloon device found.".into());
        };
        let dev = dev.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = serde_json::Map::new();
        out.insert("target_mib".into(), json!(dev.target_mib()));
        out.insert("actual_mib".into(), json!(dev.actual_mib()));
        out.insert("target_pages".into(), json!(dev.target_mib() << 8));
        out.insert("actual_pages".into(), json!(dev.actual_mib() << 8));
        for (name, value) in dev.stats().values() {
            out.insert(name.to_string(), json!(value));
        }
        Ok(Response::json(200, &serde_json::Value::Object(out)))
    }
}
