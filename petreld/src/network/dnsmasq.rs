//! One dnsmasq (Debian's `dnsmasq-base`) per nat or isolated network: DHCP with the fixed
//! addresses of the VMs' interfaces (`dhcp-host`), and DNS (forwarded to the host's resolvers
//! on nat; local names only on isolated). Its files live in `STATE_DIR/networks/NAME/`:
//! `dnsmasq.conf` (written by petreld), `dnsmasq.pid` (written by dnsmasq) and `leases`
//! (kept across restarts). dnsmasq daemonizes itself, so it outlives a petreld crash; it is
//! recognised afterwards by its pid file and `/proc/PID/cmdline` (`dnsmasq
//! --conf-file=<that conf>`), never by name alone.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::host::tool;
use super::{Network, NetworkKind};
use crate::process::ProcessId;

/// A network's files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paths {
    /// `STATE_DIR/networks/NAME`.
    pub dir: PathBuf,
    /// The configuration petreld writes.
    pub conf: PathBuf,
    /// dnsmasq's pid file.
    pub pid: PathBuf,
    /// The leases file.
    pub leases: PathBuf,
}

/// Where networks keep their files.
pub fn networks_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("networks")
}

impl Paths {
    /// The files of network `name`.
    pub fn new(state_dir: &Path, name: &str) -> Paths {
        let dir = networks_dir(state_dir).join(name);
        Paths {
            conf: dir.join("dnsmasq.conf"),
            pid: dir.join("dnsmasq.pid"),
            leases: dir.join("leases"),
            dir,
        }
    }

    /// The argument that names this network's dnsmasq.
    fn conf_arg(&self) -> String {
        format!("--conf-file={}", self.conf.display())
    }
}

/// A fixed address: `dhcp-host=MAC,IP[,NAME]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    /// The interface's MAC.
    pub mac: String,
    /// Its address.
    pub ip: Ipv4Addr,
    /// A DNS name (the VM's name when it is a valid label).
    pub hostname: Option<String>,
}

/// One line of the leases file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Lease {
    /// Expiry, seconds since the epoch (0: never).
    pub expires: u64,
    /// Client MAC.
    pub mac: String,
    /// Address.
    pub ip: String,
    /// Client's host name (`*`: none).
    pub hostname: String,
}

/// Whether `s` is a DNS label dnsmasq accepts as a host name.
pub fn is_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && !s.starts_with('-')
        && !s.ends_with('-')
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// dnsmasq's configuration for `net` (nat or isolated).
pub fn render_conf(net: &Network, paths: &Paths, hosts: &[Reservation]) -> String {
    let mut c = vec![
        format!("# petreld network {}: written by petreld", net.name),
        format!("pid-file={}", paths.pid.display()),
        format!("interface={}", net.bridge),
        "except-interface=lo".into(),
        "bind-dynamic".into(),
        "strict-order".into(),
        "dhcp-authoritative".into(),
        "dhcp-no-override".into(),
        format!("dhcp-leasefile={}", paths.leases.display()),
    ];
    if let (Some(s), Some(r), Some(gw)) = (net.subnet, net.dhcp_range, net.gateway) {
        c.push(format!(
            "dhcp-range={},{},{},1h",
            r.start,
            r.end,
            s.netmask()
        ));
        c.push(format!("dhcp-option=option:dns-server,{gw}"));
        if net.kind == NetworkKind::Nat {
            c.push(format!("dhcp-option=option:router,{gw}"));
        } else {
            // No default route, and DNS answers local names only.
            c.push("dhcp-option=option:router".into());
            c.push("no-resolv".into());
            c.push("no-poll".into());
        }
    }
    for h in hosts {
        match &h.hostname {
            Some(n) => c.push(format!("dhcp-host={},{},{n}", h.mac, h.ip)),
            None => c.push(format!("dhcp-host={},{}", h.mac, h.ip)),
        }
    }
    c.push(String::new());
    c.join("\n")
}

