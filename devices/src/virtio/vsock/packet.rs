//! virtio-vsock packets (virtio 1.2, 5.10.6): the 44-byte header, reading a guest packet from
//! a TX chain and writing a device packet into an RX chain.
//!
//! A packet is a header followed by `len` payload bytes, laid out over the chain's descriptors
//! in any way (`VIRTIO_F_VERSION_1`). Everything the guest controls is checked here: a chain
//! whose buffers are outside guest memory, that is too short for the header, or whose payload
//! is longer than the chain or than [`MAX_PAYLOAD`] is refused with a [`PacketError`].

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use virtio_queue::DescriptorChain;

use crate::virtio::GuestMemoryMmap;

/// Size of `struct virtio_vsock_hdr`.
pub const HDR_SIZE: usize = 44;
/// The host's context id (`VMADDR_CID_HOST`).
pub const HOST_CID: u64 = 2;
/// Largest payload accepted from or sent to the guest (Linux's `VIRTIO_VSOCK_MAX_PKT_BUF_SIZE`).
pub const MAX_PAYLOAD: usize = 64 * 1024;
/// `VIRTIO_VSOCK_TYPE_STREAM`, the only socket type petrel supports.
pub const TYPE_STREAM: u16 = 1;
/// `VIRTIO_VSOCK_SHUTDOWN_RCV`: the sender will receive no more data.
pub const SHUTDOWN_RCV: u32 = 1;
/// `VIRTIO_VSOCK_SHUTDOWN_SEND`: the sender will send no more data.
pub const SHUTDOWN_SEND: u32 = 2;
/// Both shutdown flags.
pub const SHUTDOWN_BOTH: u32 = SHUTDOWN_RCV | SHUTDOWN_SEND;

/// Packet operations (`VIRTIO_VSOCK_OP_*`).
pub mod op {
    /// Connection request.
    pub const REQUEST: u16 = 1;
    /// Connection accepted.
    pub const RESPONSE: u16 = 2;
    /// Connection refused or torn down.
    pub const RST: u16 = 3;
    /// One or both directions closed (flags say which).
    pub const SHUTDOWN: u16 = 4;
    /// Stream data.
    pub const RW: u16 = 5;
    /// The sender's receive credit changed.
    pub const CREDIT_UPDATE: u16 = 6;
    /// The sender asks for a credit update.
    pub const CREDIT_REQUEST: u16 = 7;
}

/// `struct virtio_vsock_hdr`, decoded (all fields little endian on the wire).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Source context id.
    pub src_cid: u64,
    /// Destination context id.
    pub dst_cid: u64,
    /// Source port.
    pub src_port: u32,
    /// Destination port.
    pub dst_port: u32,
    /// Payload length.
    pub len: u32,
    /// Socket type ([`TYPE_STREAM`]).
    pub type_: u16,
    /// Operation (see [`op`]).
    pub op: u16,
    /// Operation flags (shutdown flags).
    pub flags: u32,
    /// The sender's receive buffer size.
    pub buf_alloc: u32,
    /// Bytes the sender has consumed from its receive buffer, ever (wrapping).
    pub fwd_cnt: u32,
}

impl Header {
    /// Decodes a header.
    pub fn from_bytes(b: &[u8; HDR_SIZE]) -> Self {
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap_or_default());
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap_or_default());
        let u16_at = |o: usize| u16::from_le_bytes(b[o..o + 2].try_into().unwrap_or_default());
        Self {
            src_cid: u64_at(0),
            dst_cid: u64_at(8),
            src_port: u32_at(16),
            dst_port: u32_at(20),
            len: u32_at(24),
            type_: u16_at(28),
            op: u16_at(30),
            flags: u32_at(32),
            buf_alloc: u32_at(36),
            fwd_cnt: u32_at(40),
        }
    }

    /// Encodes the header.
    pub fn to_bytes(&self) -> [u8; HDR_SIZE] {
        let mut b = [0u8; HDR_SIZE];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.type_.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }

    /// A stream packet from the host (CID 2, port `local`) to the guest (`guest_cid`, `peer`).
    pub fn to_guest(guest_cid: u64, local: u32, peer: u32, op: u16) -> Self {
        Self {
            src_cid: HOST_CID,
            dst_cid: guest_cid,
            src_port: local,
            dst_port: peer,
            type_: TYPE_STREAM,
            op,
            ..Self::default()
        }
    }
}

