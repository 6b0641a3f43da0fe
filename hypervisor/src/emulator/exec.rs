//! Decoding (iced-x86) and the semantics of the instructions the emulator supports.

use iced_x86::{Decoder, DecoderOptions, Instruction, MemorySize, Mnemonic, OpKind, Register};

use super::alu::{self, Op, DF};
use super::{paging, CpuMode, EmuError, EmulatorCpu, Gpr, Seg, MAX_INSN_LEN};
use crate::IoHandler;

/// How many elements one `rep` string instruction moves before it lets the vCPU run again
/// (RIP stays on the instruction, rCX says what is left, as after an interrupt).
pub const MAX_REP_ITERATIONS: u64 = 4096;

/// A decoded instruction with what execution needs besides iced's view of it.
pub struct Decoded {
    insn: Instruction,
    bytes: Vec<u8>,
    mode: CpuMode,
    /// Address size in bytes (2, 4 or 8).
    addr_size: usize,
}

/// Decodes the first instruction of `bytes`; `None` if they are not (enough for) one.
pub fn decode(mode: CpuMode, rip: u64, bytes: &[u8]) -> Option<Decoded> {
    let bytes = bytes.get(..bytes.len().min(MAX_INSN_LEN))?;
    if bytes.is_empty() {
        return None;
    }
    let mut decoder = Decoder::with_ip(mode.bitness(), bytes, rip, DecoderOptions::NONE);
    let insn = decoder.decode();
    if insn.is_invalid() {
        return None;
    }
    Some(Decoded {
        bytes: bytes.get(..insn.len()).unwrap_or(bytes).to_vec(),
        addr_size: address_size(mode, bytes),
        insn,
        mode,
    })
}

/// The address size: the mode's default, switched by an 0x67 prefix.
fn address_size(mode: CpuMode, bytes: &[u8]) -> usize {
    let mut override_ = false;
    for &b in bytes {
        match b {
            0x67 => override_ = true,
            0x26 | 0x2e | 0x36 | 0x3e | 0x64 | 0x65 | 0x66 | 0xf0 | 0xf2 | 0xf3 => {}
            _ => break,
        }
    }
    match (mode, override_) {
        (CpuMode::Bits64, false) => 8,
        (CpuMode::Bits64, true) | (CpuMode::Bits32, false) | (CpuMode::Bits16, true) => 4,
        (CpuMode::Bits32, true) | (CpuMode::Bits16, false) => 2,
    }
}

/// Fetches up to `buf.len()` instruction bytes at CS:RIP from guest RAM; returns how many.
pub fn fetch(cpu: &dyn EmulatorCpu, buf: &mut [u8]) -> usize {
    let mode = cpu.mode();
    let p = cpu.paging();
    let mut linear = linear_of(mode, cpu.segment_base(Seg::Cs), cpu.rip());
    let mut done = 0;
    while done < buf.len() {
        let chunk = (buf.len() - done).min(page_left(linear));
        let Some(gpa) = paging::translate(&p, linear, &mut |a, b| cpu.read_phys(a, b)) else {
            break;
        };
        let Some(dst) = buf.get_mut(done..done + chunk) else {
            break;
        };
        if !cpu.read_phys(gpa, dst) {
            break;
        }
        done += chunk;
        linear = wrap_linear(mode, linear.wrapping_add(chunk as u64));
    }
    done
}

fn page_left(linear: u64) -> usize {
    (0x1000 - (linear & 0xfff)) as usize
}

fn wrap_linear(mode: CpuMode, linear: u64) -> u64 {
    if mode == CpuMode::Bits64 {
        linear
    } else {
        linear & 0xffff_ffff
    }
}

fn linear_of(mode: CpuMode, base: u64, ea: u64) -> u64 {
    wrap_linear(mode, base.wrapping_add(ea))
}

fn unsupported(d: &Decoded, rip: u64, what: impl Into<String>) -> EmuError {
    EmuError::Unsupported {
        rip,
        bytes: d.bytes.clone(),
        what: what.into(),
    }
}

