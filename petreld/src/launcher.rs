//! Running one VM: its directory (config, API socket, serial log, petrel's log and output),
//! starting `petrel --api-socket … --id … --log-file …` in its own session so that it outlives
//! petreld, and driving it through the per-VM API: `vmm.ping`, `vm.create`, `vm.boot`,
//! `vm.info`; graceful stop (power button, then force) and kill.

use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use api::request::{Endpoint, Verb};
use api::{SerialMode, VmConfig};
use petrel_http::{Client, Method, Response};

use super::cgroup::{self, VmCgroup};
use super::config::RunAs;
use super::net::ManagedNet;
use super::process::{self, ProcessId};

/// How long petrel gets to answer `vmm.ping` after it was started.
const PING_TIMEOUT: Duration = Duration::from_secs(10);
/// Timeout of one per-VM API call.
const CALL_TIMEOUT: Duration = Duration::from_secs(15);

/// The files of one VM under `<state dir>/vms/<id>/`.
#[derive(Debug, Clone)]
pub struct VmDir {
    /// The directory.
    pub root: PathBuf,
}

impl VmDir {
    /// The directory of VM `id`.
    pub fn new(state_dir: &Path, id: &str) -> VmDir {
        VmDir {
            root: state_dir.join("vms").join(id),
        }
    }

    /// petrel's API socket.
    pub fn socket(&self) -> PathBuf {
        self.root.join("api.sock")
    }

    /// The serial console log (when the VM's serial is `Tty`).
    pub fn serial_log(&self) -> PathBuf {
        self.root.join("serial.log")
    }

    /// petrel's log (`--log-file`).
    pub fn petrel_log(&self) -> PathBuf {
        self.root.join("petrel.log")
    }

    /// petrel's standard output and error.
    pub fn output(&self) -> PathBuf {
        self.root.join("petrel.out")
    }

    /// The config petrel was given.
    pub fn config(&self) -> PathBuf {
        self.root.join("config.json")
    }

    /// Creates the directory (mode 0700).
    pub fn create(&self) -> std::io::Result<()> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.root)
    }

    /// Removes the directory and everything in it.
    pub fn remove(&self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// The config sent to petrel: a `Tty` serial port writes to the VM's serial log instead
/// (petrel runs detached, without a terminal).
pub fn effective_config(config: &VmConfig, dir: &VmDir) -> VmConfig {
    let mut c = config.clone();
    if c.serial.mode == SerialMode::Tty {
        c.serial.mode = SerialMode::File;
        c.serial.file = Some(dir.serial_log());
    }
    c
}

/// The serial log of a VM with `config`, if its serial port writes to a file.
pub fn serial_file(config: &VmConfig, dir: &VmDir) -> Option<PathBuf> {
    let c = effective_config(config, dir);
    (c.serial.mode == SerialMode::File)
        .then_some(c.serial.file)
        .flatten()
}

/// A client of a VM's petrel.
pub fn client(socket: &Path) -> Client {
    Client::new(socket).with_timeout(CALL_TIMEOUT)
}

/// How petrel is started beyond its command line (all off by default).
#[derive(Debug, Clone, Default)]
pub struct SpawnOptions {
    /// Groups petrel joins before it runs.
    pub cgroup: Option<VmCgroup>,
    /// The user petrel runs as (the VM directory is given to it).
    pub run_as: Option<RunAs>,
    /// `--seccomp MODE`, passed when petrel has the flag.
    pub seccomp: Option<String>,
    /// Started through `petrel-jailer` (see [`super::jail`]).
    pub jail: Option<super::jail::Jail>,
}

/// Whether `petrel --help` mentions `--seccomp` (asked once).
pub fn petrel_has_seccomp(petrel: &Path) -> bool {
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| {
        Command::new(petrel)
            .arg("--help")
            .stdin(Stdio::null())
            .output()
            .is_ok_and(|o| {
                let text = [o.stdout, o.stderr].concat();
                String::from_utf8_lossy(&text).contains("--seccomp")
            })
    })
}

