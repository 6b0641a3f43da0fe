//! Parsing and validation of virtio-blk requests (virtio 1.2, 5.2.6).
//!
//! A chain is read as two byte streams: the device-readable descriptors (header, then data for
//! writes, discard and write-zeroes segments) followed by the device-writable ones (data for
//! reads and get-id, then the status byte, which is the chain's last byte). Any layout of those
//! bytes over descriptors is accepted, as `VIRTIO_F_VERSION_1` requires. Everything the guest
//! controls is checked here; the result either names guest memory that is known to exist and
//! disk ranges known to be inside the disk, or says which status the guest gets.

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_FLUSH,
    VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_WRITE_ZEROES,
    VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
};
use virtio_queue::DescriptorChain;

use super::super::GuestMemoryMmap;
use super::disk::{SECTOR_SHIFT, SECTOR_SIZE};

/// Size of the request header (`struct virtio_blk_outhdr`).
pub const HEADER_SIZE: u64 = 16;
/// Size of one discard / write-zeroes segment.
pub const SEGMENT_SIZE: u64 = 16;
/// Most descriptors accepted in one chain (indirect tables can be longer than the queue).
pub const MAX_DESCRIPTORS: usize = 1024;

/// A run of guest memory, checked to be inside guest memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Span {
    pub addr: GuestAddress,
    pub len: u64,
}

/// A range of the disk in bytes, checked to be inside the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DiskRange {
    pub offset: u64,
    pub len: u64,
    /// Write-zeroes may deallocate.
    pub unmap: bool,
}

/// What a valid request asks for.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum RequestKind {
    /// Disk → guest.
    In {
        offset: u64,
        data: Vec<Span>,
    },
    /// Guest → disk.
    Out {
        offset: u64,
        data: Vec<Span>,
    },
    Flush,
    GetId {
        data: Vec<Span>,
    },
    Discard(Vec<DiskRange>),
    WriteZeroes(Vec<DiskRange>),
}

impl RequestKind {
    /// Bytes of data the request moves (what the bandwidth limiter counts).
    pub(crate) fn data_len(&self) -> u64 {
        match self {
            RequestKind::In { data, .. } | RequestKind::Out { data, .. } => total(data),
            _ => 0,
        }
    }
}

/// A validated request.
#[derive(Debug)]
pub(crate) struct Request {
    pub kind: RequestKind,
    /// Where the status byte goes.
    pub status: GuestAddress,
}

/// Why a chain was refused, and how to tell the guest.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Refusal {
    /// The status byte's address, if the chain has a usable one.
    pub status: Option<GuestAddress>,
    /// `VIRTIO_BLK_S_IOERR` or `VIRTIO_BLK_S_UNSUPP`.
    pub code: u8,
    pub reason: &'static str,
}

/// What the parser needs to know about the disk.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DiskLimits {
    /// Capacity in bytes.
    pub size: u64,
    pub readonly: bool,
    pub discard: bool,
    pub write_zeroes: bool,
    /// Largest discard / write-zeroes segment, in sectors.
    pub max_range_sectors: u32,
    /// Most segments in one discard / write-zeroes request.
    pub max_ranges: u32,
}

fn total(spans: &[Span]) -> u64 {
    spans.iter().map(|s| s.len).sum()
}

/// The spans of `spans` after skipping `skip` bytes and keeping at most `keep` bytes.
fn sub_spans(spans: &[Span], mut skip: u64, mut keep: u64) -> Vec<Span> {
    let mut out = Vec::new();
    for s in spans {
        if keep == 0 {
            break;
        }
        if skip >= s.len {
            skip -= s.len;
            continue;
        }
        let len = (s.len - skip).min(keep);
        // The span was checked to be inside guest memory, so its addresses do not wrap.
        out.push(Span {
            addr: GuestAddress(s.addr.0 + skip),
            len,
        });
        keep -= len;
        skip = 0;
    }
    out
}