/// A register operand: which GPR, the bit offset (8 for AH..BH) and the size in bytes.
fn gpr_of(r: Register) -> Option<(Gpr, u32, usize)> {
    let n = r as usize;
    let (first, size) = match n {
        _ if (Register::AH as usize..=Register::BH as usize).contains(&n) => {
            let gpr = Gpr::from_index(n - Register::AH as usize)?;
            return Some((gpr, 8, 1));
        }
        _ if (Register::AL as usize..=Register::BL as usize).contains(&n) => (Register::AL, 1),
        _ if (Register::SPL as usize..=Register::R15L as usize).contains(&n) => {
            let gpr = Gpr::from_index(n - Register::SPL as usize + 4)?;
            return Some((gpr, 0, 1));
        }
        _ if (Register::AX as usize..=Register::R15W as usize).contains(&n) => (Register::AX, 2),
        _ if (Register::EAX as usize..=Register::R15D as usize).contains(&n) => (Register::EAX, 4),
        _ if (Register::RAX as usize..=Register::R15 as usize).contains(&n) => (Register::RAX, 8),
        _ => return None,
    };
    Some((Gpr::from_index(n - first as usize)?, 0, size))
}

/// The size in bytes of a memory operand of integer type.
fn mem_size(m: MemorySize) -> usize {
    match m {
        MemorySize::UInt8 | MemorySize::Int8 => 1,
        MemorySize::UInt16 | MemorySize::Int16 => 2,
        MemorySize::UInt32 | MemorySize::Int32 => 4,
        MemorySize::UInt64 | MemorySize::Int64 => 8,
        _ => 0,
    }
}

fn read_gpr(cpu: &dyn EmulatorCpu, r: Register) -> Option<u64> {
    let (gpr, shift, size) = gpr_of(r)?;
    Some((cpu.reg(gpr) >> shift) & alu::mask(size))
}

/// Writes a register as the hardware does: 8/16-bit writes merge, 32-bit writes zero-extend.
fn write_gpr(cpu: &mut dyn EmulatorCpu, r: Register, value: u64) -> Option<()> {
    let (gpr, shift, size) = gpr_of(r)?;
    let new = match size {
        1 | 2 => {
            let m = alu::mask(size) << shift;
            (cpu.reg(gpr) & !m) | ((value << shift) & m)
        }
        4 => value & 0xffff_ffff,
        _ => value,
    };
    cpu.set_reg(gpr, new);
    Some(())
}

/// Reads a register as an address of `size` bytes.
fn addr_reg(cpu: &dyn EmulatorCpu, r: Gpr, size: usize) -> u64 {
    cpu.reg(r) & alu::mask(size)
}

/// Writes a register used as an address of `size` bytes (16-bit writes merge).
fn set_addr_reg(cpu: &mut dyn EmulatorCpu, r: Gpr, value: u64, size: usize) {
    let m = alu::mask(size);
    let new = if size == 2 {
        (cpu.reg(r) & !m) | (value & m)
    } else {
        value & m
    };
    cpu.set_reg(r, new);
}

fn seg_of(r: Register) -> Seg {
    match r {
        Register::ES => Seg::Es,
        Register::CS => Seg::Cs,
        Register::SS => Seg::Ss,
        Register::FS => Seg::Fs,
        Register::GS => Seg::Gs,
        _ => Seg::Ds,
    }
}

/// The linear address of `seg:ea` (in 64-bit mode only FS and GS have a base).
fn seg_linear(cpu: &dyn EmulatorCpu, d: &Decoded, seg: Seg, ea: u64) -> u64 {
    let ea = ea & alu::mask(d.addr_size);
    let base = if d.mode == CpuMode::Bits64 && !matches!(seg, Seg::Fs | Seg::Gs) {
        0
    } else {
        cpu.segment_base(seg)
    };
    linear_of(d.mode, base, ea)
}

