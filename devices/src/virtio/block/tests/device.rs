//! Device-level behaviour: features, config space, opening, rate limiting, reset.

use super::*;

#[test]
fn config_space_and_features() {
    let rig = Rig::new(|_| {});
    assert_eq!(rig.blk.device_type(), 2);
    assert_eq!(rig.blk.queue_max_sizes(), &[256]);
    assert_eq!(rig.blk.capacity_sectors(), DISK_SECTORS);
    let f = rig.blk.features();
    assert_ne!(f & VIRTIO_F_VERSION_1, 0);
    assert_ne!(f & (1 << VIRTIO_BLK_F_FLUSH), 0);
    assert_eq!(f & (1 << VIRTIO_BLK_F_RO), 0);
    let mut cap = [0u8; 8];
    rig.blk.read_config(0, &mut cap);
    assert_eq!(u64::from_le_bytes(cap), DISK_SECTORS);
    let mut seg = [0u8; 4];
    rig.blk.read_config(12, &mut seg);
    assert_eq!(u32::from_le_bytes(seg), SEG_MAX);
    // Reads past the end are zeroes, never a panic.
    let mut tail = [0xffu8; 8];
    rig.blk.read_config(CONFIG_SPACE_SIZE as u64 - 2, &mut tail);
    assert_eq!(tail, [0; 8]);
    rig.blk.read_config(u64::MAX, &mut tail);
    assert_eq!(tail, [0; 8]);
}

#[test]
fn open_errors_name_the_path() {
    let missing = BlockConfig {
        path: "/nonexistent/petrel.img".into(),
        ..Default::default()
    };
    let e = Block::new(missing).unwrap_err();
    assert!(matches!(e, BlockError::Open { .. }));
    assert!(e.to_string().contains("/nonexistent/petrel.img"), "{e}");

    let dir = BlockConfig {
        path: "/tmp".into(),
        readonly: true,
        ..Default::default()
    };
    let e = Block::new(dir).unwrap_err();
    assert!(matches!(e, BlockError::NotADisk { .. }), "{e}");
    assert!(e.to_string().contains("/tmp"));
    // A directory cannot be opened for writing at all.
    let dir_rw = BlockConfig {
        path: "/tmp".into(),
        ..Default::default()
    };
    assert!(matches!(
        Block::new(dir_rw).unwrap_err(),
        BlockError::Open { .. }
    ));
    let chr = BlockConfig {
        path: "/dev/null".into(),
        ..Default::default()
    };
    assert!(matches!(
        Block::new(chr).unwrap_err(),
        BlockError::NotADisk { .. }
    ));

    let file = image();
    let mut long = config(&file);
    long.id = "x".repeat(21);
    assert!(matches!(
        Block::new(long).unwrap_err(),
        BlockError::IdTooLong { .. }
    ));
}

#[test]
fn rate_limited_device_stops_and_resumes_on_timer() {
    let clock = ManualClock::default();
    let mut rig = Rig::new(|_| {});
    let ops = RateLimiterConfig {
        bandwidth: None,
        ops: Some(TokenBucketConfig {
            size: 1,
            one_time_burst: 0,
            refill_time_ms: 1,
        }),
    };
    let limiter = RateLimiter::with_clock(&ops, Box::new(clock.clone())).unwrap();
    rig.blk.set_rate_limiter(Some(limiter));
    let int = rig.activate();
    rig.request(VIRTIO_BLK_T_FLUSH, 0, None);
    rig.request(VIRTIO_BLK_T_FLUSH, 0, None);
    let evt = rig.blk.queue_events()[0].try_clone().unwrap();
    // A stand-in on an image of its own: the rig's image is locked by the device.
    let stand_in = image();
    let blk = Arc::new(Mutex::new(std::mem::replace(
        &mut rig.blk,
        Block::new(config(&stand_in)).unwrap(),
    )));
    let mut manager = EventManager::<Arc<Mutex<Block>>>::new().unwrap();
    manager.add_subscriber(blk.clone());
    evt.write(1).unwrap();
    assert_eq!(manager.run_with_timeout(1000).unwrap(), 1);
    assert_eq!(rig.used(0).0, 1, "one request served, one held back");
    {
        let b = blk.lock().unwrap();
        assert_eq!(b.counters().flushes, 1);
        assert_eq!(b.counters().throttled, 1);
        assert!(b.rate_limiter.as_ref().unwrap().is_blocked());
    }
    // A guest kick, or the timer firing, while the (manual) clock stands still: nothing more.
    evt.write(1).unwrap();
    for _ in 0..3 {
        assert!(manager.run_with_timeout(1000).unwrap() >= 1);
        assert_eq!(rig.used(0).0, 1);
    }
    // The bucket refills; the limiter's timer fires and the device resumes by itself.
    clock.advance(Duration::from_millis(1));
    for _ in 0..10 {
        if rig.used(0).0 == 2 {
            break;
        }
        manager.run_with_timeout(1000).unwrap();
    }
    assert_eq!(rig.used(1).0, 2);
    assert_eq!(blk.lock().unwrap().counters().flushes, 2);
    assert_eq!(int.0.lock().unwrap().len(), 2);
}

