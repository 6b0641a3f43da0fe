//! Instructions the emulator refuses, and the fuzz test.

use super::*;

#[test]
fn unsupported_instructions_name_bytes_and_rip() {
    let ram = Ram::new();
    let io = RecIo::new(0);
    let mut r = regs();
    r.rax = MMIO;
    r.rip = 0x1234;
    for (bytes, what) in [
        (&[0x0f, 0xaf, 0x08][..], "Imul"),       // imul ecx, [rax]
        (&[0xf0, 0x01, 0x08][..], "lock Add"),   // lock add [rax], ecx
        (&[0xff, 0x00][..], "Inc"),              // inc dword [rax]
        (&[0x8e, 0x18][..], "DS as an operand"), // mov ds, [rax]
        (&[0x0f, 0x0b][..], "Ud2"),              // ud2
        (&[0x0f, 0x10, 0x00][..], "Movups"),     // movups xmm0, [rax]
    ] {
        let e = run(&ram, r, sregs(M::L64), &io, bytes).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains(what), "{msg}");
        assert!(msg.contains("rip 0x1234"), "{msg}");
        let hex: Vec<String> = bytes.iter().map(|b| format!("{b:02x}")).collect();
        assert!(msg.contains(&hex.join(" ")), "{msg}");
        assert_eq!(e.rip(), 0x1234);
    }
    assert!(io.take().is_empty(), "nothing was touched");
}

#[test]
fn undecodable_bytes_are_refetched_then_reported() {
    let ram = Ram::new();
    ram.put(CODE, &[0xff, 0xff, 0xff]);
    let io = RecIo::new(0);
    let e = run(&ram, regs(), sregs(M::L64), &io, &[0xff, 0xff]).unwrap_err();
    assert!(matches!(e, EmuError::Decode { rip: CODE, .. }), "{e}");
    assert!(e.to_string().contains("ff ff ff"), "{e}");
    // Truncated bytes from the hypervisor: the rest is fetched from RAM.
    ram.put(CODE, &[0x89, 0x08]);
    let mut r = regs();
    r.rax = MMIO;
    run(&ram, r, sregs(M::L64), &io, &[0x89]).unwrap();
    assert_eq!(io.take(), vec![Access::MmioWrite(MMIO, vec![0; 4])]);
}

#[test]
fn fetch_and_translation_failures_are_errors() {
    let ram = Ram::new();
    let io = RecIo::new(0);
    let mut r = regs();
    r.rip = MMIO;
    let e = run(&ram, r, sregs(M::L64), &io, &[]).unwrap_err();
    assert_eq!(e, EmuError::Fetch { rip: MMIO });
    let s = paged64(&ram);
    let mut r = regs();
    r.rax = 0x4000_0000; // not mapped
    let e = run(&ram, r, s, &io, &[0x89, 0x08]).unwrap_err();
    assert_eq!(
        e,
        EmuError::PageFault {
            rip: CODE,
            addr: 0x4000_0000
        }
    );
    assert!(e.to_string().contains("0x40000000"));
}

#[test]
fn fuzz_decode_and_emulate_never_panics() {
    let ram = Ram::new();
    let io = RecIo::new(0x0123_4567_89ab_cdef);
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let prefixes = [0x66, 0x67, 0xf3, 0xf2, 0x48, 0x64, 0xf0, 0x0f];
    for i in 0..30_000u32 {
        let mut bytes = [0u8; 15];
        for b in bytes.iter_mut() {
            *b = next() as u8;
        }
        if i % 2 == 0 {
            bytes[0] = prefixes[(next() % 8) as usize];
        }
        let n = (next() % 16) as usize;
        let mut r = regs();
        r.rax = if i % 3 == 0 { MMIO } else { next() };
        r.rcx = next() % 64;
        r.rsi = next();
        r.rdi = if i % 2 == 0 { MMIO + 8 } else { next() };
        r.rbx = next();
        r.rflags = next() & 0xcd5 | 2;
        let m = [M::Real, M::P32, M::L64][(i % 3) as usize];
        let _ = run(&ram, r, sregs(m), &io, &bytes[..n]);
        io.take();
    }
}
