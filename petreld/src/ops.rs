//! The VM operations behind the API and the supervisor. Each one claims the VM (one operation
//! at a time per VM), writes what it is about to do to the database, acts, then records what
//! it saw.

use std::sync::Arc;
use std::time::Duration;

use api::request::Endpoint;
use api::VmConfig;

use super::cgroup;
use super::host::{Allocation, Host, Limits};
use super::launcher::{self, SpawnOptions, VmDir};
use super::model::{
    merge_patch, now, validate_labels, validate_meta, validate_vm_name, CreateVm, DesiredState,
    ObservedState, RestartPolicy, VmMeta, VmRecord,
};
use super::net::{self, ManagedNet, NetRequest};
use super::process::{self, ProcessId};
use super::{lock, new_id, ApiError, ApiResult, Daemon};

/// Longest delay before an automatic restart.
const MAX_RESTART_DELAY_S: u64 = 30;

impl Daemon {
    /// The VM with this id or name (404 otherwise).
    pub fn get_vm(&self, key: &str) -> ApiResult<VmRecord> {
        self.store()
            .get_vm(key)?
            .ok_or_else(|| ApiError::new(404, format!("no VM {key:?}")))
    }

    /// Admission limits now.
    pub fn limits(&self, host: &Host) -> Limits {
        Limits::new(
            host,
            self.config.memory_overcommit,
            self.config.cpu_overcommit,
        )
    }

    /// What VMs that should run (other than `except`) use.
    pub fn allocation(&self, except: Option<&str>) -> ApiResult<Allocation> {
        let vms = self.store().all_vms()?;
        let mut a = Allocation::default();
        for vm in vms.iter().filter(|v| Some(v.id.as_str()) != except) {
            if matches!(
                vm.desired_state,
                DesiredState::Running | DesiredState::Paused
            ) {
                a.memory_bytes += vm.config.memory.size;
                a.vcpus += u64::from(vm.config.cpus.boot_vcpus);
            }
        }
        Ok(a)
    }

    /// The configuration a create request describes: `config`, or a template with
    /// `overrides` merged in; validated, kernel and initramfs checked to exist. `config.net`
    /// entries without `tap` and `fds` are taken out and returned as interfaces petreld
    /// makes taps for (after those of the request's `net`). With a template, also the
    /// version used.
    fn resolve_config(
        &self,
        req: &CreateVm,
    ) -> ApiResult<(VmConfig, Vec<NetRequest>, Option<u32>)> {
        let bad = |m: String| ApiError::new(400, m);
        if req.template_version.is_some() && req.template.is_none() {
            return Err(bad("template_version: give template too".into()));
        }
        let mut version = None;
        let value = match (&req.config, &req.template) {
            (Some(_), Some(_)) => return Err(bad("give config or template, not both".into())),
            (None, None) => return Err(bad("config or template is required".into())),
            (Some(c), None) => {
                if req.overrides.is_some() {
                    return Err(bad("overrides apply to a template only".into()));
                }
                c.clone()
            }
            (None, Some(name)) => {
                let t = match req.template_version {
                    None => self.store().get_template(name)?,
                    Some(v) => self.store().get_template_version(name, v)?,
                };
                let t = t.ok_or_else(|| match req.template_version {
                    None => ApiError::new(422, format!("template: no template named {name:?}")),
                    Some(v) => ApiError::new(
                        422,
                        format!("template_version: template {name:?} has no version {v}"),
                    ),
                })?;
                version = Some(t.version);
                let mut v = serde_json::to_value(&t.config)
                    .map_err(|e| ApiError::new(500, e.to_string()))?;
                if let Some(o) = &req.overrides {
                    merge_patch(&mut v, o);
                }
                v
            }
        };
        let mut value = value;
        self.resolve_volumes(&mut value)?;
        let mut nets = req.net.clone();
        nets.extend(take_managed_nets(&mut value).map_err(bad)?);
        let config: VmConfig =
            serde_json::from_value(value).map_err(|e| bad(format!("config: {e}")))?;
        check_config(&config)?;
        Ok((config, nets, version))
    }

