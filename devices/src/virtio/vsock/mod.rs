//! virtio-vsock (device type 19), hybrid like Firecracker's: guest `AF_VSOCK` stream
//! connections are bridged to host Unix sockets, with no vhost module on the host.
//!
//! - Host-initiated: a host program connects to `uds_path` and sends `CONNECT <port>\n`;
//!   petrel sends the guest a REQUEST from CID 2 and a fresh host port (≥ 1024), and once the
//!   guest answers RESPONSE it writes `OK <host port>\n` to the host program and bridges bytes
//!   both ways. An RST (or any failure) closes the host connection.
//! - Guest-initiated: a connection to CID 2 port P is bridged to a Unix connection to
//!   `<uds_path>_P`; if nothing listens there, the guest gets an RST.
//!
//! Queues: RX (device → guest), TX (guest → device), EVENT (unused: no transport resets are
//! sent). [`packet`] parses and writes packets, `connection` holds one connection's state and
//! credit, `muxer` owns the sockets and decides what the guest gets next, `host` the Unix
//! socket helpers. The event loop watches the queue eventfds, the listening socket, every
//! host socket (added and removed as connections come and go), a kick eventfd and a timerfd;
//! a guest that posts RX buffers (an RX queue notification) restarts reading the host sockets.
//!
//! Deadlines: a host connection that has not sent its `CONNECT` line within
//! [`HOST_CONN_TIMEOUT`] is closed, and so is one whose REQUEST the guest has not answered
//! (RESPONSE or RST) within that time after the line (the guest then gets an RST for the port
//! pair); both count as `timeouts`. The timerfd (`timer`) ticks every quarter of the timeout,
//! and only while such connections exist (or the listening socket is paused after `accept` ran
//! out of file descriptors, until the next tick).

mod connection;
mod host;
mod muxer;
pub mod packet;
#[cfg(test)]
mod tests;
mod timer;

use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Instant;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use log::{error, warn};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::virtio::serve::{Chain, ChainHandler, Disposition, QueueError};
use crate::virtio::{
    device_counters, device_type, read_config_space, ActivateContext, ActivateError, DeviceQueues,
    GuestMemoryMmap, VirtioDevice, VIRTIO_F_VERSION_1,
};
pub use connection::BUF_ALLOC;
use muxer::Muxer;
pub use muxer::{FIRST_LOCAL_PORT, HOST_CONN_TIMEOUT, MAX_CONNECTIONS};
use packet::RxBuffer;
use timer::HostTimer;

/// Size of each queue.
pub const QUEUE_SIZE: u16 = 256;
/// Index of the RX (device → guest) queue.
pub const RX_QUEUE: usize = 0;
/// Index of the TX (guest → device) queue.
pub const TX_QUEUE: usize = 1;
/// Index of the event queue.
pub const EVENT_QUEUE: usize = 2;
/// `VIRTIO_VSOCK_F_STREAM`: stream sockets (the only kind supported).
pub const VIRTIO_VSOCK_F_STREAM: u64 = 1 << 0;
/// Smallest guest CID (0–2 are reserved).
pub const MIN_GUEST_CID: u64 = 3;
/// Largest guest CID (`u32::MAX` is `VMADDR_CID_ANY`).
pub const MAX_GUEST_CID: u64 = u32::MAX as u64 - 1;
/// Size of the configuration space (`le64 guest_cid`).
pub const CONFIG_SPACE_SIZE: usize = 8;

const QUEUE_SIZES: &[u16] = &[QUEUE_SIZE; 3];
const FEATURES: u64 = VIRTIO_F_VERSION_1 | VIRTIO_VSOCK_F_STREAM;
const DEVICE: &str = "virtio-vsock";

/// How to build a [`Vsock`] device.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VsockConfig {
    /// The guest's context id ([`MIN_GUEST_CID`]..=[`MAX_GUEST_CID`]).
    pub guest_cid: u64,
    /// The Unix socket petrel listens on; guest connections to host port P go to
    /// `<uds_path>_P`.
    pub uds_path: PathBuf,
    /// Device id for the API.
    pub id: String,
}

