//! The server: binding or adopting the listening socket and the one thread that serves it.
//!
//! The listener is a Unix stream socket or, for remote access, a TCP socket ([`Listener`]);
//! file descriptors (SCM_RIGHTS) only ever arrive over Unix sockets.
//!
//! One thread runs a `poll(2)` loop over the listener, a wake-up socket and every open
//! connection. Requests are handled one at a time on that thread (the API is serialized by
//! construction); a connection waiting for a request or for its peer to read a response has a
//! deadline, so slow or half-open clients are closed instead of blocking anyone. Connections
//! that have not yet shown they may use the server ([`Handler::authenticates`]) have their
//! own slots; when those are full, a new connection closes the longest idle one, or gets a
//! 503 and a lingering close (never a reset).

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::connection::Connection;
use super::{fds, Error, Limits, Request, Response, Result, Version};

/// Answers requests, one at a time, on the server thread. Implemented for every
/// `FnMut(Request) -> Response + Send`; to answer on another thread, see
/// [`Forwarder`](super::Forwarder).
pub trait Handler: Send + 'static {
    /// The response to `request`.
    fn handle(&mut self, request: Request) -> Response;

    /// Whether `request` proves its sender may use the server (e.g. carries the bearer
    /// token). Until one of its requests does, a connection holds one of the
    /// [`ServerConfig::max_unauthenticated`] slots; after, one of the
    /// [`ServerConfig::max_connections`]. Everyone is trusted by default (a Unix socket's
    /// file mode already decided who may connect).
    fn authenticates(&self, _request: &Request) -> bool {
        true
    }
}

impl<F: FnMut(Request) -> Response + Send + 'static> Handler for F {
    fn handle(&mut self, request: Request) -> Response {
        self(request)
    }
}

/// How the server treats connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerConfig {
    /// Request size limits.
    pub limits: Limits,
    /// Time a connection has to deliver a whole request, counted from its first byte.
    pub read_timeout: Duration,
    /// Time a connection may stay open with nothing of a request received, after its accept
    /// or the previous response.
    pub idle_timeout: Duration,
    /// Time a peer has to take a whole response.
    pub write_timeout: Duration,
    /// Connections that have shown they may use the server ([`Handler::authenticates`]).
    pub max_connections: usize,
    /// The status lines and error bodies the transport writes.
    pub dialect: super::Dialect,
    /// Connections that have not yet: a new one over this first closes the longest idle of
    /// them (nothing received), else it gets a 503. Idle clients cannot starve anyone.
    pub max_unauthenticated: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            limits: Limits::default(),
            read_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(2),
            write_timeout: Duration::from_secs(5),
            max_connections: 16,
            dialect: super::Dialect::default(),
            max_unauthenticated: 16,
        }
    }
}

/// Where to listen: a socket path (also written `path=PATH`, as Cloud Hypervisor takes it), or
/// `fd=N` for a listening socket inherited from the parent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SocketSpec {
    /// Bind this path.
    Path(PathBuf),
    /// Adopt this inherited descriptor.
    Fd(RawFd),
}

impl FromStr for SocketSpec {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.strip_prefix("fd=") {
            Some(n) => n
                .parse::<RawFd>()
                .ok()
                .filter(|&n| n >= 0)
                .map(SocketSpec::Fd)
                .ok_or_else(|| Error::SocketSpec(s.to_string())),
            None => {
                // Cloud Hypervisor's `path=PATH` form, or the path itself.
                let path = s.strip_prefix("path=").unwrap_or(s);
                if path.is_empty() {
                    Err(Error::SocketSpec(s.to_string()))
                } else {
                    Ok(SocketSpec::Path(PathBuf::from(path)))
                }
            }
        }
    }
}

