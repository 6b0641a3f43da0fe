//! A PCI function's configuration space (type 0 header, 4 KiB with the extended space):
//! registers with per-bit write masks, the six BAR registers with their sizing behaviour, and
//! the capability list.
//!
//! A BAR is sized the way hardware does it: its address bits below the size are not writable,
//! so after the guest writes all ones it reads back `!(size - 1)` plus the read-only type bits.
//! A 64-bit BAR takes two registers; the upper one holds the high half of the address.

/// Bytes of configuration space (PCI Express extended space, reachable through ECAM; the
/// legacy 0xCF8/0xCFC ports reach the first 256).
pub const CONFIG_SPACE_SIZE: usize = 4096;
const REGS: usize = CONFIG_SPACE_SIZE / 4;

/// Vendor ID register.
pub const VENDOR_ID: usize = 0x00;
/// Command register (16 bits) and Status (16 bits).
pub const COMMAND: usize = 0x04;
/// Revision (8 bits) and class code (24 bits).
pub const CLASS_REVISION: usize = 0x08;
/// Header type (byte 0x0e).
pub const HEADER: usize = 0x0c;
/// First BAR register.
pub const BAR0: usize = 0x10;
/// Subsystem vendor ID (16 bits) and subsystem ID (16 bits).
pub const SUBSYSTEM: usize = 0x2c;
/// Capabilities pointer (8 bits).
pub const CAPABILITIES_POINTER: usize = 0x34;
/// Interrupt line and pin.
pub const INTERRUPT: usize = 0x3c;
/// Command: memory space decoding enabled.
pub const COMMAND_MEMORY: u16 = 1 << 1;
/// Command: bus master enabled.
pub const COMMAND_BUS_MASTER: u16 = 1 << 2;
/// Command: INTx disabled.
pub const COMMAND_INTX_DISABLE: u16 = 1 << 10;
/// Status: the capability list exists.
const STATUS_CAPABILITIES: u32 = 1 << 20;
/// Number of BAR registers of a type 0 header.
pub const BAR_COUNT: usize = 6;
/// First byte a capability may use (after the standard header).
const FIRST_CAPABILITY: usize = 0x40;
/// End of the legacy space, where capabilities must fit.
const LEGACY_END: usize = 0x100;
/// BAR type bits: a 64-bit memory BAR.
const BAR_MEM64: u32 = 0b100;
/// BAR type bit: prefetchable.
const BAR_PREFETCHABLE: u32 = 0b1000;

/// How a memory BAR decodes addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BarKind {
    /// 32-bit address (one register).
    Mem32,
    /// 64-bit address (two registers); prefetchable.
    Mem64,
}

/// Errors from laying out a configuration space (VMM bugs, never guest actions).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// A BAR index beyond the header, or a 64-bit BAR without a register after it.
    #[error("BAR {0} does not exist or has no room")]
    BadBar(usize),
    /// A BAR register already in use.
    #[error("BAR {0} is already in use")]
    BarInUse(usize),
    /// A memory BAR size must be a power of two of at least 16 bytes.
    #[error("BAR size {0:#x} is not a power of two of at least 16")]
    BadBarSize(u64),
    /// The address is not aligned to the size, or does not fit the BAR's width.
    #[error("BAR address {addr:#x} does not suit a BAR of {size:#x} bytes")]
    BadBarAddress {
        /// The address.
        addr: u64,
        /// The BAR's size.
        size: u64,
    },
    /// The capabilities do not fit in the first 256 bytes.
    #[error("no room for a {0}-byte capability")]
    NoRoom(usize),
}

/// Result type of configuration-space layout.
pub type Result<T> = std::result::Result<T, Error>;

/// One BAR's fixed properties.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bar {
    /// Size in bytes (a power of two).
    pub size: u64,
    /// Address width.
    pub kind: BarKind,
}

/// A type 0 configuration space.
pub struct ConfigSpace {
    regs: Box<[u32; REGS]>,
    wmask: Box<[u32; REGS]>,
    bars: [Option<Bar>; BAR_COUNT],
    /// Where the next capability goes; the last one's `next` byte (0 if none yet).
    next_capability: usize,
    last_capability_next: usize,
}

/// Identity registers of a function.
#[derive(Debug, Clone, Copy)]
pub struct Identity {
    /// Vendor ID.
    pub vendor: u16,
    /// Device ID.
    pub device: u16,
    /// Class code (base, sub, interface) in the low 24 bits.
    pub class: u32,
    /// Revision ID.
    pub revision: u8,
    /// Subsystem vendor ID.
    pub subsystem_vendor: u16,
    /// Subsystem ID.
    pub subsystem: u16,
}

