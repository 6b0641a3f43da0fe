//! The KVM backend against the real /dev/kvm: a few bytes of real-mode guest code exercise
//! memory slots, port I/O and MMIO dispatch through `IoHandler`, ioeventfd, HLT, and the kick
//! that interrupts `run` from another thread, and that an ioeventfd's datamatch width decides
//! whether a write takes the fast path. Skips (printing SKIPPED and why) where /dev/kvm is
//! missing.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hypervisor::{Datamatch, IoEventAddress, IoHandler, Request, Vcpu, VcpuExit};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

const MEM_SIZE: usize = 0x10000;
const CODE_AT: u64 = 0x1000;

#[derive(Default)]
struct Recorder {
    pio_writes: Mutex<Vec<(u16, u8)>>,
    mmio_writes: Mutex<Vec<(u64, Vec<u8>)>>,
    mmio_reads: Mutex<Vec<u64>>,
    done: AtomicBool,
}

impl IoHandler for Recorder {
    fn pio_read(&self, port: u16, data: &mut [u8]) {
        data.fill(if port == 0x11 { 0x07 } else { 0xff });
    }
    fn pio_write(&self, port: u16, data: &[u8]) {
        if port == 0x14 {
            self.done.store(true, Ordering::SeqCst);
        }
        self.pio_writes.lock().unwrap().push((port, data[0]));
    }
    fn mmio_read(&self, addr: u64, data: &mut [u8]) {
        self.mmio_reads.lock().unwrap().push(addr);
        data.fill(0x5a);
    }
    fn mmio_write(&self, addr: u64, data: &[u8]) {
        self.mmio_writes.lock().unwrap().push((addr, data.to_vec()));
    }
}

struct Guest {
    _vm: Arc<dyn hypervisor::Vm>,
    vcpu: Box<dyn Vcpu>,
    mem: *mut libc::c_void,
}

// SAFETY: the mapping is only touched by the kernel on the guest's behalf and unmapped in Drop.
unsafe impl Send for Guest {}

impl Drop for Guest {
    fn drop(&mut self) {
        // SAFETY: `mem` was mapped with MEM_SIZE bytes in `guest()` and is unmapped once.
        unsafe { libc::munmap(self.mem, MEM_SIZE) };
    }
}

/// An ioeventfd to register before the vCPU starts.
type IoEvent<'a> = (&'a EventFd, IoEventAddress, Datamatch);

