//! The virtio-pci transport driven the way a guest driver does it: through ECAM and BAR 0 on
//! a real segment, with MSI-X.

use std::sync::{Arc, Mutex};

use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::*;
use crate::pci::config_space::{COMMAND, COMMAND_MEMORY};
use crate::pci::wiring::MsiMessage;
use crate::pci::{Ecam, MmioWindow, PciSegment};
use crate::virtio::test_utils::mem;
use crate::virtio::{ActivateContext, ActivateError, InterruptKind, VirtioInterrupt};

const WIN: (u64, u64) = (0xc000_0000, 0x1000_0000);
const BAR: u64 = 0xc000_8000;

struct Dummy {
    events: Vec<EventFd>,
    interrupt: Option<Arc<dyn VirtioInterrupt>>,
    activated: bool,
}

impl MutEventSubscriber for Dummy {
    fn process(&mut self, _: Events, _: &mut EventOps) {}
    fn init(&mut self, _: &mut EventOps) {}
}

impl VirtioDevice for Dummy {
    fn device_type(&self) -> u32 {
        device_type::BLOCK
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[16]
    }
    fn features(&self) -> u64 {
        crate::virtio::VIRTIO_F_VERSION_1
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        crate::virtio::read_config_space(b"petrel", offset, data);
    }
    fn write_config(&mut self, _: u64, _: &[u8]) {}
    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        self.interrupt = Some(ctx.interrupt);
        self.activated = true;
        Ok(())
    }
    fn reset(&mut self) {
        self.activated = false;
    }
    fn queue_events(&self) -> &[EventFd] {
        &self.events
    }
}

#[derive(Default)]
struct Wiring(Mutex<Vec<String>>);

impl PciWiring for Wiring {
    fn add_ioevent(&self, _: &EventFd, addr: u64, m: IoEventMatch) -> Result<(), String> {
        self.0
            .lock()
            .unwrap()
            .push(format!("ioevent {addr:#x} {m:?}"));
        Ok(())
    }
    fn remove_ioevent(&self, _: &EventFd, addr: u64, m: IoEventMatch) -> Result<(), String> {
        self.0
            .lock()
            .unwrap()
            .push(format!("remove {addr:#x} {m:?}"));
        Ok(())
    }
    fn set_msi_route(&self, gsi: u32, m: MsiMessage) -> Result<(), String> {
        self.0
            .lock()
            .unwrap()
            .push(format!("route {gsi} {:#x} {:#x}", m.address, m.data));
        Ok(())
    }
}

struct Guest {
    ecam: Ecam,
    bar: MmioWindow,
}

impl Guest {
    fn cfg_read(&mut self, off: u64, len: usize) -> u64 {
        let mut b = [0u8; 8];
        self.ecam.read(1 << 15 | off, &mut b[..len]);
        u64::from_le_bytes(b)
    }
    fn cfg_write(&mut self, off: u64, data: &[u8]) {
        self.ecam.write(1 << 15 | off, data);
    }
    fn read(&mut self, off: u64, len: usize) -> u64 {
        let mut b = [0u8; 8];
        self.bar.read(BAR - WIN.0 + off, &mut b[..len]);
        u64::from_le_bytes(b)
    }
    fn write(&mut self, off: u64, v: u64, len: usize) {
        self.bar.write(BAR - WIN.0 + off, &v.to_le_bytes()[..len]);
    }
}

