//! `stos`, `lods`, `movs` (with and without `rep`) and string port I/O.

use super::*;
use crate::emulator::{string_io, MAX_REP_ITERATIONS};

fn w(addr: u64, bytes: &[u8]) -> Access {
    Access::MmioWrite(addr, bytes.to_vec())
}

#[test]
fn rep_stos_to_mmio_in_each_width_and_direction() {
    let ram = Ram::new();
    let io = RecIo::new(0);
    let mut r = regs();
    r.rax = 0x1122_3344_5566_7788;
    r.rcx = 3;
    r.rdi = MMIO;
    let out = run(&ram, r, sregs(M::L64), &io, &[0xf3, 0xaa]).unwrap(); // rep stosb
    assert_eq!(
        io.take(),
        vec![w(MMIO, &[0x88]), w(MMIO + 1, &[0x88]), w(MMIO + 2, &[0x88])]
    );
    assert_eq!((out.rcx, out.rdi, out.rip), (0, MMIO + 3, CODE + 2));
    r.rcx = 2;
    let out = run(&ram, r, sregs(M::L64), &io, &[0xf3, 0x48, 0xab]).unwrap(); // rep stosq
    let q = r.rax.to_le_bytes();
    assert_eq!(io.take(), vec![w(MMIO, &q), w(MMIO + 8, &q)]);
    assert_eq!((out.rcx, out.rdi), (0, MMIO + 16));
    // DF set: stosd walks down; no rep: one element, RCX untouched.
    r.rflags |= 1 << 10;
    r.rcx = 9;
    let out = run(&ram, r, sregs(M::L64), &io, &[0xab]).unwrap();
    assert_eq!(io.take(), vec![w(MMIO, &q[..4])]);
    assert_eq!((out.rcx, out.rdi), (9, MMIO - 4));
    // stosw with 16-bit addressing in 32-bit code (0x67): CX/DI, upper bits kept.
    let mut r = regs();
    r.rax = 0xbeef;
    r.rcx = 0xabcd_0002;
    r.rdi = 0x0001_fffe;
    let mut s = sregs(M::P32);
    s.es.base = MMIO;
    let out = run(&ram, r, s, &io, &[0x67, 0xf3, 0x66, 0xab]).unwrap();
    assert_eq!(
        io.take(),
        vec![w(MMIO + 0xfffe, &[0xef, 0xbe]), w(MMIO, &[0xef, 0xbe])]
    );
    assert_eq!((out.rcx, out.rdi), (0xabcd_0000, 0x0001_0002));
}

#[test]
fn rep_with_zero_count_does_nothing_and_long_reps_resume() {
    let ram = Ram::new();
    let io = RecIo::new(0);
    let mut r = regs();
    r.rdi = MMIO;
    let out = run(&ram, r, sregs(M::L64), &io, &[0xf3, 0xaa]).unwrap();
    assert!(io.take().is_empty());
    assert_eq!(out.rip, CODE + 2);
    r.rcx = MAX_REP_ITERATIONS + 5;
    let out = run(&ram, r, sregs(M::L64), &io, &[0xf3, 0xaa]).unwrap();
    assert_eq!(io.take().len() as u64, MAX_REP_ITERATIONS);
    assert_eq!(
        (out.rcx, out.rip),
        (5, CODE),
        "RIP stays until RCX reaches 0"
    );
    let out = run(&ram, out, sregs(M::L64), &io, &[0xf3, 0xaa]).unwrap();
    assert_eq!(io.take().len(), 5);
    assert_eq!((out.rcx, out.rip), (0, CODE + 2));
}

#[test]
fn movs_between_ram_and_mmio_and_lods() {
    let ram = Ram::new();
    ram.put(0x3000, &[1, 2, 3, 4, 5, 6, 7, 8]);
    let io = RecIo::new(0xa1a2_a3a4);
    let mut r = regs();
    r.rsi = 0x3000;
    r.rdi = MMIO;
    r.rcx = 2;
    let out = run(&ram, r, sregs(M::L64), &io, &[0xf3, 0xa5]).unwrap(); // rep movsd
    assert_eq!(
        io.take(),
        vec![w(MMIO, &[1, 2, 3, 4]), w(MMIO + 4, &[5, 6, 7, 8])]
    );
    assert_eq!((out.rsi, out.rdi, out.rcx), (0x3008, MMIO + 8, 0));
    // MMIO → RAM, byte.
    let mut r = regs();
    r.rsi = MMIO;
    r.rdi = 0x3100;
    run(&ram, r, sregs(M::L64), &io, &[0xa4]).unwrap(); // movsb
    assert_eq!(io.take(), vec![Access::MmioRead(MMIO, 1)]);
    assert_eq!(ram.get(0x3100, 1), vec![0xa4]);
    // lodsw from MMIO with a segment override in 32-bit code.
    let mut r = regs();
    r.rax = 0xffff_0000;
    r.rsi = 0x10;
    let mut s = sregs(M::P32);
    s.gs.base = MMIO;
    let out = run(&ram, r, s, &io, &[0x65, 0x66, 0xad]).unwrap();
    assert_eq!(io.take(), vec![Access::MmioRead(MMIO + 0x10, 2)]);
    assert_eq!((out.rax, out.rsi), (0xffff_a3a4, 0x12));
}

#[test]
fn string_port_io() {
    let ram = Ram::new();
    ram.put(0x3000, b"hey");
    let io = RecIo::new(0x42);
    // rep outsb: DS:RSI → port.
    let mut cpu = StateCpu::new(
        Regs {
            rsi: 0x3000,
            rcx: 3,
            ..regs()
        },
        sregs(M::L64),
        &ram,
    );
    string_io(&mut cpu, &io, &[0xf3, 0x6e], 0x3f8, 1, true, true, 2).unwrap();
    let log = io.take();
    assert_eq!(log.len(), 3);
    assert_eq!(log[1], Access::PioWrite(0x3f8, b"e".to_vec()));
    assert_eq!(
        (cpu.regs.rsi, cpu.regs.rcx, cpu.regs.rip),
        (0x3003, 0, CODE + 2)
    );
    // insw (no rep): port → ES:RDI.
    let mut cpu = StateCpu::new(
        Regs {
            rdi: 0x3200,
            ..regs()
        },
        sregs(M::L64),
        &ram,
    );
    string_io(&mut cpu, &io, &[0x66, 0x6d], 0x60, 2, false, false, 2).unwrap();
    assert_eq!(io.take(), vec![Access::PioRead(0x60, 2)]);
    assert_eq!(ram.get(0x3200, 2), vec![0x42, 0]);
    assert_eq!(cpu.regs.rdi, 0x3202);
}