/// Writes the configuration; whether it changed.
pub fn write_conf(paths: &Paths, text: &str) -> Result<bool, String> {
    if std::fs::read_to_string(&paths.conf).is_ok_and(|old| old == text) {
        return Ok(false);
    }
    std::fs::create_dir_all(&paths.dir).map_err(|e| format!("{}: {e}", paths.dir.display()))?;
    let tmp = paths.dir.join("dnsmasq.conf.tmp");
    std::fs::write(&tmp, text).map_err(|e| format!("{}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, &paths.conf).map_err(|e| format!("{}: {e}", paths.conf.display()))?;
    Ok(true)
}

/// The arguments of a live process, split at NULs.
fn cmdline(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            b.split(|&c| c == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Whether `args` is a dnsmasq started for `conf_arg`.
fn is_dnsmasq_for(args: &[String], conf_arg: &str) -> bool {
    args.first()
        .is_some_and(|a| Path::new(a).file_name().is_some_and(|n| n == "dnsmasq"))
        && args.iter().any(|a| a == conf_arg)
}

/// The running dnsmasq of these files, from its pid file, checked against its command line.
pub fn find(paths: &Paths) -> Option<ProcessId> {
    let pid: u32 = std::fs::read_to_string(&paths.pid)
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let p = ProcessId::of(pid)?;
    (p.alive() && is_dnsmasq_for(&cmdline(pid), &paths.conf_arg())).then_some(p)
}

/// Every dnsmasq started for a network under `state_dir`, with its network's name.
pub fn all_under(state_dir: &Path) -> Vec<(String, ProcessId)> {
    let prefix = format!("--conf-file={}/", networks_dir(state_dir).display());
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let args = cmdline(pid);
        let is_dnsmasq = args
            .first()
            .is_some_and(|a| Path::new(a).file_name().is_some_and(|n| n == "dnsmasq"));
        if !is_dnsmasq {
            continue;
        }
        let name = args.iter().find_map(|a| {
            a.strip_prefix(&prefix)?
                .strip_suffix("/dnsmasq.conf")
                .map(String::from)
        });
        if let (Some(name), Some(p)) = (name, ProcessId::of(pid)) {
            if p.alive() {
                out.push((name, p));
            }
        }
    }
    out
}

/// Starts dnsmasq on `paths.conf` (it daemonizes once its sockets are set up: a bad
/// configuration or a busy port is an error here, with dnsmasq's message).
pub fn start(paths: &Paths) -> Result<ProcessId, String> {
    let _ = std::fs::remove_file(&paths.pid);
    let mut cmd = std::process::Command::new(tool("dnsmasq"));
    cmd.arg(paths.conf_arg()).stdin(std::process::Stdio::null());
    // petreld blocks SIGTERM, SIGINT and SIGHUP in every thread (it waits for them with
    // sigwait); a child inherits that mask, and dnsmasq would then never see SIGTERM.
    // SAFETY: the closure runs between fork and exec and calls only async-signal-safe
    // functions (sigemptyset, sigprocmask, setsid) on its own stack data.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
            libc::setsid();
            Ok(())
        });
    }
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run dnsmasq ({e}); install Debian's dnsmasq-base"))?;
    if !out.status.success() {
        return Err(format!(
            "dnsmasq failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(p) = find(paths) {
            return Ok(p);
        }
        if Instant::now() > deadline {
            return Err(format!(
                "dnsmasq started but {} names no live dnsmasq",
                paths.pid.display()
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Ends dnsmasq `p`: SIGTERM, SIGKILL after 2 s.
pub fn stop(p: ProcessId) {
    let _ = p.signal(libc::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(2);
    while p.alive() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    if p.alive() {
        let _ = p.signal(libc::SIGKILL);
        while p.alive() && Instant::now() < deadline + Duration::from_secs(2) {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    crate::process::reap(p.pid);
}

/// The leases dnsmasq recorded.
pub fn leases(paths: &Paths) -> Vec<Lease> {
    let text = std::fs::read_to_string(&paths.leases).unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            Some(Lease {
                expires: f.first()?.parse().ok()?,
                mac: f.get(1)?.to_string(),
                ip: f.get(2)?.to_string(),
                hostname: f.get(3)?.to_string(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::{plan, CreateNetwork};
    use super::*;

    #[test]
    fn conf_and_cmdline() {
        let req = CreateNetwork {
            name: "iso".into(),
            kind: NetworkKind::Isolated,
            subnet: Some("10.6.0.0/24".into()),
            gateway: None,
            dhcp_range: None,
            bridge: None,
        };
        let net = plan(&req, "t".into()).unwrap();
        let p = Paths::new(Path::new("/s"), "iso");
        let hosts = [Reservation {
            mac: "02:00:00:00:00:01".into(),
            ip: Ipv4Addr::new(10, 6, 0, 9),
            hostname: Some("web".into()),
        }];
        let c = render_conf(&net, &p, &hosts);
        assert!(c.contains("interface=pb-iso\n"));
        assert!(c.contains("dhcp-range=10.6.0.2,10.6.0.254,255.255.255.0,1h"));
        assert!(c.contains("dhcp-option=option:router\n"));
        assert!(c.contains("no-resolv"));
        assert!(c.contains("dhcp-host=02:00:00:00:00:01,10.6.0.9,web"));
        assert!(c.contains("dhcp-leasefile=/s/networks/iso/leases"));
        let args: Vec<String> = vec!["/usr/sbin/dnsmasq".into(), p.conf_arg()];
        assert!(is_dnsmasq_for(
            &args,
            "--conf-file=/s/networks/iso/dnsmasq.conf"
        ));
        assert!(!is_dnsmasq_for(&args[1..], &p.conf_arg()));
        assert!(is_label("web-1") && !is_label("a.b") && !is_label("-a"));
    }
}
