//! The MMDS on the wire: a [`LocalResponder`] that takes the guest's ARP frames for the MMDS
//! address and its IPv4 frames to it, runs them through smoltcp (ARP, IPv4, TCP: a maintained
//! stack, rather than a TCP state machine of petrel's own — retransmission, windows, FIN/RST
//! handling and sequence checks are where hand-written stacks go wrong), and serves HTTP on
//! port 80 from [`super::http`]. Up to [`CONNECTIONS`] connections at once; each may carry
//! several requests (keep-alive) until the guest closes it.
//!
//! The stack is driven by the guest's frames: it is polled when one arrives, and the frames it
//! makes wait in a queue the device drains into the RX ring. Answers are sent in full at once
//! (smoltcp's window allowing), so no timer is needed while the guest is responsive.

use std::collections::VecDeque;
use std::net::Ipv4Addr;

use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{self, Checksum, ChecksumCapabilities, Device, DeviceCapabilities, Medium};
use smoltcp::socket::tcp;
use smoltcp::time::Instant as SmolInstant;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpAddress, IpCidr};

use super::http::{self, Parse};
use super::SharedMmds;
use crate::virtio::net::LocalResponder;

/// The MMDS's own MAC (locally administered).
pub const MMDS_MAC: [u8; 6] = [0x06, 0x01, 0x23, 0x45, 0x67, 0x01];
/// Connections served at once.
pub const CONNECTIONS: usize = 8;
/// Bytes of each connection's receive and send buffers.
const BUFFER: usize = 64 * 1024;
/// Frames waiting for the guest beyond which new ones are dropped (the guest retransmits).
const MAX_QUEUED: usize = 1024;
const HTTP_PORT: u16 = 80;
const ETHERTYPE_ARP: u16 = 0x0806;
const ETHERTYPE_IPV4: u16 = 0x0800;

/// Frames in and out of a smoltcp interface (also the "guest" side of the tests).
#[derive(Default)]
pub(crate) struct Frames {
    /// Frames for the interface.
    pub(crate) from_guest: VecDeque<Vec<u8>>,
    /// Frames the interface sent.
    pub(crate) to_guest: VecDeque<Vec<u8>>,
}

pub(crate) struct RxToken(Vec<u8>);

impl phy::RxToken for RxToken {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

pub(crate) struct TxToken<'a>(&'a mut VecDeque<Vec<u8>>);

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut buf = vec![0u8; len];
        let r = f(&mut buf);
        if self.0.len() < MAX_QUEUED {
            self.0.push_back(buf);
        }
        r
    }
}

impl Device for Frames {
    type RxToken<'a> = RxToken;
    type TxToken<'a> = TxToken<'a>;

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = 1514;
        // The guest may send partially checksummed frames (checksum offload): do not check
        // what arrives, complete what leaves.
        let mut sums = ChecksumCapabilities::default();
        sums.ipv4 = Checksum::Tx;
        sums.tcp = Checksum::Tx;
        caps.checksum = sums;
        caps
    }

    fn receive(&mut self, _t: SmolInstant) -> Option<(RxToken, TxToken<'_>)> {
        let frame = self.from_guest.pop_front()?;
        Some((RxToken(frame), TxToken(&mut self.to_guest)))
    }

    fn transmit(&mut self, _t: SmolInstant) -> Option<TxToken<'_>> {
        Some(TxToken(&mut self.to_guest))
    }
}

/// One connection: its socket, the request bytes received and not yet answered, the answer
/// bytes not yet sent.
struct Connection {
    handle: SocketHandle,
    request: Vec<u8>,
    pending: Vec<u8>,
    close_after: bool,
}

/// The MMDS as one net device sees it.
pub struct MmdsStack {
    mmds: SharedMmds,
    ip: Ipv4Addr,
    frames: Frames,
    iface: Interface,
    sockets: SocketSet<'static>,
    connections: Vec<Connection>,
    epoch: std::time::Instant,
}

fn new_socket() -> tcp::Socket<'static> {
    let mut s = tcp::Socket::new(
        tcp::SocketBuffer::new(vec![0; BUFFER]),
        tcp::SocketBuffer::new(vec![0; BUFFER]),
    );
    s.set_ack_delay(None);
    s.set_nagle_enabled(false);
    s
}

