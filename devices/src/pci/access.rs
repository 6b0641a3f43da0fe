//! How the guest reaches the segment: ECAM (configuration space as MMIO, 4 KiB per function),
//! the legacy configuration mechanism #1 (address at 0xCF8, data at 0xCFC..0xD00), and the
//! BAR windows, each as a [`BusDevice`].

use std::sync::Arc;

use super::PciSegment;
use crate::bus::BusDevice;

/// Ports of configuration mechanism #1 (0xCF8..0xD00).
pub const CONFIG_PORTS_LEN: u64 = 8;
/// CONFIG_ADDRESS: enable bit.
const ENABLE: u32 = 1 << 31;

/// ECAM for bus 0 (and beyond, which is empty): offset = bus << 20 | dev << 15 | fn << 12 |
/// register.
pub struct Ecam(pub Arc<PciSegment>);

fn ecam_split(offset: u64) -> (u8, u8, u8, usize) {
    (
        (offset >> 20) as u8,
        ((offset >> 15) & 0x1f) as u8,
        ((offset >> 12) & 7) as u8,
        (offset & 0xfff) as usize,
    )
}

impl BusDevice for Ecam {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let (bus, dev, func, reg) = ecam_split(offset);
        self.0.config_read(bus, dev, func, reg, data);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let (bus, dev, func, reg) = ecam_split(offset);
        self.0.config_write(bus, dev, func, reg, data);
    }
}

/// Configuration mechanism #1: CONFIG_ADDRESS at 0xCF8 (4 bytes), CONFIG_DATA at 0xCFC.
pub struct ConfigPorts {
    segment: Arc<PciSegment>,
    address: u32,
}

impl ConfigPorts {
    /// The ports of `segment`.
    pub fn new(segment: Arc<PciSegment>) -> Self {
        ConfigPorts {
            segment,
            address: 0,
        }
    }

    /// (bus, device, function, register) for a data access at `offset` (4..8), if enabled.
    fn target(&self, offset: u64) -> Option<(u8, u8, u8, usize)> {
        let a = self.address;
        (a & ENABLE != 0).then(|| {
            (
                (a >> 16) as u8,
                ((a >> 11) & 0x1f) as u8,
                ((a >> 8) & 7) as u8,
                (a & 0xfc) as usize + (offset - 4) as usize,
            )
        })
    }
}

impl BusDevice for ConfigPorts {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset == 0 && data.len() == 4 {
            data.copy_from_slice(&self.address.to_le_bytes());
            return;
        }
        match (offset >= 4).then(|| self.target(offset)).flatten() {
            Some((bus, dev, func, reg)) => self.segment.config_read(bus, dev, func, reg, data),
            None => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset == 0 {
            if let Ok(b) = <[u8; 4]>::try_from(data) {
                self.address = u32::from_le_bytes(b) & !3;
            }
            return;
        }
        if let Some((bus, dev, func, reg)) = (offset >= 4).then(|| self.target(offset)).flatten() {
            self.segment.config_write(bus, dev, func, reg, data);
        }
    }
}

/// One of the segment's BAR windows on the MMIO bus (inserted at `base`).
pub struct MmioWindow {
    segment: Arc<PciSegment>,
    base: u64,
}

impl MmioWindow {
    /// The window of `segment` that starts at `base`.
    pub fn new(segment: Arc<PciSegment>, base: u64) -> Self {
        MmioWindow { segment, base }
    }
}

impl BusDevice for MmioWindow {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if !self.segment.bar_read(self.base + offset, data) {
            data.fill(0xff);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        self.segment.bar_write(self.base + offset, data);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    use super::*;
    use crate::pci::config_space::{BarKind, ConfigSpace, Identity, COMMAND, COMMAND_MEMORY};
    use crate::pci::wiring::{IoEventMatch, MsiMessage, PciWiring};
    use crate::pci::{BarIoEvent, HostBridge, PciDevice};

