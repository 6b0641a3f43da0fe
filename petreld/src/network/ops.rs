//! The network operations behind `/v1/networks` and the VM side of networks: creating a
//! network (recorded first, then made; undone on failure), deleting one (refused while VMs
//! use it), binding a new VM's interfaces to their networks (bridge, fixed address, MAC
//! checks) and keeping each dnsmasq's `dhcp-host` entries in step with the VMs.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use serde_json::json;

use super::dnsmasq::{self, Paths, Reservation};
use super::{host, plan, CreateNetwork, Network, NetworkState, Server, Subnet};
use crate::model::now;
use crate::net::ManagedNet;
use crate::{ApiError, ApiResult, Daemon};

impl Daemon {
    /// What marks the host objects this petreld owns (its state directory).
    pub fn network_owner(&self) -> String {
        self.config.state_dir.display().to_string()
    }

    fn network_paths(&self, name: &str) -> Paths {
        Paths::new(&self.config.state_dir, name)
    }

    /// `POST /v1/networks`: checked, recorded, then made; on failure everything made is
    /// removed and the record too.
    pub fn create_network(&self, req: CreateNetwork) -> ApiResult<Network> {
        let net = plan(&req, now()).map_err(|m| ApiError::new(400, m))?;
        self.check_space("network create")?;
        let _guard = self.networks.lock();
        if self.store().get_network(&net.name)?.is_some() {
            return Err(ApiError::new(
                409,
                format!("network name {:?} is already in use", net.name),
            ));
        }
        if let Some(subnet) = net.subnet {
            self.check_overlap(&net.name, subnet)?;
        }
        match req.kind {
            super::NetworkKind::Bridged => {
                if !host::is_bridge(&net.bridge) {
                    return Err(ApiError::new(
                        422,
                        format!("bridge: no bridge {:?} on this host", net.bridge),
                    ));
                }
            }
            _ => {
                if let Some(l) = host::link(&net.bridge) {
                    if !host::is_ours(&l, &self.network_owner()) {
                        return Err(ApiError::new(
                            409,
                            format!(
                                "name: interface {} already exists on this host and is not \
                                 petreld's",
                                net.bridge
                            ),
                        ));
                    }
                }
            }
        }
        self.store().insert_network(&net)?;
        if let Err(e) = self.provision(&net) {
            log::warn!("network {}: {e}; undoing", net.name);
            if let Err(t) = self.teardown(&net) {
                log::error!("network {}: undo: {t}", net.name);
            }
            self.store().delete_network(&net.name)?;
            return Err(ApiError::new(
                500,
                format!("network {}: {e} (nothing was kept)", net.name),
            ));
        }
        log::info!("network {} ({:?}) created", net.name, net.kind);
        Ok(net)
    }

