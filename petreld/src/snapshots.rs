//! A VM's snapshots: taken through its petrel (`vm.pause`, `vm.snapshot`, `vm.resume`) into
//! `<state dir>/vms/<id>/snapshots/<name>/`, listed and deleted, and a VM reverted to one (a
//! new petrel restores it with `vm.restore`). Each step is written to the database before it
//! is done: a snapshot stays `creating` until its files are complete, and a revert is an
//! operation a restarted petreld finishes ([`Daemon::finish_revert`]).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use api::request::Endpoint;
use petrel_http::Client;

use super::launcher::{self, VmDir};
use super::model::{now, validate_name, DesiredState, ObservedState, VmRecord};
use super::store::{Operation, SnapshotRecord};
use super::{lock, new_id, ApiError, ApiResult, Daemon};

/// How long a snapshot or a restore may take in petrel (its API gives up after 60 s).
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(90);

/// `POST /v1/vms/{id}/snapshots`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateSnapshot {
    /// Unique per VM (default `snap-` and 8 hex digits).
    #[serde(default)]
    pub name: Option<String>,
}

/// `POST /v1/vms` with `snapshot`: a new VM made from another VM's snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotRef {
    /// The VM (id or name) whose snapshot it is.
    pub vm: String,
    /// The snapshot's name.
    pub name: String,
}

/// `POST /v1/vms/{id}/revert`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevertVm {
    /// The snapshot to go back to.
    pub snapshot: String,
}

/// The directory of snapshot `name` of the VM in `dir`.
pub fn snapshot_dir(dir: &VmDir, name: &str) -> PathBuf {
    dir.root.join("snapshots").join(name)
}

/// Bytes the files under `dir` take on disk (allocated blocks: memory files are sparse).
pub fn disk_usage(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.blocks() * 512)
        .sum()
}

fn client(socket: &Path) -> Client {
    Client::new(socket).with_timeout(SNAPSHOT_TIMEOUT)
}

fn gateway(what: &'static str, vm: &VmRecord) -> impl FnOnce(String) -> ApiError {
    let name = vm.name.clone();
    move |m| ApiError::new(502, format!("{what} {name}: {m}"))
}

impl Daemon {
    /// `POST /v1/vms/{id}/snapshots`: pauses a running VM, writes its snapshot, resumes it.
    pub fn create_snapshot(&self, key: &str, req: CreateSnapshot) -> ApiResult<SnapshotRecord> {
        let id = self.get_vm(key)?.id;
        let name = req
            .name
            .unwrap_or_else(|| format!("snap-{}", &new_id()[..8]));
        validate_name("name", &name).map_err(|m| ApiError::new(400, m))?;
        self.check_space("snapshot")?;
        let _claim = self.claim(&id)?;
        let vm = self.get_vm(&id)?;
        let rt = self
            .runtime(&id)
            .filter(|_| matches!(vm.state, ObservedState::Running | ObservedState::Paused))
            .ok_or_else(|| {
                ApiError::new(
                    409,
                    format!(
                        "snapshot: VM {} is {}; only a running or paused VM can be snapshotted",
                        vm.name, vm.state
                    ),
                )
            })?;
        let mut record = SnapshotRecord {
            vm_id: id.clone(),
            name: name.clone(),
            state: "creating".into(),
            size_bytes: 0,
            created_at: now(),
        };
        self.store().insert_snapshot(&record)?;
        let dir = snapshot_dir(&VmDir::new(&self.config.state_dir, &id), &name);
        let written = self.write_snapshot(&vm, &rt.socket, &dir);
        if let Err(e) = written {
            let _ = std::fs::remove_dir_all(&dir);
            self.store().delete_snapshot(&id, &name)?;
            return Err(e);
        }
        record.size_bytes = disk_usage(&dir);
        record.state = "ready".into();
        self.store().snapshot_ready(&id, &name, record.size_bytes)?;
        log::info!(
            "VM {} ({id}): snapshot {name} written ({} KiB)",
            vm.name,
            record.size_bytes >> 10
        );
        Ok(record)
    }

