//! Fuzzes the virtio-mmio transport's register interface: a sequence of reads and writes of
//! arbitrary offset, width and value through a real `Bus` to an `MmioTransport` in front of a
//! virtio-rng device, with guest memory writes (so queues can hold real chains) and turns of
//! the event loop that serves the device's queue.
//!
//! Invariants checked after every operation:
//! - no panic;
//! - Status (as read by the driver) equals `status()`; without FAILED and DEVICE_NEEDS_RESET it
//!   is one of the initialization steps; only a 4-byte write to Status changes it;
//! - the device is activated exactly when DRIVER_OK is set and DEVICE_NEEDS_RESET is not, and
//!   its acked features are a subset of the offered ones and include VERSION_1;
//! - writing 0 to Status resets everything (status 0, no interrupt pending, not activated);
//! - MagicValue, Version and DeviceID never change; InterruptStatus only has its two bits;
//!   QueueNum never exceeds QueueNumMax; QueueReady reads 0 or 1; an access of the wrong width
//!   reads as zeros; the rng has no configuration space (reads as zeros).
#![no_main]

use std::sync::{Arc, Mutex};

use arbitrary::Arbitrary;
use devices::virtio::mmio::{
    status, MmioTransport, CONFIG_SPACE_OFFSET, INT_CONFIG, INT_USED_RING, MMIO_WINDOW,
};
use devices::virtio::rng::{Rng, QUEUE_SIZE};
use devices::virtio::{device_type, VirtioDevice, VIRTIO_F_VERSION_1};
use devices::Bus;
use event_manager::{EventManager, SubscriberOps};
use libfuzzer_sys::fuzz_target;
use petrel_fuzz::*;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

const BASE: u64 = 0xd000_0000;
const MAX_OPS: usize = 256;

/// Register offsets of the modern layout (and a few the transport does not implement).
const REGS: [u64; 33] = [
    0x000, 0x004, 0x008, 0x00c, 0x010, 0x014, 0x020, 0x024, 0x030, 0x034, 0x038, 0x044, 0x050,
    0x060, 0x064, 0x070, 0x080, 0x084, 0x090, 0x094, 0x0a0, 0x0a4, 0x0ac, 0x0b0, 0x0b4, 0x0b8,
    0x0bc, 0x0c0, 0x0fc, 0x100, 0x104, 0x108, 0x0ff,
];
const STATUS_REG: u64 = 0x70;

/// Status values a driver writes (the init sequence, FAILED, NEEDS_RESET, mixtures).
const STATUS_VALUES: [u32; 10] = [0, 1, 3, 0xb, 0xf, 0x80, 0x8b, 0x40, 0x4f, 0x7];