/// Why a vsock device could not be created.
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    /// The CID is reserved or too large.
    #[error("vsock guest cid {0} is invalid: use {MIN_GUEST_CID} to {MAX_GUEST_CID}")]
    InvalidCid(u64),
    /// The socket path is empty or its directory does not exist.
    #[error("vsock socket {}: directory does not exist", path.display())]
    NoDirectory {
        /// The socket path.
        path: PathBuf,
    },
    /// The socket could not be created.
    #[error("cannot listen on vsock socket {}", path.display())]
    Listen {
        /// The socket path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// An eventfd or the timerfd could not be created.
    #[error("cannot create the device's event descriptors")]
    Events(#[source] io::Error),
}

device_counters! {
    /// What the device has done, for the API.
    pub struct VsockCounters {
        /// Connections opened (both directions).
        connections,
        /// Connections refused: guest connects with no host listener, failed host handshakes.
        refused,
        /// Packets given to the guest.
        rx_packets,
        /// Payload bytes given to the guest.
        rx_bytes,
        /// Packets taken from the guest.
        tx_packets,
        /// Payload bytes taken from the guest.
        tx_bytes,
        /// RSTs sent to the guest.
        resets,
        /// Malformed packets and chains, protocol violations, limits hit, queue errors, failed
        /// `accept`s.
        errors,
        /// Host connections closed for taking too long: no `CONNECT` line, or no answer from the
        /// guest to their REQUEST, within [`HOST_CONN_TIMEOUT`].
        timeouts,
    }
}

/// A virtio-vsock device.
pub struct Vsock {
    cfg: VsockConfig,
    muxer: Muxer,
    queues: DeviceQueues,
    kick: EventFd,
    timer: HostTimer,
    payload: Vec<u8>,
}

impl std::fmt::Debug for Vsock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vsock")
            .field("cfg", &self.cfg)
            .field("queues", &self.queues)
            .field("connections", &self.muxer.connection_count())
            .field("counters", &self.muxer.counters)
            .field("timer_period", &self.timer.period())
            .finish()
    }
}

impl Vsock {
    /// Checks the configuration and listens on `uds_path` (replacing a stale socket file).
    pub fn new(cfg: VsockConfig) -> Result<Self, VsockError> {
        if !(MIN_GUEST_CID..=MAX_GUEST_CID).contains(&cfg.guest_cid) {
            return Err(VsockError::InvalidCid(cfg.guest_cid));
        }
        let dir_ok = match cfg.uds_path.parent() {
            _ if cfg.uds_path.file_name().is_none() => false,
            Some(d) if d.as_os_str().is_empty() => true,
            Some(d) => d.is_dir(),
            None => false,
        };
        if !dir_ok {
            return Err(VsockError::NoDirectory {
                path: cfg.uds_path.clone(),
            });
        }
        let muxer =
            Muxer::new(cfg.guest_cid, &cfg.uds_path).map_err(|source| VsockError::Listen {
                path: cfg.uds_path.clone(),
                source,
            })?;
        Ok(Self {
            queues: DeviceQueues::new(device_type::VSOCK, QUEUE_SIZES, FEATURES)
                .map_err(VsockError::Events)?,
            kick: EventFd::new(EFD_NONBLOCK).map_err(VsockError::Events)?,
            timer: HostTimer::new().map_err(VsockError::Events)?,
            muxer,
            cfg,
            payload: Vec::new(),
        })
    }

    /// The guest's context id.
    pub fn guest_cid(&self) -> u64 {
        self.cfg.guest_cid
    }

    /// The listening socket's path.
    pub fn uds_path(&self) -> &Path {
        &self.cfg.uds_path
    }

    /// The device id.
    pub fn id(&self) -> &str {
        &self.cfg.id
    }

    /// The counters so far.
    pub fn counters(&self) -> VsockCounters {
        self.muxer.counters
    }

    /// Open connections, including host connections that have not sent `CONNECT` yet.
    pub fn active_connections(&self) -> usize {
        self.muxer.connection_count()
    }

