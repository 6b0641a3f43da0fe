//! Hostile and malformed input, configuration and device identity.

use super::*;
use crate::virtio::test_utils::{aliased_rings_queue, taken};
use virtio_queue::mock::MockSplitQueue;

#[test]
fn malformed_packets_are_counted_and_the_device_keeps_serving() {
    let mut rig = Rig::new(32);
    // A chain too short for a header.
    let a = rig.tx_slot(&[0u8; 20]);
    rig.tx_raw(&[(a, 20, 0)]);
    // A buffer outside guest memory.
    rig.tx_raw(&[(MEM_SIZE as u64 - 10, 64, 0)]);
    rig.tx_raw(&[(u64::MAX - 20, 64, 0)]);
    // A device-writable-only chain.
    rig.tx_raw(&[(a, 64, VRING_DESC_F_WRITE)]);
    rig.kick(TX_QUEUE);
    rig.run();
    assert_eq!(rig.counters().errors, 4);
    assert!(rig.inbox.is_empty());
    assert_eq!(
        rig.tx.take_used(&rig.mem).len(),
        4,
        "every chain is returned"
    );

    // Payload length beyond the chain, and beyond any packet: an RST for that port pair.
    let mut h = guest_hdr(5000, 80, op::RW);
    h.len = 100;
    let a = rig.tx_slot(&h.to_bytes());
    rig.tx_raw(&[(a, HDR_SIZE as u32 + 10, 0)]);
    h.len = u32::MAX;
    let a = rig.tx_slot(&h.to_bytes());
    rig.tx_raw(&[(a, HDR_SIZE as u32, 0)]);
    rig.kick(TX_QUEUE);
    rig.run();
    assert_eq!(rig.counters().errors, 6);
    assert_eq!(rig.inbox.len(), 2);
    assert!(rig
        .inbox
        .iter()
        .all(|(h, _)| h.op == op::RST && h.dst_port == 5000));
    rig.inbox.clear();

    // Wrong CIDs: dropped without an answer.
    let mut h = guest_hdr(5000, 80, op::REQUEST);
    h.dst_cid = 7;
    rig.send(h, &[]);
    let mut h = guest_hdr(5000, 80, op::REQUEST);
    h.src_cid = 4;
    rig.send(h, &[]);
    assert!(rig.inbox.is_empty());
    assert_eq!(rig.counters().errors, 8);

    // Unknown op, unknown type: RST.
    rig.send(guest_hdr(5000, 80, 42), &[]);
    let mut h = guest_hdr(5000, 80, op::REQUEST);
    h.type_ = 2;
    rig.send(h, &[]);
    assert_eq!(rig.counters().errors, 10);
    // Packets for connections that do not exist: RST (but never an RST for an RST).
    rig.send(guest_hdr(5000, 80, op::RW), b"data");
    rig.send(guest_hdr(5000, 80, op::RESPONSE), &[]);
    rig.send(guest_hdr(5000, 80, op::SHUTDOWN), &[]);
    rig.send(guest_hdr(5000, 80, op::RST), &[]);
    rig.run();
    assert_eq!(rig.inbox.len(), 5);
    assert!(rig.inbox.iter().all(|(h, _)| h.op == op::RST));
    rig.inbox.clear();

    // Still works: a host connection goes through.
    let (host, port) = rig.host_connect(52);
    rig.send(guest_hdr(52, port, op::RW), b"ok");
    let mut b = [0u8; 2];
    (&host).read_exact(&mut b).unwrap();
    assert_eq!(&b, b"ok");
}

#[test]
fn protocol_violations_reset_the_connection() {
    let mut rig = Rig::new(32);
    let (host, port) = rig.host_connect(52);
    // A second REQUEST for a live connection.
    rig.send(guest_hdr(52, port, op::REQUEST), &[]);
    let (hdr, _) = rig.recv();
    assert_eq!((hdr.op, hdr.src_port, hdr.dst_port), (op::RST, port, 52));
    let mut rest = Vec::new();
    (&host).read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "host connection closed");

    // A guest ignoring petrel's credit.
    let (host, port) = rig.host_connect(53);
    let big = vec![0u8; 64 * 1024];
    // The host does not read: once its socket is full, petrel holds up to BUF_ALLOC bytes;
    // credit updates tell the guest how much room is left, which it ignores.
    for _ in 0..32 {
        if rig.inbox.iter().any(|(h, _)| h.op == op::RST) {
            break;
        }
        rig.send(guest_hdr(53, port, op::RW), &big);
    }
    let ops: Vec<u16> = rig.inbox.drain(..).map(|(h, _)| h.op).collect();
    assert_eq!(ops.last(), Some(&op::RST), "{ops:?}");
    assert!(ops[..ops.len() - 1].iter().all(|&o| o == op::CREDIT_UPDATE));
    drop(host);
    assert_eq!(rig.dev.lock().unwrap().active_connections(), 0);
}