impl SocketSpec {
    /// Binds the path ([`listen`]) or adopts the fd ([`adopt_listener`]). For `Fd(n)` this
    /// takes ownership of descriptor `n`: call it once, for a descriptor the process inherited
    /// and nothing else in it uses.
    pub fn listen(&self) -> Result<UnixListener> {
        match self {
            SocketSpec::Path(path) => listen(path),
            SocketSpec::Fd(n) => {
                // SAFETY: F_GETFD only reads the descriptor flags of `n`.
                if unsafe { libc::fcntl(*n, libc::F_GETFD) } < 0 {
                    return Err(Error::NotAListener(*n));
                }
                // SAFETY: `n` is open (checked above) and, per this method's contract, an
                // inherited descriptor that no other part of the process owns.
                let fd = unsafe { OwnedFd::from_raw_fd(*n) };
                adopt_listener(fd)
            }
        }
    }
}

/// Binds `path` and listens. A stale socket file (nobody accepting) is replaced; a live one
/// is [`Error::InUse`]; a file that is not a socket is never removed. Restrict access with
/// `std::fs::set_permissions` or a private parent directory.
pub fn listen(path: &Path) -> Result<UnixListener> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => match UnixStream::connect(path) {
            Ok(_) => return Err(Error::InUse(path.to_path_buf())),
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                std::fs::remove_file(path).map_err(|source| Error::Bind {
                    path: path.to_path_buf(),
                    source,
                })?;
            }
            Err(source) => {
                return Err(Error::Bind {
                    path: path.to_path_buf(),
                    source,
                })
            }
        },
        Ok(_) => return Err(Error::NotASocket(path.to_path_buf())),
        Err(_) => {}
    }
    UnixListener::bind(path).map_err(|source| Error::Bind {
        path: path.to_path_buf(),
        source,
    })
}

/// Checks that `fd` is a listening Unix stream socket, marks it close-on-exec and adopts it.
pub fn adopt_listener(fd: OwnedFd) -> Result<UnixListener> {
    let raw = fd.as_raw_fd();
    let ok = sockopt(raw, libc::SO_DOMAIN) == Some(libc::AF_UNIX)
        && sockopt(raw, libc::SO_TYPE) == Some(libc::SOCK_STREAM)
        && sockopt(raw, libc::SO_ACCEPTCONN) == Some(1);
    if !ok {
        return Err(Error::NotAListener(raw));
    }
    // SAFETY: `raw` is an open descriptor we own; F_SETFD only changes its flags.
    if unsafe { libc::fcntl(raw, libc::F_SETFD, libc::FD_CLOEXEC) } < 0 {
        return Err(Error::Setup(io::Error::last_os_error()));
    }
    Ok(UnixListener::from(fd))
}

/// An integer socket option of `fd`, if it can be read.
fn sockopt(fd: RawFd, name: libc::c_int) -> Option<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `value` and `len` are valid for writes of the sizes given.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            name,
            (&raw mut value).cast(),
            &mut len,
        )
    };
    (rc == 0).then_some(value)
}

/// A listening socket a [`Server`] accepts on.
#[derive(Debug)]
pub enum Listener {
    /// A Unix stream socket (requests may carry fds).
    Unix(UnixListener),
    /// A TCP socket (no fds; authentication is the handler's business).
    Tcp(TcpListener),
}

impl From<UnixListener> for Listener {
    fn from(l: UnixListener) -> Listener {
        Listener::Unix(l)
    }
}

impl From<TcpListener> for Listener {
    fn from(l: TcpListener) -> Listener {
        Listener::Tcp(l)
    }
}

impl AsFd for Listener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Listener::Unix(l) => l.as_fd(),
            Listener::Tcp(l) => l.as_fd(),
        }
    }
}

impl Listener {
    /// Binds a TCP listener on `addr` (close-on-exec, like every std socket).
    pub fn bind_tcp(addr: SocketAddr) -> io::Result<Listener> {
        TcpListener::bind(addr).map(Listener::Tcp)
    }

