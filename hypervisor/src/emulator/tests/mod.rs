//! Emulator tests: a fake CPU ([`StateCpu`] over fake RAM) and a recording [`IoHandler`].

mod alu_flags;
mod errors;
mod mov;
mod paging_walk;
mod strings;

use std::cell::RefCell;
use std::sync::Mutex;

use super::paging::{CR0_PE, CR0_PG, CR4_PAE, EFER_LMA, EFER_LME};
use super::{emulate, EmuError, GuestRam, StateCpu};
use crate::{IoHandler, Regs, Segment, SpecialRegs};

/// Guest RAM: `0..RAM_SIZE`; everything else is MMIO.
pub const RAM_SIZE: u64 = 0x40_0000;
/// An MMIO address.
pub const MMIO: u64 = 0xd000_0000;

pub struct Ram(pub RefCell<Vec<u8>>);

impl Ram {
    pub fn new() -> Self {
        Ram(RefCell::new(vec![0; RAM_SIZE as usize]))
    }
    pub fn put(&self, gpa: u64, bytes: &[u8]) {
        self.0.borrow_mut()[gpa as usize..gpa as usize + bytes.len()].copy_from_slice(bytes);
    }
    pub fn put_u64(&self, gpa: u64, v: u64) {
        self.put(gpa, &v.to_le_bytes());
    }
    pub fn get(&self, gpa: u64, len: usize) -> Vec<u8> {
        self.0.borrow()[gpa as usize..gpa as usize + len].to_vec()
    }
}

impl GuestRam for Ram {
    fn read(&self, gpa: u64, data: &mut [u8]) -> bool {
        let ram = self.0.borrow();
        let Some(end) = (gpa as usize).checked_add(data.len()) else {
            return false;
        };
        match ram.get(gpa as usize..end) {
            Some(s) => {
                data.copy_from_slice(s);
                true
            }
            _ => false,
        }
    }
    fn write(&self, gpa: u64, data: &[u8]) -> bool {
        let mut ram = self.0.borrow_mut();
        let Some(end) = (gpa as usize).checked_add(data.len()) else {
            return false;
        };
        match ram.get_mut(gpa as usize..end) {
            Some(s) => {
                s.copy_from_slice(data);
                true
            }
            None => false,
        }
    }
}

/// One access seen by the I/O handler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    MmioRead(u64, usize),
    MmioWrite(u64, Vec<u8>),
    PioRead(u16, usize),
    PioWrite(u16, Vec<u8>),
}

/// Records accesses; reads return the bytes of `value` (offset by the address's low bits, so
/// consecutive reads see consecutive bytes).
pub struct RecIo {
    pub log: Mutex<Vec<Access>>,
    pub value: u64,
}

impl RecIo {
    pub fn new(value: u64) -> Self {
        RecIo {
            log: Mutex::new(Vec::new()),
            value,
        }
    }
    pub fn take(&self) -> Vec<Access> {
        std::mem::take(&mut *self.log.lock().unwrap())
    }
    fn fill(&self, data: &mut [u8]) {
        for (d, s) in data.iter_mut().zip(self.value.to_le_bytes()) {
            *d = s;
        }
    }
}

impl IoHandler for RecIo {
    fn pio_read(&self, port: u16, data: &mut [u8]) {
        self.fill(data);
        self.log
            .lock()
            .unwrap()
            .push(Access::PioRead(port, data.len()));
    }
    fn pio_write(&self, port: u16, data: &[u8]) {
        self.log
            .lock()
            .unwrap()
            .push(Access::PioWrite(port, data.to_vec()));
    }
    fn mmio_read(&self, addr: u64, data: &mut [u8]) {
        self.fill(data);
        self.log
            .lock()
            .unwrap()
            .push(Access::MmioRead(addr, data.len()));
    }
    fn mmio_write(&self, addr: u64, data: &[u8]) {
        self.log
            .lock()
            .unwrap()
            .push(Access::MmioWrite(addr, data.to_vec()));
    }
}

/// The code modes the tests run in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum M {
    Real,
    P32,
    L64,
}

pub const CODE: u64 = 0x1000;

/// Special registers for `m` (flat segments; paging off unless a test turns it on).
pub fn sregs(m: M) -> SpecialRegs {
    let flat = Segment {
        present: 1,
        s: 1,
        limit: 0xffff_ffff,
        ..Default::default()
    };
    let mut s = SpecialRegs {
        cs: flat,
        ds: flat,
        es: flat,
        fs: flat,
        gs: flat,
        ss: flat,
        ..Default::default()
    };
    match m {
        M::Real => {}
        M::P32 => {
            s.cr0 = CR0_PE;
            s.cs.db = 1;
        }
        M::L64 => {
            s.cr0 = CR0_PE;
            s.efer = EFER_LME | EFER_LMA;
            s.cs.l = 1;
        }
    }
    s
}

/// Long mode with real 4-level paging (identity map of the first 4 MiB plus `extra` maps).
pub fn paged64(ram: &Ram) -> SpecialRegs {
    let mut s = sregs(M::L64);
    s.cr0 |= CR0_PG;
    s.cr4 = CR4_PAE;
    s.cr3 = 0x10_0000;
    ram.put_u64(0x10_0000, 0x10_1003);
    ram.put_u64(0x10_1000, 0x10_2003);
    ram.put_u64(0x10_2000, 0x83); // 0..2M
    ram.put_u64(0x10_2008, 0x20_0083); // 2M..4M
    s
}

pub fn regs() -> Regs {
    Regs {
        rip: CODE,
        rflags: 0x2,
        ..Default::default()
    }
}

/// Emulates `insn` with the given state; returns the CPU state after and the I/O log.
pub fn run(
    ram: &Ram,
    regs: Regs,
    sregs: SpecialRegs,
    io: &RecIo,
    insn: &[u8],
) -> Result<Regs, EmuError> {
    let mut cpu = StateCpu::new(regs, sregs, ram);
    emulate(&mut cpu, io, insn)?;
    Ok(cpu.regs)
}