    /// Sends `VIRTIO_VSOCK_EVENT_TRANSPORT_RESET` on the event queue (after a restore, as
    /// Firecracker does: the host side of every connection is gone, so the driver drops its
    /// connections and reads the CID again). False when the driver posted no event buffer.
    pub(crate) fn transport_reset(&mut self) -> Result<bool, QueueError> {
        let Some((mem, queue)) = self.queues.ring(EVENT_QUEUE) else {
            return Ok(false);
        };
        let mem = mem.clone();
        let chain = match virtio_queue::QueueT::pop_descriptor_chain(queue, &mem) {
            Some(chain) => chain,
            None => return Ok(false),
        };
        let head = chain.head_index();
        let mut written = 0u32;
        for desc in chain {
            if desc.is_write_only() && desc.len() >= 4 {
                // le32 id = VIRTIO_VSOCK_EVENT_TRANSPORT_RESET (0).
                if vm_memory::Bytes::write_obj(&mem, 0u32.to_le(), desc.addr()).is_ok() {
                    written = 4;
                }
                break;
            }
        }
        self.queues.add_used(EVENT_QUEUE, head, written)?;
        self.queues.notify(EVENT_QUEUE)?;
        Ok(written == 4)
    }

    /// Sets the deadline for host connections (tests use short ones); before any connection.
    #[cfg(test)]
    pub(crate) fn set_host_timeout(&mut self, timeout: std::time::Duration) {
        self.muxer.set_timeout(timeout);
        self.sync_timer();
    }

    /// Arms the timer while the muxer has deadlines to watch, disarms it otherwise.
    fn sync_timer(&mut self) {
        let want = self
            .muxer
            .needs_timer()
            .then(|| timer::period(self.muxer.timeout()));
        if let Err(e) = self.timer.set(want) {
            self.muxer.error(format_args!("timer: {e}"));
        }
    }

    /// Fills the guest's RX buffers with pending packets, then interrupts the driver if it
    /// wants to know. Stops when there is nothing to send or no buffer (the guest's RX
    /// notification resumes it), or after [`MAX_CHAINS_PER_TURN`](crate::virtio::MAX_CHAINS_PER_TURN)
    /// buffers (the RX queue eventfd is then written so the event loop comes back). Public for
    /// fuzzing and benchmarks; nothing before activation.
    pub fn process_rx(&mut self) {
        let mut rx = RxTurn {
            muxer: &mut self.muxer,
            payload: &mut self.payload,
        };
        self.queues.serve(RX_QUEUE, &mut rx);
    }

    /// Takes every packet the guest sent, at most [`MAX_CHAINS_PER_TURN`](crate::virtio::MAX_CHAINS_PER_TURN)
    /// (then, with more available, writes the TX queue eventfd so the event loop comes back),
    /// then interrupts the driver if it wants to know and sends the guest what the packets
    /// called for. Public for fuzzing and benchmarks.
    pub fn process_tx(&mut self) {
        self.process_tx_with(|| {});
    }

    /// [`Self::process_tx`], calling `before_enable` after each round's last chain and before
    /// notifications are re-enabled (tests use it to play a driver racing the device).
    fn process_tx_with(&mut self, before_enable: impl FnMut()) {
        let mut tx = TxTurn {
            muxer: &mut self.muxer,
            payload: &mut self.payload,
        };
        self.queues.serve_with(TX_QUEUE, &mut tx, before_enable);
        self.process_rx();
    }
}

/// Serves the RX queue: puts the next pending packet in each buffer.
struct RxTurn<'a> {
    muxer: &'a mut Muxer,
    payload: &'a mut Vec<u8>,
}

impl ChainHandler for RxTurn<'_> {
    fn can_take(&mut self) -> bool {
        self.muxer.has_rx()
    }

    fn handle(&mut self, mem: &GuestMemoryMmap, chain: Chain<'_>) -> Disposition {
        let head = chain.head_index();
        let buf = match RxBuffer::new(mem, chain) {
            Ok(buf) => buf,
            Err(e) => {
                self.muxer.error(format_args!("RX buffer {head}: {e}"));
                return Disposition::Used(0);
            }
        };
        let Some(hdr) = self.muxer.next_rx(buf.payload_capacity(), self.payload) else {
            return Disposition::Later;
        };
        match buf.write(mem, &hdr, self.payload) {
            Ok(n) => {
                self.muxer.counters.rx_packets += 1;
                Disposition::Used(n)
            }
            Err(e) => {
                let what = format_args!("RX buffer {head}: packet lost: {e}");
                self.muxer.error(what);
                Disposition::Used(0)
            }
        }
    }

    fn queue_error(&mut self, error: QueueError) {
        self.muxer.error(format_args!("RX {error}"));
    }
}

