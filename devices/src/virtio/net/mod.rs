//! virtio-net (device type 1) over a host tap interface.
//!
//! Two queues, RX (0) and TX (1), 256 entries each; no control queue. Frames pass between the
//! guest and the [`Tap`] unchanged, each preceded by the 12-byte virtio 1.x header
//! (`struct virtio_net_hdr_v1`), which the tap speaks too (`IFF_VNET_HDR`).
//!
//! Features offered: `VERSION_1`, `RING_EVENT_IDX`, `RING_INDIRECT_DESC`, `MAC`, `STATUS`
//! (the link is always up), `CSUM` and `HOST_TSO4/6` (the guest may send partially
//! checksummed and TCP-segmentation-offloaded frames: the tap accepts them), `GUEST_CSUM` and
//! `GUEST_TSO4/6` (the guest accepts them: on activation the tap is told with
//! `TUNSETOFFLOAD`, see [`tap_offload_flags`]), and `MRG_RXBUF` (a received packet may span
//! several RX buffers, so the guest can post page-sized buffers and still receive 64 KiB TSO
//! frames). UFO/USO and ECN are not offered.
//!
//! Configuration space: `mac` (6 bytes), `status` (`VIRTIO_NET_S_LINK_UP`),
//! `max_virtqueue_pairs` (1); read-only. Without a configured MAC the device derives one from
//! its id, see [`mac_from_id`].
//!
//! TX: each available chain is gathered into a bounded buffer (`tx.rs`) and written to the tap
//! as one frame. RX: the tap is registered edge-triggered; the device reads one frame at a time
//! and places it in the guest's buffers (`rx.rs`). When the guest has no buffers the frame stays
//! pending, the device stops reading the tap and asks for an RX kick; the kick resumes. Each
//! direction may have a rate limiter: while it is blocked the direction stops and its timerfd
//! resumes it. Nothing is dropped without being counted (see [`NetCounters`]).

mod local;
mod rx;
pub mod tap;
#[cfg(test)]
mod tests;
mod tx;

use std::io;
use std::os::fd::{AsRawFd, RawFd};

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use log::{error, warn};
use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6,
    VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_F_MAC, VIRTIO_NET_F_MRG_RXBUF,
    VIRTIO_NET_F_STATUS, VIRTIO_NET_S_LINK_UP,
};
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};

use crate::rate_limiter::{update_slot, BucketUpdate, RateLimiter, RateLimiterConfig};
use crate::virtio::serve::count_error;
use crate::virtio::{
    device_counters, device_type, read_config_space, ActivateContext, ActivateError, DeviceQueues,
    VirtioDevice, VIRTIO_F_VERSION_1,
};
pub use local::LocalResponder;
pub use tap::{Tap, TapError};

/// Size of each queue.
pub const QUEUE_SIZE: u16 = 256;
/// Index of the receive queue.
pub const RX_QUEUE: u16 = 0;
/// Index of the transmit queue.
pub const TX_QUEUE: u16 = 1;
/// Bytes of the virtio 1.x header before every frame (`struct virtio_net_hdr_v1`).
pub const VNET_HDR_LEN: usize = 12;
/// Largest frame (without the vnet header): a 64 KiB IP packet with an Ethernet header and
/// one VLAN tag.
pub const MAX_FRAME_LEN: usize = 0xffff + ETH_HLEN + 4;
/// Largest packet (vnet header + frame) moved in either direction; a longer TX chain is bad.
pub const MAX_PACKET_LEN: usize = VNET_HDR_LEN + MAX_FRAME_LEN;
/// Size of the configuration space exposed (`mac`, `status`, `max_virtqueue_pairs`).
pub const CONFIG_SPACE_SIZE: usize = 10;

/// Bytes of an Ethernet header; a TX frame must hold at least this.
const ETH_HLEN: usize = 14;
/// Offset of `num_buffers` in the vnet header.
const NUM_BUFFERS_OFFSET: usize = 10;
/// Most descriptors accepted in one chain (indirect tables can be longer than the queue).
const MAX_DESCRIPTORS: usize = 1024;
const QUEUE_SIZES: &[u16] = &[QUEUE_SIZE, QUEUE_SIZE];
const DEVICE: &str = "virtio-net";

/// Where the device's tap comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TapSource {
    /// Open (or create) the tap with this name.
    Name(String),
    /// Use this inherited tap descriptor (duplicated; see [`Tap::from_fd`]).
    Fd(RawFd),
}

