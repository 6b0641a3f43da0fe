//! Network namespaces for petreld's network tests: one per test (petreld runs in it through
//! `ip netns exec`, so the host's networking is untouched), commands run in it, packet
//! sockets opened in it, DHCP clients (busybox `udhcpc`) on veths joined to its bridges, and
//! "client" namespaces hanging off a bridge. Everything is removed on drop.

use std::os::fd::AsRawFd;
use std::process::Command;

use petrel_http::Method;
use petrel_tests::host_net::PacketSocket;
use serde_json::{json, Value};

use super::Petreld;

/// A network namespace `/var/run/netns/NAME`, with its processes killed and itself deleted
/// on drop.
pub struct Netns {
    /// Its name.
    pub name: String,
}

/// Why these tests cannot run here, if they cannot.
pub fn missing_tools() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("petreld's networks need root (bridges, nftables, dnsmasq)".into());
    }
    for (tool, package) in [
        ("ip", "iproute2"),
        ("nft", "nftables"),
        ("dnsmasq", "dnsmasq-base"),
        ("busybox", "busybox"),
    ] {
        let found = ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
            .iter()
            .any(|d| std::path::Path::new(d).join(tool).is_file());
        if !found {
            return Some(format!("{tool} not installed (Debian package {package})"));
        }
    }
    None
}

/// A fresh namespace for a test, or `None` after recording a visible skip (no root, a tool
/// missing, no namespaces).
pub fn netns_or_skip(tag: &str) -> Option<Netns> {
    if let Some(why) = missing_tools() {
        petrel_tests::skip(why);
        return None;
    }
    match Netns::new(tag) {
        Ok(ns) => Some(ns),
        Err(e) => {
            petrel_tests::skip(format!("cannot make a network namespace: {e}"));
            None
        }
    }
}

/// A `POST /v1/networks` body for a nat network.
pub fn nat(name: &str, subnet: &str) -> Value {
    json!({"name": name, "type": "nat", "subnet": subnet})
}

/// The error message of a request that must answer `status`.
pub fn error_of(d: &Petreld, method: Method, path: &str, body: &Value, status: u16) -> String {
    d.ok(method, path, Some(body), status)["error"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// VM `name`'s serial log.
pub fn console(d: &Petreld, name: &str) -> String {
    let r = d.call(Method::Get, &format!("/v1/vms/{name}/console"), None);
    String::from_utf8_lossy(&r.body).into_owned()
}

/// Runs `program args`; its standard output, or an error with its output.
pub fn run(program: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("{program}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{program} {args:?}: {}: {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

impl Netns {
    /// A fresh namespace `pn<tag><pid>` with its loopback up.
    pub fn new(tag: &str) -> Result<Netns, String> {
        let name = format!("pn{tag}{}", std::process::id());
        let _ = run("ip", &["netns", "del", &name]);
        run("ip", &["netns", "add", &name])?;
        let ns = Netns { name };
        ns.run(&["ip", "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Runs a command in the namespace.
    pub fn run(&self, args: &[&str]) -> Result<String, String> {
        let mut full = vec!["netns", "exec", self.name.as_str()];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    /// `ip -j link show type bridge` names.
    pub fn bridges(&self) -> Vec<String> {
        let text = self
            .run(&["ip", "-j", "link", "show", "type", "bridge"])
            .unwrap_or_default();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|l| l["ifname"].as_str().map(String::from))
            .collect()
    }

    /// The `inet` nftables tables.
    pub fn tables(&self) -> Vec<String> {
        self.run(&["nft", "list", "tables", "inet"])
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().strip_prefix("table inet ").map(String::from))
            .collect()
    }

    /// A veth pair `a`/`b` with `a` joined to `bridge`, both up; `b` gets `mac`.
    pub fn veth_on(&self, bridge: &str, a: &str, b: &str, mac: &str) -> Result<(), String> {
        self.run(&["ip", "link", "add", a, "type", "veth", "peer", "name", b])?;
        self.run(&["ip", "link", "set", a, "master", bridge, "up"])?;
        self.run(&["ip", "link", "set", b, "address", mac, "up"])?;
        Ok(())
    }

    /// One DHCP exchange by busybox udhcpc on `ifname` (addresses not applied): the address
    /// leased, or `None` when no server answered.
    pub fn dhcp(&self, ifname: &str) -> Option<String> {
        let out = Command::new("ip")
            .args([
                "netns", "exec", &self.name, "busybox", "udhcpc", "-i", ifname, "-n", "-q",
            ])
            .args(["-f", "-t", "6", "-T", "1", "-s", "/bin/true"])
            .output()
            .ok()?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        text.lines().find_map(|l| {
            l.split("lease of ")
                .nth(1)
                .and_then(|r| r.split_whitespace().next())
                .map(String::from)
        })
    }

    /// A packet socket for the test ethertype bound to `ifname` inside the namespace.
    pub fn packet_socket(&self, ifname: &str) -> Result<PacketSocket, String> {
        let path = format!("/var/run/netns/{}", self.name);
        let ifname = ifname.to_string();
        std::thread::spawn(move || {
            let f = std::fs::File::open(&path).map_err(|e| format!("{path}: {e}"))?;
            // SAFETY: setns on a namespace file this thread opened; it moves only this
            // short-lived thread, which ends after binding the socket.
            if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(format!("setns: {}", std::io::Error::last_os_error()));
            }
            PacketSocket::bind(&ifname).map_err(|e| format!("bind {ifname}: {e}"))
        })
        .join()
        .map_err(|_| "packet socket thread panicked".to_string())?
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Ok(pids) = run("ip", &["netns", "pids", &self.name]) {
            for pid in pids
                .split_whitespace()
                .filter_map(|p| p.parse::<i32>().ok())
            {
                // SAFETY: kill has no memory effects.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        let _ = run("ip", &["netns", "del", &self.name]);
    }
}