    /// The TCP address listened on (`None` for a Unix socket).
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        match self {
            Listener::Unix(_) => None,
            Listener::Tcp(l) => l.local_addr().ok(),
        }
    }

    /// Another handle to the same listening socket (several servers may accept on it).
    pub fn try_clone(&self) -> io::Result<Listener> {
        Ok(match self {
            Listener::Unix(l) => Listener::Unix(l.try_clone()?),
            Listener::Tcp(l) => Listener::Tcp(l.try_clone()?),
        })
    }

    fn set_nonblocking(&self, on: bool) -> io::Result<()> {
        match self {
            Listener::Unix(l) => l.set_nonblocking(on),
            Listener::Tcp(l) => l.set_nonblocking(on),
        }
    }

    /// Accepts one connection. Connections are handled as stream sockets through their fd
    /// only (`recvmsg`/`sendmsg`, `fcntl`, `setsockopt(SOL_SOCKET)`, `shutdown`, `dup`),
    /// which behave the same for both families, so a TCP connection is carried in a
    /// [`UnixStream`] wrapper; nothing family-specific (addresses, credentials) is ever
    /// asked of it.
    fn accept(&self) -> io::Result<UnixStream> {
        match self {
            Listener::Unix(l) => l.accept().map(|(s, _)| s),
            Listener::Tcp(l) => {
                let (s, _) = l.accept()?;
                // Responses are written whole: don't let Nagle hold back their tails.
                let _ = s.set_nodelay(true);
                Ok(UnixStream::from(OwnedFd::from(s)))
            }
        }
    }
}

/// A running server. Dropping it stops it, like [`Server::shutdown`].
pub struct Server {
    wake: UnixStream,
    thread: Option<JoinHandle<()>>,
    /// The socket file this server created: path, device and inode (removed on shutdown if
    /// still the same file).
    bound: Option<(PathBuf, u64, u64)>,
}

impl Server {
    /// Binds `path` ([`listen`]) and starts serving; the socket file is removed on shutdown.
    pub fn bind(
        path: impl AsRef<Path>,
        config: ServerConfig,
        handler: impl Handler,
    ) -> Result<Server> {
        Server::bind_with_init(path, config, handler, || Ok(()))
    }

    /// Like [`Server::bind`], running `init` first on the server thread (e.g. to install a
    /// seccomp filter there); see [`Server::start_with_init`].
    pub fn bind_with_init(
        path: impl AsRef<Path>,
        config: ServerConfig,
        handler: impl Handler,
        init: impl FnOnce() -> std::io::Result<()> + Send + 'static,
    ) -> Result<Server> {
        let path = path.as_ref();
        let listener = listen(path)?;
        let meta = std::fs::symlink_metadata(path).map_err(Error::Setup)?;
        let started = Server::start_with_init(listener, config, handler, init);
        let mut server = match started {
            Ok(server) => server,
            Err(e) => {
                let _ = std::fs::remove_file(path);
                return Err(e);
            }
        };
        server.bound = Some((path.to_path_buf(), meta.dev(), meta.ino()));
        Ok(server)
    }

    /// Starts serving `listener` (a [`UnixListener`], a [`TcpListener`] or a [`Listener`]) on
    /// a new thread named `http-server`.
    pub fn start(
        listener: impl Into<Listener>,
        config: ServerConfig,
        handler: impl Handler,
    ) -> Result<Server> {
        Server::start_with_init(listener, config, handler, || Ok(()))
    }

    /// Like [`Server::start`], running `init` first on the server thread. Fails closed: when
    /// `init` fails, the thread ends without serving anything and this returns its error.
    pub fn start_with_init(
        listener: impl Into<Listener>,
        config: ServerConfig,
        handler: impl Handler,
        init: impl FnOnce() -> std::io::Result<()> + Send + 'static,
    ) -> Result<Server> {
        let listener = listener.into();
        listener.set_nonblocking(true).map_err(Error::Setup)?;
        let (wake, wake_rx) = UnixStream::pair().map_err(Error::Setup)?;
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("http-server".into())
            .spawn(move || {
                let ready = init();
                let ok = ready.is_ok();
                let _ = ready_tx.send(ready);
                if ok {
                    serve(listener, wake_rx, config, handler)
                }
            })
            .map_err(Error::Setup)?;
        let ready = ready_rx
            .recv()
            .unwrap_or_else(|_| Err(std::io::Error::other("the server thread ended in init")));
        if let Err(e) = ready {
            let _ = thread.join();
            return Err(Error::Setup(e));
        }
        Ok(Server {
            wake,
            thread: Some(thread),
            bound: None,
        })
    }

