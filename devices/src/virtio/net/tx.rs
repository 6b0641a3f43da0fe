//! Guest → tap: the TX loop ([`Net::process_tx`]) and gathering one TX descriptor chain
//! (vnet header + Ethernet frame) from guest memory into a bounded buffer.
//!
//! A TX chain must consist of device-readable descriptors only, all inside guest memory, at
//! most [`MAX_DESCRIPTORS`] of them, and carry a vnet header plus an Ethernet header and at
//! most [`MAX_PACKET_LEN`] bytes in all. Anything else is a bad chain: it is returned to the
//! guest unsent and counted.

use vm_memory::{Bytes, GuestMemoryBackend};

use super::{
    count, ChainError, LocalResponder, Net, NetCounters, Tap, ETH_HLEN, MAX_DESCRIPTORS,
    MAX_PACKET_LEN, TX_QUEUE, VNET_HDR_LEN,
};
use crate::rate_limiter::{admit, is_blocked, RateLimiter};
use crate::virtio::serve::{Chain, ChainHandler, Disposition, QueueError};
use crate::virtio::GuestMemoryMmap;

/// Copies the chain's bytes into `buf` (cleared first). On success `buf` holds a vnet header
/// followed by a frame of at least an Ethernet header.
pub(crate) fn gather(
    mem: &GuestMemoryMmap,
    chain: Chain<'_>,
    buf: &mut Vec<u8>,
) -> Result<(), ChainError> {
    buf.clear();
    // The chain iterator stops after queue-size descriptors (or the indirect table's size),
    // so a looping chain ends.
    // Whether the last descriptor seen still pointed on: the iterator then stopped early
    // (a loop longer than the queue, a next index outside the table, a bad indirect table).
    let mut cut_short = false;
    for (i, d) in chain.enumerate() {
        if i >= MAX_DESCRIPTORS {
            return Err(ChainError::TooManyDescriptors);
        }
        cut_short = d.has_next();
        if d.is_write_only() {
            return Err(ChainError::WritableOnTx);
        }
        let len = d.len() as usize;
        let start = buf.len();
        if start + len > MAX_PACKET_LEN {
            return Err(ChainError::TooLong);
        }
        if !GuestMemoryBackend::check_range(mem, d.addr(), len) {
            return Err(ChainError::OutsideMemory {
                addr: d.addr().0,
                len: d.len(),
            });
        }
        buf.resize(start + len, 0);
        mem.read_slice(&mut buf[start..], d.addr())
            .map_err(ChainError::Memory)?;
    }
    if cut_short {
        return Err(ChainError::Malformed);
    }
    if buf.len() < VNET_HDR_LEN + ETH_HLEN {
        return Err(ChainError::TooShort(buf.len()));
    }
    Ok(())
}

impl Net {
    /// Sends every available TX chain to the tap until the queue is empty, the TX limiter
    /// blocks or [`MAX_CHAINS_PER_TURN`](crate::virtio::MAX_CHAINS_PER_TURN) chains were served (then, with more available, the
    /// TX queue eventfd is written so the event loop comes back), then interrupts the driver
    /// if it wants to know. The TX-queue and TX-limiter events do this; public for fuzzing
    /// and benchmarks. Does nothing before activation.
    pub fn process_tx(&mut self) {
        self.process_tx_with(|| {});
    }

    /// [`Self::process_tx`], calling `before_enable` after each round's last chain and before
    /// notifications are re-enabled (tests use it to play a driver racing the device).
    pub(super) fn process_tx_with(&mut self, before_enable: impl FnMut()) {
        let mut frames = Frames {
            id: &self.id,
            tap: &self.tap,
            buf: &mut self.tx_buf,
            limiter: self.tx_limiter.as_mut(),
            counters: &mut self.counters,
            local: self.local.as_deref_mut(),
        };
        let index = usize::from(TX_QUEUE);
        self.queues.serve_with(index, &mut frames, before_enable);
        // The local responder's answers go to the guest now.
        if self.local.as_ref().is_some_and(|l| l.has_frames()) {
            self.process_rx();
        }
    }
}

/// Serves the TX queue: gathers each chain and writes it to the tap.
struct Frames<'a> {
    id: &'a str,
    tap: &'a Tap,
    buf: &'a mut Vec<u8>,
    limiter: Option<&'a mut RateLimiter>,
    counters: &'a mut NetCounters,
    local: Option<&'a mut (dyn LocalResponder + 'static)>,
}

impl ChainHandler for Frames<'_> {
    fn can_take(&mut self) -> bool {
        !is_blocked(self.limiter.as_deref())
    }

    fn handle(&mut self, mem: &GuestMemoryMmap, chain: Chain<'_>) -> Disposition {
        let (c, id) = (&mut *self.counters, self.id);
        let head = chain.head_index();
        if let Err(e) = gather(mem, chain, self.buf) {
            count(&mut c.tx_errors, id, format_args!("TX chain {head}: {e}"));
            return Disposition::Used(0);
        }
        // Frames for the local responder (the MMDS) never reach the tap nor its limiter.
        if let Some(local) = self.local.as_deref_mut() {
            if local.take(&self.buf[VNET_HDR_LEN..]) {
                return Disposition::Used(0);
            }
        }
        let frame_bytes = (self.buf.len() - VNET_HDR_LEN) as u64;
        if !admit(self.limiter.as_deref_mut(), frame_bytes) {
            c.tx_throttled += 1;
            return Disposition::Later;
        }
        match self.tap.write(self.buf) {
            Ok(_) => {
                c.tx_packets += 1;
                c.tx_bytes += frame_bytes;
            }
            Err(e) => count(&mut c.tx_dropped, id, format_args!("tap write: {e}")),
        }
        Disposition::Used(0)
    }

    fn queue_error(&mut self, error: QueueError) {
        count(
            &mut self.counters.tx_errors,
            self.id,
            format_args!("TX {error}"),
        );
    }
}
