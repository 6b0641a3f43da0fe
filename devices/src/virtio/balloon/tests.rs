//! Tests of the balloon with virtio-queue mock queues on real (anonymous private) guest memory.

use super::*;
use std::sync::{Arc, Mutex};

use event_manager::{EventManager, SubscriberOps};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::Queue;
use vm_memory::{Address, Bytes, GuestAddress};

use crate::virtio::test_utils::{
    activate, desc, mem, read_guest, used, RecordingInterrupt, MEM_SIZE, N, W,
};
use crate::virtio::MAX_CHAINS_PER_TURN;

const QUEUE_ADDRS: [u64; 3] = [0, 0x1_0000, 0x2_0000];
/// Where the PFN and stats arrays go.
const BUF: u64 = 0x4_0000;
/// First guest page the tests balloon.
const PAGE: u64 = 0x8_0000;

fn config(stats_interval_s: u16) -> BalloonConfig {
    BalloonConfig {
        amount_mib: 0,
        deflate_on_oom: false,
        stats_polling_interval_s: stats_interval_s,
        id: "balloon0".into(),
    }
}

fn vqs(m: &GuestMemoryMmap) -> Vec<MockSplitQueue<'_, GuestMemoryMmap>> {
    QUEUE_ADDRS
        .iter()
        .map(|&a| MockSplitQueue::create(m, GuestAddress(a), QUEUE_SIZE))
        .collect()
}

/// A balloon activated with every offered feature accepted.
fn activated(
    m: &GuestMemoryMmap,
    vqs: &[MockSplitQueue<GuestMemoryMmap>],
    cfg: BalloonConfig,
) -> (Balloon, Arc<RecordingInterrupt>) {
    let mut b = Balloon::new(cfg, MEM_SIZE as u64).unwrap();
    let queues = vqs[..b.queue_max_sizes().len()]
        .iter()
        .map(|vq| vq.create_queue().unwrap())
        .collect();
    let features = b.features();
    let int = activate(&mut b, m, queues, features);
    (b, int)
}

fn pfns(m: &GuestMemoryMmap, addr: u64, pfns: &[u32]) -> u32 {
    let bytes: Vec<u8> = pfns.iter().flat_map(|p| p.to_le_bytes()).collect();
    m.write_slice(&bytes, GuestAddress(addr)).unwrap();
    bytes.len() as u32
}

fn stats_buf(m: &GuestMemoryMmap, addr: u64, entries: &[(u16, u64)]) -> u32 {
    let bytes: Vec<u8> = entries
        .iter()
        .flat_map(|(t, v)| t.to_le_bytes().into_iter().chain(v.to_le_bytes()))
        .collect();
    m.write_slice(&bytes, GuestAddress(addr)).unwrap();
    bytes.len() as u32
}

fn page_bytes(m: &GuestMemoryMmap, addr: u64) -> Vec<u8> {
    read_guest(m, addr, PAGE_SIZE as usize)
}

#[test]
fn inflate_releases_written_pages() {
    let m = mem();
    let vqs = vqs(&m);
    for i in 0..3 {
        m.write_slice(
            &[0xab; PAGE_SIZE as usize],
            GuestAddress(PAGE + i * PAGE_SIZE),
        )
        .unwrap();
    }
    let pfn = (PAGE / PAGE_SIZE) as u32;
    let len = pfns(&m, BUF, &[pfn, pfn + 1]);
    vqs[INFLATE]
        .add_desc_chains(&[desc(BUF, len, 0, 0)], 0)
        .unwrap();
    let (mut b, int) = activated(&m, &vqs, config(0));
    b.process_queue(INFLATE);
    assert_eq!(used(&vqs[INFLATE], 0), (1, (0, 0)));
    assert_eq!(int.take(), vec![InterruptKind::Queue(0)]);
    assert!(page_bytes(&m, PAGE).iter().all(|&x| x == 0));
    assert!(page_bytes(&m, PAGE + PAGE_SIZE).iter().all(|&x| x == 0));
    // The page after them was not ballooned and keeps its contents.
    assert!(page_bytes(&m, PAGE + 2 * PAGE_SIZE)
        .iter()
        .all(|&x| x == 0xab));
    let c = b.counters();
    assert_eq!((c.inflated_pages, c.bad_pfns, c.errors), (2, 0, 0));
}

