//! PCI segment 0, bus 0: 32 slots of single-function devices, configuration accesses by
//! (device, function, register), and the dispatch of BAR accesses.
//!
//! After every configuration write the segment compares the function's decoded BARs with
//! what it had: a BAR the guest moved (or whose decoding it switched on or off) is served at
//! its new address, and the device's ioeventfds in that BAR are taken off the old address and
//! put on the new one through [`PciWiring`], so queue notifications stay off the slow path.
//! Only BARs that lie inside one of the segment's windows are served or get ioeventfds (the
//! guest may park a BAR anywhere while it sizes it).

use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use log::warn;

use super::wiring::PciWiring;
use super::{BarIoEvent, PciDevice};

/// Device slots on bus 0.
pub const SLOTS: usize = 32;

/// A shared PCI function.
pub type SharedPciDevice = Arc<Mutex<dyn PciDevice>>;

/// Where a decoded BAR is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct BarRange {
    slot: usize,
    bar: usize,
    base: u64,
    size: u64,
}

/// An ioeventfd registered for a device: `ioevents[slot][index]` at `addr`.
struct Registered {
    slot: usize,
    index: usize,
    addr: u64,
}

/// The segment.
pub struct PciSegment {
    slots: Vec<Option<SharedPciDevice>>,
    /// Each slot's ioeventfds, taken once when the device is inserted (a BAR move happens on
    /// a vCPU thread, whose seccomp filter does not let it duplicate descriptors).
    ioevents: Vec<Vec<BarIoEvent>>,
    /// The decoded BARs inside the windows, sorted by base.
    ranges: RwLock<Vec<BarRange>>,
    registered: Mutex<Vec<Registered>>,
    windows: [(u64, u64); 2],
    wiring: Arc<dyn PciWiring>,
}

impl PciSegment {
    /// An empty segment whose BARs may lie in `windows` (base, size each).
    pub fn new(windows: [(u64, u64); 2], wiring: Arc<dyn PciWiring>) -> Self {
        PciSegment {
            slots: (0..SLOTS).map(|_| None).collect(),
            ioevents: (0..SLOTS).map(|_| Vec::new()).collect(),
            ranges: RwLock::new(Vec::new()),
            registered: Mutex::new(Vec::new()),
            windows,
            wiring,
        }
    }

    /// Puts `device` in `slot` (before the guest runs). False if the slot is taken or does
    /// not exist.
    pub fn insert(&mut self, slot: usize, device: SharedPciDevice) -> bool {
        match self.slots.get_mut(slot) {
            Some(s @ None) => {
                self.ioevents[slot] = Self::lock(&device).ioevents();
                *s = Some(device);
                true
            }
            _ => false,
        }
    }

    /// The first free slot.
    pub fn free_slot(&self) -> Option<usize> {
        self.slots.iter().position(Option::is_none)
    }

