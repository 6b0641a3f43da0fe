//! Turning Hyper-V intercept messages into the behaviour the VMM sees on KVM. Written against
//! the [`Vp`] trait so that it is unit-tested on messages built as the hypervisor sends them.

use mshv_bindings::*;

use crate::emulator::{self, GuestRam, StateCpu};
use crate::{
    CpuState, CpuidEntry, Error, IoHandler, Result, VcpuExit, CPUID_FLAG_SIGNIFICANT_INDEX,
};

/// What the intercept handlers need from a vCPU besides its registers.
pub trait Vp: CpuState {
    /// The guest's RAM, for instruction fetches, page walks and string operations.
    fn ram(&self) -> &dyn GuestRam;
    /// The entry for `leaf`/`subleaf` in the table set with `set_cpuid`.
    fn cpuid(&self, leaf: u32, subleaf: u32) -> Option<CpuidEntry>;
    /// Sets RIP and RAX (the common completion of port I/O).
    fn set_rip_rax(&self, rip: u64, rax: u64) -> Result<()> {
        let mut r = self.regs()?;
        r.rip = rip;
        r.rax = rax;
        self.set_regs(&r)
    }
}

/// `intercept_access_type` of a write.
const ACCESS_WRITE: u8 = 1;

fn unhandled(what: String, rip: u64) -> Error {
    Error::UnhandledExit { what, rip }
}

/// The x86 exception names by vector.
pub fn exception_name(vector: u16) -> &'static str {
    const NAMES: [&str; 22] = [
        "#DE", "#DB", "NMI", "#BP", "#OF", "#BR", "#UD", "#NM", "#DF", "#MF(9)", "#TS", "#NP",
        "#SS", "#GP", "#PF", "(15)", "#MF", "#AC", "#MC", "#XM", "#VE", "#CP",
    ];
    NAMES
        .get(usize::from(vector))
        .copied()
        .unwrap_or("exception")
}

/// Looks up `leaf`/`subleaf` in a CPUID table.
pub fn cpuid_lookup(table: &[CpuidEntry], leaf: u32, subleaf: u32) -> Option<&CpuidEntry> {
    table.iter().find(|e| {
        e.function == leaf && (e.flags & CPUID_FLAG_SIGNIFICANT_INDEX == 0 || e.index == subleaf)
    })
}

/// Handles one message: `Ok(None)` to re-enter the guest, `Ok(Some(exit))` for the VMM.
pub fn handle(msg: &hv_message, vp: &dyn Vp, io: &dyn IoHandler) -> Result<Option<VcpuExit>> {
    let ty = msg.header.message_type;
    #[allow(non_upper_case_globals)]
    match ty {
        hv_message_type_HVMSG_X64_IO_PORT_INTERCEPT => {
            let info = msg
                .to_ioport_info()
                .map_err(|_| unhandled("malformed port I/O message".into(), 0))?;
            port_io(&info, vp, io).map(|_| None)
        }
        hv_message_type_HVMSG_UNMAPPED_GPA | hv_message_type_HVMSG_GPA_INTERCEPT => {
            let info = msg
                .to_memory_info()
                .map_err(|_| unhandled("malformed memory message".into(), 0))?;
            mmio(&info, vp, io).map(|_| None)
        }
        hv_message_type_HVMSG_X64_CPUID_INTERCEPT => {
            let info = msg
                .to_cpuid_info()
                .map_err(|_| unhandled("malformed CPUID message".into(), 0))?;
            let (leaf, sub) = (info.rax as u32, info.rcx as u32);
            let (a, b, c, d) = match vp.cpuid(leaf, sub) {
                Some(e) => (e.eax.into(), e.ebx.into(), e.ecx.into(), e.edx.into()),
                None => (
                    info.default_result_rax,
                    info.default_result_rbx,
                    info.default_result_rcx,
                    info.default_result_rdx,
                ),
            };
            let mut r = vp.regs()?;
            (r.rax, r.rbx, r.rcx, r.rdx) = (a, b, c, d);
            r.rip = info.header.rip + u64::from(info.header.instruction_length());
            vp.set_regs(&r).map(|_| None)
        }
        hv_message_type_HVMSG_X64_MSR_INTERCEPT => {
            let info = msg
                .to_msr_info()
                .map_err(|_| unhandled("malformed MSR message".into(), 0))?;
            let msr = info.msr_number;
            let next = info.header.rip + u64::from(info.header.instruction_length());
            let mut r = vp.regs()?;
            if info.header.intercept_access_type == ACCESS_WRITE {
                log::debug!("mshv: ignoring a write of MSR {msr:#x}");
            } else {
                log::debug!("mshv: MSR {msr:#x} reads as 0");
                (r.rax, r.rdx) = (0, 0);
            }
            r.rip = next;
            vp.set_regs(&r).map(|_| None)
        }
        hv_message_type_HVMSG_X64_HALT => Ok(Some(VcpuExit::Hlt)),
        // A triple fault: the VMM reports it (with RIP) as it does on KVM.
        hv_message_type_HVMSG_UNRECOVERABLE_EXCEPTION => Ok(Some(VcpuExit::TripleFault)),
        hv_message_type_HVMSG_X64_EXCEPTION_INTERCEPT => {
            let info = msg
                .to_exception_info()
                .map_err(|_| unhandled("malformed exception message".into(), 0))?;
            let v = info.exception_vector;
            let code = info.error_code;
            Err(unhandled(
                format!(
                    "guest exception {} (vector {v}, error code {code:#x})",
                    exception_name(v)
                ),
                info.header.rip,
            ))
        }
        hv_message_type_HVMSG_X64_APIC_EOI => Ok(None),
        other => {
            let rip = vp.regs().map(|r| r.rip).unwrap_or(0);
            let name = match other {
                hv_message_type_HVMSG_INVALID_VP_REGISTER_VALUE => "invalid VP register value",
                hv_message_type_HVMSG_UNSUPPORTED_FEATURE => "unsupported feature",
                hv_message_type_HVMSG_HYPERCALL_INTERCEPT => "hypercall",
                _ => "intercept",
            };
            Err(unhandled(format!("MSHV {name} message {other:#x}"), rip))
        }
    }
}

