//! Tests of the virtio-mmio transport: the register handshake through a `Bus`, driven the way a
//! guest driver would, including the malformed cases.

use std::sync::{Arc, Mutex};

use event_manager::{EventManager, EventOps, Events, MutEventSubscriber, SubscriberOps};
use virtio_bindings::virtio_ring::VRING_DESC_F_WRITE;
use virtio_queue::desc::{split::Descriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Address, Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::*;
use crate::bus::Bus;
use crate::virtio::rng::Rng;
use crate::virtio::ActivateError;

const BASE: u64 = 0xd000_0000;
const MEM_SIZE: usize = 0x10_0000;
const Q0: u64 = 0x1_0000;
const Q1: u64 = 0x2_0000;
const F_EVENT_IDX: u64 = 1 << VIRTIO_RING_F_EVENT_IDX;
const F_DEVICE: u64 = 1 << 3;

/// What the dummy device saw at activation: acked features, and per queue (ready, size,
/// event idx).
type Activation = (u64, Vec<(bool, u16, bool)>);

struct Dummy {
    events: Vec<EventFd>,
    config: [u8; 8],
    activations: Vec<Activation>,
    interrupt: Option<Arc<dyn VirtioInterrupt>>,
    resets: u32,
    fail_activate: bool,
}

impl Dummy {
    fn new() -> Self {
        Self {
            events: (0..2)
                .map(|_| EventFd::new(EFD_NONBLOCK).unwrap())
                .collect(),
            config: *b"petrel!\0",
            activations: Vec::new(),
            interrupt: None,
            resets: 0,
            fail_activate: false,
        }
    }
}

impl MutEventSubscriber for Dummy {
    fn process(&mut self, _: Events, _: &mut EventOps) {}
    fn init(&mut self, _: &mut EventOps) {}
}

impl VirtioDevice for Dummy {
    fn device_type(&self) -> u32 {
        0x42
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[256, 16]
    }
    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1 | F_EVENT_IDX | F_DEVICE
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = self.config.get(offset as usize + i).copied().unwrap_or(0);
        }
    }
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        for (i, b) in data.iter().enumerate() {
            if let Some(c) = self.config.get_mut(offset as usize + i) {
                *c = *b;
            }
        }
    }
    fn activate(&mut self, ctx: ActivateContext) -> std::result::Result<(), ActivateError> {
        if self.fail_activate {
            return Err(ActivateError::Device("told to fail".into()));
        }
        let queues = ctx
            .queues
            .iter()
            .map(|q| (q.ready(), q.size(), q.event_idx_enabled()))
            .collect();
        self.activations.push((ctx.acked_features, queues));
        self.interrupt = Some(ctx.interrupt);
        Ok(())
    }
    fn reset(&mut self) {
        self.resets += 1;
        self.interrupt = None;
    }
    fn queue_events(&self) -> &[EventFd] {
        &self.events
    }
    fn is_activated(&self) -> bool {
        self.interrupt.is_some()
    }
    fn active_queue_states(&self) -> Vec<(usize, virtio_queue::QueueState)> {
        Vec::new()
    }
}

struct Fixture {
    mem: GuestMemoryMmap,
    bus: Bus,
    transport: Arc<Mutex<MmioTransport>>,
    irq: EventFd,
}

impl Fixture {
    fn new(device: Arc<Mutex<dyn VirtioDevice>>) -> Self {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        let transport = MmioTransport::new(mem.clone(), device, irq.try_clone().unwrap()).unwrap();
        let transport = Arc::new(Mutex::new(transport));
        let mut bus = Bus::new();
        bus.insert(transport.clone(), BASE, MMIO_WINDOW).unwrap();
        Self {
            mem,
            bus,
            transport,
            irq,
        }
    }

    fn r(&self, offset: u32) -> u32 {
        let mut data = [0u8; 4];
        assert!(self.bus.read(BASE + u64::from(offset), &mut data));
        u32::from_le_bytes(data)
    }

    fn w(&self, offset: u32, value: u32) {
        assert!(self
            .bus
            .write(BASE + u64::from(offset), &value.to_le_bytes()));
    }

    fn status(&self) -> u32 {
        self.r(VIRTIO_MMIO_STATUS)
    }

    fn invalid(&self) -> u64 {
        self.transport.lock().unwrap().invalid_accesses()
    }

