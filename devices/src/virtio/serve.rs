//! The one routine that serves a virtio queue on the event loop: [`serve_queue`].
//!
//! A turn goes in rounds. Each round turns the driver's notifications off, pops the available
//! chains one by one and hands each to the device ([`ChainHandler::handle`]), which returns it
//! to the driver (`add_used`), keeps it, or puts it back. Then notifications are turned on
//! again, and the ring is looked at once more: the driver may have made a chain available
//! after the round found the ring empty and before notifications came back on, and it did not
//! notify then (they were off), so that chain must be served in this turn. Another round
//! serves it. Without `VIRTIO_RING_F_EVENT_IDX` the re-check cannot tell "a chain arrived"
//! from "the avail index announces chains the ring cannot give": two rounds in a row that
//! take nothing mean the ring itself is bad, and the turn ends rather than spin.
//!
//! A turn takes at most [`MAX_CHAINS_PER_TURN`] chains; with more available it writes the
//! queue's own eventfd so that the event loop comes back to it after serving everything
//! else that is ready (see the module documentation of `virtio`).
//!
//! Firecracker folds the same re-check into `pop_or_enable_notification`; here the whole turn
//! is one function so that a fix to it touches one file.

use std::fmt;

use log::error;
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vmm_sys_util::eventfd::EventFd;

use super::{GuestMemoryMmap, MAX_CHAINS_PER_TURN};

/// A descriptor chain popped from a queue.
pub(crate) type Chain<'m> = DescriptorChain<&'m GuestMemoryMmap>;

/// What a device did with one chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Disposition {
    /// Return the chain to the driver now; the device wrote this many bytes into it.
    Used(u32),
    /// The device keeps the chain and returns it later itself.
    Kept,
    /// Not now (a rate limiter said no, nothing to put in it): the chain goes back to the
    /// ring and the turn ends with notifications left off; the device restarts the queue.
    Later,
}

/// A queue problem that ended a turn (or, for the interrupt, was worked around).
#[derive(Debug, thiserror::Error)]
pub(crate) enum QueueError {
    /// The rings could not be read or written (a bad index, a ring outside guest memory).
    #[error("queue error: {0}")]
    Ring(virtio_queue::Error),
    /// A chain could not be returned.
    #[error("cannot return chain {head}: {source}")]
    Return {
        head: u16,
        source: virtio_queue::Error,
    },
    /// The avail index announces chains the ring does not give (two empty rounds in a row).
    #[error("avail ring has chains that cannot be read")]
    Unreadable,
}

/// What a device does with the chains of one queue.
pub(crate) trait ChainHandler {
    /// Whether the device can take a chain now. `false` ends the turn with notifications
    /// left off: the device restarts the queue itself (its rate limiter's timer fires, it has
    /// something to send again).
    fn can_take(&mut self) -> bool {
        true
    }

    /// Serves one chain.
    fn handle(&mut self, mem: &GuestMemoryMmap, chain: Chain<'_>) -> Disposition;

    /// Counts and logs a queue problem.
    fn queue_error(&mut self, error: QueueError);
}

/// What one turn did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Turn {
    /// Chains popped and not put back.
    pub taken: u32,
    /// Chains returned to the driver.
    pub returned: u32,
    /// The budget ran out with chains left and the queue's eventfd was written.
    pub yielded: bool,
}

