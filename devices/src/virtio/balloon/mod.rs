//! virtio-balloon (device type 5): lets the host take memory back from the guest.
//!
//! The host sets a target balloon size (`num_pages` in the config space, in 4 KiB pages);
//! the guest inflates the balloon towards it by giving pages up on the inflate queue, and
//! deflates it by taking pages back on the deflate queue, then reports its balloon size in
//! `actual`. Inflated pages are released on the host ([`pages`]). With a polling interval the
//! device offers `VIRTIO_BALLOON_F_STATS_VQ`: the guest keeps one stats buffer queued, the
//! device reads it, holds it, and returns it when the stats timer fires, which asks the guest
//! for fresh values ([`stats`]). Bad PFNs and malformed buffers are counted and skipped.

mod pages;
mod stats;
#[cfg(test)]
mod tests;

use std::io;
use std::os::fd::AsRawFd;
use std::time::Duration;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use log::{error, warn};
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::QueueT;
use vmm_sys_util::timerfd::TimerFd;

use crate::virtio::serve::{count_error, Chain, ChainHandler, Disposition, QueueError};
use crate::virtio::{
    device_counters, device_type, read_config_space, ActivateContext, ActivateError, DeviceQueues,
    GuestMemoryMmap, InterruptKind, VirtioDevice, VIRTIO_F_VERSION_1,
};
pub use pages::PAGE_SIZE;
pub use stats::BalloonStats;

/// Size of each queue.
pub const QUEUE_SIZE: u16 = 256;
/// `VIRTIO_BALLOON_F_STATS_VQ`: the stats queue exists.
pub const VIRTIO_BALLOON_F_STATS_VQ: u64 = 1 << 1;
/// `VIRTIO_BALLOON_F_DEFLATE_ON_OOM`: the guest may deflate when it runs out of memory.
pub const VIRTIO_BALLOON_F_DEFLATE_ON_OOM: u64 = 1 << 2;
/// Size of the configuration space (`num_pages`, `actual`).
pub const CONFIG_SPACE_SIZE: u64 = 8;

/// Queue indices.
const INFLATE: usize = 0;
const DEFLATE: usize = 1;
const STATS: usize = 2;
const QUEUE_SIZES_NO_STATS: &[u16] = &[QUEUE_SIZE; 2];
const QUEUE_SIZES_STATS: &[u16] = &[QUEUE_SIZE; 3];
/// Offset of `actual` in the configuration space.
const ACTUAL_OFFSET: u64 = 4;
/// 4 KiB pages per MiB.
const PAGES_PER_MIB: u64 = (1 << 20) / PAGE_SIZE;
const DEVICE: &str = "virtio-balloon";

/// How to build a [`Balloon`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BalloonConfig {
    /// Initial target balloon size (memory to take from the guest), in MiB.
    pub amount_mib: u64,
    /// Offer `VIRTIO_BALLOON_F_DEFLATE_ON_OOM`.
    pub deflate_on_oom: bool,
    /// Seconds between statistics requests; 0 disables statistics (no stats queue).
    pub stats_polling_interval_s: u16,
    /// Device id, for the API.
    pub id: String,
}

