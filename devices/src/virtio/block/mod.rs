//! virtio-blk (device type 2) over a raw or qcow2 image file or a host block device.
//!
//! One request queue. Requests: read, write, flush (`fdatasync`), get-id, and discard and
//! write-zeroes where the host file system can punch holes or zero ranges (probed once at
//! open). Each chain is validated by [`request`]; a bad one gets `VIRTIO_BLK_S_IOERR` (or
//! `VIRTIO_BLK_S_UNSUPP`) and is counted, an I/O error at run time is `VIRTIO_BLK_S_IOERR`,
//! counted and logged (rate-limited), and the device keeps serving. With a rate limiter the
//! device stops taking requests while the limiter is blocked and resumes when the limiter's
//! timerfd, registered on the event loop beside the queue eventfd, fires.

mod disk;
mod image;
mod qcow2;
mod request;
#[cfg(test)]
mod tests;

use std::io;
use std::os::fd::AsRawFd;
use std::path::PathBuf;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use log::{error, warn};
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO,
    VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_WRITE_ZEROES, VIRTIO_BLK_ID_BYTES, VIRTIO_BLK_S_IOERR,
    VIRTIO_BLK_S_OK,
};
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use vm_memory::Bytes;

use crate::rate_limiter::{
    admit, is_blocked, update_slot, BucketUpdate, RateLimiter, RateLimiterConfig,
};
use crate::virtio::serve::{count_error, Chain, ChainHandler, Disposition, QueueError};
use crate::virtio::{
    device_counters, device_type, read_config_space, ActivateContext, ActivateError, DeviceQueues,
    GuestMemoryMmap, InterruptKind, VirtioDevice, VIRTIO_F_VERSION_1,
};
pub use disk::{SECTOR_SHIFT, SECTOR_SIZE};
use image::Image;
pub use image::{detect, Detected, ImageFormat};
pub use qcow2::{backing_chain, MAX_CHAIN};
use request::{DiskLimits, Refusal, Request, RequestKind};

/// Size of the request queue.
pub const QUEUE_SIZE: u16 = 256;
/// Most data segments per request the driver is told to use (`seg_max`).
pub const SEG_MAX: u32 = QUEUE_SIZE as u32 - 2;
/// Largest discard / write-zeroes segment, in sectors (4 GiB - 512).
pub const MAX_DISCARD_SECTORS: u32 = u32::MAX >> SECTOR_SHIFT;
/// Most segments in one discard / write-zeroes request.
pub const MAX_DISCARD_SEG: u32 = 32;
/// Bytes in a device id (`VIRTIO_BLK_ID_BYTES`).
pub const ID_BYTES: usize = VIRTIO_BLK_ID_BYTES as usize;
/// Size of the configuration space exposed (through `write_zeroes_may_unmap` and padding).
pub const CONFIG_SPACE_SIZE: usize = 60;

const QUEUE_SIZES: &[u16] = &[QUEUE_SIZE];

/// How to build a [`Block`] device.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BlockConfig {
    /// Image file (raw or qcow2) or host block device.
    pub path: PathBuf,
    /// The image's format, or detect it.
    pub format: ImageFormat,
    /// A qcow2 image may open the backing files its header names.
    pub backing_files: bool,
    /// Refuse writes (and offer `VIRTIO_BLK_F_RO`).
    pub readonly: bool,
    /// Open with `O_DIRECT` (bypass the host page cache).
    pub direct: bool,
    /// Returned by get-id (at most [`ID_BYTES`] bytes).
    pub id: String,
    /// Bandwidth and operation limits.
    pub rate_limiter: Option<RateLimiterConfig>,
}