    /// `POST /v1/vms`.
    pub fn create_vm(self: &Arc<Self>, req: CreateVm) -> ApiResult<VmRecord> {
        validate_vm_name(&req.name).map_err(|m| ApiError::new(400, m))?;
        self.check_space("create")?;
        validate_labels(&req.labels).map_err(|m| ApiError::new(400, m))?;
        validate_meta(req.description.as_deref(), &req.tags).map_err(|m| ApiError::new(400, m))?;
        let (config, nets, from, template_version) = match &req.snapshot {
            Some(r) => {
                if req.config.is_some() || req.template.is_some() || !req.net.is_empty() {
                    return Err(ApiError::new(
                        400,
                        "snapshot: a VM made from a snapshot takes its config from it (no \
                         config, template or net)",
                    ));
                }
                if !req.start {
                    return Err(ApiError::new(
                        400,
                        "snapshot: a VM made from a snapshot starts at once (start: false)",
                    ));
                }
                let (source, dir) = self.snapshot_source(r)?;
                (source.config, Vec::new(), Some(dir), None)
            }
            None => {
                let (c, n, v) = self.resolve_config(&req)?;
                (c, n, None, v)
            }
        };
        let id = new_id();
        let mut net = plan_nets(&id, &nets)?;
        // Held until the VM is recorded: its networks cannot go away meanwhile.
        let network_guard = self.networks.lock();
        self.bind_networks(&mut net)?;
        let host = self.host();
        let (hypervisor, _why) = host
            .select(req.hypervisor, self.config.gate("mshv"))
            .map_err(|m| ApiError::new(422, m))?;
        let limits = self.limits(&host);
        let memory = config.memory.size;
        let vcpus = u64::from(config.cpus.boot_vcpus);
        limits
            .admit(Allocation::default(), memory, vcpus)
            .map_err(|m| ApiError::new(422, m))?;
        let _claim = self.claim(&id)?;
        let t = now();
        let mut vm = VmRecord {
            id: id.clone(),
            name: req.name.clone(),
            labels: req.labels.clone(),
            desired_state: if req.start {
                DesiredState::Running
            } else {
                DesiredState::Stopped
            },
            state: if req.start {
                ObservedState::Starting
            } else {
                ObservedState::Created
            },
            config,
            template: req.template.clone(),
            hypervisor_requested: req.hypervisor,
            hypervisor,
            restart: req.restart,
            restart_count: 0,
            pid: None,
            pid_start: None,
            api_socket: None,
            exit_reason: None,
            net,
            created_at: t.clone(),
            updated_at: t,
            meta: VmMeta {
                description: req.description.clone(),
                tags: req.tags.clone(),
                template_version,
            },
        };
        {
            let _admission = lock(&self.admission);
            if req.start {
                limits
                    .admit(self.allocation(None)?, memory, vcpus)
                    .map_err(|m| ApiError::new(422, m))?;
            }
            self.store().insert_vm(&vm)?;
            if let Some(dir) = &from {
                self.store().begin_operation(&super::store::Operation {
                    vm_id: id.clone(),
                    kind: "revert".into(),
                    arg: dir.to_string_lossy().into_owned(),
                })?;
            }
        }
        self.refresh_dhcp(&vm.net);
        drop(network_guard);
        if req.start {
            vm = match &from {
                Some(dir) => self.finish_revert(&vm, dir)?,
                None => self.launch(&vm)?,
            };
            if vm.state == ObservedState::Failed {
                return Err(ApiError::new(
                    500,
                    format!(
                        "VM {} ({}) was created but failed to start: {}",
                        vm.name,
                        vm.id,
                        vm.exit_reason.as_deref().unwrap_or("unknown")
                    ),
                ));
            }
        }
        Ok(vm)
    }