/// Reads `buf.len()` bytes of the stream `spans` starting `skip` bytes in.
fn read_stream(mem: &GuestMemoryMmap, spans: &[Span], skip: u64, buf: &mut [u8]) -> bool {
    let mut done = 0;
    for s in sub_spans(spans, skip, buf.len() as u64) {
        // s.len <= buf.len() - done, so it fits in usize.
        let end = done + s.len as usize;
        if mem.read_slice(&mut buf[done..end], s.addr).is_err() {
            return false;
        }
        done = end;
    }
    done == buf.len()
}

fn le_u32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_le_bytes(a)
}

fn le_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

/// Checks that `sectors` sectors at `sector` lie inside a disk of `size` bytes; returns the
/// byte offset.
fn disk_offset(sector: u64, len: u64, size: u64) -> Option<u64> {
    let offset = sector.checked_mul(SECTOR_SIZE)?;
    let end = offset.checked_add(len)?;
    (end <= size).then_some(offset)
}

/// Parses and validates the chain.
pub(crate) fn parse<M>(
    chain: DescriptorChain<M>,
    mem: &GuestMemoryMmap,
    limits: &DiskLimits,
) -> Result<Request, Refusal>
where
    M: std::ops::Deref,
    M::Target: vm_memory::GuestMemory,
{
    let mut readable = Vec::new();
    let mut writable = Vec::new();
    let mut count = 0usize;
    let mut terminated = false;
    let mut out_of_order = false;
    let mut outside = false;
    for desc in chain {
        count += 1;
        if count > MAX_DESCRIPTORS {
            break;
        }
        terminated = !desc.has_next();
        let span = Span {
            addr: desc.addr(),
            len: u64::from(desc.len()),
        };
        // len fits in usize on every target petrel supports.
        if !GuestMemoryBackend::check_range(mem, span.addr, span.len as usize) {
            outside = true;
        }
        if desc.is_write_only() {
            writable.push(span);
        } else if writable.is_empty() {
            readable.push(span);
        } else {
            out_of_order = true;
        }
    }
    let no_status = |reason| Refusal {
        status: None,
        code: VIRTIO_BLK_S_IOERR as u8,
        reason,
    };
    if !terminated {
        // A loop, a next index out of range, an unreadable descriptor or too many.
        return Err(no_status("descriptor chain does not terminate"));
    }
    // The status byte: the last writable byte, which must be the chain's last byte.
    let Some(last) = writable.last().copied() else {
        return Err(no_status("no writable status byte"));
    };
    if last.len == 0 || !GuestMemoryBackend::check_range(mem, last.addr, last.len as usize) {
        return Err(no_status("status byte outside guest memory"));
    }
    let status = GuestAddress(last.addr.0 + last.len - 1);
    let refuse = |code: u32, reason| Refusal {
        status: Some(status),
        code: code as u8,
        reason,
    };
    let ioerr = |reason| refuse(VIRTIO_BLK_S_IOERR, reason);
    if out_of_order {
        return Err(ioerr("readable descriptor after a writable one"));
    }
    if outside {
        return Err(ioerr("buffer outside guest memory"));
    }
    let readable_len = total(&readable);
    let writable_len = total(&writable) - 1;
    let mut header = [0u8; HEADER_SIZE as usize];
    if readable_len < HEADER_SIZE || !read_stream(mem, &readable, 0, &mut header) {
        return Err(ioerr("request header too short"));
    }
    let req_type = le_u32(&header[0..4]);
    let sector = le_u64(&header[8..16]);
    let out_len = readable_len - HEADER_SIZE;
    let writable_data = || sub_spans(&writable, 0, writable_len);
    let kind = match req_type {
        VIRTIO_BLK_T_IN => {
            if out_len != 0 {
                return Err(ioerr("read request with device-readable data"));
            }
            if !writable_len.is_multiple_of(SECTOR_SIZE) {
                return Err(ioerr("read length not a multiple of 512"));
            }
            let offset = disk_offset(sector, writable_len, limits.size)
                .ok_or_else(|| ioerr("read beyond the end of the disk"))?;
            RequestKind::In {
                offset,
                data: writable_data(),
            }
        }
        VIRTIO_BLK_T_OUT => {
            if limits.readonly {
                return Err(ioerr("write to a read-only disk"));
            }
            if writable_len != 0 {
                return Err(ioerr("write request with device-writable data"));
            }
            if !out_len.is_multiple_of(SECTOR_SIZE) {
                return Err(ioerr("write length not a multiple of 512"));
            }
            let offset = disk_offset(sector, out_len, limits.size)
                .ok_or_else(|| ioerr("write beyond the end of the disk"))?;
            RequestKind::Out {
                offset,
                data: sub_spans(&readable, HEADER_SIZE, out_len),
            }
        }
        VIRTIO_BLK_T_FLUSH => RequestKind::Flush,
        VIRTIO_BLK_T_GET_ID => {
            if writable_len == 0 {
                return Err(ioerr("get-id request without a buffer"));
            }
            RequestKind::GetId {
                data: writable_data(),
            }
        }
        VIRTIO_BLK_T_DISCARD | VIRTIO_BLK_T_WRITE_ZEROES => {
            let discard = req_type == VIRTIO_BLK_T_DISCARD;
            let supported = if discard {
                limits.discard
            } else {
                limits.write_zeroes
            };
            if !supported || limits.readonly {
                return Err(refuse(VIRTIO_BLK_S_UNSUPP, "discard or write-zeroes"));
            }
            let ranges = parse_ranges(mem, &readable, out_len, discard, limits)
                .map_err(|(code, reason)| refuse(code, reason))?;
            if discard {
                RequestKind::Discard(ranges)
            } else {
                RequestKind::WriteZeroes(ranges)
            }
        }
        _ => return Err(refuse(VIRTIO_BLK_S_UNSUPP, "unsupported request type")),
    };
    Ok(Request { kind, status })
}

