//! petreld's configuration: the command line (`--socket`, `--state-dir`, `--config`,
//! `--petrel`) over a JSON config file over defaults. Defaults live under /run/petrel and
//! /var/lib/petrel for root, under `$XDG_RUNTIME_DIR` and `$XDG_STATE_HOME` otherwise.
//! The optional TCP listener's bearer token is read from a private file ([`read_token`]).

use std::collections::BTreeMap;
use std::io::Read;
use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use api::petreld::default_socket;

/// Feature gates petreld knows: name, stage, default, description.
pub const FEATURE_GATES: &[(&str, &str, bool, &str)] = &[(
    "mshv",
    "alpha",
    false,
    "prefer Microsoft Hypervisor (/dev/mshv) for hypervisor auto where it exists (off: KVM)",
)];

/// The config file (JSON). Every field is optional.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// API socket path.
    pub socket: Option<PathBuf>,
    /// Group (name or number) given read/write access to the socket (mode 0660).
    pub socket_group: Option<String>,
    /// State directory (database, VM directories).
    pub state_dir: Option<PathBuf>,
    /// The petrel binary.
    pub petrel: Option<PathBuf>,
    /// Threads serving the API (requests on different connections run in parallel).
    pub workers: Option<usize>,
    /// Guest memory admitted, as a multiple of host memory.
    pub memory_overcommit: Option<f64>,
    /// vCPUs admitted, as a multiple of host CPUs.
    pub cpu_overcommit: Option<f64>,
    /// Seconds a graceful stop waits for the guest before forcing.
    pub stop_timeout_s: Option<u64>,
    /// How often running VMs are asked for their state, in milliseconds.
    pub poll_interval_ms: Option<u64>,
    /// Feature gates by name.
    pub feature_gates: Option<BTreeMap<String, bool>>,
    /// Quiet time after which `/v1/events` sends a keep-alive comment, in milliseconds.
    pub events_keepalive_ms: Option<u64>,
    /// When root: the unprivileged user petrel runs as.
    pub run_as: Option<RunAs>,
    /// petrel's `--seccomp` mode (`true`, `false`, `log`); default `true` when root, when
    /// petrel has the flag.
    pub seccomp: Option<String>,
    /// When root: start each petrel through this `petrel-jailer` (its own namespaces, the VM
    /// directory as its root, `run_as` as its uid); off when absent.
    pub jailer: Option<PathBuf>,
    /// When root: put each petrel in its own cgroup (default true).
    pub cgroups: Option<bool>,
    /// An API listener on TCP, every request authenticated with a bearer token (off when absent).
    pub tcp: Option<TcpConfig>,
    /// Directories under which storage pools may be made (default `<state_dir>/pools`).
    pub storage_roots: Option<Vec<PathBuf>>,
    /// The `qemu-img` binary volumes are made with (default `qemu-img` from `PATH`).
    pub qemu_img: Option<PathBuf>,
}

/// The TCP listener: `{"listen": "127.0.0.1:8080", "token_file": "/etc/petrel/token"}`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TcpConfig {
    /// Address and port to listen on (no TLS: prefer loopback, or a tunnel).
    pub listen: SocketAddr,
    /// A file holding the token (mode 0600 or stricter; surrounding whitespace ignored).
    pub token_file: PathBuf,
}

/// The TCP listener's secret. `Debug` never shows it.
#[derive(Clone)]
pub struct BearerToken(Vec<u8>);

impl std::fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BearerToken(<redacted>)")
    }
}

impl BearerToken {
    /// Whether `presented` is the token, in time that depends only on the token's length.
    pub fn matches(&self, presented: &[u8]) -> bool {
        let mut diff = u8::from(presented.len() != self.0.len());
        for (i, &b) in self.0.iter().enumerate() {
            diff |= b ^ presented.get(i).copied().unwrap_or(0);
        }
        std::hint::black_box(diff) == 0
    }
}

