//! `petreld`, the thin orchestrator: one `petrel` process per VM, state in SQLite, a REST/JSON
//! API on a Unix socket (`docs/api/petreld.yaml`).
//!
//! - [`config`]: command line and config file. [`model`]: records, requests, validation.
//! - [`store`]: SQLite (VMs, templates, migrations); every change is written before acting.
//! - [`host`]: CPUs, memory, hypervisors (`petrel --capabilities`), admission.
//! - [`process`]: pid + start time identities, pidfds, reaping. [`launcher`]: a VM's
//!   directory, starting petrel detached and driving its per-VM API.
//! - [`ops`]: the VM operations (create, start, stop, kill, pause, resume, reboot, delete).
//! - [`supervisor`]: notices a petrel's death at once (pidfds) and a guest's poweroff (polling
//!   `vm.info`), restarting per policy. [`reconcile`]: re-attaches after a petreld restart.
//! - [`cgroup`]: petrel's cgroup with the VM's limits (root).
//! - [`net`]: the taps petreld makes for a VM's interfaces. [`network`]: `/v1/networks`
//!   (bridges, nftables, dnsmasq). [`events`]: `/v1/events`.
//! - [`storage`]: directory pools and raw/qcow2 volumes (`qemu-img`), volumes in VM configs.
//! - [`snapshots`]: a VM's snapshots and reverting to one. [`migrate`]: moving a VM to
//!   another petreld.
//! - [`routes`] and [`metrics`]: the HTTP API and Prometheus text. [`server`]: `main`.

pub mod cgroup;
pub mod config;
pub mod events;
pub mod host;
pub mod jail;
pub mod launcher;
pub mod metrics;
pub mod migrate;
pub mod model;
pub mod net;
pub mod network;
pub mod ops;
pub mod process;
pub mod reconcile;
pub mod reserve;
pub mod routes;
pub mod server;
pub mod snapshots;
pub mod storage;
pub mod store;
pub mod supervisor;
pub mod templates;

use std::collections::{HashMap, HashSet};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

pub use config::DaemonConfig;
pub use server::main;

use host::Host;
use process::ProcessId;
use store::{Store, StoreError};

/// An API failure: the HTTP status and a one-line message (`{"error": message}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status.
    pub status: u16,
    /// What went wrong.
    pub message: String,
}

impl ApiError {
    /// `status` with `message`.
    pub fn new(status: u16, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        match &e {
            StoreError::Duplicate { .. } => ApiError::new(409, e.to_string()),
            StoreError::NotFound { .. } => ApiError::new(404, e.to_string()),
            _ => ApiError::new(500, launcher::chain(&e)),
        }
    }
}

/// How long an API operation waits for another one on the same VM to end.
pub const CLAIM_WAIT: std::time::Duration = std::time::Duration::from_secs(15);

/// Result of the API's operations.
pub type ApiResult<T> = Result<T, ApiError>;

/// A live petrel petreld watches.
#[derive(Debug, Clone)]
pub struct Runtime {
    /// The process.
    pub process: ProcessId,
    /// Its pidfd (readable once it exits).
    pub pidfd: Arc<OwnedFd>,
    /// Its API socket.
    pub socket: PathBuf,
}

/// The daemon's shared state; every API worker and the supervisor hold an `Arc` of it.
pub struct Daemon {
    /// Effective configuration.
    pub config: DaemonConfig,
    store: Mutex<Store>,
    runtimes: Mutex<HashMap<String, Runtime>>,
    busy: Mutex<HashSet<String>>,
    /// Serializes admission checks with the writes they guard.
    admission: Mutex<()>,
    host: Mutex<Host>,
    wake: UnixStream,
    wake_rx: UnixStream,
    /// Subscribers of `/v1/events`.
    pub events: events::EventHub,
    /// The networks' lock and dnsmasq processes.
    pub networks: network::Networks,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Marks a VM as having an operation in progress until dropped.
pub struct BusyGuard<'a> {
    daemon: &'a Daemon,
    id: String,
}

