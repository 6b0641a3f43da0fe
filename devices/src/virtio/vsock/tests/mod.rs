//! Tests of the vsock device on guest memory with hand-driven split queues, real Unix sockets
//! in a temporary directory and a real event loop.

mod exchange;
mod hostile;
mod restore;
mod timeout;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use event_manager::{EventManager, SubscriberOps};
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use vm_memory::{Address, Bytes, GuestAddress};
use vmm_sys_util::tempdir::TempDir;

use super::packet::{op, Header, HDR_SIZE, SHUTDOWN_BOTH, SHUTDOWN_SEND, TYPE_STREAM};
use super::*;
use crate::virtio::test_utils::{activate, RecordingInterrupt};
use crate::virtio::{ActivateContext, GuestMemoryMmap, MAX_CHAINS_PER_TURN};
use virtio_queue::{Queue, QueueT};

const MEM_SIZE: usize = 0x40_0000;
const GUEST_CID: u64 = 3;
/// RX buffers: 4 KiB each from here.
const RX_BUFS: u64 = 0x10_0000;
const RX_BUF_SIZE: u32 = 4096;
/// TX packets: 64 KiB + header each from here.
const TX_BUFS: u64 = 0x20_0000;
const TX_SLOT: u64 = 0x1_1000;

/// The driver's side of one split queue of [`QUEUE_SIZE`] entries at `base`.
struct GuestQueue {
    base: u64,
    next_desc: u16,
    avail_idx: u16,
    used_seen: u16,
}

impl GuestQueue {
    fn new(base: u64) -> Self {
        Self {
            base,
            next_desc: 0,
            avail_idx: 0,
            used_seen: 0,
        }
    }

    fn avail(&self) -> u64 {
        self.base + 16 * u64::from(QUEUE_SIZE)
    }

    fn used(&self) -> u64 {
        self.base + 0x2000
    }

    fn queue(&self) -> Queue {
        let mut q = Queue::new(QUEUE_SIZE).unwrap();
        q.set_size(QUEUE_SIZE);
        q.set_desc_table_address(Some(self.base as u32), Some(0));
        q.set_avail_ring_address(Some(self.avail() as u32), Some(0));
        q.set_used_ring_address(Some(self.used() as u32), Some(0));
        q.set_ready(true);
        q
    }

    /// Makes a chain of (addr, len, flags) available; returns its head.
    fn add(&mut self, mem: &GuestMemoryMmap, descs: &[(u64, u32, u32)]) -> u16 {
        let head = self.next_desc;
        for (i, &(addr, len, flags)) in descs.iter().enumerate() {
            let idx = (self.next_desc + i as u16) % QUEUE_SIZE;
            let last = i + 1 == descs.len();
            let flags = if last {
                flags
            } else {
                flags | VRING_DESC_F_NEXT
            };
            let next = (idx + 1) % QUEUE_SIZE;
            let at = GuestAddress(self.base + 16 * u64::from(idx));
            mem.write_obj(addr, at).unwrap();
            mem.write_obj(len, at.unchecked_add(8)).unwrap();
            mem.write_obj(flags as u16, at.unchecked_add(12)).unwrap();
            mem.write_obj(next, at.unchecked_add(14)).unwrap();
        }
        self.next_desc = (self.next_desc + descs.len() as u16) % QUEUE_SIZE;
        let slot = self.avail() + 4 + 2 * u64::from(self.avail_idx % QUEUE_SIZE);
        mem.write_obj(head, GuestAddress(slot)).unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        mem.write_obj(self.avail_idx, GuestAddress(self.avail() + 2))
            .unwrap();
        head
    }

    /// Used entries (head, len) that appeared since the last call.
    fn take_used(&mut self, mem: &GuestMemoryMmap) -> Vec<(u16, u32)> {
        let idx: u16 = mem.read_obj(GuestAddress(self.used() + 2)).unwrap();
        let mut out = Vec::new();
        while self.used_seen != idx {
            let e = self.used() + 4 + 8 * u64::from(self.used_seen % QUEUE_SIZE);
            let id: u32 = mem.read_obj(GuestAddress(e)).unwrap();
            let len: u32 = mem.read_obj(GuestAddress(e + 4)).unwrap();
            out.push((id as u16, len));
            self.used_seen = self.used_seen.wrapping_add(1);
        }
        out
    }
}