/// Serves the TX queue: hands each packet to the muxer.
struct TxTurn<'a> {
    muxer: &'a mut Muxer,
    payload: &'a mut Vec<u8>,
}

impl ChainHandler for TxTurn<'_> {
    fn handle(&mut self, mem: &GuestMemoryMmap, chain: Chain<'_>) -> Disposition {
        let head = chain.head_index();
        match packet::read_tx(mem, chain, self.payload) {
            Ok(hdr) => self.muxer.handle_tx(&hdr, self.payload),
            Err((hdr, e)) => self.muxer.reject(hdr.as_ref(), format_args!("{head}: {e}")),
        }
        Disposition::Used(0)
    }

    fn queue_error(&mut self, error: QueueError) {
        self.muxer.error(format_args!("TX {error}"));
    }
}

impl VirtioDevice for Vsock {
    fn queues(&self) -> Option<&DeviceQueues> {
        Some(&self.queues)
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_space(&self.cfg.guest_cid.to_le_bytes(), offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        self.muxer.error(format_args!(
            "{}-byte config write at {offset:#x} ignored",
            data.len()
        ));
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        self.queues.activate(ctx, &[RX_QUEUE, TX_QUEUE])?;
        // Host connections may have queued REQUESTs before the driver was ready.
        if let Err(e) = self.kick.write(1) {
            warn!("{DEVICE}: cannot kick the event loop: {e}");
        }
        Ok(())
    }

    fn reset(&mut self) {
        self.queues.reset();
        self.muxer.reset();
        // The event loop closes the host sockets.
        if let Err(e) = self.kick.write(1) {
            warn!("{DEVICE}: cannot kick the event loop: {e}");
        }
    }

    fn restored(&mut self) {
        match self.transport_reset() {
            Ok(true) => {}
            Ok(false) => warn!("{DEVICE}: no event buffer for the transport reset after restore"),
            Err(e) => self.muxer.error(format_args!("event queue: {e}")),
        }
    }

    fn counter_values(&self) -> Vec<(&'static str, u64)> {
        let mut values = self.muxer.counters.values();
        let open = self.muxer.connection_count() as u64;
        values.insert(1, ("active_connections", open));
        values
    }
}

impl MutEventSubscriber for Vsock {
    fn init(&mut self, ops: &mut EventOps) {
        self.queues.register(ops);
        let fds = [
            self.kick.as_raw_fd(),
            self.timer.as_raw_fd(),
            self.muxer.listener().as_raw_fd(),
        ];
        for fd in fds {
            if let Err(e) = ops.add(Events::new_raw(fd, EventSet::IN)) {
                error!("{DEVICE}: cannot register fd {fd}: {e:?}");
            }
        }
        self.muxer.apply_fd_ops(ops);
        self.sync_timer();
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let fd = events.fd();
        if let Some(i) = self.queues.take_event(fd) {
            match i {
                RX_QUEUE => self.process_rx(),
                TX_QUEUE => self.process_tx(),
                _ => {}
            }
        } else if fd == self.kick.as_raw_fd() {
            let _ = self.kick.read();
            self.process_rx();
        } else if fd == self.timer.as_raw_fd() {
            self.timer.drain();
            self.muxer.expire(Instant::now());
            self.process_rx();
        } else if fd == self.muxer.listener().as_raw_fd() {
            self.muxer.accept();
        } else {
            self.muxer.fd_event(fd, events.event_set());
            self.process_rx();
        }
        self.muxer.apply_fd_ops(ops);
        self.sync_timer();
    }
}

impl Drop for Vsock {
    /// Removes the listening socket's file, so a stopped VM leaves no stale socket behind.
    fn drop(&mut self) {
        // Already gone (or replaced by hand) is fine.
        let _ = std::fs::remove_file(&self.cfg.uds_path);
    }
}
