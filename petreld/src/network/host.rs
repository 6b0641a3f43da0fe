//! The host side of a network, through the tools users trust: iproute2's `ip` for the bridge
//! and its address, nftables' `nft` for the network's table (forwarding rules and
//! masquerade). Every function is idempotent, so that reconcile can run it again.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::{Network, NetworkKind, BRIDGE_PREFIX, TABLE_PREFIX};

/// The path of system tool `name` (`/usr/sbin/NAME`, `/sbin/NAME`, else looked up in PATH).
pub fn tool(name: &str) -> PathBuf {
    for dir in ["/usr/sbin", "/sbin", "/usr/bin", "/bin"] {
        let p = Path::new(dir).join(name);
        if p.is_file() {
            return p;
        }
    }
    PathBuf::from(name)
}

/// Runs `name args` (with `input` on standard input); its standard output, or an error with
/// its standard error.
pub fn run(name: &str, args: &[&str], input: Option<&str>) -> Result<String, String> {
    let mut cmd = Command::new(tool(name));
    cmd.args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| {
        format!("cannot run {name} ({e}); install it (Debian: iproute2, nftables, dnsmasq-base)")
    })?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        let _ = stdin.write_all(text.as_bytes());
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("{name}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{name} {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Whether `name` can be an interface name.
pub fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() < 16
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'/' && b != b':')
}

/// What `ip -d link` says of an interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// Name.
    pub name: String,
    /// `linkinfo.info_kind` (`bridge`, `tun`, …).
    pub kind: Option<String>,
    /// The interface alias.
    pub alias: Option<String>,
    /// The bridge it is a port of.
    pub master: Option<String>,
}

fn links(args: &[&str]) -> Vec<Link> {
    let mut full = vec!["-j", "-d", "link", "show"];
    full.extend_from_slice(args);
    let Ok(text) = run("ip", &full, None) else {
        return Vec::new();
    };
    let Ok(serde_json::Value::Array(items)) = serde_json::from_str(&text) else {
        return Vec::new();
    };
    items
        .iter()
        .filter_map(|l| {
            Some(Link {
                name: l["ifname"].as_str()?.to_string(),
                kind: l["linkinfo"]["info_kind"].as_str().map(String::from),
                alias: l["ifalias"].as_str().map(String::from),
                master: l["master"].as_str().map(String::from),
            })
        })
        .collect()
}

/// Interface `name`, if it exists.
pub fn link(name: &str) -> Option<Link> {
    if !valid_ifname(name) {
        return None;
    }
    links(&["dev", name]).into_iter().next()
}

/// Whether `name` is an existing bridge.
pub fn is_bridge(name: &str) -> bool {
    link(name).is_some_and(|l| l.kind.as_deref() == Some("bridge"))
}

/// The interface alias petreld gives its bridges.
pub fn owner_alias(owner: &str) -> String {
    format!("petreld:{owner}")
}

/// Whether `link` is a bridge petreld (of `owner`) made: `pb-` name, bridge, petreld's alias
/// (or none: the alias is set just after the bridge is made).
pub fn is_ours(link: &Link, owner: &str) -> bool {
    link.name.starts_with(BRIDGE_PREFIX)
        && link.kind.as_deref() == Some("bridge")
        && link
            .alias
            .as_deref()
            .is_none_or(|a| a.is_empty() || a == owner_alias(owner))
}

/// Makes (or adopts) network `net`'s bridge with its gateway address, and sets it up.
pub fn ensure_bridge(net: &Network, owner: &str) -> Result<(), String> {
    let name = net.bridge.as_str();
    match link(name) {
        Some(l) if is_ours(&l, owner) => {}
        Some(l) => {
            return Err(format!(
                "interface {name} exists and is not this petreld's bridge (kind {:?}, alias \
                 {:?}); remove it or choose another network name",
                l.kind.unwrap_or_default(),
                l.alias.unwrap_or_default()
            ))
        }
        None => {
            run("ip", &["link", "add", "name", name, "type", "bridge"], None)?;
        }
    }
    run(
        "ip",
        &["link", "set", "dev", name, "alias", &owner_alias(owner)],
        None,
    )?;
    if let (Some(subnet), Some(gw)) = (net.subnet, net.gateway) {
        let addr = format!("{gw}/{}", subnet.prefix);
        run("ip", &["addr", "replace", &addr, "dev", name], None)?;
    }
    run("ip", &["link", "set", "dev", name, "up"], None)?;
    Ok(())
}

/// Makes existing interface `port` a port of `bridge` if it is not already; whether it
/// changed anything (a missing `port` is left alone).
pub fn ensure_port(port: &str, bridge: &str) -> Result<bool, String> {
    match link(port) {
        Some(l) if l.master.as_deref() != Some(bridge) => {
            run("ip", &["link", "set", "dev", port, "master", bridge], None)?;
            Ok(true)
        }
        _ => Ok(false),
    }
}

/// Makes port `port` an untagged member of VLAN `vlan` only (its bridge filters by VLAN).
pub fn set_port_vlan(port: &str, vlan: u16) -> Result<(), String> {
    let _ = run("bridge", &["vlan", "del", "dev", port, "vid", "1"], None);
    let vid = vlan.to_string();
    run(
        "bridge",
        &["vlan", "add", "dev", port, "vid", &vid, "pvid", "untagged"],
        None,
    )
    .map(drop)
}

