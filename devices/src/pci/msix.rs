//! MSI-X: the vector table and the pending-bit array a device keeps in a BAR, and the
//! capability that enables them.
//!
//! Each vector has an eventfd the VMM registers as an irqfd for the vector's own GSI; the
//! GSI's route follows the table entry ([`PciWiring::set_msi_route`]). A device raises a
//! vector by writing its eventfd, so no vCPU exit is involved. Masking is done here, before
//! the eventfd: a masked vector (or all of them, with the function mask) sets its pending bit
//! instead, and unmasking delivers what is pending.

use std::sync::Arc;

use log::warn;
use vmm_sys_util::eventfd::EventFd;

use super::wiring::{MsiMessage, PciWiring};

/// Capability ID of MSI-X.
pub const CAPABILITY_ID: u8 = 0x11;
/// Bytes per table entry.
pub const ENTRY_SIZE: u64 = 16;
/// Message Control: MSI-X enabled.
const CONTROL_ENABLE: u16 = 1 << 15;
/// Message Control: every vector masked.
const CONTROL_FUNCTION_MASK: u16 = 1 << 14;
/// Vector Control: this vector masked.
const VECTOR_MASKED: u32 = 1;
/// Most vectors a table may have (the Table Size field has 11 bits).
pub const MAX_VECTORS: usize = 2048;

#[derive(Debug, Clone, Copy)]
struct Entry {
    address: u64,
    data: u32,
    control: u32,
}

impl Default for Entry {
    fn default() -> Self {
        Entry {
            address: 0,
            data: 0,
            control: VECTOR_MASKED,
        }
    }
}

/// A device's MSI-X state.
pub struct Msix {
    entries: Vec<Entry>,
    pending: Vec<bool>,
    control: u16,
    irqs: Vec<EventFd>,
    gsis: Vec<u32>,
    wiring: Arc<dyn PciWiring>,
}

impl Msix {
    /// A table of `irqs.len()` vectors (at most [`MAX_VECTORS`]), vector `i` raising
    /// `irqs[i]`, which the VMM registers as the irqfd of `gsis[i]`.
    pub fn new(irqs: Vec<EventFd>, gsis: Vec<u32>, wiring: Arc<dyn PciWiring>) -> Self {
        let n = irqs.len().min(gsis.len()).min(MAX_VECTORS);
        Msix {
            entries: vec![Entry::default(); n],
            pending: vec![false; n],
            control: 0,
            irqs,
            gsis,
            wiring,
        }
    }

    /// Number of vectors.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the table has no vectors.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Bytes of the table.
    pub fn table_size(&self) -> u64 {
        self.entries.len() as u64 * ENTRY_SIZE
    }

    /// Bytes of the pending-bit array (whole 8-byte words).
    pub fn pba_size(&self) -> u64 {
        self.entries.len().div_ceil(64) as u64 * 8
    }

    /// The capability's body (ID, next, Message Control, Table and PBA offset/BIR) and its
    /// write mask (enable and function mask only).
    pub fn capability(&self, bar: u8, table: u32, pba: u32) -> ([u8; 12], [u8; 12]) {
        let size = (self.entries.len().max(1) - 1) as u16;
        let mut body = [0u8; 12];
        body[0] = CAPABILITY_ID;
        body[2..4].copy_from_slice(&size.to_le_bytes());
        body[4..8].copy_from_slice(&(table | u32::from(bar)).to_le_bytes());
        body[8..12].copy_from_slice(&(pba | u32::from(bar)).to_le_bytes());
        let mut mask = [0u8; 12];
        mask[3] = ((CONTROL_ENABLE | CONTROL_FUNCTION_MASK) >> 8) as u8;
        (body, mask)
    }

    /// The eventfds and GSIs of the vectors, for the VMM to register as irqfds.
    pub fn irqfds(&self) -> impl Iterator<Item = (&EventFd, u32)> {
        self.irqs.iter().zip(self.gsis.iter().copied())
    }

    /// Whether MSI-X is enabled.
    pub fn enabled(&self) -> bool {
        self.control & CONTROL_ENABLE != 0
    }

    fn deliverable(&self, v: usize) -> bool {
        self.control & (CONTROL_ENABLE | CONTROL_FUNCTION_MASK) == CONTROL_ENABLE
            && self.entries[v].control & VECTOR_MASKED == 0
    }