#[test]
fn bad_pfns_are_counted_and_skipped() {
    let m = mem();
    let vqs = vqs(&m);
    m.write_slice(&[0xcd; PAGE_SIZE as usize], GuestAddress(PAGE))
        .unwrap();
    let end_pfn = (MEM_SIZE as u64 / PAGE_SIZE) as u32;
    let good = (PAGE / PAGE_SIZE) as u32;
    let len = pfns(&m, BUF, &[end_pfn, u32::MAX, good, end_pfn - 1 + 0x10_0000]);
    vqs[INFLATE]
        .add_desc_chains(&[desc(BUF, len, 0, 0)], 0)
        .unwrap();
    let (mut b, _) = activated(&m, &vqs, config(0));
    b.process_queue(INFLATE);
    assert_eq!(used(&vqs[INFLATE], 0), (1, (0, 0)));
    assert!(page_bytes(&m, PAGE).iter().all(|&x| x == 0));
    let c = b.counters();
    assert_eq!((c.inflated_pages, c.bad_pfns, c.errors), (1, 3, 0));
    assert_eq!(b.counter_values()[2], ("bad_pfns", 3));
}

#[test]
fn malformed_page_buffers_are_counted_never_fatal() {
    let m = mem();
    let vqs = vqs(&m);
    let pfn = (PAGE / PAGE_SIZE) as u32;
    pfns(&m, BUF, &[pfn, pfn + 1]);
    let chains = [
        // 6 bytes: one PFN and two stray bytes.
        desc(BUF, 6, 0, 0),
        // A write-only descriptor, then a good one in the same chain.
        desc(BUF, 8, W | N, 2),
        desc(BUF + 4, 4, 0, 0),
        // Outside guest memory, and crossing its end.
        desc(MEM_SIZE as u64 + 0x1000, 8, 0, 0),
        desc(MEM_SIZE as u64 - 4, 8, 0, 0),
        // Empty.
        desc(BUF, 0, 0, 0),
    ];
    vqs[INFLATE].add_desc_chains(&chains, 0).unwrap();
    let (mut b, _) = activated(&m, &vqs, config(0));
    b.process_queue(INFLATE);
    assert_eq!(vqs[INFLATE].used().idx().load(), 5);
    let c = b.counters();
    // pfn from the first chain, pfn + 1 from the second.
    assert_eq!((c.inflated_pages, c.bad_pfns), (2, 0));
    assert_eq!(c.errors, 4);
}

#[test]
fn deflate_counts_pages_and_leaves_memory_alone() {
    let m = mem();
    let vqs = vqs(&m);
    m.write_slice(&[0x5a; PAGE_SIZE as usize], GuestAddress(PAGE))
        .unwrap();
    let pfn = (PAGE / PAGE_SIZE) as u32;
    let len = pfns(&m, BUF, &[pfn, pfn + 1, pfn + 2, u32::MAX]);
    vqs[DEFLATE]
        .add_desc_chains(&[desc(BUF, len, 0, 0)], 0)
        .unwrap();
    let (mut b, int) = activated(&m, &vqs, config(0));
    b.process_queue(DEFLATE);
    assert_eq!(used(&vqs[DEFLATE], 0), (1, (0, 0)));
    assert_eq!(int.take(), vec![InterruptKind::Queue(1)]);
    assert!(page_bytes(&m, PAGE).iter().all(|&x| x == 0x5a));
    let c = b.counters();
    assert_eq!((c.deflated_pages, c.inflated_pages, c.bad_pfns), (3, 0, 1));
}

