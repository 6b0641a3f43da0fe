//! Frames in both directions on mock queues, malformed chains, flow control and rate
//! limiting.

use std::time::Duration;

use event_manager::{EventManager, SubscriberOps};

use super::*;
use crate::rate_limiter::tests::ManualClock;
use crate::rate_limiter::{BucketUpdate, TokenBucketConfig};
use crate::virtio::test_utils::{aliased_rings_queue, taken};
use crate::virtio::MAX_CHAINS_PER_TURN;

const FEATURES_MERGE: u64 = FEATURES_NO_MERGE | (1 << VIRTIO_NET_F_MRG_RXBUF);

#[test]
fn tx_sends_one_frame_per_chain() {
    let mut rig = Rig::new();
    rig.activate(FEATURES_NO_MERGE);
    let p = packet(60, 1);
    // Header and frame in separate descriptors, then all in one.
    rig.put(BUF, &p[..VNET_HDR_LEN]);
    rig.put(BUF + 0x100, &p[VNET_HDR_LEN..]);
    rig.add_chain(TX_QUEUE, &[(BUF, 12, R), (BUF + 0x100, 60, R)]);
    let q = packet(1500, 2);
    rig.put(BUF + 0x1000, &q);
    rig.add_chain(TX_QUEUE, &[(BUF + 0x1000, q.len() as u32, R)]);
    rig.net.process_tx();
    assert_eq!(rig.recv().unwrap(), p);
    assert_eq!(rig.recv().unwrap(), q);
    assert!(rig.recv().is_none());
    assert_eq!(rig.used_idx(TX_QUEUE), 2);
    assert_eq!(rig.used(TX_QUEUE, 0), (0, 0));
    assert_eq!(rig.used(TX_QUEUE, 1), (2, 0));
    let c = rig.net.counters();
    assert_eq!((c.tx_packets, c.tx_bytes, c.tx_errors), (2, 1560, 0));
    assert_eq!(rig.int.take(), vec![InterruptKind::Queue(TX_QUEUE)]);
}

#[test]
fn bad_tx_chains_are_returned_and_counted() {
    let mut rig = Rig::new();
    rig.activate(FEATURES_NO_MERGE);
    let end = MEM_SIZE as u64;
    // A device-writable descriptor.
    rig.add_chain(TX_QUEUE, &[(BUF, 12, R), (BUF + 0x100, 60, W)]);
    // Outside guest memory, and crossing its end.
    rig.add_chain(TX_QUEUE, &[(BUF, 12, R), (end + 0x1000, 60, R)]);
    rig.add_chain(TX_QUEUE, &[(end - 30, 60, R)]);
    rig.add_chain(TX_QUEUE, &[(u64::MAX - 8, 60, R)]);
    // Longer than a packet can be.
    rig.add_chain(
        TX_QUEUE,
        &[(BUF, 12, R), (BUF, MAX_FRAME_LEN as u32 + 1, R)],
    );
    rig.add_chain(TX_QUEUE, &[(BUF, u32::MAX, R)]);
    // Shorter than the headers.
    rig.add_chain(TX_QUEUE, &[(BUF, 20, R)]);
    // A good one still goes through.
    let p = packet(64, 3);
    rig.put(BUF + 0x2000, &p);
    rig.add_chain(TX_QUEUE, &[(BUF + 0x2000, p.len() as u32, R)]);
    rig.net.process_tx();
    assert_eq!(rig.recv().unwrap(), p);
    assert!(rig.recv().is_none());
    assert_eq!(rig.used_idx(TX_QUEUE), 8);
    let c = rig.net.counters();
    assert_eq!((c.tx_packets, c.tx_errors, c.tx_dropped), (1, 7, 0));
}

#[test]
fn looping_chains_are_bad_in_both_directions() {
    let mut rig = Rig::new();
    rig.activate(FEATURES_MERGE);
    rig.put(BUF, &packet(60, 30));
    let head = rig.add_chain(TX_QUEUE, &[(BUF, 72, R)]);
    rig.loop_back(TX_QUEUE, head);
    // The next index is outside the table.
    let head2 = rig.add_chain(TX_QUEUE, &[(BUF, 72, R)]);
    rig.loop_back(TX_QUEUE, head2);
    let at = rig.tx.desc + 16 * u64::from(head2) + 14;
    rig.mem.write_obj(QUEUE_SIZE + 3, GuestAddress(at)).unwrap();
    rig.net.process_tx();
    assert!(rig.recv().is_none());
    assert_eq!(rig.used_idx(TX_QUEUE), 2);
    assert_eq!(rig.net.counters().tx_errors, 2);

    let head = rig.add_chain(RX_QUEUE, &[(BUF + 0x1000, 16, W)]);
    rig.loop_back(RX_QUEUE, head);
    rig.add_chain(RX_QUEUE, &[(BUF + 0x2000, 4096, W)]);
    rig.send(&packet(60, 31));
    rig.net.process_rx();
    assert_eq!(rig.used(RX_QUEUE, 0), (u32::from(head), 0));
    assert_eq!(rig.used(RX_QUEUE, 1), (1, 72));
    assert_eq!(rig.net.counters().rx_errors, 1);
}