    /// The guest wrote Message Control.
    pub fn set_control(&mut self, control: u16) {
        self.control = control & (CONTROL_ENABLE | CONTROL_FUNCTION_MASK);
        for v in 0..self.entries.len() {
            self.unmasked(v);
        }
    }

    /// Vector `v` may now deliver: routes it and sends what was pending.
    fn unmasked(&mut self, v: usize) {
        if !self.deliverable(v) {
            return;
        }
        self.route(v);
        if std::mem::take(&mut self.pending[v]) {
            self.fire(v);
        }
    }

    fn route(&self, v: usize) {
        let e = self.entries[v];
        let msg = MsiMessage {
            address: e.address,
            data: e.data,
        };
        if let Err(e) = self.wiring.set_msi_route(self.gsis[v], msg) {
            warn!("MSI-X vector {v}: cannot route GSI {}: {e}", self.gsis[v]);
        }
    }

    fn fire(&self, v: usize) {
        if let Err(e) = self.irqs[v].write(1) {
            warn!("MSI-X vector {v}: cannot signal: {e}");
        }
    }

    /// Raises vector `v`: delivered now, or left pending while masked. False if MSI-X is off
    /// or `v` is not a vector (nothing happens).
    pub fn trigger(&mut self, v: u16) -> bool {
        let v = usize::from(v);
        if !self.enabled() || v >= self.entries.len() {
            return false;
        }
        if self.deliverable(v) {
            self.fire(v);
        } else {
            self.pending[v] = true;
        }
        true
    }

    /// Reads the table at `offset` (4- or 8-byte aligned accesses; others read zeros).
    pub fn read_table(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let v = (offset / ENTRY_SIZE) as usize;
        let Some(e) = self.entries.get(v) else { return };
        let words = [
            e.address as u32,
            (e.address >> 32) as u32,
            e.data,
            e.control,
        ];
        let field = ((offset % ENTRY_SIZE) / 4) as usize;
        match (data.len(), offset % 4) {
            (4, 0) => data.copy_from_slice(&words[field].to_le_bytes()),
            (8, 0) if field.is_multiple_of(2) => {
                data[..4].copy_from_slice(&words[field].to_le_bytes());
                data[4..].copy_from_slice(&words[field + 1].to_le_bytes());
            }
            _ => {}
        }
    }

    /// Writes the table at `offset` (4- or 8-byte aligned accesses; others are ignored).
    pub fn write_table(&mut self, offset: u64, data: &[u8]) {
        let v = (offset / ENTRY_SIZE) as usize;
        if v >= self.entries.len() || !offset.is_multiple_of(4) {
            return;
        }
        let field = ((offset % ENTRY_SIZE) / 4) as usize;
        let mut words: Vec<(usize, u32)> = Vec::with_capacity(2);
        match data.len() {
            4 => words.push((field, le32(data))),
            8 if field.is_multiple_of(2) => {
                words.push((field, le32(&data[..4])));
                words.push((field + 1, le32(&data[4..])));
            }
            _ => return,
        }
        let was_masked = !self.deliverable(v);
        let e = &mut self.entries[v];
        for (f, w) in words {
            match f {
                0 => e.address = (e.address & !0xffff_ffff) | u64::from(w),
                1 => e.address = (e.address & 0xffff_ffff) | u64::from(w) << 32,
                2 => e.data = w,
                _ => e.control = w & VECTOR_MASKED,
            }
        }
        if self.deliverable(v) {
            if was_masked {
                self.unmasked(v);
            } else {
                // The message changed under an unmasked vector: follow it.
                self.route(v);
            }
        }
    }

    /// Reads the pending-bit array (read-only) at `offset`.
    pub fn read_pba(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        for (i, b) in data.iter_mut().enumerate() {
            let first = (offset as usize + i) * 8;
            for bit in 0..8 {
                if self.pending.get(first + bit).copied().unwrap_or(false) {
                    *b |= 1 << bit;
                }
            }
        }
    }

    /// Back to reset state: disabled, every vector masked, nothing pending.
    pub fn reset(&mut self) {
        self.control = 0;
        self.entries.fill(Entry::default());
        self.pending.fill(false);
    }
}