#[test]
fn stats_round_trip() {
    let m = mem();
    let vqs = vqs(&m);
    let (mut b, int) = activated(&m, &vqs, config(5));
    assert_ne!(b.acked_features() & VIRTIO_BALLOON_F_STATS_VQ, 0);
    let stats_vq = &vqs[STATS];
    // The driver's first buffer: free memory, total memory and a tag petrel does not know.
    let len = stats_buf(&m, BUF, &[(4, 1 << 20), (5, 4 << 20), (42, 7)]);
    stats_vq
        .add_desc_chains(&[desc(BUF, len, 0, 0)], 0)
        .unwrap();
    b.process_queue(STATS);
    assert_eq!(b.stats().get("free_memory"), Some(1 << 20));
    assert_eq!(b.stats().get("total_memory"), Some(4 << 20));
    assert_eq!(b.stats().get("swap_in"), None);
    assert_eq!(
        b.stats().values(),
        vec![("free_memory", 1 << 20), ("total_memory", 4 << 20)]
    );
    // Held until the poll is due.
    assert_eq!(stats_vq.used().idx().load(), 0);
    assert!(int.take().is_empty());
    b.poll_stats();
    assert_eq!(used(stats_vq, 0), (1, (0, 0)));
    assert_eq!(int.take(), vec![InterruptKind::Queue(2)]);
    // A poll with no buffer back yet does nothing.
    b.poll_stats();
    assert_eq!(stats_vq.used().idx().load(), 1);
    // The driver refills the same buffer with new values and queues it again.
    let len = stats_buf(&m, BUF, &[(4, 2 << 20), (0, 9)]);
    stats_vq
        .add_desc_chains(&[desc(BUF, len, 0, 0)], 0)
        .unwrap();
    b.process_queue(STATS);
    assert_eq!(b.stats().get("free_memory"), Some(2 << 20));
    assert_eq!(b.stats().get("swap_in"), Some(9));
    assert_eq!(b.stats().get("total_memory"), Some(4 << 20));
    assert_eq!(stats_vq.used().idx().load(), 1);
    let c = b.counters();
    assert_eq!((c.stats_updates, c.errors), (2, 0));
    assert_eq!(BalloonStats::names().len(), 10);
}

#[test]
fn malformed_stats_buffers_are_counted() {
    let m = mem();
    let vqs = vqs(&m);
    let (mut b, _) = activated(&m, &vqs, config(1));
    let len = stats_buf(&m, BUF, &[(6, 123), (7, 456)]);
    let chains = [
        // 15 bytes: one entry and a half.
        desc(BUF, 15, 0, 0),
        // Write-only: nothing read.
        desc(BUF + 10, len - 10, W, 0),
        // Outside guest memory.
        desc(u64::MAX - 4, 20, 0, 0),
    ];
    vqs[STATS].add_desc_chains(&chains, 0).unwrap();
    b.process_queue(STATS);
    assert_eq!(b.stats().get("available_memory"), Some(123));
    assert_eq!(b.stats().get("disk_caches"), None);
    // Two older buffers are returned at once; the newest is held.
    assert_eq!(vqs[STATS].used().idx().load(), 2);
    let c = b.counters();
    assert_eq!((c.stats_updates, c.errors), (3, 3));
}

#[test]
fn set_target_updates_config_and_raises_a_config_interrupt() {
    let m = mem();
    let vqs = vqs(&m);
    let mut b = Balloon::new(config(0), MEM_SIZE as u64).unwrap();
    // Not running: no interrupt to raise.
    b.set_target_mib(1).unwrap();
    assert_eq!(b.target_mib(), 1);
    let (mut b, int) = activated(
        &m,
        &vqs,
        BalloonConfig {
            amount_mib: 1,
            ..config(0)
        },
    );
    let mut cfg = [0u8; 4];
    b.read_config(0, &mut cfg);
    assert_eq!(u32::from_le_bytes(cfg), 256);
    b.set_target_mib(0).unwrap();
    assert_eq!(int.take(), vec![InterruptKind::Config]);
    b.read_config(0, &mut cfg);
    assert_eq!(u32::from_le_bytes(cfg), 0);
    let err = b.set_target_mib(2).unwrap_err().to_string();
    assert!(err.contains("2 MiB") && err.contains("(1 MiB)"), "{err}");
    assert_eq!(b.target_mib(), 0);
    assert!(int.take().is_empty());
}

