//! The MMDS behind a net device: a real TCP/IP client (a second smoltcp interface playing the
//! guest) sends its frames through the device's TX queue and reads the answers from its RX
//! buffers; ARP, the TCP handshake, a V2 token and a GET go through, and none of it reaches
//! the tap, while a frame for another address does.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde_json::json;
use smoltcp::iface::{Config, Interface, SocketSet};
use smoltcp::socket::tcp;
use smoltcp::time::Instant as SmolInstant;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpAddress, IpCidr};

use super::*;
use crate::mmds::stack::{Frames, MmdsStack, MMDS_MAC};
use crate::mmds::{Mmds, MmdsConfig, Version};

const GUEST_MAC: [u8; 6] = [0x06, 0, 0, 0, 0, 2];
const RX_BUFS: u64 = 0x10_0000;
const TX_BUFS: u64 = 0x20_0000;
const SLOT: u64 = 0x1000;

/// The guest: a smoltcp interface at 10.0.0.2 and the rig's queues.
struct Guest {
    frames: Frames,
    iface: Interface,
    sockets: SocketSet<'static>,
    /// RX chains posted and not yet used: head → buffer address.
    rx_posted: HashMap<u16, u64>,
    rx_seen: u16,
    tx_sent: u64,
    start: std::time::Instant,
}

impl Guest {
    fn new() -> Self {
        let mut frames = Frames::default();
        let cfg = Config::new(HardwareAddress::Ethernet(EthernetAddress(GUEST_MAC)));
        let mut iface = Interface::new(cfg, &mut frames, SmolInstant::from_millis(0));
        iface.update_ip_addrs(|a| {
            a.push(IpCidr::new(IpAddress::v4(10, 0, 0, 2), 0)).unwrap();
        });
        Guest {
            frames,
            iface,
            sockets: SocketSet::new(Vec::new()),
            rx_posted: HashMap::new(),
            rx_seen: 0,
            tx_sent: 0,
            start: std::time::Instant::now(),
        }
    }

    fn now(&self) -> SmolInstant {
        SmolInstant::from_micros(self.start.elapsed().as_micros() as i64)
    }

    /// Keeps 64 RX buffers posted.
    fn post_rx(&mut self, rig: &mut Rig) {
        let mut k = 0u64;
        while self.rx_posted.len() < 64 {
            let addr = RX_BUFS + (k % 200) * SLOT;
            k += 1;
            if self.rx_posted.values().any(|&a| a == addr) {
                continue;
            }
            let head = rig.add_chain(RX_QUEUE, &[(addr, SLOT as u32, W)]);
            self.rx_posted.insert(head, addr);
        }
        rig.net.process_rx();
    }

    /// One round: the guest's frames to the device's TX queue, the device's RX frames back.
    fn round(&mut self, rig: &mut Rig) {
        let now = self.now();
        self.iface.poll(now, &mut self.frames, &mut self.sockets);
        while let Some(frame) = self.frames.to_guest.pop_front() {
            let addr = TX_BUFS + (self.tx_sent % 200) * SLOT;
            self.tx_sent += 1;
            let mut p = vec![0u8; VNET_HDR_LEN];
            p.extend_from_slice(&frame);
            rig.put(addr, &p);
            rig.add_chain(TX_QUEUE, &[(addr, p.len() as u32, R)]);
            rig.net.process_tx();
        }
        self.post_rx(rig);
        while self.rx_seen != rig.used_idx(RX_QUEUE) {
            let (head, len) = rig.used(RX_QUEUE, self.rx_seen);
            self.rx_seen = self.rx_seen.wrapping_add(1);
            let addr = self.rx_posted.remove(&(head as u16)).unwrap();
            let bytes = rig.guest(addr, len as usize);
            self.frames
                .from_guest
                .push_back(bytes[VNET_HDR_LEN..].to_vec());
        }
        let now = self.now();
        self.iface.poll(now, &mut self.frames, &mut self.sockets);
    }

    /// Sends `request` on `socket` and returns the whole response (head and body).
    fn exchange(
        &mut self,
        rig: &mut Rig,
        h: smoltcp::iface::SocketHandle,
        request: &str,
    ) -> String {
        let mut sent = false;
        let mut got = Vec::new();
        for _ in 0..200 {
            self.round(rig);
            let s = self.sockets.get_mut::<tcp::Socket>(h);
            if !sent && s.can_send() {
                s.send_slice(request.as_bytes()).unwrap();
                sent = true;
            }
            while s.can_recv() {
                let mut buf = [0u8; 2048];
                let n = s.recv_slice(&mut buf).unwrap();
                got.extend_from_slice(&buf[..n]);
            }
            let text = String::from_utf8_lossy(&got).into_owned();
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("Content-Length: "))
                    .and_then(|v| v.parse().ok())
                    .unwrap();
                if body.len() >= len {
                    return text;
                }
            }
        }
        panic!(
            "no whole response to {request:?}; got {:?}",
            String::from_utf8_lossy(&got)
        );
    }
}

