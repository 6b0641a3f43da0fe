//! The IOAPIC petrel's guests program on MSHV, where the hypervisor has none: its register
//! window lives in the backend, and each unmasked redirection entry becomes an MSI route for
//! its GSI, so irqfds registered on GSIs deliver exactly as KVM's in-kernel IOAPIC would.
//!
//! petrel's legacy and virtio-mmio interrupts are all edge-triggered (see the DSDT), so no
//! EOI/resample handling is needed: a level-triggered entry is routed like an edge.

/// Guest-physical base of the IOAPIC window (the architectural default, as in the MADT).
pub const IOAPIC_BASE: u64 = 0xfec0_0000;
/// Size of the window.
pub const IOAPIC_SIZE: u64 = 0x1000;
/// Redirection entries (GSIs 0..24).
pub const PINS: usize = 24;

const IOREGSEL: u64 = 0x00;
const IOWIN: u64 = 0x10;
const REG_ID: u32 = 0x00;
const REG_VERSION: u32 = 0x01;
const REG_ARB: u32 = 0x02;
const REG_REDTBL: u32 = 0x10;
/// Version 0x11, highest entry `PINS - 1`.
const VERSION: u32 = 0x11 | (((PINS as u32) - 1) << 16);
const RTE_MASKED: u64 = 1 << 16;
/// Bits a guest may not set in a redirection entry (delivery status, remote IRR).
const RTE_READ_ONLY: u64 = (1 << 12) | (1 << 14);

/// An MSI message: what a GSI's irqfd sends once routed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsiRoute {
    /// The GSI (IOAPIC pin).
    pub gsi: u32,
    /// MSI address (low 32 bits).
    pub address_lo: u32,
    /// MSI address (high 32 bits).
    pub address_hi: u32,
    /// MSI data.
    pub data: u32,
}

/// IOAPIC registers.
#[derive(Debug, Clone)]
pub struct Ioapic {
    id: u32,
    ioregsel: u32,
    rte: [u64; PINS],
}

impl Default for Ioapic {
    fn default() -> Self {
        Ioapic {
            id: 0,
            ioregsel: 0,
            rte: [RTE_MASKED; PINS],
        }
    }
}

impl Ioapic {
    /// Whether `gpa` is in the IOAPIC window.
    pub fn contains(gpa: u64) -> bool {
        (IOAPIC_BASE..IOAPIC_BASE + IOAPIC_SIZE).contains(&gpa)
    }

    fn read_reg(&self) -> u32 {
        match self.ioregsel {
            REG_ID => self.id << 24,
            REG_VERSION => VERSION,
            REG_ARB => self.id << 24,
            r if r >= REG_REDTBL => {
                let n = ((r - REG_REDTBL) / 2) as usize;
                match self.rte.get(n) {
                    Some(e) if r % 2 == 0 => *e as u32,
                    Some(e) => (*e >> 32) as u32,
                    None => 0,
                }
            }
            _ => 0,
        }
    }

    /// A guest read at `gpa` (32-bit registers; other sizes read the low bytes).
    pub fn mmio_read(&self, gpa: u64, data: &mut [u8]) {
        let v = match gpa - IOAPIC_BASE {
            IOREGSEL => self.ioregsel,
            IOWIN => self.read_reg(),
            _ => 0,
        };
        for (d, s) in data.iter_mut().zip(v.to_le_bytes()) {
            *d = s;
        }
    }

    /// A guest write at `gpa`; returns true when a redirection entry changed (the routes must
    /// be reprogrammed).
    pub fn mmio_write(&mut self, gpa: u64, data: &[u8]) -> bool {
        let mut b = [0u8; 4];
        for (d, s) in b.iter_mut().zip(data) {
            *d = *s;
        }
        let v = u32::from_le_bytes(b);
        match gpa - IOAPIC_BASE {
            IOREGSEL => {
                self.ioregsel = v & 0xff;
                false
            }
            IOWIN => match self.ioregsel {
                REG_ID => {
                    self.id = (v >> 24) & 0xf;
                    false
                }
                r if r >= REG_REDTBL => {
                    let n = ((r - REG_REDTBL) / 2) as usize;
                    let Some(e) = self.rte.get_mut(n) else {
                        return false;
                    };
                    let old = *e;
                    let new = if r % 2 == 0 {
                        (old & 0xffff_ffff_0000_0000) | u64::from(v)
                    } else {
                        (old & 0xffff_ffff) | (u64::from(v) << 32)
                    };
                    *e = (new & !RTE_READ_ONLY) | (old & RTE_READ_ONLY);
                    *e != old
                }
                _ => false,
            },
            _ => false,
        }
    }

