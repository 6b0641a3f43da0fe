//! Live migration of a VM between two petrelds on one host (`POST /v1/vms/{id}/migrate
//! {"to": "/path/of/the/other/petreld.sock"}`).
//!
//! 1. The source records the operation (state `migrating`) and asks the destination petreld
//!    for a place (`POST /v1/migrations/incoming` with the VM's record): the destination
//!    records the VM as `incoming`, starts a petrel waiting in `vm.receive-migration` at a
//!    Unix socket in its own VM directory, and answers with that URL.
//! 2. The source's petrel is told `vm.send-migration` to it; it exits once the destination's
//!    petrel runs the VM. The destination petreld sees its `vm.receive-migration` answer and
//!    records the VM `running` (or, on failure, kills its petrel and forgets the VM).
//! 3. The source waits for the destination petreld to report the VM running, then records it
//!    `migrated` (kept as a record naming where it went). A failed send leaves it running here.
//!
//! A petreld killed mid-way finishes from the database: see [`Daemon::finish_migration`]
//! (source) and the `incoming` case of `reconcile` (destination).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::json;

use api::request::Endpoint;
use petrel_http::{Client, Method};

use super::launcher::{self, VmDir};
use super::model::{
    now, validate_vm_name, DesiredState, HypervisorRequest, ObservedState, RestartPolicy, VmRecord,
};
use super::ops::check_config;
use super::process::ProcessId;
use super::store::Operation;
use super::{lock, ApiError, ApiResult, Daemon};

/// How long the whole transfer may take.
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(600);
/// How long the destination's petrel waits for the source to connect.
const ACCEPT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the source waits for the destination to report the VM running after the send.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(30);

/// `POST /v1/vms/{id}/migrate`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MigrateVm {
    /// The destination petreld's API socket (on this host).
    pub to: PathBuf,
}

/// `POST /v1/migrations/incoming` (sent by a source petreld).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IncomingVm {
    /// The VM's id (kept across the move).
    pub id: String,
    /// Its name.
    pub name: String,
    /// Its labels.
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
    /// Its configuration (as given to the source).
    pub config: api::VmConfig,
    /// The hypervisor it runs on.
    pub hypervisor: String,
    /// Its restart policy.
    #[serde(default)]
    pub restart: RestartPolicy,
    /// Its template, description and tags.
    #[serde(default)]
    pub template: Option<String>,
    /// Its description, tags and template version.
    #[serde(default)]
    pub meta: crate::model::VmMeta,
}

fn peer(to: &Path) -> Client {
    Client::new(to).with_timeout(Duration::from_secs(30))
}

/// The VM `id` as the petreld at `to` reports it, if it has it.
fn remote_vm(to: &Path, id: &str) -> Result<Option<VmRecord>, String> {
    let r = peer(to)
        .get(&format!("/v1/vms/{id}"))
        .map_err(|e| format!("petreld at {}: {}", to.display(), launcher::chain(&e)))?;
    match r.status {
        200 => r
            .json_body()
            .map(Some)
            .map_err(|e| format!("petreld at {}: malformed VM: {e}", to.display())),
        404 => Ok(None),
        _ => Err(format!(
            "petreld at {}: {} {}",
            to.display(),
            r.status,
            r.error_message()
        )),
    }
}

