//! Tap → guest: the RX loop ([`Net::process_rx`]) and placing one received packet (vnet
//! header + frame) into the guest's RX buffers.
//!
//! Buffers are taken in two phases. First enough chains are popped to hold the packet (one
//! chain without `VIRTIO_NET_F_MRG_RXBUF`, as many as needed with it), each checked to be
//! device-writable only and inside guest memory; nothing is written yet. If the queue runs
//! dry, the chains are put back (`next_avail` rewound) and the packet waits. Then
//! `num_buffers` is set in the header and the packet is copied, filling every chain but the
//! last completely, as the spec requires. A bad chain ends the attempt: it and the chains
//! already popped for this packet go back to the guest with length 0 (the guest drops them),
//! and the packet stays pending for the next buffers.

use std::io;

use virtio_bindings::virtio_net::VIRTIO_NET_F_MRG_RXBUF;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use super::{count, ChainError, Net, MAX_DESCRIPTORS, NUM_BUFFERS_OFFSET, RX_QUEUE, VNET_HDR_LEN};
use crate::rate_limiter::{admit, is_blocked, refund};
use crate::virtio::serve::Chain;
use crate::virtio::{GuestMemoryMmap, MAX_CHAINS_PER_TURN};

/// How often the available ring is re-read for one packet after notifications were
/// re-enabled and new buffers reported.
const MAX_RECHECKS: u32 = 16;

/// What became of one packet.
#[derive(Debug)]
pub(crate) enum RxOutcome {
    /// Copied into the guest's buffers and returned in the used ring.
    Delivered,
    /// Not enough buffers: nothing was taken; wait for the guest to add some (notifications
    /// are enabled so that it kicks the queue).
    NoBuffers,
    /// Without mergeable buffers the packet does not fit in the next chain: nothing was
    /// taken, the packet must be dropped.
    TooLarge,
    /// A bad chain was returned with length 0 (with any chains popped before it); the packet
    /// was not delivered.
    BadChain {
        /// The bad chain's head.
        head: u16,
        /// What was wrong.
        error: ChainError,
    },
    /// Writing guest memory failed half-way (guest memory checked beforehand, so this should
    /// not happen); the chains were returned with what they hold.
    Truncated,
}

/// A run of guest memory checked to lie inside guest memory.
#[derive(Debug, Clone, Copy)]
struct Span {
    addr: GuestAddress,
    len: usize,
}

/// The device-writable spans of a chain and their total length.
fn writable_spans(
    mem: &GuestMemoryMmap,
    chain: Chain<'_>,
) -> Result<(Vec<Span>, usize), ChainError> {
    let mut spans = Vec::new();
    let mut total = 0usize;
    // Whether the last descriptor seen still pointed on: the iterator then stopped early
    // (a loop longer than the queue, a next index outside the table, a bad indirect table).
    let mut cut_short = false;
    for (i, d) in chain.enumerate() {
        if i >= MAX_DESCRIPTORS {
            return Err(ChainError::TooManyDescriptors);
        }
        cut_short = d.has_next();
        if !d.is_write_only() {
            return Err(ChainError::ReadableOnRx);
        }
        let len = d.len() as usize;
        if !GuestMemoryBackend::check_range(mem, d.addr(), len) {
            return Err(ChainError::OutsideMemory {
                addr: d.addr().0,
                len: d.len(),
            });
        }
        total += len;
        spans.push(Span {
            addr: d.addr(),
            len,
        });
    }
    if cut_short {
        return Err(ChainError::Malformed);
    }
    if total == 0 {
        return Err(ChainError::NoWritableBuffer);
    }
    Ok((spans, total))
}