fn le32(b: &[u8]) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[..4]);
    u32::from_le_bytes(w)
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    use super::*;
    use crate::pci::wiring::IoEventMatch;

    #[derive(Default)]
    struct Routes(Mutex<Vec<(u32, MsiMessage)>>);

    impl PciWiring for Routes {
        fn add_ioevent(&self, _: &EventFd, _: u64, _: IoEventMatch) -> Result<(), String> {
            Ok(())
        }
        fn remove_ioevent(&self, _: &EventFd, _: u64, _: IoEventMatch) -> Result<(), String> {
            Ok(())
        }
        fn set_msi_route(&self, gsi: u32, msg: MsiMessage) -> Result<(), String> {
            self.0.lock().unwrap().push((gsi, msg));
            Ok(())
        }
    }

    fn msix(n: usize) -> (Msix, Vec<EventFd>, Arc<Routes>) {
        let irqs: Vec<EventFd> = (0..n)
            .map(|_| EventFd::new(EFD_NONBLOCK).unwrap())
            .collect();
        let clones = irqs.iter().map(|e| e.try_clone().unwrap()).collect();
        let routes = Arc::new(Routes::default());
        let gsis = (0..n as u32).map(|i| 24 + i).collect();
        (Msix::new(clones, gsis, routes.clone()), irqs, routes)
    }

    fn w32(m: &mut Msix, off: u64, v: u32) {
        m.write_table(off, &v.to_le_bytes());
    }

    #[test]
    fn a_masked_vector_is_pending_until_unmasked_then_routed_and_fired() {
        let (mut m, irqs, routes) = msix(3);
        assert_eq!((m.table_size(), m.pba_size()), (48, 8));
        assert!(!m.trigger(1), "MSI-X disabled: nothing happens");
        m.set_control(CONTROL_ENABLE);
        assert!(m.trigger(1));
        assert!(irqs[1].read().is_err(), "masked at reset: no interrupt");
        let mut pba = [0u8; 8];
        m.read_pba(0, &mut pba);
        assert_eq!(pba[0], 0b010);
        w32(&mut m, 16, 0xfee0_1000);
        w32(&mut m, 20, 0);
        w32(&mut m, 24, 0x41);
        assert!(routes.0.lock().unwrap().is_empty(), "no route while masked");
        w32(&mut m, 28, 0);
        assert_eq!(
            routes.0.lock().unwrap().as_slice(),
            [(
                25,
                MsiMessage {
                    address: 0xfee0_1000,
                    data: 0x41
                }
            )]
        );
        assert_eq!(
            irqs[1].read().unwrap(),
            1,
            "the pending interrupt is delivered"
        );
        m.read_pba(0, &mut pba);
        assert_eq!(pba[0], 0);
        assert!(m.trigger(1));
        assert_eq!(irqs[1].read().unwrap(), 1);
        let mut d = [0u8; 4];
        m.read_table(24, &mut d);
        assert_eq!(u32::from_le_bytes(d), 0x41);
    }

    #[test]
    fn the_function_mask_holds_every_vector() {
        let (mut m, irqs, _) = msix(2);
        w32(&mut m, 12, 0);
        m.set_control(CONTROL_ENABLE | CONTROL_FUNCTION_MASK);
        assert!(m.trigger(0));
        assert!(irqs[0].read().is_err());
        m.set_control(CONTROL_ENABLE);
        assert_eq!(irqs[0].read().unwrap(), 1);
        // Out of range and odd accesses are ignored.
        assert!(!m.trigger(7));
        m.write_table(100, &[1, 2, 3, 4]);
        m.write_table(2, &[1, 2]);
        m.reset();
        assert!(!m.enabled());
    }

    #[test]
    fn the_capability_names_the_table_size_and_places() {
        let (m, _, _) = msix(5);
        let (body, mask) = m.capability(0, 0x4000, 0x6000);
        assert_eq!(body[0], CAPABILITY_ID);
        assert_eq!(u16::from_le_bytes([body[2], body[3]]), 4);
        assert_eq!(le32(&body[4..8]), 0x4000);
        assert_eq!(le32(&body[8..12]), 0x6000);
        assert_eq!(mask[3], 0xc0);
    }
}
