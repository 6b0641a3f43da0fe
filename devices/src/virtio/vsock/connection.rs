//! One bridged connection: a guest vsock stream and the host Unix stream it is joined to.
//!
//! The state machine and the credit accounting live here, free of queues and guest memory:
//! the muxer hands a connection the guest's packets ([`Connection::recv_pkt`]) and asks it for
//! host bytes to send ([`Connection::read_host`]); the connection answers with what the muxer
//! must do next ([`Verdict`]).
//!
//! Credit (virtio 1.2, 5.10.6.3): petrel gives each connection a receive buffer of
//! [`BUF_ALLOC`] bytes for guest → host data not yet written to the host socket, and tells the
//! guest in every packet (`buf_alloc`, `fwd_cnt`). Host → guest data is read from the host
//! socket only while the guest's advertised buffer has room, so the guest never gets more than
//! it asked for, and nothing is buffered on that side.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::num::Wrapping;
use std::os::unix::net::UnixStream;

use vmm_sys_util::epoll::EventSet;

use super::packet::{op, Header, SHUTDOWN_BOTH, SHUTDOWN_RCV, SHUTDOWN_SEND};

/// Receive buffer petrel advertises per connection (bytes of guest data it will hold).
pub const BUF_ALLOC: u32 = 256 * 1024;
/// When the guest's view of petrel's free buffer drops below this, petrel sends a credit
/// update as soon as it has forwarded more bytes.
pub const CREDIT_UPDATE_THRESHOLD: u32 = 64 * 1024;

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Host-initiated: REQUEST sent to the guest, waiting for RESPONSE.
    LocalInit,
    /// Data flows (possibly only one way after a shutdown).
    Established,
}

/// What the muxer must do after the connection handled something.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing more.
    Ok,
    /// Send the guest a CREDIT_UPDATE.
    CreditUpdate,
    /// Tear the connection down and send the guest an RST.
    Reset,
    /// Tear the connection down quietly (the guest reset it).
    Close,
}

/// The result of asking for host bytes.
#[derive(Debug, PartialEq, Eq)]
pub enum HostRead {
    /// `n` bytes were read into the buffer.
    Data(usize),
    /// Nothing to read now (the socket would block).
    WouldBlock,
    /// The guest has no room: wait for its credit update.
    NoCredit,
    /// The connection does not read (not established, or that direction is shut).
    NotReading,
    /// The host closed its sending side.
    Eof,
    /// The socket failed.
    Error(io::ErrorKind),
}

/// One guest ↔ host stream.
#[derive(Debug)]
pub struct Connection {
    stream: UnixStream,
    local_port: u32,
    peer_port: u32,
    state: State,
    /// Guest bytes (after `uncounted` bytes of petrel's own) not yet written to the host.
    tx_buf: VecDeque<u8>,
    uncounted: usize,
    /// Guest bytes received, ever.
    tx_cnt: Wrapping<u32>,
    /// Guest bytes written to the host socket, ever.
    fwd_cnt: Wrapping<u32>,
    /// `fwd_cnt` as last told to the guest.
    fwd_cnt_sent: Wrapping<u32>,
    /// Host bytes sent to the guest, ever.
    rx_cnt: Wrapping<u32>,
    peer_buf_alloc: u32,
    peer_fwd_cnt: Wrapping<u32>,
    /// Shutdown flags the guest sent.
    peer_shut: u32,
    /// The host closed its sending side (and the guest was told).
    host_eof: bool,
    /// The host socket's write side was shut after the guest's SHUTDOWN_SEND.
    host_write_shut: bool,
    /// The muxer has this connection in its list of readable connections.
    pub(crate) rx_queued: bool,
    /// A CREDIT_UPDATE for this connection is waiting in the muxer.
    pub(crate) credit_queued: bool,
    /// What the event loop watches this socket for (empty: not registered).
    pub(crate) registered: EventSet,
}

impl Connection {
    /// A host-initiated connection waiting for the guest's RESPONSE.
    pub fn new_local(stream: UnixStream, local_port: u32, peer_port: u32) -> Self {
        Self::new(stream, local_port, peer_port, State::LocalInit)
    }

    /// A guest-initiated connection, established once connected on the host; `req` is the
    /// guest's REQUEST.
    pub fn new_peer(stream: UnixStream, req: &Header) -> Self {
        let mut c = Self::new(stream, req.dst_port, req.src_port, State::Established);
        c.update_peer_credit(req);
        c
    }