impl ConfigSpace {
    /// A header for a single-function device with no BARs and no capabilities. Writable:
    /// memory decoding, bus master and INTx disable in Command; the interrupt line.
    pub fn new(id: Identity) -> Self {
        let mut s = ConfigSpace {
            regs: Box::new([0; REGS]),
            wmask: Box::new([0; REGS]),
            bars: [None; BAR_COUNT],
            next_capability: FIRST_CAPABILITY,
            last_capability_next: CAPABILITIES_POINTER,
        };
        s.regs[VENDOR_ID / 4] = u32::from(id.vendor) | u32::from(id.device) << 16;
        s.regs[CLASS_REVISION / 4] = u32::from(id.revision) | (id.class & 0xff_ffff) << 8;
        s.regs[SUBSYSTEM / 4] = u32::from(id.subsystem_vendor) | u32::from(id.subsystem) << 16;
        s.wmask[COMMAND / 4] =
            u32::from(COMMAND_MEMORY | COMMAND_BUS_MASTER | COMMAND_INTX_DISABLE);
        s.wmask[INTERRUPT / 4] = 0xff;
        s
    }

    /// Adds memory BAR `index` of `size` bytes at `addr` (a 64-bit one also takes register
    /// `index + 1`).
    pub fn add_bar(&mut self, index: usize, size: u64, kind: BarKind, addr: u64) -> Result<()> {
        let regs = match kind {
            BarKind::Mem32 => 1,
            BarKind::Mem64 => 2,
        };
        if index + regs > BAR_COUNT {
            return Err(Error::BadBar(index));
        }
        if (index..index + regs).any(|i| self.bar_register_used(i)) {
            return Err(Error::BarInUse(index));
        }
        if !size.is_power_of_two() || size < 16 || (kind == BarKind::Mem32 && size > 1 << 31) {
            return Err(Error::BadBarSize(size));
        }
        let fits = kind == BarKind::Mem64 || addr + size <= 1 << 32;
        if addr & (size - 1) != 0 || !fits {
            return Err(Error::BadBarAddress { addr, size });
        }
        self.bars[index] = Some(Bar { size, kind });
        let mask = !(size - 1);
        let reg = BAR0 / 4 + index;
        let flags = match kind {
            BarKind::Mem32 => 0,
            BarKind::Mem64 => BAR_MEM64 | BAR_PREFETCHABLE,
        };
        self.regs[reg] = (addr as u32 & !0xf) | flags;
        self.wmask[reg] = mask as u32 & !0xf;
        if kind == BarKind::Mem64 {
            self.regs[reg + 1] = (addr >> 32) as u32;
            self.wmask[reg + 1] = (mask >> 32) as u32;
        }
        Ok(())
    }

    fn bar_register_used(&self, i: usize) -> bool {
        self.bars[i].is_some()
            || (i > 0
                && matches!(
                    self.bars[i - 1],
                    Some(Bar {
                        kind: BarKind::Mem64,
                        ..
                    })
                ))
    }

    /// BAR `index`'s properties, if it is one.
    pub fn bar(&self, index: usize) -> Option<Bar> {
        self.bars.get(index).copied().flatten()
    }

    /// The address BAR `index` holds now (whatever the Command register says).
    pub fn bar_address(&self, index: usize) -> Option<u64> {
        let bar = self.bar(index)?;
        let reg = BAR0 / 4 + index;
        let low = u64::from(self.regs[reg] & !0xf);
        Some(match bar.kind {
            BarKind::Mem32 => low,
            BarKind::Mem64 => low | u64::from(self.regs[reg + 1]) << 32,
        })
    }

    /// The Command register.
    pub fn command(&self) -> u16 {
        self.regs[COMMAND / 4] as u16
    }

    /// Every BAR the function decodes now, as (index, address, size): none while memory
    /// decoding is off in Command.
    pub fn decoded_bars(&self) -> Vec<(usize, u64, u64)> {
        if self.command() & COMMAND_MEMORY == 0 {
            return Vec::new();
        }
        (0..BAR_COUNT)
            .filter_map(|i| Some((i, self.bar_address(i)?, self.bar(i)?.size)))
            .collect()
    }

