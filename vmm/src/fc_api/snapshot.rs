//! `PUT /snapshot/create` and `PUT /snapshot/load`: Firecracker's bodies onto petrel's
//! snapshots in the two-file layout (`snapshot_path` holds the state, `mem_file_path` or
//! `mem_backend.backend_path` guest RAM; see `docs/snapshot.md`).
//!
//! As Firecracker: create needs a Paused microVM, load needs a process where nothing
//! boot-specific was configured and no microVM started; the loaded microVM stays Paused unless
//! `resume_vm`. What petrel does not do is refused with a 400 naming it: `Diff` snapshots (no
//! dirty page tracking), the `Uffd` memory backend, `clock_realtime`.

use api::request::VmmRequest;
use serde::Deserialize;

use super::types::FcConfig;
use super::{FcApi, FcResult};
use crate::event_loop::EventLoop;
use crate::lifecycle::{OpError, SnapshotFiles, VmState, Vmm};

/// `snapshot_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum SnapshotType {
    /// All of guest memory.
    Full,
    /// Only what changed since the last snapshot (petrel: refused).
    Diff,
}

/// `PUT /snapshot/create`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotCreate {
    /// Where guest memory goes.
    pub mem_file_path: String,
    /// Where the microVM state goes.
    pub snapshot_path: String,
    /// `Full` (the default) or `Diff`.
    #[serde(default)]
    pub snapshot_type: Option<SnapshotType>,
}

/// `mem_backend.backend_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum BackendType {
    /// A memory file.
    File,
    /// A userfaultfd handler's socket (petrel: refused).
    Uffd,
}

/// `mem_backend`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemBackend {
    /// `File` or `Uffd`.
    pub backend_type: BackendType,
    /// The memory file (or the handler's socket).
    pub backend_path: String,
}

/// One of `network_overrides`: the tap an interface gets after the load.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkOverride {
    /// The interface.
    pub iface_id: String,
    /// Its new tap.
    pub host_dev_name: String,
}

/// `vsock_override`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockOverride {
    /// The vsock device's new Unix socket path.
    pub uds_path: String,
}

/// `PUT /snapshot/load`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotLoad {
    /// The state file.
    pub snapshot_path: String,
    /// The memory file (deprecated by Firecracker for `mem_backend`).
    #[serde(default)]
    pub mem_file_path: Option<String>,
    /// The memory backend.
    #[serde(default)]
    pub mem_backend: Option<MemBackend>,
    /// Deprecated spelling of `track_dirty_pages`.
    #[serde(default)]
    pub enable_diff_snapshots: Option<bool>,
    /// Dirty page tracking (petrel: only off).
    #[serde(default)]
    pub track_dirty_pages: Option<bool>,
    /// Resume the microVM once loaded.
    #[serde(default)]
    pub resume_vm: Option<bool>,
    /// Taps to use instead of the saved ones.
    #[serde(default)]
    pub network_overrides: Vec<NetworkOverride>,
    /// A vsock socket path to use instead of the saved one.
    #[serde(default)]
    pub vsock_override: Option<VsockOverride>,
    /// Advance the guest clock by the time since the snapshot (petrel: only off).
    #[serde(default)]
    pub clock_realtime: Option<bool>,
}

impl SnapshotLoad {
    /// The memory file, from exactly one of `mem_file_path` and `mem_backend`.
    fn memory_file(&self) -> FcResult<&str> {
        match (&self.mem_file_path, &self.mem_backend) {
            (Some(_), Some(_)) => Err("too many fields: either `mem_backend` or \
                 `mem_file_path` exclusively is required."
                .into()),
            (None, None) => {
                Err("missing field: either `mem_backend` or `mem_file_path` is required".into())
            }
            (Some(path), None) => Ok(path),
            (None, Some(b)) => match b.backend_type {
                BackendType::File => Ok(&b.backend_path),
                BackendType::Uffd => Err(load_err(
                    "the Uffd memory backend is not supported by petrel (use File)",
                )),
            },
        }
    }
}

fn create_err(why: impl std::fmt::Display) -> String {
    format!("Create snapshot error: {why}")
}

fn load_err(why: impl std::fmt::Display) -> String {
    format!("Load snapshot error: {why}")
}

impl FcApi {
    /// Whether anything boot-specific was configured (Firecracker then refuses a load).
    fn boot_configured(&self) -> bool {
        let c = &self.config;
        c.boot_source.is_some()
            || c.machine_config.is_some()
            || !c.drives.is_empty()
            || !c.network_interfaces.is_empty()
            || c.vsock.is_some()
            || c.entropy.is_some()
            || c.balloon.is_some()
    }

