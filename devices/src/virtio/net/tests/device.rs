//! Device-level behaviour: features, config space, MAC, activation, tap errors.

use super::*;

#[test]
fn features_and_config_space() {
    let rig = Rig::new();
    let net = &rig.net;
    assert_eq!(net.device_type(), 1);
    assert_eq!(net.queue_max_sizes(), &[256, 256]);
    let f = net.features();
    for bit in [
        VIRTIO_NET_F_CSUM,
        VIRTIO_NET_F_GUEST_CSUM,
        VIRTIO_NET_F_GUEST_TSO4,
        VIRTIO_NET_F_GUEST_TSO6,
        VIRTIO_NET_F_HOST_TSO4,
        VIRTIO_NET_F_HOST_TSO6,
        VIRTIO_NET_F_MAC,
        VIRTIO_NET_F_MRG_RXBUF,
        VIRTIO_NET_F_STATUS,
    ] {
        assert_ne!(f & (1 << bit), 0, "feature {bit}");
    }
    assert_ne!(f & VIRTIO_F_VERSION_1, 0);
    // No control queue, so nothing that needs one.
    assert_eq!(
        f & (1 << virtio_bindings::virtio_net::VIRTIO_NET_F_CTRL_VQ),
        0
    );
    let mut mac = [0u8; 6];
    net.read_config(0, &mut mac);
    assert_eq!(mac, net.mac());
    let mut status = [0u8; 2];
    net.read_config(6, &mut status);
    assert_eq!(u16::from_le_bytes(status), VIRTIO_NET_S_LINK_UP as u16);
    // Reads past the end are zeroes, never a panic.
    let mut tail = [0xffu8; 8];
    net.read_config(CONFIG_SPACE_SIZE as u64 - 2, &mut tail);
    assert_eq!(tail[2..], [0; 6]);
    net.read_config(u64::MAX, &mut tail);
    assert_eq!(tail, [0; 8]);
}

#[test]
fn config_writes_change_nothing() {
    let mut rig = Rig::new();
    let before = rig.net.mac();
    rig.net.write_config(0, &[0x02, 0, 0, 0, 0, 1]);
    rig.net.write_config(u64::MAX, &[1]);
    let mut mac = [0u8; 6];
    rig.net.read_config(0, &mut mac);
    assert_eq!(mac, before);
}

#[test]
fn mac_is_derived_from_the_id_or_configured() {
    let a = mac_from_id("net0");
    assert_eq!(a, mac_from_id("net0"));
    assert_ne!(a, mac_from_id("net1"));
    // Locally administered, unicast.
    assert_eq!(a[0], 0x06);
    // The derivation is fixed: a change would give every guest a new address.
    assert_eq!(format_mac(&mac_from_id("net0")), format_mac(&a));
    assert_eq!(format_mac(&mac_from_id("")), "06:cb:f2:9c:e4:84");
    assert_eq!(Rig::new().net.mac(), a);

    let mut cfg = config("net0");
    cfg.mac = Some([0x52, 0x54, 0, 0x12, 0x34, 0x56]);
    assert_eq!(
        Rig::with_config(cfg.clone()).net.mac(),
        [0x52, 0x54, 0, 0x12, 0x34, 0x56]
    );
    for bad in [[0x01, 0, 0, 0, 0, 1], [0; 6], [0xff; 6]] {
        cfg.mac = Some(bad);
        let (_, sock) = socket_pair();
        let e = Net::with_tap(Tap::from_socket(sock), &cfg).unwrap_err();
        assert!(matches!(e, NetError::InvalidMac { .. }), "{e}");
        assert!(e.to_string().contains("net0"), "{e}");
    }
}

#[test]
fn offloads_follow_the_guest_features() {
    let f = |bits: &[u32]| bits.iter().fold(0u64, |f, &b| f | (1 << b));
    assert_eq!(tap_offload_flags(0), 0);
    assert_eq!(
        tap_offload_flags(f(&[VIRTIO_NET_F_GUEST_CSUM])),
        libc::TUN_F_CSUM
    );
    assert_eq!(
        tap_offload_flags(f(&[
            VIRTIO_NET_F_GUEST_CSUM,
            VIRTIO_NET_F_GUEST_TSO4,
            VIRTIO_NET_F_GUEST_TSO6
        ])),
        libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6
    );
    // TSO without checksum offload is meaningless to the tap.
    assert_eq!(tap_offload_flags(f(&[VIRTIO_NET_F_GUEST_TSO4])), 0);
    // Host-side features do not change what the tap may hand us.
    assert_eq!(
        tap_offload_flags(f(&[VIRTIO_NET_F_CSUM, VIRTIO_NET_F_HOST_TSO4])),
        0
    );
}