/// Why a chain does not hold a usable packet.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PacketError {
    /// A buffer lies (partly) outside guest memory.
    #[error("buffer {addr:#x}+{len:#x} is outside guest memory")]
    OutsideMemory {
        /// Guest address of the buffer.
        addr: u64,
        /// Its length.
        len: u32,
    },
    /// The chain is shorter than a header.
    #[error("chain of {0} bytes is too short for a header")]
    ShortHeader(usize),
    /// The header's `len` is beyond [`MAX_PAYLOAD`].
    #[error("payload of {0} bytes is too large")]
    PayloadTooLarge(u32),
    /// The header's `len` is beyond what the chain holds.
    #[error("payload of {len} bytes but only {avail} in the chain")]
    ShortPayload {
        /// The header's `len`.
        len: u32,
        /// Bytes after the header.
        avail: usize,
    },
    /// Guest memory could not be read or written.
    #[error("guest memory access failed")]
    Memory,
}

/// Buffers of a chain, each checked to lie inside guest memory.
fn spans<'a>(
    mem: &GuestMemoryMmap,
    descs: impl Iterator<Item = virtio_queue::desc::split::Descriptor> + 'a,
) -> Result<Vec<(GuestAddress, u32)>, PacketError> {
    let mut out = Vec::new();
    for d in descs {
        if !GuestMemoryBackend::check_range(mem, d.addr(), d.len() as usize) {
            return Err(PacketError::OutsideMemory {
                addr: d.addr().0,
                len: d.len(),
            });
        }
        if d.len() > 0 {
            out.push((d.addr(), d.len()));
        }
    }
    Ok(out)
}

/// Calls `f(guest address, range of the caller's buffer)` for bytes `offset..offset + len` of
/// the spans; an error if the spans end first.
fn walk_spans(
    spans: &[(GuestAddress, u32)],
    mut offset: usize,
    len: usize,
    mut f: impl FnMut(GuestAddress, std::ops::Range<usize>) -> vm_memory::GuestMemoryResult<()>,
) -> Result<(), PacketError> {
    let mut done = 0;
    for &(addr, span_len) in spans {
        let span_len = span_len as usize;
        if done == len {
            break;
        }
        if offset >= span_len {
            offset -= span_len;
            continue;
        }
        let n = (span_len - offset).min(len - done);
        // Cannot overflow: the span was checked to be inside guest memory.
        let at = GuestAddress(addr.0 + offset as u64);
        f(at, done..done + n).map_err(|_| PacketError::Memory)?;
        done += n;
        offset = 0;
    }
    if done == len {
        Ok(())
    } else {
        Err(PacketError::Memory)
    }
}

/// Reads bytes `offset..` of the spans into `buf`.
fn read_spans(
    mem: &GuestMemoryMmap,
    spans: &[(GuestAddress, u32)],
    offset: usize,
    buf: &mut [u8],
) -> Result<(), PacketError> {
    walk_spans(spans, offset, buf.len(), |at, r| {
        mem.read_slice(&mut buf[r], at)
    })
}

/// Writes `buf` into bytes `offset..` of the spans.
fn write_spans(
    mem: &GuestMemoryMmap,
    spans: &[(GuestAddress, u32)],
    offset: usize,
    buf: &[u8],
) -> Result<(), PacketError> {
    walk_spans(spans, offset, buf.len(), |at, r| {
        mem.write_slice(&buf[r], at)
    })
}

/// A guest packet read from a TX chain. On error the header is returned too when it could be
/// read, so that the connection it names can be reset.
pub(crate) fn read_tx(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
    payload: &mut Vec<u8>,
) -> Result<Header, (Option<Header>, PacketError)> {
    // The chain iterator stops after queue-size descriptors, so a looping chain ends.
    let spans = spans(mem, chain.readable()).map_err(|e| (None, e))?;
    let total: usize = spans.iter().map(|s| s.1 as usize).sum();
    if total < HDR_SIZE {
        return Err((None, PacketError::ShortHeader(total)));
    }
    let mut raw = [0u8; HDR_SIZE];
    read_spans(mem, &spans, 0, &mut raw).map_err(|e| (None, e))?;
    let hdr = Header::from_bytes(&raw);
    let len = hdr.len as usize;
    if len > MAX_PAYLOAD {
        return Err((Some(hdr), PacketError::PayloadTooLarge(hdr.len)));
    }
    if len > total - HDR_SIZE {
        return Err((
            Some(hdr),
            PacketError::ShortPayload {
                len: hdr.len,
                avail: total - HDR_SIZE,
            },
        ));
    }
    payload.clear();
    payload.resize(len, 0);
    read_spans(mem, &spans, HDR_SIZE, payload).map_err(|e| (Some(hdr), e))?;
    Ok(hdr)
}