    /// Starts petrel for a claimed VM (or continues with its live petrel) and boots the VM.
    /// Launch failures are recorded (state failed, the reason) rather than returned.
    pub(crate) fn launch(&self, vm: &VmRecord) -> ApiResult<VmRecord> {
        let dir = VmDir::new(&self.config.state_dir, &vm.id);
        let socket = dir.socket();
        let proc = match self.runtime(&vm.id) {
            Some(rt) if rt.process.alive() => rt.process,
            _ => {
                let opts = match self.spawn_options(vm) {
                    Ok(o) => o,
                    Err(msg) => return self.record_failure(&vm.id, msg),
                };
                match launcher::spawn(&self.config.petrel, &dir, &vm.id, &vm.hypervisor, &opts) {
                    Ok(p) => p,
                    Err(msg) => return self.record_failure(&vm.id, msg),
                }
            }
        };
        let socket_text = socket.to_string_lossy().into_owned();
        self.store().modify_vm(&vm.id, |v| {
            v.pid = Some(proc.pid);
            v.pid_start = Some(proc.start);
            v.api_socket = Some(socket_text);
        })?;
        if self.runtime(&vm.id).is_none() {
            if let Err(e) = self.attach(&vm.id, proc, socket.clone()) {
                launcher::kill(proc);
                return self.record_failure(&vm.id, format!("watch petrel: {e}"));
            }
        }
        let client = launcher::client(&socket);
        let result = launcher::wait_ping(&client, proc, &dir).and_then(|()| {
            let jailed = self.config.jailer.is_some();
            launcher::boot(&client, &vm.config, &vm.net, &dir, jailed)
        });
        match result {
            Ok(state) => Ok(self.store().modify_vm(&vm.id, |v| {
                v.state = if state == "Paused" {
                    ObservedState::Paused
                } else {
                    ObservedState::Running
                };
            })?),
            Err(msg) => {
                launcher::kill(proc);
                self.detach(&vm.id);
                self.record_failure(&vm.id, msg)
            }
        }
    }

    /// The cgroup (made now, with the VM's limits), user and seccomp mode of `vm`'s petrel.
    pub(crate) fn spawn_options(&self, vm: &VmRecord) -> Result<SpawnOptions, String> {
        let cgroup = if self.config.cgroups {
            match cgroup::detect() {
                Some(h) => Some(
                    cgroup::create(&h, &vm.id, vm.config.memory.size, vm.config.cpus.boot_vcpus)
                        .map_err(|e| format!("cgroup: {e}"))?,
                ),
                None => {
                    log::info!(
                        "VM {}: no cgroup v2 or v1 memory+cpu hierarchy: running without limits",
                        vm.id
                    );
                    None
                }
            }
        } else {
            None
        };
        let jail = match &self.config.jailer {
            Some(jailer) => {
                let dir = VmDir::new(&self.config.state_dir, &vm.id);
                let effective = launcher::effective_config(&vm.config, &dir);
                let (_, binds) = crate::jail::plan(&effective, &dir)?;
                Some(crate::jail::Jail {
                    jailer: jailer.clone(),
                    binds,
                })
            }
            None => None,
        };
        Ok(SpawnOptions {
            cgroup,
            run_as: self.config.run_as,
            seccomp: self.config.seccomp.clone(),
            jail,
        })
    }

    pub(crate) fn record_failure(&self, id: &str, reason: String) -> ApiResult<VmRecord> {
        log::warn!("VM {id}: {reason}");
        Ok(self.store().modify_vm(id, |v| {
            v.state = ObservedState::Failed;
            v.exit_reason = Some(reason);
            v.pid = None;
            v.pid_start = None;
        })?)
    }

    /// `POST /v1/vms/{id}/start`.
    pub fn start_vm(&self, key: &str) -> ApiResult<VmRecord> {
        let id = self.get_vm(key)?.id;
        let _claim = self.claim(&id)?;
        let vm = self.get_vm(&id)?;
        match vm.state {
            ObservedState::Running | ObservedState::Starting => return Ok(vm),
            ObservedState::Paused => {
                return Err(ApiError::new(
                    409,
                    format!("VM {} is paused: resume it", vm.name),
                ))
            }
            _ => {}
        }
        self.check_space("start")?;
        {
            let _admission = lock(&self.admission);
            let limits = self.limits(&self.host());
            limits
                .admit(
                    self.allocation(Some(&id))?,
                    vm.config.memory.size,
                    u64::from(vm.config.cpus.boot_vcpus),
                )
                .map_err(|m| ApiError::new(422, m))?;
            self.store().modify_vm(&id, |v| {
                v.desired_state = DesiredState::Running;
                v.state = ObservedState::Starting;
                v.exit_reason = None;
            })?;
        }
        let vm = self.launch(&vm)?;
        if vm.state == ObservedState::Failed {
            let why = vm.exit_reason.unwrap_or_default();
            return Err(ApiError::new(500, format!("start {}: {why}", vm.name)));
        }
        Ok(vm)
    }