/// Guest memory, the three queues, a device on an event loop and its socket directory.
struct Rig {
    dir: TempDir,
    mem: GuestMemoryMmap,
    rx: GuestQueue,
    tx: GuestQueue,
    rx_heads: HashMap<u16, u64>,
    rx_next: u64,
    tx_next: u64,
    dev: Arc<Mutex<Vsock>>,
    manager: EventManager<Arc<Mutex<Vsock>>>,
    /// Packets the guest received and has not looked at yet.
    inbox: Vec<(Header, Vec<u8>)>,
    /// RX buffers returned empty.
    rx_empty: Vec<u16>,
}

fn guest_hdr(src_port: u32, dst_port: u32, op: u16) -> Header {
    Header {
        src_cid: GUEST_CID,
        dst_cid: 2,
        src_port,
        dst_port,
        type_: TYPE_STREAM,
        op,
        buf_alloc: 64 * 1024,
        ..Header::default()
    }
}

fn read_line(s: &UnixStream) -> String {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while (&*s).read(&mut b).unwrap() == 1 && b[0] != b'\n' {
        line.push(b[0]);
    }
    String::from_utf8(line).unwrap()
}

impl Rig {
    /// An activated device with `rx_buffers` RX buffers posted.
    fn new(rx_buffers: usize) -> Self {
        let dir = TempDir::new().unwrap();
        let cfg = VsockConfig {
            guest_cid: GUEST_CID,
            uds_path: dir.as_path().join("v.sock"),
            id: "vsock0".into(),
        };
        let mut dev = Vsock::new(cfg).unwrap();
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
        let rx = GuestQueue::new(0);
        let tx = GuestQueue::new(0x4000);
        let event = GuestQueue::new(0x8000);
        let queues = vec![rx.queue(), tx.queue(), event.queue()];
        activate(&mut dev, &mem, queues, FEATURES);
        let dev = Arc::new(Mutex::new(dev));
        let mut manager = EventManager::<Arc<Mutex<Vsock>>>::new().unwrap();
        manager.add_subscriber(dev.clone());
        let mut rig = Self {
            dir,
            mem,
            rx,
            tx,
            rx_heads: HashMap::new(),
            rx_next: RX_BUFS,
            tx_next: TX_BUFS,
            dev,
            manager,
            inbox: Vec::new(),
            rx_empty: Vec::new(),
        };
        rig.post_rx(rx_buffers, false);
        rig.run();
        rig
    }

    fn path(&self) -> std::path::PathBuf {
        self.dir.as_path().join("v.sock")
    }

    /// Posts `n` RX buffers (a 44-byte header buffer and a payload buffer each); with `kick`,
    /// notifies the device.
    fn post_rx(&mut self, n: usize, kick: bool) {
        for _ in 0..n {
            let addr = self.rx_next;
            self.rx_next += u64::from(RX_BUF_SIZE);
            if self.rx_next >= TX_BUFS {
                self.rx_next = RX_BUFS;
            }
            let w = VRING_DESC_F_WRITE;
            let head = self.rx.add(
                &self.mem,
                &[
                    (addr, HDR_SIZE as u32, w),
                    (addr + HDR_SIZE as u64, RX_BUF_SIZE - HDR_SIZE as u32, w),
                ],
            );
            self.rx_heads.insert(head, addr);
        }
        if kick {
            self.kick(RX_QUEUE);
        }
    }

    fn kick(&self, queue: usize) {
        self.dev.lock().unwrap().queue_events()[queue]
            .write(1)
            .unwrap();
    }

    /// Runs the event loop until it has nothing more to do right now.
    fn run(&mut self) {
        while self.manager.run_with_timeout(20).unwrap() > 0 {}
        self.collect();
    }

    /// Runs the event loop until the guest has received `n` packets (or gives up).
    fn run_until_packets(&mut self, n: usize) {
        for _ in 0..100 {
            self.collect();
            if self.inbox.len() >= n {
                return;
            }
            self.manager.run_with_timeout(20).unwrap();
        }
        panic!("expected {n} packets, got {:?}", self.inbox);
    }