#[test]
fn largest_tx_packet_passes() {
    let mut rig = Rig::new();
    rig.activate(FEATURES_NO_MERGE);
    let p = packet(MAX_FRAME_LEN, 4);
    rig.put(BUF, &p);
    rig.add_chain(TX_QUEUE, &[(BUF, p.len() as u32, R)]);
    rig.net.process_tx();
    assert_eq!(rig.recv().unwrap(), p);
    assert_eq!(rig.net.counters().tx_bytes, MAX_FRAME_LEN as u64);
}

#[test]
fn tap_write_errors_count_as_dropped() {
    let mut rig = Rig::new();
    rig.activate(FEATURES_NO_MERGE);
    // Close the host end: writes fail with EPIPE (SIGPIPE is ignored by the Rust runtime).
    let (other, _) = socket_pair();
    rig.peer = other;
    rig.put(BUF, &packet(60, 5));
    rig.add_chain(TX_QUEUE, &[(BUF, 72, R)]);
    rig.net.process_tx();
    assert_eq!(rig.used_idx(TX_QUEUE), 1);
    let c = rig.net.counters();
    assert_eq!((c.tx_packets, c.tx_dropped, c.tx_errors), (0, 1, 0));
}

#[test]
fn rx_fills_one_buffer_and_sets_num_buffers() {
    let mut rig = Rig::new();
    rig.activate(FEATURES_NO_MERGE);
    rig.add_chain(RX_QUEUE, &[(BUF, 1526, W)]);
    let mut p = packet(100, 6);
    p[0] = 2; // VIRTIO_NET_HDR_F_DATA_VALID: passed through.
    rig.send(&p);
    rig.net.process_rx();
    assert_eq!(rig.used_idx(RX_QUEUE), 1);
    assert_eq!(rig.used(RX_QUEUE, 0), (0, 112));
    let mut expected = p.clone();
    expected[NUM_BUFFERS_OFFSET] = 1;
    assert_eq!(rig.guest(BUF, 112), expected);
    let c = rig.net.counters();
    assert_eq!((c.rx_packets, c.rx_bytes, c.rx_errors), (1, 100, 0));
    assert_eq!(rig.int.take(), vec![InterruptKind::Queue(RX_QUEUE)]);
}

#[test]
fn rx_spreads_over_mergeable_buffers() {
    let mut rig = Rig::new();
    rig.activate(FEATURES_MERGE);
    for i in 0..4 {
        rig.add_chain(RX_QUEUE, &[(BUF + i * 0x1000, 1024, W)]);
    }
    let p = packet(3000 - VNET_HDR_LEN, 7);
    rig.send(&p);
    rig.net.process_rx();
    assert_eq!(rig.used_idx(RX_QUEUE), 3);
    assert_eq!(rig.used(RX_QUEUE, 0), (0, 1024));
    assert_eq!(rig.used(RX_QUEUE, 1), (1, 1024));
    assert_eq!(rig.used(RX_QUEUE, 2), (2, 3000 - 2048));
    let mut got = rig.guest(BUF, 1024);
    got.extend(rig.guest(BUF + 0x1000, 1024));
    got.extend(rig.guest(BUF + 0x2000, 3000 - 2048));
    let mut expected = p;
    expected[NUM_BUFFERS_OFFSET] = 3;
    assert_eq!(got, expected);
    // The fourth buffer takes the next packet.
    rig.send(&packet(20, 8));
    rig.tap_event();
    assert_eq!(rig.used(RX_QUEUE, 3), (3, 32));
    assert_eq!(rig.net.counters().rx_packets, 2);
}

