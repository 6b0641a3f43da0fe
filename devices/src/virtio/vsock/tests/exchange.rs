//! Full exchanges: host-initiated and guest-initiated connections, data both ways, credit,
//! back-pressure, shutdown, reset.

use super::*;

#[test]
fn host_initiated_exchange_and_shutdown() {
    let mut rig = Rig::new(16);
    let (host, port) = rig.host_connect(52);
    // Guest → host, host → guest.
    let hdr = rig.round_trip(&host, (52, port), b"ping", b"pong");
    assert_eq!(
        (hdr.src_port, hdr.dst_port, hdr.dst_cid),
        (port, 52, GUEST_CID)
    );
    assert_eq!(hdr.fwd_cnt, 4, "petrel forwarded the guest's 4 bytes");
    // The host closes: the guest is told that the host sends no more.
    drop(host);
    let (hdr, _) = rig.recv();
    assert_eq!((hdr.op, hdr.flags), (op::SHUTDOWN, SHUTDOWN_SEND));
    // The guest closes too: petrel completes the close with an RST.
    let mut sd = guest_hdr(52, port, op::SHUTDOWN);
    sd.flags = SHUTDOWN_BOTH;
    rig.send(sd, &[]);
    let (hdr, _) = rig.recv();
    assert_eq!(hdr.op, op::RST);
    let c = rig.counters();
    assert_eq!((c.connections, c.resets, c.errors), (1, 1, 0));
    assert_eq!((c.tx_bytes, c.rx_bytes), (4, 4));
    assert_eq!(rig.dev.lock().unwrap().active_connections(), 0);
}

#[test]
fn guest_shutdown_reaches_host_as_eof_and_guest_rst_closes() {
    let mut rig = Rig::new(16);
    let (host, port) = rig.host_connect(7);
    let mut sd = guest_hdr(7, port, op::SHUTDOWN);
    sd.flags = SHUTDOWN_SEND;
    rig.send(sd, &[]);
    let mut rest = Vec::new();
    (&host).read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
    // The other direction still works.
    (&host).write_all(b"late").unwrap();
    let (hdr, data) = rig.recv();
    assert_eq!((hdr.op, data.as_slice()), (op::RW, &b"late"[..]));
    rig.send(guest_hdr(7, port, op::RST), &[]);
    assert!(rig.inbox.is_empty());
    assert_eq!(rig.counters().resets, 0);
    (&host).write_all(b"x").ok();
    // The host socket was closed by petrel.
    let mut b = [0u8; 1];
    host.set_nonblocking(false).unwrap();
    assert!(matches!((&host).read(&mut b), Ok(0) | Err(_)));
}

#[test]
fn guest_initiated_connection_to_a_listener() {
    let mut rig = Rig::new(16);
    let listener = UnixListener::bind(host::port_path(&rig.path(), 1234)).unwrap();
    rig.send(guest_hdr(5000, 1234, op::REQUEST), &[]);
    let (hdr, _) = rig.recv();
    assert_eq!(hdr.op, op::RESPONSE);
    assert_eq!((hdr.src_port, hdr.dst_port), (1234, 5000));
    assert_eq!(hdr.buf_alloc, BUF_ALLOC);
    let (peer, _) = listener.accept().unwrap();
    peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    rig.round_trip(&peer, (5000, 1234), b"hello", b"world");
    // The guest resets: the host side sees EOF.
    rig.send(guest_hdr(5000, 1234, op::RST), &[]);
    let mut rest = Vec::new();
    (&peer).read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
    assert_eq!(rig.counters().connections, 1);
}

#[test]
fn guest_connect_without_listener_gets_rst() {
    let mut rig = Rig::new(4);
    rig.send(guest_hdr(5000, 999, op::REQUEST), &[]);
    let (hdr, _) = rig.recv();
    assert_eq!(hdr.op, op::RST);
    assert_eq!((hdr.src_port, hdr.dst_port), (999, 5000));
    let c = rig.counters();
    assert_eq!((c.refused, c.resets, c.errors, c.connections), (1, 1, 0, 0));
}