    /// The MSI route of every unmasked entry.
    pub fn routes(&self) -> Vec<MsiRoute> {
        (0u32..)
            .zip(self.rte.iter())
            .filter(|(_, e)| *e & RTE_MASKED == 0)
            .map(|(gsi, &e)| {
                let vector = (e & 0xff) as u32;
                let delivery = ((e >> 8) & 7) as u32;
                let logical = ((e >> 11) & 1) as u32;
                let level = ((e >> 15) & 1) as u32;
                let dest = ((e >> 56) & 0xff) as u32;
                MsiRoute {
                    gsi,
                    address_lo: 0xfee0_0000 | (dest << 12) | (logical << 2),
                    address_hi: 0,
                    data: vector | (delivery << 8) | (level << 15),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(io: &mut Ioapic, reg: u32, v: u32) -> bool {
        io.mmio_write(IOAPIC_BASE, &reg.to_le_bytes());
        io.mmio_write(IOAPIC_BASE + IOWIN, &v.to_le_bytes())
    }

    fn read(io: &mut Ioapic, reg: u32) -> u32 {
        io.mmio_write(IOAPIC_BASE, &reg.to_le_bytes());
        let mut b = [0u8; 4];
        io.mmio_read(IOAPIC_BASE + IOWIN, &mut b);
        u32::from_le_bytes(b)
    }

    #[test]
    fn version_id_and_masked_reset_state() {
        let mut io = Ioapic::default();
        assert_eq!(read(&mut io, REG_VERSION), 0x0017_0011);
        assert!(!write(&mut io, REG_ID, 3 << 24));
        assert_eq!(read(&mut io, REG_ID), 3 << 24);
        assert_eq!(read(&mut io, REG_REDTBL + 8), RTE_MASKED as u32);
        assert!(io.routes().is_empty());
        assert!(Ioapic::contains(0xfec0_0010) && !Ioapic::contains(0xfec0_1000));
    }

    #[test]
    fn unmasked_entries_become_msi_routes() {
        let mut io = Ioapic::default();
        // GSI 4 (COM1): vector 0x24, fixed, physical, edge, to APIC 1.
        assert!(write(&mut io, REG_REDTBL + 9, 1 << 24));
        assert!(write(&mut io, REG_REDTBL + 8, 0x24));
        // GSI 5: logical destination 0x3, lowest priority, level.
        write(&mut io, REG_REDTBL + 11, 3 << 24);
        write(
            &mut io,
            REG_REDTBL + 10,
            0x31 | (1 << 8) | (1 << 11) | (1 << 15),
        );
        assert_eq!(
            io.routes(),
            vec![
                MsiRoute {
                    gsi: 4,
                    address_lo: 0xfee0_1000,
                    address_hi: 0,
                    data: 0x24
                },
                MsiRoute {
                    gsi: 5,
                    address_lo: 0xfee0_3004,
                    address_hi: 0,
                    data: 0x31 | (1 << 8) | (1 << 15)
                },
            ]
        );
        assert_eq!(read(&mut io, REG_REDTBL + 9), 1 << 24);
        // Masking again drops the route; rewriting the same value is no change.
        assert!(write(&mut io, REG_REDTBL + 8, 0x24 | RTE_MASKED as u32));
        assert!(!write(&mut io, REG_REDTBL + 8, 0x24 | RTE_MASKED as u32));
        assert_eq!(io.routes().len(), 1);
        // Out-of-range entries are ignored.
        assert!(!write(&mut io, REG_REDTBL + 2 * PINS as u32, 0));
    }
}