#[test]
fn rx_without_buffers_waits_for_a_kick() {
    let mut rig = Rig::new();
    rig.activate(FEATURES_MERGE | (1 << VIRTIO_RING_F_EVENT_IDX));
    // One buffer is not enough for a 3000-byte packet: it must stay available.
    rig.add_chain(RX_QUEUE, &[(BUF, 1024, W)]);
    let p = packet(3000 - VNET_HDR_LEN, 9);
    rig.send(&p);
    rig.send(&packet(50, 10));
    rig.net.process_rx();
    assert_eq!(rig.used_idx(RX_QUEUE), 0);
    // The device asked for a kick as soon as anything new is added.
    assert_eq!(rig.avail_event(RX_QUEUE), 1);
    assert!(rig.int.take().is_empty());
    // The tap is not read while the packet waits.
    assert!(rig.net.tap_readable);
    rig.add_chain(RX_QUEUE, &[(BUF + 0x1000, 1024, W)]);
    rig.add_chain(RX_QUEUE, &[(BUF + 0x2000, 4096, W)]);
    rig.net.process_rx();
    assert_eq!(rig.used_idx(RX_QUEUE), 3);
    let c = rig.net.counters();
    assert_eq!((c.rx_packets, c.rx_dropped), (1, 0));
    // The second packet waits for the next buffer.
    rig.add_chain(RX_QUEUE, &[(BUF + 0x3000, 4096, W)]);
    rig.net.process_rx();
    assert_eq!(rig.used(RX_QUEUE, 3), (3, 62));
    assert!(!rig.net.tap_readable);
}

#[test]
fn rx_too_large_without_mergeable_buffers_is_dropped() {
    let mut rig = Rig::new();
    rig.activate(FEATURES_NO_MERGE);
    let head = rig.add_chain(RX_QUEUE, &[(BUF, 1526, W)]);
    rig.send(&packet(4000, 11));
    rig.send(&packet(60, 12));
    rig.net.process_rx();
    // The big one is dropped and counted; the buffer takes the small one.
    assert_eq!(rig.used_idx(RX_QUEUE), 1);
    assert_eq!(rig.used(RX_QUEUE, 0), (u32::from(head), 72));
    let c = rig.net.counters();
    assert_eq!((c.rx_packets, c.rx_dropped), (1, 1));
}

#[test]
fn bad_rx_chains_are_returned_empty_and_the_packet_waits() {
    let mut rig = Rig::new();
    rig.activate(FEATURES_MERGE);
    let end = MEM_SIZE as u64;
    rig.add_chain(RX_QUEUE, &[(BUF, 1526, R)]);
    rig.add_chain(RX_QUEUE, &[(BUF, 12, W), (end - 16, 1500, W)]);
    rig.add_chain(RX_QUEUE, &[(BUF, 0, W)]);
    rig.add_chain(RX_QUEUE, &[(BUF + 0x1000, 1526, W)]);
    let p = packet(80, 13);
    rig.send(&p);
    rig.net.process_rx();
    assert_eq!(rig.used_idx(RX_QUEUE), 4);
    for i in 0..3 {
        assert_eq!(rig.used(RX_QUEUE, i).1, 0);
    }
    assert_eq!(rig.used(RX_QUEUE, 3), (4, 92));
    assert_eq!(rig.guest(BUF + 0x1000 + 12, 80), p[12..]);
    let c = rig.net.counters();
    assert_eq!((c.rx_packets, c.rx_errors, c.rx_dropped), (1, 3, 0));
}

#[test]
fn a_bad_chain_mid_packet_returns_the_chains_taken() {
    let mut rig = Rig::new();
    rig.activate(FEATURES_MERGE);
    rig.add_chain(RX_QUEUE, &[(BUF, 1024, W)]);
    rig.add_chain(RX_QUEUE, &[(BUF + 0x1000, 1024, R)]);
    rig.add_chain(RX_QUEUE, &[(BUF + 0x2000, 4096, W)]);
    rig.send(&packet(2000, 14));
    rig.net.process_rx();
    assert_eq!(rig.used_idx(RX_QUEUE), 3);
    assert_eq!(rig.used(RX_QUEUE, 0), (0, 0));
    assert_eq!(rig.used(RX_QUEUE, 1), (1, 0));
    assert_eq!(rig.used(RX_QUEUE, 2), (2, 2012));
    assert_eq!(rig.net.counters().rx_errors, 1);
}

#[test]
fn reset_drops_the_pending_packet_and_stops_serving() {
    let mut rig = Rig::new();
    rig.activate(FEATURES_NO_MERGE);
    rig.send(&packet(60, 15));
    rig.net.process_rx();
    assert_eq!(rig.net.rx_len, 72);
    rig.net.reset();
    assert!(!rig.net.is_activated());
    assert_eq!(rig.net.acked_features(), 0);
    assert_eq!(rig.net.counters().rx_dropped, 1);
    rig.add_chain(RX_QUEUE, &[(BUF, 1526, W)]);
    rig.net.process_rx();
    rig.net.process_tx();
    assert_eq!(rig.used_idx(RX_QUEUE), 0);
}