#[test]
fn a_driver_finds_the_capabilities_sets_up_msix_and_a_queue() {
    let dummy = Arc::new(Mutex::new(Dummy {
        events: vec![EventFd::new(EFD_NONBLOCK).unwrap()],
        interrupt: None,
        activated: false,
    }));
    let irqs: Vec<EventFd> = (0..2)
        .map(|_| EventFd::new(EFD_NONBLOCK).unwrap())
        .collect();
    let wiring = Arc::new(Wiring::default());
    let dev = VirtioPciDevice::new(
        mem(),
        dummy.clone(),
        0x1_0000_0000,
        irqs.iter().map(|e| e.try_clone().unwrap()).collect(),
        vec![24, 25],
        wiring.clone(),
    )
    .unwrap();
    let mut seg = PciSegment::new([WIN, (1 << 32, 1 << 32)], wiring.clone());
    assert!(seg.insert(1, Arc::new(Mutex::new(dev))));
    let seg = Arc::new(seg);
    let mut g = Guest {
        ecam: Ecam(seg.clone()),
        bar: MmioWindow::new(seg.clone(), WIN.0),
    };
    assert_eq!(g.cfg_read(0, 4), 0x1042_1af4);
    // Walk the capability list: four virtio structures in BAR 0, then MSI-X.
    let mut found = Vec::new();
    let mut msix_cap = 0;
    let mut at = g.cfg_read(0x34, 1);
    while at != 0 {
        let id = g.cfg_read(at, 1);
        if id == 0x09 {
            found.push((g.cfg_read(at + 3, 1), g.cfg_read(at + 8, 4)));
        } else {
            assert_eq!(id, 0x11);
            msix_cap = at;
            assert_eq!(g.cfg_read(at + 2, 2), 1, "two vectors");
            found.push((0x11, g.cfg_read(at + 4, 4)));
        }
        at = g.cfg_read(at + 1, 1);
    }
    assert_eq!(
        found,
        [
            (1, 0),
            (3, 0x1000),
            (4, 0x2000),
            (2, 0x3000),
            (0x11, 0x4000),
            (5, 0)
        ]
    );
    let cfg_cap = {
        let mut at = g.cfg_read(0x34, 1);
        while g.cfg_read(at, 1) != 0x09 || g.cfg_read(at + 3, 1) != 5 {
            at = g.cfg_read(at + 1, 1);
        }
        at
    };
    // Size BAR 0 and move it below 4 GiB, then decode.
    g.cfg_write(0x10, &u32::MAX.to_le_bytes());
    g.cfg_write(0x14, &u32::MAX.to_le_bytes());
    assert_eq!(g.cfg_read(0x10, 4), 0xffff_800c);
    g.cfg_write(0x10, &(BAR as u32).to_le_bytes());
    g.cfg_write(0x14, &0u32.to_le_bytes());
    g.cfg_write(COMMAND as u64, &COMMAND_MEMORY.to_le_bytes());
    assert!(wiring
        .0
        .lock()
        .unwrap()
        .contains(&format!("ioevent {:#x} U16(0)", BAR + NOTIFY_OFFSET)));
    // MSI-X on; vector 1 for the queue, vector 0 for config.
    g.cfg_write(msix_cap + 2, &0x8000u16.to_le_bytes());
    for v in 0..2u64 {
        g.write(MSIX_TABLE_OFFSET + 16 * v, 0xfee0_0000, 4);
        g.write(MSIX_TABLE_OFFSET + 16 * v + 8, 0x30 + v, 4);
        g.write(MSIX_TABLE_OFFSET + 16 * v + 12, 0, 4);
    }
    assert!(wiring
        .0
        .lock()
        .unwrap()
        .contains(&"route 25 0xfee00000 0x31".into()));
    // The handshake.
    g.write(0x14, 1 | 2, 1);
    g.write(0x00, 1, 4);
    assert_eq!(g.read(0x04, 4), 1, "VERSION_1");
    g.write(0x08, 1, 4);
    g.write(0x0c, 1, 4);
    assert_eq!(g.read(0x0c, 4), 1);
    g.write(0x14, 1 | 2 | 8, 1);
    assert_eq!(g.read(0x14, 1), 1 | 2 | 8);
    g.write(0x10, 0, 2);
    g.write(0x10 + 0x0a, 0x7ff, 2);
    assert_eq!(
        g.read(0x1a, 2),
        u64::from(NO_VECTOR),
        "vector beyond the table"
    );
    assert_eq!(g.read(0x12, 2), 1, "one queue");
    g.write(0x16, 0, 2);
    assert_eq!(g.read(0x18, 2), 16);
    g.write(0x18, 8, 2);
    g.write(0x1a, 1, 2);
    assert_eq!(g.read(0x1a, 2), 1);
    g.write(0x20, 0x1_0000, 8);
    g.write(0x28, 0x1_1000, 4);
    g.write(0x2c, 0, 4);
    g.write(0x30, 0x1_2000, 4);
    g.write(0x34, 0, 4);
    assert_eq!(g.read(0x28, 8), 0x1_1000);
    g.write(0x1c, 1, 2);
    g.write(0x14, 1 | 2 | 8 | 4, 1);
    assert_eq!(g.read(0x14, 1), 15);
    assert!(dummy.lock().unwrap().activated);
    assert_eq!(
        g.read(DEVICE_CFG_OFFSET, 4),
        u64::from(u32::from_le_bytes(*b"petr"))
    );
    // The same bytes through the configuration-space window (VIRTIO_PCI_CAP_PCI_CFG), and a
    // write through it: queue_select = 5 lands in the common configuration.
    g.cfg_write(cfg_cap + 4, &[0]);
    g.cfg_write(cfg_cap + 8, &(DEVICE_CFG_OFFSET as u32 + 2).to_le_bytes());
    g.cfg_write(cfg_cap + 12, &2u32.to_le_bytes());
    assert_eq!(
        g.cfg_read(cfg_cap + 16, 2),
        u64::from(u16::from_le_bytes(*b"tr"))
    );
    g.cfg_write(cfg_cap + 8, &0x16u32.to_le_bytes());
    g.cfg_write(cfg_cap + 16, &5u16.to_le_bytes());
    assert_eq!(g.read(0x16, 2), 5);
    g.write(0x16, 0, 2);
    // A used-ring interrupt raises vector 1 and sets the ISR, which a read clears.
    let int = dummy.lock().unwrap().interrupt.clone().unwrap();
    int.trigger(InterruptKind::Queue(0)).unwrap();
    assert_eq!(irqs[1].read().unwrap(), 1);
    assert!(irqs[0].read().is_err());
    assert_eq!(g.read(ISR_OFFSET, 1), 1);
    assert_eq!(g.read(ISR_OFFSET, 1), 0);
    int.trigger(InterruptKind::Config).unwrap();
    assert_eq!(irqs[0].read().unwrap(), 1);
    // A slow-path notification (2 bytes at the queue's address) reaches the queue's eventfd.
    g.write(NOTIFY_OFFSET, 0, 2);
    assert_eq!(dummy.lock().unwrap().events[0].read().unwrap(), 1);
    // Reset through the status byte.
    g.write(0x14, 0, 1);
    assert!(!dummy.lock().unwrap().activated);
    assert_eq!(
        g.read(0x1a, 2),
        u64::from(NO_VECTOR),
        "reset forgets the vectors"
    );
}
