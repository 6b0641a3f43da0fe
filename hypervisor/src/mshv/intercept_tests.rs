//! Intercept handling on messages built as the hypervisor sends them.

use std::cell::RefCell;

use mshv_bindings::*;

use super::intercept::{handle, Vp};
use crate::emulator::tests::{Access, Ram, RecIo, CODE, MMIO};
use crate::emulator::GuestRam;
use crate::{
    CpuState, CpuidEntry, FpuState, LapicState, Msr, Regs, Result, Segment, SpecialRegs, VcpuExit,
};

struct FakeVp {
    regs: RefCell<Regs>,
    sregs: SpecialRegs,
    ram: Ram,
    cpuid: Vec<CpuidEntry>,
}

impl FakeVp {
    fn new() -> Self {
        let mut sregs = SpecialRegs {
            cr0: 1,
            efer: 0x500,
            ..Default::default()
        };
        sregs.cs = Segment {
            l: 1,
            present: 1,
            s: 1,
            ..Default::default()
        };
        FakeVp {
            regs: RefCell::new(Regs {
                rip: CODE,
                rflags: 2,
                ..Default::default()
            }),
            sregs,
            ram: Ram::new(),
            cpuid: vec![CpuidEntry {
                function: 0xb,
                index: 1,
                flags: crate::CPUID_FLAG_SIGNIFICANT_INDEX,
                eax: 1,
                ebx: 2,
                ecx: 3,
                edx: 4,
            }],
        }
    }
}

impl CpuState for FakeVp {
    fn regs(&self) -> Result<Regs> {
        Ok(*self.regs.borrow())
    }
    fn set_regs(&self, regs: &Regs) -> Result<()> {
        *self.regs.borrow_mut() = *regs;
        Ok(())
    }
    fn sregs(&self) -> Result<SpecialRegs> {
        Ok(self.sregs)
    }
    fn set_sregs(&self, _: &SpecialRegs) -> Result<()> {
        Ok(())
    }
    fn set_fpu(&self, _: &FpuState) -> Result<()> {
        Ok(())
    }
    fn set_msrs(&self, _: &[Msr]) -> Result<()> {
        Ok(())
    }
    fn set_cpuid(&self, _: &[CpuidEntry]) -> Result<()> {
        Ok(())
    }
    fn lapic(&self) -> Result<LapicState> {
        Ok(LapicState::default())
    }
    fn set_lapic(&self, _: &LapicState) -> Result<()> {
        Ok(())
    }
}

impl Vp for FakeVp {
    fn ram(&self) -> &dyn GuestRam {
        &self.ram
    }
    fn cpuid(&self, leaf: u32, subleaf: u32) -> Option<CpuidEntry> {
        super::intercept::cpuid_lookup(&self.cpuid, leaf, subleaf).copied()
    }
}

/// A message of type `ty` carrying `payload`.
fn message<T: Copy>(ty: u32, payload: &T) -> hv_message {
    assert!(std::mem::size_of::<T>() <= 240);
    let mut m = hv_message::default();
    m.header.message_type = ty;
    // SAFETY: `T` fits in the 240-byte payload (asserted) and is plain old data; the write
    // is unaligned-safe.
    unsafe { std::ptr::write_unaligned(std::ptr::addr_of_mut!(m.u.payload) as *mut T, *payload) };
    m
}

fn header(rip: u64, len: u8, write: bool) -> hv_x64_intercept_message_header {
    let mut h = hv_x64_intercept_message_header {
        rip,
        intercept_access_type: u8::from(write),
        ..Default::default()
    };
    h.set_instruction_length(len);
    h
}

fn port(port: u16, size: u8, write: bool, rax: u64) -> hv_x64_io_port_intercept_message {
    let mut m = hv_x64_io_port_intercept_message {
        header: header(CODE, 1, write),
        port_number: port,
        rax,
        ..Default::default()
    };
    // SAFETY: setting bitfields of the byte-sized union.
    unsafe { m.access_info.__bindgen_anon_1.set_access_size(size) };
    m
}

#[test]
fn port_io_out_and_in() {
    let vp = FakeVp::new();
    let io = RecIo::new(0xab);
    let m = message(
        hv_message_type_HVMSG_X64_IO_PORT_INTERCEPT,
        &port(0x3f8, 1, true, 0x141),
    );
    assert_eq!(handle(&m, &vp, &io).unwrap(), None);
    assert_eq!(io.take(), vec![Access::PioWrite(0x3f8, vec![0x41])]);
    assert_eq!(vp.regs.borrow().rip, CODE + 1);
    // in al: the rest of RAX is kept; in eax: zero-extended.
    let m = message(
        hv_message_type_HVMSG_X64_IO_PORT_INTERCEPT,
        &port(0x60, 1, false, 0x1122_3344_5566_7788),
    );
    handle(&m, &vp, &io).unwrap();
    assert_eq!(vp.regs.borrow().rax, 0x1122_3344_5566_77ab);
    let m = message(
        hv_message_type_HVMSG_X64_IO_PORT_INTERCEPT,
        &port(0xcfc, 4, false, u64::MAX),
    );
    handle(&m, &vp, &io).unwrap();
    assert_eq!(vp.regs.borrow().rax, 0xab);
    assert_eq!(
        io.take(),
        vec![Access::PioRead(0x60, 1), Access::PioRead(0xcfc, 4)]
    );
}

