//! Arithmetic and logic with the RFLAGS results the hardware computes (Intel SDM vol. 1,
//! appendix A): CF, PF, AF, ZF, SF and OF of `add`, `sub`/`cmp` and `and`/`or`/`xor`/`test`.

/// Carry.
pub const CF: u64 = 1;
/// Parity of the low byte (set when even).
pub const PF: u64 = 1 << 2;
/// Auxiliary carry out of bit 3.
pub const AF: u64 = 1 << 4;
/// Zero.
pub const ZF: u64 = 1 << 6;
/// Sign.
pub const SF: u64 = 1 << 7;
/// Direction (string operations decrement when set).
pub const DF: u64 = 1 << 10;
/// Signed overflow.
pub const OF: u64 = 1 << 11;
/// The status flags arithmetic writes.
pub const STATUS: u64 = CF | PF | AF | ZF | SF | OF;

/// An ALU operation on a memory operand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `add`.
    Add,
    /// `sub`.
    Sub,
    /// `cmp` (a `sub` that only writes flags).
    Cmp,
    /// `and`.
    And,
    /// `or`.
    Or,
    /// `xor`.
    Xor,
    /// `test` (an `and` that only writes flags).
    Test,
}

impl Op {
    /// Whether the result is written back.
    pub fn writes(self) -> bool {
        !matches!(self, Op::Cmp | Op::Test)
    }
}

/// All-ones of `size` bytes (1, 2, 4 or 8).
pub fn mask(size: usize) -> u64 {
    if size >= 8 {
        u64::MAX
    } else {
        (1u64 << (size * 8)) - 1
    }
}

fn sign(size: usize) -> u64 {
    1u64 << (size * 8 - 1)
}

/// ZF, SF and PF of a result of `size` bytes.
fn zsp(res: u64, size: usize) -> u64 {
    let mut f = 0;
    if res & mask(size) == 0 {
        f |= ZF;
    }
    if res & sign(size) != 0 {
        f |= SF;
    }
    if (res as u8).count_ones() & 1 == 0 {
        f |= PF;
    }
    f
}

/// Computes `a op b` on `size`-byte operands: the (masked) result and the status flags.
/// The logic operations clear CF, OF and AF (AF is architecturally undefined there).
pub fn compute(op: Op, a: u64, b: u64, size: usize) -> (u64, u64) {
    let m = mask(size);
    let (a, b) = (a & m, b & m);
    match op {
        Op::Add => {
            let res = a.wrapping_add(b) & m;
            let mut f = zsp(res, size);
            if res < a {
                f |= CF;
            }
            if (a ^ res) & (b ^ res) & sign(size) != 0 {
                f |= OF;
            }
            if (a ^ b ^ res) & 0x10 != 0 {
                f |= AF;
            }
            (res, f)
        }
        Op::Sub | Op::Cmp => {
            let res = a.wrapping_sub(b) & m;
            let mut f = zsp(res, size);
            if a < b {
                f |= CF;
            }
            if (a ^ b) & (a ^ res) & sign(size) != 0 {
                f |= OF;
            }
            if (a ^ b ^ res) & 0x10 != 0 {
                f |= AF;
            }
            (res, f)
        }
        Op::And | Op::Test => {
            let res = a & b;
            (res, zsp(res, size))
        }
        Op::Or => {
            let res = a | b;
            (res, zsp(res, size))
        }
        Op::Xor => {
            let res = a ^ b;
            (res, zsp(res, size))
        }
    }
}

/// Replaces the status flags of `rflags` with `flags`.
pub fn merge(rflags: u64, flags: u64) -> u64 {
    (rflags & !STATUS) | (flags & STATUS)
}
