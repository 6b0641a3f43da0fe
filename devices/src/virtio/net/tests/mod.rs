//! Tests of the net device: on mock queues with a socket pair standing in for the tap
//! (`device`, `traffic`), and against a real tap interface (`real_tap`).

mod device;
mod mmds;
mod real_tap;
mod traffic;

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::{Arc, Mutex};

use virtio_bindings::virtio_ring::VRING_DESC_F_NEXT;
use virtio_queue::desc::{split::Descriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

use super::*;
use crate::virtio::test_utils::{activate_with, RecordingInterrupt, W};
use crate::virtio::{ActivateContext, GuestMemoryMmap, InterruptKind};

const MEM_SIZE: usize = 0x40_0000;
/// Where the RX and TX queues live.
const RX_RING: u64 = 0;
const TX_RING: u64 = 0x1_0000;
/// Guest buffers.
const BUF: u64 = 0x10_0000;
const R: u32 = 0;

/// One driver-side queue: where its rings are and what was added.
struct DriverQueue {
    desc: u64,
    avail: u64,
    used: u64,
    next_desc: u16,
    chains: u16,
}

impl DriverQueue {
    fn new(mem: &GuestMemoryMmap, at: u64) -> (Self, Queue) {
        let vq = MockSplitQueue::create(mem, GuestAddress(at), QUEUE_SIZE);
        let q = vq.create_queue().unwrap();
        let dq = Self {
            desc: vq.desc_table_addr().0,
            avail: vq.avail_addr().0,
            used: vq.used_addr().0,
            next_desc: 0,
            chains: 0,
        };
        (dq, q)
    }
}

/// Guest memory, an activated device on a socket-pair "tap", and the driver's queues.
struct Rig {
    mem: GuestMemoryMmap,
    net: Net,
    /// The host end of the socket pair: what the device writes to its tap arrives here.
    peer: OwnedFd,
    rx: DriverQueue,
    tx: DriverQueue,
    int: Arc<RecordingInterrupt>,
}

fn socket_pair() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: fds is valid for two ints; socketpair writes exactly those on success.
    let ret = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    assert_eq!(ret, 0, "socketpair: {}", io::Error::last_os_error());
    // SAFETY: socketpair just created both descriptors; nothing else owns them.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

fn config(id: &str) -> NetConfig {
    NetConfig {
        tap: TapSource::Name("unused".into()),
        mac: None,
        id: id.into(),
        rate_limiter_rx: None,
        rate_limiter_tx: None,
    }
}

/// A packet: a vnet header (all zero but `flags`) and a frame of `len` bytes from a pattern.
fn packet(len: usize, seed: u8) -> Vec<u8> {
    let mut p = vec![0u8; VNET_HDR_LEN];
    p.extend((0..len).map(|i| (i as u8).wrapping_mul(31) ^ seed));
    p
}

const FEATURES_NO_MERGE: u64 = VIRTIO_F_VERSION_1
    | (1 << VIRTIO_NET_F_MAC)
    | (1 << VIRTIO_NET_F_CSUM)
    | (1 << VIRTIO_NET_F_GUEST_CSUM);

impl Rig {
    fn new() -> Self {
        Self::with_config(config("net0"))
    }

    fn with_config(cfg: NetConfig) -> Self {
        let (mine, theirs) = socket_pair();
        let net = Net::with_tap(Tap::from_socket(theirs), &cfg).unwrap();
        Self::around(net, mine)
    }

    /// A rig around `net`, whose tap's other end is `peer`.
    fn around(net: Net, peer: OwnedFd) -> Self {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
        let (rx, _) = DriverQueue::new(&mem, RX_RING);
        let (tx, _) = DriverQueue::new(&mem, TX_RING);
        Self {
            mem,
            net,
            peer,
            rx,
            tx,
            int: Arc::new(RecordingInterrupt::default()),
        }
    }

    /// Activates with `features` (event-idx as they say).
    fn activate(&mut self, features: u64) {
        let event_idx = features & (1 << VIRTIO_RING_F_EVENT_IDX) != 0;
        let (_, mut rxq) = DriverQueue::new(&self.mem, RX_RING);
        let (_, mut txq) = DriverQueue::new(&self.mem, TX_RING);
        rxq.set_event_idx(event_idx);
        txq.set_event_idx(event_idx);
        let int = self.int.clone();
        activate_with(&mut self.net, &self.mem, vec![rxq, txq], features, int);
        // Consume the activation self-kicks.
        for evt in self.net.queue_events() {
            evt.read().unwrap();
        }
    }

    /// Moves the device out (to hand it to an event loop), leaving an unused one behind.
    fn take_net(&mut self) -> Net {
        let (_, sock) = socket_pair();
        let spare = Net::with_tap(Tap::from_socket(sock), &config("spare")).unwrap();
        std::mem::replace(&mut self.net, spare)
    }

    fn queue(&mut self, index: u16) -> &mut DriverQueue {
        if index == RX_QUEUE {
            &mut self.rx
        } else {
            &mut self.tx
        }
    }

    /// Adds a chain of (addr, len, flags) descriptors to queue `index`; NEXT links are filled
    /// in. Returns the head index.
    fn add_chain(&mut self, index: u16, descs: &[(u64, u32, u32)]) -> u16 {
        let mem = self.mem.clone();
        let q = self.queue(index);
        let first = q.next_desc;
        for (i, &(addr, len, flags)) in descs.iter().enumerate() {
            let last = i + 1 == descs.len();
            let flags = if last {
                flags
            } else {
                flags | VRING_DESC_F_NEXT
            };
            let idx = (first + i as u16) % QUEUE_SIZE;
            let next = if last { 0 } else { (idx + 1) % QUEUE_SIZE };
            let d = RawDescriptor::from(Descriptor::new(addr, len, flags as u16, next));
            mem.write_obj(d, GuestAddress(q.desc + 16 * u64::from(idx)))
                .unwrap();
        }
        let head = first % QUEUE_SIZE;
        let slot = q.avail + 4 + 2 * u64::from(q.chains % QUEUE_SIZE);
        mem.write_obj(head, GuestAddress(slot)).unwrap();
        q.chains = q.chains.wrapping_add(1);
        mem.write_obj(q.chains, GuestAddress(q.avail + 2)).unwrap();
        q.next_desc = q.next_desc.wrapping_add(descs.len() as u16);
        head
    }

    /// Makes descriptor `desc` of queue `index` point to itself: a chain that loops.
    fn loop_back(&self, index: u16, desc: u16) {
        let q = if index == RX_QUEUE {
            &self.rx
        } else {
            &self.tx
        };
        let at = q.desc + 16 * u64::from(desc);
        let flags: u16 = self.mem.read_obj(GuestAddress(at + 12)).unwrap();
        let flags = flags | VRING_DESC_F_NEXT as u16;
        self.mem.write_obj(flags, GuestAddress(at + 12)).unwrap();
        self.mem.write_obj(desc, GuestAddress(at + 14)).unwrap();
    }

    /// The used ring's index of queue `index`.
    fn used_idx(&self, index: u16) -> u16 {
        let q = if index == RX_QUEUE {
            &self.rx
        } else {
            &self.tx
        };
        self.mem.read_obj(GuestAddress(q.used + 2)).unwrap()
    }

    /// (head, len) of used entry `i` of queue `index`.
    fn used(&self, index: u16, i: u16) -> (u32, u32) {
        let q = if index == RX_QUEUE {
            &self.rx
        } else {
            &self.tx
        };
        let at = q.used + 4 + 8 * u64::from(i % QUEUE_SIZE);
        let id: u32 = self.mem.read_obj(GuestAddress(at)).unwrap();
        let len: u32 = self.mem.read_obj(GuestAddress(at + 4)).unwrap();
        (id, len)
    }

    /// The `avail_event` field of queue `index` (after the used ring).
    fn avail_event(&self, index: u16) -> u16 {
        let q = if index == RX_QUEUE {
            &self.rx
        } else {
            &self.tx
        };
        let at = q.used + 4 + 8 * u64::from(QUEUE_SIZE);
        self.mem.read_obj(GuestAddress(at)).unwrap()
    }

    fn guest(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
        v
    }

    fn put(&self, addr: u64, bytes: &[u8]) {
        self.mem.write_slice(bytes, GuestAddress(addr)).unwrap();
    }

    /// Sends a packet into the device's "tap".
    fn send(&self, packet: &[u8]) {
        // SAFETY: packet is valid for reads of its length for the whole call.
        let n = unsafe {
            libc::send(
                self.peer.as_raw_fd(),
                packet.as_ptr().cast(),
                packet.len(),
                0,
            )
        };
        assert_eq!(n, packet.len() as isize, "{}", io::Error::last_os_error());
    }

    /// What the event loop does when the tap becomes readable.
    fn tap_event(&mut self) {
        self.net.tap_readable = true;
        self.net.process_rx();
    }

    /// The next packet the device wrote to its "tap", if any.
    fn recv(&self) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; MAX_PACKET_LEN + 64];
        // SAFETY: buf is valid for writes of its length for the whole call.
        let n = unsafe {
            libc::recv(
                self.peer.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT,
            )
        };
        if n < 0 {
            return None;
        }
        buf.truncate(n as usize);
        Some(buf)
    }
}