#[test]
fn bandwidth_limit_counts_bytes() {
    let clock = ManualClock::default();
    let mut rig = Rig::new(|_| {});
    let bw = RateLimiterConfig {
        bandwidth: Some(TokenBucketConfig {
            size: 1024,
            one_time_burst: 0,
            refill_time_ms: 1000,
        }),
        ops: Some(TokenBucketConfig {
            size: 100,
            one_time_burst: 0,
            refill_time_ms: 1000,
        }),
    };
    let limiter = RateLimiter::with_clock(&bw, Box::new(clock.clone())).unwrap();
    rig.blk.set_rate_limiter(Some(limiter));
    rig.activate();
    rig.request(VIRTIO_BLK_T_IN, 0, Some((1024, W)));
    rig.request(VIRTIO_BLK_T_IN, 0, Some((512, W)));
    rig.blk.process_queue();
    assert_eq!(rig.used(0).0, 1);
    let rl = rig.blk.rate_limiter.as_ref().unwrap();
    assert!(rl.is_blocked());
    // The op of the held-back request was given back.
    assert_eq!(rl.bucket(TokenKind::Ops).unwrap().budget(), 99);
}

#[test]
fn event_idx_serves_everything() {
    let mut rig = Rig::new(|_| {});
    let int = rig.activate_with(true);
    rig.request(VIRTIO_BLK_T_FLUSH, 0, None);
    rig.request(VIRTIO_BLK_T_GET_ID, 0, Some((20, W)));
    rig.blk.process_queue();
    assert_eq!(rig.used(1), (2, 21));
    assert_eq!(int.0.lock().unwrap().len(), 1);
}

#[test]
fn host_io_error_is_ioerr_and_device_keeps_running() {
    let mut rig = Rig::new(|_| {});
    rig.activate();
    // The image shrinks under the device: reads past the new end fail on the host.
    fs::OpenOptions::new()
        .write(true)
        .open(rig.file.as_path())
        .unwrap()
        .set_len(512)
        .unwrap();
    rig.request(VIRTIO_BLK_T_IN, 8, Some((512, W)));
    rig.blk.process_queue();
    assert_eq!(rig.status(), VIRTIO_BLK_S_IOERR as u8);
    assert_eq!(rig.used(0), (1, 1));
    let c = rig.blk.counters();
    assert_eq!(
        (c.io_errors, c.read_requests, c.invalid_requests),
        (1, 0, 0)
    );
    rig.request(VIRTIO_BLK_T_IN, 0, Some((512, W)));
    rig.blk.process_queue();
    assert_eq!(rig.status(), 0);
}

#[test]
fn reset_stops_serving() {
    let mut rig = Rig::new(|_| {});
    rig.activate();
    assert!(rig.blk.is_activated());
    rig.blk.reset();
    assert!(!rig.blk.is_activated());
    assert_eq!(rig.blk.acked_features(), 0);
    rig.request(VIRTIO_BLK_T_FLUSH, 0, None);
    rig.blk.process_queue();
    assert_eq!(rig.status(), UNTOUCHED);
    // Activated again (the mock starts with fresh rings), it serves again.
    rig.activate();
    rig.chains = 0;
    rig.request(VIRTIO_BLK_T_FLUSH, 0, None);
    rig.blk.process_queue();
    assert_eq!(rig.status(), 0);
}