#[test]
fn rep_outsb_goes_through_the_string_path() {
    let vp = FakeVp::new();
    vp.ram.put(0x3000, b"ok");
    {
        let mut r = vp.regs.borrow_mut();
        r.rsi = 0x3000;
        r.rcx = 2;
    }
    let io = RecIo::new(0);
    let mut p = port(0x3f8, 1, true, 0);
    p.header.set_instruction_length(2);
    p.instruction_byte_count = 2;
    p.instruction_bytes[..2].copy_from_slice(&[0xf3, 0x6e]);
    // SAFETY: bitfields of the byte-sized union.
    unsafe {
        p.access_info.__bindgen_anon_1.set_string_op(1);
        p.access_info.__bindgen_anon_1.set_rep_prefix(1);
    }
    handle(
        &message(hv_message_type_HVMSG_X64_IO_PORT_INTERCEPT, &p),
        &vp,
        &io,
    )
    .unwrap();
    assert_eq!(
        io.take(),
        vec![
            Access::PioWrite(0x3f8, b"o".to_vec()),
            Access::PioWrite(0x3f8, b"k".to_vec())
        ]
    );
    let r = *vp.regs.borrow();
    assert_eq!((r.rcx, r.rsi, r.rip), (0, 0x3002, CODE + 2));
}

fn memory(bytes: &[u8], write: bool) -> hv_x64_memory_intercept_message {
    let mut m = hv_x64_memory_intercept_message {
        header: header(CODE, 0, write),
        instruction_byte_count: bytes.len() as u8,
        guest_physical_address: MMIO,
        guest_virtual_address: MMIO,
        ..Default::default()
    };
    m.instruction_bytes[..bytes.len()].copy_from_slice(bytes);
    m
}

#[test]
fn mmio_read_and_write_are_emulated() {
    let vp = FakeVp::new();
    vp.regs.borrow_mut().rax = MMIO;
    vp.regs.borrow_mut().rcx = 0x55;
    let io = RecIo::new(0x1234_5678);
    let m = message(
        hv_message_type_HVMSG_UNMAPPED_GPA,
        &memory(&[0x8b, 0x08], false),
    );
    assert_eq!(handle(&m, &vp, &io).unwrap(), None);
    assert_eq!(vp.regs.borrow().rcx, 0x1234_5678);
    assert_eq!(vp.regs.borrow().rip, CODE + 2);
    let m = message(
        hv_message_type_HVMSG_GPA_INTERCEPT,
        &memory(&[0x88, 0x08], true),
    );
    handle(&m, &vp, &io).unwrap();
    assert_eq!(
        io.take(),
        vec![
            Access::MmioRead(MMIO, 4),
            Access::MmioWrite(MMIO, vec![0x78])
        ]
    );
    // An instruction the emulator refuses is an error naming it and RIP.
    let m = message(
        hv_message_type_HVMSG_UNMAPPED_GPA,
        &memory(&[0x0f, 0xaf, 0x08], false),
    );
    let e = handle(&m, &vp, &io).unwrap_err().to_string();
    assert!(
        e.contains("0f af 08") && e.contains("Imul") && e.contains("0x1004"),
        "{e}"
    );
}

#[test]
fn cpuid_msr_halt_and_faults() {
    let vp = FakeVp::new();
    let io = RecIo::new(0);
    let mut c = hv_x64_cpuid_intercept_message {
        header: header(CODE, 2, false),
        rax: 0xb,
        rcx: 1,
        default_result_rax: 9,
        default_result_rbx: 9,
        default_result_rcx: 9,
        default_result_rdx: 9,
        ..Default::default()
    };
    handle(
        &message(hv_message_type_HVMSG_X64_CPUID_INTERCEPT, &c),
        &vp,
        &io,
    )
    .unwrap();
    let r = *vp.regs.borrow();
    assert_eq!((r.rax, r.rbx, r.rcx, r.rdx, r.rip), (1, 2, 3, 4, CODE + 2));
    c.rcx = 2; // not in the table: the hypervisor's answer
    handle(
        &message(hv_message_type_HVMSG_X64_CPUID_INTERCEPT, &c),
        &vp,
        &io,
    )
    .unwrap();
    assert_eq!(vp.regs.borrow().rbx, 9);

    vp.regs.borrow_mut().rax = 7;
    let msr = hv_x64_msr_intercept_message {
        header: header(CODE, 2, false),
        msr_number: 0x1234,
        ..Default::default()
    };
    handle(
        &message(hv_message_type_HVMSG_X64_MSR_INTERCEPT, &msr),
        &vp,
        &io,
    )
    .unwrap();
    assert_eq!((vp.regs.borrow().rax, vp.regs.borrow().rdx), (0, 0));

    let h = header(0x5000, 1, false);
    let m = message(hv_message_type_HVMSG_X64_HALT, &h);
    assert_eq!(handle(&m, &vp, &io).unwrap(), Some(VcpuExit::Hlt));
    let m = message(hv_message_type_HVMSG_UNRECOVERABLE_EXCEPTION, &h);
    assert_eq!(handle(&m, &vp, &io).unwrap(), Some(VcpuExit::TripleFault));
    let ex = hv_x64_exception_intercept_message {
        header: h,
        exception_vector: 13,
        error_code: 0x18,
        ..Default::default()
    };
    let m = message(hv_message_type_HVMSG_X64_EXCEPTION_INTERCEPT, &ex);
    let e = handle(&m, &vp, &io).unwrap_err().to_string();
    assert!(
        e.contains("#GP") && e.contains("0x5000") && e.contains("0x18"),
        "{e}"
    );
    let m = message(hv_message_type_HVMSG_UNSUPPORTED_FEATURE, &h);
    assert!(handle(&m, &vp, &io)
        .unwrap_err()
        .to_string()
        .contains("unsupported feature"));
    assert!(io.take().is_empty());
}