fn limiter(clock: &ManualClock) -> RateLimiter {
    let cfg = RateLimiterConfig {
        bandwidth: None,
        ops: Some(TokenBucketConfig {
            size: 1,
            one_time_burst: 0,
            refill_time_ms: 1,
        }),
    };
    RateLimiter::with_clock(&cfg, Box::new(clock.clone())).unwrap()
}

#[test]
fn rate_limited_directions_stop_and_resume_on_their_timers() {
    let clock = ManualClock::default();
    let mut rig = Rig::new();
    rig.net
        .set_rate_limiters(Some(limiter(&clock)), Some(limiter(&clock)));
    rig.activate(FEATURES_NO_MERGE);
    // TX: one frame per millisecond.
    let p = packet(60, 16);
    rig.put(BUF, &p);
    rig.add_chain(TX_QUEUE, &[(BUF, 72, R)]);
    rig.add_chain(TX_QUEUE, &[(BUF, 72, R)]);
    // RX: likewise.
    rig.add_chain(RX_QUEUE, &[(BUF + 0x1000, 1526, W)]);
    rig.add_chain(RX_QUEUE, &[(BUF + 0x2000, 1526, W)]);
    rig.send(&packet(60, 17));
    rig.send(&packet(60, 18));
    rig.net.process_tx();
    rig.net.process_rx();
    assert_eq!((rig.used_idx(TX_QUEUE), rig.used_idx(RX_QUEUE)), (1, 1));
    let c = rig.net.counters();
    assert_eq!((c.tx_throttled, c.rx_throttled), (1, 1));
    // Kicks change nothing while blocked.
    rig.net.process_tx();
    rig.net.process_rx();
    assert_eq!((rig.used_idx(TX_QUEUE), rig.used_idx(RX_QUEUE)), (1, 1));
    clock.advance(Duration::from_millis(1));
    // The timers fire (>= 1 ms of real time) and the event loop resumes both directions.
    let net = Arc::new(Mutex::new(rig.take_net()));
    let mut em = EventManager::<Arc<Mutex<Net>>>::new().unwrap();
    em.add_subscriber(net.clone());
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        em.run_with_timeout(100).unwrap();
        let c = net.lock().unwrap().counters();
        if c.tx_packets == 2 && c.rx_packets == 2 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{c:?}");
    }
}

#[test]
fn event_loop_serves_the_tap_and_the_queues() {
    let mut rig = Rig::new();
    rig.activate(FEATURES_MERGE | (1 << VIRTIO_RING_F_EVENT_IDX));
    let p = packet(200, 19);
    rig.send(&p);
    rig.put(BUF, &packet(60, 20));
    rig.add_chain(TX_QUEUE, &[(BUF, 72, R)]);
    let rx_kick = rig.net.queue_events()[0].try_clone().unwrap();
    let tx_kick = rig.net.queue_events()[1].try_clone().unwrap();
    let net = Arc::new(Mutex::new(rig.take_net()));
    let mut em = EventManager::<Arc<Mutex<Net>>>::new().unwrap();
    em.add_subscriber(net.clone());
    tx_kick.write(1).unwrap();
    em.run_with_timeout(100).unwrap();
    assert_eq!(rig.recv().unwrap().len(), 72);
    // No RX buffer yet: the packet waits for the kick that adds one.
    assert_eq!(rig.used_idx(RX_QUEUE), 0);
    rig.add_chain(RX_QUEUE, &[(BUF + 0x1000, 4096, W)]);
    rx_kick.write(1).unwrap();
    em.run_with_timeout(100).unwrap();
    assert_eq!(rig.used(RX_QUEUE, 0), (0, 212));
    // A frame arriving later is delivered on the tap event alone.
    rig.add_chain(RX_QUEUE, &[(BUF + 0x2000, 4096, W)]);
    rig.send(&packet(30, 21));
    em.run_with_timeout(100).unwrap();
    assert_eq!(rig.used(RX_QUEUE, 1), (1, 42));
    let c = net.lock().unwrap().counters();
    assert_eq!((c.rx_packets, c.tx_packets), (2, 1));
}