/// Serves `queue` for one turn (see the module documentation). `evt` is the queue's own
/// eventfd, written when the budget runs out with chains left; `device` names the device in
/// logs. `before_enable` runs after each round's last chain and before notifications are
/// turned on again (tests use it to play a driver racing the device). Does not interrupt the
/// driver: the caller does when chains were returned.
pub(crate) fn serve_queue(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    evt: &EventFd,
    device: &str,
    handler: &mut impl ChainHandler,
    mut before_enable: impl FnMut(),
) -> Turn {
    let mut turn = Turn::default();
    let mut empty_rounds = 0u32;
    'rounds: loop {
        if let Err(e) = queue.disable_notification(mem) {
            handler.queue_error(QueueError::Ring(e));
            break;
        }
        let taken_before = turn.taken;
        while turn.taken < MAX_CHAINS_PER_TURN {
            if !handler.can_take() {
                break 'rounds;
            }
            let chain = match queue.iter(mem) {
                Ok(mut iter) => iter.next(),
                Err(e) => {
                    handler.queue_error(QueueError::Ring(e));
                    break 'rounds;
                }
            };
            let Some(chain) = chain else { break };
            let head = chain.head_index();
            match handler.handle(mem, chain) {
                Disposition::Used(len) => {
                    if let Err(source) = queue.add_used(mem, head, len) {
                        handler.queue_error(QueueError::Return { head, source });
                        break 'rounds;
                    }
                    turn.returned += 1;
                }
                Disposition::Kept => {}
                Disposition::Later => {
                    queue.go_to_previous_position();
                    break 'rounds;
                }
            }
            turn.taken += 1;
        }
        before_enable();
        match queue.enable_notification(mem) {
            // The budget ran out with chains left: let the event loop serve the rest first.
            Ok(true) if turn.taken >= MAX_CHAINS_PER_TURN => {
                yield_queue(evt, device);
                turn.yielded = true;
                break;
            }
            // More chains arrived meanwhile, or the ring is bad: another round tells.
            Ok(true) => {
                empty_rounds = if turn.taken > taken_before {
                    0
                } else {
                    empty_rounds + 1
                };
                if empty_rounds >= 2 {
                    handler.queue_error(QueueError::Unreadable);
                    break;
                }
            }
            Ok(false) => break,
            Err(e) => {
                handler.queue_error(QueueError::Ring(e));
                break;
            }
        }
    }
    turn
}

/// Ends a queue's turn early, its budget spent with work left: writes the queue's own eventfd
/// `evt` so that the event loop, which watches it level-triggered, comes back to the queue
/// after serving the other ready sources.
pub(crate) fn yield_queue(evt: &EventFd, device: &str) {
    if let Err(e) = evt.write(1) {
        error!("{device}: cannot re-kick a queue: {e}");
    }
}