impl MmdsStack {
    /// A stack answering at the address `mmds` is configured with.
    pub fn new(mmds: SharedMmds) -> Self {
        let ip = mmds.lock().unwrap_or_else(|e| e.into_inner()).config().ipv4;
        let mut frames = Frames::default();
        let mut config = Config::new(HardwareAddress::Ethernet(EthernetAddress(MMDS_MAC)));
        let mut seed = [0u8; 8];
        super::fill_random(&mut seed);
        config.random_seed = u64::from_le_bytes(seed);
        let epoch = std::time::Instant::now();
        let mut iface = Interface::new(config, &mut frames, SmolInstant::from_millis(0));
        // Prefix 0: every guest address is on-link, so answers go straight back to the MAC the
        // guest's ARP request came from, whatever the guest's own subnet.
        iface.update_ip_addrs(|addrs| {
            let [a, b, c, d] = ip.octets();
            let _ = addrs.push(IpCidr::new(IpAddress::v4(a, b, c, d), 0));
        });
        let mut sockets = SocketSet::new(Vec::new());
        let connections = (0..CONNECTIONS)
            .map(|_| Connection {
                handle: sockets.add(new_socket()),
                request: Vec::new(),
                pending: Vec::new(),
                close_after: false,
            })
            .collect();
        let mut stack = MmdsStack {
            mmds,
            ip,
            frames,
            iface,
            sockets,
            connections,
            epoch,
        };
        stack.listen_all();
        stack
    }

    fn now(&self) -> SmolInstant {
        SmolInstant::from_micros(self.epoch.elapsed().as_micros() as i64)
    }

    /// Puts every closed connection back to listening.
    fn listen_all(&mut self) {
        for c in &mut self.connections {
            let s = self.sockets.get_mut::<tcp::Socket>(c.handle);
            if s.state() == tcp::State::Closed {
                c.request.clear();
                c.pending.clear();
                c.close_after = false;
                if let Err(e) = s.listen(HTTP_PORT) {
                    log::warn!("mmds: cannot listen: {e}");
                }
            }
        }
    }

    /// Whether `frame` is an ARP frame for the MMDS address or an IPv4 frame to it.
    fn is_for_us(&self, frame: &[u8]) -> bool {
        let Some(ethertype) = frame.get(12..14) else {
            return false;
        };
        let ip = self.ip.octets();
        match u16::from_be_bytes([ethertype[0], ethertype[1]]) {
            // The target protocol address of an Ethernet/IPv4 ARP packet.
            ETHERTYPE_ARP => frame.get(38..42) == Some(&ip[..]),
            // The destination of an IPv4 header.
            ETHERTYPE_IPV4 => frame.get(30..34) == Some(&ip[..]),
            _ => false,
        }
    }

    /// Reads what each connection received, answers whole requests, sends what fits.
    fn serve(&mut self) {
        let now = std::time::Instant::now();
        for c in &mut self.connections {
            let s = self.sockets.get_mut::<tcp::Socket>(c.handle);
            let mut buf = [0u8; 4096];
            while s.can_recv() {
                match s.recv_slice(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => c.request.extend_from_slice(&buf[..n]),
                }
            }
            while !c.close_after {
                let parsed = {
                    let mut m = self.mmds.lock().unwrap_or_else(|e| e.into_inner());
                    http::handle(&mut m, &c.request, now)
                };
                match parsed {
                    Parse::Incomplete => break,
                    Parse::Done {
                        response,
                        consumed,
                        close,
                    } => {
                        c.request.drain(..consumed.min(c.request.len()));
                        c.pending.extend_from_slice(&response);
                        c.close_after = close;
                    }
                }
            }
            if !c.pending.is_empty() && s.can_send() {
                if let Ok(n) = s.send_slice(&c.pending) {
                    c.pending.drain(..n);
                }
            }
            // The guest closed its side, or asked to close: close ours once all is sent.
            let peer_done = s.state() == tcp::State::CloseWait;
            if c.pending.is_empty() && (peer_done || c.close_after) && s.may_send() {
                s.close();
            }
        }
    }

    fn run(&mut self) {
        let now = self.now();
        self.iface.poll(now, &mut self.frames, &mut self.sockets);
        self.serve();
        let now = self.now();
        self.iface.poll(now, &mut self.frames, &mut self.sockets);
        self.listen_all();
    }
}

impl LocalResponder for MmdsStack {
    fn take(&mut self, frame: &[u8]) -> bool {
        if !self.is_for_us(frame) {
            return false;
        }
        self.frames.from_guest.push_back(frame.to_vec());
        self.run();
        true
    }

    fn next_frame(&mut self) -> Option<Vec<u8>> {
        let frame = self.frames.to_guest.pop_front();
        if frame.is_some() && self.frames.to_guest.is_empty() {
            // The guest's window may have opened for answers still pending.
            self.serve();
            let now = self.now();
            self.iface.poll(now, &mut self.frames, &mut self.sockets);
        }
        frame
    }

    fn has_frames(&self) -> bool {
        !self.frames.to_guest.is_empty()
    }
}
