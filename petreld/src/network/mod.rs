//! Virtual networks petreld owns (`/v1/networks`): `nat` (a petreld-made bridge with a subnet,
//! masquerading through an nftables table, DHCP and DNS by one dnsmasq), `isolated` (bridge
//! and DHCP, nothing forwarded in or out) and `bridged` (an existing host bridge, used as is).
//! VM interfaces name a network; petreld enslaves their taps to its bridge and gives fixed
//! addresses through `dhcp-host` entries.
//!
//! - [`ipv4`]: subnets. [`record`]: the `networks` table. [`host`]: the bridges (`ip`) and
//!   nftables tables (`nft`). [`dnsmasq`]: one DHCP/DNS server per network.
//! - [`ops`]: create, delete, VM interfaces on networks. [`reconcile`]: after a petreld
//!   restart, re-adopts or rebuilds what each stored network needs and removes what no stored
//!   network owns; then a thread restarts a dnsmasq that dies. [`metrics`]: leases and
//!   dnsmasq series.
//!
//! Everything petreld makes carries its name and owner: bridges `pb-NAME` with the interface
//! alias `petreld:STATE_DIR`, tables `inet petrel-NAME` with the comment `petreld STATE_DIR`,
//! dnsmasq processes started as `dnsmasq --conf-file=STATE_DIR/networks/NAME/dnsmasq.conf`.

pub mod dnsmasq;
pub mod host;
pub mod ipv4;
pub mod metrics;
pub mod ops;
pub mod reconcile;
pub mod record;

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::{Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

use crate::process::ProcessId;
pub use ipv4::Subnet;

/// Prefix of the bridges petreld makes (`pb-NAME`).
pub const BRIDGE_PREFIX: &str = "pb-";
/// Prefix of petreld's nftables tables (`inet petrel-NAME`).
pub const TABLE_PREFIX: &str = "petrel-";
/// Longest network name: its bridge's name must fit `IFNAMSIZ` (15 bytes and a NUL).
pub const MAX_NAME: usize = 15 - BRIDGE_PREFIX.len();

/// A network's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkKind {
    /// petreld's bridge, masqueraded out, DHCP and DNS.
    Nat,
    /// petreld's bridge and DHCP; nothing forwarded in or out.
    Isolated,
    /// An existing host bridge.
    Bridged,
}

impl NetworkKind {
    /// Whether petreld makes the bridge, the table and the dnsmasq.
    pub fn managed(self) -> bool {
        self != NetworkKind::Bridged
    }
}

/// Where a network is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkState {
    /// In use (or being made: reconcile finishes it).
    Active,
    /// Being removed (reconcile finishes it).
    Deleting,
}

/// The addresses dnsmasq hands out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DhcpRange {
    /// First address.
    pub start: Ipv4Addr,
    /// Last address.
    pub end: Ipv4Addr,
}

/// A network as stored and shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Network {
    /// Unique name.
    pub name: String,
    /// Type.
    #[serde(rename = "type")]
    pub kind: NetworkKind,
    /// The bridge VM taps join.
    pub bridge: String,
    /// The subnet (nat and isolated).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet: Option<Subnet>,
    /// The host's address on the bridge, the guests' router on nat (nat and isolated).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<Ipv4Addr>,
    /// Dynamic addresses (nat and isolated).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dhcp_range: Option<DhcpRange>,
    /// Life stage.
    pub state: NetworkState,
    /// Creation time, RFC 3339 UTC.
    pub created_at: String,
}

/// `POST /v1/networks`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateNetwork {
    /// Unique name (also in the bridge's and table's names).
    pub name: String,
    /// Type.
    #[serde(rename = "type")]
    pub kind: NetworkKind,
    /// `a.b.c.d/len` (nat and isolated).
    #[serde(default)]
    pub subnet: Option<String>,
    /// The host's address (default: the subnet's first).
    #[serde(default)]
    pub gateway: Option<Ipv4Addr>,
    /// Dynamic range (default: every address after the gateway).
    #[serde(default)]
    pub dhcp_range: Option<DhcpRange>,
    /// The existing bridge (bridged).
    #[serde(default)]
    pub bridge: Option<String>,
}

/// Checks a network name: 1 to [`MAX_NAME`] letters, digits, `-` or `_`, starting with a
/// letter or digit.
pub fn validate_name(name: &str) -> Result<(), String> {
    if name.contains('/') || name.contains("..") {
        return Err(format!("name: {name:?} must not contain '/' or '..'"));
    }
    if name.is_empty() || name.len() > MAX_NAME {
        return Err(format!(
            "name: {name:?} must be 1 to {MAX_NAME} characters (its bridge \
             {BRIDGE_PREFIX}NAME must fit a 15-byte interface name)"
        ));
    }
    let ok = name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'));
    if !ok {
        return Err(format!(
            "name: {name:?} must be letters, digits, '-' or '_', starting with a letter or digit"
        ));
    }
    Ok(())
}