#[test]
fn target_larger_than_guest_memory_is_refused_at_creation() {
    let err = Balloon::new(
        BalloonConfig {
            amount_mib: 4096,
            ..config(0)
        },
        1 << 30,
    )
    .unwrap_err();
    assert!(matches!(
        err,
        BalloonError::TargetTooLarge {
            target_mib: 4096,
            guest_mib: 1024
        }
    ));
    let err = Balloon::new(config(0), 1 << 50)
        .unwrap()
        .set_target_mib(1 << 24)
        .unwrap_err();
    assert!(matches!(err, BalloonError::TargetBeyondDevice { .. }));
}

#[test]
fn config_space_actual_is_written_by_the_guest() {
    let mut b = Balloon::new(
        BalloonConfig {
            amount_mib: 1,
            ..config(0)
        },
        MEM_SIZE as u64,
    )
    .unwrap();
    b.write_config(4, &512u32.to_le_bytes());
    assert_eq!(b.actual_mib(), 2);
    let mut all = [0u8; 8];
    b.read_config(0, &mut all);
    assert_eq!(all, [0, 1, 0, 0, 0, 2, 0, 0]);
    // Byte and half-word writes inside `actual`.
    b.write_config(6, &[1, 0]);
    b.write_config(4, &[0]);
    b.read_config(4, &mut all[..4]);
    assert_eq!(u32::from_le_bytes(all[..4].try_into().unwrap()), 0x1_0200);
    // num_pages is read-only; writes straddling it or beyond the space are ignored.
    b.write_config(0, &[9; 4]);
    b.write_config(2, &[9; 4]);
    b.write_config(8, &[9; 4]);
    b.write_config(u64::MAX, &[9; 2]);
    assert_eq!(b.target_mib(), 1);
    assert_eq!(b.counters().errors, 4);
    // Reads past the space are zero.
    let mut tail = [0xffu8; 4];
    b.read_config(6, &mut tail);
    assert_eq!(tail, [1, 0, 0, 0]);
    b.read_config(u64::MAX, &mut tail);
    assert_eq!(tail, [0; 4]);
    // A reset forgets what the driver reported.
    b.reset();
    assert_eq!(b.actual_mib(), 0);
}

#[test]
fn features_queues_and_activation() {
    let b = Balloon::new(config(0), MEM_SIZE as u64).unwrap();
    assert_eq!(b.device_type(), device_type::BALLOON);
    assert_eq!(b.queue_max_sizes(), &[QUEUE_SIZE; 2]);
    assert_eq!(b.queue_events().len(), 2);
    assert_eq!(b.features() & VIRTIO_BALLOON_F_STATS_VQ, 0);
    assert_eq!(b.features() & VIRTIO_BALLOON_F_DEFLATE_ON_OOM, 0);
    assert_ne!(b.features() & VIRTIO_F_VERSION_1, 0);
    assert_eq!(b.id(), "balloon0");
    let cfg = BalloonConfig {
        deflate_on_oom: true,
        ..config(10)
    };
    let mut b = Balloon::new(cfg, MEM_SIZE as u64).unwrap();
    assert_eq!(b.queue_max_sizes(), &[QUEUE_SIZE; 3]);
    assert_eq!(b.queue_events().len(), 3);
    assert_ne!(b.features() & VIRTIO_BALLOON_F_STATS_VQ, 0);
    assert_ne!(b.features() & VIRTIO_BALLOON_F_DEFLATE_ON_OOM, 0);

    let m = mem();
    let vqs = vqs(&m);
    // The deflate queue is not enabled: refused.
    let ctx = ActivateContext {
        mem: m.clone(),
        queues: vec![
            vqs[0].create_queue().unwrap(),
            Queue::new(QUEUE_SIZE).unwrap(),
        ],
        acked_features: VIRTIO_F_VERSION_1,
        interrupt: Arc::new(RecordingInterrupt::default()),
    };
    assert!(b.activate(ctx).is_err());
    assert!(!b.is_activated());
    // Stats not accepted by the driver: the stats queue is not served.
    let ctx = ActivateContext {
        mem: m.clone(),
        queues: vqs.iter().map(|vq| vq.create_queue().unwrap()).collect(),
        acked_features: VIRTIO_F_VERSION_1,
        interrupt: Arc::new(RecordingInterrupt::default()),
    };
    b.activate(ctx).unwrap();
    assert!(b.is_activated());
    let len = stats_buf(&m, BUF, &[(4, 1)]);
    vqs[STATS]
        .add_desc_chains(&[desc(BUF, len, 0, 0)], 0)
        .unwrap();
    b.process_queue(STATS);
    b.poll_stats();
    assert_eq!(b.stats(), BalloonStats::default());
    assert_eq!(vqs[STATS].used().idx().load(), 0);
    b.reset();
    assert!(!b.is_activated());
    assert_eq!(b.acked_features(), 0);
    b.process_queue(INFLATE); // Not activated: nothing happens.
}

