//! The muxer: every connection of one vsock device, keyed by (host port, guest port), the
//! listening socket and the host connections still in their `CONNECT` handshake.
//!
//! It turns guest packets into host socket I/O ([`Muxer::handle_tx`]) and produces the packets
//! the guest gets ([`Muxer::next_rx`]): control packets first (REQUEST, RESPONSE, SHUTDOWN,
//! CREDIT_UPDATE, RST, in the order they arose), then data from readable host sockets, round
//! robin. A connection waiting in that readable list is not watched for input, so when the
//! guest's RX queue is empty the host sockets are simply not read (back-pressure) until the
//! RX queue is refilled and the device asks for packets again.
//!
//! The muxer does not own the event loop; the changes it wants to the set of watched fds are
//! queued ([`FdOp`]) and applied by the device with [`Muxer::apply_fd_ops`]. A closed socket
//! is kept open until its removal is applied, so its fd number cannot be reused meanwhile.
//!
//! Host connections have deadlines ([`Muxer::expire`], called by the device's timer): one
//! that has not sent its `CONNECT` line within the timeout ([`HOST_CONN_TIMEOUT`]) is closed,
//! and so is one whose REQUEST the guest has not answered within the timeout of the line
//! (the guest also gets an RST for it). When `accept` fails for want of file descriptors the
//! listening socket is left readable, so it is unwatched until the next timer tick rather
//! than waking the event loop again and again.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use event_manager::{EventOps, EventSet, Events};
use log::warn;

use super::connection::{Connection, State, Verdict};
use super::host::{self, Handshake, HandshakeStep};
use super::packet::{op, Header, HOST_CID, MAX_PAYLOAD, SHUTDOWN_SEND, TYPE_STREAM};
use super::VsockCounters;

/// Most connections (including host connections still in their handshake) per device.
pub const MAX_CONNECTIONS: usize = 1024;
/// Most control packets waiting for RX buffers.
pub const MAX_PENDING_CONTROL: usize = 4 * MAX_CONNECTIONS;
/// First port petrel gives host-initiated connections.
pub const FIRST_LOCAL_PORT: u32 = 1024;
/// How long a host connection may take to send its `CONNECT` line, and then how long the
/// guest may take to answer its REQUEST (like Firecracker).
pub const HOST_CONN_TIMEOUT: Duration = Duration::from_secs(2);

/// A connection's identity: petrel's (host) port and the guest's port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct ConnKey {
    pub local: u32,
    pub peer: u32,
}

/// A change to the event loop's watch list.
#[derive(Debug)]
pub(crate) enum FdOp {
    Add(RawFd, EventSet),
    Modify(RawFd, EventSet),
    /// Stop watching; the stream, if any, is closed after that.
    Remove(RawFd, Option<UnixStream>),
}

/// See the module documentation.
#[derive(Debug)]
pub(crate) struct Muxer {
    guest_cid: u64,
    uds_path: PathBuf,
    listener: UnixListener,
    handshakes: HashMap<RawFd, Handshake>,
    conns: HashMap<ConnKey, Connection>,
    by_fd: HashMap<RawFd, ConnKey>,
    ctrl: VecDeque<Header>,
    rx_ready: VecDeque<ConnKey>,
    fd_ops: Vec<FdOp>,
    next_port: u32,
    /// Host-initiated connections waiting for the guest's RESPONSE, since their REQUEST was
    /// queued.
    local_init: HashMap<ConnKey, Instant>,
    /// The deadline for handshakes and unanswered REQUESTs.
    timeout: Duration,
    /// The listening socket is unwatched after running out of file descriptors.
    listener_paused: bool,
    pub counters: VsockCounters,
}