    /// Moves the packets in used RX buffers to the inbox.
    fn collect(&mut self) {
        for (head, len) in self.rx.take_used(&self.mem) {
            if len == 0 {
                self.rx_empty.push(head);
                continue;
            }
            let addr = self.rx_heads[&head];
            let mut raw = [0u8; HDR_SIZE];
            self.mem.read_slice(&mut raw, GuestAddress(addr)).unwrap();
            let hdr = Header::from_bytes(&raw);
            assert_eq!(len as usize, HDR_SIZE + hdr.len as usize);
            let mut payload = vec![0u8; hdr.len as usize];
            self.mem
                .read_slice(&mut payload, GuestAddress(addr + HDR_SIZE as u64))
                .unwrap();
            self.inbox.push((hdr, payload));
        }
    }

    /// The next packet the guest got.
    fn recv(&mut self) -> (Header, Vec<u8>) {
        self.run_until_packets(1);
        self.inbox.remove(0)
    }

    /// Puts raw descriptors on the TX queue (without kicking).
    fn tx_raw(&mut self, descs: &[(u64, u32, u32)]) {
        self.tx.add(&self.mem, descs);
    }

    /// Writes `bytes` into a fresh TX slot; returns its address.
    fn tx_slot(&mut self, bytes: &[u8]) -> u64 {
        let addr = self.tx_next;
        self.tx_next += TX_SLOT;
        if self.tx_next + TX_SLOT > MEM_SIZE as u64 {
            self.tx_next = TX_BUFS;
        }
        self.mem.write_slice(bytes, GuestAddress(addr)).unwrap();
        addr
    }

    /// The guest sends a packet (header and payload in two descriptors) and kicks.
    /// Bytes both ways on an open connection between guest port `guest_port` and host port
    /// `host_port`, whose host end is `host`: the guest sends `out`, the host reads it and
    /// answers `back`, the guest receives that. Returns the header the answer came with.
    fn round_trip(
        &mut self,
        host: &UnixStream,
        (guest_port, host_port): (u32, u32),
        out: &[u8],
        back: &[u8],
    ) -> Header {
        self.send(guest_hdr(guest_port, host_port, op::RW), out);
        let mut buf = vec![0u8; out.len()];
        (&*host).read_exact(&mut buf).unwrap();
        assert_eq!(buf, out);
        (&*host).write_all(back).unwrap();
        let (hdr, data) = self.recv();
        assert_eq!((hdr.op, data.as_slice()), (op::RW, back));
        hdr
    }

    fn send(&mut self, mut hdr: Header, payload: &[u8]) {
        hdr.len = payload.len() as u32;
        let h = self.tx_slot(&hdr.to_bytes());
        let mut descs = vec![(h, HDR_SIZE as u32, 0)];
        if !payload.is_empty() {
            let p = self.tx_slot(payload);
            descs.push((p, payload.len() as u32, 0));
        }
        self.tx_raw(&descs);
        self.kick(TX_QUEUE);
        self.run();
    }

    fn counters(&self) -> VsockCounters {
        self.dev.lock().unwrap().counters()
    }

    /// A host program connects and the guest accepts: returns the host socket, petrel's port.
    fn host_connect(&mut self, guest_port: u32) -> (UnixStream, u32) {
        let host = UnixStream::connect(self.path()).unwrap();
        host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        (&host)
            .write_all(format!("CONNECT {guest_port}\n").as_bytes())
            .unwrap();
        let (req, _) = self.recv();
        assert_eq!(req.op, op::REQUEST);
        assert_eq!((req.src_cid, req.dst_cid), (2, GUEST_CID));
        assert_eq!(req.dst_port, guest_port);
        assert!(req.src_port >= FIRST_LOCAL_PORT);
        assert_eq!(req.buf_alloc, BUF_ALLOC);
        self.send(guest_hdr(guest_port, req.src_port, op::RESPONSE), &[]);
        assert_eq!(read_line(&host), format!("OK {}", req.src_port));
        (host, req.src_port)
    }
}