impl Daemon {
    /// `POST /v1/vms/{id}/migrate`.
    pub fn migrate_vm(&self, key: &str, req: MigrateVm) -> ApiResult<VmRecord> {
        let id = self.get_vm(key)?.id;
        let _claim = self.claim(&id)?;
        let vm = self.get_vm(&id)?;
        let rt = self
            .runtime(&id)
            .filter(|_| matches!(vm.state, ObservedState::Running | ObservedState::Paused))
            .ok_or_else(|| {
                ApiError::new(
                    409,
                    format!("migrate: VM {} is {}; it must run", vm.name, vm.state),
                )
            })?;
        if !vm.net.is_empty() {
            return Err(ApiError::new(
                422,
                format!(
                    "migrate: VM {} has interfaces petreld made taps for; a migrated petrel \
                     cannot take tap descriptors yet",
                    vm.name
                ),
            ));
        }
        if !req.to.is_absolute() {
            return Err(ApiError::new(
                400,
                "to: an absolute path of a petreld socket",
            ));
        }
        let before = vm.state;
        self.store().begin_operation(&Operation {
            vm_id: id.clone(),
            kind: "migrate".into(),
            arg: req.to.to_string_lossy().into_owned(),
        })?;
        self.store()
            .modify_vm(&id, |v| v.state = ObservedState::Migrating)?;
        let undo = |status: u16, msg: String| -> ApiResult<VmRecord> {
            self.store().modify_vm(&id, |v| v.state = before)?;
            self.store().end_operation(&id)?;
            Err(ApiError::new(status, format!("migrate {}: {msg}", vm.name)))
        };
        let incoming = IncomingVm {
            id: vm.id.clone(),
            name: vm.name.clone(),
            labels: vm.labels.clone(),
            config: vm.config.clone(),
            hypervisor: vm.hypervisor.clone(),
            restart: vm.restart,
            template: vm.template.clone(),
            meta: vm.meta.clone(),
        };
        let body = serde_json::to_vec(&incoming).map_err(|e| ApiError::new(500, e.to_string()))?;
        let answer = peer(&req.to).request(Method::Post, "/v1/migrations/incoming", Some(&body));
        let receiver_url = match answer {
            Ok(r) if r.status == 201 => match r.json_body::<serde_json::Value>() {
                Ok(v) => v["receiver_url"].as_str().unwrap_or_default().to_string(),
                Err(e) => return undo(502, format!("the destination's answer: {e}")),
            },
            Ok(r) => {
                let status = if r.status < 500 { r.status } else { 502 };
                return undo(
                    status,
                    format!("the destination refused: {}", r.error_message()),
                );
            }
            Err(e) => {
                return undo(
                    502,
                    format!(
                        "no petreld answers at {}: {}",
                        req.to.display(),
                        launcher::chain(&e)
                    ),
                )
            }
        };
        let started = Instant::now();
        let send = json!({"destination_url": receiver_url, "local": true}).to_string();
        let sent = launcher::call(
            &Client::new(&rt.socket).with_timeout(TRANSFER_TIMEOUT),
            Endpoint::VmSendMigration,
            Some(send.as_bytes()),
        );
        if let Err(m) = sent {
            // The source petrel stays as it was (it says so when a send fails); whatever it
            // is now is what is recorded.
            let state = launcher::vm_state(&launcher::client(&rt.socket))
                .ok()
                .flatten();
            if state.is_none() && !rt.process.alive() {
                return self.finish_migration(&vm, &req.to, Some(rt.process));
            }
            let now_state = if state.as_deref() == Some("Paused") {
                ObservedState::Paused
            } else {
                before
            };
            self.store().modify_vm(&id, |v| v.state = now_state)?;
            self.store().end_operation(&id)?;
            return Err(ApiError::new(502, format!("migrate {}: {m}", vm.name)));
        }
        log::info!(
            "VM {} ({id}): sent to {} in {} ms",
            vm.name,
            req.to.display(),
            started.elapsed().as_millis()
        );
        self.finish_migration(&vm, &req.to, Some(rt.process))
    }