    /// `PUT /snapshot/create` (the microVM started).
    pub(super) fn snapshot_create(&mut self, vmm: &mut Vmm, req: SnapshotCreate) -> FcResult<()> {
        if req.snapshot_type == Some(SnapshotType::Diff) {
            return Err(create_err(
                "Diff snapshots are not supported by petrel (dirty page tracking is not \
                 implemented); create a Full snapshot",
            ));
        }
        if vmm.state() != VmState::Paused {
            return Err(create_err(
                "the microVM must be paused first (PATCH /vm {\"state\": \"Paused\"})",
            ));
        }
        let files = SnapshotFiles::Two {
            state: req.snapshot_path.into(),
            memory: req.mem_file_path.into(),
        };
        let mine = serde_json::to_value(&self.config).map_err(create_err)?;
        vmm.snapshot_to(&files, Some(mine))
            .map_err(|e| create_err(crate::error_chain(&e)))
    }

    /// `PUT /snapshot/load` (nothing started, nothing boot-specific configured).
    pub(super) fn snapshot_load(
        &mut self,
        vmm: &mut Vmm,
        event_loop: &mut EventLoop,
        req: SnapshotLoad,
    ) -> FcResult<()> {
        if self.boot_configured() {
            return Err(
                "Loading a microVM snapshot not allowed after configuring boot-specific resources."
                    .into(),
            );
        }
        let memory = req.memory_file()?.to_string();
        if req.enable_diff_snapshots == Some(true) || req.track_dirty_pages == Some(true) {
            return Err(load_err(
                "dirty page tracking (diff snapshots) is not supported by petrel",
            ));
        }
        if req.clock_realtime == Some(true) {
            return Err(load_err("clock_realtime is not supported by petrel"));
        }
        let files = SnapshotFiles::Two {
            state: req.snapshot_path.clone().into(),
            memory: memory.into(),
        };
        let overrides = req.network_overrides.clone();
        let vsock = req.vsock_override.clone();
        let adjust = |cfg: &mut api::VmConfig| -> Result<(), OpError> {
            for o in &overrides {
                let net = cfg
                    .net
                    .iter_mut()
                    .flatten()
                    .find(|n| n.id.as_deref() == Some(o.iface_id.as_str()));
                match net {
                    Some(net) => net.tap = Some(o.host_dev_name.clone()),
                    None => {
                        return Err(OpError::invalid(format!(
                            "network_overrides: the snapshot has no network interface {}",
                            o.iface_id
                        )))
                    }
                }
            }
            if let Some(v) = &vsock {
                match cfg.vsock.as_mut() {
                    Some(dev) => dev.socket = v.uds_path.clone().into(),
                    None => {
                        return Err(OpError::invalid(
                            "vsock_override: the snapshot has no vsock device",
                        ))
                    }
                }
            }
            Ok(())
        };
        let saved = vmm
            .restore_from(&files, false, adjust, event_loop)
            .map_err(|e| load_err(crate::error_chain(&e)))?;
        self.take_saved_config(saved, &req);
        if let Some(m) = self.config.mmds_config.clone() {
            self.put_mmds_config(m).map_err(load_err)?;
        }
        self.attach_mmds(vmm);
        if req.resume_vm == Some(true) {
            vmm.handle(VmmRequest::Resume, event_loop)
                .map_err(|e| load_err(crate::error_chain(&e)))?;
        }
        Ok(())
    }

    /// Takes back the configuration pieces saved with the snapshot (with the load's
    /// overrides), keeping this process's own logger and metrics.
    fn take_saved_config(&mut self, saved: Option<serde_json::Value>, req: &SnapshotLoad) {
        let Some(mut cfg) = saved.and_then(|v| serde_json::from_value::<FcConfig>(v).ok()) else {
            return;
        };
        for o in &req.network_overrides {
            if let Some(n) = cfg
                .network_interfaces
                .iter_mut()
                .find(|n| n.iface_id == o.iface_id)
            {
                n.host_dev_name = o.host_dev_name.clone();
            }
        }
        if let (Some(v), Some(dev)) = (&req.vsock_override, cfg.vsock.as_mut()) {
            dev.uds_path = v.uds_path.clone();
        }
        cfg.logger = self.config.logger.take();
        cfg.metrics = self.config.metrics.take();
        self.config = cfg;
    }
}