    /// Refuses `op` (which would use space on the state disk) while that disk is full: 507,
    /// saying what still works.
    pub(crate) fn check_space(&self, op: &str) -> ApiResult<()> {
        if self.store().space_low() {
            return Err(ApiError::new(
                507,
                format!(
                    "{op}: the state disk ({}) is full; free space (stop or delete VMs, which \
                     still work) and try again",
                    self.config.state_dir.display()
                ),
            ));
        }
        Ok(())
    }

    /// `POST /v1/vms/{id}/stop` (graceful for `timeout`, then forced) or `/kill` (`None`).
    pub fn stop_vm(&self, key: &str, timeout: Option<Duration>) -> ApiResult<VmRecord> {
        let id = self.get_vm(key)?.id;
        let _claim = self.claim(&id)?;
        let runtime = self.runtime(&id);
        let vm = self.store().modify_vm(&id, |v| {
            v.desired_state = DesiredState::Stopped;
            if runtime.is_some() {
                v.state = ObservedState::Stopping;
            } else if matches!(
                v.state,
                ObservedState::Starting | ObservedState::Running | ObservedState::Paused
            ) {
                v.state = ObservedState::Stopped;
            }
        })?;
        let Some(rt) = runtime else { return Ok(vm) };
        let reason = match timeout {
            Some(t) => launcher::stop(&launcher::client(&rt.socket), rt.process, t),
            None => {
                launcher::kill(rt.process);
                "killed by request".to_string()
            }
        };
        self.detach(&id);
        Ok(self.store().modify_vm(&id, |v| {
            v.state = ObservedState::Stopped;
            v.exit_reason = Some(reason);
            v.pid = None;
            v.pid_start = None;
        })?)
    }

    /// `pause`, `resume` or `reboot` through the VM's petrel.
    pub fn vm_action(&self, key: &str, action: &str) -> ApiResult<VmRecord> {
        let id = self.get_vm(key)?.id;
        let _claim = self.claim(&id)?;
        let vm = self.get_vm(&id)?;
        let (allowed, desired, after, op) = match action {
            "pause" => (
                vm.state == ObservedState::Running,
                DesiredState::Paused,
                ObservedState::Paused,
                Endpoint::VmPause,
            ),
            "resume" => (
                vm.state == ObservedState::Paused,
                DesiredState::Running,
                ObservedState::Running,
                Endpoint::VmResume,
            ),
            "reboot" => (
                matches!(vm.state, ObservedState::Running | ObservedState::Paused),
                DesiredState::Running,
                ObservedState::Running,
                Endpoint::VmReboot,
            ),
            other => return Err(ApiError::new(404, format!("no action {other:?}"))),
        };
        let rt = self.runtime(&id).filter(|_| allowed).ok_or_else(|| {
            ApiError::new(
                409,
                format!("{action}: not allowed while VM {} is {}", vm.name, vm.state),
            )
        })?;
        self.store().modify_vm(&id, |v| v.desired_state = desired)?;
        launcher::call(&launcher::client(&rt.socket), op, None)
            .map_err(|m| ApiError::new(502, format!("{action} {}: {m}", vm.name)))?;
        Ok(self.store().modify_vm(&id, |v| v.state = after)?)
    }

    /// `DELETE /v1/vms/{id}`: kills its petrel, removes its directory and its record.
    pub fn delete_vm(&self, key: &str) -> ApiResult<()> {
        let id = self.get_vm(key)?.id;
        let _claim = self.claim(&id)?;
        self.store()
            .modify_vm(&id, |v| v.desired_state = DesiredState::Deleted)?;
        self.finish_delete(&id)
    }

