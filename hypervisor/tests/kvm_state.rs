//! vCPU and platform state through the neutral types against the real /dev/kvm: what one VM
//! saves, a second VM takes back and saves again unchanged (the TSC and the clock only move
//! forward), and the state survives JSON. Skips (saying why) where /dev/kvm is missing.

use std::sync::Arc;

use hypervisor::{Hypervisor, Msr, Request, Vcpu, VcpuState, Vm};

const MSR_TSC: u32 = 0x10;
const MSR_SYSENTER_CS: u32 = 0x174;
const MSR_LSTAR: u32 = 0xc000_0082;
/// LAPIC task-priority register offset.
const APIC_TPR: usize = 0x80;

fn vm_with_vcpu(hv: &dyn Hypervisor) -> (Arc<dyn Vm>, Box<dyn Vcpu>) {
    let vm = hv.create_vm().expect("create vm");
    vm.setup_irqchip().expect("irqchip");
    let vcpu = vm.create_vcpu(0).expect("create vcpu");
    (vm, vcpu)
}

fn msr(state: &VcpuState, index: u32) -> Option<u64> {
    state.msrs.iter().find(|m| m.index == index).map(|m| m.data)
}

#[test]
fn vcpu_and_platform_state_round_trip_between_two_vms() {
    if !std::path::Path::new("/dev/kvm").exists() {
        test_skip::skip("/dev/kvm does not exist");
        return;
    }
    let (hv, _) = hypervisor::open(Request::Kvm, false).expect("open kvm");
    let (vm_a, a) = vm_with_vcpu(hv.as_ref());
    a.set_cpuid(&hv.supported_cpuid().unwrap()).unwrap();
    let mut regs = a.regs().unwrap();
    regs.rax = 0x1111;
    regs.rbx = 0x2222;
    regs.rip = 0x1000;
    regs.rflags = 0x202;
    a.set_regs(&regs).unwrap();
    let mut sregs = a.sregs().unwrap();
    sregs.cs.base = 0x1_0000;
    sregs.cs.selector = 0x1000;
    a.set_sregs(&sregs).unwrap();
    a.set_msrs(&[
        Msr {
            index: MSR_SYSENTER_CS,
            data: 0x10,
        },
        Msr {
            index: MSR_LSTAR,
            data: 0xffff_8000_0000_1234,
        },
    ])
    .unwrap();
    let mut lapic = a.lapic().unwrap();
    lapic.set(APIC_TPR, 0x20);
    a.set_lapic(&lapic).unwrap();

    let saved = a.save_state().expect("save vCPU");
    let platform = vm_a.save_platform().expect("save platform");
    assert_eq!(saved.regs.rbx, 0x2222);
    assert_eq!(saved.sregs.cs.selector, 0x1000);
    assert_eq!(msr(&saved, MSR_LSTAR), Some(0xffff_8000_0000_1234));
    assert_eq!(msr(&saved, MSR_SYSENTER_CS), Some(0x10));
    assert_eq!(saved.lapic.len(), 1024);
    assert_eq!(saved.xsave.len(), 1024);
    assert!(!saved.cpuid.is_empty());
    assert_eq!(platform.ioapic.redirtbl.len(), 24);

    // Through JSON, as a snapshot stores it.
    let json = serde_json::to_string(&saved).unwrap();
    let back: VcpuState = serde_json::from_str(&json).unwrap();
    assert_eq!(back, saved);

    let (vm_b, b) = vm_with_vcpu(hv.as_ref());
    vm_b.restore_platform(&platform).expect("restore platform");
    b.restore_state(&back).expect("restore vCPU");
    let again = b.save_state().unwrap();
    assert_eq!(again.regs, saved.regs);
    assert_eq!(again.sregs, saved.sregs);
    assert_eq!(again.lapic.get(APIC_TPR), saved.lapic.get(APIC_TPR));
    assert_eq!(again.lapic.get(APIC_TPR), Some(&0x20));
    assert_eq!(again.xsave, saved.xsave);
    assert_eq!(again.xcrs, saved.xcrs);
    assert_eq!(again.events, saved.events);
    assert_eq!(again.mp_state, saved.mp_state);
    assert_eq!(again.cpuid, saved.cpuid);
    for m in &saved.msrs {
        match m.index {
            MSR_TSC => assert!(msr(&again, MSR_TSC) >= Some(m.data), "the TSC went back"),
            // Timestamps and counters the host moves on its own are not compared.
            0x6e0 | 0x4b56_4d01 | 0x4b56_4d00 | 0x11 | 0x12 | 0x3b => {}
            i => assert_eq!(msr(&again, i), Some(m.data), "MSR {i:#x}"),
        }
    }
    let platform_b = vm_b.save_platform().unwrap();
    assert_eq!(platform_b.pic_master, platform.pic_master);
    assert_eq!(platform_b.pic_slave, platform.pic_slave);
    assert_eq!(platform_b.ioapic, platform.ioapic);
    assert!(
        platform_b.clock_ns >= platform.clock_ns,
        "the clock went back"
    );

    // A damaged state is an error, not a crash.
    let mut bad = saved.clone();
    bad.xsave.truncate(10);
    let (_vm_c, c) = vm_with_vcpu(hv.as_ref());
    let e = c.restore_state(&bad).unwrap_err();
    assert!(e.to_string().contains("XSAVE"), "{e}");
}