impl Muxer {
    /// Listens on `uds_path`.
    pub fn new(guest_cid: u64, uds_path: &Path) -> io::Result<Self> {
        Ok(Self {
            guest_cid,
            uds_path: uds_path.to_path_buf(),
            listener: host::listen(uds_path)?,
            handshakes: HashMap::new(),
            conns: HashMap::new(),
            by_fd: HashMap::new(),
            ctrl: VecDeque::new(),
            rx_ready: VecDeque::new(),
            fd_ops: Vec::new(),
            next_port: FIRST_LOCAL_PORT,
            local_init: HashMap::new(),
            timeout: HOST_CONN_TIMEOUT,
            listener_paused: false,
            counters: VsockCounters::default(),
        })
    }

    /// The listening socket.
    pub fn listener(&self) -> &UnixListener {
        &self.listener
    }

    /// Connections, including host connections in their handshake.
    pub fn connection_count(&self) -> usize {
        self.conns.len() + self.handshakes.len()
    }

    /// The deadline for handshakes and unanswered REQUESTs.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Sets the deadline (tests use short ones).
    #[cfg(test)]
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// Whether something waits for [`Self::expire`]: a host connection in its handshake or
    /// waiting for the guest's RESPONSE, or a paused listening socket.
    pub fn needs_timer(&self) -> bool {
        !self.handshakes.is_empty() || !self.local_init.is_empty() || self.listener_paused
    }

    /// Whether any packet may be waiting for the guest.
    pub fn has_rx(&self) -> bool {
        !self.ctrl.is_empty() || !self.rx_ready.is_empty()
    }

    pub fn error(&mut self, what: std::fmt::Arguments<'_>) {
        self.counters.errors += 1;
        if self.counters.errors.is_power_of_two() {
            warn!(
                "virtio-vsock: {what} ({} errors so far)",
                self.counters.errors
            );
        }
    }

    /// Queues a control packet; false (counted) if too many are waiting.
    fn push_ctrl(&mut self, hdr: Header) -> bool {
        if self.ctrl.len() >= MAX_PENDING_CONTROL {
            self.error(format_args!("control packet dropped: the guest takes none"));
            return false;
        }
        self.ctrl.push_back(hdr);
        true
    }

    /// Answers a guest packet with an RST.
    fn reply_rst(&mut self, to: &Header) {
        if to.op != op::RST {
            self.push_ctrl(Header::to_guest(
                self.guest_cid,
                to.dst_port,
                to.src_port,
                op::RST,
            ));
        }
    }

    /// Drops a connection (closing its host socket), optionally telling the guest.
    fn kill(&mut self, key: ConnKey, rst: bool) {
        let Some(c) = self.conns.remove(&key) else {
            return;
        };
        let fd = c.stream().as_raw_fd();
        self.by_fd.remove(&fd);
        self.local_init.remove(&key);
        if c.rx_queued {
            self.rx_ready.retain(|k| *k != key);
        }
        self.fd_ops.push(FdOp::Remove(fd, Some(c.into_stream())));
        if rst {
            self.push_ctrl(Header::to_guest(
                self.guest_cid,
                key.local,
                key.peer,
                op::RST,
            ));
        }
    }

    /// Brings the watch list in line with what the connection wants.
    fn sync(&mut self, key: ConnKey) {
        let Some(c) = self.conns.get_mut(&key) else {
            return;
        };
        let want = c.interest();
        if want == c.registered {
            return;
        }
        let fd = c.stream().as_raw_fd();
        self.fd_ops.push(if c.registered.is_empty() {
            FdOp::Add(fd, want)
        } else if want.is_empty() {
            FdOp::Remove(fd, None)
        } else {
            FdOp::Modify(fd, want)
        });
        c.registered = want;
    }

    fn verdict(&mut self, key: ConnKey, v: Verdict) {
        match v {
            Verdict::Ok => {}
            Verdict::CreditUpdate => {
                let guest_cid = self.guest_cid;
                let Some(c) = self.conns.get_mut(&key) else {
                    return;
                };
                if !c.credit_queued {
                    c.credit_queued = true;
                    let hdr = c.header(guest_cid, op::CREDIT_UPDATE);
                    if !self.push_ctrl(hdr) {
                        self.kill(key, false);
                    }
                }
            }
            Verdict::Reset => self.kill(key, true),
            Verdict::Close => self.kill(key, false),
        }
        self.sync(key);
    }