    /// The socket path, when this server bound it.
    pub fn path(&self) -> Option<&Path> {
        self.bound.as_ref().map(|(p, _, _)| p.as_path())
    }

    /// Stops accepting, closes every connection (after the request being handled, if any)
    /// and waits for the server thread.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        let _ = fds::send(self.wake.as_fd(), b"x", &[]);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        if let Some((path, dev, ino)) = self.bound.take() {
            let same =
                std::fs::symlink_metadata(&path).is_ok_and(|m| m.dev() == dev && m.ino() == ino);
            if same {
                let _ = std::fs::remove_file(&path);
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

fn pollfd(fd: RawFd, events: libc::c_short) -> libc::pollfd {
    libc::pollfd {
        fd,
        events,
        revents: 0,
    }
}

/// The server thread.
fn serve(listener: Listener, wake: UnixStream, config: ServerConfig, mut handler: impl Handler) {
    let mut conns: Vec<Connection> = Vec::new();
    let mut refused = Refused {
        streams: Vec::new(),
        dialect: config.dialect,
    };
    let mut accept_paused_until: Option<Instant> = None;
    loop {
        let now = Instant::now();
        for conn in conns.iter_mut().filter(|c| c.deadline <= now) {
            conn.time_out(&config);
        }
        conns.retain(|c| !c.closed);
        refused.expire(now);
        if accept_paused_until.is_some_and(|t| t <= now) {
            accept_paused_until = None;
        }
        let listen_events = if accept_paused_until.is_some() {
            0
        } else {
            libc::POLLIN
        };
        let mut pfds = vec![
            pollfd(wake.as_raw_fd(), libc::POLLIN),
            pollfd(listener.as_fd().as_raw_fd(), listen_events),
        ];
        pfds.extend(
            conns
                .iter()
                .map(|c| pollfd(c.fd().as_raw_fd(), c.interest())),
        );
        pfds.extend(refused.pollfds());
        let next = conns
            .iter()
            .map(|c| c.deadline)
            .chain(accept_paused_until)
            .chain(refused.next_deadline())
            .min();
        let timeout = next.map_or(-1, |t| {
            let ms = t.saturating_duration_since(now).as_micros().div_ceil(1000);
            ms.min(i32::MAX as u128) as libc::c_int
        });
        // SAFETY: `pfds` is a live array of `pfds.len()` pollfd structures.
        let rc = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, timeout) };
        if rc < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            log::error!("api server: poll: {err}");
            return;
        }
        if pfds[0].revents != 0 {
            return;
        }
        let n = conns.len();
        for (conn, pfd) in conns.iter_mut().zip(&pfds[2..2 + n]) {
            if pfd.revents != 0 {
                conn.ready(pfd.revents, &mut handler, &config);
            }
        }
        refused.ready(&pfds[2 + n..]);
        conns.retain(|c| !c.closed);
        close_idle_over(&mut conns, &mut refused, true, config.max_connections);
        if pfds[1].revents != 0 {
            accept_paused_until = accept_all(&listener, &mut conns, &mut refused, &config);
        }
    }
}

/// A connection is closed to make room only after it has been idle this long, so that a
/// client that has just connected has its request read first.
const EVICT_AFTER: Duration = Duration::from_millis(100);

/// Closes the longest idle connections (nothing of a request received for [`EVICT_AFTER`])
/// of one kind (authenticated or not) while there are more than `max` of that kind. Returns
/// whether it got under the limit.
fn close_idle_over(
    conns: &mut Vec<Connection>,
    refused: &mut Refused,
    authenticated: bool,
    max: usize,
) -> bool {
    let Some(old) = Instant::now().checked_sub(EVICT_AFTER) else {
        return false;
    };
    loop {
        let count = conns
            .iter()
            .filter(|c| c.authenticated == authenticated)
            .count();
        if count <= max {
            return true;
        }
        let oldest = conns
            .iter()
            .enumerate()
            .filter(|(_, c)| c.authenticated == authenticated)
            .filter_map(|(i, c)| c.idle_since().filter(|&t| t <= old).map(|t| (t, i)))
            .min();
        let Some((_, i)) = oldest else {
            return false;
        };
        log::debug!("api server: closing an idle connection to make room");
        refused.close(conns.swap_remove(i).into_stream(), false);
    }
}