/// The validated network a create request describes (state active); 400 messages name the
/// field. Host checks (overlaps, the bridge existing) are the caller's.
pub fn plan(req: &CreateNetwork, now: String) -> Result<Network, String> {
    validate_name(&req.name)?;
    let mut net = Network {
        name: req.name.clone(),
        kind: req.kind,
        bridge: format!("{BRIDGE_PREFIX}{}", req.name),
        subnet: None,
        gateway: None,
        dhcp_range: None,
        state: NetworkState::Active,
        created_at: now,
    };
    if req.kind == NetworkKind::Bridged {
        let bridge = req
            .bridge
            .as_deref()
            .ok_or("bridge: a bridged network needs the host bridge's name")?;
        if req.subnet.is_some() || req.gateway.is_some() || req.dhcp_range.is_some() {
            return Err(
                "subnet, gateway and dhcp_range: a bridged network takes only `bridge` \
                        (addresses come from the host's LAN)"
                    .into(),
            );
        }
        if !host::valid_ifname(bridge) {
            return Err(format!("bridge: {bridge:?} is not an interface name"));
        }
        if bridge.starts_with(BRIDGE_PREFIX) {
            return Err(format!(
                "bridge: {bridge:?}: names starting with {BRIDGE_PREFIX:?} are petreld's own"
            ));
        }
        net.bridge = bridge.to_string();
        return Ok(net);
    }
    if req.bridge.is_some() {
        return Err(format!(
            "bridge: a {} network gets petreld's bridge {}; leave `bridge` out",
            kind_name(req.kind),
            net.bridge
        ));
    }
    let text = req
        .subnet
        .as_deref()
        .ok_or("subnet: required (a.b.c.d/len)")?;
    let subnet: Subnet = text.parse().map_err(|e| format!("subnet: {e}"))?;
    let gateway = req.gateway.unwrap_or_else(|| subnet.default_gateway());
    if !subnet.is_host(gateway) {
        return Err(format!(
            "gateway: {gateway} is not a host address of {subnet}"
        ));
    }
    let range = match req.dhcp_range {
        Some(r) => r,
        None => {
            let (start, end) = subnet.default_range();
            let start = if start == gateway {
                subnet.nth(1)
            } else {
                start
            };
            DhcpRange { start, end }
        }
    };
    if !subnet.is_host(range.start) || !subnet.is_host(range.end) || range.start > range.end {
        return Err(format!(
            "dhcp_range: {}-{} must be host addresses of {subnet}, start before end",
            range.start, range.end
        ));
    }
    if (range.start..=range.end).contains(&gateway) {
        return Err(format!(
            "dhcp_range: {}-{} holds the gateway {gateway}",
            range.start, range.end
        ));
    }
    net.subnet = Some(subnet);
    net.gateway = Some(gateway);
    net.dhcp_range = Some(range);
    Ok(net)
}

fn kind_name(k: NetworkKind) -> &'static str {
    match k {
        NetworkKind::Nat => "nat",
        NetworkKind::Isolated => "isolated",
        NetworkKind::Bridged => "bridged",
    }
}

/// What petreld holds for its networks besides the store: one lock for every network change
/// (and VM changes that touch networks), and the dnsmasq it runs per network.
#[derive(Default)]
pub struct Networks {
    lock: Mutex<()>,
    servers: Mutex<HashMap<String, Server>>,
}

/// A network's running dnsmasq.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Server {
    /// The process.
    pub process: ProcessId,
    /// Times petreld restarted it after it died.
    pub restarts: u32,
}

impl Networks {
    /// Serializes network changes.
    pub fn lock(&self) -> MutexGuard<'_, ()> {
        crate::lock(&self.lock)
    }

    /// Network `name`'s dnsmasq, if one is known.
    pub fn server(&self, name: &str) -> Option<Server> {
        crate::lock(&self.servers).get(name).copied()
    }

    fn set_server(&self, name: &str, server: Option<Server>) {
        let mut s = crate::lock(&self.servers);
        match server {
            Some(v) => s.insert(name.to_string(), v),
            None => s.remove(name),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(name: &str, kind: NetworkKind, subnet: Option<&str>) -> CreateNetwork {
        CreateNetwork {
            name: name.into(),
            kind,
            subnet: subnet.map(String::from),
            gateway: None,
            dhcp_range: None,
            bridge: None,
        }
    }

    #[test]
    fn names() {
        assert!(validate_name("lan-1_b").is_ok());
        assert!(validate_name(&"a".repeat(MAX_NAME)).is_ok());
        for bad in [
            "",
            "a/b",
            "..",
            "a..b",
            "-a",
            "a b",
            "a.b",
            &"a".repeat(MAX_NAME + 1),
        ] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
        assert!(validate_name("x/y").unwrap_err().contains("'/'"));
        assert!(validate_name("abcdefghijklm").unwrap_err().contains("15"));
    }

    #[test]
    fn plans() {
        let n = plan(
            &req("n1", NetworkKind::Nat, Some("10.3.0.0/24")),
            "t".into(),
        )
        .unwrap();
        assert_eq!(n.bridge, "pb-n1");
        assert_eq!(n.gateway, Some(Ipv4Addr::new(10, 3, 0, 1)));
        assert_eq!(n.dhcp_range.unwrap().start, Ipv4Addr::new(10, 3, 0, 2));
        let e = plan(&req("n1", NetworkKind::Nat, None), "t".into()).unwrap_err();
        assert!(e.starts_with("subnet"), "{e}");
        let e = plan(
            &req("n1", NetworkKind::Nat, Some("10.3.0.0/33")),
            "t".into(),
        )
        .unwrap_err();
        assert!(e.starts_with("subnet"), "{e}");
        let mut r = req("n1", NetworkKind::Isolated, Some("10.3.0.0/24"));
        r.gateway = Some(Ipv4Addr::new(10, 4, 0, 1));
        assert!(plan(&r, "t".into()).unwrap_err().starts_with("gateway"));
        let r = req("lan", NetworkKind::Bridged, None);
        assert!(plan(&r, "t".into()).unwrap_err().starts_with("bridge"));
        let mut r = req("lan", NetworkKind::Bridged, Some("10.0.0.0/24"));
        r.bridge = Some("br0".into());
        assert!(plan(&r, "t".into()).is_err());
    }
}