    /// Adds a connection and queues its first packet (REQUEST or RESPONSE).
    fn insert(&mut self, key: ConnKey, mut c: Connection, first: u16) {
        let hdr = c.header(self.guest_cid, first);
        self.by_fd.insert(c.stream().as_raw_fd(), key);
        self.conns.insert(key, c);
        if self.push_ctrl(hdr) {
            self.counters.connections += 1;
            self.sync(key);
        } else {
            self.kill(key, false);
        }
    }

    /// Handles one packet from the guest.
    pub fn handle_tx(&mut self, hdr: &Header, payload: &[u8]) {
        self.counters.tx_packets += 1;
        self.counters.tx_bytes += payload.len() as u64;
        if hdr.src_cid != self.guest_cid || hdr.dst_cid != HOST_CID {
            self.error(format_args!(
                "packet from cid {} to cid {} dropped",
                hdr.src_cid, hdr.dst_cid
            ));
            return;
        }
        let key = ConnKey {
            local: hdr.dst_port,
            peer: hdr.src_port,
        };
        if hdr.type_ != TYPE_STREAM || !(op::REQUEST..=op::CREDIT_REQUEST).contains(&hdr.op) {
            self.error(format_args!(
                "packet of type {} op {} refused",
                hdr.type_, hdr.op
            ));
            if self.conns.contains_key(&key) {
                self.kill(key, true);
            } else {
                self.reply_rst(hdr);
            }
            return;
        }
        if hdr.op == op::REQUEST {
            self.guest_connect(hdr, key);
            return;
        }
        let Some(c) = self.conns.get_mut(&key) else {
            self.reply_rst(hdr);
            return;
        };
        c.update_peer_credit(hdr);
        let v = c.recv_pkt(hdr, payload);
        self.verdict(key, v);
        // Any packet for a connection waiting for RESPONSE either establishes or ends it.
        if !self.local_init.is_empty() {
            self.local_init.remove(&key);
        }
    }

    /// A chain that held no valid packet; `hdr` if its header could be read.
    pub fn reject(&mut self, hdr: Option<&Header>, why: std::fmt::Arguments<'_>) {
        self.error(format_args!("bad TX packet: {why}"));
        let Some(hdr) = hdr else { return };
        if hdr.src_cid != self.guest_cid || hdr.dst_cid != HOST_CID {
            return;
        }
        let key = ConnKey {
            local: hdr.dst_port,
            peer: hdr.src_port,
        };
        if self.conns.contains_key(&key) {
            self.kill(key, true);
        } else {
            self.reply_rst(hdr);
        }
    }

    /// A guest REQUEST: connects to `<uds_path>_<port>`, or refuses with an RST.
    fn guest_connect(&mut self, hdr: &Header, key: ConnKey) {
        if self.conns.contains_key(&key) {
            self.error(format_args!("REQUEST for live connection {key:?}"));
            self.kill(key, true);
            return;
        }
        if self.connection_count() >= MAX_CONNECTIONS {
            self.error(format_args!("connection limit reached"));
            self.reply_rst(hdr);
            return;
        }
        match host::connect(&host::port_path(&self.uds_path, hdr.dst_port)) {
            Ok(stream) => self.insert(key, Connection::new_peer(stream, hdr), op::RESPONSE),
            Err(_) => {
                self.counters.refused += 1;
                self.reply_rst(hdr);
            }
        }
    }

