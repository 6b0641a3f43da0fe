//! Fuzzes the x86 instruction emulator (`hypervisor::emulator`, MSHV's MMIO path): decode,
//! page walk and execution of one instruction, with fuzzed registers, mode, paging registers,
//! instruction bytes, and guest RAM (which holds the page tables and the bytes at RIP when the
//! hypervisor supplied fewer than a whole instruction).
//!
//! Invariants checked:
//! - no panic (overflow checks are on in fuzz builds);
//! - every general-purpose register the emulator changed is one the instruction writes, as
//!   iced-x86's own instruction info lists them (an independent decoder's view);
//! - on success RIP moved forward by 1 to 15 bytes, or stayed (a `rep` stopping early);
//! - every MMIO access is 1, 2, 4 or 8 bytes (or a piece of one split at a page boundary)
//!   and not entirely inside guest RAM (RAM accesses go to RAM), and a `rep` makes at most
//!   `MAX_REP_ITERATIONS` elements per call (at most 4 accesses each: a read and a write, each
//!   possibly split).
#![no_main]

use std::sync::Mutex;

use arbitrary::Arbitrary;
use hypervisor::emulator::{
    emulate, CpuMode, EmulatorCpu, Gpr, Paging, Seg, MAX_INSN_LEN, MAX_REP_ITERATIONS,
};
use hypervisor::IoHandler;
use iced_x86::{Decoder, DecoderOptions, InstructionInfoFactory, OpAccess, Register};
use libfuzzer_sys::fuzz_target;

/// Guest RAM: [0, RAM_SIZE).
const RAM_SIZE: usize = 0x4000;

#[derive(Arbitrary, Debug)]
struct Input {
    regs: [u64; 16],
    rip: u16,
    rflags: u64,
    mode: u8,
    cr0: u64,
    cr3: u16,
    cr4: u64,
    efer: u64,
    fs_base: u64,
    gs_base: u64,
    mmio_value: u64,
    insn: Vec<u8>,
    /// Written at the start of RAM, then at RIP (page tables and code share the bytes).
    ram: Vec<u8>,
    code: [u8; MAX_INSN_LEN],
}

struct Cpu {
    regs: [u64; 16],
    rip: u64,
    rflags: u64,
    mode: CpuMode,
    paging: Paging,
    fs_base: u64,
    gs_base: u64,
    ram: Vec<u8>,
}

impl Cpu {
    fn ram_range(&self, gpa: u64, len: usize) -> Option<std::ops::Range<usize>> {
        let start = usize::try_from(gpa).ok()?;
        let end = start.checked_add(len)?;
        (end <= self.ram.len()).then_some(start..end)
    }
}

impl EmulatorCpu for Cpu {
    fn reg(&self, r: Gpr) -> u64 {
        self.regs[r as usize]
    }
    fn set_reg(&mut self, r: Gpr, value: u64) {
        self.regs[r as usize] = value;
    }
    fn rip(&self) -> u64 {
        self.rip
    }
    fn set_rip(&mut self, rip: u64) {
        self.rip = rip;
    }
    fn rflags(&self) -> u64 {
        self.rflags
    }
    fn set_rflags(&mut self, rflags: u64) {
        self.rflags = rflags;
    }
    fn mode(&self) -> CpuMode {
        self.mode
    }
    fn paging(&self) -> Paging {
        self.paging
    }
    fn segment_base(&self, seg: Seg) -> u64 {
        match seg {
            Seg::Fs => self.fs_base,
            Seg::Gs => self.gs_base,
            _ => 0,
        }
    }
    fn read_phys(&self, gpa: u64, data: &mut [u8]) -> bool {
        match self.ram_range(gpa, data.len()) {
            Some(r) => {
                data.copy_from_slice(&self.ram[r]);
                true
            }
            None => false,
        }
    }
    fn write_phys(&mut self, gpa: u64, data: &[u8]) -> bool {
        match self.ram_range(gpa, data.len()) {
            Some(r) => {
                self.ram[r].copy_from_slice(data);
                true
            }
            None => false,
        }
    }
}

#[derive(Default)]
struct Mmio {
    value: u64,
    accesses: Mutex<Vec<(u64, usize)>>,
}

impl IoHandler for Mmio {
    fn pio_read(&self, _port: u16, data: &mut [u8]) {
        data.fill(0xff);
    }
    fn pio_write(&self, _port: u16, _data: &[u8]) {}
    fn mmio_read(&self, addr: u64, data: &mut [u8]) {
        self.accesses.lock().unwrap().push((addr, data.len()));
        let bytes = self.value.to_le_bytes();
        let n = data.len().min(8);
        data[..n].copy_from_slice(&bytes[..n]);
    }
    fn mmio_write(&self, addr: u64, data: &[u8]) {
        self.accesses.lock().unwrap().push((addr, data.len()));
    }
}

