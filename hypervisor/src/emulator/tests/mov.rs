//! `mov`, `movzx`, `movsx`, `movsxd` in 16-, 32- and 64-bit code with every address size.

use super::*;

const RCX: u64 = 0x1122_3344_5566_7788;
/// What MMIO reads return.
const MEM: u64 = 0x8899_aabb_ccdd_eeff;

enum Want {
    /// A write of these bytes at this address.
    Write(u64, Vec<u8>),
    /// A read of `len` bytes at this address, and RCX (or RAX with `in_rax`) after.
    Read(u64, usize, u64),
}

struct Case {
    mode: M,
    bytes: &'static [u8],
    want: Want,
}

fn case(mode: M, bytes: &'static [u8], want: Want) -> Case {
    Case { mode, bytes, want }
}

fn le(v: u64, n: usize) -> Vec<u8> {
    v.to_le_bytes()[..n].to_vec()
}

#[test]
fn mov_forms_in_every_mode() {
    use Want::*;
    let cases = [
        // 64-bit, [rax] = MMIO.
        case(M::L64, &[0x88, 0x08], Write(MMIO, le(RCX, 1))), // mov [rax], cl
        case(M::L64, &[0x88, 0x28], Write(MMIO, le(RCX >> 8, 1))), // mov [rax], ch
        case(M::L64, &[0x66, 0x89, 0x08], Write(MMIO, le(RCX, 2))), // mov [rax], cx
        case(M::L64, &[0x89, 0x08], Write(MMIO, le(RCX, 4))), // mov [rax], ecx
        case(M::L64, &[0x48, 0x89, 0x08], Write(MMIO, le(RCX, 8))), // mov [rax], rcx
        case(M::L64, &[0x4c, 0x89, 0x00], Write(MMIO, le(0x0808, 8))), // mov [rax], r8
        case(M::L64, &[0xc6, 0x00, 0x12], Write(MMIO, vec![0x12])), // mov byte [rax], 0x12
        case(
            M::L64,
            &[0x66, 0xc7, 0x00, 0x34, 0x12],
            Write(MMIO, le(0x1234, 2)),
        ),
        case(
            M::L64,
            &[0xc7, 0x00, 0x78, 0x56, 0x34, 0x12],
            Write(MMIO, le(0x1234_5678, 4)),
        ),
        // mov qword [rax], -16 (imm32 sign-extended)
        case(
            M::L64,
            &[0x48, 0xc7, 0x00, 0xf0, 0xff, 0xff, 0xff],
            Write(MMIO, le(u64::MAX - 15, 8)),
        ),
        case(M::L64, &[0x8a, 0x08], Read(MMIO, 1, RCX & !0xff | 0xff)), // mov cl, [rax]
        case(M::L64, &[0x8a, 0x28], Read(MMIO, 1, RCX & !0xff00 | 0xff00)), // mov ch, [rax]
        case(
            M::L64,
            &[0x66, 0x8b, 0x08],
            Read(MMIO, 2, RCX & !0xffff | 0xeeff),
        ), // mov cx, [rax]
        case(M::L64, &[0x8b, 0x08], Read(MMIO, 4, 0xccdd_eeff)),        // mov ecx, [rax]
        case(M::L64, &[0x48, 0x8b, 0x08], Read(MMIO, 8, MEM)),          // mov rcx, [rax]
        case(M::L64, &[0x0f, 0xb6, 0x08], Read(MMIO, 1, 0xff)),         // movzx ecx, byte [rax]
        case(M::L64, &[0x0f, 0xb7, 0x08], Read(MMIO, 2, 0xeeff)),       // movzx ecx, word [rax]
        case(M::L64, &[0x48, 0x0f, 0xbe, 0x08], Read(MMIO, 1, u64::MAX)), // movsx rcx, byte [rax]
        case(M::L64, &[0x0f, 0xbf, 0x08], Read(MMIO, 2, 0xffff_eeff)),  // movsx ecx, word [rax]
        case(
            M::L64,
            &[0x66, 0x0f, 0xbe, 0x08],
            Read(MMIO, 1, RCX & !0xffff | 0xffff),
        ), // movsx cx, byte
        case(
            M::L64,
            &[0x48, 0x63, 0x08],
            Read(MMIO, 4, 0xffff_ffff_ccdd_eeff),
        ), // movsxd rcx, [rax]
        // mov [rip-0x30001006], ecx: next RIP plus the sign-extended displacement.
        case(
            M::L64,
            &[0x89, 0x0d, 0xfa, 0xef, 0xff, 0xcf],
            Write(0xffff_ffff_d000_0000, le(RCX, 4)),
        ),
        // mov [eax], ecx (0x67): the address is truncated to 32 bits.
        case(M::L64, &[0x67, 0x89, 0x08], Write(MMIO, le(RCX, 4))),
        // mov ecx, fs:[rax]: the FS base applies in 64-bit mode.
        case(
            M::L64,
            &[0x64, 0x8b, 0x08],
            Read(MMIO + 0x100, 4, 0xccdd_eeff),
        ),
        // mov [rax+rbx*4+8], ecx
        case(
            M::L64,
            &[0x89, 0x4c, 0x98, 0x08],
            Write(MMIO + 0x40 + 8, le(RCX, 4)),
        ),
        // 32-bit: DS base 0x100 applies.
        case(M::P32, &[0x89, 0x08], Write(MMIO + 0x100, le(RCX, 4))), // mov [eax], ecx
        case(M::P32, &[0x66, 0x89, 0x08], Write(MMIO + 0x100, le(RCX, 2))), // mov [eax], cx
        case(
            M::P32,
            &[0x8b, 0x0c, 0x98],
            Read(MMIO + 0x140, 4, 0xccdd_eeff),
        ), // mov ecx, [eax+ebx*4]
        case(M::P32, &[0x0f, 0xb6, 0x08], Read(MMIO + 0x100, 1, 0xff)), // movzx ecx, byte [eax]
        // 16-bit: DS base 0x100, BX = 0x40, SI = 0x4.
        case(M::Real, &[0x89, 0x0f], Write(MMIO + 0x140, le(RCX, 2))), // mov [bx], cx
        case(
            M::Real,
            &[0x8b, 0x48, 0x04],
            Read(MMIO + 0x148, 2, RCX & !0xffff | 0xeeff),
        ), // mov cx, [bx+si+4]
        case(
            M::Real,
            &[0x66, 0x89, 0x0f],
            Write(MMIO + 0x140, le(RCX, 4)),
        ), // mov [bx], ecx
        case(
            M::Real,
            &[0x67, 0x89, 0x08],
            Write(MMIO + 0x100, le(RCX, 2)),
        ), // mov [eax], cx
        case(
            M::Real,
            &[0xc6, 0x07, 0x5a],
            Write(MMIO + 0x140, vec![0x5a]),
        ), // mov byte [bx], 0x5a
    ];
    for c in cases {
        let ram = Ram::new();
        let io = RecIo::new(MEM);
        let mut r = regs();
        let mut s = sregs(c.mode);
        r.rcx = RCX;
        r.r8 = 0x0808;
        match c.mode {
            M::L64 => {
                r.rax = MMIO;
                r.rbx = 0x10;
                s.fs.base = 0x100;
                s.ds.base = 0xdead_0000; // ignored in 64-bit mode
            }
            M::P32 => {
                r.rax = MMIO;
                r.rbx = 0x10;
                s.ds.base = 0x100;
            }
            M::Real => {
                r.rax = 0xffff_ffff_0000_0000 | MMIO;
                r.rbx = 0xffff_0040;
                r.rsi = 0x4;
                s.ds.base = MMIO + 0x100;
            }
        }
        if c.mode == M::Real && c.bytes[0] == 0x67 {
            // 32-bit addressing in 16-bit code: [eax] + DS base.
            r.rax = 0;
        }
        if c.mode == M::L64 && c.bytes[0] == 0x67 {
            r.rax = 0xffff_ffff_0000_0000 | MMIO;
        }
        let out = run(&ram, r, s, &io, c.bytes).unwrap_or_else(|e| panic!("{:02x?}: {e}", c.bytes));
        assert_eq!(out.rip, CODE + c.bytes.len() as u64, "{:02x?}", c.bytes);
        let log = io.take();
        match c.want {
            Want::Write(addr, data) => {
                assert_eq!(log, vec![Access::MmioWrite(addr, data)], "{:02x?}", c.bytes);
                assert_eq!(out.rcx, RCX);
            }
            Want::Read(addr, len, rcx) => {
                assert_eq!(log, vec![Access::MmioRead(addr, len)], "{:02x?}", c.bytes);
                assert_eq!(out.rcx, rcx, "{:02x?}", c.bytes);
            }
        }
    }
}