/// Why a balloon could not be built or resized.
#[derive(Debug, thiserror::Error)]
pub enum BalloonError {
    /// The target is larger than guest memory.
    #[error("balloon target of {target_mib} MiB is larger than guest memory ({guest_mib} MiB)")]
    TargetTooLarge {
        /// The requested target.
        target_mib: u64,
        /// Guest memory size.
        guest_mib: u64,
    },
    /// The target does not fit the 32-bit page count of the config space.
    #[error("balloon target of {target_mib} MiB exceeds the device's limit of {max_mib} MiB")]
    TargetBeyondDevice {
        /// The requested target.
        target_mib: u64,
        /// The largest target the device can express.
        max_mib: u64,
    },
    /// An eventfd or the stats timerfd could not be created.
    #[error("cannot create the device's event descriptors")]
    Events(#[source] io::Error),
    /// The configuration-change interrupt failed (the target was changed anyway).
    #[error("cannot raise the configuration interrupt")]
    Interrupt(#[source] io::Error),
}

/// Result of balloon operations.
pub type Result<T> = std::result::Result<T, BalloonError>;

device_counters! {
    /// What the device has done, for the API.
    pub struct BalloonCounters {
        /// Pages the guest gave up (and the host released).
        inflated_pages,
        /// Pages the guest took back.
        deflated_pages,
        /// PFNs outside guest memory, skipped.
        bad_pfns,
        /// Stats buffers read.
        stats_updates,
        /// Malformed buffers, failed releases, bad config writes and queue errors.
        errors,
    }
}

impl BalloonCounters {
    /// Counts a malformed buffer or a queue error and logs it, rate-limited.
    fn malformed(&mut self, what: std::fmt::Arguments<'_>) {
        count_error(&mut self.errors, DEVICE, what);
    }

    /// Whether the device may read `desc`; a write-only one in a `kind` buffer is counted.
    fn readable(&mut self, desc: &virtio_queue::desc::split::Descriptor, kind: &str) -> bool {
        if desc.is_write_only() {
            self.malformed(format_args!(
                "write-only descriptor {:#x}+{:#x} in a {kind} buffer",
                desc.addr().0,
                desc.len()
            ));
        }
        !desc.is_write_only()
    }

    /// Counts a host-side failure to release pages.
    fn release_failed(&mut self, what: std::fmt::Arguments<'_>) {
        self.malformed(what);
    }
}

/// A virtio-balloon device.
#[derive(Debug)]
pub struct Balloon {
    id: String,
    guest_mib: u64,
    num_pages: u32,
    actual: u32,
    stats_interval: Duration,
    queues: DeviceQueues,
    stats_timer: Option<TimerFd>,
    /// The stats queue is served (negotiated and enabled at the last activation).
    stats_enabled: bool,
    /// The stats buffer held until the next poll.
    stats_head: Option<u16>,
    stats: BalloonStats,
    counters: BalloonCounters,
}

impl Balloon {
    /// An unactivated balloon for a guest with `guest_memory_bytes` of memory.
    pub fn new(cfg: BalloonConfig, guest_memory_bytes: u64) -> Result<Self> {
        let guest_mib = guest_memory_bytes >> 20;
        let num_pages = target_pages(cfg.amount_mib, guest_mib)?;
        let mut features = VIRTIO_F_VERSION_1 | (1 << VIRTIO_RING_F_EVENT_IDX);
        if cfg.deflate_on_oom {
            features |= VIRTIO_BALLOON_F_DEFLATE_ON_OOM;
        }
        let stats_timer = if cfg.stats_polling_interval_s > 0 {
            features |= VIRTIO_BALLOON_F_STATS_VQ;
            Some(nonblocking_timer().map_err(BalloonError::Events)?)
        } else {
            None
        };
        let sizes = if stats_timer.is_some() {
            QUEUE_SIZES_STATS
        } else {
            QUEUE_SIZES_NO_STATS
        };
        let queues = DeviceQueues::new(device_type::BALLOON, sizes, features)
            .map_err(BalloonError::Events)?;
        Ok(Self {
            id: cfg.id,
            guest_mib,
            num_pages,
            actual: 0,
            stats_interval: Duration::from_secs(u64::from(cfg.stats_polling_interval_s)),
            queues,
            stats_timer,
            stats_enabled: false,
            stats_head: None,
            stats: BalloonStats::default(),
            counters: BalloonCounters::default(),
        })
    }

    /// The device id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Sets the target balloon size and tells the driver (a configuration interrupt) if it is
    /// running. A target larger than guest memory is refused and changes nothing.
    pub fn set_target_mib(&mut self, mib: u64) -> Result<()> {
        self.num_pages = target_pages(mib, self.guest_mib)?;
        if let Some(interrupt) = self.queues.interrupt() {
            interrupt
                .trigger(InterruptKind::Config)
                .map_err(BalloonError::Interrupt)?;
        }
        Ok(())
    }

    /// The target balloon size, in MiB.
    pub fn target_mib(&self) -> u64 {
        u64::from(self.num_pages) / PAGES_PER_MIB
    }

    /// The balloon size the guest reports (`actual`), in MiB (rounded down).
    pub fn actual_mib(&self) -> u64 {
        u64::from(self.actual) / PAGES_PER_MIB
    }

    /// The latest statistics the guest sent.
    pub fn stats(&self) -> BalloonStats {
        self.stats
    }

    /// The counters so far.
    pub fn counters(&self) -> BalloonCounters {
        self.counters
    }

    /// Serves queue `index`; the queue event does this. Does nothing before activation or for
    /// a queue that is not served.
    fn process_queue(&mut self, index: usize) {
        self.process_queue_with(index, || {});
    }

    /// [`Self::process_queue`], calling `before_enable` after each round's last chain and
    /// before notifications are re-enabled (tests use it to play a driver racing the device).
    fn process_queue_with(&mut self, index: usize, before_enable: impl FnMut()) {
        let counters = &mut self.counters;
        let op = match index {
            INFLATE => pages::PageOp::Inflate,
            DEFLATE => pages::PageOp::Deflate,
            STATS if self.stats_enabled => {
                let mut turn = StatsTurn {
                    stats: &mut self.stats,
                    counters,
                    heads: Vec::new(),
                };
                self.queues.serve_with(STATS, &mut turn, before_enable);
                // Keep the newest buffer for the next poll; return any older one (a driver
                // should have only one queued).
                let mut heads = turn.heads;
                if let Some(newest) = heads.pop() {
                    let older = self.stats_head.replace(newest).into_iter().chain(heads);
                    self.return_stats_buffers(older.collect());
                }
                return;
            }
            _ => return,
        };
        self.queues
            .serve_with(index, &mut PagesTurn { op, counters }, before_enable);
    }

    /// The stats timer fired: returns the held stats buffer, asking the guest for new values.
    fn poll_stats(&mut self) {
        if let Some(timer) = self.stats_timer.as_mut() {
            // Drain the expiry count; EAGAIN only means nothing expired yet.
            let _ = timer.wait();
        }
        if !self.stats_enabled || !self.queues.is_activated() {
            return;
        }
        // None: the guest has not sent its buffer back yet.
        if let Some(head) = self.stats_head.take() {
            self.return_stats_buffers(vec![head]);
        }
    }

    /// Returns stats buffers `heads` to the driver (empty) and interrupts it if it wants to know.
    fn return_stats_buffers(&mut self, heads: Vec<u16>) {
        let mut returned = false;
        for head in heads {
            match self.queues.add_used(STATS, head, 0) {
                Ok(()) => returned = true,
                Err(e) => self.counters.malformed(format_args!("{e}")),
            }
        }
        if returned {
            if let Err(e) = self.queues.notify(STATS) {
                self.counters.malformed(format_args!("{e}"));
            }
        }
    }
}

/// Serves the inflate or deflate queue: each chain is a list of PFNs.
struct PagesTurn<'a> {
    op: pages::PageOp,
    counters: &'a mut BalloonCounters,
}

impl ChainHandler for PagesTurn<'_> {
    fn handle(&mut self, mem: &GuestMemoryMmap, chain: Chain<'_>) -> Disposition {
        pages::handle_chain(mem, chain, self.op, self.counters);
        Disposition::Used(0)
    }

