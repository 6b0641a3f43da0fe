//! `petreld`'s entry point: configuration, the database, reconciliation, the supervisor and
//! the API servers (several threads accepting on one socket, and as many on the optional TCP
//! listener, where every request needs the bearer token), until SIGTERM or SIGINT. VMs keep
//! running when petreld exits.

use std::ffi::CString;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;

use petrel_http::{self as http, Listener, Server, ServerConfig};

use super::config::{self, Command, DaemonConfig};
use super::store::Store;
use super::{host, network, reconcile, routes, supervisor, Daemon};

/// A logger to standard error; the level comes from `$PETRELD_LOG` (default info).
struct StderrLogger;

impl log::Log for StderrLogger {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        m.level() <= log::max_level()
    }

    fn log(&self, r: &log::Record<'_>) {
        if self.enabled(r.metadata()) {
            let _ = writeln!(
                std::io::stderr(),
                "petreld {} {}: {}",
                super::model::now(),
                r.level(),
                r.args()
            );
        }
    }

    fn flush(&self) {}
}

static LOGGER: StderrLogger = StderrLogger;

fn init_logger() {
    let level = std::env::var("PETRELD_LOG")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(log::LevelFilter::Info);
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(level);
    }
}

/// Runs `petreld` with `args` (without the program name); returns the exit status.
pub fn main(args: &[String]) -> i32 {
    init_logger();
    match config::parse(args) {
        Ok(Command::Help) => {
            println!("{}", config::USAGE);
            0
        }
        Ok(Command::Version) => {
            println!("petreld {}", env!("CARGO_PKG_VERSION"));
            0
        }
        Ok(Command::Run(cfg)) => match run(*cfg) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("petreld: error: {e}");
                1
            }
        },
        Err(e) => {
            eprintln!("petreld: {e}");
            2
        }
    }
}

fn private_dir(path: &Path) -> Result<(), String> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(|e| format!("create {}: {e}", path.display()))
}

/// Creates the state directory 0700, or checks an existing one: it must be a directory owned
/// by petreld's uid that nobody else can write to (a world- or group-writable one is refused:
/// files could have been planted in it); read or search access for others is removed.
fn state_dir(path: &Path) -> Result<(), String> {
    private_dir(path)?;
    let meta = std::fs::metadata(path).map_err(|e| format!("state_dir {}: {e}", path.display()))?;
    if !meta.is_dir() {
        return Err(format!("state_dir {}: not a directory", path.display()));
    }
    // SAFETY: geteuid has no arguments and cannot fail.
    let uid = unsafe { libc::geteuid() };
    if meta.uid() != uid {
        return Err(format!(
            "state_dir {}: owned by uid {}, not petreld's uid {uid}",
            path.display(),
            meta.uid()
        ));
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(format!(
            "state_dir {}: writable by {} (mode {mode:04o}); files could have been planted in \
             it: check its contents, then `chmod 0700` it",
            path.display(),
            if mode & 0o002 != 0 {
                "everyone"
            } else {
                "its group"
            },
        ));
    }
    if mode & 0o077 != 0 {
        log::warn!(
            "state_dir {}: mode {mode:04o} lets others read it; setting 0700",
            path.display()
        );
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| format!("chmod {}: {e}", path.display()))?;
    }
    Ok(())
}

/// Creates the database file 0600 before SQLite opens it (SQLite gives its WAL and shared
/// memory files the database's mode), and takes group and other access away from existing
/// ones.
fn private_db(db: &Path) -> Result<(), String> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(db)
        .map_err(|e| format!("{}: {e}", db.display()))?;
    for suffix in ["", "-wal", "-shm"] {
        let mut name = db.as_os_str().to_owned();
        name.push(suffix);
        let path = Path::new(&name);
        match std::fs::metadata(path) {
            Ok(m) if m.mode() & 0o077 != 0 => {
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                    .map_err(|e| format!("chmod {}: {e}", path.display()))?;
            }
            _ => {}
        }
    }
    Ok(())
}