#[test]
fn moffs_forms_use_the_accumulator() {
    let ram = Ram::new();
    let io = RecIo::new(MEM);
    // 64-bit: mov rax, [moffs64]; mov [moffs64], eax.
    let mut insn = vec![0x48, 0xa1];
    insn.extend(MMIO.to_le_bytes());
    let out = run(&ram, regs(), sregs(M::L64), &io, &insn).unwrap();
    assert_eq!(out.rax, MEM);
    assert_eq!(io.take(), vec![Access::MmioRead(MMIO, 8)]);
    let mut insn = vec![0xa3];
    insn.extend((MMIO + 4).to_le_bytes());
    let mut r = regs();
    r.rax = 0xabcd_ef01;
    let out = run(&ram, r, sregs(M::L64), &io, &insn).unwrap();
    assert_eq!(out.rip, CODE + 9);
    assert_eq!(
        io.take(),
        vec![Access::MmioWrite(MMIO + 4, le(0xabcd_ef01, 4))]
    );
    // 32-bit: mov al, [moffs32].
    let mut insn = vec![0xa0];
    insn.extend((MMIO as u32).to_le_bytes());
    let mut r = regs();
    r.rax = 0x1234;
    let out = run(&ram, r, sregs(M::P32), &io, &insn).unwrap();
    assert_eq!(out.rax, 0x12ff);
}