#[test]
fn bad_host_handshakes_are_closed() {
    let mut rig = Rig::new(8);
    for line in [&b"HELLO 5\n"[..], b"CONNECT x\n", &[b'C'; 100]] {
        let host = UnixStream::connect(rig.path()).unwrap();
        (&host).write_all(line).unwrap();
        rig.run();
        let mut rest = Vec::new();
        host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        // Closed by petrel (a reset if it left the line unread).
        match (&host).read_to_end(&mut rest) {
            Ok(_) => assert!(rest.is_empty()),
            Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset),
        }
    }
    // A host that connects and goes away.
    drop(UnixStream::connect(rig.path()).unwrap());
    rig.run();
    assert!(rig.inbox.is_empty());
    let c = rig.counters();
    assert_eq!((c.refused, c.connections), (4, 0));
    assert_eq!(rig.dev.lock().unwrap().active_connections(), 0);
}

#[test]
fn rx_buffers_too_small_or_outside_memory_are_skipped() {
    let mut rig = Rig::new(0);
    let w = VRING_DESC_F_WRITE;
    rig.rx.add(&rig.mem, &[(RX_BUFS, 40, w)]);
    rig.rx.add(&rig.mem, &[(u64::MAX - 100, 4096, w)]);
    rig.send(guest_hdr(5000, 999, op::REQUEST), &[]);
    assert_eq!(rig.rx_empty, vec![0, 1]);
    assert_eq!(rig.counters().errors, 2);
    // The RST waits for a good buffer.
    rig.post_rx(1, true);
    rig.run();
    assert_eq!(rig.inbox.len(), 1);
    assert_eq!(rig.inbox[0].0.op, op::RST);
}

#[test]
fn config_space_features_and_identity() {
    let rig = Rig::new(0);
    let dev = rig.dev.lock().unwrap();
    assert_eq!(dev.device_type(), 19);
    assert_eq!(dev.queue_max_sizes(), &[256, 256, 256]);
    assert_eq!(dev.features(), VIRTIO_F_VERSION_1 | VIRTIO_VSOCK_F_STREAM);
    assert_eq!(dev.queue_events().len(), 3);
    let mut cid = [0u8; 8];
    dev.read_config(0, &mut cid);
    assert_eq!(u64::from_le_bytes(cid), GUEST_CID);
    let mut hi = [0xffu8; 4];
    dev.read_config(4, &mut hi);
    assert_eq!(hi, [0; 4]);
    dev.read_config(u64::MAX, &mut hi);
    assert_eq!(hi, [0; 4]);
    assert_eq!(dev.guest_cid(), GUEST_CID);
    assert_eq!(dev.id(), "vsock0");
    let names: Vec<_> = dev.counter_values().iter().map(|c| c.0).collect();
    assert!(names.contains(&"connections") && names.contains(&"errors"));
}

#[test]
fn configuration_errors() {
    let dir = TempDir::new().unwrap();
    let cfg = |cid, path: std::path::PathBuf| VsockConfig {
        guest_cid: cid,
        uds_path: path,
        id: String::new(),
    };
    let ok = dir.as_path().join("v.sock");
    for cid in [0, 1, 2, u64::from(u32::MAX), u64::MAX] {
        let e = Vsock::new(cfg(cid, ok.clone())).unwrap_err();
        assert!(matches!(e, VsockError::InvalidCid(_)), "{e}");
    }
    let missing = dir.as_path().join("nope/v.sock");
    let e = Vsock::new(cfg(3, missing)).unwrap_err();
    assert!(matches!(e, VsockError::NoDirectory { .. }));
    assert!(e.to_string().contains("nope/v.sock"), "{e}");
    let e = Vsock::new(cfg(3, "".into())).unwrap_err();
    assert!(matches!(e, VsockError::NoDirectory { .. }));
    // A regular file in the way is not replaced.
    std::fs::write(&ok, b"x").unwrap();
    let e = Vsock::new(cfg(3, ok.clone())).unwrap_err();
    assert!(matches!(e, VsockError::Listen { .. }), "{e}");
    std::fs::remove_file(&ok).unwrap();
    // A stale socket is.
    drop(UnixListener::bind(&ok).unwrap());
    let dev = Vsock::new(cfg(3, ok.clone())).unwrap();
    assert!(UnixStream::connect(&ok).is_ok());
    assert!(!dev.is_activated());
}

