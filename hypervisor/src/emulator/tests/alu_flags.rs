//! `add`/`sub`/`cmp`/`and`/`or`/`xor`/`test` on MMIO, every width and form, against the host
//! CPU running the same operation (inline assembly) for the result and RFLAGS.

use std::arch::asm;

use super::*;
use crate::emulator::alu::{mask, Op, AF, CF, OF, PF, SF, STATUS, ZF};

/// Runs `op` natively on `size`-byte operands; returns (destination after, RFLAGS).
fn native(op: Op, a: u64, b: u64, size: usize) -> (u64, u64) {
    macro_rules! go {
        ($ins:literal) => {{
            let (mut x, f): (u64, u64);
            match size {
                1 => {
                    let mut x8 = a as u8;
                    let fl: u64;
                    // SAFETY: register-only arithmetic; pushfq/pop use the stack balanced.
                    unsafe {
                        asm!(concat!($ins, " {x}, {y}"), "pushfq", "pop {f}",
                            x = inout(reg_byte) x8, y = in(reg_byte) b as u8, f = out(reg) fl);
                    }
                    x = u64::from(x8);
                    f = fl;
                }
                2 => {
                    x = a;
                    let fl: u64;
                    // SAFETY: as above.
                    unsafe {
                        asm!(concat!($ins, " {x:x}, {y:x}"), "pushfq", "pop {f}",
                            x = inout(reg) x, y = in(reg) b, f = out(reg) fl);
                    }
                    f = fl;
                }
                4 => {
                    x = a;
                    let fl: u64;
                    // SAFETY: as above.
                    unsafe {
                        asm!(concat!($ins, " {x:e}, {y:e}"), "pushfq", "pop {f}",
                            x = inout(reg) x, y = in(reg) b, f = out(reg) fl);
                    }
                    f = fl;
                }
                _ => {
                    x = a;
                    let fl: u64;
                    // SAFETY: as above.
                    unsafe {
                        asm!(concat!($ins, " {x}, {y}"), "pushfq", "pop {f}",
                            x = inout(reg) x, y = in(reg) b, f = out(reg) fl);
                    }
                    f = fl;
                }
            }
            (x & mask(size), f)
        }};
    }
    match op {
        Op::Add => go!("add"),
        Op::Sub => go!("sub"),
        Op::Cmp => go!("cmp"),
        Op::And => go!("and"),
        Op::Or => go!("or"),
        Op::Xor => go!("xor"),
        Op::Test => go!("test"),
    }
}

/// The flags an op defines (AF is undefined after the logic operations).
fn defined(op: Op) -> u64 {
    match op {
        Op::Add | Op::Sub | Op::Cmp => STATUS,
        _ => CF | PF | ZF | SF | OF,
    }
}

const VALUES: [u64; 16] = [
    0,
    1,
    0x0f,
    0x10,
    0x7f,
    0x80,
    0xff,
    0x7fff,
    0x8000,
    0xffff,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_ffff,
    0x7fff_ffff_ffff_ffff,
    0x8000_0000_0000_0000,
    0x1234_5678_9abc_def0,
];

/// (op, /digit of the 80/81/83 group, opcode of `op r/m, r` for 8-bit).
const OPS: [(Op, u8, u8); 7] = [
    (Op::Add, 0, 0x00),
    (Op::Or, 1, 0x08),
    (Op::And, 4, 0x20),
    (Op::Sub, 5, 0x28),
    (Op::Xor, 6, 0x30),
    (Op::Cmp, 7, 0x38),
    (Op::Test, 0, 0x84),
];

fn prefix(size: usize) -> Vec<u8> {
    match size {
        2 => vec![0x66],
        8 => vec![0x48],
        _ => vec![],
    }
}

fn check(op: Op, size: usize, mem_dst: bool, bytes: &[u8], (a, b): (u64, u64), rcx: u64, mem: u64) {
    let ram = Ram::new();
    let io = RecIo::new(mem);
    let mut r = regs();
    r.rax = MMIO;
    r.rcx = rcx;
    r.rflags = 0x2 | STATUS; // every status flag set before: all must be recomputed
    let out = run(&ram, r, sregs(M::L64), &io, bytes).unwrap();
    let (res, f) = native(op, a, b, size);
    let what = format!("{op:?} size {size} a {a:#x} b {b:#x} bytes {bytes:02x?}");
    assert_eq!(out.rflags & defined(op), f & defined(op), "flags of {what}");
    assert_eq!(out.rflags & !STATUS, 0x2, "other flags kept, {what}");
    assert_eq!(out.rip, CODE + bytes.len() as u64, "{what}");
    let log = io.take();
    assert_eq!(log[0], Access::MmioRead(MMIO, size), "{what}");
    if mem_dst {
        if op.writes() {
            let want = res.to_le_bytes()[..size].to_vec();
            assert_eq!(log[1..], [Access::MmioWrite(MMIO, want)], "{what}");
        } else {
            assert_eq!(log.len(), 1, "{what}");
        }
        assert_eq!(out.rcx, rcx, "{what}");
    } else {
        assert_eq!(log.len(), 1, "{what}");
        let want = if !op.writes() {
            rcx
        } else if size == 4 {
            res
        } else {
            (rcx & !mask(size)) | res
        };
        assert_eq!(out.rcx, want, "register result of {what}");
    }
}