/// The TCP listener's handler: every request needs the bearer token, and only a connection
/// that has shown it leaves the unauthenticated slots.
struct TcpApi {
    daemon: Arc<super::Daemon>,
    token: Arc<config::BearerToken>,
}

impl http::Handler for TcpApi {
    fn handle(&mut self, req: http::Request) -> http::Response {
        routes::authorize(&req, &self.token).unwrap_or_else(|| routes::handle(&self.daemon, req))
    }

    fn authenticates(&self, req: &http::Request) -> bool {
        routes::authorize(req, &self.token).is_none()
    }
}

/// The TCP listener's limits (per server thread): anyone who can reach the port can
/// connect, so connections without the token get their own, larger, pool of slots and a
/// short idle time; when that pool is full the longest idle of them is closed to make room.
fn tcp_server_config() -> ServerConfig {
    ServerConfig {
        idle_timeout: std::time::Duration::from_secs(1),
        max_unauthenticated: TCP_MAX_UNAUTHENTICATED,
        ..ServerConfig::default()
    }
}

/// Unauthenticated TCP connections per server thread.
const TCP_MAX_UNAUTHENTICATED: usize = 128;

/// Raises the soft open-files limit to the hard one (at most 65536): the TCP listener may
/// hold hundreds of unauthenticated connections besides every VM's descriptors.
fn raise_open_files_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is valid for writes; getrlimit/setrlimit only read and write it.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            let want = lim.rlim_max.min(65536);
            if lim.rlim_cur < want {
                lim.rlim_cur = want;
                if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                    log::warn!(
                        "cannot raise the open files limit: {}",
                        std::io::Error::last_os_error()
                    );
                }
            }
        }
    }
}

/// The signals petreld waits for, blocked in every thread (threads inherit the mask).
fn block_signals() -> libc::sigset_t {
    // SAFETY: `set` is initialised by sigemptyset before use; sigaddset and pthread_sigmask
    // only read and write it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
            libc::sigaddset(&mut set, s);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

/// Gives the socket to `group` (name or number) with mode 0660, else mode 0600.
fn secure_socket(path: &Path, group: Option<&str>) -> Result<(), String> {
    let mode = match group {
        None => 0o600,
        Some(g) => {
            let gid = match g.parse::<u32>() {
                Ok(n) => n,
                Err(_) => {
                    let name = CString::new(g).map_err(|_| format!("socket_group {g:?}"))?;
                    // SAFETY: `name` is a NUL-terminated string; getgrnam returns a pointer to
                    // static storage or null, read at once.
                    let gr = unsafe { libc::getgrnam(name.as_ptr()) };
                    if gr.is_null() {
                        return Err(format!("socket_group: no group {g:?}"));
                    }
                    // SAFETY: `gr` is non-null and points to a valid group entry.
                    unsafe { (*gr).gr_gid }
                }
            };
            let cpath = CString::new(path.as_os_str().as_bytes())
                .map_err(|_| format!("{}: bad path", path.display()))?;
            // SAFETY: `cpath` is NUL-terminated; uid -1 leaves the owner unchanged.
            if unsafe { libc::chown(cpath.as_ptr(), u32::MAX, gid) } < 0 {
                let e = std::io::Error::last_os_error();
                return Err(format!("chown {} to group {g}: {e}", path.display()));
            }
            0o660
        }
    };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| format!("chmod {}: {e}", path.display()))
}