    fn new(stream: UnixStream, local_port: u32, peer_port: u32, state: State) -> Self {
        Self {
            stream,
            local_port,
            peer_port,
            state,
            tx_buf: VecDeque::new(),
            uncounted: 0,
            tx_cnt: Wrapping(0),
            fwd_cnt: Wrapping(0),
            fwd_cnt_sent: Wrapping(0),
            rx_cnt: Wrapping(0),
            peer_buf_alloc: 0,
            peer_fwd_cnt: Wrapping(0),
            peer_shut: 0,
            host_eof: false,
            host_write_shut: false,
            rx_queued: false,
            credit_queued: false,
            registered: EventSet::empty(),
        }
    }

    /// The host socket.
    pub fn stream(&self) -> &UnixStream {
        &self.stream
    }

    /// Gives up the host socket.
    pub fn into_stream(self) -> UnixStream {
        self.stream
    }

    /// The state.
    pub fn state(&self) -> State {
        self.state
    }

    /// Guest bytes waiting to be written to the host socket.
    pub fn pending_tx(&self) -> usize {
        self.tx_buf.len() - self.uncounted
    }

    /// Bytes the guest can still take (its buffer minus what is in flight).
    pub fn peer_free(&self) -> u32 {
        let in_flight = (self.rx_cnt - self.peer_fwd_cnt).0;
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// Takes the guest's credit from any packet header.
    pub fn update_peer_credit(&mut self, hdr: &Header) {
        self.peer_buf_alloc = hdr.buf_alloc;
        self.peer_fwd_cnt = Wrapping(hdr.fwd_cnt);
    }

    /// Fills petrel's credit into a header going to the guest and notes it as sent.
    pub fn stamp(&mut self, hdr: &mut Header) {
        hdr.buf_alloc = BUF_ALLOC;
        hdr.fwd_cnt = self.fwd_cnt.0;
        self.fwd_cnt_sent = self.fwd_cnt;
    }

    /// Whether the guest should be told that petrel's buffer has room again.
    pub fn needs_credit_update(&self) -> bool {
        let unacked = (self.tx_cnt - self.fwd_cnt_sent).0;
        let guest_view = BUF_ALLOC.saturating_sub(unacked);
        self.fwd_cnt != self.fwd_cnt_sent && guest_view < CREDIT_UPDATE_THRESHOLD
    }

    /// Whether the host socket should be read when it becomes readable.
    pub fn wants_read(&self) -> bool {
        self.state == State::Established
            && !self.host_eof
            && self.peer_shut & SHUTDOWN_RCV == 0
            && self.peer_free() > 0
            && !self.rx_queued
    }

    /// What to watch the host socket for.
    pub fn interest(&self) -> EventSet {
        let mut set = EventSet::empty();
        if self.wants_read() {
            set |= EventSet::IN;
        }
        if !self.tx_buf.is_empty() {
            set |= EventSet::OUT;
        }
        set
    }

    /// Handles a guest packet for this connection (its credit was already taken).
    pub fn recv_pkt(&mut self, hdr: &Header, payload: &[u8]) -> Verdict {
        match (hdr.op, self.state) {
            (op::RESPONSE, State::LocalInit) => {
                self.state = State::Established;
                let line = format!("OK {}\n", self.local_port);
                self.tx_buf.extend(line.as_bytes());
                self.uncounted = self.tx_buf.len();
                self.flush()
            }
            (op::RW, State::Established) => {
                if self.peer_shut & SHUTDOWN_SEND != 0 {
                    return Verdict::Reset;
                }
                // The guest must respect petrel's credit; one that does not is reset.
                if self.pending_tx() + payload.len() > BUF_ALLOC as usize {
                    return Verdict::Reset;
                }
                self.tx_buf.extend(payload);
                // Fits in u32: bounded by BUF_ALLOC above.
                self.tx_cnt += Wrapping(payload.len() as u32);
                self.flush()
            }
            (op::CREDIT_UPDATE, State::Established) => Verdict::Ok,
            (op::CREDIT_REQUEST, State::Established) => Verdict::CreditUpdate,
            (op::SHUTDOWN, State::Established) => {
                self.peer_shut |= hdr.flags & SHUTDOWN_BOTH;
                self.flush()
            }
            (op::RST, _) => Verdict::Close,
            _ => Verdict::Reset,
        }
    }

    /// Writes buffered guest bytes to the host socket (also called when it is writable),
    /// then applies a pending shutdown.
    pub fn flush(&mut self) -> Verdict {
        while !self.tx_buf.is_empty() {
            let (front, _) = self.tx_buf.as_slices();
            match (&self.stream).write(front) {
                Ok(0) => return Verdict::Reset,
                Ok(n) => {
                    self.tx_buf.drain(..n);
                    let own = n.min(self.uncounted);
                    self.uncounted -= own;
                    // n - own <= BUF_ALLOC.
                    self.fwd_cnt += Wrapping((n - own) as u32);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Verdict::Reset,
            }
        }
        if self.tx_buf.is_empty() {
            if self.peer_shut == SHUTDOWN_BOTH {
                // The guest closed; the RST completes its close.
                return Verdict::Reset;
            }
            if self.peer_shut & SHUTDOWN_SEND != 0 {
                if self.host_eof {
                    return Verdict::Reset;
                }
                if !self.host_write_shut {
                    self.host_write_shut = true;
                    // A peer that already went away is found out on the next read.
                    let _ = self.stream.shutdown(Shutdown::Write);
                }
            }
        }
        if self.needs_credit_update() {
            Verdict::CreditUpdate
        } else {
            Verdict::Ok
        }
    }

    /// Reads host bytes for one RW packet of at most `buf.len()` bytes.
    pub fn read_host(&mut self, buf: &mut [u8]) -> HostRead {
        if self.state != State::Established || self.host_eof || self.peer_shut & SHUTDOWN_RCV != 0 {
            return HostRead::NotReading;
        }
        let limit = buf.len().min(self.peer_free() as usize);
        if limit == 0 {
            return HostRead::NoCredit;
        }
        loop {
            match (&self.stream).read(&mut buf[..limit]) {
                Ok(0) => {
                    self.host_eof = true;
                    return HostRead::Eof;
                }
                Ok(n) => {
                    // n <= limit <= peer_free, a u32.
                    self.rx_cnt += Wrapping(n as u32);
                    return HostRead::Data(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return HostRead::WouldBlock,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return HostRead::Error(e.kind()),
            }
        }
    }

    /// After the host's EOF: whether the connection is finished (the guest has also shut its
    /// sending side and everything was written), so the guest gets an RST rather than a
    /// SHUTDOWN.
    pub fn done_after_host_eof(&self) -> bool {
        self.peer_shut & SHUTDOWN_SEND != 0 && self.tx_buf.is_empty()
    }

    /// The header of a packet from this connection to the guest, with petrel's credit.
    pub fn header(&mut self, guest_cid: u64, op: u16) -> Header {
        let mut hdr = Header::to_guest(guest_cid, self.local_port, self.peer_port, op);
        self.stamp(&mut hdr);
        hdr
    }

    /// Bytes written to the guest, ever (wrapping).
    #[cfg(test)]
    pub fn rx_cnt(&self) -> u32 {
        self.rx_cnt.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::vsock::packet::TYPE_STREAM;

    fn guest(op: u16, len: usize) -> Header {
        Header {
            src_cid: 3,
            dst_cid: 2,
            src_port: 5000,
            dst_port: 1024,
            len: len as u32,
            type_: TYPE_STREAM,
            op,
            flags: 0,
            buf_alloc: 1000,
            fwd_cnt: 0,
        }
    }

    fn pair() -> (UnixStream, UnixStream) {
        let (a, b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        b.set_nonblocking(true).unwrap();
        (a, b)
    }

    fn read_all(s: &UnixStream) -> Vec<u8> {
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = (&*s).read(&mut buf) {
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        out
    }

    fn established() -> (Connection, UnixStream) {
        let (a, b) = pair();
        let mut c = Connection::new_local(a, 1024, 5000);
        let h = guest(op::RESPONSE, 0);
        c.update_peer_credit(&h);
        assert_eq!(c.recv_pkt(&h, &[]), Verdict::Ok);
        assert_eq!(read_all(&b), b"OK 1024\n");
        (c, b)
    }

    #[test]
    fn local_init_needs_response_before_data() {
        let (a, _b) = pair();
        let mut c = Connection::new_local(a, 1024, 5000);
        assert_eq!(c.state(), State::LocalInit);
        assert_eq!(c.interest(), EventSet::empty());
        assert_eq!(c.recv_pkt(&guest(op::RW, 1), b"x"), Verdict::Reset);
        assert_eq!(c.read_host(&mut [0u8; 8]), HostRead::NotReading);
        let (mut c, _b) = established();
        assert_eq!(c.state(), State::Established);
        // A second RESPONSE or a REQUEST on a live connection is a protocol error.
        assert_eq!(c.recv_pkt(&guest(op::RESPONSE, 0), &[]), Verdict::Reset);
        assert_eq!(c.recv_pkt(&guest(op::REQUEST, 0), &[]), Verdict::Reset);
        assert_eq!(c.recv_pkt(&guest(99, 0), &[]), Verdict::Reset);
        assert_eq!(c.recv_pkt(&guest(op::RST, 0), &[]), Verdict::Close);
    }

    #[test]
    fn guest_data_reaches_host_and_counts_forwarded() {
        let (mut c, b) = established();
        assert_eq!(c.recv_pkt(&guest(op::RW, 5), b"hello"), Verdict::Ok);
        assert_eq!(read_all(&b), b"hello");
        // The OK line is not guest data.
        let h = c.header(3, op::CREDIT_UPDATE);
        assert_eq!((h.buf_alloc, h.fwd_cnt), (BUF_ALLOC, 5));
        assert_eq!((h.src_port, h.dst_port, h.dst_cid), (1024, 5000, 3));
    }

    #[test]
    fn host_data_respects_guest_credit() {
        let (mut c, b) = established();
        (&b).write_all(&[7u8; 3000]).unwrap();
        let mut buf = [0u8; 4096];
        assert!(c.wants_read());
        assert_eq!(c.read_host(&mut buf), HostRead::Data(1000));
        assert_eq!(c.peer_free(), 0);
        assert!(!c.wants_read());
        assert_eq!(c.read_host(&mut buf), HostRead::NoCredit);
        // The guest consumed 600 bytes.
        let mut upd = guest(op::CREDIT_UPDATE, 0);
        upd.fwd_cnt = 600;
        c.update_peer_credit(&upd);
        assert_eq!(c.recv_pkt(&upd, &[]), Verdict::Ok);
        assert_eq!(c.read_host(&mut buf), HostRead::Data(600));
        assert_eq!(c.rx_cnt(), 1600);
        // A guest claiming to have consumed more than it got gets no extra credit.
        upd.fwd_cnt = 5000;
        c.update_peer_credit(&upd);
        assert_eq!(c.peer_free(), 0);
        assert_eq!(
            c.recv_pkt(&guest(op::CREDIT_REQUEST, 0), &[]),
            Verdict::CreditUpdate
        );
    }

    #[test]
    fn host_eof_and_guest_shutdown() {
        let (mut c, b) = established();
        drop(b);
        assert_eq!(c.read_host(&mut [0u8; 16]), HostRead::Eof);
        assert!(!c.wants_read());
        assert!(!c.done_after_host_eof());
        let mut sd = guest(op::SHUTDOWN, 0);
        sd.flags = SHUTDOWN_SEND;
        assert_eq!(c.recv_pkt(&sd, &[]), Verdict::Reset);

        let (mut c, b) = established();
        sd.flags = SHUTDOWN_SEND;
        assert_eq!(c.recv_pkt(&sd, &[]), Verdict::Ok);
        // The host sees EOF; the guest may still receive.
        assert_eq!(read_all(&b), b"");
        assert_eq!(c.recv_pkt(&guest(op::RW, 1), b"x"), Verdict::Reset);
        sd.flags = SHUTDOWN_BOTH;
        assert_eq!(c.recv_pkt(&sd, &[]), Verdict::Reset);
    }

    #[test]
    fn guest_overrunning_credit_is_reset_and_buffer_bounded() {
        let (a, b) = pair();
        // Fill the host socket so that nothing more can be written.
        let filler = vec![0u8; 64 * 1024];
        while (&b).write(&filler).is_ok() {}
        let mut c = Connection::new_local(b, 1024, 5000);
        let h = guest(op::RESPONSE, 0);
        c.recv_pkt(&h, &[]);
        let chunk = vec![1u8; 64 * 1024];
        for _ in 0..4 {
            let v = c.recv_pkt(&guest(op::RW, chunk.len()), &chunk);
            assert_ne!(v, Verdict::Reset);
        }
        assert_eq!(c.pending_tx(), BUF_ALLOC as usize);
        assert!(c.interest().contains(EventSet::OUT));
        assert_eq!(c.recv_pkt(&guest(op::RW, 1), b"x"), Verdict::Reset);
        // The host drains its socket: petrel writes the rest and has credit to give back.
        drop(read_all(&a));
        let mut v = c.flush();
        while c.pending_tx() > 0 {
            drop(read_all(&a));
            v = c.flush();
        }
        assert_eq!(v, Verdict::CreditUpdate);
        assert!(!c.interest().contains(EventSet::OUT));
        let h = c.header(3, op::CREDIT_UPDATE);
        assert_eq!(h.fwd_cnt, BUF_ALLOC);
        assert!(!c.needs_credit_update());
    }
}