    fn write_snapshot(&self, vm: &VmRecord, socket: &Path, dir: &Path) -> ApiResult<()> {
        let _ = std::fs::remove_dir_all(dir);
        let made = std::fs::DirBuilder::new()
            .recursive(true)
            .create(dir)
            .and_then(|()| match self.config.run_as {
                Some(who) => {
                    std::os::unix::fs::chown(dir, Some(who.uid), Some(who.gid)).and_then(|()| {
                        std::os::unix::fs::chown(
                            dir.parent().unwrap_or(dir),
                            Some(who.uid),
                            Some(who.gid),
                        )
                    })
                }
                None => Ok(()),
            });
        made.map_err(|e| ApiError::new(500, format!("create {}: {e}", dir.display())))?;
        let c = client(socket);
        let was_running = vm.state == ObservedState::Running;
        if was_running {
            launcher::call(&c, Endpoint::VmPause, None).map_err(gateway("snapshot", vm))?;
        }
        let body = serde_json::json!({"destination_url": format!("file://{}", dir.display())});
        let taken = launcher::call(&c, Endpoint::VmSnapshot, Some(body.to_string().as_bytes()))
            .map_err(gateway("snapshot", vm));
        if was_running {
            launcher::call(&c, Endpoint::VmResume, None).map_err(gateway("resume", vm))?;
        }
        taken.map(drop)
    }

    /// The snapshot directory a new VM is made from (`POST /v1/vms` with `snapshot`): it must
    /// be ready, and its VM must have no interfaces petreld made taps for.
    pub fn snapshot_source(&self, from: &SnapshotRef) -> ApiResult<(VmRecord, PathBuf)> {
        let vm = self
            .store()
            .get_vm(&from.vm)?
            .ok_or_else(|| ApiError::new(422, format!("snapshot.vm: no VM {:?}", from.vm)))?;
        let snap = self
            .store()
            .get_snapshot(&vm.id, &from.name)?
            .filter(|s| s.state == "ready")
            .ok_or_else(|| {
                ApiError::new(
                    422,
                    format!(
                        "snapshot.name: VM {} has no snapshot {:?}",
                        vm.name, from.name
                    ),
                )
            })?;
        if !vm.net.is_empty() {
            return Err(ApiError::new(
                422,
                format!(
                    "snapshot: VM {} has interfaces petreld made taps for; petreld does not \
                     pass restored petrels new taps yet",
                    vm.name
                ),
            ));
        }
        let dir = snapshot_dir(&VmDir::new(&self.config.state_dir, &vm.id), &snap.name);
        Ok((vm, dir))
    }

    /// `GET /v1/vms/{id}/snapshots`.
    pub fn list_snapshots(&self, key: &str) -> ApiResult<Vec<SnapshotRecord>> {
        let id = self.get_vm(key)?.id;
        Ok(self.store().list_snapshots(Some(&id))?)
    }

    /// `GET /v1/vms/{id}/snapshots/{name}`.
    pub fn get_snapshot(&self, key: &str, name: &str) -> ApiResult<SnapshotRecord> {
        let vm = self.get_vm(key)?;
        self.store()
            .get_snapshot(&vm.id, name)?
            .ok_or_else(|| no_snapshot(&vm, name))
    }