/// A 1-vCPU VM with 64 KiB of RAM whose vCPU starts in real mode at CODE_AT running `code`.
fn guest(code: &[u8], ioevents: &[IoEvent<'_>]) -> Option<Guest> {
    if !std::path::Path::new("/dev/kvm").exists() {
        test_skip::skip("/dev/kvm does not exist");
        return None;
    }
    let (hv, _) = hypervisor::open(Request::Kvm, false).expect("open kvm");
    let vm = hv.create_vm().expect("create vm");
    // SAFETY: a fresh anonymous mapping; checked below.
    let mem = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            MEM_SIZE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    assert_ne!(mem, libc::MAP_FAILED);
    // SAFETY: the code fits in the mapping at CODE_AT.
    unsafe {
        std::ptr::copy_nonoverlapping(
            code.as_ptr(),
            (mem as *mut u8).add(CODE_AT as usize),
            code.len(),
        )
    };
    // SAFETY: the mapping lives as long as `Guest`, which owns the VM.
    unsafe { vm.map_memory(0, 0, mem as u64, MEM_SIZE as u64) }.expect("map memory");
    for (evt, addr, datamatch) in ioevents {
        vm.register_ioevent(evt, *addr, *datamatch)
            .expect("ioeventfd");
    }
    let vcpu = vm.create_vcpu(0).expect("create vcpu");
    let mut sregs = vcpu.sregs().unwrap();
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    vcpu.set_sregs(&sregs).unwrap();
    let mut regs = vcpu.regs().unwrap();
    regs.rip = CODE_AT;
    regs.rflags = 2;
    vcpu.set_regs(&regs).unwrap();
    Some(Guest { _vm: vm, vcpu, mem })
}

#[test]
fn port_io_mmio_ioeventfd_and_hlt() {
    let code = [
        0xb0, 0x42, // mov al, 0x42
        0xe6, 0x10, // out 0x10, al
        0xe6, 0x20, // out 0x20, al        (ioeventfd: no exit)
        0xe4, 0x11, // in al, 0x11         (handler answers 7)
        0xe6, 0x12, // out 0x12, al
        0xbb, 0x00, 0x10, // mov bx, 0x1000
        0x8e, 0xdb, // mov ds, bx
        0xa2, 0x00, 0x20, // mov [0x2000], al  (MMIO write at 0x12000)
        0xa0, 0x04, 0x20, // mov al, [0x2004]  (MMIO read at 0x12004)
        0xe6, 0x13, // out 0x13, al
        0xf4, // hlt
    ];
    let evt = EventFd::new(EFD_NONBLOCK).unwrap();
    let Some(mut g) = guest(&code, &[(&evt, IoEventAddress::Pio(0x20), Datamatch::Any)]) else {
        return;
    };
    let io = Recorder::default();
    let exit = g.vcpu.run(&io).expect("run");
    assert_eq!(exit, VcpuExit::Hlt);
    assert_eq!(
        *io.pio_writes.lock().unwrap(),
        vec![(0x10, 0x42), (0x12, 0x07), (0x13, 0x5a)]
    );
    assert_eq!(evt.read().expect("ioeventfd fired"), 1);
    assert_eq!(*io.mmio_writes.lock().unwrap(), vec![(0x12000, vec![0x07])]);
    assert_eq!(*io.mmio_reads.lock().unwrap(), vec![0x12004]);
}

#[test]
fn kick_interrupts_a_spinning_vcpu() {
    let code = [
        0xe6, 0x14, // out 0x14, al  (tells the test the guest runs)
        0xeb, 0xfe, // jmp $
    ];
    let Some(g) = guest(&code, &[]) else {
        return;
    };
    let io = Arc::new(Recorder::default());
    let io2 = io.clone();
    let handle = std::thread::spawn(move || {
        let mut g = g;
        g.vcpu.prepare_thread().expect("prepare thread");
        let r = g.vcpu.run(io2.as_ref());
        (r.map_err(|e| e.to_string()), g)
    });
    let start = Instant::now();
    while !io.done.load(Ordering::SeqCst) {
        assert!(start.elapsed() < Duration::from_secs(30), "guest never ran");
        std::thread::sleep(Duration::from_millis(5));
    }
    use vmm_sys_util::signal::Killable;
    while !handle.is_finished() {
        handle.kill(hypervisor::kick_signal()).unwrap();
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "kick did not stop run"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let (result, _g) = handle.join().unwrap();
    assert_eq!(result, Ok(VcpuExit::Interrupted));
}

/// Real-mode code writing the 4-byte values 1 then 2 to guest physical 0x12000 (the way a
/// virtio driver writes QueueNotify), then halting.
const NOTIFY_WRITES: [u8; 21] = [
    0xbb, 0x00, 0x10, // mov bx, 0x1000
    0x8e, 0xdb, // mov ds, bx
    0x66, 0xb8, 0x01, 0x00, 0x00, 0x00, // mov eax, 1
    0x66, 0xa3, 0x00, 0x20, // mov [0x2000], eax   (4-byte MMIO write at 0x12000)
    0x66, 0x40, // inc eax
    0x66, 0xa3, 0x00, 0x20, // mov [0x2000], eax
          // (hlt appended by the tests)
];

fn notify_code() -> Vec<u8> {
    let mut code = NOTIFY_WRITES.to_vec();
    code.push(0xf4); // hlt
    code
}

#[test]
fn four_byte_datamatch_write_signals_the_eventfd_without_an_exit() {
    let evt = EventFd::new(EFD_NONBLOCK).unwrap();
    let Some(mut g) = guest(
        &notify_code(),
        &[(&evt, IoEventAddress::Mmio(0x12000), Datamatch::U32(1))],
    ) else {
        return;
    };
    let io = Recorder::default();
    assert_eq!(g.vcpu.run(&io).expect("run"), VcpuExit::Hlt);
    assert_eq!(evt.read().expect("ioeventfd fired"), 1);
    // Only the write that does not match (value 2) reaches the handler.
    assert_eq!(
        *io.mmio_writes.lock().unwrap(),
        vec![(0x12000, 2u32.to_le_bytes().to_vec())]
    );
}

#[test]
fn eight_byte_datamatch_never_matches_a_four_byte_write() {
    // The width is part of the match: this is what every virtio kick did when the seam
    // carried only an `Option<u64>`.
    let evt = EventFd::new(EFD_NONBLOCK).unwrap();
    let Some(mut g) = guest(
        &notify_code(),
        &[(&evt, IoEventAddress::Mmio(0x12000), Datamatch::U64(1))],
    ) else {
        return;
    };
    let io = Recorder::default();
    assert_eq!(g.vcpu.run(&io).expect("run"), VcpuExit::Hlt);
    assert!(
        evt.read().is_err(),
        "an 8-byte datamatch fired on a 4-byte write"
    );
    assert_eq!(
        *io.mmio_writes.lock().unwrap(),
        vec![
            (0x12000, 1u32.to_le_bytes().to_vec()),
            (0x12000, 2u32.to_le_bytes().to_vec())
        ]
    );
}

#[test]
fn dirty_log_names_the_pages_the_guest_wrote() {
    let code = [
        0xbb, 0x00, 0x03, // mov bx, 0x300
        0x8e, 0xdb, // mov ds, bx
        0xc6, 0x06, 0x00, 0x00, 0x01, // mov byte [0], 1   (page 3)
        0xc6, 0x06, 0x00, 0x50, 0x01, // mov byte [0x5000], 1 (page 8)
        0xf4, // hlt
    ];
    let Some(mut g) = guest(&code, &[]) else {
        return;
    };
    // SAFETY: the guest's own mapping, as mapped in `guest()`.
    unsafe {
        g._vm
            .set_dirty_log(0, 0, g.mem as u64, MEM_SIZE as u64, true)
    }
    .expect("dirty log on");
    let exit = g.vcpu.run(&Recorder::default()).expect("run");
    assert_eq!(exit, VcpuExit::Hlt);
    let bits = g._vm.dirty_log(0, MEM_SIZE as u64).expect("dirty log");
    let pages: Vec<usize> = (0..MEM_SIZE / 4096)
        .filter(|p| bits[p / 64] & (1 << (p % 64)) != 0)
        .collect();
    assert!(pages.contains(&3) && pages.contains(&8), "{pages:?}");
    let again = g._vm.dirty_log(0, MEM_SIZE as u64).unwrap();
    assert!(again.iter().all(|w| *w == 0), "the record is cleared");
}

/// Real-mode code writing the 2-byte values 1 then 2 to 0x12000 (a virtio-pci queue
/// notification is Linux's `iowrite16`), then halting.
const NOTIFY_WRITES_16: [u8; 16] = [
    0xbb, 0x00, 0x10, // mov bx, 0x1000
    0x8e, 0xdb, // mov ds, bx
    0xb8, 0x01, 0x00, // mov ax, 1
    0xa3, 0x00, 0x20, // mov [0x2000], ax   (2-byte MMIO write at 0x12000)
    0x40, // inc ax
    0xa3, 0x00, 0x20, // mov [0x2000], ax
    0xf4, // hlt
];

#[test]
fn two_byte_datamatch_matches_only_its_value_and_unregisters() {
    let evt = EventFd::new(EFD_NONBLOCK).unwrap();
    let addr = IoEventAddress::Mmio(0x12000);
    let Some(mut g) = guest(&NOTIFY_WRITES_16, &[(&evt, addr, Datamatch::U16(1))]) else {
        return;
    };
    let io = Recorder::default();
    assert_eq!(g.vcpu.run(&io).expect("run"), VcpuExit::Hlt);
    assert_eq!(evt.read().expect("2-byte ioeventfd fired"), 1);
    assert_eq!(
        *io.mmio_writes.lock().unwrap(),
        vec![(0x12000, 2u16.to_le_bytes().to_vec())]
    );
    // Unregistering takes exactly that registration away (a second time finds nothing).
    g._vm
        .unregister_ioevent(&evt, addr, Datamatch::U16(1))
        .expect("unregister");
    assert!(g
        ._vm
        .unregister_ioevent(&evt, addr, Datamatch::U16(1))
        .is_err());
}

#[test]
fn msi_routes_past_the_ioapic_pins_are_set_replaced_and_removed() {
    if !std::path::Path::new("/dev/kvm").exists() {
        test_skip::skip("/dev/kvm does not exist");
        return;
    }
    let (hv, _) = hypervisor::open(Request::Kvm, false).expect("open kvm");
    let vm = hv.create_vm().expect("create vm");
    vm.setup_irqchip().expect("irqchip");
    let msg = hypervisor::MsiMessage {
        address: 0xfee0_0000,
        data: 0x51,
    };
    vm.set_msi_route(24, Some(msg)).expect("route");
    vm.set_msi_route(25, Some(msg)).expect("second route");
    vm.set_msi_route(24, None).expect("route removed");
    // A route from an irqfd: writing the eventfd on GSI 25 must be accepted by KVM.
    let evt = EventFd::new(EFD_NONBLOCK).unwrap();
    vm.register_irqfd(&evt, 25).expect("irqfd on an MSI GSI");
    vm.unregister_irqfd(&evt, 25).expect("irqfd detached");
}