#[test]
fn bogus_avail_index_does_not_hang() {
    let m = mem();
    let vqs = vqs(&m);
    let (mut b, int) = activated(&m, &vqs, config(1));
    for vq in &vqs {
        m.write_obj(1000u16, vq.avail_addr().unchecked_add(2))
            .unwrap();
    }
    for q in [INFLATE, DEFLATE, STATS] {
        b.process_queue(q);
    }
    assert_eq!(b.counters().errors, 3);
    assert!(int.take().is_empty());
}

#[test]
fn event_loop_serves_queues_queued_before_activation_and_polls_stats() {
    let m = mem();
    let vqs = vqs(&m);
    let pfn = (PAGE / PAGE_SIZE) as u32;
    let len = pfns(&m, BUF, &[pfn]);
    vqs[INFLATE]
        .add_desc_chains(&[desc(BUF, len, 0, 0)], 0)
        .unwrap();
    let slen = stats_buf(&m, BUF + 0x100, &[(5, 77)]);
    vqs[STATS]
        .add_desc_chains(&[desc(BUF + 0x100, slen, 0, 0)], 0)
        .unwrap();
    // Activation kicks the device's own queue events.
    let (b, int) = activated(&m, &vqs, config(1));
    let b = Arc::new(Mutex::new(b));
    let mut manager = EventManager::<Arc<Mutex<Balloon>>>::new().unwrap();
    manager.add_subscriber(b.clone());
    // Three queue events, each served once (the deflate queue is empty).
    let mut handled = 0;
    for _ in 0..3 {
        handled += manager.run_with_timeout(1000).unwrap();
        if handled == 3 {
            break;
        }
    }
    assert_eq!(handled, 3);
    assert_eq!(used(&vqs[INFLATE], 0), (1, (0, 0)));
    assert_eq!(b.lock().unwrap().counters().inflated_pages, 1);
    assert_eq!(b.lock().unwrap().stats().get("total_memory"), Some(77));
    assert_eq!(vqs[STATS].used().idx().load(), 0);
    // The stats timer (1 s) returns the buffer.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while vqs[STATS].used().idx().load() == 0 && std::time::Instant::now() < deadline {
        manager.run_with_timeout(500).unwrap();
    }
    assert_eq!(used(&vqs[STATS], 0), (1, (0, 0)));
    assert!(int.take().contains(&InterruptKind::Queue(2)));
    // After a reset the timer is disarmed.
    b.lock().unwrap().reset();
    assert_eq!(manager.run_with_timeout(1500).unwrap(), 0);
}

#[test]
fn used_ring_over_avail_ring_ends_the_turn_and_rekicks_the_queue() {
    use crate::virtio::test_utils::{aliased_rings_queue, taken};
    let m = mem();
    let vqs = vqs(&m);
    let mut b = Balloon::new(config(0), MEM_SIZE as u64).unwrap();
    let queues = vec![
        aliased_rings_queue(&m, &vqs[INFLATE], 100),
        aliased_rings_queue(&m, &vqs[DEFLATE], 1),
    ];
    let features = b.features();
    activate(&mut b, &m, queues, features);
    for evt in b.queue_events() {
        evt.read().unwrap(); // The activation kicks.
    }
    for index in [INFLATE, DEFLATE] {
        b.process_queue(index);
        let (_, state) = b.active_queue_states()[index];
        assert_eq!(u32::from(taken(&state)), MAX_CHAINS_PER_TURN);
        assert_eq!(b.queue_events()[index].read().unwrap(), 1);
    }
    // Empty buffers hold no pages.
    let c = b.counters();
    assert_eq!((c.inflated_pages, c.deflated_pages), (0, 0));
}