#[test]
fn used_ring_over_avail_ring_ends_the_turn_and_rekicks_the_queue() {
    use crate::virtio::test_utils::{aliased_rings_queue, taken};
    // The fuzzer's hang: every returned chain makes another one available.
    let mut rig = Rig::new(|_| {});
    let mem = rig.mem.clone();
    let vq = MockSplitQueue::new(&mem, QUEUE_SIZE);
    let queue = aliased_rings_queue(&mem, &vq, 224);
    let int = rig.activate_on(queue, rig.blk.features());
    let evt = rig.blk.queue_events()[0].try_clone().unwrap();
    for turn in 1..=2u64 {
        rig.blk.process_queue();
        let (_, state) = rig.blk.active_queue_states()[0];
        let budget = u64::from(MAX_CHAINS_PER_TURN);
        assert_eq!(u64::from(taken(&state)), turn * budget % 0x1_0000);
        // Every chain is a zero-length descriptor: refused.
        assert_eq!(rig.blk.counters().invalid_requests, turn * budget);
        assert_eq!(evt.read().unwrap(), 1, "the queue asks to be served again");
    }
    assert_eq!(int.count(), 2);
}

/// The driver makes a chain available after a round found the ring empty but before
/// notifications are back on: it sees NO_NOTIFY and does not notify, so the device must serve
/// the chain in the same turn.
#[test]
fn chain_made_available_in_an_empty_round_is_served() {
    use crate::virtio::test_utils::{notifications_on, LateChain};
    let mut rig = Rig::new(|_| {});
    let int = rig.activate();
    // The chain is written but not published yet (avail idx back to 0).
    rig.request(VIRTIO_BLK_T_IN, 0, Some((512, W)));
    let mem = rig.mem.clone();
    mem.write_obj(0u16, GuestAddress(rig.avail + 2)).unwrap();
    let mut late = LateChain::new(&mem, rig.avail, rig.used);
    // A turn started by a stale kick: nothing is available yet.
    rig.blk.process_queue_with(|| late.publish());
    assert!(late.published);
    assert_eq!(rig.used(0), (1, 513));
    assert_eq!(rig.status(), 0);
    assert_eq!(rig.guest(DATA, 512), rig.disk()[..512]);
    assert_eq!(rig.blk.counters().io_errors, 0);
    assert!(notifications_on(&mem, rig.used), "notifications left off");
    assert_eq!(int.count(), 1);
}

/// Chains announced by the avail index that cannot be read (the ring runs off the end of
/// memory) make two empty rounds in a row: the turn ends instead of spinning.
#[test]
fn unreadable_avail_ring_ends_the_turn() {
    let mut rig = Rig::new(|_| {});
    let mem = rig.mem.clone();
    let vq = MockSplitQueue::new(&mem, QUEUE_SIZE);
    let queue = crate::virtio::test_utils::unreadable_avail_queue(&mem, &vq);
    let int = rig.activate_on(queue, VIRTIO_F_VERSION_1);
    let mut rounds = 0;
    rig.blk.process_queue_with(|| rounds += 1);
    assert_eq!(rounds, 2);
    assert_eq!(rig.blk.counters().io_errors, 1);
    assert_eq!(vq.used().idx().load(), 0);
    assert_eq!(int.count(), 0);
}

#[test]
fn an_image_in_use_is_refused_naming_it() {
    let file = image();
    let writer = Block::new(config(&file)).expect("first read-write user");
    let e = Block::new(config(&file)).unwrap_err();
    assert!(matches!(e, BlockError::Locked { .. }), "{e}");
    assert!(e.to_string().contains("in use"), "{e}");
    let mut ro = config(&file);
    ro.readonly = true;
    assert!(
        matches!(
            Block::new(ro.clone()).unwrap_err(),
            BlockError::Locked { .. }
        ),
        "no reader while a writer holds the image"
    );
    drop(writer);
    let r1 = Block::new(ro.clone()).expect("a reader once the writer is gone");
    let _r2 = Block::new(ro).expect("readers share the image");
    assert!(
        matches!(
            Block::new(config(&file)).unwrap_err(),
            BlockError::Locked { .. }
        ),
        "no writer while readers hold the image"
    );
    drop(r1);
}