/// Offers `packet` (a vnet header and a frame; at least [`VNET_HDR_LEN`] bytes) to the guest.
/// `Err` is a broken queue (bad avail index or used ring outside memory).
pub(crate) fn deliver(
    mem: &GuestMemoryMmap,
    queue: &mut Queue,
    packet: &mut [u8],
    mergeable: bool,
) -> Result<RxOutcome, virtio_queue::Error> {
    let start = queue.next_avail();
    let mut chains: Vec<(u16, Vec<Span>)> = Vec::new();
    let mut capacity = 0usize;
    // Bounds the re-checks after re-enabling notifications, in case the ring misbehaves.
    let mut rechecks = 0u32;
    while capacity < packet.len() {
        if !mergeable && !chains.is_empty() {
            queue.set_next_avail(start);
            return Ok(RxOutcome::TooLarge);
        }
        let next = match queue.iter(mem) {
            Ok(mut iter) => iter.next(),
            Err(e) => {
                queue.set_next_avail(start);
                return Err(e);
            }
        };
        let Some(chain) = next else {
            // Ask to be kicked when anything is added: with event-idx the avail event is set
            // to next_avail, which is now the end of what the guest has made available.
            let more = queue.enable_notification(mem);
            if matches!(more, Ok(true)) && rechecks < MAX_RECHECKS {
                rechecks += 1;
                continue;
            }
            queue.set_next_avail(start);
            return more.map(|_| RxOutcome::NoBuffers);
        };
        let head = chain.head_index();
        match writable_spans(mem, chain) {
            Ok((spans, len)) => {
                capacity = capacity.saturating_add(len);
                chains.push((head, spans));
            }
            Err(error) => {
                for &(h, _) in &chains {
                    queue.add_used(mem, h, 0)?;
                }
                queue.add_used(mem, head, 0)?;
                return Ok(RxOutcome::BadChain { head, error });
            }
        }
    }
    // At most queue-size chains were popped.
    let num_buffers = u16::try_from(chains.len()).unwrap_or(u16::MAX);
    if packet.len() >= VNET_HDR_LEN {
        packet[NUM_BUFFERS_OFFSET..NUM_BUFFERS_OFFSET + 2]
            .copy_from_slice(&num_buffers.to_le_bytes());
    }
    let mut offset = 0usize;
    let mut failed = false;
    for (head, spans) in chains {
        let mut written = 0usize;
        for span in spans {
            let n = span.len.min(packet.len() - offset);
            if n == 0 || failed {
                break;
            }
            if mem
                .write_slice(&packet[offset..offset + n], span.addr)
                .is_err()
            {
                failed = true;
                break;
            }
            offset += n;
            written += n;
        }
        // A chain holds less than 2^32 bytes (the chain iterator enforces it).
        queue.add_used(mem, head, u32::try_from(written).unwrap_or(u32::MAX))?;
    }
    Ok(if failed {
        RxOutcome::Truncated
    } else {
        RxOutcome::Delivered
    })
}