    /// The rest of a delete once recorded (also run by reconcile).
    pub(crate) fn finish_delete(&self, id: &str) -> ApiResult<()> {
        if let Some(rt) = self.detach(id) {
            launcher::kill(rt.process);
        } else if let Some(p) = self.recorded_process(id) {
            launcher::kill(p);
        }
        if let Ok(Some(vm)) = self.store().get_vm(id) {
            for n in &vm.net {
                net::remove_leftover(&n.tap);
            }
        }
        if self.config.cgroups {
            if let Some(h) = cgroup::detect() {
                cgroup::remove(&h, id);
            }
        }
        VmDir::new(&self.config.state_dir, id).remove();
        let nets = self.store().get_vm(id).ok().flatten().map(|v| v.net);
        let _guard = self.networks.lock();
        self.store().delete_vm(id)?;
        self.refresh_dhcp(&nets.unwrap_or_default());
        Ok(())
    }

    /// The process recorded for VM `id`, if it still runs.
    pub(crate) fn recorded_process(&self, id: &str) -> Option<ProcessId> {
        let vm = self.store().get_vm(id).ok()??;
        let p = ProcessId {
            pid: vm.pid?,
            start: vm.pid_start?,
        };
        p.alive().then_some(p)
    }

    /// The supervisor saw VM `id`'s petrel `proc` exit (`how`, if known). Returns the VM
    /// when its policy may restart it.
    pub(crate) fn handle_exit(
        &self,
        id: &str,
        proc: ProcessId,
        how: Option<String>,
    ) -> Option<VmRecord> {
        if self.runtime(id).map(|r| r.process) != Some(proc) {
            return None;
        }
        self.detach(id);
        let how = how
            .or_else(|| process::reap(proc.pid))
            .unwrap_or_else(|| "vanished (exit status unknown: not petreld's child)".into());
        let vm = self.store().get_vm(id).ok()??;
        let failed = matches!(
            vm.desired_state,
            DesiredState::Running | DesiredState::Paused
        );
        let reason = format!("petrel (pid {}) {how}", proc.pid);
        log::warn!("VM {} ({id}): {reason}", vm.name);
        let vm = self.record_end(id, failed, reason, |_| {})?;
        failed.then_some(vm)
    }

    /// Records that VM `id`'s petrel ended: failed or stopped, why, no process; `also` makes
    /// any further change in the same update. `None` when the store could not be updated.
    fn record_end(
        &self,
        id: &str,
        failed: bool,
        reason: String,
        also: impl FnOnce(&mut VmRecord),
    ) -> Option<VmRecord> {
        self.store()
            .modify_vm(id, |v| {
                v.state = if failed {
                    ObservedState::Failed
                } else {
                    ObservedState::Stopped
                };
                v.exit_reason = Some(reason);
                v.pid = None;
                v.pid_start = None;
                also(v);
            })
            .ok()
    }

    /// The supervisor saw VM `id`'s guest stop: its petrel is ended and the VM stopped, or
    /// failed when petrel says the guest crashed (triple fault) or petrel could not run it.
    /// Returns the VM and whether it failed, when its policy may restart it.
    pub(crate) fn handle_guest_stopped(&self, id: &str) -> Option<(VmRecord, bool)> {
        let rt = self.runtime(id)?;
        let client = launcher::client(&rt.socket);
        let end = launcher::vm_end_reason(&client);
        launcher::stop(&client, rt.process, Duration::ZERO);
        self.detach(id);
        let failed = end.as_deref().is_some_and(launcher::is_failure);
        let reason = match end.as_deref() {
            Some("triple-fault") => "guest triple fault".to_string(),
            Some("internal-error") => "petrel could not run the guest (internal error)".into(),
            Some("reset") => "guest reset".into(),
            Some("shutdown") => "shut down through petrel's API".into(),
            Some(other) if other != "poweroff" => format!("guest stopped ({other})"),
            _ => "guest powered off".into(),
        };
        if failed {
            log::warn!("VM {id}: {reason}");
        }
        let vm = self.record_end(id, failed, reason, |v| {
            if !failed && v.restart != RestartPolicy::Always {
                v.desired_state = DesiredState::Stopped;
            }
        })?;
        let restarts = if failed {
            vm.restart != RestartPolicy::Never
        } else {
            vm.restart == RestartPolicy::Always
        };
        restarts.then_some((vm, failed))
    }