#[test]
fn host_data_waits_for_rx_buffers_and_guest_credit() {
    let mut rig = Rig::new(4);
    let (host, _) = rig.host_connect(52);
    // 3 RX buffers are left: host data beyond them waits in the host socket.
    let data: Vec<u8> = (0..20_000u32).map(|i| i as u8).collect();
    (&host).write_all(&data).unwrap();
    rig.run();
    rig.run();
    assert_eq!(rig.inbox.len(), 3);
    // Not watching the socket while the guest has no buffers: the loop is idle.
    assert_eq!(rig.manager.run_with_timeout(50).unwrap(), 0);
    rig.post_rx(8, true);
    rig.run();
    let got: Vec<u8> = rig.inbox.drain(..).flat_map(|(_, d)| d).collect();
    assert_eq!(got, data);
    // The guest's buffer is small: only its credit is sent, then petrel waits.
    let mut rig = Rig::new(32);
    let (host, port2) = rig.host_connect(53);
    let mut upd = guest_hdr(53, port2, op::CREDIT_UPDATE);
    upd.buf_alloc = 1000;
    rig.send(upd, &[]);
    (&host).write_all(&data[..3000]).unwrap();
    rig.run();
    let got: usize = rig.inbox.drain(..).map(|(_, d)| d.len()).sum();
    assert_eq!(got, 1000);
    upd.fwd_cnt = 1000;
    rig.send(upd, &[]);
    rig.run();
    let got: usize = rig.inbox.drain(..).map(|(_, d)| d.len()).sum();
    assert_eq!(got, 1000);
}

#[test]
fn credit_request_gets_credit_update() {
    let mut rig = Rig::new(8);
    let (host, port) = rig.host_connect(9);
    rig.send(guest_hdr(9, port, op::RW), &[1u8; 300]);
    let mut buf = [0u8; 300];
    (&host).read_exact(&mut buf).unwrap();
    rig.send(guest_hdr(9, port, op::CREDIT_REQUEST), &[]);
    let (hdr, _) = rig.recv();
    assert_eq!(hdr.op, op::CREDIT_UPDATE);
    assert_eq!((hdr.buf_alloc, hdr.fwd_cnt), (BUF_ALLOC, 300));
}

#[test]
fn guest_data_beyond_a_slow_host_is_buffered_then_credited() {
    let mut rig = Rig::new(32);
    let (host, port) = rig.host_connect(11);
    // The host does not read at first: petrel writes what the socket takes, buffers the rest
    // (within its credit), and sends credit updates as the host drains.
    let chunk = vec![0x5au8; 64 * 1024];
    for _ in 0..(BUF_ALLOC as usize / chunk.len()) {
        rig.send(guest_hdr(11, port, op::RW), &chunk);
    }
    let reader = std::thread::spawn(move || {
        let mut total = 0;
        let mut buf = vec![0u8; 65536];
        while total < BUF_ALLOC as usize {
            total += (&host).read(&mut buf).unwrap();
        }
        (total, host)
    });
    for _ in 0..100 {
        rig.run();
        if reader.is_finished() {
            break;
        }
    }
    let (total, _host) = reader.join().unwrap();
    assert_eq!(total, BUF_ALLOC as usize);
    rig.run();
    let upd = rig
        .inbox
        .drain(..)
        .rev()
        .find(|(h, _)| h.op == op::CREDIT_UPDATE)
        .map(|(h, _)| h)
        .expect("credit update");
    // The guest, having sent BUF_ALLOC bytes, has room for more than a packet again.
    let room = upd.buf_alloc - (BUF_ALLOC - upd.fwd_cnt);
    assert!(room >= connection::CREDIT_UPDATE_THRESHOLD, "{room}");
    rig.send(guest_hdr(11, port, op::CREDIT_REQUEST), &[]);
    let (hdr, _) = rig.recv();
    assert_eq!((hdr.op, hdr.fwd_cnt), (op::CREDIT_UPDATE, BUF_ALLOC));
    assert_eq!(rig.counters().errors, 0);
}

#[test]
fn reset_closes_host_connections() {
    let mut rig = Rig::new(8);
    let (host, _) = rig.host_connect(52);
    rig.dev.lock().unwrap().reset();
    rig.run();
    assert!(!rig.dev.lock().unwrap().is_activated());
    let mut rest = Vec::new();
    (&host).read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
    assert_eq!(rig.dev.lock().unwrap().active_connections(), 0);
}