    /// A function with a 64-bit BAR 0 (4 KiB) and a 32-bit BAR 2 (256 bytes) that remembers
    /// BAR writes and wants an ioeventfd at BAR 0 + 0x10.
    struct Fake {
        config: ConfigSpace,
        initial: ConfigSpace,
        writes: Vec<(usize, u64, Vec<u8>)>,
        evt: EventFd,
    }

    impl Fake {
        fn new() -> Self {
            let mut config = ConfigSpace::new(Identity {
                vendor: 0x1234,
                device: 0x5678,
                class: 0xff_0000,
                revision: 0,
                subsystem_vendor: 0,
                subsystem: 0,
            });
            config
                .add_bar(0, 0x1000, BarKind::Mem64, 0x1_0000_0000)
                .unwrap();
            config
                .add_bar(2, 0x100, BarKind::Mem32, 0xc000_0000)
                .unwrap();
            Fake {
                initial: config.snapshot(),
                config,
                writes: Vec::new(),
                evt: EventFd::new(EFD_NONBLOCK).unwrap(),
            }
        }
    }

    impl PciDevice for Fake {
        fn config_read(&mut self, offset: usize, data: &mut [u8]) {
            self.config.read(offset, data);
        }
        fn config_write(&mut self, offset: usize, data: &[u8]) {
            self.config.write(offset, data);
        }
        fn decoded_bars(&self) -> Vec<(usize, u64, u64)> {
            self.config.decoded_bars()
        }
        fn bar_read(&mut self, bar: usize, offset: u64, data: &mut [u8]) {
            data.fill(bar as u8 + offset as u8);
        }
        fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8]) {
            self.writes.push((bar, offset, data.to_vec()));
        }
        fn ioevents(&self) -> Vec<BarIoEvent> {
            vec![BarIoEvent {
                bar: 0,
                offset: 0x10,
                datamatch: IoEventMatch::U16(3),
                evt: self.evt.try_clone().unwrap(),
            }]
        }
        fn reset(&mut self) {
            self.config.reset_to(&self.initial);
        }
    }

    #[derive(Default)]
    struct Log(Mutex<Vec<String>>);

    impl PciWiring for Log {
        fn add_ioevent(&self, _: &EventFd, addr: u64, m: IoEventMatch) -> Result<(), String> {
            self.0.lock().unwrap().push(format!("add {addr:#x} {m:?}"));
            Ok(())
        }
        fn remove_ioevent(&self, _: &EventFd, addr: u64, m: IoEventMatch) -> Result<(), String> {
            self.0
                .lock()
                .unwrap()
                .push(format!("remove {addr:#x} {m:?}"));
            Ok(())
        }
        fn set_msi_route(&self, _: u32, _: MsiMessage) -> Result<(), String> {
            Ok(())
        }
    }

    const WIN32: (u64, u64) = (0xc000_0000, 0x1000_0000);
    const WIN64: (u64, u64) = (0x1_0000_0000, 0x1_0000_0000);

    fn segment() -> (Arc<PciSegment>, Arc<Mutex<Fake>>, Arc<Log>) {
        let log = Arc::new(Log::default());
        let mut seg = PciSegment::new([WIN32, WIN64], log.clone());
        assert!(seg.insert(0, Arc::new(Mutex::new(HostBridge::new()))));
        let fake = Arc::new(Mutex::new(Fake::new()));
        assert!(seg.insert(3, fake.clone()));
        assert!(!seg.insert(3, fake.clone()), "slot taken");
        (Arc::new(seg), fake, log)
    }

    fn cf8(ports: &mut ConfigPorts, dev: u32, reg: u32) {
        ports.write(0, &(ENABLE | dev << 11 | reg).to_le_bytes());
    }

    fn ecam_read32(e: &mut Ecam, dev: u64, reg: u64) -> u32 {
        let mut b = [0u8; 4];
        e.read(dev << 15 | reg, &mut b);
        u32::from_le_bytes(b)
    }

    #[test]
    fn both_config_mechanisms_see_the_same_functions() {
        let (seg, _, _) = segment();
        let mut ecam = Ecam(seg.clone());
        let mut ports = ConfigPorts::new(seg.clone());
        assert_eq!(ecam_read32(&mut ecam, 0, 0), 0x0008_1b36);
        assert_eq!(ecam_read32(&mut ecam, 0, 8) >> 8, 0x06_0000);
        assert_eq!(ecam_read32(&mut ecam, 3, 0), 0x5678_1234);
        assert_eq!(ecam_read32(&mut ecam, 4, 0), u32::MAX, "empty slot");
        assert_eq!(
            ecam_read32(&mut ecam, 3 | 1 << 5, 0),
            u32::MAX,
            "bus 1 is empty"
        );
        cf8(&mut ports, 3, 0);
        let mut b = [0u8; 4];
        ports.read(0, &mut b);
        assert_eq!(u32::from_le_bytes(b), ENABLE | 3 << 11);
        ports.read(4, &mut b);
        assert_eq!(u32::from_le_bytes(b), 0x5678_1234);
        let mut w = [0u8; 2];
        ports.read(6, &mut w);
        assert_eq!(u16::from_le_bytes(w), 0x5678);
        // Disabled address: all ones.
        ports.write(0, &(3u32 << 11).to_le_bytes());
        ports.read(4, &mut b);
        assert_eq!(b, [0xff; 4]);
        // A BAR written through the ports reads back through ECAM.
        cf8(&mut ports, 3, 0x18);
        ports.write(4, &u32::MAX.to_le_bytes());
        assert_eq!(ecam_read32(&mut ecam, 3, 0x18), 0xffff_ff00);
    }

    #[test]
    fn a_bar_is_served_only_while_decoded_and_follows_the_guest() {
        let (seg, fake, log) = segment();
        let mut ecam = Ecam(seg.clone());
        let mut win32 = MmioWindow::new(seg.clone(), WIN32.0);
        let mut b = [0u8; 1];
        win32.read(0x10, &mut b);
        assert_eq!(b, [0xff], "decoding is off: nothing answers");
        ecam.write(3 << 15 | COMMAND as u64, &COMMAND_MEMORY.to_le_bytes());
        win32.read(0x10, &mut b);
        assert_eq!(b, [2 + 0x10], "BAR 2 at its first address");
        assert_eq!(
            log.0.lock().unwrap().as_slice(),
            ["add 0x100000010 U16(3)"],
            "the ioeventfd sits in BAR 0"
        );
        // The guest moves the 64-bit BAR 0 below 4 GiB: low half, then high half.
        ecam.write(3 << 15 | 0x10, &0xc010_0000u32.to_le_bytes());
        ecam.write(3 << 15 | 0x14, &0u32.to_le_bytes());
        let mut w = [0u8; 4];
        win32.write(0x10_0008, &[9, 9]);
        assert_eq!(fake.lock().unwrap().writes, [(0, 8, vec![9, 9])]);
        win32.read(0x10_0000, &mut w);
        assert_eq!(w, [0; 4]);
        let l = log.0.lock().unwrap().clone();
        assert_eq!(l.last().unwrap(), "add 0xc0100010 U16(3)", "{l:?}");
        assert!(
            l.contains(&"remove 0x100000010 U16(3)".to_string()),
            "{l:?}"
        );
        // Sizing parks the BAR outside the windows: no ioeventfd there.
        log.0.lock().unwrap().clear();
        ecam.write(3 << 15 | 0x10, &u32::MAX.to_le_bytes());
        assert_eq!(
            log.0.lock().unwrap().as_slice(),
            ["remove 0xc0100010 U16(3)"]
        );
        // Reset: back to the first addresses, decoding off.
        seg.reset();
        win32.read(0x10, &mut b);
        assert_eq!(b, [0xff]);
        assert_eq!(ecam_read32(&mut ecam, 3, 0x18), 0xc000_0000);
    }
}