/// Parses the segments of a discard or write-zeroes request.
fn parse_ranges(
    mem: &GuestMemoryMmap,
    readable: &[Span],
    len: u64,
    discard: bool,
    limits: &DiskLimits,
) -> Result<Vec<DiskRange>, (u32, &'static str)> {
    if len == 0 || !len.is_multiple_of(SEGMENT_SIZE) {
        return Err((VIRTIO_BLK_S_IOERR, "bad discard/write-zeroes segment list"));
    }
    let count = len / SEGMENT_SIZE;
    if count > u64::from(limits.max_ranges) {
        return Err((VIRTIO_BLK_S_IOERR, "too many discard/write-zeroes segments"));
    }
    let mut ranges = Vec::new();
    for i in 0..count {
        let mut seg = [0u8; SEGMENT_SIZE as usize];
        if !read_stream(mem, readable, HEADER_SIZE + i * SEGMENT_SIZE, &mut seg) {
            return Err((VIRTIO_BLK_S_IOERR, "unreadable segment"));
        }
        let sector = le_u64(&seg[0..8]);
        let sectors = le_u32(&seg[8..12]);
        let flags = le_u32(&seg[12..16]);
        let allowed = if discard {
            0
        } else {
            VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP
        };
        if flags & !allowed != 0 {
            return Err((VIRTIO_BLK_S_UNSUPP, "unsupported segment flags"));
        }
        if sectors > limits.max_range_sectors {
            return Err((VIRTIO_BLK_S_IOERR, "segment too large"));
        }
        let bytes = u64::from(sectors) << SECTOR_SHIFT;
        let offset = disk_offset(sector, bytes, limits.size)
            .ok_or((VIRTIO_BLK_S_IOERR, "segment beyond the end of the disk"))?;
        ranges.push(DiskRange {
            offset,
            len: bytes,
            unmap: flags & VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP != 0,
        });
    }
    Ok(ranges)
}