fn port_io(info: &hv_x64_io_port_intercept_message, vp: &dyn Vp, io: &dyn IoHandler) -> Result<()> {
    // SAFETY: the union's bitfield view covers the same byte the hypervisor filled in.
    let access = unsafe { info.access_info.__bindgen_anon_1 };
    let size = usize::from(access.access_size()).clamp(1, 4);
    let write = info.header.intercept_access_type == ACCESS_WRITE;
    let port = info.port_number;
    let rip = info.header.rip;
    if access.string_op() != 0 || access.rep_prefix() != 0 {
        let regs = vp.regs()?;
        let sregs = vp.sregs()?;
        let mut cpu = StateCpu::new(regs, sregs, vp.ram());
        let n = usize::from(info.instruction_byte_count).min(info.instruction_bytes.len());
        let bytes = info.instruction_bytes.get(..n).unwrap_or(&[]);
        let len = u64::from(info.header.instruction_length());
        let rep = access.rep_prefix() != 0;
        emulator::string_io(&mut cpu, io, bytes, port, size, write, rep, len)
            .map_err(|e| unhandled(format!("string port I/O on {port:#x}: {e}"), rip))?;
        return vp.set_regs(&cpu.regs);
    }
    let mut rax = info.rax;
    let mut data = [0u8; 4];
    let data = data.get_mut(..size).unwrap_or(&mut []);
    if write {
        for (d, s) in data.iter_mut().zip(rax.to_le_bytes()) {
            *d = s;
        }
        io.pio_write(port, data);
    } else {
        io.pio_read(port, data);
        let mut v = [0u8; 4];
        v.get_mut(..size).unwrap_or(&mut []).copy_from_slice(data);
        let m = crate::emulator::size_mask(size);
        // `in eax` zero-extends into RAX; `in al`/`in ax` keep the other bits.
        rax = if size == 4 {
            u64::from(u32::from_le_bytes(v))
        } else {
            (rax & !m) | u64::from(u32::from_le_bytes(v))
        };
    }
    vp.set_rip_rax(rip + u64::from(info.header.instruction_length()), rax)
}

fn mmio(info: &hv_x64_memory_intercept_message, vp: &dyn Vp, io: &dyn IoHandler) -> Result<()> {
    let regs = vp.regs()?;
    let sregs = vp.sregs()?;
    let mut cpu = StateCpu::new(regs, sregs, vp.ram());
    let n = usize::from(info.instruction_byte_count).min(info.instruction_bytes.len());
    let bytes = info.instruction_bytes.get(..n).unwrap_or(&[]);
    let gpa = info.guest_physical_address;
    emulator::emulate(&mut cpu, io, bytes)
        .map_err(|e| unhandled(format!("MMIO at {gpa:#x}: {e}"), e.rip()))?;
    vp.set_regs(&cpu.regs)
}