/// Accepts every pending connection. Returns when to retry if the process ran out of fds.
fn accept_all(
    listener: &Listener,
    conns: &mut Vec<Connection>,
    refused: &mut Refused,
    config: &ServerConfig,
) -> Option<Instant> {
    loop {
        match listener.accept() {
            Ok(stream) => {
                // Room for one more unauthenticated connection: close an idle one if needed.
                let room = config.max_unauthenticated > 0
                    && close_idle_over(conns, refused, false, config.max_unauthenticated - 1);
                if !room {
                    refused.close(stream, true);
                    continue;
                }
                match Connection::new(stream, config) {
                    Ok(conn) => conns.push(conn),
                    Err(e) => log::warn!("api server: set up connection: {e}"),
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return None,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                log::warn!("api server: accept: {e}");
                return Some(Instant::now() + Duration::from_millis(100));
            }
        }
    }
}

/// How long a refused connection is kept to read (and drop) what its peer sends, so that it
/// closes with the 503 delivered rather than with a reset.
const LINGER: Duration = Duration::from_secs(1);
/// Refused connections kept lingering at once; beyond, they are drained once and closed.
const MAX_LINGERING: usize = 64;

/// Connections being closed (refused over the limit with a 503, or idle ones closed to make
/// room): the write side is shut down, and what the peer sends is read and dropped until it
/// closes or [`LINGER`] passes. Closing a socket with unread input makes the kernel send a
/// reset, which loses the 503 on TCP.
struct Refused {
    streams: Vec<(UnixStream, Instant)>,
    /// The status line and error body form of the 503.
    dialect: super::Dialect,
}

impl Refused {
    fn close(&mut self, stream: UnixStream, with_503: bool) {
        if stream.set_nonblocking(true).is_err() {
            return;
        }
        if with_503 {
            let mut out = Vec::new();
            let response = self.dialect.error(503, "too many connections");
            self.dialect
                .adapt(&response)
                .write_to(&mut out, Version::Http11, false, false);
            let _ = fds::send(stream.as_fd(), &out, &[]);
        }
        let _ = stream.shutdown(std::net::Shutdown::Write);
        if drain(&stream) || self.streams.len() >= MAX_LINGERING {
            return;
        }
        self.streams.push((stream, Instant::now() + LINGER));
    }

    fn expire(&mut self, now: Instant) {
        self.streams.retain(|(s, deadline)| {
            if *deadline <= now {
                drain(s);
                false
            } else {
                true
            }
        });
    }

    fn pollfds(&self) -> impl Iterator<Item = libc::pollfd> + '_ {
        self.streams
            .iter()
            .map(|(s, _)| pollfd(s.as_raw_fd(), libc::POLLIN))
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.streams.iter().map(|(_, d)| *d).min()
    }

    /// Reads what arrived; drops the streams whose peer closed.
    fn ready(&mut self, pfds: &[libc::pollfd]) {
        let mut i = 0;
        self.streams.retain(|(s, _)| {
            let revents = pfds.get(i).map_or(0, |p| p.revents);
            i += 1;
            revents == 0 || !drain(s)
        });
    }
}

/// Reads and drops everything readable on `stream`; true when the peer closed (or failed).
fn drain(stream: &UnixStream) -> bool {
    let mut buf = [0u8; 4096];
    loop {
        // SAFETY: `buf` is valid for writes of its length; the descriptor is open.
        let n = unsafe {
            libc::recv(
                stream.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT,
            )
        };
        if n > 0 {
            continue;
        }
        if n == 0 {
            return true;
        }
        let e = io::Error::last_os_error();
        return match e.kind() {
            io::ErrorKind::WouldBlock => false,
            io::ErrorKind::Interrupted => continue,
            _ => true,
        };
    }
}