/// Reads the token from `path`: refused (naming the file, never showing its content) when it
/// is missing, not a regular file, readable or writable by group or others, empty, or holds
/// anything but visible ASCII.
pub fn read_token(path: &Path) -> Result<BearerToken, String> {
    let name = path.display();
    let mut file = std::fs::File::open(path).map_err(|e| format!("tcp.token_file {name}: {e}"))?;
    let meta = file
        .metadata()
        .map_err(|e| format!("tcp.token_file {name}: {e}"))?;
    if !meta.is_file() {
        return Err(format!("tcp.token_file {name}: not a regular file"));
    }
    let mode = meta.mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "tcp.token_file {name}: mode {mode:04o} lets group or others access it; \
             it must be 0600 or stricter (chmod 600 {name})"
        ));
    }
    let mut bytes = Vec::new();
    file.by_ref()
        .take(4097)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("tcp.token_file {name}: {e}"))?;
    if bytes.len() > 4096 {
        return Err(format!("tcp.token_file {name}: larger than 4096 bytes"));
    }
    let token = bytes.trim_ascii();
    if token.is_empty() {
        return Err(format!("tcp.token_file {name}: empty"));
    }
    if !token.iter().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "tcp.token_file {name}: the token must be visible ASCII without spaces"
        ));
    }
    Ok(BearerToken(token.to_vec()))
}

/// A uid and gid petrel runs as (when petreld is root). What that user needs:
/// - /dev/kvm (and /dev/mshv) read/write: petrel gets the devices' owning groups as
///   supplementary groups, so `chgrp kvm /dev/kvm; chmod 0660 /dev/kvm` (the usual udev rule)
///   is enough; otherwise grant it with an ACL (`setfacl -m u:UID:rw /dev/kvm`).
/// - read access to the kernels, initramfs and disk images of its VMs.
/// - the VM directory is given to it (`chown`), and the state directory and its `vms/`
///   are made traversable (mode 0711, no listing).
///
/// petrel needs no other privilege: petreld makes the taps and the cgroup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunAs {
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
}

/// The effective configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct DaemonConfig {
    /// API socket path.
    pub socket: PathBuf,
    /// Socket group (mode 0660 with it, else 0600).
    pub socket_group: Option<String>,
    /// State directory.
    pub state_dir: PathBuf,
    /// The petrel binary.
    pub petrel: PathBuf,
    /// API threads.
    pub workers: usize,
    /// Memory overcommit ratio.
    pub memory_overcommit: f64,
    /// vCPU overcommit ratio.
    pub cpu_overcommit: f64,
    /// Graceful stop timeout, seconds.
    pub stop_timeout_s: u64,
    /// State poll interval, milliseconds.
    pub poll_interval_ms: u64,
    /// Every known gate with its value.
    pub feature_gates: BTreeMap<String, bool>,
    /// `/v1/events` keep-alive interval, milliseconds.
    pub events_keepalive_ms: u64,
    /// The user petrel runs as (only when petreld is root).
    pub run_as: Option<RunAs>,
    /// petrel's `--seccomp` mode, if it is to be passed.
    pub seccomp: Option<String>,
    /// `petrel-jailer`, when each petrel is to be jailed (only when petreld is root).
    pub jailer: Option<PathBuf>,
    /// Whether each petrel gets its own cgroup (only when petreld is root).
    pub cgroups: bool,
    /// The TCP listener, if configured.
    pub tcp: Option<TcpConfig>,
    /// Where pools may be made (absolute paths).
    pub storage_roots: Vec<PathBuf>,
    /// `qemu-img`.
    pub qemu_img: PathBuf,
}

impl DaemonConfig {
    /// Whether gate `name` is on.
    pub fn gate(&self, name: &str) -> bool {
        self.feature_gates.get(name).copied().unwrap_or(false)
    }
}

/// What the command line asks for.
#[derive(Debug)]
pub enum Command {
    /// Run the daemon.
    Run(Box<DaemonConfig>),
    /// Print usage.
    Help,
    /// Print the version.
    Version,
}

/// Usage text.
pub const USAGE: &str = "usage: petreld [--socket PATH] [--state-dir DIR] [--config FILE] \
[--petrel PATH] [--jailer PATH]
       petreld --version | --help";

/// Whether petreld runs as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

fn env_dir(var: &str) -> Option<PathBuf> {
    std::env::var_os(var)
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
}

fn home_dir(rest: &str) -> PathBuf {
    env_dir("HOME")
        .unwrap_or_else(|| PathBuf::from("/tmp"))
        .join(rest)
}

/// Default state directory.
pub fn default_state_dir() -> PathBuf {
    if is_root() {
        return PathBuf::from("/var/lib/petrel");
    }
    env_dir("XDG_STATE_HOME")
        .map(|d| d.join("petrel"))
        .unwrap_or_else(|| home_dir(".local/state/petrel"))
}

/// The config file read when `--config` is not given (if it exists).
pub fn default_config_file() -> PathBuf {
    if is_root() {
        return PathBuf::from("/etc/petrel/petreld.json");
    }
    env_dir("XDG_CONFIG_HOME")
        .map(|d| d.join("petrel/petreld.json"))
        .unwrap_or_else(|| home_dir(".config/petrel/petreld.json"))
}