    fn lock(dev: &SharedPciDevice) -> MutexGuard<'_, dyn PciDevice + 'static> {
        // A poisoned lock means a device panicked earlier; keep serving the guest.
        dev.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn device(&self, bus: u8, dev: u8, func: u8) -> Option<&SharedPciDevice> {
        if bus != 0 || func != 0 {
            return None;
        }
        self.slots.get(usize::from(dev))?.as_ref()
    }

    /// A configuration read; absent functions read as all ones.
    pub fn config_read(&self, bus: u8, dev: u8, func: u8, offset: usize, data: &mut [u8]) {
        match self.device(bus, dev, func) {
            Some(d) => Self::lock(d).config_read(offset, data),
            None => data.fill(0xff),
        }
    }

    /// A configuration write; BAR moves take effect before it returns.
    pub fn config_write(&self, bus: u8, dev: u8, func: u8, offset: usize, data: &[u8]) {
        let Some(d) = self.device(bus, dev, func) else {
            return;
        };
        let slot = usize::from(dev);
        let mut device = Self::lock(d);
        let before = device.decoded_bars();
        device.config_write(offset, data);
        let after = device.decoded_bars();
        drop(device);
        if before != after {
            self.bars_changed(slot, &after);
        }
    }

    fn in_window(&self, base: u64, size: u64) -> bool {
        self.windows
            .iter()
            .any(|&(w, len)| base >= w && base.checked_add(size).is_some_and(|end| end <= w + len))
    }

    /// Serves `slot`'s BARs at `bars` and moves its ioeventfds there.
    fn bars_changed(&self, slot: usize, bars: &[(usize, u64, u64)]) {
        let now: Vec<BarRange> = bars
            .iter()
            .filter(|&&(_, base, size)| self.in_window(base, size))
            .map(|&(bar, base, size)| BarRange {
                slot,
                bar,
                base,
                size,
            })
            .collect();
        {
            let mut ranges = self.ranges.write().unwrap_or_else(|e| e.into_inner());
            ranges.retain(|r| r.slot != slot);
            for r in &now {
                if ranges
                    .iter()
                    .any(|o| r.base < o.base + o.size && o.base < r.base + r.size)
                {
                    warn!(
                        "PCI 00:{slot:02x}.0 BAR {} at {:#x} overlaps another BAR; not served",
                        r.bar, r.base
                    );
                    continue;
                }
                ranges.push(*r);
            }
            ranges.sort_by_key(|r| r.base);
        }
        let mut registered = self.registered.lock().unwrap_or_else(|e| e.into_inner());
        let events = &self.ioevents[slot];
        for old in registered.iter().filter(|r| r.slot == slot) {
            let e = &events[old.index];
            if let Err(err) = self.wiring.remove_ioevent(&e.evt, old.addr, e.datamatch) {
                warn!(
                    "PCI 00:{slot:02x}.0: removing an ioeventfd at {:#x}: {err}",
                    old.addr
                );
            }
        }
        registered.retain(|r| r.slot != slot);
        for (index, event) in events.iter().enumerate() {
            let Some(r) = now.iter().find(|r| r.bar == event.bar) else {
                continue;
            };
            let addr = r.base + event.offset;
            match self.wiring.add_ioevent(&event.evt, addr, event.datamatch) {
                Ok(()) => registered.push(Registered { slot, index, addr }),
                Err(err) => warn!("PCI 00:{slot:02x}.0: ioeventfd at {addr:#x}: {err}"),
            }
        }
    }

    fn bar_at(&self, addr: u64, len: usize) -> Option<(BarRange, u64)> {
        let ranges = self.ranges.read().unwrap_or_else(|e| e.into_inner());
        let i = ranges.partition_point(|r| r.base <= addr).checked_sub(1)?;
        let r = ranges[i];
        let offset = addr - r.base;
        (offset + len as u64 <= r.size).then_some((r, offset))
    }

    /// A guest read at `addr` in a window; false if no BAR is there.
    pub fn bar_read(&self, addr: u64, data: &mut [u8]) -> bool {
        let Some((r, offset)) = self.bar_at(addr, data.len()) else {
            return false;
        };
        let Some(d) = self.slots[r.slot].as_ref() else {
            return false;
        };
        Self::lock(d).bar_read(r.bar, offset, data);
        true
    }

    /// A guest write at `addr` in a window; false if no BAR is there.
    pub fn bar_write(&self, addr: u64, data: &[u8]) -> bool {
        let Some((r, offset)) = self.bar_at(addr, data.len()) else {
            return false;
        };
        let Some(d) = self.slots[r.slot].as_ref() else {
            return false;
        };
        Self::lock(d).bar_write(r.bar, offset, data);
        true
    }

    /// Resets every function (guest reboot): BARs back where they were first placed,
    /// decoding off, so nothing is served and no ioeventfd is registered.
    pub fn reset(&self) {
        for (slot, d) in self.slots.iter().enumerate() {
            let Some(d) = d else { continue };
            let bars = {
                let mut device = Self::lock(d);
                device.reset();
                device.decoded_bars()
            };
            self.bars_changed(slot, &bars);
        }
    }

    /// Forgets the registered ioeventfds without unregistering them (their hypervisor VM is
    /// gone) and stops serving every BAR.
    pub fn forget_wiring(&self) {
        self.registered
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    /// The devices, by slot.
    pub fn devices(&self) -> impl Iterator<Item = (usize, &SharedPciDevice)> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, d)| Some((i, d.as_ref()?)))
    }
}