    /// Appends a capability: `body` starts with the capability ID; its `next` byte (body[1])
    /// is filled in. `wmask` (same length) says which bits the guest may write. Returns the
    /// capability's offset.
    pub fn add_capability(&mut self, body: &[u8], wmask: &[u8]) -> Result<usize> {
        let len = body.len().next_multiple_of(4);
        let at = self.next_capability;
        if body.len() < 2 || wmask.len() != body.len() || at + len > LEGACY_END {
            return Err(Error::NoRoom(body.len()));
        }
        for (i, (&b, &m)) in body.iter().zip(wmask).enumerate() {
            self.set_byte(at + i, b);
            self.set_mask_byte(at + i, m);
        }
        self.set_byte(at + 1, 0);
        self.set_byte(self.last_capability_next, at as u8);
        self.regs[COMMAND / 4] |= STATUS_CAPABILITIES;
        self.last_capability_next = at + 1;
        self.next_capability = at + len;
        Ok(at)
    }

    fn set_byte(&mut self, offset: usize, v: u8) {
        let shift = (offset % 4) * 8;
        let r = &mut self.regs[offset / 4];
        *r = (*r & !(0xff << shift)) | u32::from(v) << shift;
    }

    fn set_mask_byte(&mut self, offset: usize, v: u8) {
        let shift = (offset % 4) * 8;
        let r = &mut self.wmask[offset / 4];
        *r = (*r & !(0xff << shift)) | u32::from(v) << shift;
    }

    /// Sets bytes the device owns (read-only to the guest), e.g. a capability's state.
    pub fn set_bytes(&mut self, offset: usize, data: &[u8]) {
        for (i, &b) in data.iter().enumerate() {
            if offset + i < CONFIG_SPACE_SIZE {
                self.set_byte(offset + i, b);
            }
        }
    }

    /// The 32-bit register at `offset & !3`.
    pub fn read_reg(&self, offset: usize) -> u32 {
        self.regs.get(offset / 4).copied().unwrap_or(u32::MAX)
    }

    /// Reads `data.len()` (1, 2 or 4) bytes at `offset`, within one register. Anything else
    /// reads as all ones.
    pub fn read(&self, offset: usize, data: &mut [u8]) {
        if !access_ok(offset, data.len()) {
            data.fill(0xff);
            return;
        }
        let v = self.read_reg(offset).to_le_bytes();
        let start = offset % 4;
        data.copy_from_slice(&v[start..start + data.len()]);
    }

    /// Writes `data` (1, 2 or 4 bytes within one register) at `offset`: only the writable
    /// bits change. Returns false (nothing written) for an access of another shape.
    pub fn write(&mut self, offset: usize, data: &[u8]) -> bool {
        if !access_ok(offset, data.len()) {
            return false;
        }
        let start = offset % 4;
        let mut bytes = [0u8; 4];
        bytes[start..start + data.len()].copy_from_slice(data);
        let mut lanes = 0u32;
        for i in start..start + data.len() {
            lanes |= 0xff << (i * 8);
        }
        let value = u32::from_le_bytes(bytes);
        let reg = offset / 4;
        let mask = self.wmask[reg] & lanes;
        self.regs[reg] = (self.regs[reg] & !mask) | (value & mask);
        true
    }

    /// Puts the writable registers back to `initial` (a function reset): BARs at their
    /// first addresses, Command cleared, capability state as it was.
    pub fn reset_to(&mut self, initial: &ConfigSpace) {
        self.regs.copy_from_slice(&initial.regs[..]);
    }

    /// A copy (kept to reset to).
    pub fn snapshot(&self) -> ConfigSpace {
        ConfigSpace {
            regs: self.regs.clone(),
            wmask: self.wmask.clone(),
            bars: self.bars,
            next_capability: self.next_capability,
            last_capability_next: self.last_capability_next,
        }
    }
}

