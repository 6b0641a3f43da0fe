//! Deadlines for host connections (with a short timeout instead of the default 2 s) and the
//! paused listening socket.

use std::time::Instant;

use super::*;

/// A rig whose host connections time out after `ms` milliseconds.
fn rig_with_timeout(ms: u64) -> Rig {
    let rig = Rig::new(16);
    rig.dev
        .lock()
        .unwrap()
        .set_host_timeout(Duration::from_millis(ms));
    rig
}

impl Rig {
    fn timer_period(&self) -> Option<Duration> {
        self.dev.lock().unwrap().timer.period()
    }

    fn active(&self) -> usize {
        self.dev.lock().unwrap().active_connections()
    }

    /// Runs the event loop until no connection is left (or gives up).
    fn run_until_no_connections(&mut self) {
        for _ in 0..200 {
            self.manager.run_with_timeout(20).unwrap();
            if self.active() == 0 {
                self.collect();
                return;
            }
        }
        panic!("{} connections still open", self.active());
    }
}

/// The host side was closed by petrel: EOF (or a reset, if petrel left bytes unread).
fn assert_closed(host: &UnixStream) {
    host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut rest = Vec::new();
    match (&*host).read_to_end(&mut rest) {
        Ok(_) => assert!(rest.is_empty()),
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset),
    }
}

#[test]
fn silent_host_connections_are_closed_after_the_timeout() {
    // Long enough that both are seen open on a loaded machine.
    let mut rig = rig_with_timeout(200);
    // Nothing pending: the timer is off and the loop idle.
    assert_eq!(rig.timer_period(), None);
    assert_eq!(rig.manager.run_with_timeout(30).unwrap(), 0);
    let start = Instant::now();
    let silent = UnixStream::connect(rig.path()).unwrap();
    let partial = UnixStream::connect(rig.path()).unwrap();
    (&partial).write_all(b"CONNECT 5").unwrap();
    rig.manager.run_with_timeout(20).unwrap();
    rig.manager.run_with_timeout(20).unwrap();
    assert_eq!(rig.active(), 2);
    assert_eq!(rig.timer_period(), Some(Duration::from_millis(50)));
    rig.run_until_no_connections();
    assert!(start.elapsed() >= Duration::from_millis(200));
    assert_closed(&silent);
    assert_closed(&partial);
    assert!(rig.inbox.is_empty(), "the guest never heard of them");
    let c = rig.counters();
    assert_eq!(
        (c.timeouts, c.refused, c.connections, c.errors),
        (2, 0, 0, 0)
    );
    let values = rig.dev.lock().unwrap().counter_values();
    assert!(values.contains(&("timeouts", 2)), "{values:?}");
    // Nothing left to wait for: the timer is off again and the loop idle.
    assert_eq!(rig.timer_period(), None);
    assert_eq!(rig.manager.run_with_timeout(50).unwrap(), 0);
}

#[test]
fn unanswered_request_is_reset() {
    let mut rig = rig_with_timeout(60);
    let host = UnixStream::connect(rig.path()).unwrap();
    (&host).write_all(b"CONNECT 52\n").unwrap();
    let start = Instant::now();
    let (req, _) = rig.recv();
    assert_eq!(req.op, op::REQUEST);
    let port = req.src_port;
    // The guest never answers: petrel gives up, closes the host side and resets the guest's.
    let (rst, _) = rig.recv();
    assert!(start.elapsed() >= Duration::from_millis(60));
    assert_eq!(rst.op, op::RST);
    assert_eq!(
        (rst.src_cid, rst.dst_cid, rst.src_port, rst.dst_port),
        (2, GUEST_CID, port, 52)
    );
    assert_closed(&host);
    assert_eq!(rig.active(), 0);
    let c = rig.counters();
    assert_eq!(
        (c.timeouts, c.connections, c.resets, c.errors),
        (1, 1, 1, 0)
    );
    assert_eq!(rig.timer_period(), None);
    // A RESPONSE that comes too late is answered with an RST.
    rig.send(guest_hdr(52, port, op::RESPONSE), &[]);
    let (hdr, _) = rig.recv();
    assert_eq!((hdr.op, hdr.src_port, hdr.dst_port), (op::RST, port, 52));
    assert_eq!(rig.counters().timeouts, 1);
}

#[test]
fn answered_connections_outlive_the_timeout() {
    let mut rig = rig_with_timeout(40);
    let (host, port) = rig.host_connect(52);
    // Established: nothing to time out, the timer is off.
    assert_eq!(rig.timer_period(), None);
    std::thread::sleep(Duration::from_millis(100));
    rig.run();
    rig.round_trip(&host, (52, port), b"ping", b"pong");
    // A guest that refuses a REQUEST in time: closed as a refusal, not a timeout.
    let refused = UnixStream::connect(rig.path()).unwrap();
    (&refused).write_all(b"CONNECT 53\n").unwrap();
    let (req, _) = rig.recv();
    rig.send(guest_hdr(53, req.src_port, op::RST), &[]);
    assert_closed(&refused);
    assert_eq!(rig.timer_period(), None);
    let c = rig.counters();
    assert_eq!((c.timeouts, c.connections, c.errors), (0, 2, 0));
    assert_eq!(rig.active(), 1);
}

#[test]
fn listener_out_of_fds_is_paused_until_the_next_tick() {
    // A long enough period that the paused listener is seen unwatched before the tick.
    let mut rig = rig_with_timeout(800);
    {
        let mut dev = rig.dev.lock().unwrap();
        dev.muxer
            .accept_failed(&io::Error::from_raw_os_error(libc::EMFILE));
        // Applied by the event loop, like a failure inside `accept`.
        dev.kick.write(1).unwrap();
    }
    let paused = Instant::now();
    rig.manager.run_with_timeout(20).unwrap();
    assert_eq!(rig.timer_period(), Some(Duration::from_millis(200)));
    assert_eq!(rig.counters().errors, 1);
    // The pending connection leaves the listener readable, but it is not watched: no spin.
    let host = UnixStream::connect(rig.path()).unwrap();
    host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    (&host).write_all(b"CONNECT 52\n").unwrap();
    assert_eq!(rig.manager.run_with_timeout(20).unwrap(), 0);
    assert_eq!(rig.active(), 0);
    // The tick watches it again and the connection goes through.
    let (req, _) = rig.recv();
    assert!(paused.elapsed() >= Duration::from_millis(150));
    assert_eq!((req.op, req.dst_port), (op::REQUEST, 52));
    rig.send(guest_hdr(52, req.src_port, op::RESPONSE), &[]);
    assert_eq!(read_line(&host), format!("OK {}", req.src_port));
    let c = rig.counters();
    assert_eq!((c.errors, c.timeouts, c.connections), (1, 0, 1));
    assert_eq!(rig.timer_period(), None);
}