/// The 64-bit registers iced-x86 says `bytes` (decoded in `bits`) may write, or `None` when
/// it does not decode them.
fn written(bits: u32, rip: u64, bytes: &[u8]) -> Option<Vec<usize>> {
    let mut d = Decoder::with_ip(bits, bytes, rip, DecoderOptions::NONE);
    let insn = d.decode();
    if insn.is_invalid() {
        return None;
    }
    let mut f = InstructionInfoFactory::new();
    let info = f.info(&insn);
    let mut out = Vec::new();
    for used in info.used_registers() {
        let writes = matches!(
            used.access(),
            OpAccess::Write | OpAccess::CondWrite | OpAccess::ReadWrite | OpAccess::ReadCondWrite
        );
        if !writes || !used.register().is_gpr() {
            continue;
        }
        let full = used.register().full_register();
        let n = full as usize - Register::RAX as usize;
        if n < 16 {
            out.push(n);
        }
    }
    Some(out)
}

fuzz_target!(|input: Input| {
    let mode = match input.mode % 3 {
        0 => CpuMode::Bits16,
        1 => CpuMode::Bits32,
        _ => CpuMode::Bits64,
    };
    let mut ram = vec![0u8; RAM_SIZE];
    let n = input.ram.len().min(RAM_SIZE);
    ram[..n].copy_from_slice(&input.ram[..n]);
    let rip = u64::from(input.rip) % (RAM_SIZE as u64);
    let at = rip as usize;
    let code_len = MAX_INSN_LEN.min(RAM_SIZE - at);
    ram[at..at + code_len].copy_from_slice(&input.code[..code_len]);
    let mut cpu = Cpu {
        regs: input.regs,
        rip,
        rflags: input.rflags,
        mode,
        paging: Paging {
            cr0: input.cr0,
            cr3: u64::from(input.cr3) & !0xfff,
            cr4: input.cr4,
            efer: input.efer,
        },
        fs_base: input.fs_base,
        gs_base: input.gs_base,
        ram,
    };
    let io = Mmio {
        value: input.mmio_value,
        ..Mmio::default()
    };
    let insn = &input.insn[..input.insn.len().min(MAX_INSN_LEN)];
    let before = cpu.regs;
    let result = emulate(&mut cpu, &io, insn);

    // The bytes the emulator executed: those supplied, completed from RAM at RIP.
    // (What the hypervisor supplied decodes on its own, or the emulator fetches from RAM.)
    // With paging on, a fetch from RAM went through the fuzzed page tables: which bytes it
    // read is not known here, and the register check is skipped.
    let mut bytes = Some(insn.to_vec());
    if written(mode.bitness(), rip, insn).is_none() {
        let paged = input.cr0 & (1 << 31) != 0 && input.cr0 & 1 != 0;
        bytes = (!paged).then(|| input.code[..code_len].to_vec());
    }
    let changed: Vec<usize> = (0..16).filter(|&i| cpu.regs[i] != before[i]).collect();
    if let (false, Some(bytes)) = (changed.is_empty(), bytes) {
        let allowed = written(mode.bitness(), rip, &bytes).unwrap_or_default();
        for r in &changed {
            assert!(
                allowed.contains(r),
                "register {r} changed ({:#x} -> {:#x}) but the instruction {:02x?} writes only {allowed:?}; result {result:?}",
                before[*r],
                cpu.regs[*r],
                bytes
            );
        }
    }
    if result.is_ok() {
        let delta = cpu.rip.wrapping_sub(rip) & mode_mask(mode);
        assert!(delta <= MAX_INSN_LEN as u64, "rip moved by {delta:#x}");
    }
    let accesses = io.accesses.lock().unwrap();
    // A `movs` reads and writes each element, and either may be split at a page boundary.
    assert!(accesses.len() as u64 <= 4 * MAX_REP_ITERATIONS, "{} accesses", accesses.len());
    for &(addr, len) in accesses.iter() {
        // An access split at a page boundary (each piece to its own physical page, as the
        // hardware and KVM's emulator do) has pieces of any size; a whole one is 1, 2, 4 or
        // 8 bytes.
        let split = addr % 4096 == 0 || addr.wrapping_add(len as u64) % 4096 == 0;
        assert!(
            (1..=8).contains(&len) && (len.is_power_of_two() || split),
            "MMIO of {len} bytes at {addr:#x}"
        );
        let inside = addr.checked_add(len as u64).is_some_and(|end| end <= RAM_SIZE as u64);
        assert!(!inside, "RAM access at {addr:#x}+{len} sent to MMIO");
    }
});

fn mode_mask(mode: CpuMode) -> u64 {
    match mode {
        CpuMode::Bits16 => 0xffff,
        CpuMode::Bits32 => 0xffff_ffff,
        CpuMode::Bits64 => u64::MAX,
    }
}