fn access_ok(offset: usize, len: usize) -> bool {
    matches!(len, 1 | 2 | 4) && offset.is_multiple_of(len) && offset + len <= CONFIG_SPACE_SIZE
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> Identity {
        Identity {
            vendor: 0x1af4,
            device: 0x1042,
            class: 0x01_8000,
            revision: 1,
            subsystem_vendor: 0x1af4,
            subsystem: 0x40,
        }
    }

    fn read32(c: &ConfigSpace, off: usize) -> u32 {
        let mut b = [0u8; 4];
        c.read(off, &mut b);
        u32::from_le_bytes(b)
    }

    #[test]
    fn identity_registers_are_read_only() {
        let mut c = ConfigSpace::new(id());
        assert_eq!(read32(&c, 0), 0x1042_1af4);
        assert!(c.write(0, &[0, 0, 0, 0]));
        assert_eq!(read32(&c, 0), 0x1042_1af4);
        assert_eq!(read32(&c, 8), 0x0180_0001);
        let mut w = [0u8; 2];
        c.read(2, &mut w);
        assert_eq!(u16::from_le_bytes(w), 0x1042);
        // Misaligned and odd-sized accesses read all ones and write nothing.
        c.read(1, &mut w);
        assert_eq!(w, [0xff, 0xff]);
        assert!(!c.write(3, &[1, 2]));
    }

    #[test]
    fn a_32_bit_bar_sizes_and_moves() {
        let mut c = ConfigSpace::new(id());
        c.add_bar(1, 0x1000, BarKind::Mem32, 0xc000_2000).unwrap();
        assert_eq!(read32(&c, BAR0 + 4), 0xc000_2000);
        c.write(BAR0 + 4, &u32::MAX.to_le_bytes());
        assert_eq!(
            read32(&c, BAR0 + 4),
            0xffff_f000,
            "size 4 KiB, 32-bit, non-prefetchable"
        );
        c.write(BAR0 + 4, &0xc010_0000u32.to_le_bytes());
        assert_eq!(c.bar_address(1), Some(0xc010_0000));
        assert!(c.decoded_bars().is_empty(), "decoding is off after reset");
        c.write(COMMAND, &COMMAND_MEMORY.to_le_bytes());
        assert_eq!(c.decoded_bars(), [(1, 0xc010_0000, 0x1000)]);
        // An unused BAR register reads 0 and stays 0 when sized.
        c.write(BAR0, &u32::MAX.to_le_bytes());
        assert_eq!(read32(&c, BAR0), 0);
    }

    #[test]
    fn a_64_bit_bar_sizes_both_halves_and_moves() {
        let mut c = ConfigSpace::new(id());
        c.add_bar(0, 0x8000, BarKind::Mem64, 0x1_0000_0000).unwrap();
        assert_eq!(read32(&c, BAR0), 0b1100);
        assert_eq!(read32(&c, BAR0 + 4), 1);
        c.write(BAR0, &u32::MAX.to_le_bytes());
        c.write(BAR0 + 4, &u32::MAX.to_le_bytes());
        assert_eq!(read32(&c, BAR0), 0xffff_800c);
        assert_eq!(read32(&c, BAR0 + 4), 0xffff_ffff);
        c.write(BAR0, &0xc000_0000u32.to_le_bytes());
        c.write(BAR0 + 4, &0u32.to_le_bytes());
        assert_eq!(c.bar_address(0), Some(0xc000_0000));
        assert_eq!(c.add_bar(1, 16, BarKind::Mem32, 0), Err(Error::BarInUse(1)));
        assert_eq!(c.add_bar(5, 16, BarKind::Mem64, 0), Err(Error::BadBar(5)));
        assert_eq!(
            c.add_bar(2, 0x1000, BarKind::Mem32, 0x800),
            Err(Error::BadBarAddress {
                addr: 0x800,
                size: 0x1000
            })
        );
        assert_eq!(
            c.add_bar(2, 24, BarKind::Mem32, 0),
            Err(Error::BadBarSize(24))
        );
    }

    #[test]
    fn capabilities_form_a_list_with_their_own_write_masks() {
        let mut c = ConfigSpace::new(id());
        let a = c.add_capability(&[0x09, 0, 4, 7], &[0; 4]).unwrap();
        let b = c
            .add_capability(&[0x11, 0, 0, 0, 1, 2], &[0, 0, 0, 0xc0, 0, 0])
            .unwrap();
        assert_eq!((a, b), (0x40, 0x44));
        assert_eq!(
            read32(&c, COMMAND) & STATUS_CAPABILITIES,
            STATUS_CAPABILITIES
        );
        assert_eq!(read32(&c, CAPABILITIES_POINTER) & 0xff, 0x40);
        assert_eq!(read32(&c, 0x40), 0x0704_4409);
        assert_eq!(read32(&c, 0x44) & 0xffff, 0x0011);
        c.write(0x46, &[0xff, 0xff]);
        assert_eq!(read32(&c, 0x44), 0xc000_0011);
        let first = c.snapshot();
        c.write(COMMAND, &[2, 0]);
        c.reset_to(&first);
        assert_eq!(c.command(), 0);
        assert!(c.add_capability(&[1; 200], &[0; 200]).is_err());
    }
}