/// Counts a problem in `counter` and logs it, rate-limited (the 1st, 2nd, 4th, 8th, ... one).
pub(crate) fn count_error(counter: &mut u64, device: &str, what: fmt::Arguments<'_>) {
    *counter += 1;
    if counter.is_power_of_two() {
        log::warn!("{device}: {what} ({counter} so far)");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::test_utils::{aliased_rings_queue, desc, mem, notifications_on, taken};
    use crate::virtio::test_utils::{unreadable_avail_queue, LateChain, MEM_SIZE, W};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress};
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    const BUF: u64 = 0x8_0000;

    /// Returns every chain with its head as the used length, or does what `next` says.
    #[derive(Default)]
    struct Recorder {
        heads: Vec<u16>,
        errors: Vec<String>,
        /// What to answer, front first; `Used(head)` once empty.
        script: Vec<Disposition>,
        /// Chains to take before `can_take` says no.
        limit: Option<usize>,
    }

    impl ChainHandler for Recorder {
        fn can_take(&mut self) -> bool {
            self.limit.is_none_or(|l| self.heads.len() < l)
        }

        fn handle(&mut self, _mem: &GuestMemoryMmap, chain: Chain<'_>) -> Disposition {
            self.heads.push(chain.head_index());
            if self.script.is_empty() {
                Disposition::Used(u32::from(chain.head_index()))
            } else {
                self.script.remove(0)
            }
        }

        fn queue_error(&mut self, error: QueueError) {
            self.errors.push(error.to_string());
        }
    }

    /// A 16-entry queue with `n` one-descriptor chains available, and its eventfd.
    fn with_chains(
        m: &GuestMemoryMmap,
        n: u64,
    ) -> (MockSplitQueue<'_, GuestMemoryMmap>, Queue, EventFd) {
        let vq = MockSplitQueue::new(m, 16);
        let chains: Vec<_> = (0..n).map(|i| desc(BUF + i * 64, 64, W, 0)).collect();
        vq.add_desc_chains(&chains, 0).unwrap();
        let queue = vq.create_queue().unwrap();
        (vq, queue, EventFd::new(EFD_NONBLOCK).unwrap())
    }

    fn serve(
        queue: &mut Queue,
        m: &GuestMemoryMmap,
        evt: &EventFd,
        rec: &mut Recorder,
        before_enable: impl FnMut(),
    ) -> Turn {
        serve_queue(queue, m, evt, "test", rec, before_enable)
    }

    #[test]
    fn serves_every_available_chain_and_leaves_notifications_on() {
        let m = mem();
        let (vq, mut queue, evt) = with_chains(&m, 3);
        let mut rec = Recorder::default();
        let turn = serve(&mut queue, &m, &evt, &mut rec, || {});
        assert_eq!(rec.heads, [0, 1, 2]);
        let want = Turn {
            taken: 3,
            returned: 3,
            yielded: false,
        };
        assert_eq!(turn, want);
        assert_eq!(vq.used().idx().load(), 3);
        assert_eq!(vq.used().ring().ref_at(2).unwrap().load().len(), 2);
        assert!(notifications_on(&m, vq.used_addr().0));
        assert!(rec.errors.is_empty());
        assert!(evt.read().is_err(), "no self-kick");
    }

    /// The race rule, with and without event-idx: a chain published after a round found the
    /// ring empty, while notifications were still off, is served in the same turn.
    #[test]
    fn chain_published_while_notifications_are_off_is_served() {
        for event_idx in [false, true] {
            let m = mem();
            let (vq, mut queue, evt) = with_chains(&m, 1);
            let (avail, used) = (vq.avail_addr().0, vq.used_addr().0);
            m.write_obj(0u16, GuestAddress(avail + 2)).unwrap();
            queue.set_event_idx(event_idx);
            let mut rec = Recorder::default();
            let mut late = LateChain::new(&m, avail, used);
            late.check_flag = !event_idx;
            let turn = serve(&mut queue, &m, &evt, &mut rec, || late.publish());
            assert!(late.published, "event_idx {event_idx}");
            assert_eq!((turn.taken, turn.returned), (1, 1), "event_idx {event_idx}");
            assert_eq!(vq.used().idx().load(), 1);
            assert!(rec.errors.is_empty(), "{:?}", rec.errors);
            if !event_idx {
                assert!(notifications_on(&m, used));
            } else {
                // avail_event (after the used ring) asks for a kick at the next chain.
                let event: u16 = m.read_obj(GuestAddress(used + 4 + 8 * 16)).unwrap();
                assert_eq!(event, 1);
            }
        }
    }

    /// Without the re-check a round that finds nothing would end the turn: the published
    /// chain would wait for a kick that never comes.
    #[test]
    fn a_round_that_finds_nothing_is_followed_by_one_more() {
        let m = mem();
        let (_vq, mut queue, evt) = with_chains(&m, 0);
        let mut rounds = 0;
        let turn = serve(&mut queue, &m, &evt, &mut Recorder::default(), || {
            rounds += 1
        });
        // An empty ring: one round, notifications on, nothing more to look at.
        assert_eq!((rounds, turn), (1, Turn::default()));
    }

    /// Two empty rounds in a row (the avail index announces a chain the ring cannot give)
    /// end the turn with one error instead of spinning.
    #[test]
    fn two_empty_rounds_end_the_turn() {
        let m = mem();
        let (vq, _, evt) = with_chains(&m, 0);
        let mut queue = unreadable_avail_queue(&m, &vq);
        let mut rec = Recorder::default();
        let mut rounds = 0;
        let turn = serve(&mut queue, &m, &evt, &mut rec, || rounds += 1);
        assert_eq!((rounds, turn), (2, Turn::default()));
        assert_eq!(rec.errors, ["avail ring has chains that cannot be read"]);
        assert!(evt.read().is_err());
    }

    /// The budget: a ring that never runs dry (the used ring laid over the avail ring) gives
    /// exactly `MAX_CHAINS_PER_TURN` chains, then the queue's eventfd is written; the next
    /// turn takes the next budget's worth.
    #[test]
    fn the_budget_ends_the_turn_and_rekicks_the_queue() {
        let m = mem();
        let vq = MockSplitQueue::new(&m, 256);
        let mut queue = aliased_rings_queue(&m, &vq, 100);
        let evt = EventFd::new(EFD_NONBLOCK).unwrap();
        for round in 1..=2u32 {
            let mut rec = Recorder::default();
            let turn = serve(&mut queue, &m, &evt, &mut rec, || {});
            assert_eq!(turn.taken, MAX_CHAINS_PER_TURN);
            assert_eq!(turn.returned, MAX_CHAINS_PER_TURN);
            assert!(turn.yielded);
            assert_eq!(
                u32::from(taken(&queue.state())),
                round * MAX_CHAINS_PER_TURN
            );
            assert_eq!(evt.read().unwrap(), 1, "round {round}");
            assert!(rec.errors.is_empty());
        }
    }

    /// A chain the device cannot take now goes back to the ring, the turn ends and
    /// notifications stay off (the device restarts the queue itself).
    #[test]
    fn later_puts_the_chain_back_and_leaves_notifications_off() {
        let m = mem();
        let (vq, mut queue, evt) = with_chains(&m, 3);
        let mut rec = Recorder {
            script: vec![Disposition::Kept, Disposition::Later],
            ..Default::default()
        };
        let turn = serve(&mut queue, &m, &evt, &mut rec, || panic!("no round ends"));
        assert_eq!((turn.taken, turn.returned), (1, 0));
        assert_eq!(
            queue.next_avail(),
            1,
            "the second chain is back in the ring"
        );
        assert!(!notifications_on(&m, vq.used_addr().0));
        // The next turn serves it and the rest.
        let mut rec = Recorder::default();
        let turn = serve(&mut queue, &m, &evt, &mut rec, || {});
        assert_eq!((rec.heads.as_slice(), turn.returned), (&[1, 2][..], 2));
        assert!(notifications_on(&m, vq.used_addr().0));
    }

    /// `can_take` saying no ends the turn before the next chain is popped.
    #[test]
    fn can_take_ends_the_turn() {
        let m = mem();
        let (vq, mut queue, evt) = with_chains(&m, 3);
        let mut rec = Recorder {
            limit: Some(2),
            ..Default::default()
        };
        let turn = serve(&mut queue, &m, &evt, &mut rec, || {});
        assert_eq!((turn.taken, queue.next_avail()), (2, 2));
        assert!(!notifications_on(&m, vq.used_addr().0));
    }

    #[test]
    fn a_used_ring_outside_memory_is_an_error_that_ends_the_turn() {
        let m = mem();
        let (_vq, mut queue, evt) = with_chains(&m, 1);
        // The used ring's flags fit, its first element does not.
        queue.set_used_ring_address(Some(MEM_SIZE as u32 - 4), Some(0));
        let mut rec = Recorder::default();
        let turn = serve(&mut queue, &m, &evt, &mut rec, || {});
        assert_eq!(turn.returned, 0);
        assert_eq!(rec.errors.len(), 1);
        assert!(
            rec.errors[0].starts_with("cannot return chain 0"),
            "{rec:?}"
        );
    }

    impl fmt::Debug for Recorder {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "heads {:?}, errors {:?}", self.heads, self.errors)
        }
    }
}