/// A balloon without stats activated on `inflate` (and a normal deflate queue), its
/// activation kicks drained.
fn activated_on(m: &GuestMemoryMmap, inflate: Queue) -> (Balloon, Arc<RecordingInterrupt>) {
    let mut b = Balloon::new(config(0), MEM_SIZE as u64).unwrap();
    let deflate = MockSplitQueue::create(m, GuestAddress(QUEUE_ADDRS[1]), QUEUE_SIZE);
    let queues = vec![inflate, deflate.create_queue().unwrap()];
    let features = b.features();
    let int = activate(&mut b, m, queues, features);
    for evt in b.queue_events() {
        evt.read().unwrap(); // The activation kicks.
    }
    (b, int)
}

/// The driver makes a chain available after a round found the ring empty but before
/// notifications are back on: it sees NO_NOTIFY and does not notify, so the device must take
/// the chain in the same turn.
#[test]
fn chain_made_available_in_an_empty_round_is_served() {
    use crate::virtio::test_utils::{notifications_on, LateChain};
    let m = mem();
    let vq = MockSplitQueue::new(&m, QUEUE_SIZE);
    let (mut b, int) = activated_on(&m, vq.create_queue().unwrap());
    // Written but not published yet; a turn started by a stale kick finds nothing.
    let n = pfns(&m, BUF, &[(PAGE / PAGE_SIZE) as u32]);
    vq.add_desc_chains(&[desc(BUF, n, 0, 0)], 0).unwrap();
    m.write_obj(0u16, vq.avail_addr().unchecked_add(2)).unwrap();
    let mut late = LateChain::new(&m, vq.avail_addr().0, vq.used_addr().0);
    b.process_queue_with(INFLATE, || late.publish());
    assert!(late.published);
    assert_eq!(used(&vq, 0), (1, (0, 0)));
    let c = b.counters();
    assert_eq!((c.inflated_pages, c.errors), (1, 0));
    assert!(notifications_on(&m, vq.used_addr().0), "notifications off");
    assert_eq!(int.take(), [InterruptKind::Queue(0)]);
    assert!(b.queue_events()[INFLATE].read().is_err(), "no self-kick");
}

/// Chains announced by the avail index that cannot be read (the ring runs off the end of
/// memory) make two empty rounds in a row: the turn ends instead of spinning.
#[test]
fn unreadable_avail_ring_ends_the_turn() {
    let m = mem();
    let vq = MockSplitQueue::new(&m, QUEUE_SIZE);
    let queue = crate::virtio::test_utils::unreadable_avail_queue(&m, &vq);
    let (mut b, int) = activated_on(&m, queue);
    let mut rounds = 0;
    b.process_queue_with(INFLATE, || rounds += 1);
    assert_eq!((rounds, b.counters().errors), (2, 1));
    assert_eq!(vq.used().idx().load(), 0);
    assert!(int.take().is_empty());
}

#[test]
fn target_and_actual_come_back_from_a_snapshot() {
    let mut b = Balloon::new(config(0), 256 << 20).unwrap();
    b.set_target_mib(32).unwrap();
    b.write_config(ACTUAL_OFFSET, &(16 * PAGES_PER_MIB as u32).to_le_bytes());
    let mut saved = vec![0u8; 256];
    b.read_config(0, &mut saved);

    let mut fresh = Balloon::new(config(0), 256 << 20).unwrap();
    fresh.restore_config(&saved).unwrap();
    assert_eq!(fresh.target_mib(), 32);
    assert_eq!(fresh.actual_mib(), 16);

    let mut too_big = saved.clone();
    too_big[..4].copy_from_slice(&u32::MAX.to_le_bytes());
    let mut other = Balloon::new(config(0), 256 << 20).unwrap();
    let e = other.restore_config(&too_big).unwrap_err();
    assert!(e.contains("more than the guest"), "{e}");
    assert_eq!(other.target_mib(), 0, "a refused config changes nothing");
    assert!(other.restore_config(&saved[..6]).is_err());
}