#[test]
fn host_connection_before_activation_waits_for_the_driver() {
    let dir = TempDir::new().unwrap();
    let path = dir.as_path().join("v.sock");
    let dev = Vsock::new(VsockConfig {
        guest_cid: GUEST_CID,
        uds_path: path.clone(),
        id: String::new(),
    })
    .unwrap();
    let dev = Arc::new(Mutex::new(dev));
    let mut manager = EventManager::<Arc<Mutex<Vsock>>>::new().unwrap();
    manager.add_subscriber(dev.clone());
    let host = UnixStream::connect(&path).unwrap();
    (&host).write_all(b"CONNECT 52\n").unwrap();
    while manager.run_with_timeout(20).unwrap() > 0 {}
    assert_eq!(dev.lock().unwrap().active_connections(), 1);
    // Activation: the REQUEST goes out once the driver has RX buffers.
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
    let mut rx = GuestQueue::new(0);
    let tx = GuestQueue::new(0x4000);
    rx.add(&mem, &[(RX_BUFS, 4096, VRING_DESC_F_WRITE)]);
    {
        let mut d = dev.lock().unwrap();
        let features = d.features();
        d.activate(ActivateContext {
            mem: mem.clone(),
            queues: vec![rx.queue(), tx.queue(), GuestQueue::new(0x8000).queue()],
            acked_features: features,
            interrupt: Arc::new(RecordingInterrupt::default()),
        })
        .unwrap();
    }
    while manager.run_with_timeout(20).unwrap() > 0 {}
    assert_eq!(rx.take_used(&mem).len(), 1);
    let mut raw = [0u8; HDR_SIZE];
    mem.read_slice(&mut raw, GuestAddress(RX_BUFS)).unwrap();
    assert_eq!(Header::from_bytes(&raw).op, op::REQUEST);
}

#[test]
fn activation_needs_rx_and_tx() {
    let rig = Rig::new(0);
    let mut dev = Vsock::new(VsockConfig {
        guest_cid: 4,
        uds_path: rig.dir.as_path().join("w.sock"),
        id: String::new(),
    })
    .unwrap();
    let ctx = |queues| ActivateContext {
        mem: rig.mem.clone(),
        queues,
        acked_features: VIRTIO_F_VERSION_1,
        interrupt: Arc::new(RecordingInterrupt::default()),
    };
    assert!(dev.activate(ctx(vec![rig.rx.queue()])).is_err());
    let not_ready = Queue::new(QUEUE_SIZE).unwrap();
    assert!(dev.activate(ctx(vec![rig.rx.queue(), not_ready])).is_err());
    assert!(!dev.is_activated());
    dev.process_rx();
    dev.process_tx();
}

/// A device on fresh guest memory, activated on the queues `queues` gives.
fn device_on(
    queues: impl FnOnce(&GuestMemoryMmap) -> Vec<Queue>,
) -> (TempDir, GuestMemoryMmap, Vsock) {
    let dir = TempDir::new().unwrap();
    let mut dev = Vsock::new(VsockConfig {
        guest_cid: GUEST_CID,
        uds_path: dir.as_path().join("v.sock"),
        id: "vsock0".into(),
    })
    .unwrap();
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
    activate(&mut dev, &mem, queues(&mem), FEATURES);
    (dir, mem, dev)
}

/// The normal RX (at 0), TX (at 0x4000) and event (at 0x8000) queues.
fn normal_queues() -> Vec<Queue> {
    [0, 0x4000, 0x8000]
        .map(|base| GuestQueue::new(base).queue())
        .into()
}

/// A device whose queue `aliased` (RX or TX) is laid as [`aliased_rings_queue`]; the other
/// queues are normal. Returns the driver's TX queue too.
fn aliased_device(aliased: usize) -> (TempDir, GuestMemoryMmap, Vsock, GuestQueue) {
    let (dir, mem, dev) = device_on(|mem| {
        let vq = MockSplitQueue::create(mem, GuestAddress(0x2_0000), QUEUE_SIZE);
        let mut queues = normal_queues();
        queues[aliased] = aliased_rings_queue(mem, &vq, 100);
        queues
    });
    (dir, mem, dev, GuestQueue::new(0x4000))
}

#[test]
fn tx_used_ring_over_avail_ring_ends_the_turn_and_rekicks_the_queue() {
    let (_dir, _mem, mut dev, _) = aliased_device(TX_QUEUE);
    dev.process_tx();
    let (_, state) = dev.active_queue_states()[TX_QUEUE];
    assert_eq!(u32::from(taken(&state)), MAX_CHAINS_PER_TURN);
    // Every chain is an empty descriptor: no header, counted, nothing to answer.
    assert_eq!(dev.counters().errors, u64::from(MAX_CHAINS_PER_TURN));
    assert_eq!(dev.queue_events()[TX_QUEUE].read().unwrap(), 1);
    assert!(dev.queue_events()[RX_QUEUE].read().is_err());
}