/// Why a block device could not be created.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// The image could not be opened (missing, unreadable, or not writable for a read-write
    /// disk).
    #[error("cannot open disk image {}", path.display())]
    Open {
        /// The image.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Another user holds the image (read-write, or read-only while this disk would write).
    #[error("disk image {} is in use by another VM (locked)", path.display())]
    Locked {
        /// The image.
        path: PathBuf,
    },
    /// The image's type or size could not be read.
    #[error("cannot inspect disk image {}", path.display())]
    Metadata {
        /// The image.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The path is neither a regular file nor a block device.
    #[error("disk image {} is not a regular file or a block device", path.display())]
    NotADisk {
        /// The image.
        path: PathBuf,
    },
    /// The image is in a format petrel does not serve, or not in the one the config says.
    #[error("disk image {}: {reason}", path.display())]
    Format {
        /// The image.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The image's format layer (qcow2 header, tables, backing chain) could not be opened;
    /// the cause names a backing file when it is the one at fault.
    #[error("cannot open disk image {}: {source}", path.display())]
    Image {
        /// The image.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The id is longer than [`ID_BYTES`].
    #[error("disk id {id:?} is longer than {ID_BYTES} bytes")]
    IdTooLong {
        /// The id.
        id: String,
    },
    /// An eventfd or timerfd could not be created.
    #[error("cannot create the device's event descriptors")]
    Events(#[source] io::Error),
}

device_counters! {
    /// What the device has done, for the API.
    pub struct BlockCounters {
        /// Read requests served.
        read_requests,
        /// Bytes read into the guest.
        read_bytes,
        /// Write requests served.
        write_requests,
        /// Bytes written to the disk.
        write_bytes,
        /// Flush requests served.
        flushes,
        /// Discard and write-zeroes requests served.
        discards,
        /// Requests refused as malformed or not allowed (including writes to a read-only disk)
        /// and unsupported request types.
        invalid_requests,
        /// Requests that failed on the host (I/O errors), and queue errors.
        io_errors,
        /// Times the rate limiter made the device wait.
        throttled,
    }
}

impl BlockCounters {
    /// Invalid requests plus I/O errors.
    pub fn errors(&self) -> u64 {
        self.invalid_requests + self.io_errors
    }
}

const DEVICE: &str = "virtio-blk";

/// A virtio-blk device.
#[derive(Debug)]
pub struct Block {
    disk: Image,
    readonly: bool,
    direct: bool,
    format: ImageFormat,
    backing_files: bool,
    id: [u8; ID_BYTES],
    config_space: [u8; CONFIG_SPACE_SIZE],
    queues: DeviceQueues,
    rate_limiter: Option<RateLimiter>,
    /// A limiter made while the device was on the event loop: its timerfd is registered at
    /// the device's next event.
    limiter_unregistered: bool,
    counters: BlockCounters,
}

impl Block {
    /// Opens the image and builds an unactivated device.
    pub fn new(cfg: BlockConfig) -> Result<Self, BlockError> {
        if cfg.id.len() > ID_BYTES {
            return Err(BlockError::IdTooLong { id: cfg.id });
        }
        let mut id = [0u8; ID_BYTES];
        id[..cfg.id.len()].copy_from_slice(cfg.id.as_bytes());
        let disk = Image::open(
            &cfg.path,
            cfg.format,
            cfg.readonly,
            cfg.direct,
            cfg.backing_files,
        )?;
        let rate_limiter = match &cfg.rate_limiter {
            Some(rl) => Some(RateLimiter::new(rl).map_err(BlockError::Events)?),
            None => None,
        };
        let discard = disk.can_discard() && !cfg.readonly;
        let write_zeroes = disk.can_write_zeroes() && !cfg.readonly;
        let mut features = VIRTIO_F_VERSION_1
            | (1 << VIRTIO_RING_F_EVENT_IDX)
            | (1 << VIRTIO_RING_F_INDIRECT_DESC)
            | (1 << VIRTIO_BLK_F_FLUSH)
            | (1 << VIRTIO_BLK_F_SEG_MAX)
            | (1 << VIRTIO_BLK_F_BLK_SIZE);
        if cfg.readonly {
            features |= 1 << VIRTIO_BLK_F_RO;
        }
        if discard {
            features |= 1 << VIRTIO_BLK_F_DISCARD;
        }
        if write_zeroes {
            features |= 1 << VIRTIO_BLK_F_WRITE_ZEROES;
        }
        let config_space = build_config_space(disk.size(), discard, write_zeroes);
        Ok(Self {
            disk,
            readonly: cfg.readonly,
            direct: cfg.direct,
            format: cfg.format,
            backing_files: cfg.backing_files,
            id,
            config_space,
            queues: DeviceQueues::new(device_type::BLOCK, QUEUE_SIZES, features)
                .map_err(BlockError::Events)?,
            rate_limiter,
            limiter_unregistered: false,
            counters: BlockCounters::default(),
        })
    }

    /// The counters so far.
    pub fn counters(&self) -> BlockCounters {
        self.counters
    }

    /// Disk capacity in 512-byte sectors.
    pub fn capacity_sectors(&self) -> u64 {
        self.disk.size() >> SECTOR_SHIFT
    }

    /// Replaces the backing file while the VM runs (Firecracker's `PATCH /drives` with a new
    /// `path_on_host`): the new file is opened with the same read-only and direct flags, the
    /// capacity in the configuration space becomes its size, and a bound driver gets a
    /// configuration-change interrupt. The features offered stay as they were. Returns the
    /// new capacity in sectors.
    pub fn replace_disk(&mut self, path: &std::path::Path) -> Result<u64, BlockError> {
        let disk = Image::open(
            path,
            self.format,
            self.readonly,
            self.direct,
            self.backing_files,
        )?;
        let offered = self.queues.features();
        self.config_space = build_config_space(
            disk.size(),
            offered & (1 << VIRTIO_BLK_F_DISCARD) != 0,
            offered & (1 << VIRTIO_BLK_F_WRITE_ZEROES) != 0,
        );
        self.disk = disk;
        if let Some(irq) = self.queues.interrupt() {
            if let Err(e) = irq.trigger(InterruptKind::Config) {
                warn!("{DEVICE}: cannot signal the configuration change: {e}");
            }
        }
        Ok(self.capacity_sectors())
    }

    /// Grows the disk to `size` bytes (Cloud Hypervisor's `vm.resize-disk`) and tells the
    /// guest with a configuration-change interrupt. Returns the new capacity in sectors.
    pub fn resize(&mut self, size: u64) -> Result<u64, String> {
        if self.readonly {
            return Err("the disk is read-only".into());
        }
        self.disk.grow(size)?;
        let offered = self.queues.features();
        self.config_space = build_config_space(
            self.disk.size(),
            offered & (1 << VIRTIO_BLK_F_DISCARD) != 0,
            offered & (1 << VIRTIO_BLK_F_WRITE_ZEROES) != 0,
        );
        if let Some(irq) = self.queues.interrupt() {
            if let Err(e) = irq.trigger(InterruptKind::Config) {
                warn!("{DEVICE}: cannot signal the configuration change: {e}");
            }
        }
        Ok(self.capacity_sectors())
    }

    /// Replaces the rate limiter (tests use one on a manual clock). Register the device
    /// with the event loop after this, so that the limiter's timerfd is watched.
    pub fn set_rate_limiter(&mut self, limiter: Option<RateLimiter>) {
        self.rate_limiter = limiter;
    }

    /// Changes the rate limiter of the running device (Firecracker's `PATCH /drives`): the
    /// buckets change in place; a device that had no limiter gets one, watched from its next
    /// event on.
    pub fn update_rate_limiter(
        &mut self,
        bandwidth: BucketUpdate,
        ops: BucketUpdate,
    ) -> std::io::Result<()> {
        if update_slot(&mut self.rate_limiter, bandwidth, ops)? {
            self.limiter_unregistered = true;
        }
        // Requests held back by the old limit are looked at again (and the new limiter's
        // timer registered) on the event loop's next turn.
        self.queues.kick_all();
        Ok(())
    }

    fn limits(&self) -> DiskLimits {
        DiskLimits {
            size: self.disk.size(),
            readonly: self.readonly,
            discard: self.queues.features() & (1 << VIRTIO_BLK_F_DISCARD) != 0,
            write_zeroes: self.queues.features() & (1 << VIRTIO_BLK_F_WRITE_ZEROES) != 0,
            max_range_sectors: MAX_DISCARD_SECTORS,
            max_ranges: MAX_DISCARD_SEG,
        }
    }

    /// Serves available chains until the queue is empty, the rate limiter blocks or
    /// [`MAX_CHAINS_PER_TURN`](crate::virtio::MAX_CHAINS_PER_TURN) were served (then, with more available, the queue eventfd is
    /// written so the event loop comes back), then interrupts the driver if it wants to know.
    /// The queue event does this; it is public for fuzzing and benchmarks. Does nothing
    /// before activation.
    pub fn process_queue(&mut self) {
        self.process_queue_with(|| {});
    }

    /// [`Self::process_queue`], calling `before_enable` after each round's last chain and
    /// before notifications are re-enabled (tests use it to play a driver racing the device).
    fn process_queue_with(&mut self, before_enable: impl FnMut()) {
        let mut turn = Requests {
            disk: &self.disk,
            id: &self.id,
            limits: self.limits(),
            // Without FLUSH the driver cannot ask for durability, so every write is made
            // durable before it completes (write-through), as the virtio spec asks.
            write_through: !self.queues.acked(1 << VIRTIO_BLK_F_FLUSH),
            rate_limiter: self.rate_limiter.as_mut(),
            counters: &mut self.counters,
        };
        self.queues.serve_with(0, &mut turn, before_enable);
    }
}

/// Serves the request queue: parses, admits (rate limiter) and runs each request.
struct Requests<'a> {
    disk: &'a Image,
    id: &'a [u8; ID_BYTES],
    limits: DiskLimits,
    write_through: bool,
    rate_limiter: Option<&'a mut RateLimiter>,
    counters: &'a mut BlockCounters,
}

impl ChainHandler for Requests<'_> {
    fn can_take(&mut self) -> bool {
        // While the limiter is blocked its timer, not the guest, restarts the queue.
        !is_blocked(self.rate_limiter.as_deref())
    }

    fn handle(&mut self, mem: &GuestMemoryMmap, chain: Chain<'_>) -> Disposition {
        let head = chain.head_index();
        match request::parse(chain, mem, &self.limits) {
            Ok(req) => {
                if !admit(self.rate_limiter.as_deref_mut(), req.kind.data_len()) {
                    self.counters.throttled += 1;
                    return Disposition::Later;
                }
                let c = &mut *self.counters;
                Disposition::Used(serve(self.disk, mem, self.id, &req, self.write_through, c))
            }
            Err(refusal) => Disposition::Used(refuse(mem, head, &refusal, self.counters)),
        }
    }

    fn queue_error(&mut self, error: QueueError) {
        count_io_error(self.counters, format_args!("{error}"));
    }
}

/// Lays out `struct virtio_blk_config` (little endian).
fn build_config_space(size: u64, discard: bool, write_zeroes: bool) -> [u8; CONFIG_SPACE_SIZE] {
    let mut c = [0u8; CONFIG_SPACE_SIZE];
    let mut put = |offset: usize, bytes: &[u8]| {
        c[offset..offset + bytes.len()].copy_from_slice(bytes);
    };
    put(0, &(size >> SECTOR_SHIFT).to_le_bytes()); // capacity
    put(12, &SEG_MAX.to_le_bytes()); // seg_max
    put(20, &(SECTOR_SIZE as u32).to_le_bytes()); // blk_size
    put(34, &1u16.to_le_bytes()); // num_queues
    if discard {
        put(36, &MAX_DISCARD_SECTORS.to_le_bytes()); // max_discard_sectors
        put(40, &MAX_DISCARD_SEG.to_le_bytes()); // max_discard_seg
        put(44, &1u32.to_le_bytes()); // discard_sector_alignment
    }
    if write_zeroes {
        put(48, &MAX_DISCARD_SECTORS.to_le_bytes()); // max_write_zeroes_sectors
        put(52, &MAX_DISCARD_SEG.to_le_bytes()); // max_write_zeroes_seg
        put(56, &[u8::from(discard)]); // write_zeroes_may_unmap
    }
    c
}

/// Counts an I/O error and logs it, rate-limited.
fn count_io_error(counters: &mut BlockCounters, what: std::fmt::Arguments<'_>) {
    count_error(&mut counters.io_errors, DEVICE, what);
}

/// Answers a refused chain; returns the used length.
fn refuse(mem: &GuestMemoryMmap, head: u16, r: &Refusal, counters: &mut BlockCounters) -> u32 {
    let what = format_args!("request {head} refused: {}", r.reason);
    count_error(&mut counters.invalid_requests, DEVICE, what);
    match r.status {
        Some(addr) if mem.write_obj(r.code, addr).is_ok() => 1,
        _ => 0,
    }
}

/// Runs a valid request and writes its status; returns the used length.
fn serve(
    disk: &Image,
    mem: &GuestMemoryMmap,
    id: &[u8; ID_BYTES],
    req: &Request,
    write_through: bool,
    counters: &mut BlockCounters,
) -> u32 {
    let result = execute(disk, mem, id, &req.kind).and_then(|written| {
        if write_through && matches!(req.kind, RequestKind::Out { .. }) {
            disk.flush()?;
        }
        Ok(written)
    });
    let (status, written) = match result {
        Ok(written) => {
            let len = req.kind.data_len();
            match &req.kind {
                RequestKind::In { .. } => {
                    counters.read_requests += 1;
                    counters.read_bytes += len;
                }
                RequestKind::Out { .. } => {
                    counters.write_requests += 1;
                    counters.write_bytes += len;
                }
                RequestKind::Flush => counters.flushes += 1,
                RequestKind::Discard(_) | RequestKind::WriteZeroes(_) => counters.discards += 1,
                RequestKind::GetId { .. } => {}
            }
            (VIRTIO_BLK_S_OK, written)
        }
        Err(e) => {
            count_io_error(
                counters,
                format_args!("{} failed: {e}", kind_name(&req.kind)),
            );
            (VIRTIO_BLK_S_IOERR, 0)
        }
    };
    if mem.write_obj(status as u8, req.status).is_err() {
        // The parser checked the address; guest memory does not shrink while we run.
        count_io_error(counters, format_args!("cannot write the status byte"));
        return 0;
    }
    u32::try_from(written.saturating_add(1)).unwrap_or(u32::MAX)
}

fn kind_name(kind: &RequestKind) -> &'static str {
    match kind {
        RequestKind::In { .. } => "read",
        RequestKind::Out { .. } => "write",
        RequestKind::Flush => "flush",
        RequestKind::GetId { .. } => "get-id",
        RequestKind::Discard(_) => "discard",
        RequestKind::WriteZeroes(_) => "write-zeroes",
    }
}

/// Does the I/O; returns the bytes written into guest buffers.
fn execute(
    disk: &Image,
    mem: &GuestMemoryMmap,
    id: &[u8; ID_BYTES],
    kind: &RequestKind,
) -> io::Result<u64> {
    match kind {
        RequestKind::In { offset, data } => {
            let mut offset = *offset;
            for span in data {
                disk.read_to_guest(mem, span.addr, offset, span.len as usize)?;
                offset += span.len;
            }
            Ok(kind.data_len())
        }
        RequestKind::Out { offset, data } => {
            let mut offset = *offset;
            for span in data {
                disk.write_from_guest(mem, span.addr, offset, span.len as usize)?;
                offset += span.len;
            }
            Ok(0)
        }
        RequestKind::Flush => disk.flush().map(|()| 0),
        RequestKind::GetId { data } => {
            let mut rest: &[u8] = id;
            for span in data {
                if rest.is_empty() {
                    break;
                }
                // span.len is below 2^32.
                let n = (span.len as usize).min(rest.len());
                mem.write_slice(&rest[..n], span.addr)
                    .map_err(io::Error::other)?;
                rest = &rest[n..];
            }
            Ok((ID_BYTES - rest.len()) as u64)
        }
        RequestKind::Discard(ranges) => {
            for r in ranges {
                disk.discard(r.offset, r.len)?;
            }
            Ok(0)
        }
        RequestKind::WriteZeroes(ranges) => {
            for r in ranges {
                disk.write_zeroes(r.offset, r.len, r.unmap)?;
            }
            Ok(0)
        }
    }
}

impl VirtioDevice for Block {
    fn queues(&self) -> Option<&DeviceQueues> {
        Some(&self.queues)
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_space(&self.config_space, offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // Nothing in the configuration space is writable (no CONFIG_WCE).
        warn!(
            "{DEVICE}: {}-byte config write at {offset:#x} ignored",
            data.len()
        );
    }

    fn rate_limiters(&mut self) -> Vec<Option<&mut RateLimiter>> {
        vec![self.rate_limiter.as_mut()]
    }

    fn set_host_locks(&mut self, held: bool) -> Result<(), String> {
        self.disk
            .set_lock(held, self.readonly)
            .map_err(|e| format!("disk image lock: {e}"))
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        self.queues.activate(ctx, &[0])
    }

    fn reset(&mut self) {
        self.queues.reset();
    }

    fn counter_values(&self) -> Vec<(&'static str, u64)> {
        self.counters.values()
    }
}

impl MutEventSubscriber for Block {
    fn init(&mut self, ops: &mut EventOps) {
        self.queues.register(ops);
        if let Some(rl) = &self.rate_limiter {
            if let Err(e) = ops.add(Events::new(rl, EventSet::IN)) {
                error!("{DEVICE}: cannot register the rate limiter timer: {e}");
            }
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        if std::mem::take(&mut self.limiter_unregistered) {
            if let Some(rl) = &self.rate_limiter {
                if let Err(e) = ops.add(Events::new(rl, EventSet::IN)) {
                    error!("{DEVICE}: cannot register the rate limiter timer: {e}");
                }
            }
        }
        let fd = events.fd();
        if self.queues.take_event(fd).is_some() {
            // While the limiter is blocked the timer, not the guest, restarts the queue.
            self.process_queue();
        } else if let Some(rl) = self.rate_limiter.as_mut().filter(|rl| rl.as_raw_fd() == fd) {
            if let Err(e) = rl.event_handler() {
                error!("{DEVICE}: rate limiter timer: {e}");
            }
            self.process_queue();
        } else {
            warn!("{DEVICE}: event on unknown fd {fd}");
        }
    }
}