    fn queue_error(&mut self, error: QueueError) {
        self.counters.malformed(format_args!("{error}"));
    }
}

/// Serves the stats queue: reads each buffer and keeps it (the device returns it at the next
/// poll).
struct StatsTurn<'a> {
    stats: &'a mut BalloonStats,
    counters: &'a mut BalloonCounters,
    heads: Vec<u16>,
}

impl ChainHandler for StatsTurn<'_> {
    fn handle(&mut self, mem: &GuestMemoryMmap, chain: Chain<'_>) -> Disposition {
        self.heads.push(chain.head_index());
        stats::read_chain(mem, chain, self.stats, self.counters);
        Disposition::Kept
    }

    fn queue_error(&mut self, error: QueueError) {
        self.counters.malformed(format_args!("{error}"));
    }
}

/// A target in MiB as a page count, checked against guest memory.
fn target_pages(mib: u64, guest_mib: u64) -> Result<u32> {
    if mib > guest_mib {
        return Err(BalloonError::TargetTooLarge {
            target_mib: mib,
            guest_mib,
        });
    }
    u32::try_from(mib * PAGES_PER_MIB).map_err(|_| BalloonError::TargetBeyondDevice {
        target_mib: mib,
        max_mib: u64::from(u32::MAX) / PAGES_PER_MIB,
    })
}

/// A timerfd whose reads never block (the timer may be disarmed between the epoll wake-up and
/// the read).
fn nonblocking_timer() -> io::Result<TimerFd> {
    let timer = TimerFd::new()?;
    let fd = timer.as_raw_fd();
    // SAFETY: `fd` is the timerfd just created and owned by `timer`; F_GETFL reads its flags
    // and touches no memory.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above; F_SETFL only changes the file status flags of our own descriptor.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(timer)
}