#[test]
fn alu_with_register_operands_matches_the_cpu() {
    for &(op, _, base) in &OPS {
        for size in [1usize, 2, 4, 8] {
            let m = mask(size);
            let w = u8::from(size != 1);
            for &x in &VALUES {
                for &y in &VALUES {
                    let (x, y) = (x & m, y & m);
                    // op [rax], cl/cx/ecx/rcx: memory is the destination.
                    let mut bytes = prefix(size);
                    bytes.extend([base + w, 0x08]);
                    check(
                        op,
                        size,
                        true,
                        &bytes,
                        (x, y),
                        y | (0x5a5a_u64 << 48 & !m),
                        x,
                    );
                    if op == Op::Test {
                        continue;
                    }
                    // op cl/cx/ecx/rcx, [rax]: the register is the destination.
                    let mut bytes = prefix(size);
                    bytes.extend([base + 2 + w, 0x08]);
                    let rcx = 0xa5a5_a5a5_a5a5_a5a5 & !m | x;
                    check(op, size, false, &bytes, (x, y), rcx, y);
                }
            }
        }
    }
}

#[test]
fn alu_with_immediates_matches_the_cpu() {
    for &(op, digit, _) in &OPS {
        for size in [1usize, 2, 4, 8] {
            let m = mask(size);
            for &x in &VALUES {
                for imm in [
                    0u64,
                    1,
                    0x7f,
                    0x80,
                    0xff,
                    0x7fff,
                    0x8000,
                    0x7fff_ffff,
                    0x8000_0000,
                ] {
                    let x = x & m;
                    let mut bytes = prefix(size);
                    // The full-width immediate form: 80 ib, 81 iw, 81 id (sign-extended to 64).
                    let (opc, imm_bytes, b) = match (op, size) {
                        (Op::Test, 1) => (0xf6, vec![imm as u8], imm & 0xff),
                        (Op::Test, 2) => (0xf7, (imm as u16).to_le_bytes().to_vec(), imm & 0xffff),
                        (Op::Test, _) => (
                            0xf7,
                            (imm as u32).to_le_bytes().to_vec(),
                            (imm as u32 as i32 as i64 as u64) & m,
                        ),
                        (_, 1) => (0x80, vec![imm as u8], imm & 0xff),
                        (_, 2) => (0x81, (imm as u16).to_le_bytes().to_vec(), imm & 0xffff),
                        _ => (
                            0x81,
                            (imm as u32).to_le_bytes().to_vec(),
                            (imm as u32 as i32 as i64 as u64) & m,
                        ),
                    };
                    bytes.extend([opc, digit << 3]);
                    bytes.extend(imm_bytes);
                    check(op, size, true, &bytes, (x, b), 0, x);
                    // The sign-extended imm8 form (83 /digit ib).
                    if op != Op::Test && size > 1 {
                        let mut bytes = prefix(size);
                        bytes.extend([0x83, digit << 3, imm as u8]);
                        let b = (imm as u8 as i8 as i64 as u64) & m;
                        check(op, size, true, &bytes, (x, b), 0, x);
                    }
                }
            }
        }
    }
}

#[test]
fn documented_flag_cases() {
    use crate::emulator::alu::compute;
    // 0x7f + 1 (8-bit): OF, SF, AF; 0xff + 1: CF, ZF, AF, PF.
    assert_eq!(compute(Op::Add, 0x7f, 1, 1), (0x80, OF | SF | AF));
    assert_eq!(compute(Op::Add, 0xff, 1, 1), (0, CF | ZF | AF | PF));
    // 0 - 1 (32-bit): CF, SF, AF, PF (0xff low byte has 8 ones).
    assert_eq!(compute(Op::Sub, 0, 1, 4), (0xffff_ffff, CF | SF | AF | PF));
    // 0x8000 - 1 (16-bit): OF, AF, and PF (low byte 0xff has eight ones).
    assert_eq!(compute(Op::Sub, 0x8000, 1, 2), (0x7fff, OF | AF | PF));
    assert_eq!(compute(Op::Xor, u64::MAX, u64::MAX, 8), (0, ZF | PF));
}