#[test]
fn a_guest_tcp_client_reads_the_mmds_through_the_device_and_nothing_reaches_the_tap() {
    let mut rig = Rig::new();
    rig.activate(FEATURES_NO_MERGE);
    let mut store = Mmds::default();
    store.set_config(MmdsConfig {
        version: Version::V2,
        ..MmdsConfig::default()
    });
    store
        .put(json!({"latest": {"meta-data": {"ami-id": "ami-12345", "tags": {"a": "b"}}}}))
        .unwrap();
    let mmds = Arc::new(Mutex::new(store));
    rig.net
        .set_local_responder(Some(Box::new(MmdsStack::new(mmds.clone()))));

    let mut guest = Guest::new();
    let socket = tcp::Socket::new(
        tcp::SocketBuffer::new(vec![0; 8192]),
        tcp::SocketBuffer::new(vec![0; 8192]),
    );
    let h = guest.sockets.add(socket);
    let cx = guest.iface.context();
    guest
        .sockets
        .get_mut::<tcp::Socket>(h)
        .connect(cx, (IpAddress::v4(169, 254, 169, 254), 80), 49152)
        .unwrap();

    // V2: no token, 401; a token; then the GETs with it, text and JSON.
    let r = guest.exchange(&mut rig, h, "GET /latest/meta-data/ HTTP/1.1\r\n\r\n");
    assert!(r.starts_with("HTTP/1.1 401"), "{r}");
    let r = guest.exchange(
        &mut rig,
        h,
        "PUT /latest/api/token HTTP/1.1\r\nX-metadata-token-ttl-seconds: 60\r\n\r\n",
    );
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    let token = r.split_once("\r\n\r\n").unwrap().1.to_string();
    let r = guest.exchange(
        &mut rig,
        h,
        &format!("GET /latest/meta-data/ HTTP/1.1\r\nX-metadata-token: {token}\r\n\r\n"),
    );
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    assert!(r.ends_with("\r\n\r\nami-id\ntags/"), "{r}");
    let r = guest.exchange(
        &mut rig,
        h,
        &format!(
            "GET /latest/meta-data/tags HTTP/1.1\r\nX-metadata-token: {token}\r\n\
             Accept: application/json\r\n\r\n"
        ),
    );
    assert!(r.ends_with("\r\n\r\n{\"a\":\"b\"}"), "{r}");
    // The guest learnt the MMDS's MAC by ARP.
    assert!(guest.rx_seen > 0);
    let _ = MMDS_MAC;

    // Nothing of it reached the tap; the API's change is seen at once.
    assert!(rig.recv().is_none(), "an MMDS frame reached the tap");
    mmds.lock()
        .unwrap()
        .patch(json!({"latest": {"meta-data": {"ami-id": "ami-2"}}}))
        .unwrap();
    let r = guest.exchange(
        &mut rig,
        h,
        &format!("GET /latest/meta-data/ami-id HTTP/1.1\r\nX-metadata-token: {token}\r\n\r\n"),
    );
    assert!(r.ends_with("\r\n\r\nami-2"), "{r}");

    // The guest closes; the connection is served again by a fresh one.
    guest.sockets.get_mut::<tcp::Socket>(h).close();
    for _ in 0..20 {
        guest.round(&mut rig);
    }
    assert_eq!(
        guest.sockets.get_mut::<tcp::Socket>(h).state(),
        tcp::State::TimeWait
    );

    // A frame for another address goes to the tap as before.
    let mut other = vec![0u8; VNET_HDR_LEN];
    other.extend_from_slice(&[0xff; 6]);
    other.extend_from_slice(&GUEST_MAC);
    other.extend_from_slice(&[0x08, 0x06]);
    other.extend_from_slice(&[0u8; 46]);
    rig.put(TX_BUFS, &other);
    rig.add_chain(TX_QUEUE, &[(TX_BUFS, other.len() as u32, R)]);
    rig.net.process_tx();
    assert_eq!(rig.recv().unwrap(), other);
}