/// The device-writable buffers of an RX chain.
#[derive(Debug)]
pub(crate) struct RxBuffer {
    spans: Vec<(GuestAddress, u32)>,
    total: usize,
}

impl RxBuffer {
    /// Checks the chain's writable buffers; at least a header must fit.
    pub(crate) fn new(
        mem: &GuestMemoryMmap,
        chain: DescriptorChain<&GuestMemoryMmap>,
    ) -> Result<Self, PacketError> {
        let spans = spans(mem, chain.writable())?;
        let total = spans.iter().map(|s| s.1 as usize).sum();
        if total < HDR_SIZE {
            return Err(PacketError::ShortHeader(total));
        }
        Ok(Self { spans, total })
    }

    /// Most payload bytes a packet in this buffer can carry.
    pub(crate) fn payload_capacity(&self) -> usize {
        (self.total - HDR_SIZE).min(MAX_PAYLOAD)
    }

    /// Writes the header and payload (`hdr.len` must be `payload.len()`); returns the bytes
    /// written.
    pub(crate) fn write(
        &self,
        mem: &GuestMemoryMmap,
        hdr: &Header,
        payload: &[u8],
    ) -> Result<u32, PacketError> {
        if payload.len() > self.payload_capacity() {
            return Err(PacketError::ShortPayload {
                len: hdr.len,
                avail: self.payload_capacity(),
            });
        }
        write_spans(mem, &self.spans, 0, &hdr.to_bytes())?;
        write_spans(mem, &self.spans, HDR_SIZE, payload)?;
        // At most HDR_SIZE + MAX_PAYLOAD.
        Ok((HDR_SIZE + payload.len()) as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    use virtio_queue::desc::{split::Descriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use virtio_queue::{Queue, QueueOwnedT};

    const MEM: usize = 0x10_0000;
    const BUF: u64 = 0x8_0000;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM)]).unwrap()
    }

    fn sample() -> Header {
        Header {
            src_cid: 3,
            dst_cid: 2,
            src_port: 0x1234,
            dst_port: 52,
            len: 5,
            type_: TYPE_STREAM,
            op: op::RW,
            flags: 0,
            buf_alloc: 0x4_0000,
            fwd_cnt: 7,
        }
    }

    fn desc(addr: u64, len: u32, flags: u32, next: u16) -> RawDescriptor {
        RawDescriptor::from(Descriptor::new(addr, len, flags as u16, next))
    }

    /// Runs `f` on the first chain of a queue holding `descs`.
    fn with_chain<T>(
        m: &GuestMemoryMmap,
        descs: &[RawDescriptor],
        f: impl FnOnce(DescriptorChain<&GuestMemoryMmap>) -> T,
    ) -> T {
        let vq = MockSplitQueue::new(m, 16);
        vq.add_desc_chains(descs, 0).unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        let chain = q.iter(m).unwrap().next().unwrap();
        f(chain)
    }

    #[test]
    fn header_round_trip_and_layout() {
        let h = sample();
        let b = h.to_bytes();
        assert_eq!(Header::from_bytes(&b), h);
        assert_eq!(&b[0..8], &3u64.to_le_bytes());
        assert_eq!(&b[24..28], &5u32.to_le_bytes());
        assert_eq!(&b[30..32], &op::RW.to_le_bytes());
        assert_eq!(&b[40..44], &7u32.to_le_bytes());
    }

    #[test]
    fn tx_header_and_payload_split_anywhere() {
        let m = mem();
        let mut bytes = sample().to_bytes().to_vec();
        bytes.extend_from_slice(b"hello");
        m.write_slice(&bytes, GuestAddress(BUF)).unwrap();
        // 10 + 40 bytes: the header spans two descriptors, the payload starts in the second.
        let descs = [
            desc(BUF, 10, VRING_DESC_F_NEXT, 1),
            desc(BUF + 10, 39, 0, 0),
        ];
        let mut payload = Vec::new();
        let h = with_chain(&m, &descs, |c| read_tx(&m, c, &mut payload)).unwrap();
        assert_eq!(h, sample());
        assert_eq!(payload, b"hello");
    }

    #[test]
    fn tx_errors() {
        let m = mem();
        let mut payload = Vec::new();
        let short = [desc(BUF, 43, 0, 0)];
        let e = with_chain(&m, &short, |c| read_tx(&m, c, &mut payload)).unwrap_err();
        assert_eq!(e, (None, PacketError::ShortHeader(43)));
        // Writable buffers do not count for TX.
        let wr = [desc(BUF, 64, VRING_DESC_F_WRITE, 0)];
        let e = with_chain(&m, &wr, |c| read_tx(&m, c, &mut payload)).unwrap_err();
        assert_eq!(e.1, PacketError::ShortHeader(0));
        let outside = [desc(MEM as u64 - 8, 64, 0, 0)];
        let e = with_chain(&m, &outside, |c| read_tx(&m, c, &mut payload)).unwrap_err();
        assert!(matches!(e.1, PacketError::OutsideMemory { .. }));
        let mut h = sample();
        h.len = 100;
        m.write_slice(&h.to_bytes(), GuestAddress(BUF)).unwrap();
        let e =
            with_chain(&m, &[desc(BUF, 60, 0, 0)], |c| read_tx(&m, c, &mut payload)).unwrap_err();
        assert_eq!(
            e,
            (
                Some(h),
                PacketError::ShortPayload {
                    len: 100,
                    avail: 16
                }
            )
        );
        h.len = u32::MAX;
        m.write_slice(&h.to_bytes(), GuestAddress(BUF)).unwrap();
        let e =
            with_chain(&m, &[desc(BUF, 60, 0, 0)], |c| read_tx(&m, c, &mut payload)).unwrap_err();
        assert_eq!(e.1, PacketError::PayloadTooLarge(u32::MAX));
    }

    #[test]
    fn rx_write_over_several_buffers() {
        let m = mem();
        let w = VRING_DESC_F_WRITE;
        let descs = [
            desc(BUF, 20, w | VRING_DESC_F_NEXT, 1),
            desc(BUF + 0x100, 0x100, w, 0),
        ];
        let rx = with_chain(&m, &descs, |c| RxBuffer::new(&m, c)).unwrap();
        assert_eq!(rx.payload_capacity(), 20 + 0x100 - HDR_SIZE);
        let mut h = sample();
        h.len = 3;
        let n = rx.write(&m, &h, b"abc").unwrap();
        assert_eq!(n, HDR_SIZE as u32 + 3);
        let mut raw = [0u8; HDR_SIZE];
        m.read_slice(&mut raw[..20], GuestAddress(BUF)).unwrap();
        m.read_slice(&mut raw[20..], GuestAddress(BUF + 0x100))
            .unwrap();
        assert_eq!(Header::from_bytes(&raw), h);
        let mut p = [0u8; 3];
        m.read_slice(&mut p, GuestAddress(BUF + 0x100 + 24))
            .unwrap();
        assert_eq!(&p, b"abc");
        let too_big = vec![0u8; rx.payload_capacity() + 1];
        assert!(rx.write(&m, &h, &too_big).is_err());
    }

    #[test]
    fn rx_errors() {
        let m = mem();
        let w = VRING_DESC_F_WRITE;
        let e = with_chain(&m, &[desc(BUF, 40, w, 0)], |c| RxBuffer::new(&m, c)).unwrap_err();
        assert_eq!(e, PacketError::ShortHeader(40));
        let e = with_chain(&m, &[desc(BUF, 64, 0, 0)], |c| RxBuffer::new(&m, c)).unwrap_err();
        assert_eq!(e, PacketError::ShortHeader(0));
        let e = with_chain(&m, &[desc(u64::MAX - 8, 64, w, 0)], |c| {
            RxBuffer::new(&m, c)
        })
        .unwrap_err();
        assert!(matches!(e, PacketError::OutsideMemory { .. }));
    }
}