#[test]
fn activation_needs_both_queues_ready() {
    let mut rig = Rig::new();
    let mem = rig.mem.clone();
    let ctx = |queues| ActivateContext {
        mem: mem.clone(),
        queues,
        acked_features: FEATURES_NO_MERGE,
        interrupt: rig.int.clone(),
    };
    let (_, rxq) = DriverQueue::new(&mem, RX_RING);
    let e = rig.net.activate(ctx(vec![rxq])).unwrap_err();
    assert!(matches!(e, ActivateError::BadQueue(_)), "{e}");
    let (_, rxq) = DriverQueue::new(&mem, RX_RING);
    let (_, mut txq) = DriverQueue::new(&mem, TX_RING);
    txq.set_ready(false);
    let e = rig.net.activate(ctx(vec![rxq, txq])).unwrap_err();
    assert!(matches!(e, ActivateError::BadQueue(_)), "{e}");
    assert!(!rig.net.is_activated());
    rig.activate(FEATURES_NO_MERGE);
    assert!(rig.net.is_activated());
    assert_eq!(rig.net.acked_features(), FEATURES_NO_MERGE);
}

#[test]
fn activation_kicks_both_queues_once() {
    let mut rig = Rig::new();
    // A chain posted (and kicked) before DRIVER_OK is served once the event loop sees these.
    rig.put(BUF, &packet(60, 1));
    rig.add_chain(TX_QUEUE, &[(BUF, 72, R)]);
    let (_, rxq) = DriverQueue::new(&rig.mem, RX_RING);
    let (_, txq) = DriverQueue::new(&rig.mem, TX_RING);
    let int = rig.int.clone();
    activate_with(
        &mut rig.net,
        &rig.mem,
        vec![rxq, txq],
        FEATURES_NO_MERGE,
        int,
    );
    for evt in rig.net.queue_events() {
        assert_eq!(evt.read().unwrap(), 1);
    }
}

#[test]
fn counters_by_name() {
    let mut rig = Rig::new();
    rig.activate(FEATURES_NO_MERGE);
    rig.put(BUF, &packet(60, 2));
    rig.add_chain(TX_QUEUE, &[(BUF, 72, R)]);
    rig.net.process_tx();
    let values = rig.net.counter_values();
    let names: Vec<_> = values.iter().map(|(n, _)| *n).collect();
    assert_eq!(
        names,
        [
            "rx_packets",
            "rx_bytes",
            "rx_errors",
            "rx_dropped",
            "rx_throttled",
            "tx_packets",
            "tx_bytes",
            "tx_errors",
            "tx_dropped",
            "tx_throttled"
        ]
    );
    assert!(values.contains(&("tx_packets", 1)));
    assert!(values.contains(&("tx_bytes", 60)));
}

#[test]
fn tap_errors_say_what_is_wrong() {
    for name in ["", "sixteen-chars-xx", "a\0b"] {
        let e = Tap::open_named(name).unwrap_err();
        assert!(matches!(e, TapError::InvalidName(_)), "{e}");
    }
    let e = Tap::from_fd(-1).unwrap_err();
    assert!(matches!(e, TapError::Dup { fd: -1, .. }), "{e}");
    let null = std::fs::File::open("/dev/null").unwrap();
    let e = Tap::from_fd(null.as_raw_fd()).unwrap_err();
    assert!(matches!(e, TapError::NotTun { .. }), "{e}");
    // The caller's descriptor stays open.
    assert!(null.metadata().is_ok());
    let mut cfg = config("net7");
    cfg.tap = TapSource::Fd(null.as_raw_fd());
    let e = Net::new(cfg).unwrap_err();
    assert!(matches!(e, NetError::Tap { .. }), "{e}");
    assert!(e.to_string().contains("net7"), "{e}");
}

/// The driver makes a TX chain available after a round found the ring empty but before
/// notifications are back on: it sees NO_NOTIFY and does not notify, so the device must send
/// the frame in the same turn.
#[test]
fn tx_chain_made_available_in_an_empty_round_is_served() {
    use crate::virtio::test_utils::{notifications_on, LateChain};
    let mut rig = Rig::new();
    rig.activate(FEATURES_NO_MERGE);
    let p = packet(60, 3);
    rig.put(BUF, &p);
    rig.add_chain(TX_QUEUE, &[(BUF, p.len() as u32, R)]);
    // The chain is written but not published yet (avail idx back to 0).
    let (mem, avail, used) = (rig.mem.clone(), rig.tx.avail, rig.tx.used);
    mem.write_obj(0u16, GuestAddress(avail + 2)).unwrap();
    let mut late = LateChain::new(&mem, avail, used);
    // A turn started by a stale kick: nothing is available yet.
    rig.net.process_tx_with(|| late.publish());
    assert!(late.published);
    assert_eq!(rig.recv().unwrap(), p);
    assert_eq!(rig.used_idx(TX_QUEUE), 1);
    assert_eq!(rig.net.counters().tx_errors, 0);
    assert!(notifications_on(&mem, used), "notifications off");
    assert_eq!(rig.int.take(), vec![InterruptKind::Queue(TX_QUEUE)]);
}