    /// The source's petrel `proc` is gone after a send to the petreld at `to`: records the VM
    /// `migrated` once that petreld reports it running, else `failed`. Ends the operation.
    pub(crate) fn finish_migration(
        &self,
        vm: &VmRecord,
        to: &Path,
        proc: Option<ProcessId>,
    ) -> ApiResult<VmRecord> {
        if let Some(rt) = self.detach(&vm.id) {
            launcher::kill(rt.process);
        } else if let Some(p) = proc.filter(ProcessId::alive) {
            launcher::kill(p);
        }
        if let Some(p) = proc {
            super::process::reap(p.pid);
        }
        log::info!(
            "VM {}: its petrel is gone; asking the petreld at {} whether it runs it",
            vm.id,
            to.display()
        );
        let deadline = Instant::now() + CONFIRM_TIMEOUT;
        let outcome = loop {
            match remote_vm(to, &vm.id) {
                Ok(Some(r))
                    if matches!(r.state, ObservedState::Running | ObservedState::Paused) =>
                {
                    break Ok(r.state)
                }
                Ok(Some(r)) if r.state == ObservedState::Incoming => {}
                Ok(Some(r)) => break Err(format!("the destination has it {}", r.state)),
                Ok(None) => break Err("the destination does not have it".to_string()),
                Err(e) => break Err(e),
            }
            if Instant::now() > deadline {
                break Err("the destination did not report it running".into());
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let to_text = to.display().to_string();
        let vm = self.store().modify_vm(&vm.id, |v| {
            v.pid = None;
            v.pid_start = None;
            match &outcome {
                Ok(_) => {
                    v.state = ObservedState::Migrated;
                    v.desired_state = DesiredState::Stopped;
                    v.exit_reason = Some(format!("migrated to the petreld at {to_text}"));
                }
                Err(why) => {
                    v.state = ObservedState::Failed;
                    v.exit_reason = Some(format!(
                        "petrel ended during the migration to {to_text}: {why}"
                    ));
                }
            }
        })?;
        self.store().end_operation(&vm.id)?;
        if outcome.is_ok() && self.config.cgroups {
            // The exited petrel may linger in its cgroup a moment: removed off the API path.
            let id = vm.id.clone();
            let _ = std::thread::Builder::new()
                .name("cgroup-cleanup".into())
                .spawn(move || {
                    if let Some(h) = super::cgroup::detect() {
                        super::cgroup::remove(&h, &id);
                    }
                });
        }
        Ok(vm)
    }

    /// `POST /v1/migrations/incoming`: records the VM `incoming`, starts its petrel waiting for
    /// it and answers `{"receiver_url", "vm"}`; a thread records the outcome.
    pub fn incoming_vm(self: &Arc<Self>, req: IncomingVm) -> ApiResult<(String, VmRecord)> {
        let bad = |m: String| ApiError::new(400, m);
        validate_vm_name(&req.name).map_err(bad)?;
        if !super::model::looks_like_id(&req.id) {
            return Err(bad(format!("id: {:?} is not a VM id", req.id)));
        }
        check_config(&req.config)?;
        self.check_space("migration")?;
        let claim = self.claim(&req.id)?;
        let t = now();
        let vm = VmRecord {
            id: req.id.clone(),
            name: req.name.clone(),
            labels: req.labels.clone(),
            desired_state: DesiredState::Running,
            state: ObservedState::Incoming,
            config: req.config.clone(),
            template: req.template.clone(),
            hypervisor_requested: HypervisorRequest::Auto,
            hypervisor: req.hypervisor.clone(),
            restart: req.restart,
            restart_count: 0,
            pid: None,
            pid_start: None,
            api_socket: None,
            exit_reason: None,
            net: Vec::new(),
            created_at: t.clone(),
            updated_at: t,
            meta: req.meta.clone(),
        };
        {
            let _admission = lock(&self.admission);
            self.limits(&self.host())
                .admit(
                    self.allocation(None)?,
                    vm.config.memory.size,
                    u64::from(vm.config.cpus.boot_vcpus),
                )
                .map_err(|m| ApiError::new(422, m))?;
            self.store().insert_vm(&vm)?;
        }
        let dir = VmDir::new(&self.config.state_dir, &vm.id);
        let receiver = dir.root.join("migration.sock");
        let started = self.start_receiver(&vm, &dir, &receiver);
        let (proc, pending) = match started {
            Ok(p) => p,
            Err(msg) => {
                self.forget_incoming(&vm.id, None);
                return Err(ApiError::new(500, format!("incoming {}: {msg}", vm.name)));
            }
        };
        let url = format!("unix:{}", receiver.display());
        drop(claim);
        let daemon = Arc::clone(self);
        let id = vm.id.clone();
        let socket = dir.socket();
        let spawned = std::thread::Builder::new()
            .name("incoming".into())
            .spawn(move || daemon.await_incoming(&id, proc, &socket, &receiver, pending));
        if let Err(e) = spawned {
            self.forget_incoming(&vm.id, Some(proc));
            return Err(ApiError::new(500, format!("incoming: a thread: {e}")));
        }
        Ok((url, vm))
    }

    /// Starts the petrel of incoming `vm` and its `vm.receive-migration` call (on a thread),
    /// returning once it listens at `receiver`.
    fn start_receiver(
        &self,
        vm: &VmRecord,
        dir: &VmDir,
        receiver: &Path,
    ) -> Result<(ProcessId, std::thread::JoinHandle<Result<(), String>>), String> {
        let opts = self.spawn_options(vm)?;
        let proc = launcher::spawn(&self.config.petrel, dir, &vm.id, &vm.hypervisor, &opts)?;
        let socket = dir.socket();
        let socket_text = socket.to_string_lossy().into_owned();
        let recorded = self.store().modify_vm(&vm.id, |v| {
            v.pid = Some(proc.pid);
            v.pid_start = Some(proc.start);
            v.api_socket = Some(socket_text);
        });
        let ready = recorded
            .map_err(|e| launcher::chain(&e))
            .and_then(|_| launcher::wait_ping(&launcher::client(&socket), proc, dir));
        if let Err(m) = ready {
            launcher::kill(proc);
            return Err(m);
        }
        let _ = std::fs::remove_file(receiver);
        let mut body = json!({"receiver_url": format!("unix:{}", receiver.display())});
        if let Some(serial) = launcher::serial_file(&vm.config, dir) {
            body["serial_file"] = json!(serial);
        }
        let c = Client::new(&socket).with_timeout(TRANSFER_TIMEOUT);
        let call = std::thread::Builder::new()
            .name("receive".into())
            .spawn(move || {
                launcher::call(
                    &c,
                    Endpoint::VmReceiveMigration,
                    Some(body.to_string().as_bytes()),
                )
                .map(drop)
            });
        let call = match call {
            Ok(c) => c,
            Err(e) => {
                launcher::kill(proc);
                return Err(format!("a thread: {e}"));
            }
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !receiver.exists() {
            if call.is_finished() || Instant::now() > deadline {
                launcher::kill(proc);
                let why = match call.join() {
                    Ok(Err(m)) => m,
                    _ => "petrel did not listen for the VM".into(),
                };
                return Err(why);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok((proc, call))
    }

    /// Waits for incoming VM `id`'s `vm.receive-migration` to end: running (watched from now
    /// on) or forgotten.
    fn await_incoming(
        &self,
        id: &str,
        proc: ProcessId,
        socket: &Path,
        receiver: &Path,
        pending: std::thread::JoinHandle<Result<(), String>>,
    ) {
        // petrel removes its listening socket once the source connects: a source that never
        // does (its petreld died first) leaves it, and the waiting petrel is ended.
        let listening = Instant::now();
        while !pending.is_finished() {
            if receiver.exists() && listening.elapsed() > ACCEPT_TIMEOUT {
                log::warn!("VM {id}: no source connected within {ACCEPT_TIMEOUT:?}");
                launcher::kill(proc);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let result = pending
            .join()
            .unwrap_or_else(|_| Err("the receiving thread panicked".into()));
        let _claim = loop {
            if let Some(c) = self.try_claim(id) {
                break c;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let state = result.and_then(|()| {
            launcher::vm_state(&launcher::client(socket))?
                .ok_or_else(|| "petrel has no VM after receiving it".to_string())
        });
        match state {
            Ok(s) => {
                if let Err(e) = self.attach(id, proc, socket.to_path_buf()) {
                    log::error!("VM {id}: watch petrel: {e}");
                }
                let observed = if s == "Paused" {
                    ObservedState::Paused
                } else {
                    ObservedState::Running
                };
                if let Err(e) = self.store().modify_vm(id, |v| v.state = observed) {
                    log::error!("VM {id}: record the received VM: {e}");
                }
                log::info!("VM {id}: received by migration, {s}");
            }
            Err(why) => {
                log::warn!("VM {id}: the migration did not arrive: {why}");
                self.forget_incoming(id, Some(proc));
            }
        }
    }

    /// Forgets incoming VM `id` whose migration failed: its petrel, directory and record.
    pub(crate) fn forget_incoming(&self, id: &str, proc: Option<ProcessId>) {
        if let Some(p) = proc.filter(ProcessId::alive) {
            launcher::kill(p);
        }
        if let Err(e) = self.finish_delete(id) {
            log::error!("VM {id}: forget the incoming VM: {}", e.message);
        }
    }
}