/// Activates with queue `aliased` (RX or TX) laid as [`aliased_rings_queue`] (in its own
/// area), the other one normal.
fn activate_aliased(rig: &mut Rig, aliased: u16) {
    let vq = MockSplitQueue::create(&rig.mem, GuestAddress(0x2_0000), QUEUE_SIZE);
    let bad = aliased_rings_queue(&rig.mem, &vq, 47);
    let (_, good) = DriverQueue::new(
        &rig.mem,
        if aliased == RX_QUEUE {
            TX_RING
        } else {
            RX_RING
        },
    );
    let queues = if aliased == RX_QUEUE {
        vec![bad, good]
    } else {
        vec![good, bad]
    };
    let int = rig.int.clone();
    activate_with(&mut rig.net, &rig.mem, queues, FEATURES_NO_MERGE, int);
    for evt in rig.net.queue_events() {
        evt.read().unwrap();
    }
}

#[test]
fn tx_used_ring_over_avail_ring_ends_the_turn_and_rekicks_the_queue() {
    let mut rig = Rig::new();
    activate_aliased(&mut rig, TX_QUEUE);
    rig.net.process_tx();
    let (_, state) = rig.net.active_queue_states()[usize::from(TX_QUEUE)];
    assert_eq!(u32::from(taken(&state)), MAX_CHAINS_PER_TURN);
    // Every chain is an empty descriptor: too short, returned unsent.
    let c = rig.net.counters();
    assert_eq!(
        (c.tx_errors, c.tx_packets),
        (u64::from(MAX_CHAINS_PER_TURN), 0)
    );
    assert!(rig.recv().is_none());
    let evts = rig.net.queue_events();
    assert_eq!(evts[usize::from(TX_QUEUE)].read().unwrap(), 1);
    assert!(evts[usize::from(RX_QUEUE)].read().is_err());
}

#[test]
fn rx_used_ring_over_avail_ring_ends_the_turn_and_rekicks_the_queue() {
    let mut rig = Rig::new();
    activate_aliased(&mut rig, RX_QUEUE);
    rig.send(&packet(60, 1));
    rig.tap_event();
    let (_, state) = rig.net.active_queue_states()[usize::from(RX_QUEUE)];
    assert_eq!(u32::from(taken(&state)), MAX_CHAINS_PER_TURN);
    // Every chain is a read-only descriptor: returned empty, the packet still waits.
    let c = rig.net.counters();
    assert_eq!(
        (c.rx_errors, c.rx_packets),
        (u64::from(MAX_CHAINS_PER_TURN), 0)
    );
    assert_ne!(rig.net.rx_len, 0);
    let evts = rig.net.queue_events();
    assert_eq!(evts[usize::from(RX_QUEUE)].read().unwrap(), 1);
    assert!(evts[usize::from(TX_QUEUE)].read().is_err());
}

#[test]
fn a_limiter_set_on_the_running_device_takes_effect_and_can_be_lifted() {
    let mut rig = Rig::new();
    rig.activate(FEATURES_NO_MERGE);
    let send = |rig: &mut Rig, n: u64| {
        for i in 0..n {
            let p = packet(60, i as u8);
            let at = BUF + 0x1000 * (i % 16);
            rig.put(at, &p);
            rig.add_chain(TX_QUEUE, &[(at, p.len() as u32, R)]);
        }
        rig.net.process_tx();
        let mut got = 0;
        while rig.recv().is_some() {
            got += 1;
        }
        got
    };
    assert_eq!(send(&mut rig, 3), 3, "no limiter: everything goes");
    // Two operations per 100 s on TX: two frames pass, the third waits.
    let two = TokenBucketConfig {
        size: 2,
        one_time_burst: 0,
        refill_time_ms: 100_000,
    };
    rig.net
        .update_rate_limiters(
            (BucketUpdate::Keep, BucketUpdate::Keep),
            (BucketUpdate::Keep, BucketUpdate::Set(two)),
        )
        .unwrap();
    assert!(
        rig.net.limiters_unregistered,
        "a new limiter must be registered"
    );
    assert_eq!(send(&mut rig, 3), 2);
    assert_eq!(rig.net.counters().tx_throttled, 1);
    // A bucket of size 0 lifts the limit: the waiting frame goes at the next turn (the
    // update kicked the queues), without waiting for the old limit's timer.
    rig.net
        .update_rate_limiters(
            (BucketUpdate::Keep, BucketUpdate::Keep),
            (
                BucketUpdate::Keep,
                BucketUpdate::Set(TokenBucketConfig::default()),
            ),
        )
        .unwrap();
    assert!(
        rig.net.queue_events()[usize::from(TX_QUEUE)].read().is_ok(),
        "no kick"
    );
    assert_eq!(send(&mut rig, 2), 3);
}
