//! MMDS in Firecracker's dialect: `PUT /mmds/config` (and the config file's `mmds-config`),
//! `PUT`/`PATCH`/`GET /mmds`, `--metadata` and `--mmds-size-limit`. The data store and the
//! guest side are `devices::mmds`; this front end owns the store, checks Firecracker's rules
//! and hands the MMDS to the interfaces the config names (`Vmm::set_net_responders`).

use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};

use devices::mmds::stack::MmdsStack;
use devices::mmds::{Mmds, MmdsConfig, SharedMmds, StoreError, Version, DEFAULT_IPV4};
use petrel_http::{Dialect, Response};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{FcApi, FcResult};
use crate::lifecycle::{NetResponders, Vmm};

/// `mmds-config` / `PUT /mmds/config`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MmdsConfigBody {
    /// `V1` (default) or `V2`.
    #[serde(default)]
    pub version: Version,
    /// The interfaces the MMDS answers on.
    pub network_interfaces: Vec<String>,
    /// Its address (link-local; default 169.254.169.254).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv4_address: Option<String>,
    /// Always answer IMDS text.
    #[serde(default)]
    pub imds_compat: bool,
}

impl MmdsConfigBody {
    /// The address, checked to be link-local as Firecracker wants: 169.254.1.0 to
    /// 169.254.254.255.
    fn address(&self) -> FcResult<Ipv4Addr> {
        let Some(text) = &self.ipv4_address else {
            return Ok(DEFAULT_IPV4);
        };
        let ip: Ipv4Addr = text
            .parse()
            .map_err(|_| format!("The MMDS IPv4 address is not valid: {text}."))?;
        let [a, b, c, _] = ip.octets();
        if a != 169 || b != 254 || c == 0 || c == 255 {
            return Err(format!("The MMDS IPv4 address is not link local: {text}."));
        }
        Ok(ip)
    }
}

/// Firecracker's answer to a refused change: 413 when the store would outgrow its limit.
fn store_error(e: StoreError) -> Response {
    Dialect::Firecracker.error(
        413,
        &format!("MMDS limit exceeded error: The MMDS patch request doesn't fit ({e})."),
    )
}

/// A new, empty store.
pub fn new_store() -> SharedMmds {
    Arc::new(Mutex::new(Mmds::default()))
}

fn lock(m: &SharedMmds) -> std::sync::MutexGuard<'_, Mmds> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl FcApi {
    /// `--mmds-size-limit`: the store's limit, before anything is put.
    pub(super) fn set_mmds_size_limit(&mut self, limit: usize) {
        let config = lock(&self.mmds).config().clone();
        let mut store = Mmds::new(limit);
        store.set_config(config);
        self.mmds = Arc::new(Mutex::new(store));
    }

    /// `PUT /mmds/config` (before start).
    pub(super) fn put_mmds_config(&mut self, body: MmdsConfigBody) -> FcResult<()> {
        if body.network_interfaces.is_empty() {
            return Err(
                "The list of network interface IDs that allow forwarding MMDS requests is empty."
                    .into(),
            );
        }
        if let Some(unknown) = body.network_interfaces.iter().find(|id| {
            !self
                .config
                .network_interfaces
                .iter()
                .any(|n| &&n.iface_id == id)
        }) {
            return Err(format!(
                "The list of network interface IDs provided contains at least one ID that does \
                 not correspond to any existing network interface: {unknown}."
            ));
        }
        let ipv4 = body.address()?;
        lock(&self.mmds).set_config(MmdsConfig {
            version: body.version,
            ipv4,
            imds_compat: body.imds_compat,
        });
        self.config.mmds_config = Some(body);
        Ok(())
    }

    /// `PUT /mmds`.
    pub(super) fn put_mmds(&mut self, data: Value) -> Result<(), Response> {
        lock(&self.mmds).put(data).map_err(store_error)
    }

    /// `PATCH /mmds`.
    pub(super) fn patch_mmds(&mut self, patch: Value) -> Result<(), Response> {
        let mut m = lock(&self.mmds);
        if !m.is_initialised() {
            return Err(super::fault("The MMDS data store is not initialized."));
        }
        m.patch(patch).map_err(store_error)
    }

    /// `GET /mmds`.
    pub(super) fn get_mmds(&self) -> Value {
        lock(&self.mmds).data()
    }

    /// Gives the MMDS to the interfaces `mmds-config` names (none without one).
    pub(super) fn attach_mmds(&self, vmm: &mut Vmm) {
        let Some(cfg) = &self.config.mmds_config else {
            vmm.set_net_responders(None);
            return;
        };
        let ids = cfg.network_interfaces.clone();
        let store = self.mmds.clone();
        let responders: NetResponders = Arc::new(move |id: &str| {
            ids.iter().any(|i| i == id).then(|| {
                Box::new(MmdsStack::new(store.clone()))
                    as Box<dyn devices::virtio::net::LocalResponder>
            })
        });
        vmm.set_net_responders(Some(responders));
    }
}