/// The groups owning /dev/kvm and /dev/mshv (other than root's): petrel running as another
/// user gets them as supplementary groups to open the devices.
fn device_groups() -> Vec<libc::gid_t> {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    for dev in ["/dev/kvm", "/dev/mshv"] {
        if let Ok(m) = std::fs::metadata(dev) {
            if m.gid() != 0 && !out.contains(&m.gid()) {
                out.push(m.gid());
            }
        }
    }
    out
}

fn chown(path: &Path, who: RunAs) -> Result<(), String> {
    std::os::unix::fs::chown(path, Some(who.uid), Some(who.gid))
        .map_err(|e| format!("chown {}: {e}", path.display()))
}

/// Gives VM directory `dir` (and its output file) to `who`, and lets it traverse the
/// directories above (mode 0711, no listing).
fn hand_dir_to(dir: &VmDir, who: RunAs) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    chown(&dir.root, who)?;
    chown(&dir.output(), who)?;
    for up in dir.root.ancestors().skip(1).take(2) {
        let mode = std::fs::metadata(up)
            .map_err(|e| format!("{}: {e}", up.display()))?
            .permissions()
            .mode();
        if mode & 0o011 != 0o011 {
            std::fs::set_permissions(up, std::fs::Permissions::from_mode((mode & 0o7777) | 0o011))
                .map_err(|e| format!("chmod {}: {e}", up.display()))?;
        }
    }
    Ok(())
}