fn run(cfg: DaemonConfig) -> Result<(), String> {
    // Checked first: a bad token file stops petreld before it touches anything.
    let tcp = match &cfg.tcp {
        Some(t) => Some((t.listen, config::read_token(&t.token_file)?)),
        None => None,
    };
    state_dir(&cfg.state_dir)?;
    if let Some(parent) = cfg.socket.parent() {
        private_dir(parent)?;
    }
    let db = cfg.state_dir.join("petreld.db");
    private_db(&db)?;
    let store = Store::open(&db)
        .map_err(|e| format!("{}: {}", db.display(), super::launcher::chain(&e)))?;
    let host = host::probe(&cfg.petrel, cfg.gate("mshv"));
    if let Some(e) = host.capabilities.get("error") {
        log::warn!("host capabilities unknown: {e}");
    }
    let signals = block_signals();
    let workers = cfg.workers;
    let socket = cfg.socket.clone();
    let group = cfg.socket_group.clone();
    let daemon = Daemon::new(cfg, store, host).map_err(|e| format!("set up: {e}"))?;
    supervisor::spawn(Arc::clone(&daemon)).map_err(|e| format!("supervisor thread: {e}"))?;
    // Networks first: the VMs' taps join their bridges.
    let nets = network::reconcile::reconcile(&daemon);
    log::info!(
        "networks reconciled: {} up, {} deletes finished, {} leftovers removed",
        nets.networks,
        nets.deleted,
        nets.removed
    );
    network::reconcile::spawn_supervisor(Arc::clone(&daemon))
        .map_err(|e| format!("network supervisor thread: {e}"))?;
    // A failed reconcile (e.g. the state disk full) leaves some VMs as they were recorded;
    // petreld still serves its API rather than leaving every VM unmanaged.
    match reconcile::reconcile(&daemon) {
        Ok(summary) => log::info!(
            "reconciled: {} re-attached, {} failed, {} restarting, {} deletes finished",
            summary.attached,
            summary.failed,
            summary.restarting,
            summary.deleted
        ),
        Err(e) => log::error!("reconcile: {} (serving anyway)", e.message),
    }
    // Bound before the Unix socket, so that a port in use leaves no socket file behind.
    let tcp = match tcp {
        Some((addr, token)) => Some((
            Listener::bind_tcp(addr).map_err(|e| format!("tcp.listen {addr}: bind: {e}"))?,
            Arc::new(token),
        )),
        None => None,
    };
    let listener = http::listen(&socket)
        .map_err(|e| format!("{}: {}", socket.display(), super::launcher::chain(&e)))?;
    secure_socket(&socket, group.as_deref())?;
    let mut servers = Vec::new();
    for _ in 0..workers {
        let l = listener
            .try_clone()
            .map_err(|e| format!("clone listener: {e}"))?;
        let d = Arc::clone(&daemon);
        let server = Server::start(l, ServerConfig::default(), move |req| {
            routes::handle(&d, req)
        })
        .map_err(|e| format!("API server: {e}"))?;
        servers.push(server);
    }
    drop(listener);
    log::info!("listening on {}", socket.display());
    if let Some((listener, token)) = tcp {
        raise_open_files_limit();
        for _ in 0..workers {
            let l = listener
                .try_clone()
                .map_err(|e| format!("clone listener: {e}"))?;
            let handler = TcpApi {
                daemon: Arc::clone(&daemon),
                token: Arc::clone(&token),
            };
            let server = Server::start(l, tcp_server_config(), handler)
                .map_err(|e| format!("TCP API server: {e}"))?;
            servers.push(server);
        }
        if let Some(addr) = listener.tcp_addr() {
            if !addr.ip().is_loopback() {
                log::warn!(
                    "tcp {addr}: not loopback and not encrypted (the token is sent in clear)"
                );
            }
            log::info!("listening on tcp {addr} (bearer token required)");
        }
    }
    let mut sig: libc::c_int = 0;
    // SAFETY: `signals` is an initialised set; `sig` is valid for a write.
    unsafe { libc::sigwait(&signals, &mut sig) };
    log::info!("signal {sig}: exiting (VMs keep running)");
    for s in servers {
        s.shutdown();
    }
    let _ = std::fs::remove_file(&socket);
    Ok(())
}