/// How to build a [`Net`] device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConfig {
    /// The host side.
    pub tap: TapSource,
    /// The guest's MAC; derived from `id` when absent (see [`mac_from_id`]).
    pub mac: Option<[u8; 6]>,
    /// The device's id (unique per VM, e.g. `net0`).
    pub id: String,
    /// Limits on what the guest receives.
    pub rate_limiter_rx: Option<RateLimiterConfig>,
    /// Limits on what the guest sends.
    pub rate_limiter_tx: Option<RateLimiterConfig>,
}

/// Why a net device could not be created.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The tap could not be opened or configured.
    #[error("net device {id:?}: cannot use its tap")]
    Tap {
        /// The device id.
        id: String,
        /// The cause.
        #[source]
        source: TapError,
    },
    /// The configured MAC is a multicast or all-zero address.
    #[error("net device {id:?}: MAC {mac} is not a unicast address")]
    InvalidMac {
        /// The device id.
        id: String,
        /// The MAC, formatted.
        mac: String,
    },
    /// An eventfd or timerfd could not be created.
    #[error("net device {id:?}: cannot create its event descriptors")]
    Events {
        /// The device id.
        id: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

device_counters! {
    /// What the device has done, for the API.
    pub struct NetCounters {
        /// Frames delivered to the guest.
        rx_packets,
        /// Frame bytes (without vnet headers) delivered to the guest.
        rx_bytes,
        /// Bad RX chains (returned with length 0), tap read errors and RX queue errors.
        rx_errors,
        /// Frames read from the tap and not delivered (too large for a buffer without mergeable
        /// buffers, shorter than a vnet header, or pending at a reset).
        rx_dropped,
        /// Times the RX rate limiter made the device wait.
        rx_throttled,
        /// Frames the guest sent that the tap took.
        tx_packets,
        /// Frame bytes (without vnet headers) the tap took.
        tx_bytes,
        /// Bad TX chains (returned unsent) and TX queue errors.
        tx_errors,
        /// Well-formed frames the tap refused (write errors).
        tx_dropped,
        /// Times the TX rate limiter made the device wait.
        tx_throttled,
    }
}

/// Why a descriptor chain is bad.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ChainError {
    #[error("chain has more than {MAX_DESCRIPTORS} descriptors")]
    TooManyDescriptors,
    #[error("chain loops or links outside its descriptor table")]
    Malformed,
    #[error("device-writable descriptor in a TX chain")]
    WritableOnTx,
    #[error("device-readable descriptor in an RX chain")]
    ReadableOnRx,
    #[error("RX chain has no room")]
    NoWritableBuffer,
    #[error("TX chain longer than {MAX_PACKET_LEN} bytes")]
    TooLong,
    #[error("TX chain of {0} bytes holds no vnet and Ethernet header")]
    TooShort(usize),
    #[error("buffer {addr:#x}+{len:#x} is outside guest memory")]
    OutsideMemory { addr: u64, len: u32 },
    #[error("cannot read guest memory")]
    Memory(#[source] vm_memory::GuestMemoryError),
}

/// A stable, locally administered unicast MAC for the device `id`: `06` followed by the first
/// five bytes of the 64-bit FNV-1a hash of the id's UTF-8 bytes (big endian). The same id
/// always gives the same MAC, so a guest keeps its address across restarts.
pub fn mac_from_id(id: &str) -> [u8; 6] {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in id.as_bytes() {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let h = hash.to_be_bytes();
    [0x06, h[0], h[1], h[2], h[3], h[4]]
}

/// Formats a MAC as `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The `TUN_F_*` offloads matching the features the guest accepted: `TUN_F_CSUM` with
/// `GUEST_CSUM`, and with it `TUN_F_TSO4`/`TUN_F_TSO6` with `GUEST_TSO4`/`GUEST_TSO6`.
pub fn tap_offload_flags(acked_features: u64) -> u32 {
    let has = |bit: u32| acked_features & (1 << bit) != 0;
    let mut flags = 0;
    if has(VIRTIO_NET_F_GUEST_CSUM) {
        flags |= libc::TUN_F_CSUM;
        if has(VIRTIO_NET_F_GUEST_TSO4) {
            flags |= libc::TUN_F_TSO4;
        }
        if has(VIRTIO_NET_F_GUEST_TSO6) {
            flags |= libc::TUN_F_TSO6;
        }
    }
    flags
}

/// A virtio-net device.
pub struct Net {
    id: String,
    tap: Tap,
    mac: [u8; 6],
    config_space: [u8; CONFIG_SPACE_SIZE],
    queues: DeviceQueues,
    rx_limiter: Option<RateLimiter>,
    tx_limiter: Option<RateLimiter>,
    /// The packet read from the tap and not yet delivered is `rx_buf[..rx_len]` (none if 0).
    rx_buf: Vec<u8>,
    rx_len: usize,
    /// The tap may hold frames (edge-triggered: cleared only when a read says `WouldBlock`).
    tap_readable: bool,
    tx_buf: Vec<u8>,
    counters: NetCounters,
    ignored_config_writes: u64,
    /// Answers the guest's frames for it (the MMDS), if set.
    local: Option<Box<dyn LocalResponder>>,
    /// Limiters made while the device was on the event loop: their timerfds are registered
    /// at the device's next event.
    limiters_unregistered: bool,
}

impl std::fmt::Debug for Net {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Net")
            .field("id", &self.id)
            .field("tap", &self.tap.name())
            .field("mac", &format_mac(&self.mac))
            .field("queues", &self.queues)
            .field("counters", &self.counters)
            .finish()
    }
}

/// Counts an error in `counter` and logs it, rate-limited.
fn count(counter: &mut u64, id: &str, what: std::fmt::Arguments<'_>) {
    count_error(counter, DEVICE, format_args!("{id}: {what}"));
}

impl Net {
    /// Opens the tap and builds an unactivated device.
    pub fn new(cfg: NetConfig) -> Result<Self, NetError> {
        let tap = match &cfg.tap {
            TapSource::Name(name) => Tap::open_named(name),
            TapSource::Fd(fd) => Tap::from_fd(*fd),
        }
        .map_err(|source| NetError::Tap {
            id: cfg.id.clone(),
            source,
        })?;
        Self::with_tap(tap, &cfg)
    }

    /// Builds an unactivated device on an already open tap (`cfg.tap` is not used).
    pub fn with_tap(tap: Tap, cfg: &NetConfig) -> Result<Self, NetError> {
        let mac = cfg.mac.unwrap_or_else(|| mac_from_id(&cfg.id));
        if mac[0] & 1 != 0 || mac == [0; 6] {
            return Err(NetError::InvalidMac {
                id: cfg.id.clone(),
                mac: format_mac(&mac),
            });
        }
        let events = |source| NetError::Events {
            id: cfg.id.clone(),
            source,
        };
        let limiter = |c: &Option<RateLimiterConfig>| match c {
            Some(c) => RateLimiter::new(c).map(Some).map_err(events),
            None => Ok(None),
        };
        let mut config_space = [0u8; CONFIG_SPACE_SIZE];
        config_space[..6].copy_from_slice(&mac);
        config_space[6..8].copy_from_slice(&(VIRTIO_NET_S_LINK_UP as u16).to_le_bytes());
        config_space[8..10].copy_from_slice(&1u16.to_le_bytes());
        Ok(Self {
            id: cfg.id.clone(),
            tap,
            mac,
            config_space,
            queues: DeviceQueues::new(device_type::NET, QUEUE_SIZES, Self::features_offered())
                .map_err(events)?,
            rx_limiter: limiter(&cfg.rate_limiter_rx)?,
            tx_limiter: limiter(&cfg.rate_limiter_tx)?,
            rx_buf: vec![0; MAX_PACKET_LEN],
            rx_len: 0,
            tap_readable: true,
            tx_buf: Vec::with_capacity(MAX_PACKET_LEN),
            counters: NetCounters::default(),
            ignored_config_writes: 0,
            local: None,
            limiters_unregistered: false,
        })
    }

    /// The counters so far.
    pub fn counters(&self) -> NetCounters {
        self.counters
    }

    /// The guest's MAC.
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// The device id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The tap.
    pub fn tap(&self) -> &Tap {
        &self.tap
    }

    /// Replaces the rate limiters (tests use ones on a manual clock). Register the device
    /// with the event loop after this, so that their timerfds are watched.
    pub fn set_rate_limiters(&mut self, rx: Option<RateLimiter>, tx: Option<RateLimiter>) {
        self.rx_limiter = rx;
        self.tx_limiter = tx;
    }

    /// Changes the rate limiters of the running device (Firecracker's
    /// `PATCH /network-interfaces`): each direction's buckets as [`update_slot`] does; new
    /// limiters are watched from the device's next event on.
    pub fn update_rate_limiters(
        &mut self,
        rx: (BucketUpdate, BucketUpdate),
        tx: (BucketUpdate, BucketUpdate),
    ) -> io::Result<()> {
        let made_rx = update_slot(&mut self.rx_limiter, rx.0, rx.1)?;
        let made_tx = update_slot(&mut self.tx_limiter, tx.0, tx.1)?;
        self.limiters_unregistered |= made_rx || made_tx;
        // Frames held back by the old limits move again on the event loop's next turn.
        self.queues.kick_all();
        Ok(())
    }

    /// Sets (or removes) the responder that answers some of the guest's frames itself.
    pub fn set_local_responder(&mut self, local: Option<Box<dyn LocalResponder>>) {
        self.local = local;
    }

    fn features_offered() -> u64 {
        let net = [
            VIRTIO_NET_F_CSUM,
            VIRTIO_NET_F_GUEST_CSUM,
            VIRTIO_NET_F_GUEST_TSO4,
            VIRTIO_NET_F_GUEST_TSO6,
            VIRTIO_NET_F_HOST_TSO4,
            VIRTIO_NET_F_HOST_TSO6,
            VIRTIO_NET_F_MAC,
            VIRTIO_NET_F_MRG_RXBUF,
            VIRTIO_NET_F_STATUS,
            VIRTIO_RING_F_EVENT_IDX,
            VIRTIO_RING_F_INDIRECT_DESC,
        ];
        net.iter()
            .fold(VIRTIO_F_VERSION_1, |f, &bit| f | (1 << bit))
    }
}

impl VirtioDevice for Net {
    fn queues(&self) -> Option<&DeviceQueues> {
        Some(&self.queues)
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_space(&self.config_space, offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // Virtio 1.x drivers must not write the MAC; nothing else is writable.
        let what = format_args!("{}-byte config write at {offset:#x} ignored", data.len());
        count(&mut self.ignored_config_writes, &self.id, what);
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        const BOTH: [usize; 2] = [RX_QUEUE as usize, TX_QUEUE as usize];
        DeviceQueues::check_ready(&ctx.queues, &BOTH)?;
        let offload = tap_offload_flags(ctx.acked_features);
        self.tap.set_offload(offload).map_err(|e| {
            ActivateError::Device(format!(
                "tap {}: TUNSETOFFLOAD {offload:#x}: {e}",
                self.tap.name()
            ))
        })?;
        self.queues.activate(ctx, &BOTH)?;
        // Kicks that came before activation were drained unserved; look at both queues (and
        // the tap) once on the event loop.
        self.tap_readable = true;
        self.queues.kick_all();
        Ok(())
    }

    fn reset(&mut self) {
        self.queues.reset();
        if self.rx_len != 0 {
            self.counters.rx_dropped += 1;
            self.rx_len = 0;
        }
        if let Err(e) = self.tap.set_offload(0) {
            warn!("virtio-net {}: cannot clear tap offloads: {e}", self.id);
        }
    }

    fn rate_limiters(&mut self) -> Vec<Option<&mut RateLimiter>> {
        vec![self.rx_limiter.as_mut(), self.tx_limiter.as_mut()]
    }

    fn counter_values(&self) -> Vec<(&'static str, u64)> {
        self.counters.values()
    }
}

impl Net {
    /// Watches the limiters' timerfds (one already watched is left as it is).
    fn register_limiters(&self, ops: &mut EventOps) {
        for rl in [&self.rx_limiter, &self.tx_limiter].into_iter().flatten() {
            match ops.add(Events::new(rl, EventSet::IN)) {
                Ok(()) | Err(event_manager::Error::FdAlreadyRegistered) => {}
                Err(e) => error!(
                    "virtio-net {}: cannot register a rate limiter timer: {e}",
                    self.id
                ),
            }
        }
    }
}

impl MutEventSubscriber for Net {
    fn init(&mut self, ops: &mut EventOps) {
        self.queues.register(ops);
        let tap = Events::new(&self.tap, EventSet::IN | EventSet::EDGE_TRIGGERED);
        if let Err(e) = ops.add(tap) {
            error!("virtio-net {}: cannot register the tap: {e}", self.id);
        }
        self.register_limiters(ops);
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        if std::mem::take(&mut self.limiters_unregistered) {
            self.register_limiters(ops);
        }
        let fd = events.fd();
        let is = |rl: &Option<RateLimiter>| rl.as_ref().is_some_and(|rl| rl.as_raw_fd() == fd);
        if let Some(index) = self.queues.take_event(fd) {
            if index == usize::from(RX_QUEUE) {
                self.process_rx();
            } else {
                self.process_tx();
            }
        } else if fd == self.tap.as_raw_fd() {
            // Any readiness (even an error) is worth a read: the read reports what is wrong.
            self.tap_readable = true;
            self.process_rx();
        } else if is(&self.rx_limiter) {
            if let Some(Err(e)) = self.rx_limiter.as_mut().map(|rl| rl.event_handler()) {
                error!("virtio-net {}: RX rate limiter timer: {e}", self.id);
            }
            self.process_rx();
        } else if is(&self.tx_limiter) {
            if let Some(Err(e)) = self.tx_limiter.as_mut().map(|rl| rl.event_handler()) {
                error!("virtio-net {}: TX rate limiter timer: {e}", self.id);
            }
            self.process_tx();
        } else {
            warn!("virtio-net {}: event on unknown fd {fd}", self.id);
        }
    }
}