#[test]
fn ram_operands_stay_in_ram() {
    let ram = Ram::new();
    let io = RecIo::new(0);
    let mut r = regs();
    r.rax = 0x3000;
    r.rcx = 0x55;
    run(&ram, r, sregs(M::L64), &io, &[0x89, 0x08]).unwrap();
    assert_eq!(ram.get(0x3000, 4), vec![0x55, 0, 0, 0]);
    assert!(io.take().is_empty());
}

#[test]
fn paged_mmio_write_and_fetch_through_the_page_tables() {
    let ram = Ram::new();
    let s = paged64(&ram);
    // Map linear 0x7fff_0000_0000 (a fresh PML4 slot) → MMIO page, and the code at 0x4000_0000.
    ram.put_u64(0x10_0000 + 0xff * 8, 0x10_3003);
    ram.put_u64(0x10_3000, 0x10_4003);
    ram.put_u64(0x10_4000, 0x10_5003);
    ram.put_u64(0x10_5000, MMIO | 3);
    ram.put_u64(0x10_1000 + 8, 0x10_6003); // PDPT[1]: 1 GiB..2 GiB
    ram.put_u64(0x10_6000, 0x10_7003);
    ram.put_u64(0x10_7000, 0x2000 | 3); // linear 0x4000_0000 → 0x2000
    ram.put(0x2000, &[0x89, 0x48, 0x10]); // mov [rax+0x10], ecx
    let mut r = regs();
    r.rip = 0x4000_0000;
    r.rax = 0x7f80_0000_0000;
    r.rcx = 7;
    let io = RecIo::new(0);
    let out = run(&ram, r, s, &io, &[]).unwrap();
    assert_eq!(out.rip, 0x4000_0003);
    assert_eq!(io.take(), vec![Access::MmioWrite(MMIO + 0x10, le(7, 4))]);
}