/// petrel next to this binary, else the first `petrel` on `$PATH`, else plain `petrel`.
pub fn default_petrel() -> PathBuf {
    if let Some(dir) = std::env::current_exe().ok().and_then(|p| {
        let dir = p.parent()?.to_path_buf();
        Some(dir)
    }) {
        let candidate = dir.join("petrel");
        if candidate.is_file() {
            return candidate;
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join("petrel");
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    PathBuf::from("petrel")
}

/// Parses the command line (without the program name).
pub fn parse(args: &[String]) -> Result<Command, String> {
    let mut flags: BTreeMap<&str, String> = BTreeMap::new();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n, Some(v.to_string())),
            _ => (arg.as_str(), None),
        };
        match name {
            "--help" | "-h" => return Ok(Command::Help),
            "--version" | "-V" => return Ok(Command::Version),
            "--socket" | "--state-dir" | "--config" | "--petrel" | "--jailer" => {
                let value = match inline {
                    Some(v) => v,
                    None => it
                        .next()
                        .cloned()
                        .ok_or_else(|| format!("{name} needs a value"))?,
                };
                if value.is_empty() {
                    return Err(format!("{name}: empty value"));
                }
                if flags.insert(name, value).is_some() {
                    return Err(format!("{name} given more than once"));
                }
            }
            other => return Err(format!("unknown option {other}\n{USAGE}")),
        }
    }
    let file = match flags.get("--config") {
        Some(path) => read_file(Path::new(path))?,
        None => {
            let path = default_config_file();
            if path.is_file() {
                read_file(&path)?
            } else {
                FileConfig::default()
            }
        }
    };
    let config = resolve(file, &flags)?;
    Ok(Command::Run(Box::new(config)))
}

fn read_file(path: &Path) -> Result<FileConfig, String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("--config {}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("--config {}: {e}", path.display()))
}