    /// `DELETE /v1/vms/{id}/snapshots/{name}`: the record, then the files.
    pub fn delete_snapshot(&self, key: &str, name: &str) -> ApiResult<()> {
        let id = self.get_vm(key)?.id;
        let _claim = self.claim(&id)?;
        let vm = self.get_vm(&id)?;
        if !self.store().delete_snapshot(&id, name)? {
            return Err(no_snapshot(&vm, name));
        }
        let dir = snapshot_dir(&VmDir::new(&self.config.state_dir, &id), name);
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                log::warn!("snapshot {name}: remove {}: {e}", dir.display());
            }
        }
        Ok(())
    }

    /// `POST /v1/vms/{id}/revert`: the VM's petrel (if any) is replaced by one that restores
    /// the snapshot and resumes it.
    pub fn revert_vm(&self, key: &str, req: RevertVm) -> ApiResult<VmRecord> {
        let id = self.get_vm(key)?.id;
        let _claim = self.claim(&id)?;
        let vm = self.get_vm(&id)?;
        let snap = self
            .store()
            .get_snapshot(&id, &req.snapshot)?
            .ok_or_else(|| no_snapshot(&vm, &req.snapshot))?;
        if snap.state != "ready" {
            return Err(ApiError::new(
                409,
                format!("snapshot {} of VM {} is not complete", snap.name, vm.name),
            ));
        }
        if !vm.net.is_empty() {
            return Err(ApiError::new(
                422,
                format!(
                    "revert: VM {} has interfaces petreld made taps for; a restored petrel \
                     cannot take tap descriptors yet",
                    vm.name
                ),
            ));
        }
        let snap_dir = snapshot_dir(&VmDir::new(&self.config.state_dir, &id), &snap.name);
        if matches!(vm.state, ObservedState::Migrating | ObservedState::Migrated) {
            return Err(ApiError::new(
                409,
                format!("revert: VM {} is {}", vm.name, vm.state),
            ));
        }
        {
            let _admission = lock(&self.admission);
            self.limits(&self.host())
                .admit(
                    self.allocation(Some(&id))?,
                    vm.config.memory.size,
                    u64::from(vm.config.cpus.boot_vcpus),
                )
                .map_err(|m| ApiError::new(422, m))?;
            self.store().begin_operation(&Operation {
                vm_id: id.clone(),
                kind: "revert".into(),
                arg: snap_dir.to_string_lossy().into_owned(),
            })?;
            self.store().modify_vm(&id, |v| {
                v.desired_state = DesiredState::Running;
                v.state = ObservedState::Starting;
                v.exit_reason = None;
            })?;
        }
        if let Some(rt) = self.detach(&id) {
            launcher::kill(rt.process);
        }
        let vm = self.finish_revert(&vm, &snap_dir)?;
        if vm.state == ObservedState::Failed {
            let why = vm.exit_reason.unwrap_or_default();
            return Err(ApiError::new(
                500,
                format!("revert {} to {}: {why}", vm.name, snap.name),
            ));
        }
        Ok(vm)
    }

    /// Starts a petrel for claimed VM `vm` (which has none) that restores the snapshot in
    /// `snap` (its own or, for a VM made from a snapshot, another VM's) and runs it; ends the
    /// revert operation. Failures are recorded (state failed).
    pub(crate) fn finish_revert(&self, vm: &VmRecord, snap: &Path) -> ApiResult<VmRecord> {
        let dir = VmDir::new(&self.config.state_dir, &vm.id);
        let name = snap
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let result = self.restore_into_new_petrel(vm, &dir, snap);
        self.store().end_operation(&vm.id)?;
        match result {
            Ok(()) => Ok(self.store().modify_vm(&vm.id, |v| {
                v.state = ObservedState::Running;
                v.exit_reason = None;
            })?),
            Err(msg) => {
                if let Some(rt) = self.detach(&vm.id) {
                    launcher::kill(rt.process);
                }
                self.record_failure(&vm.id, format!("revert to snapshot {name}: {msg}"))
            }
        }
    }

    fn restore_into_new_petrel(
        &self,
        vm: &VmRecord,
        dir: &VmDir,
        snap: &Path,
    ) -> Result<(), String> {
        if !snap.join("snapshot.json").is_file() {
            return Err(format!("{} holds no complete snapshot", snap.display()));
        }
        let opts = self.spawn_options(vm)?;
        let proc = launcher::spawn(&self.config.petrel, dir, &vm.id, &vm.hypervisor, &opts)?;
        let socket = dir.socket();
        let socket_text = socket.to_string_lossy().into_owned();
        self.store()
            .modify_vm(&vm.id, |v| {
                v.pid = Some(proc.pid);
                v.pid_start = Some(proc.start);
                v.api_socket = Some(socket_text);
            })
            .map_err(|e| launcher::chain(&e))?;
        self.attach(&vm.id, proc, socket.clone())
            .map_err(|e| format!("watch petrel: {e}"))?;
        let c = client(&socket);
        launcher::wait_ping(&c, proc, dir)?;
        let mut body = serde_json::json!({
            "source_url": format!("file://{}", snap.display()),
            "resume": true,
        });
        if let Some(serial) = launcher::serial_file(&vm.config, dir) {
            body["serial_file"] = serde_json::json!(serial);
        }
        launcher::call(&c, Endpoint::VmRestore, Some(body.to_string().as_bytes()))?;
        Ok(())
    }
}

fn no_snapshot(vm: &VmRecord, name: &str) -> ApiError {
    ApiError::new(404, format!("VM {} has no snapshot {name:?}", vm.name))
}