impl VirtioDevice for Balloon {
    fn queues(&self) -> Option<&DeviceQueues> {
        Some(&self.queues)
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let mut space = [0u8; CONFIG_SPACE_SIZE as usize];
        space[..4].copy_from_slice(&self.num_pages.to_le_bytes());
        space[4..].copy_from_slice(&self.actual.to_le_bytes());
        read_config_space(&space, offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // Only `actual` is writable; any byte outside it makes the whole write invalid.
        let end = offset.checked_add(data.len() as u64);
        match end {
            Some(end) if offset >= ACTUAL_OFFSET && end <= CONFIG_SPACE_SIZE => {
                let mut actual = self.actual.to_le_bytes();
                let start = (offset - ACTUAL_OFFSET) as usize;
                actual[start..start + data.len()].copy_from_slice(data);
                self.actual = u32::from_le_bytes(actual);
            }
            _ => self.counters.malformed(format_args!(
                "{}-byte config write at {offset:#x} ignored",
                data.len()
            )),
        }
    }

    fn restore_config(&mut self, config: &[u8]) -> std::result::Result<(), String> {
        let word = |at: usize| -> Option<u32> {
            Some(u32::from_le_bytes(config.get(at..at + 4)?.try_into().ok()?))
        };
        let (Some(num_pages), Some(actual)) = (word(0), word(ACTUAL_OFFSET as usize)) else {
            return Err(format!("{}-byte balloon config space", config.len()));
        };
        let max = self.guest_mib * PAGES_PER_MIB;
        if u64::from(num_pages) > max {
            return Err(format!(
                "balloon target of {num_pages} pages is more than the guest's {max}"
            ));
        }
        self.num_pages = num_pages;
        self.actual = actual;
        Ok(())
    }

    fn activate(&mut self, ctx: ActivateContext) -> std::result::Result<(), ActivateError> {
        DeviceQueues::check_ready(&ctx.queues, &[INFLATE, DEFLATE])?;
        let stats_acked = ctx.acked_features & VIRTIO_BALLOON_F_STATS_VQ != 0;
        let stats_ready = ctx.queues.get(STATS).is_some_and(|q| q.ready());
        let stats_enabled = stats_acked && self.stats_timer.is_some() && stats_ready;
        if stats_acked && !stats_enabled {
            warn!("{DEVICE}: stats negotiated but the stats queue is not enabled");
        }
        if let (true, Some(timer)) = (stats_enabled, self.stats_timer.as_mut()) {
            timer
                .reset(self.stats_interval, Some(self.stats_interval))
                .map_err(|e| ActivateError::Device(format!("cannot arm the stats timer: {e}")))?;
        }
        self.queues.activate(ctx, &[INFLATE, DEFLATE])?;
        self.stats_enabled = stats_enabled;
        self.stats_head = None;
        // The driver may have queued buffers (its first stats buffer) and notified before
        // DRIVER_OK, when those notifications were drained unserved: look at every queue.
        self.queues.kick_all();
        Ok(())
    }

    fn reset(&mut self) {
        self.queues.reset();
        self.stats_enabled = false;
        self.stats_head = None;
        self.actual = 0;
        if let Some(timer) = self.stats_timer.as_mut() {
            if let Err(e) = timer.clear() {
                error!("{DEVICE}: cannot disarm the stats timer: {e}");
            }
        }
    }

    fn counter_values(&self) -> Vec<(&'static str, u64)> {
        self.counters.values()
    }
}

impl MutEventSubscriber for Balloon {
    fn init(&mut self, ops: &mut EventOps) {
        self.queues.register(ops);
        if let Some(timer) = &self.stats_timer {
            if let Err(e) = ops.add(Events::new(timer, EventSet::IN)) {
                error!("{DEVICE}: cannot register the stats timer: {e}");
            }
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        let fd = events.fd();
        if let Some(index) = self.queues.take_event(fd) {
            self.process_queue(index);
        } else if self
            .stats_timer
            .as_ref()
            .is_some_and(|t| t.as_raw_fd() == fd)
        {
            self.poll_stats();
        } else {
            warn!("{DEVICE}: event on unknown fd {fd}");
        }
    }
}