#[test]
fn rx_used_ring_over_avail_ring_ends_the_turn_and_rekicks_the_queue() {
    let (_dir, mem, mut dev, mut tx) = aliased_device(RX_QUEUE);
    // A connection to a port nobody listens on: the device owes the guest an RST.
    let hdr = guest_hdr(5000, 999, op::REQUEST).to_bytes();
    mem.write_slice(&hdr, GuestAddress(TX_BUFS)).unwrap();
    tx.add(&mem, &[(TX_BUFS, HDR_SIZE as u32, 0)]);
    dev.process_tx();
    let (_, state) = dev.active_queue_states()[RX_QUEUE];
    assert_eq!(u32::from(taken(&state)), MAX_CHAINS_PER_TURN);
    // Every RX chain is a read-only empty descriptor: returned empty, the RST still waits.
    let c = dev.counters();
    assert_eq!(
        (c.errors, c.rx_packets),
        (u64::from(MAX_CHAINS_PER_TURN), 0)
    );
    assert_eq!(dev.queue_events()[RX_QUEUE].read().unwrap(), 1);
    assert!(dev.queue_events()[TX_QUEUE].read().is_err());
}

/// The driver makes a TX chain available after a round found the ring empty but before
/// notifications are back on: it sees NO_NOTIFY and does not notify, so the device must take
/// the packet in the same turn.
#[test]
fn tx_chain_made_available_in_an_empty_round_is_served() {
    use crate::virtio::test_utils::{notifications_on, LateChain};
    let (_dir, mem, mut dev) = device_on(|_| normal_queues());
    let mut tx = GuestQueue::new(0x4000);
    // A connection to a port nobody listens on, written but not published yet.
    let hdr = guest_hdr(5000, 999, op::REQUEST).to_bytes();
    mem.write_slice(&hdr, GuestAddress(TX_BUFS)).unwrap();
    let head = tx.add(&mem, &[(TX_BUFS, HDR_SIZE as u32, 0)]);
    mem.write_obj(0u16, GuestAddress(tx.avail() + 2)).unwrap();
    let mut late = LateChain::new(&mem, tx.avail(), tx.used());
    // A turn started by a stale kick: nothing is available yet.
    dev.process_tx_with(|| late.publish());
    assert!(late.published);
    assert_eq!(tx.take_used(&mem), vec![(head, 0)]);
    let c = dev.counters();
    assert_eq!((c.tx_packets, c.errors), (1, 0));
    assert!(notifications_on(&mem, tx.used()), "notifications off");
}

/// RX goes through the shared routine: with a packet owed and no buffer the device turns
/// notifications on (so the driver's next buffer is kicked), and a buffer that comes later is
/// filled; with nothing left to send, the device wants no kicks.
#[test]
fn rx_waits_for_a_buffer_with_notifications_on() {
    use crate::virtio::test_utils::notifications_on;
    let (_dir, mem, mut dev) = device_on(|_| normal_queues());
    let (mut rx, mut tx) = (GuestQueue::new(0), GuestQueue::new(0x4000));
    // A connection to a port nobody listens on: the device owes the guest an RST.
    let hdr = guest_hdr(5000, 999, op::REQUEST).to_bytes();
    mem.write_slice(&hdr, GuestAddress(TX_BUFS)).unwrap();
    tx.add(&mem, &[(TX_BUFS, HDR_SIZE as u32, 0)]);
    dev.process_tx();
    assert!(rx.take_used(&mem).is_empty());
    assert!(
        notifications_on(&mem, rx.used()),
        "the driver would not kick"
    );
    // The driver posts a buffer and kicks.
    let head = rx.add(&mem, &[(RX_BUFS, RX_BUF_SIZE, VRING_DESC_F_WRITE)]);
    dev.process_rx();
    assert_eq!(rx.take_used(&mem), vec![(head, HDR_SIZE as u32)]);
    let mut raw = [0u8; HDR_SIZE];
    mem.read_slice(&mut raw, GuestAddress(RX_BUFS)).unwrap();
    assert_eq!(Header::from_bytes(&raw).op, op::RST);
    assert!(
        !notifications_on(&mem, rx.used()),
        "nothing owed: no kicks wanted"
    );
    assert_eq!(dev.counters().errors, 0);
}