/// Removes bridge `name` if it is this petreld's (a missing one is fine).
pub fn remove_bridge(name: &str, owner: &str) -> Result<(), String> {
    match link(name) {
        Some(l) if is_ours(&l, owner) => run("ip", &["link", "del", "dev", name], None).map(drop),
        _ => Ok(()),
    }
}

/// Every bridge this petreld made.
pub fn our_bridges(owner: &str) -> Vec<String> {
    links(&["type", "bridge"])
        .into_iter()
        .filter(|l| is_ours(l, owner))
        .map(|l| l.name)
        .collect()
}

/// The table comment that marks petreld's tables.
fn table_comment(owner: &str) -> String {
    format!("petreld {owner}")
}

/// Network `net`'s nftables table name.
pub fn table_name(net_name: &str) -> String {
    format!("{TABLE_PREFIX}{net_name}")
}

/// The table of a nat or isolated network, as `nft -f` input that replaces any previous one
/// in one transaction. Rules: frames between guests of the network pass; nothing is forwarded
/// between this bridge and another petreld bridge (`pb-*`, both ways: each network's table
/// drops it, so a missing table still leaves the other side closed); nat forwards the
/// subnet out and the replies back, masquerading; isolated forwards nothing.
pub fn render_table(net: &Network, owner: &str) -> String {
    let table = table_name(&net.name);
    let br = &net.bridge;
    let mut forward = vec![
        format!("iifname \"{br}\" oifname \"{br}\" accept"),
        format!("iifname \"{br}\" oifname \"{BRIDGE_PREFIX}*\" drop"),
        format!("oifname \"{br}\" iifname \"{BRIDGE_PREFIX}*\" drop"),
    ];
    let mut nat = Vec::new();
    if let (NetworkKind::Nat, Some(s)) = (net.kind, net.subnet) {
        forward.push(format!("iifname \"{br}\" ip saddr {s} accept"));
        forward.push(format!(
            "oifname \"{br}\" ip daddr {s} ct state established,related accept"
        ));
        nat.push(format!(
            "ip saddr {s} ip daddr != {s} ip daddr != {{ 224.0.0.0/24, 255.255.255.255 }} \
             oifname != \"{br}\" masquerade"
        ));
    }
    forward.push(format!("iifname \"{br}\" drop"));
    forward.push(format!("oifname \"{br}\" drop"));
    let mut out = format!(
        "table inet {table} {{}}\ndelete table inet {table}\ntable inet {table} {{\n  \
         comment \"{}\"\n  chain forward {{\n    type filter hook forward priority filter; \
         policy accept;\n",
        table_comment(owner)
    );
    for r in forward {
        out.push_str(&format!("    {r}\n"));
    }
    out.push_str("  }\n");
    if !nat.is_empty() {
        out.push_str(
            "  chain postrouting {\n    type nat hook postrouting priority srcnat; policy \
             accept;\n",
        );
        for r in nat {
            out.push_str(&format!("    {r}\n"));
        }
        out.push_str("  }\n");
    }
    out.push_str("}\n");
    out
}

/// Installs (or replaces) network `net`'s table, and turns IPv4 forwarding on for nat.
pub fn apply_table(net: &Network, owner: &str) -> Result<(), String> {
    run("nft", &["-f", "-"], Some(&render_table(net, owner)))?;
    if net.kind == NetworkKind::Nat {
        std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")
            .map_err(|e| format!("enable IPv4 forwarding: {e}"))?;
    }
    Ok(())
}

/// Removes table `table` (a missing one is fine).
pub fn remove_table(table: &str) -> Result<(), String> {
    if !valid_table(table) {
        return Ok(());
    }
    let script = format!("table inet {table} {{}}\ndelete table inet {table}\n");
    run("nft", &["-f", "-"], Some(&script)).map(drop)
}

fn valid_table(t: &str) -> bool {
    t.starts_with(TABLE_PREFIX)
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
}

/// The names of every `inet petrel-*` table carrying this petreld's comment.
pub fn our_tables(owner: &str) -> Vec<String> {
    let Ok(list) = run("nft", &["list", "tables", "inet"], None) else {
        return Vec::new();
    };
    let comment = format!("comment \"{}\"", table_comment(owner));
    list.lines()
        .filter_map(|l| l.trim().strip_prefix("table inet "))
        .filter(|t| valid_table(t))
        .filter(|t| {
            run("nft", &["list", "table", "inet", t], None).is_ok_and(|s| s.contains(&comment))
        })
        .map(String::from)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::{plan, CreateNetwork};
    use super::*;

    #[test]
    fn table_text() {
        let req = CreateNetwork {
            name: "n1".into(),
            kind: NetworkKind::Nat,
            subnet: Some("10.5.0.0/24".into()),
            gateway: None,
            dhcp_range: None,
            bridge: None,
        };
        let net = plan(&req, "t".into()).unwrap();
        let t = render_table(&net, "/var/lib/petrel");
        assert!(t.starts_with("table inet petrel-n1 {}\ndelete table inet petrel-n1\n"));
        assert!(t.contains("comment \"petreld /var/lib/petrel\""));
        assert!(t.contains("iifname \"pb-n1\" oifname \"pb-*\" drop"));
        assert!(t.contains("masquerade"));
        let iso = Network {
            kind: NetworkKind::Isolated,
            ..net
        };
        let t = render_table(&iso, "/x");
        assert!(!t.contains("masquerade") && !t.contains("accept\n    oifname"));
        assert!(t.contains("iifname \"pb-n1\" drop"));
        assert!(valid_ifname("pb-n1") && !valid_ifname("a/b") && !valid_ifname(".."));
    }
}