/// Merges the file and the flags over the defaults, and checks the values.
fn resolve(file: FileConfig, flags: &BTreeMap<&str, String>) -> Result<DaemonConfig, String> {
    let flag = |n: &str| flags.get(n).map(PathBuf::from);
    let mut gates: BTreeMap<String, bool> = FEATURE_GATES
        .iter()
        .map(|(n, _, default, _)| (n.to_string(), *default))
        .collect();
    for (name, on) in file.feature_gates.unwrap_or_default() {
        match gates.get_mut(&name) {
            Some(v) => *v = on,
            None => {
                let known: Vec<&str> = FEATURE_GATES.iter().map(|g| g.0).collect();
                return Err(format!(
                    "feature_gates: unknown gate {name:?} (known: {})",
                    known.join(", ")
                ));
            }
        }
    }
    let ratio = |name: &str, v: Option<f64>, default: f64| match v {
        None => Ok(default),
        Some(r) if r.is_finite() && r > 0.0 && r <= 1000.0 => Ok(r),
        Some(r) => Err(format!("{name}: {r} must be above 0 and at most 1000")),
    };
    let state_dir = flag("--state-dir")
        .or(file.state_dir)
        .unwrap_or_else(default_state_dir);
    let storage_roots = file
        .storage_roots
        .unwrap_or_else(|| vec![state_dir.join("pools")]);
    if let Some(r) = storage_roots.iter().find(|r| !r.is_absolute()) {
        return Err(format!("storage_roots: {} is not absolute", r.display()));
    }
    let config = DaemonConfig {
        socket: flag("--socket")
            .or(file.socket)
            .unwrap_or_else(default_socket),
        socket_group: file.socket_group,
        state_dir,
        petrel: flag("--petrel")
            .or(file.petrel)
            .unwrap_or_else(default_petrel),
        workers: file.workers.unwrap_or(4).clamp(1, 64),
        memory_overcommit: ratio("memory_overcommit", file.memory_overcommit, 1.0)?,
        cpu_overcommit: ratio("cpu_overcommit", file.cpu_overcommit, 16.0)?,
        stop_timeout_s: file.stop_timeout_s.unwrap_or(10).min(3600),
        poll_interval_ms: file.poll_interval_ms.unwrap_or(1000).clamp(50, 60_000),
        feature_gates: gates,
        events_keepalive_ms: file
            .events_keepalive_ms
            .unwrap_or(15_000)
            .clamp(100, 3_600_000),
        run_as: file.run_as,
        seccomp: file
            .seccomp
            .or_else(|| is_root().then(|| "true".to_string())),
        jailer: flag("--jailer").or(file.jailer),
        cgroups: file.cgroups.unwrap_or(true) && is_root(),
        tcp: file.tcp,
        storage_roots,
        qemu_img: file.qemu_img.unwrap_or_else(|| PathBuf::from("qemu-img")),
    };
    if let Some(j) = &config.jailer {
        if !is_root() {
            return Err("jailer: petreld must run as root to jail petrel".into());
        }
        if !j.is_file() {
            return Err(format!("jailer: {} is not a file", j.display()));
        }
    }
    if let Some(m) = &config.seccomp {
        if !matches!(m.as_str(), "true" | "false" | "log") {
            return Err(format!("seccomp: {m:?} is not one of true, false, log"));
        }
    }
    if let Some(r) = config.run_as {
        if !is_root() {
            return Err("run_as: petreld must run as root to run petrel as another user".into());
        }
        if r.uid == 0 || r.gid == 0 {
            return Err("run_as: uid and gid must not be 0".into());
        }
    }
    // Unix socket paths are limited to 107 bytes; the VM sockets live under the state dir.
    if config.socket.as_os_str().len() > 100 {
        return Err(format!(
            "--socket {}: path longer than 100 bytes",
            config.socket.display()
        ));
    }
    if config.state_dir.as_os_str().len() > 70 {
        return Err(format!(
            "--state-dir {}: path longer than 70 bytes (VM sockets live under it)",
            config.state_dir.display()
        ));
    }
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn flags_override_file_and_defaults() {
        let dir = std::env::temp_dir().join(format!("petreld-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("c.json");
        std::fs::write(
            &file,
            r#"{"socket":"/x/file.sock","state_dir":"/x/state","feature_gates":{"mshv":true},
               "memory_overcommit":1.5}"#,
        )
        .unwrap();
        let cmd = parse(&args(&format!(
            "--config {} --socket=/y.sock",
            file.display()
        )))
        .unwrap();
        let Command::Run(c) = cmd else { panic!() };
        assert_eq!(c.socket, PathBuf::from("/y.sock"));
        assert_eq!(c.state_dir, PathBuf::from("/x/state"));
        assert!(c.gate("mshv"));
        assert_eq!(c.memory_overcommit, 1.5);
        std::fs::write(&file, r#"{"feature_gates":{"warp":true}}"#).unwrap();
        let e = parse(&args(&format!("--config {}", file.display()))).unwrap_err();
        assert!(e.contains("warp"), "{e}");
        std::fs::write(&file, r#"{"sockt":"/x"}"#).unwrap();
        let e = parse(&args(&format!("--config {}", file.display()))).unwrap_err();
        assert!(e.contains("sockt"), "{e}");
        std::fs::write(
            &file,
            r#"{"tcp":{"listen":"127.0.0.1:7000","token_file":"/t"}}"#,
        )
        .unwrap();
        let Command::Run(c) = parse(&args(&format!("--config {}", file.display()))).unwrap() else {
            panic!()
        };
        let tcp = c.tcp.unwrap();
        assert_eq!(tcp.listen, "127.0.0.1:7000".parse().unwrap());
        assert_eq!(tcp.token_file, PathBuf::from("/t"));
        std::fs::write(&file, r#"{"tcp":{"listen":"nowhere","token_file":"/t"}}"#).unwrap();
        assert!(parse(&args(&format!("--config {}", file.display()))).is_err());
        assert!(parse(&args("--bogus")).is_err());
        assert!(parse(&args("--socket")).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn token_file_checks() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("petreld-tok-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("token");
        let e = read_token(&path).unwrap_err();
        assert!(e.contains(&*path.to_string_lossy()), "{e}");
        std::fs::write(&path, "s3cret-token\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = read_token(&path).unwrap_err();
        assert!(
            e.contains("0644") && e.contains(&*path.to_string_lossy()),
            "{e}"
        );
        assert!(!e.contains("s3cret"), "{e}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let t = read_token(&path).unwrap();
        assert!(t.matches(b"s3cret-token"));
        assert!(!t.matches(b"s3cret-toke"));
        assert!(!t.matches(b"s3cret-tokeN"));
        assert!(!t.matches(b"s3cret-token2"));
        assert!(!t.matches(b""));
        assert!(!format!("{t:?}").contains("s3cret"));
        std::fs::write(&path, " \n").unwrap();
        assert!(read_token(&path).unwrap_err().contains("empty"));
        std::fs::write(&path, "two words").unwrap();
        assert!(read_token(&path).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