/// The linear address of the explicit memory operand.
fn mem_linear(cpu: &dyn EmulatorCpu, d: &Decoded, rip: u64) -> Result<u64, EmuError> {
    let i = &d.insn;
    let base = i.memory_base();
    let mut ea = i.memory_displacement64();
    if !matches!(base, Register::RIP | Register::EIP | Register::None) {
        let v = read_gpr(cpu, base).ok_or_else(|| unsupported(d, rip, "a non-GPR base"))?;
        ea = ea.wrapping_add(v);
    }
    let index = i.memory_index();
    if index != Register::None {
        let v = read_gpr(cpu, index).ok_or_else(|| unsupported(d, rip, "a vector index"))?;
        ea = ea.wrapping_add(v.wrapping_mul(u64::from(i.memory_index_scale())));
    }
    Ok(seg_linear(cpu, d, seg_of(i.memory_segment()), ea))
}

/// Reads guest memory at `linear`: RAM directly, anything else as MMIO.
pub fn read_mem(
    cpu: &dyn EmulatorCpu,
    io: &dyn IoHandler,
    rip: u64,
    mut linear: u64,
    data: &mut [u8],
) -> Result<(), EmuError> {
    let mode = cpu.mode();
    let p = cpu.paging();
    let mut done = 0;
    while done < data.len() {
        let chunk = (data.len() - done).min(page_left(linear));
        let gpa = paging::translate(&p, linear, &mut |a, b| cpu.read_phys(a, b))
            .ok_or(EmuError::PageFault { rip, addr: linear })?;
        if let Some(part) = data.get_mut(done..done + chunk) {
            if !cpu.read_phys(gpa, part) {
                io.mmio_read(gpa, part);
            }
        }
        done += chunk;
        linear = wrap_linear(mode, linear.wrapping_add(chunk as u64));
    }
    Ok(())
}

/// Writes guest memory at `linear`: RAM directly, anything else as MMIO.
pub fn write_mem(
    cpu: &mut dyn EmulatorCpu,
    io: &dyn IoHandler,
    rip: u64,
    mut linear: u64,
    data: &[u8],
) -> Result<(), EmuError> {
    let mode = cpu.mode();
    let p = cpu.paging();
    let mut done = 0;
    while done < data.len() {
        let chunk = (data.len() - done).min(page_left(linear));
        let gpa = paging::translate(&p, linear, &mut |a, b| cpu.read_phys(a, b))
            .ok_or(EmuError::PageFault { rip, addr: linear })?;
        if let Some(part) = data.get(done..done + chunk) {
            if !cpu.write_phys(gpa, part) {
                io.mmio_write(gpa, part);
            }
        }
        done += chunk;
        linear = wrap_linear(mode, linear.wrapping_add(chunk as u64));
    }
    Ok(())
}

fn read_sized(
    cpu: &dyn EmulatorCpu,
    io: &dyn IoHandler,
    rip: u64,
    linear: u64,
    size: usize,
) -> Result<u64, EmuError> {
    let mut b = [0u8; 8];
    read_mem(cpu, io, rip, linear, b.get_mut(..size).unwrap_or(&mut []))?;
    Ok(u64::from_le_bytes(b))
}

fn write_sized(
    cpu: &mut dyn EmulatorCpu,
    io: &dyn IoHandler,
    rip: u64,
    linear: u64,
    size: usize,
    value: u64,
) -> Result<(), EmuError> {
    let b = value.to_le_bytes();
    write_mem(cpu, io, rip, linear, b.get(..size).unwrap_or(&[]))
}

/// An operand once its address is known.
#[derive(Clone, Copy)]
enum Operand {
    Reg(Register),
    Mem(u64),
    Imm(u64),
}

struct Ctx<'a> {
    io: &'a dyn IoHandler,
    d: &'a Decoded,
    rip: u64,
}