    /// 409 when `subnet` overlaps another network's or a host route (not one of petreld's
    /// bridges).
    fn check_overlap(&self, name: &str, subnet: Subnet) -> ApiResult<()> {
        for other in self.store().all_networks()? {
            if let Some(s) = other.subnet.filter(|s| s.overlaps(subnet)) {
                return Err(ApiError::new(
                    409,
                    format!("subnet: {subnet} overlaps network {:?} ({s})", other.name),
                ));
            }
        }
        let routes = host::run("ip", &["-j", "-4", "route", "show", "table", "all"], None)
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok());
        for r in routes
            .as_ref()
            .and_then(|v| v.as_array())
            .into_iter()
            .flatten()
        {
            let (Some(dst), Some(dev)) = (r["dst"].as_str(), r["dev"].as_str()) else {
                continue;
            };
            if dev == format!("{}{name}", super::BRIDGE_PREFIX)
                || r["type"] == "local"
                || r["type"] == "broadcast"
            {
                continue;
            }
            let parsed = match dst.split_once('/') {
                Some(_) => dst.parse::<Subnet>().ok(),
                None => dst.parse::<Ipv4Addr>().ok().map(|a| Subnet {
                    addr: a,
                    prefix: 32,
                }),
            };
            if parsed.is_some_and(|s| s.overlaps(subnet)) {
                return Err(ApiError::new(
                    409,
                    format!("subnet: {subnet} overlaps the host's route {dst} on {dev}"),
                ));
            }
        }
        Ok(())
    }

    /// `GET /v1/networks`.
    pub fn list_networks(&self) -> ApiResult<serde_json::Value> {
        let nets = self.store().all_networks()?;
        let items: Vec<serde_json::Value> = nets.iter().map(|n| self.network_json(n)).collect();
        Ok(json!({ "items": items }))
    }

    /// `GET /v1/networks/{name}`: the network, its VMs, its dnsmasq and leases.
    pub fn get_network(&self, name: &str) -> ApiResult<serde_json::Value> {
        let net = self
            .store()
            .get_network(name)?
            .ok_or_else(|| no_network(name))?;
        Ok(self.network_json(&net))
    }

    fn network_json(&self, net: &Network) -> serde_json::Value {
        let mut v = serde_json::to_value(net).unwrap_or_default();
        v["vms"] = json!(self.network_users(&net.name).unwrap_or_default());
        if net.kind.managed() {
            let server = self.networks.server(&net.name);
            v["dnsmasq"] = json!({
                "pid": server.map(|s| s.process.pid),
                "running": server.is_some_and(|s| s.process.alive()),
                "restarts": server.map_or(0, |s| s.restarts),
            });
            v["leases"] = json!(dnsmasq::leases(&self.network_paths(&net.name)));
        }
        v
    }

    /// The names of the VMs with an interface on network `name`.
    fn network_users(&self, name: &str) -> ApiResult<Vec<String>> {
        Ok(self
            .store()
            .all_vms()?
            .into_iter()
            .filter(|vm| vm.net.iter().any(|n| n.network.as_deref() == Some(name)))
            .map(|vm| vm.name)
            .collect())
    }

    /// `DELETE /v1/networks/{name}`: 409 naming the VMs while any uses it.
    pub fn delete_network(&self, name: &str) -> ApiResult<()> {
        let _guard = self.networks.lock();
        let mut net = self
            .store()
            .get_network(name)?
            .ok_or_else(|| no_network(name))?;
        let users = self.network_users(name)?;
        if !users.is_empty() {
            return Err(ApiError::new(
                409,
                format!(
                    "network {name} is used by VM{} {}: delete them (or their interfaces) first",
                    if users.len() == 1 { "" } else { "s" },
                    users.join(", ")
                ),
            ));
        }
        net.state = NetworkState::Deleting;
        self.store().update_network(&net)?;
        self.teardown(&net)
            .map_err(|e| ApiError::new(500, format!("network {name}: {e}")))?;
        self.store().delete_network(name)?;
        log::info!("network {name} deleted");
        Ok(())
    }

    /// Makes or adopts everything network `net` needs: bridge, table, dnsmasq (one).
    pub(crate) fn provision(&self, net: &Network) -> Result<(), String> {
        if !net.kind.managed() {
            if !host::is_bridge(&net.bridge) {
                log::warn!(
                    "network {}: host bridge {} is missing",
                    net.name,
                    net.bridge
                );
            }
            return Ok(());
        }
        let owner = self.network_owner();
        host::ensure_bridge(net, &owner)?;
        host::apply_table(net, &owner)?;
        self.ensure_dnsmasq(net, false)
    }

    /// Writes network `net`'s dnsmasq configuration and makes sure exactly one dnsmasq runs
    /// it: the recorded or pid-file one is adopted (restarted when the configuration changed
    /// or `restart`), any other is ended.
    fn ensure_dnsmasq(&self, net: &Network, restart: bool) -> Result<(), String> {
        let paths = self.network_paths(&net.name);
        let hosts = self.reservations(&net.name).map_err(|e| e.message)?;
        let changed = dnsmasq::write_conf(&paths, &dnsmasq::render_conf(net, &paths, &hosts))?;
        let known = self.networks.server(&net.name);
        let current = known
            .map(|s| s.process)
            .filter(|p| p.alive())
            .or_else(|| dnsmasq::find(&paths));
        for (name, p) in dnsmasq::all_under(&self.config.state_dir) {
            if name == net.name && Some(p) != current {
                log::warn!(
                    "network {}: ending a second dnsmasq (pid {})",
                    net.name,
                    p.pid
                );
                dnsmasq::stop(p);
            }
        }
        let restarts = known.map_or(0, |s| s.restarts);
        let process = match current {
            Some(p) if !changed && !restart => p,
            Some(p) => {
                dnsmasq::stop(p);
                dnsmasq::start(&paths)?
            }
            None => dnsmasq::start(&paths)?,
        };
        self.networks
            .set_server(&net.name, Some(Server { process, restarts }));
        Ok(())
    }

    /// Restarts network `name`'s dnsmasq if it died (the supervisor); whether it did.
    pub(crate) fn revive_dnsmasq(&self, net: &Network) -> Result<bool, String> {
        let Some(s) = self.networks.server(&net.name) else {
            self.ensure_dnsmasq(net, false)?;
            return Ok(true);
        };
        if s.process.alive() {
            return Ok(false);
        }
        crate::process::reap(s.process.pid);
        log::warn!(
            "network {}: dnsmasq (pid {}) died; restarting it (leases kept in {})",
            net.name,
            s.process.pid,
            self.network_paths(&net.name).leases.display()
        );
        let paths = self.network_paths(&net.name);
        let process = dnsmasq::start(&paths)?;
        self.networks.set_server(
            &net.name,
            Some(Server {
                process,
                restarts: s.restarts + 1,
            }),
        );
        Ok(true)
    }

    /// Removes what petreld made for `net` (a bridged network has nothing).
    pub(crate) fn teardown(&self, net: &Network) -> Result<(), String> {
        let paths = self.network_paths(&net.name);
        if let Some(s) = self.networks.server(&net.name) {
            dnsmasq::stop(s.process);
        }
        for (name, p) in dnsmasq::all_under(&self.config.state_dir) {
            if name == net.name {
                dnsmasq::stop(p);
            }
        }
        self.networks.set_server(&net.name, None);
        if net.kind.managed() {
            host::remove_table(&host::table_name(&net.name))?;
            host::remove_bridge(&net.bridge, &self.network_owner())?;
        }
        match std::fs::remove_dir_all(&paths.dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(format!("{}: {e}", paths.dir.display()))
            }
            _ => Ok(()),
        }
    }

    /// The fixed addresses of network `name`'s interfaces.
    fn reservations(&self, name: &str) -> ApiResult<Vec<Reservation>> {
        let mut out: Vec<Reservation> = Vec::new();
        for vm in self.store().all_vms()? {
            for n in vm.net.iter().filter(|n| n.network.as_deref() == Some(name)) {
                let Some(ip) = n.ip else { continue };
                let named = out.iter().any(|r| r.hostname.as_deref() == Some(&vm.name));
                out.push(Reservation {
                    mac: n.mac.clone(),
                    ip,
                    hostname: (dnsmasq::is_label(&vm.name) && !named).then(|| vm.name.clone()),
                });
            }
        }
        Ok(out)
    }

    /// Binds a new VM's interfaces to their networks (the caller holds the network lock):
    /// the bridge to join, fixed addresses inside the subnet and unused, MACs unique on the
    /// network. Errors name the interface (`net[1].ip: …`).
    pub(crate) fn bind_networks(&self, nets: &mut [ManagedNet]) -> ApiResult<()> {
        let vms = self.store().all_vms()?;
        for i in 0..nets.len() {
            let Some(name) = nets[i].network.clone() else {
                continue;
            };
            let net = self
                .store()
                .get_network(&name)?
                .filter(|n| n.state == NetworkState::Active)
                .ok_or_else(|| {
                    ApiError::new(422, format!("net[{i}].network: no network {name:?}"))
                })?;
            nets[i].bridge = Some(net.bridge.clone());
            if nets[i].vlan.is_some() {
                if net.kind.managed() {
                    return Err(ApiError::new(
                        400,
                        format!("net[{i}].vlan: VLANs are for bridged networks ({name} is not)"),
                    ));
                }
                if !crate::net::vlan_filtering(&net.bridge) {
                    return Err(ApiError::new(
                        422,
                        format!(
                            "net[{i}].vlan: bridge {} of network {name} has VLAN filtering off \
                             (ip link set dev {} type bridge vlan_filtering 1)",
                            net.bridge, net.bridge
                        ),
                    ));
                }
            }
            let others = vms
                .iter()
                .flat_map(|vm| vm.net.iter().map(move |n| (vm.name.as_str(), n)))
                .chain(nets[..i].iter().map(|n| ("this VM", n)))
                .filter(|(_, n)| n.network.as_deref() == Some(name.as_str()));
            for (vm, other) in others {
                if other.mac == nets[i].mac {
                    return Err(ApiError::new(
                        409,
                        format!(
                            "net[{i}].mac: {} is used on network {name} by {vm}",
                            nets[i].mac
                        ),
                    ));
                }
                if nets[i].ip.is_some() && other.ip == nets[i].ip {
                    return Err(ApiError::new(
                        409,
                        format!(
                            "net[{i}].ip: {} is reserved on network {name} by {vm}",
                            other.ip.unwrap_or(Ipv4Addr::UNSPECIFIED)
                        ),
                    ));
                }
            }
            if let Some(ip) = nets[i].ip {
                let ok = match (net.subnet, net.gateway) {
                    (Some(s), Some(gw)) => s.is_host(ip) && ip != gw,
                    _ => false,
                };
                if !ok {
                    let within = net
                        .subnet
                        .map_or("a network without a subnet".to_string(), |s| {
                            format!("{s} other than the gateway")
                        });
                    return Err(ApiError::new(
                        400,
                        format!(
                            "net[{i}].ip: {ip} is not a host address of {within} (network {name})"
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Rewrites the dnsmasq configuration of the networks `nets` use after a VM came or went
    /// (the caller holds the network lock); failures are logged.
    pub(crate) fn refresh_dhcp(&self, nets: &[ManagedNet]) {
        let names: BTreeSet<&str> = nets.iter().filter_map(|n| n.network.as_deref()).collect();
        for name in names {
            let net = match self.store().get_network(name) {
                Ok(Some(n)) if n.kind.managed() && n.state == NetworkState::Active => n,
                _ => continue,
            };
            if let Err(e) = self.ensure_dnsmasq(&net, false) {
                log::error!("network {name}: dnsmasq: {e}");
            }
        }
    }
}

fn no_network(name: &str) -> ApiError {
    ApiError::new(404, format!("no network {name:?}"))
}