/// Starts petrel for VM `id` in its own session (it outlives petreld), output to the VM
/// directory, with `opts`. Returns its identity.
pub fn spawn(
    petrel: &Path,
    dir: &VmDir,
    id: &str,
    hypervisor: &str,
    opts: &SpawnOptions,
) -> Result<ProcessId, String> {
    dir.create()
        .map_err(|e| format!("create {}: {e}", dir.root.display()))?;
    let _ = std::fs::remove_file(dir.socket());
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(dir.output())
        .map_err(|e| format!("open {}: {e}", dir.output().display()))?;
    let err = out
        .try_clone()
        .map_err(|e| format!("open {}: {e}", dir.output().display()))?;
    let (mut cmd, socket, log) = match &opts.jail {
        Some(jail) => {
            let mut cmd = Command::new(&jail.jailer);
            let who = opts.run_as.map(|w| (w.uid, w.gid));
            cmd.args(super::jail::jailer_args(jail, petrel, dir, id, who));
            let (socket, log) = super::jail::petrel_paths(dir);
            (cmd, socket, log)
        }
        None => (Command::new(petrel), dir.socket(), dir.petrel_log()),
    };
    cmd.arg("--api-socket")
        .arg(socket)
        .arg("--id")
        .arg(id)
        .arg("--log-file")
        .arg(log)
        .arg("--hypervisor")
        .arg(hypervisor);
    if hypervisor == "mshv" {
        cmd.arg("--feature-gates").arg("mshv");
    }
    if let Some(mode) = &opts.seccomp {
        if petrel_has_seccomp(petrel) {
            cmd.arg("--seccomp").arg(mode);
        }
    }
    if let Some(who) = opts.run_as {
        hand_dir_to(dir, who)?;
    }
    cmd.stdin(Stdio::null()).stdout(out).stderr(err);
    let procs = opts
        .cgroup
        .as_ref()
        .map(VmCgroup::procs_files)
        .unwrap_or_default();
    // The jailer changes the uid itself, after building the jail.
    let run_as = opts.run_as.filter(|_| opts.jail.is_none());
    let mut groups = device_groups();
    if let Some(who) = run_as {
        groups.push(who.gid);
    }
    // SAFETY: the closure runs in the child between fork and exec and calls only
    // async-signal-safe functions (sigemptyset, sigprocmask, setsid, open/write/close,
    // setgroups, setgid, setuid) on its own stack data and data prepared before the fork.
    unsafe {
        cmd.pre_exec(move || {
            // petreld blocks SIGTERM, SIGINT and SIGHUP for its sigwait; petrel starts with
            // no signal blocked, as from a shell, and sets up its own handling.
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            if libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut()) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            cgroup::join_self(&procs)?;
            if let Some(who) = run_as {
                if libc::setgroups(groups.len(), groups.as_ptr()) < 0
                    || libc::setgid(who.gid) < 0
                    || libc::setuid(who.uid) < 0
                {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(|e| {
        let bin = opts.jail.as_ref().map_or(petrel, |j| j.jailer.as_path());
        format!("start {}: {e}", bin.display())
    })?;
    // The child is reaped by the supervisor when its pidfd reports the exit.
    let pid = child.id();
    drop(child);
    ProcessId::of(pid).ok_or_else(|| {
        let how = process::reap(pid).unwrap_or_else(|| "vanished".into());
        format!("petrel {how} at once; see {}", dir.output().display())
    })
}

/// An error and its causes on one line.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        s.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    s
}

/// The body of a failed per-VM call as a message.
fn failure(op: &str, r: &Response) -> String {
    format!("{op}: {} {}", r.status, r.error_message())
}

/// A request at `endpoint` of petrel's API (its route's method) that must succeed.
pub fn call(client: &Client, endpoint: Endpoint, body: Option<&[u8]>) -> Result<Response, String> {
    let op = endpoint.name();
    let method = match endpoint.verb() {
        Verb::Get => Method::Get,
        Verb::Put => Method::Put,
    };
    let r = client
        .request(method, endpoint.path(), body)
        .map_err(|e| format!("{op}: {}", chain(&e)))?;
    if r.is_success() {
        Ok(r)
    } else {
        Err(failure(op, &r))
    }
}

/// The VM state petrel reports (`Created`, `Running`, …), `None` when it has no VM.
pub fn vm_state(client: &Client) -> Result<Option<String>, String> {
    let r = client
        .get(Endpoint::VmInfo.path())
        .map_err(|e| format!("vm.info: {}", chain(&e)))?;
    match r.status {
        404 => Ok(None),
        200 => {
            let v: serde_json::Value = r
                .json_body()
                .map_err(|e| format!("vm.info: malformed answer: {e}"))?;
            Ok(v["state"].as_str().map(String::from))
        }
        _ => Err(failure("vm.info", &r)),
    }
}

/// Why the VM's last boot ended, as petrel's `vm.info` says (`poweroff`, `reset`,
/// `triple-fault`, `internal-error`, `shutdown`); `None` when petrel does not say.
pub fn vm_end_reason(client: &Client) -> Option<String> {
    let r = client.get(Endpoint::VmInfo.path()).ok()?;
    if r.status != 200 {
        return None;
    }
    let v: serde_json::Value = r.json_body().ok()?;
    v["end_reason"].as_str().map(String::from)
}

/// Whether an end reason from [`vm_end_reason`] is a failure (`restart: on-failure`).
pub fn is_failure(reason: &str) -> bool {
    matches!(reason, "triple-fault" | "internal-error")
}

/// Waits until petrel answers `vmm.ping`, giving up when `proc` dies.
pub fn wait_ping(client: &Client, proc: ProcessId, dir: &VmDir) -> Result<(), String> {
    let deadline = Instant::now() + PING_TIMEOUT;
    loop {
        let quick = Client::new(client.path()).with_timeout(Duration::from_secs(2));
        if let Ok(r) = quick.get(Endpoint::VmmPing.path()) {
            if r.status == 200 {
                return Ok(());
            }
        }
        if !proc.alive() {
            let how = process::reap(proc.pid).unwrap_or_else(|| "exited".into());
            let tail = std::fs::read_to_string(dir.output()).unwrap_or_default();
            let last = tail.lines().last().unwrap_or("").to_string();
            return Err(format!("petrel {how} before answering vmm.ping: {last}"));
        }
        if Instant::now() > deadline {
            return Err(format!(
                "petrel did not answer vmm.ping within {PING_TIMEOUT:?}"
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Brings the VM in a live petrel to running from wherever it is: no VM → `vm.create` and
/// `vm.boot`; `Created` or `Shutdown` → `vm.boot`; `Running`/`Paused` → nothing. Returns the
/// state `vm.info` reports at the end.
/// Interfaces in `nets` get their taps made here and passed with `vm.add-net` (SCM_RIGHTS)
/// between `vm.create` and `vm.boot`.
pub fn boot(
    client: &Client,
    config: &VmConfig,
    nets: &[ManagedNet],
    dir: &VmDir,
    jailed: bool,
) -> Result<String, String> {
    let mut effective = effective_config(config, dir);
    if jailed {
        effective = super::jail::plan(&effective, dir)?.0;
    }
    let body = serde_json::to_vec(&effective).map_err(|e| format!("config: {e}"))?;
    let _ = std::fs::write(dir.config(), &body);
    let state = vm_state(client)?;
    match state.as_deref() {
        None => {
            call(client, Endpoint::VmCreate, Some(&body))?;
            for n in nets {
                add_net(client, n)?;
            }
            call(client, Endpoint::VmBoot, None)?;
        }
        Some("Created") | Some("Shutdown") => {
            call(client, Endpoint::VmBoot, None)?;
        }
        _ => {}
    }
    match vm_state(client)? {
        Some(s) if s == "Running" || s == "Paused" => Ok(s),
        other => Err(format!("vm.info: state {other:?} after vm.boot")),
    }
}

/// Makes the tap of `net` and hands it to petrel with `vm.add-net`. petreld's descriptor is
/// closed on return: the tap lives as long as petrel's copy.
fn add_net(client: &Client, net: &ManagedNet) -> Result<(), String> {
    use std::os::fd::AsFd;
    let fd = super::net::create_tap(net).map_err(|e| format!("net {}: {e}", net.id))?;
    if let Some(vlan) = net.vlan {
        super::network::host::set_port_vlan(&net.tap, vlan)
            .map_err(|e| format!("net {}: {e}", net.id))?;
    }
    let mut body = serde_json::json!({"id": net.id, "mac": net.mac});
    if let Some(limits) = net.rate_limiter {
        body["rate_limiter_config"] = serde_json::json!(limits);
    }
    let body = body.to_string();
    let r = client
        .request_with_fds(
            Method::Put,
            Endpoint::VmAddNet.path(),
            Some(body.as_bytes()),
            &[fd.as_fd()],
        )
        .map_err(|e| format!("vm.add-net: {}", chain(&e)))?;
    if r.is_success() {
        Ok(())
    } else {
        Err(failure("vm.add-net", &r))
    }
}

/// Stops the VM and ends its petrel: the ACPI power button and up to `timeout` for the guest
/// to power off (skipped when paused or `timeout` is zero), then `vm.shutdown` (force), then
/// `vmm.shutdown`, then SIGKILL if the process is still there 5 s later. Returns the reason
/// to record.
pub fn stop(client: &Client, proc: ProcessId, timeout: Duration) -> String {
    let pidfd = proc.pidfd().ok();
    let state = vm_state(client).ok().flatten();
    let mut reason = "stopped: forced".to_string();
    let graceful = state.as_deref() == Some("Running") && !timeout.is_zero();
    if graceful && call(client, Endpoint::VmPowerButton, None).is_ok() {
        let deadline = Instant::now() + timeout;
        reason = format!(
            "stopped: forced after {}s without poweroff",
            timeout.as_secs()
        );
        while Instant::now() < deadline {
            if vm_state(client).ok().flatten().as_deref() == Some("Shutdown") {
                reason = "stopped: guest powered off (power button)".into();
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let _ = call(client, Endpoint::VmmShutdown, None);
    let exited = match &pidfd {
        Some(fd) => process::wait_exit(fd, 5000),
        None => !proc.alive(),
    };
    if !exited && proc.alive() {
        let _ = proc.signal(libc::SIGKILL);
        if let Some(fd) = &pidfd {
            process::wait_exit(fd, 5000);
        }
    }
    process::reap(proc.pid);
    reason
}

/// Kills petrel with SIGKILL and waits (up to 5 s) for it to go.
pub fn kill(proc: ProcessId) {
    let pidfd = proc.pidfd().ok();
    let _ = proc.signal(libc::SIGKILL);
    if let Some(fd) = &pidfd {
        process::wait_exit(fd, 5000);
    }
    process::reap(proc.pid);
}