#[derive(Arbitrary, Debug)]
enum Op {
    Read {
        at: Offset,
        width: Width,
    },
    Write {
        at: Offset,
        width: Width,
        value: Value,
    },
    /// Guest memory write.
    Poke {
        addr: u16,
        bytes: Vec<u8>,
    },
    /// A chain for the rng queue at the default layout: descriptor `slot` and ring entry.
    Chain {
        slot: u8,
        addr: Addr,
        len: u16,
        flags: u16,
        next: u8,
        avail_idx: u16,
    },
    /// One turn of the event loop (serves notified queues).
    Run,
    /// QueueNotify for queue `queue % 2`, then a turn of the event loop.
    Kick {
        queue: u8,
    },
    /// The first `steps` register writes of a correct driver start-up (status steps, features,
    /// queue 0 at the default layout, DRIVER_OK), so that the fuzzer reaches a running device
    /// easily; without EVENT_IDX if `event_idx` is false.
    Init {
        steps: u8,
        size_log2: u8,
        event_idx: bool,
    },
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Offset {
    Reg(u8),
    Config(u8),
    /// Anywhere in the bus range around the window.
    Raw(u16),
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Width {
    W4,
    W1,
    W2,
    W8,
    Other(u8),
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Value {
    Status(u8),
    Small(u8),
    /// A 32-bit half of the device's features (bit `n` of 64 set, or all offered).
    Feature(u8),
    U32(u32),
    U64(u64),
}

impl Offset {
    fn get(self) -> u64 {
        match self {
            Offset::Reg(i) => REGS[usize::from(i) % REGS.len()],
            Offset::Config(o) => CONFIG_SPACE_OFFSET + u64::from(o),
            Offset::Raw(o) => u64::from(o),
        }
    }
}

impl Width {
    fn get(self) -> usize {
        match self {
            Width::W4 => 4,
            Width::W1 => 1,
            Width::W2 => 2,
            Width::W8 => 8,
            Width::Other(n) => usize::from(n % 17),
        }
    }
}

fn value_bytes(v: Value, features: u64) -> [u8; 16] {
    let x: u64 = match v {
        Value::Status(i) => u64::from(STATUS_VALUES[usize::from(i) % STATUS_VALUES.len()]),
        Value::Small(s) => u64::from(s),
        Value::Feature(n) if n >= 128 => features | (features >> 32),
        Value::Feature(n) => 1u64 << (n % 64) >> if n % 64 >= 32 { 32 } else { 0 },
        Value::U32(x) => u64::from(x),
        Value::U64(x) => x,
    };
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&x.to_le_bytes());
    b
}

fn read32(bus: &Bus, offset: u64) -> u32 {
    let mut b = [0u8; 4];
    assert!(bus.read(BASE + offset, &mut b));
    u32::from_le_bytes(b)
}

fuzz_target!(|ops: Vec<Op>| {
    let mem = guest_memory();
    let rng = Arc::new(Mutex::new(Rng::new().expect("rng")));
    let features = rng.lock().expect("rng").features();
    let dev: Arc<Mutex<dyn VirtioDevice>> = rng.clone();
    let irq = EventFd::new(EFD_NONBLOCK).expect("irq");
    let transport = MmioTransport::new(mem.clone(), dev, irq).expect("transport");
    let interrupt = transport.interrupt().clone();
    let transport = Arc::new(Mutex::new(transport));
    let mut bus = Bus::new();
    bus.insert(transport.clone(), BASE, MMIO_WINDOW)
        .expect("bus");
    let mut em = EventManager::<Arc<Mutex<Rng>>>::new().expect("event manager");
    em.add_subscriber(rng.clone());

    for op in ops.iter().take(MAX_OPS) {
        let status_before = transport.lock().expect("transport").status();
        let mut status_write = false;
        match *op {
            Op::Read { at, width } => {
                let offset = at.get();
                let mut data = vec![0xa5u8; width.get()];
                if bus.read(BASE + offset, &mut data) {
                    let register = offset < CONFIG_SPACE_OFFSET;
                    if !register || data.len() != 4 || offset % 4 != 0 {
                        // Wrong-width register reads and the rng's (absent) config space.
                        assert!(
                            data.iter().all(|&b| b == 0),
                            "{offset:#x}/{}: {data:?}",
                            data.len()
                        );
                    }
                }
            }
            Op::Write { at, width, value } => {
                let offset = at.get();
                let w = width.get();
                let data = value_bytes(value, features);
                status_write = offset == STATUS_REG && w == 4;
                let zero = data[..4] == [0; 4];
                if bus.write(BASE + offset, &data[..w]) && status_write && zero {
                    let t = transport.lock().expect("transport");
                    assert_eq!(t.status(), 0, "status after reset");
                    assert_eq!(interrupt.status(), 0, "interrupt pending after reset");
                    assert!(
                        !rng.lock().expect("rng").is_activated(),
                        "activated after reset"
                    );
                }
            }
            Op::Poke { addr, ref bytes } => {
                let _ = mem.write_slice(bytes, GuestAddress(u64::from(addr)));
            }
            Op::Chain {
                slot,
                addr,
                len,
                flags,
                next,
                avail_idx,
            } => {
                let size = u64::from(QUEUE_SIZE);
                let slot = u64::from(slot);
                write_desc(
                    &mem,
                    DESC_TABLE,
                    slot,
                    Desc {
                        addr: addr.get(),
                        len: u32::from(len),
                        flags,
                        next: u16::from(next),
                    },
                );
                write_u16(
                    &mem,
                    AVAIL_RING + 4 + 2 * (u64::from(avail_idx.wrapping_sub(1)) % size),
                    slot as u16,
                );
                write_u16(&mem, AVAIL_RING + 2, avail_idx);
            }
            Op::Run => {
                let _ = em.run_with_timeout(0);
            }
            Op::Kick { queue } => {
                let q = u32::from(queue % 2);
                assert!(bus.write(BASE + 0x50, &q.to_le_bytes()));
                let _ = em.run_with_timeout(0);
            }
            Op::Init {
                steps,
                size_log2,
                event_idx,
            } => {
                status_write = true;
                let mut acked = features;
                if !event_idx {
                    acked &= !(1 << virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX);
                }
                let size = 1u32 << (size_log2 % 9);
                let writes: [(u64, u32); 16] = [
                    (STATUS_REG, 1),
                    (STATUS_REG, 3),
                    (0x24, 0),
                    (0x20, acked as u32),
                    (0x24, 1),
                    (0x20, (acked >> 32) as u32),
                    (STATUS_REG, 0xb),
                    (0x30, 0),
                    (0x38, size),
                    (0x80, DESC_TABLE as u32),
                    (0x84, 0),
                    (0x90, AVAIL_RING as u32),
                    (0x94, 0),
                    (0xa0, USED_RING as u32),
                    (0x44, 1),
                    (STATUS_REG, 0xf),
                ];
                for &(offset, value) in writes.iter().take(usize::from(steps % 17)) {
                    assert!(bus.write(BASE + offset, &value.to_le_bytes()));
                }
            }
        }

        let t = transport.lock().expect("transport");
        let s = t.status();
        drop(t);
        assert_eq!(read32(&bus, STATUS_REG), s, "Status register");
        if !status_write {
            assert_eq!(s, status_before, "status changed without a Status write");
        }
        let steps = s & !(status::FAILED | status::DEVICE_NEEDS_RESET);
        assert!(
            [0, 1, 3, 0xb, 0xf].contains(&steps),
            "status {s:#x} is not an init step"
        );
        let running = s & status::DRIVER_OK != 0 && s & status::DEVICE_NEEDS_RESET == 0;
        let r = rng.lock().expect("rng");
        assert_eq!(r.is_activated(), running, "activated vs status {s:#x}");
        if r.is_activated() {
            let acked = r.acked_features();
            assert_eq!(acked & !features, 0, "acked features not offered");
            assert_ne!(acked & VIRTIO_F_VERSION_1, 0, "VERSION_1 not acked");
        }
        drop(r);
        assert_eq!(read32(&bus, 0x0), u32::from_le_bytes(*b"virt"));
        assert_eq!(read32(&bus, 0x4), 2);
        assert_eq!(read32(&bus, 0x8), device_type::RNG);
        assert_eq!(read32(&bus, 0x60) & !(INT_USED_RING | INT_CONFIG), 0);
        let sel_max = read32(&bus, 0x34);
        assert!(read32(&bus, 0x38) <= sel_max.max(u32::from(QUEUE_SIZE)));
        assert!(read32(&bus, 0x44) <= 1);
        assert!(sel_max == 0 || sel_max == u32::from(QUEUE_SIZE));
    }
    drop(em);
});