impl Ctx<'_> {
    fn operand(&self, cpu: &dyn EmulatorCpu, n: u32) -> Result<Operand, EmuError> {
        let i = &self.d.insn;
        match i.op_kind(n) {
            OpKind::Register => {
                let r = i.op_register(n);
                if gpr_of(r).is_none() {
                    return Err(unsupported(
                        self.d,
                        self.rip,
                        format!("{r:?} as an operand"),
                    ));
                }
                Ok(Operand::Reg(r))
            }
            OpKind::Memory => Ok(Operand::Mem(mem_linear(cpu, self.d, self.rip)?)),
            OpKind::Immediate8
            | OpKind::Immediate16
            | OpKind::Immediate32
            | OpKind::Immediate64
            | OpKind::Immediate8to16
            | OpKind::Immediate8to32
            | OpKind::Immediate8to64
            | OpKind::Immediate32to64 => Ok(Operand::Imm(i.immediate(n))),
            k => Err(unsupported(self.d, self.rip, format!("operand kind {k:?}"))),
        }
    }

    /// The size in bytes of an operand (an immediate takes the other operand's size).
    fn size(&self, op: Operand) -> Result<usize, EmuError> {
        match op {
            Operand::Reg(r) => gpr_of(r).map(|g| g.2).ok_or_else(|| self.bad_reg(r)),
            Operand::Mem(_) => match mem_size(self.d.insn.memory_size()) {
                0 => Err(unsupported(
                    self.d,
                    self.rip,
                    format!(
                        "{:?} on a {:?} memory operand",
                        self.d.insn.mnemonic(),
                        self.d.insn.memory_size()
                    ),
                )),
                n => Ok(n),
            },
            Operand::Imm(_) => Ok(0),
        }
    }

    fn read(&self, cpu: &dyn EmulatorCpu, op: Operand, size: usize) -> Result<u64, EmuError> {
        match op {
            Operand::Reg(r) => read_gpr(cpu, r).ok_or_else(|| self.bad_reg(r)),
            Operand::Mem(a) => read_sized(cpu, self.io, self.rip, a, size),
            Operand::Imm(v) => Ok(v & alu::mask(size)),
        }
    }

    fn write(
        &self,
        cpu: &mut dyn EmulatorCpu,
        op: Operand,
        size: usize,
        v: u64,
    ) -> Result<(), EmuError> {
        match op {
            Operand::Reg(r) => write_gpr(cpu, r, v).ok_or_else(|| self.bad_reg(r)),
            Operand::Mem(a) => write_sized(cpu, self.io, self.rip, a, size, v),
            Operand::Imm(_) => Err(unsupported(self.d, self.rip, "a write to an immediate")),
        }
    }

    fn bad_reg(&self, r: Register) -> EmuError {
        unsupported(self.d, self.rip, format!("{r:?} as an operand"))
    }

    fn operands(&self, cpu: &dyn EmulatorCpu) -> Result<(Operand, Operand), EmuError> {
        if self.d.insn.op_count() != 2 {
            let what = format!(
                "{:?} with {} operands",
                self.d.insn.mnemonic(),
                self.d.insn.op_count()
            );
            return Err(unsupported(self.d, self.rip, what));
        }
        Ok((self.operand(cpu, 0)?, self.operand(cpu, 1)?))
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Str {
    Stos,
    Lods,
    Movs,
}

fn is_string(i: &Instruction) -> bool {
    (0..i.op_count()).any(|n| {
        matches!(
            i.op_kind(n),
            OpKind::MemorySegSI
                | OpKind::MemorySegESI
                | OpKind::MemorySegRSI
                | OpKind::MemoryESDI
                | OpKind::MemoryESEDI
                | OpKind::MemoryESRDI
        )
    })
}

/// Executes a decoded instruction and advances RIP.
pub fn execute(cpu: &mut dyn EmulatorCpu, io: &dyn IoHandler, d: &Decoded) -> Result<(), EmuError> {
    let rip = cpu.rip();
    let cx = Ctx { io, d, rip };
    let i = &d.insn;
    let alu_op = match i.mnemonic() {
        Mnemonic::Add => Some(Op::Add),
        Mnemonic::Sub => Some(Op::Sub),
        Mnemonic::Cmp => Some(Op::Cmp),
        Mnemonic::And => Some(Op::And),
        Mnemonic::Or => Some(Op::Or),
        Mnemonic::Xor => Some(Op::Xor),
        Mnemonic::Test => Some(Op::Test),
        _ => None,
    };
    if i.has_lock_prefix() {
        return Err(unsupported(d, rip, format!("lock {:?}", i.mnemonic())));
    }
    if let Some(op) = alu_op {
        let (dst, src) = cx.operands(cpu)?;
        let size = cx.size(dst)?;
        let a = cx.read(cpu, dst, size)?;
        let b = cx.read(cpu, src, size)?;
        let (res, flags) = alu::compute(op, a, b, size);
        if op.writes() {
            cx.write(cpu, dst, size, res)?;
        }
        cpu.set_rflags(alu::merge(cpu.rflags(), flags));
        cpu.set_rip(i.next_ip());
        return Ok(());
    }
    let string = match i.mnemonic() {
        Mnemonic::Stosb | Mnemonic::Stosw | Mnemonic::Stosd | Mnemonic::Stosq => Some(Str::Stos),
        Mnemonic::Lodsb | Mnemonic::Lodsw | Mnemonic::Lodsd | Mnemonic::Lodsq => Some(Str::Lods),
        Mnemonic::Movsb | Mnemonic::Movsw | Mnemonic::Movsq => Some(Str::Movs),
        Mnemonic::Movsd if is_string(i) => Some(Str::Movs),
        _ => None,
    };
    if let Some(kind) = string {
        return string_op(cpu, &cx, kind);
    }
    match i.mnemonic() {
        Mnemonic::Mov => {
            let (dst, src) = cx.operands(cpu)?;
            let size = cx.size(dst)?;
            let v = cx.read(cpu, src, size)?;
            cx.write(cpu, dst, size, v)?;
        }
        Mnemonic::Movzx | Mnemonic::Movsx | Mnemonic::Movsxd => {
            let (dst, src) = cx.operands(cpu)?;
            let (dsize, ssize) = (cx.size(dst)?, cx.size(src)?);
            let mut v = cx.read(cpu, src, ssize)?;
            if i.mnemonic() != Mnemonic::Movzx && ssize < 8 && v & (1 << (ssize * 8 - 1)) != 0 {
                v |= !alu::mask(ssize);
            }
            cx.write(cpu, dst, dsize, v & alu::mask(dsize))?;
        }
        m => return Err(unsupported(d, rip, format!("{m:?}"))),
    }
    cpu.set_rip(i.next_ip());
    Ok(())
}

/// `stos`, `lods` and `movs`, with `rep` (F3 or F2: both repeat these) up to
/// [`MAX_REP_ITERATIONS`] elements per call.
fn string_op(cpu: &mut dyn EmulatorCpu, cx: &Ctx<'_>, kind: Str) -> Result<(), EmuError> {
    let d = cx.d;
    let i = &d.insn;
    let asz = d.addr_size;
    let size = match i.mnemonic() {
        Mnemonic::Stosb | Mnemonic::Lodsb | Mnemonic::Movsb => 1,
        Mnemonic::Stosw | Mnemonic::Lodsw | Mnemonic::Movsw => 2,
        Mnemonic::Stosd | Mnemonic::Lodsd | Mnemonic::Movsd => 4,
        _ => 8,
    };
    let rep = i.has_rep_prefix() || i.has_repne_prefix();
    let mut count = if rep { addr_reg(cpu, Gpr::Rcx, asz) } else { 1 };
    let step = if cpu.rflags() & DF != 0 {
        (size as u64).wrapping_neg()
    } else {
        size as u64
    };
    let src_seg = seg_of(i.memory_segment());
    let acc = match size {
        1 => Register::AL,
        2 => Register::AX,
        4 => Register::EAX,
        _ => Register::RAX,
    };
    let mut done = 0;
    while count > 0 && done < MAX_REP_ITERATIONS {
        let si = addr_reg(cpu, Gpr::Rsi, asz);
        let di = addr_reg(cpu, Gpr::Rdi, asz);
        let src = seg_linear(cpu, d, src_seg, si);
        let dst = seg_linear(cpu, d, Seg::Es, di);
        match kind {
            Str::Stos => {
                let v = read_gpr(cpu, acc).unwrap_or(0);
                write_sized(cpu, cx.io, cx.rip, dst, size, v)?;
            }
            Str::Lods => {
                let v = read_sized(cpu, cx.io, cx.rip, src, size)?;
                write_gpr(cpu, acc, v);
            }
            Str::Movs => {
                let v = read_sized(cpu, cx.io, cx.rip, src, size)?;
                write_sized(cpu, cx.io, cx.rip, dst, size, v)?;
            }
        }
        if kind != Str::Stos {
            set_addr_reg(cpu, Gpr::Rsi, si.wrapping_add(step), asz);
        }
        if kind != Str::Lods {
            set_addr_reg(cpu, Gpr::Rdi, di.wrapping_add(step), asz);
        }
        count -= 1;
        done += 1;
        if rep {
            set_addr_reg(cpu, Gpr::Rcx, count, asz);
        }
    }
    if count == 0 {
        cpu.set_rip(i.next_ip());
    }
    Ok(())
}

/// The segment-override prefix among the legacy prefixes of `bytes`, if any.
fn segment_override(bytes: &[u8]) -> Option<Seg> {
    let mut seg = None;
    for &b in bytes {
        seg = match b {
            0x26 => Some(Seg::Es),
            0x2e => Some(Seg::Cs),
            0x36 => Some(Seg::Ss),
            0x3e => Some(Seg::Ds),
            0x64 => Some(Seg::Fs),
            0x65 => Some(Seg::Gs),
            0x66 | 0x67 | 0xf0 | 0xf2 | 0xf3 => seg,
            _ => break,
        };
    }
    seg
}

/// `ins`/`outs` (with `rep`) of `size`-byte elements on `port`, up to [`MAX_REP_ITERATIONS`]
/// elements per call; `bytes` are the instruction's bytes (for its prefixes).
#[allow(clippy::too_many_arguments)]
pub fn string_io(
    cpu: &mut dyn EmulatorCpu,
    io: &dyn IoHandler,
    bytes: &[u8],
    port: u16,
    size: usize,
    write: bool,
    rep: bool,
    insn_len: u64,
) -> Result<(), EmuError> {
    let mode = cpu.mode();
    let rip = cpu.rip();
    let d = Decoded {
        insn: Instruction::default(),
        bytes: bytes.to_vec(),
        mode,
        addr_size: address_size(mode, bytes),
    };
    let asz = d.addr_size;
    let mut count = if rep { addr_reg(cpu, Gpr::Rcx, asz) } else { 1 };
    let step = if cpu.rflags() & DF != 0 {
        (size as u64).wrapping_neg()
    } else {
        size as u64
    };
    let src_seg = segment_override(bytes).unwrap_or(Seg::Ds);
    let mut done = 0;
    let mut buf = [0u8; 4];
    let data = buf.get_mut(..size.min(4)).unwrap_or(&mut []);
    while count > 0 && done < MAX_REP_ITERATIONS {
        if write {
            let si = addr_reg(cpu, Gpr::Rsi, asz);
            read_mem(cpu, io, rip, seg_linear(cpu, &d, src_seg, si), data)?;
            io.pio_write(port, data);
            set_addr_reg(cpu, Gpr::Rsi, si.wrapping_add(step), asz);
        } else {
            let di = addr_reg(cpu, Gpr::Rdi, asz);
            io.pio_read(port, data);
            let dst = seg_linear(cpu, &d, Seg::Es, di);
            write_mem(cpu, io, rip, dst, data)?;
            set_addr_reg(cpu, Gpr::Rdi, di.wrapping_add(step), asz);
        }
        count -= 1;
        done += 1;
        if rep {
            set_addr_reg(cpu, Gpr::Rcx, count, asz);
        }
    }
    if count == 0 {
        cpu.set_rip(rip.wrapping_add(insn_len));
    }
    Ok(())
}
