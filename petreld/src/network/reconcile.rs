//! After a petreld start (a crash included): each stored network gets its bridge, table and
//! one dnsmasq back (adopted when still there, made again otherwise), interrupted deletes are
//! finished, and what this petreld made for no stored network (bridges, tables, dnsmasq
//! processes, directories) is removed. Then a thread restarts any network's dnsmasq that
//! dies, keeping its leases file.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use super::{dnsmasq, host, NetworkState};
use crate::Daemon;

/// How often the dnsmasq processes are checked.
const CHECK_INTERVAL: Duration = Duration::from_millis(500);

/// What reconciliation did, for the log.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Networks brought back (their pieces adopted or made).
    pub networks: usize,
    /// Interrupted deletes finished.
    pub deleted: usize,
    /// Leftovers removed (bridges, tables, dnsmasq processes, directories).
    pub removed: usize,
}

/// Reconciles every network; runs before the VMs are reconciled (their taps join bridges).
pub fn reconcile(daemon: &Daemon) -> Summary {
    let mut summary = Summary::default();
    let _guard = daemon.networks.lock();
    let nets = match daemon.store().all_networks() {
        Ok(n) => n,
        Err(e) => {
            log::error!("networks: cannot read them: {e}");
            return summary;
        }
    };
    let mut kept = BTreeSet::new();
    for net in &nets {
        if net.state == NetworkState::Deleting {
            match daemon.teardown(net) {
                Ok(()) => {
                    let _ = daemon.store().delete_network(&net.name);
                    summary.deleted += 1;
                }
                Err(e) => log::error!("network {}: finishing its delete: {e}", net.name),
            }
            continue;
        }
        kept.insert(net.name.clone());
        match daemon.provision(net) {
            Ok(()) => summary.networks += 1,
            Err(e) => log::error!("network {}: {e}", net.name),
        }
    }
    rejoin_taps(daemon);
    let owner = daemon.network_owner();
    let managed = |name: &str| {
        nets.iter()
            .any(|n| n.kind.managed() && n.state == NetworkState::Active && n.name == name)
    };
    for bridge in host::our_bridges(&owner) {
        let name = bridge.trim_start_matches(super::BRIDGE_PREFIX);
        if !managed(name) {
            log::warn!("networks: removing leftover bridge {bridge}");
            summary.removed += 1;
            if let Err(e) = host::remove_bridge(&bridge, &owner) {
                log::error!("networks: {e}");
            }
        }
    }
    for table in host::our_tables(&owner) {
        let name = table.trim_start_matches(super::TABLE_PREFIX);
        if !managed(name) {
            log::warn!("networks: removing leftover nftables table inet {table}");
            summary.removed += 1;
            if let Err(e) = host::remove_table(&table) {
                log::error!("networks: {e}");
            }
        }
    }
    for (name, p) in dnsmasq::all_under(&daemon.config.state_dir) {
        if !managed(&name) {
            log::warn!(
                "networks: ending leftover dnsmasq (pid {}) of {name}",
                p.pid
            );
            summary.removed += 1;
            dnsmasq::stop(p);
        }
    }
    if let Ok(dirs) = std::fs::read_dir(dnsmasq::networks_dir(&daemon.config.state_dir)) {
        for d in dirs.flatten() {
            let name = d.file_name().to_string_lossy().into_owned();
            if !kept.contains(&name) {
                summary.removed += 1;
                let _ = std::fs::remove_dir_all(d.path());
            }
        }
    }
    summary
}

/// The taps of running VMs (they live as long as their petrel) join their network's bridge
/// again: a bridge made again after it vanished has no ports.
fn rejoin_taps(daemon: &Daemon) {
    let Ok(vms) = daemon.store().all_vms() else {
        return;
    };
    for vm in vms {
        for n in vm.net.iter().filter(|n| n.network.is_some()) {
            let Some(bridge) = &n.bridge else { continue };
            match host::ensure_port(&n.tap, bridge) {
                Ok(true) => log::info!("VM {}: tap {} joined {bridge} again", vm.name, n.tap),
                Ok(false) => {}
                Err(e) => log::error!("VM {}: tap {}: {e}", vm.name, n.tap),
            }
        }
    }
}

/// Starts the thread that restarts a network's dnsmasq when it dies.
pub fn spawn_supervisor(daemon: Arc<Daemon>) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("network-supervisor".into())
        .spawn(move || loop {
            std::thread::sleep(CHECK_INTERVAL);
            check(&daemon);
        })
        .map(drop)
}

fn check(daemon: &Daemon) {
    let _guard = daemon.networks.lock();
    let Ok(nets) = daemon.store().all_networks() else {
        return;
    };
    for net in nets
        .iter()
        .filter(|n| n.kind.managed() && n.state == NetworkState::Active)
    {
        if let Err(e) = daemon.revive_dnsmasq(net) {
            log::error!("network {}: cannot restart dnsmasq: {e}", net.name);
        }
    }
}