impl Net {
    /// Moves frames from the tap into the guest's RX buffers until the tap is empty, the guest
    /// has no buffers, the RX limiter blocks or [`MAX_CHAINS_PER_TURN`] passes were made (a
    /// pass reads a frame or returns chains, and costs one per chain returned; then the RX
    /// queue eventfd is written so the event loop comes back), then interrupts the driver if
    /// it wants to know. The tap, RX-queue and RX-limiter events do this; public for fuzzing
    /// and benchmarks. Does nothing before activation.
    pub fn process_rx(&mut self) {
        let mergeable = self.queues.acked(1 << VIRTIO_NET_F_MRG_RXBUF);
        let index = usize::from(RX_QUEUE);
        let Some((mem, queue)) = self.queues.ring(index) else {
            return;
        };
        let c = &mut self.counters;
        let id = self.id.as_str();
        // Kicks are wanted only while waiting for buffers; `deliver` re-enables them then.
        if let Err(e) = queue.disable_notification(mem) {
            count(&mut c.rx_errors, id, format_args!("RX queue error: {e}"));
            return;
        }
        let mut used_any = false;
        let mut spent = 0u32;
        let mut more = false;
        loop {
            if spent >= MAX_CHAINS_PER_TURN {
                more = self.rx_len != 0
                    || self.tap_readable
                    || self.local.as_ref().is_some_and(|l| l.has_frames());
                break;
            }
            spent += 1;
            if is_blocked(self.rx_limiter.as_ref()) {
                break;
            }
            if self.rx_len == 0 {
                // The local responder's frames (the MMDS's answers) go first.
                if let Some(frame) = self.local.as_mut().and_then(|l| l.next_frame()) {
                    let len = (VNET_HDR_LEN + frame.len()).min(self.rx_buf.len());
                    self.rx_buf[..VNET_HDR_LEN].fill(0);
                    self.rx_buf[VNET_HDR_LEN..len].copy_from_slice(&frame[..len - VNET_HDR_LEN]);
                    self.rx_len = len;
                } else if !self.tap_readable {
                    break;
                }
            }
            if self.rx_len == 0 {
                match self.tap.read(&mut self.rx_buf) {
                    Ok(0) => {
                        // End of file: the tap is gone; wait for the next event, do not spin.
                        self.tap_readable = false;
                        count(&mut c.rx_errors, id, format_args!("tap read returned 0"));
                        break;
                    }
                    Ok(n) if n < VNET_HDR_LEN => {
                        count(
                            &mut c.rx_dropped,
                            id,
                            format_args!("{n}-byte read from tap"),
                        );
                        continue;
                    }
                    Ok(n) => self.rx_len = n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        self.tap_readable = false;
                        break;
                    }
                    Err(e) => {
                        // Wait for the next tap event rather than spin on the error.
                        self.tap_readable = false;
                        count(&mut c.rx_errors, id, format_args!("tap read: {e}"));
                        break;
                    }
                }
            }
            let len = self.rx_len;
            let frame_bytes = (len - VNET_HDR_LEN) as u64;
            if !admit(self.rx_limiter.as_mut(), frame_bytes) {
                c.rx_throttled += 1;
                break;
            }
            let used_before = queue.next_used();
            let outcome = deliver(mem, queue, &mut self.rx_buf[..len], mergeable);
            // Each chain returned beyond the first costs one more.
            let returned = queue.next_used().wrapping_sub(used_before);
            spent = spent.saturating_add(u32::from(returned.saturating_sub(1)));
            match outcome {
                Ok(RxOutcome::Delivered) => {
                    c.rx_packets += 1;
                    c.rx_bytes += frame_bytes;
                    self.rx_len = 0;
                    used_any = true;
                }
                Ok(RxOutcome::NoBuffers) => {
                    refund(self.rx_limiter.as_mut(), frame_bytes);
                    break;
                }
                Ok(RxOutcome::TooLarge) => {
                    let what = format_args!("{len}-byte packet does not fit an RX buffer");
                    count(&mut c.rx_dropped, id, what);
                    self.rx_len = 0;
                }
                Ok(RxOutcome::BadChain { head, error }) => {
                    // The packet waits for the next chain.
                    refund(self.rx_limiter.as_mut(), frame_bytes);
                    count(
                        &mut c.rx_errors,
                        id,
                        format_args!("RX chain {head}: {error}"),
                    );
                    used_any = true;
                }
                Ok(RxOutcome::Truncated) => {
                    c.rx_dropped += 1;
                    count(&mut c.rx_errors, id, format_args!("cannot write RX buffer"));
                    self.rx_len = 0;
                    used_any = true;
                }
                Err(e) => {
                    count(&mut c.rx_errors, id, format_args!("RX queue error: {e}"));
                    break;
                }
            }
        }
        if more {
            self.queues.yield_queue(index);
        }
        if used_any {
            if let Err(e) = self.queues.notify(index) {
                count(&mut c.rx_errors, id, format_args!("RX {e}"));
            }
        }
    }
}