impl Drop for BusyGuard<'_> {
    fn drop(&mut self) {
        lock(&self.daemon.busy).remove(&self.id);
    }
}

impl Daemon {
    /// A daemon over `store`, with the host probed as `host`.
    pub fn new(config: DaemonConfig, mut store: Store, host: Host) -> std::io::Result<Arc<Daemon>> {
        let events =
            events::EventHub::start(std::time::Duration::from_millis(config.events_keepalive_ms))?;
        store.set_observer(events.publisher());
        let (wake, wake_rx) = UnixStream::pair()?;
        wake.set_nonblocking(true)?;
        wake_rx.set_nonblocking(true)?;
        Ok(Arc::new(Daemon {
            config,
            store: Mutex::new(store),
            runtimes: Mutex::new(HashMap::new()),
            busy: Mutex::new(HashSet::new()),
            admission: Mutex::new(()),
            host: Mutex::new(host),
            wake,
            wake_rx,
            events,
            networks: network::Networks::default(),
        }))
    }

    /// The database, locked.
    pub fn store(&self) -> MutexGuard<'_, Store> {
        lock(&self.store)
    }

    /// The host as last probed.
    pub fn host(&self) -> Host {
        lock(&self.host).clone()
    }

    /// Probes the host again.
    pub fn refresh_host(&self) -> Host {
        let h = host::probe(&self.config.petrel, self.config.gate("mshv"));
        *lock(&self.host) = h.clone();
        h
    }

    /// Claims VM `id` for one operation, waiting up to [`CLAIM_WAIT`] for one in progress
    /// to end; 409 after that.
    pub fn claim(&self, id: &str) -> ApiResult<BusyGuard<'_>> {
        let deadline = std::time::Instant::now() + CLAIM_WAIT;
        loop {
            if let Some(guard) = self.try_claim(id) {
                return Ok(guard);
            }
            if std::time::Instant::now() >= deadline {
                return Err(ApiError::new(
                    409,
                    format!("VM {id}: another operation is in progress, retry later"),
                ));
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    /// Claims VM `id` if nothing else has.
    pub fn try_claim(&self, id: &str) -> Option<BusyGuard<'_>> {
        lock(&self.busy).insert(id.to_string()).then(|| BusyGuard {
            daemon: self,
            id: id.to_string(),
        })
    }

    /// The live petrel of VM `id`, if petreld watches one.
    pub fn runtime(&self, id: &str) -> Option<Runtime> {
        lock(&self.runtimes).get(id).cloned()
    }

    /// Every watched petrel.
    pub fn runtimes(&self) -> Vec<(String, Runtime)> {
        lock(&self.runtimes)
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Starts watching `process` as VM `id`'s petrel.
    pub fn attach(&self, id: &str, process: ProcessId, socket: PathBuf) -> std::io::Result<()> {
        let pidfd = Arc::new(process.pidfd()?);
        lock(&self.runtimes).insert(
            id.to_string(),
            Runtime {
                process,
                pidfd,
                socket,
            },
        );
        self.wake_supervisor();
        Ok(())
    }

    /// Stops watching VM `id`'s petrel.
    pub fn detach(&self, id: &str) -> Option<Runtime> {
        let r = lock(&self.runtimes).remove(id);
        self.wake_supervisor();
        r
    }

    /// Makes the supervisor rebuild its set of pidfds.
    pub fn wake_supervisor(&self) {
        use std::io::Write;
        let _ = (&self.wake).write(b"w");
    }
}

/// 16 random hex digits (a VM id).
pub fn new_id() -> String {
    let mut bytes = [0u8; 8];
    // SAFETY: getrandom writes at most `bytes.len()` bytes into the buffer.
    let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    if n != bytes.len() as isize {
        // Fall back to time and pid: still unique enough with the name check.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        bytes = (t ^ (u64::from(std::process::id()) << 40)).to_be_bytes();
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
