//! Guest → tap: the TX loop ([`Net::process_tx`]) and gathering one TX descriptor chain
//! (vnet header + Ethernet frame) from guest memory into a bounded buffer.
//!
//! A TX chain must consist of device-readable descriptors only, all inside guest memory, at
//! most [`MAX_DESCRIPTORS`] of them, and carry a vnet header plus an Ethernet header and at
//! most [`MAX_PACKET_LEN`] bytes in all. Anything else is a bad chain: it is returned to the
//! guest unsent and counted.

use virtio_queue::{DescriptorChain, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestMemoryBackend};

use super::{
    admit, count, notify, ChainError, Net, ETH_HLEN, MAX_DESCRIPTORS, MAX_PACKET_LEN, TX_QUEUE,
    VNET_HDR_LEN,
};
use crate::virtio::{yield_queue, GuestMemoryMmap, MAX_CHAINS_PER_TURN};

/// Copies the chain's bytes into `buf` (cleared first). On success `buf` holds a vnet header
/// followed by a frame of at least an Ethernet header.
pub(crate) fn gather(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
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
    /// blocks or [`MAX_CHAINS_PER_TURN`] chains were served (then, with more available, the
    /// TX queue eventfd is written so the event loop comes back), then interrupts the driver
    /// if it wants to know. The TX-queue and TX-limiter events do this; public for fuzzing
    /// and benchmarks. Does nothing before activation.
    pub fn process_tx(&mut self) {
        self.process_tx_with(|| {});
    }

    /// [`Self::process_tx`], calling `before_enable` after each round's last chain and before
    /// notifications are re-enabled (tests use it to play a driver racing the device).
    pub(super) fn process_tx_with(&mut self, mut before_enable: impl FnMut()) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let (mem, queue) = (&active.mem, &mut active.tx);
        let c = &mut self.counters;
        let id = self.id.as_str();
        let mut used_any = false;
        let mut budget = MAX_CHAINS_PER_TURN;
        let mut empty_rounds = 0u32;
        'rounds: loop {
            if let Err(e) = queue.disable_notification(mem) {
                count(&mut c.tx_errors, id, format_args!("TX queue error: {e}"));
                break;
            }
            let mut served = 0u32;
            while budget > 0 {
                if self.tx_limiter.as_ref().is_some_and(|rl| rl.is_blocked()) {
                    break 'rounds;
                }
                let chain = match queue.iter(mem) {
                    Ok(mut iter) => iter.next(),
                    Err(e) => {
                        count(&mut c.tx_errors, id, format_args!("TX queue error: {e}"));
                        break 'rounds;
                    }
                };
                let Some(chain) = chain else { break };
                let head = chain.head_index();
                match gather(mem, chain, &mut self.tx_buf) {
                    Ok(()) => {
                        let frame_bytes = (self.tx_buf.len() - VNET_HDR_LEN) as u64;
                        if !admit(self.tx_limiter.as_mut(), frame_bytes) {
                            c.tx_throttled += 1;
                            queue.go_to_previous_position();
                            break 'rounds;
                        }
                        match self.tap.write(&self.tx_buf) {
                            Ok(_) => {
                                c.tx_packets += 1;
                                c.tx_bytes += frame_bytes;
                            }
                            Err(e) => count(&mut c.tx_dropped, id, format_args!("tap write: {e}")),
                        }
                    }
                    Err(e) => count(&mut c.tx_errors, id, format_args!("TX chain {head}: {e}")),
                }
                if let Err(e) = queue.add_used(mem, head, 0) {
                    let what = format_args!("cannot return TX chain {head}: {e}");
                    count(&mut c.tx_errors, id, what);
                    break 'rounds;
                }
                served += 1;
                budget -= 1;
                used_any = true;
            }
            before_enable();
            match queue.enable_notification(mem) {
                // The budget ran out with chains left: let the event loop serve everything
                // else first.
                Ok(true) if budget == 0 => {
                    let evt = &self.queue_events[usize::from(TX_QUEUE)];
                    yield_queue(evt, "virtio-net");
                    break;
                }
                // More chains arrived meanwhile. A round may legitimately serve nothing: the
                // driver can make a chain available after the round found the ring empty and
                // before notifications came back on, and it does not notify then (they were
                // off), so that chain must be served now. The next round then serves it; two
                // empty rounds in a row mean the ring itself is bad, so stop rather than spin.
                Ok(true) => {
                    empty_rounds = if served > 0 { 0 } else { empty_rounds + 1 };
                    if empty_rounds >= 2 {
                        let what = format_args!("TX avail ring has chains that cannot be read");
                        count(&mut c.tx_errors, id, what);
                        break;
                    }
                }
                Ok(false) => break,
                Err(e) => {
                    count(&mut c.tx_errors, id, format_args!("TX queue error: {e}"));
                    break;
                }
            }
        }
        if used_any {
            notify(queue, mem, active.interrupt.as_ref(), TX_QUEUE);
        }
    }
}