    /// Accepts every pending host connection.
    pub fn accept(&mut self) {
        if self.listener_paused {
            return;
        }
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if self.connection_count() >= MAX_CONNECTIONS {
                        self.error(format_args!("connection limit reached"));
                        continue;
                    }
                    if let Err(e) = stream.set_nonblocking(true) {
                        self.error(format_args!("host connection: {e}"));
                        continue;
                    }
                    let fd = stream.as_raw_fd();
                    self.fd_ops.push(FdOp::Add(fd, EventSet::IN));
                    self.handshakes.insert(fd, Handshake::new(stream));
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    self.accept_failed(&e);
                    break;
                }
            }
        }
    }

    /// Counts a failed `accept`. Out of file descriptors or memory, the connection stays in
    /// the backlog and the listening socket readable: it is unwatched until the next timer
    /// tick instead of waking the event loop at once again.
    pub fn accept_failed(&mut self, e: &io::Error) {
        self.error(format_args!("accept: {e}"));
        let exhausted = [libc::EMFILE, libc::ENFILE, libc::ENOBUFS, libc::ENOMEM];
        if !self.listener_paused && e.raw_os_error().is_some_and(|n| exhausted.contains(&n)) {
            self.listener_paused = true;
            let fd = self.listener.as_raw_fd();
            self.fd_ops.push(FdOp::Remove(fd, None));
        }
    }

    /// The timer ticked at `now`: watches a paused listening socket again, closes handshakes
    /// older than the timeout and resets connections whose REQUEST has waited that long for
    /// the guest's RESPONSE (an RST goes to the guest). Each timed-out connection is counted.
    pub fn expire(&mut self, now: Instant) {
        if self.listener_paused {
            self.listener_paused = false;
            let fd = self.listener.as_raw_fd();
            self.fd_ops.push(FdOp::Add(fd, EventSet::IN));
        }
        let timeout = self.timeout;
        let late = |since: &Instant| now.saturating_duration_since(*since) >= timeout;
        let fds: Vec<RawFd> = self
            .handshakes
            .iter()
            .filter(|(_, h)| late(&h.since))
            .map(|(fd, _)| *fd)
            .collect();
        for fd in fds {
            if let Some(h) = self.handshakes.remove(&fd) {
                self.counters.timeouts += 1;
                self.fd_ops.push(FdOp::Remove(fd, Some(h.stream)));
            }
        }
        let keys: Vec<ConnKey> = self
            .local_init
            .iter()
            .filter(|(_, since)| late(since))
            .map(|(key, _)| *key)
            .collect();
        for key in keys {
            self.counters.timeouts += 1;
            self.kill(key, true);
        }
    }

    /// A fresh host port not used by any connection.
    fn alloc_port(&mut self) -> u32 {
        loop {
            let p = self.next_port;
            self.next_port = p.checked_add(1).unwrap_or(FIRST_LOCAL_PORT);
            // At most MAX_CONNECTIONS ports are taken, so this ends.
            if !self.conns.keys().any(|k| k.local == p) {
                return p;
            }
        }
    }

    fn handshake_event(&mut self, fd: RawFd) {
        let Some(h) = self.handshakes.get_mut(&fd) else {
            return;
        };
        match h.read() {
            HandshakeStep::Pending => {}
            HandshakeStep::Failed => {
                if let Some(h) = self.handshakes.remove(&fd) {
                    self.counters.refused += 1;
                    self.fd_ops.push(FdOp::Remove(fd, Some(h.stream)));
                }
            }
            HandshakeStep::Connect(peer) => {
                let Some(h) = self.handshakes.remove(&fd) else {
                    return;
                };
                let local = self.alloc_port();
                let mut c = Connection::new_local(h.stream, local, peer);
                c.registered = EventSet::IN;
                let key = ConnKey { local, peer };
                self.insert(key, c, op::REQUEST);
                if self.conns.contains_key(&key) {
                    self.local_init.insert(key, Instant::now());
                }
            }
        }
    }

    /// An event on a handshake or connection socket.
    pub fn fd_event(&mut self, fd: RawFd, set: EventSet) {
        if self.handshakes.contains_key(&fd) {
            self.handshake_event(fd);
            return;
        }
        let Some(&key) = self.by_fd.get(&fd) else {
            return;
        };
        if set.contains(EventSet::OUT) {
            if let Some(c) = self.conns.get_mut(&key) {
                let v = c.flush();
                self.verdict(key, v);
            }
        }
        let input = EventSet::IN | EventSet::HANG_UP | EventSet::ERROR | EventSet::READ_HANG_UP;
        if let Some(c) = self.conns.get_mut(&key) {
            if set.intersects(input) && c.state() == State::Established && !c.rx_queued {
                c.rx_queued = true;
                self.rx_ready.push_back(key);
            }
        }
        self.sync(key);
    }

    /// The next packet for the guest, its payload (at most `capacity` bytes) in `buf`.
    pub fn next_rx(&mut self, capacity: usize, buf: &mut Vec<u8>) -> Option<Header> {
        buf.clear();
        loop {
            while let Some(mut hdr) = self.ctrl.pop_front() {
                if hdr.op == op::RST {
                    self.counters.resets += 1;
                    return Some(hdr);
                }
                let key = ConnKey {
                    local: hdr.src_port,
                    peer: hdr.dst_port,
                };
                // Packets of connections that are gone are dropped (an RST follows if due).
                if let Some(c) = self.conns.get_mut(&key) {
                    if hdr.op == op::CREDIT_UPDATE {
                        c.credit_queued = false;
                    }
                    c.stamp(&mut hdr);
                    return Some(hdr);
                }
            }
            if capacity == 0 {
                return None;
            }
            let key = self.rx_ready.pop_front()?;
            let guest_cid = self.guest_cid;
            let Some(c) = self.conns.get_mut(&key) else {
                continue;
            };
            buf.resize(capacity.min(MAX_PAYLOAD), 0);
            match c.read_host(buf) {
                super::connection::HostRead::Data(n) => {
                    buf.truncate(n);
                    let mut hdr = c.header(guest_cid, op::RW);
                    // n <= MAX_PAYLOAD.
                    hdr.len = n as u32;
                    self.rx_ready.push_back(key);
                    self.counters.rx_bytes += n as u64;
                    return Some(hdr);
                }
                super::connection::HostRead::Eof => {
                    c.rx_queued = false;
                    if c.done_after_host_eof() {
                        self.kill(key, true);
                    } else {
                        let mut hdr = c.header(guest_cid, op::SHUTDOWN);
                        hdr.flags = SHUTDOWN_SEND;
                        if !self.push_ctrl(hdr) {
                            self.kill(key, false);
                        }
                        self.sync(key);
                    }
                }
                super::connection::HostRead::Error(_) => self.kill(key, true),
                _ => {
                    c.rx_queued = false;
                    self.sync(key);
                }
            }
            buf.clear();
        }
    }

    /// Applies the queued watch-list changes.
    pub fn apply_fd_ops(&mut self, ops: &mut EventOps) {
        for fd_op in std::mem::take(&mut self.fd_ops) {
            let res = match fd_op {
                FdOp::Add(fd, set) => ops.add(Events::new_raw(fd, set)),
                FdOp::Modify(fd, set) => ops.modify(Events::new_raw(fd, set)),
                FdOp::Remove(fd, None) => ops.remove(Events::empty_raw(fd)),
                // Closing: the fd may never have been watched.
                FdOp::Remove(fd, Some(stream)) => {
                    let _ = ops.remove(Events::empty_raw(fd));
                    drop(stream);
                    Ok(())
                }
            };
            if let Err(e) = res {
                self.error(format_args!("event loop: {e:?}"));
            }
        }
    }

    /// Closes every connection (driver reset); host connections in their handshake stay.
    pub fn reset(&mut self) {
        let keys: Vec<ConnKey> = self.conns.keys().copied().collect();
        for key in keys {
            self.kill(key, false);
        }
        self.ctrl.clear();
        self.rx_ready.clear();
    }
}