    /// Restarts `vm` on its own thread if its policy says so (`failure`: petrel died, else
    /// the guest stopped), after a delay growing with its restart count.
    pub(crate) fn maybe_restart(self: &Arc<Self>, vm: VmRecord, failure: bool) {
        let wanted = match vm.restart {
            RestartPolicy::Never => false,
            RestartPolicy::OnFailure => failure,
            RestartPolicy::Always => true,
        };
        if !wanted || vm.desired_state != DesiredState::Running {
            return;
        }
        let delay = Duration::from_secs(u64::from(vm.restart_count).min(MAX_RESTART_DELAY_S));
        self.spawn_restart(&vm.id, delay, true);
    }

    /// Starts VM `id` again on its own thread after `delay` (if it still should run and is
    /// failed or stopped); `count` adds one to its restart count.
    pub(crate) fn spawn_restart(self: &Arc<Self>, id: &str, delay: Duration, count: bool) {
        let daemon = Arc::clone(self);
        let id = id.to_string();
        let spawned = std::thread::Builder::new()
            .name("restart".into())
            .spawn(move || {
                std::thread::sleep(delay);
                daemon.restart(&id, count);
            });
        if let Err(e) = spawned {
            log::error!("cannot start a restart thread: {e}");
        }
    }

    fn restart(&self, id: &str, count: bool) {
        let mut waited = Duration::ZERO;
        let claim = loop {
            if let Some(c) = self.try_claim(id) {
                break c;
            }
            if waited > Duration::from_secs(30) {
                log::warn!("VM {id}: busy, not restarted");
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
            waited += Duration::from_millis(100);
        };
        let Ok(vm) = self.get_vm(id) else { return };
        let restartable = matches!(vm.state, ObservedState::Failed | ObservedState::Stopped);
        if vm.desired_state != DesiredState::Running || !restartable {
            return;
        }
        log::info!("VM {} ({id}): restarting (policy {})", vm.name, vm.restart);
        let updated = self.store().modify_vm(id, |v| {
            v.restart_count += u32::from(count);
            v.state = ObservedState::Starting;
        });
        if let Ok(vm) = updated {
            if let Err(e) = self.launch(&vm) {
                log::error!("VM {id}: restart: {}", e.message);
            }
        }
        drop(claim);
    }
}

/// Takes the `net` entries without `tap` and `fds` out of a config (JSON): petreld makes
/// their taps. Their keys may be `id`, `mac` and `bridge`.
fn take_managed_nets(config: &mut serde_json::Value) -> Result<Vec<NetRequest>, String> {
    let Some(list) = config.get_mut("net").and_then(|n| n.as_array_mut()) else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    let mut kept = Vec::new();
    for (i, entry) in std::mem::take(list).into_iter().enumerate() {
        let managed = entry.get("tap").is_none_or(|v| v.is_null())
            && entry.get("fds").is_none_or(|v| v.is_null());
        if managed {
            let r: NetRequest = serde_json::from_value(entry)
                .map_err(|e| format!("config.net[{i}] (a tap petreld makes): {e}"))?;
            out.push(r);
        } else {
            kept.push(entry);
        }
    }
    *list = kept;
    Ok(out)
}

/// The interfaces of a new VM (400 for bad fields, 422 for what the host lacks).
fn plan_nets(id: &str, requests: &[NetRequest]) -> ApiResult<Vec<ManagedNet>> {
    if requests.is_empty() {
        return Ok(Vec::new());
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Err(ApiError::new(
            422,
            "net: petreld makes tap devices only when it runs as root (CAP_NET_ADMIN)",
        ));
    }
    net::plan(id, requests).map_err(|m| {
        let status = if m.contains(".bridge:") { 422 } else { 400 };
        ApiError::new(status, m)
    })
}

/// Validation and host checks of a VM config (400/422 naming the field).
pub fn check_config(config: &VmConfig) -> ApiResult<()> {
    config
        .validate()
        .map_err(|e| ApiError::new(400, format!("config.{e}")))?;
    if !config.payload.kernel.is_file() {
        return Err(ApiError::new(
            422,
            format!(
                "config.payload.kernel: {} is not a file",
                config.payload.kernel.display()
            ),
        ));
    }
    if let Some(initramfs) = &config.payload.initramfs {
        if !initramfs.is_file() {
            return Err(ApiError::new(
                422,
                format!(
                    "config.payload.initramfs: {} is not a file",
                    initramfs.display()
                ),
            ));
        }
    }
    Ok(())
}