    fn write_features(&self, features: u64) {
        self.w(VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
        self.w(VIRTIO_MMIO_DRIVER_FEATURES, features as u32);
        self.w(VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
        self.w(VIRTIO_MMIO_DRIVER_FEATURES, (features >> 32) as u32);
    }

    /// Reset, ACKNOWLEDGE, DRIVER, features, FEATURES_OK.
    fn negotiate(&self, features: u64) {
        self.w(VIRTIO_MMIO_STATUS, 0);
        self.w(VIRTIO_MMIO_STATUS, ACKNOWLEDGE);
        self.w(VIRTIO_MMIO_STATUS, ACKNOWLEDGE | DRIVER);
        self.write_features(features);
        self.w(VIRTIO_MMIO_STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK);
        assert_eq!(self.status(), ACKNOWLEDGE | DRIVER | FEATURES_OK);
    }

    fn setup_queue(&self, index: u32, size: u16, desc: u64, avail: u64, used: u64) {
        self.w(VIRTIO_MMIO_QUEUE_SEL, index);
        assert_eq!(self.r(VIRTIO_MMIO_QUEUE_READY), 0);
        self.w(VIRTIO_MMIO_QUEUE_NUM, u32::from(size));
        for (low, addr) in [
            (VIRTIO_MMIO_QUEUE_DESC_LOW, desc),
            (VIRTIO_MMIO_QUEUE_AVAIL_LOW, avail),
            (VIRTIO_MMIO_QUEUE_USED_LOW, used),
        ] {
            self.w(low, addr as u32);
            self.w(low + 4, (addr >> 32) as u32);
        }
        self.w(VIRTIO_MMIO_QUEUE_READY, 1);
    }

    /// Sets up queue `index` on `vq`'s descriptor table and available ring, with the used ring
    /// at [`used_ring_of`] (the mock's own used ring overlaps its available ring).
    fn setup_mock_queue(&self, index: u32, vq: &MockSplitQueue<GuestMemoryMmap>, size: u16) {
        let (desc, avail) = (vq.desc_table_addr().0, vq.avail_addr().0);
        self.setup_queue(index, size, desc, avail, used_ring_of(vq));
    }

    fn driver_ok(&self) {
        self.w(
            VIRTIO_MMIO_STATUS,
            ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK,
        );
    }
}

/// Where `setup_mock_queue` puts the used ring: 4 KiB past the mock's available ring.
fn used_ring_of(vq: &MockSplitQueue<GuestMemoryMmap>) -> u64 {
    vq.avail_addr().0 + 0x1000
}

fn dummy() -> (Arc<Mutex<Dummy>>, Fixture) {
    let dev = Arc::new(Mutex::new(Dummy::new()));
    let fx = Fixture::new(dev.clone());
    (dev, fx)
}

#[test]
fn identification_registers() {
    let (_, fx) = dummy();
    assert_eq!(fx.r(VIRTIO_MMIO_MAGIC_VALUE), 0x7472_6976);
    assert_eq!(fx.r(VIRTIO_MMIO_VERSION), 2);
    assert_eq!(fx.r(VIRTIO_MMIO_DEVICE_ID), 0x42);
    assert_eq!(fx.r(VIRTIO_MMIO_VENDOR_ID), VENDOR_ID);
    fx.w(VIRTIO_MMIO_DEVICE_FEATURES_SEL, 0);
    assert_eq!(
        fx.r(VIRTIO_MMIO_DEVICE_FEATURES),
        (F_EVENT_IDX | F_DEVICE) as u32
    );
    fx.w(VIRTIO_MMIO_DEVICE_FEATURES_SEL, 1);
    assert_eq!(fx.r(VIRTIO_MMIO_DEVICE_FEATURES), 1);
    fx.w(VIRTIO_MMIO_DEVICE_FEATURES_SEL, 2);
    assert_eq!(fx.r(VIRTIO_MMIO_DEVICE_FEATURES), 0);
    for (sel, max) in [(0, 256), (1, 16), (2, 0), (u32::MAX, 0)] {
        fx.w(VIRTIO_MMIO_QUEUE_SEL, sel);
        assert_eq!(fx.r(VIRTIO_MMIO_QUEUE_NUM_MAX), max);
        assert_eq!(fx.r(VIRTIO_MMIO_QUEUE_READY), 0);
    }
    assert_eq!(fx.r(VIRTIO_MMIO_SHM_LEN_LOW), u32::MAX);
    assert_eq!(fx.r(VIRTIO_MMIO_CONFIG_GENERATION), 0);
    assert_eq!(fx.r(VIRTIO_MMIO_INTERRUPT_STATUS), 0);
    assert_eq!(fx.status(), 0);
    assert_eq!(fx.invalid(), 0);
}

#[test]
fn full_handshake_activates_the_device() {
    let (dev, fx) = dummy();
    let vq = MockSplitQueue::create(&fx.mem, GuestAddress(Q0), 256);
    fx.negotiate(VIRTIO_F_VERSION_1 | F_EVENT_IDX);
    fx.setup_mock_queue(0, &vq, 128);
    assert_eq!(fx.r(VIRTIO_MMIO_QUEUE_READY), 1);
    assert_eq!(fx.r(VIRTIO_MMIO_QUEUE_NUM), 128);
    assert_eq!(fx.r(VIRTIO_MMIO_QUEUE_DESC_LOW), Q0 as u32);
    fx.driver_ok();
    assert_eq!(fx.status(), ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
    let d = dev.lock().unwrap();
    let acked = VIRTIO_F_VERSION_1 | F_EVENT_IDX;
    // Queue 1 was never enabled: handed over, but not ready.
    let queues = vec![(true, 128, true), (false, 16, true)];
    assert_eq!(d.activations, vec![(acked, queues)]);
    drop(d);
    assert_eq!(fx.invalid(), 0);
    // Queue registers are frozen after DRIVER_OK.
    fx.w(VIRTIO_MMIO_QUEUE_SEL, 1);
    fx.w(VIRTIO_MMIO_QUEUE_READY, 1);
    assert_eq!(fx.r(VIRTIO_MMIO_QUEUE_READY), 0);
    assert_eq!(fx.invalid(), 1);
}

#[test]
fn wrong_order_writes_are_refused() {
    let (dev, fx) = dummy();
    fx.w(VIRTIO_MMIO_STATUS, DRIVER);
    assert_eq!(fx.status(), 0);
    fx.w(VIRTIO_MMIO_STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK);
    assert_eq!(fx.status(), 0);
    // Driver features before DRIVER are ignored.
    fx.write_features(VIRTIO_F_VERSION_1);
    fx.w(VIRTIO_MMIO_STATUS, ACKNOWLEDGE);
    fx.w(VIRTIO_MMIO_STATUS, ACKNOWLEDGE | DRIVER);
    // Only these features count, so FEATURES_OK is refused (no VERSION_1).
    fx.w(VIRTIO_MMIO_STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK);
    assert_eq!(fx.status(), ACKNOWLEDGE | DRIVER);
    // Queue set-up before FEATURES_OK is refused.
    fx.w(VIRTIO_MMIO_QUEUE_SEL, 0);
    fx.w(VIRTIO_MMIO_QUEUE_NUM, 64);
    assert_eq!(fx.r(VIRTIO_MMIO_QUEUE_NUM), 256);
    // DRIVER_OK without FEATURES_OK is refused.
    fx.w(VIRTIO_MMIO_STATUS, ACKNOWLEDGE | DRIVER | DRIVER_OK);
    assert_eq!(fx.status(), ACKNOWLEDGE | DRIVER);
    // A status write clearing bits (other than 0) is refused.
    fx.w(VIRTIO_MMIO_STATUS, ACKNOWLEDGE);
    assert_eq!(fx.status(), ACKNOWLEDGE | DRIVER);
    fx.write_features(VIRTIO_F_VERSION_1);
    fx.w(VIRTIO_MMIO_STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK);
    assert_eq!(fx.status(), ACKNOWLEDGE | DRIVER | FEATURES_OK);
    // Features are frozen after FEATURES_OK.
    fx.write_features(VIRTIO_F_VERSION_1 | F_DEVICE);
    fx.driver_ok();
    assert_eq!(dev.lock().unwrap().activations[0].0, VIRTIO_F_VERSION_1);
    // FAILED may be set at any time.
    fx.w(VIRTIO_MMIO_STATUS, fx.status() | FAILED);
    assert_eq!(fx.status() & FAILED, FAILED);
    assert!(fx.invalid() >= 8);
}

#[test]
fn unacceptable_features_are_refused() {
    let (_, fx) = dummy();
    for features in [
        F_DEVICE,
        VIRTIO_F_VERSION_1 | (1 << 40),
        VIRTIO_F_VERSION_1 | 1,
    ] {
        fx.w(VIRTIO_MMIO_STATUS, 0);
        fx.w(VIRTIO_MMIO_STATUS, ACKNOWLEDGE | DRIVER);
        fx.write_features(features);
        fx.w(VIRTIO_MMIO_STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK);
        assert_eq!(fx.status(), ACKNOWLEDGE | DRIVER, "features {features:#x}");
    }
    // A bit in a features word beyond 64 bits.
    fx.w(VIRTIO_MMIO_STATUS, 0);
    fx.w(VIRTIO_MMIO_STATUS, ACKNOWLEDGE | DRIVER);
    fx.write_features(VIRTIO_F_VERSION_1);
    fx.w(VIRTIO_MMIO_DRIVER_FEATURES_SEL, 2);
    fx.w(VIRTIO_MMIO_DRIVER_FEATURES, 1);
    fx.w(VIRTIO_MMIO_STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK);
    assert_eq!(fx.status(), ACKNOWLEDGE | DRIVER);
}

#[test]
fn config_space_reads_and_writes() {
    let (dev, fx) = dummy();
    let cfg = BASE + CONFIG_SPACE_OFFSET;
    let mut b1 = [0u8; 1];
    assert!(fx.bus.read(cfg + 1, &mut b1));
    assert_eq!(b1, *b"e");
    let mut b2 = [0u8; 2];
    assert!(fx.bus.read(cfg + 2, &mut b2));
    assert_eq!(b2, *b"tr");
    let mut b4 = [0u8; 4];
    assert!(fx.bus.read(cfg, &mut b4));
    assert_eq!(b4, *b"petr");
    let mut b8 = [0u8; 8];
    assert!(fx.bus.read(cfg, &mut b8));
    assert_eq!(b8, *b"petrel!\0");
    // Past the device's config: zeros (the transport clears the buffer).
    assert!(fx.bus.read(cfg + 0x10, &mut b4));
    assert_eq!(b4, [0; 4]);
    // A 3-byte access is refused.
    let mut b3 = [0xaau8; 3];
    assert!(fx.bus.read(cfg, &mut b3));
    assert_eq!(b3, [0; 3]);
    assert!(fx.bus.write(cfg, b"PE"));
    assert!(fx.bus.write(cfg, b"XYZ"));
    assert_eq!(&dev.lock().unwrap().config, b"PEtrel!\0");
    assert_eq!(fx.invalid(), 2);
}

#[test]
fn interrupt_status_and_ack() {
    let (dev, fx) = dummy();
    let vq = MockSplitQueue::create(&fx.mem, GuestAddress(Q0), 256);
    fx.negotiate(VIRTIO_F_VERSION_1);
    fx.setup_mock_queue(0, &vq, 256);
    fx.driver_ok();
    let int = dev.lock().unwrap().interrupt.clone().unwrap();
    int.trigger(InterruptKind::Queue(0)).unwrap();
    assert_eq!(fx.r(VIRTIO_MMIO_INTERRUPT_STATUS), INT_USED_RING);
    assert_eq!(fx.irq.read().unwrap(), 1);
    int.trigger(InterruptKind::Config).unwrap();
    assert_eq!(
        fx.r(VIRTIO_MMIO_INTERRUPT_STATUS),
        INT_USED_RING | INT_CONFIG
    );
    assert_eq!(fx.r(VIRTIO_MMIO_CONFIG_GENERATION), 1);
    fx.w(VIRTIO_MMIO_INTERRUPT_ACK, INT_USED_RING);
    assert_eq!(fx.r(VIRTIO_MMIO_INTERRUPT_STATUS), INT_CONFIG);
    fx.w(VIRTIO_MMIO_INTERRUPT_ACK, INT_CONFIG);
    assert_eq!(fx.r(VIRTIO_MMIO_INTERRUPT_STATUS), 0);
    // InterruptStatus is read-only.
    fx.w(VIRTIO_MMIO_INTERRUPT_STATUS, 3);
    assert_eq!(fx.r(VIRTIO_MMIO_INTERRUPT_STATUS), 0);
}

#[test]
fn reset_returns_to_the_initial_state() {
    let (dev, fx) = dummy();
    let vq = MockSplitQueue::create(&fx.mem, GuestAddress(Q0), 256);
    fx.negotiate(VIRTIO_F_VERSION_1 | F_EVENT_IDX);
    fx.setup_mock_queue(0, &vq, 64);
    fx.w(VIRTIO_MMIO_QUEUE_SEL, 1);
    fx.driver_ok();
    let int = dev.lock().unwrap().interrupt.clone().unwrap();
    int.trigger(InterruptKind::Queue(0)).unwrap();
    fx.w(VIRTIO_MMIO_STATUS, 0);
    // One reset at the start of `negotiate`, one now.
    assert_eq!(dev.lock().unwrap().resets, 2);
    assert!(!dev.lock().unwrap().is_activated());
    assert_eq!(fx.status(), 0);
    assert_eq!(fx.r(VIRTIO_MMIO_INTERRUPT_STATUS), 0);
    assert_eq!(fx.r(VIRTIO_MMIO_QUEUE_NUM_MAX), 256, "QueueSel back to 0");
    assert_eq!(fx.r(VIRTIO_MMIO_QUEUE_READY), 0);
    assert_eq!(fx.r(VIRTIO_MMIO_QUEUE_NUM), 256);
    assert_eq!(fx.r(VIRTIO_MMIO_QUEUE_DESC_LOW), 0);
    // And the whole handshake works again.
    fx.negotiate(VIRTIO_F_VERSION_1);
    fx.setup_mock_queue(0, &vq, 256);
    fx.driver_ok();
    let d = dev.lock().unwrap();
    assert_eq!(d.activations.len(), 2);
    assert_eq!(d.activations[1].1[0], (true, 256, false));
}

#[test]
fn bad_queue_sizes_are_refused_and_fail_driver_ok() {
    for size in [0u32, 3, 512, 0x1_0000] {
        let (dev, fx) = dummy();
        let vq = MockSplitQueue::create(&fx.mem, GuestAddress(Q0), 256);
        fx.negotiate(VIRTIO_F_VERSION_1);
        fx.w(VIRTIO_MMIO_QUEUE_SEL, 0);
        fx.w(VIRTIO_MMIO_QUEUE_NUM, size);
        assert_eq!(fx.r(VIRTIO_MMIO_QUEUE_NUM), 256, "size {size}");
        fx.setup_mock_queue(0, &vq, 256);
        fx.driver_ok();
        assert_eq!(fx.status() & DEVICE_NEEDS_RESET, DEVICE_NEEDS_RESET);
        assert!(dev.lock().unwrap().activations.is_empty());
        assert_eq!(fx.r(VIRTIO_MMIO_INTERRUPT_STATUS), INT_CONFIG);
    }
}

#[test]
fn queue_outside_memory_fails_driver_ok() {
    let end = MEM_SIZE as u64;
    let layouts = [
        (end - 0x100, Q0 + 0x1000, Q0 + 0x2000), // descriptor table crosses the end
        (Q0, 0x1_0000_0000, Q0 + 0x2000),        // driver area above memory
        (Q0, Q0 + 0x1000, !3u64),                // device area at the top of the space
    ];
    for (desc, avail, used) in layouts {
        let (dev, fx) = dummy();
        fx.negotiate(VIRTIO_F_VERSION_1);
        fx.setup_queue(0, 256, desc, avail, used);
        fx.driver_ok();
        assert_eq!(
            fx.status(),
            ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK | DEVICE_NEEDS_RESET
        );
        assert!(dev.lock().unwrap().activations.is_empty());
        // The driver writing its status back does not clear DEVICE_NEEDS_RESET.
        fx.w(VIRTIO_MMIO_STATUS, fx.status() & !DEVICE_NEEDS_RESET);
        assert_eq!(fx.status() & DEVICE_NEEDS_RESET, DEVICE_NEEDS_RESET);
        // Only a reset does.
        fx.w(VIRTIO_MMIO_STATUS, 0);
        assert_eq!(fx.status(), 0);
    }
}

#[test]
fn overlapping_queue_areas_fail_driver_ok() {
    // 256 entries: table 4096 bytes, available ring 518, used ring 2054.
    let layouts = [
        (Q0, Q0 + 0x1000, Q0 + 0x1000),    // used ring on the available ring
        (Q0, Q0 + 0x1000, Q0 + 0x1204),    // used ring on the avail ring's used_event
        (Q0, Q0 + 0xff0, Q0 + 0x2000),     // available ring on the table
        (Q0 + 0x800, Q0 + 0x2000, Q0 + 4), // used ring on the table
    ];
    for (desc, avail, used) in layouts {
        let (dev, fx) = dummy();
        fx.negotiate(VIRTIO_F_VERSION_1);
        fx.setup_queue(0, 256, desc, avail, used);
        fx.driver_ok();
        assert_eq!(fx.status() & DEVICE_NEEDS_RESET, DEVICE_NEEDS_RESET);
        assert!(dev.lock().unwrap().activations.is_empty());
        assert_eq!(fx.r(VIRTIO_MMIO_INTERRUPT_STATUS), INT_CONFIG);
    }
    // Areas packed back to back are fine, and a queue that is not ready is not checked.
    let (dev, fx) = dummy();
    fx.negotiate(VIRTIO_F_VERSION_1);
    fx.setup_queue(0, 256, Q0, Q0 + 0x1002, Q0 + 0x1208);
    fx.setup_queue(1, 16, Q1, Q1, Q1);
    fx.w(VIRTIO_MMIO_QUEUE_READY, 0);
    fx.driver_ok();
    assert_eq!(fx.status() & DEVICE_NEEDS_RESET, 0);
    assert_eq!(dev.lock().unwrap().activations.len(), 1);
}

#[test]
fn misaligned_queue_address_fails_driver_ok() {
    let (dev, fx) = dummy();
    fx.negotiate(VIRTIO_F_VERSION_1);
    fx.setup_queue(0, 256, Q0 + 8, Q0 + 0x1000, Q0 + 0x2000);
    assert_eq!(fx.r(VIRTIO_MMIO_QUEUE_DESC_LOW), 0);
    fx.driver_ok();
    assert_eq!(fx.status() & DEVICE_NEEDS_RESET, DEVICE_NEEDS_RESET);
    assert!(dev.lock().unwrap().activations.is_empty());
}

#[test]
fn device_activation_failure_sets_needs_reset() {
    let (dev, fx) = dummy();
    dev.lock().unwrap().fail_activate = true;
    let vq = MockSplitQueue::create(&fx.mem, GuestAddress(Q1), 16);
    fx.negotiate(VIRTIO_F_VERSION_1);
    fx.setup_mock_queue(1, &vq, 16);
    fx.driver_ok();
    assert_eq!(fx.status() & DEVICE_NEEDS_RESET, DEVICE_NEEDS_RESET);
    // Notifications to a device that needs a reset are ignored.
    fx.w(VIRTIO_MMIO_QUEUE_NOTIFY, 1);
    assert!(dev.lock().unwrap().events[1].read().is_err());
}

#[test]
fn unknown_offsets_and_wrong_widths_are_ignored() {
    let (_, fx) = dummy();
    assert_eq!(fx.r(0xf8), 0); // reserved
    fx.w(0xf8, 1);
    fx.w(VIRTIO_MMIO_MAGIC_VALUE, 0);
    assert_eq!(fx.r(VIRTIO_MMIO_MAGIC_VALUE), MAGIC_VALUE);
    let mut b2 = [0xffu8; 2];
    assert!(fx
        .bus
        .read(BASE + u64::from(VIRTIO_MMIO_MAGIC_VALUE), &mut b2));
    assert_eq!(b2, [0, 0]);
    let mut b4 = [0xffu8; 4];
    assert!(fx.bus.read(BASE + 2, &mut b4));
    assert_eq!(b4, [0; 4]);
    assert!(fx.bus.write(BASE + u64::from(VIRTIO_MMIO_STATUS), &[1]));
    assert_eq!(fx.status(), 0);
    assert!(fx.bus.write(BASE + u64::from(VIRTIO_MMIO_STATUS), &[1; 8]));
    assert_eq!(fx.status(), 0);
    assert_eq!(fx.invalid(), 7);
}

#[test]
fn notify_writes_the_queue_eventfd_only_after_driver_ok() {
    let (dev, fx) = dummy();
    let vq = MockSplitQueue::create(&fx.mem, GuestAddress(Q0), 256);
    fx.negotiate(VIRTIO_F_VERSION_1);
    fx.setup_mock_queue(0, &vq, 256);
    fx.w(VIRTIO_MMIO_QUEUE_NOTIFY, 0);
    assert!(dev.lock().unwrap().events[0].read().is_err());
    fx.driver_ok();
    fx.w(VIRTIO_MMIO_QUEUE_NOTIFY, 0);
    fx.w(VIRTIO_MMIO_QUEUE_NOTIFY, 1);
    fx.w(VIRTIO_MMIO_QUEUE_NOTIFY, 2);
    let d = dev.lock().unwrap();
    assert_eq!(d.events[0].read().unwrap(), 1);
    assert_eq!(d.events[1].read().unwrap(), 1);
    assert_eq!(fx.invalid(), 2);
    // Each notification that reached the transport is counted as a slow-path one.
    assert_eq!(fx.transport.lock().unwrap().slow_notifications(), 2);
}

#[test]
fn new_rejects_inconsistent_devices() {
    struct Bad(Dummy, &'static [u16]);
    impl MutEventSubscriber for Bad {
        fn process(&mut self, _: Events, _: &mut EventOps) {}
        fn init(&mut self, _: &mut EventOps) {}
    }
    impl VirtioDevice for Bad {
        fn device_type(&self) -> u32 {
            0
        }
        fn queue_max_sizes(&self) -> &[u16] {
            self.1
        }
        fn features(&self) -> u64 {
            0
        }
        fn read_config(&self, _: u64, _: &mut [u8]) {}
        fn write_config(&mut self, _: u64, _: &[u8]) {}
        fn activate(&mut self, _: ActivateContext) -> std::result::Result<(), ActivateError> {
            Ok(())
        }
        fn reset(&mut self) {}
        fn queue_events(&self) -> &[EventFd] {
            self.0.queue_events()
        }
        fn is_activated(&self) -> bool {
            false
        }
        fn active_queue_states(&self) -> Vec<(usize, virtio_queue::QueueState)> {
            Vec::new()
        }
    }
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
    for (sizes, want_count_error) in [(&[256u16, 3][..], false), (&[256][..], true)] {
        let dev = Arc::new(Mutex::new(Bad(Dummy::new(), sizes)));
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        let err = MmioTransport::new(mem.clone(), dev, irq).err().unwrap();
        assert_eq!(
            matches!(err, Error::QueueEventCount { .. }),
            want_count_error,
            "{err}"
        );
    }
}

#[test]
fn rng_end_to_end_through_the_bus_and_the_event_loop() {
    let rng = Arc::new(Mutex::new(Rng::new().unwrap()));
    let fx = Fixture::new(rng.clone());
    let mut manager = EventManager::<Arc<Mutex<Rng>>>::new().unwrap();
    manager.add_subscriber(rng.clone());
    let vq = MockSplitQueue::create(&fx.mem, GuestAddress(Q0), 256);
    fx.negotiate(VIRTIO_F_VERSION_1 | F_EVENT_IDX);
    fx.setup_mock_queue(0, &vq, 256);
    fx.driver_ok();
    assert!(rng.lock().unwrap().is_activated());
    let buf = 0x8_0000;
    let d = RawDescriptor::from(Descriptor::new(buf, 64, VRING_DESC_F_WRITE as u16, 0));
    vq.add_desc_chains(&[d], 0).unwrap();
    fx.w(VIRTIO_MMIO_QUEUE_NOTIFY, 0);
    assert_eq!(manager.run_with_timeout(1000).unwrap(), 1);
    let used = GuestAddress(used_ring_of(&vq));
    assert_eq!(fx.mem.read_obj::<u16>(used.unchecked_add(2)).unwrap(), 1);
    assert_eq!(fx.mem.read_obj::<u32>(used.unchecked_add(8)).unwrap(), 64);
    assert_eq!(fx.r(VIRTIO_MMIO_INTERRUPT_STATUS), INT_USED_RING);
    assert_eq!(fx.irq.read().unwrap(), 1);
    assert_eq!(rng.lock().unwrap().counters().bytes, 64);
    // Reset deactivates the device; a later kick is drained and ignored.
    fx.w(VIRTIO_MMIO_STATUS, 0);
    assert!(!rng.lock().unwrap().is_activated());
    rng.lock().unwrap().queue_events()[0].write(1).unwrap();
    assert_eq!(manager.run_with_timeout(1000).unwrap(), 1);
    assert_eq!(rng.lock().unwrap().counters().requests, 1);
}
