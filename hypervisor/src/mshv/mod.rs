//! The MSHV backend: Microsoft Hypervisor through /dev/mshv (mshv-ioctls 0.7).
//!
//! What MSHV does not provide the backend supplies, so the VMM sees KVM's behaviour: an IOAPIC
//! whose redirection entries become MSI routes ([`ioapic`]), port-I/O ioeventfds (MSHV only
//! has MMIO ones), CPUID from the table set per vCPU (registered as intercept results,
//! [`cpuid`]), and MMIO instruction emulation ([`crate::emulator`]) on unmapped-GPA
//! intercepts.

mod convert;
mod cpuid;
pub mod intercept;
#[cfg(test)]
mod intercept_tests;
pub mod ioapic;
mod vcpu;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use mshv_bindings::{
    hv_partition_property_code_HV_PARTITION_PROPERTY_UNIMPLEMENTED_MSR_ACTION,
    hv_unimplemented_msr_action_HV_UNIMPLEMENTED_MSR_ACTION_IGNORE_WRITE_READ_ZERO,
    mshv_user_irq_entry, mshv_user_irq_table, mshv_user_mem_region, MSHV_SET_MEM_BIT_EXECUTABLE,
    MSHV_SET_MEM_BIT_WRITABLE,
};
use mshv_ioctls::{Mshv, VmFd};
use vmm_sys_util::eventfd::EventFd;

use crate::emulator::GuestRam;
use crate::{
    CpuidEntry, Datamatch, Error, Hypervisor, IoEventAddress, IoHandler, Kind, MsiMessage, Result,
    Vcpu, Vm, CPUID_FLAG_SIGNIFICANT_INDEX,
};
use ioapic::Ioapic;
pub use vcpu::MshvVcpu;

/// Guest pages are 4 KiB.
const PAGE_SHIFT: u64 = 12;

/// Microsoft Hypervisor through /dev/mshv.
pub struct MshvHypervisor {
    mshv: Mshv,
    /// The hypervisor's CPUID answers, asked once per process: asking takes a partition of
    /// its own, which must not be paid again at every boot.
    supported_cpuid: OnceLock<Vec<CpuidEntry>>,
}

impl MshvHypervisor {
    /// Opens /dev/mshv.
    pub fn new() -> Result<Self> {
        let mshv = Mshv::new().map_err(|e| Error::Open {
            device: crate::select::MSHV_DEVICE,
            source: std::io::Error::from_raw_os_error(e.errno()),
        })?;
        Ok(MshvHypervisor {
            mshv,
            supported_cpuid: OnceLock::new(),
        })
    }

    /// Creates and initializes a partition with what a Linux guest needs: in-hypervisor
    /// LAPIC/x2APIC, the host's CPU and XSAVE features, Hyper-V enlightenments (mshv-ioctls'
    /// defaults), unimplemented MSRs read as zero and ignore writes (KVM with
    /// `ignore_msrs` behaves the same for the MSRs Linux probes). CPUID needs no intercept:
    /// each vCPU registers its table as intercept results ([`cpuid`]).
    fn create_partition(&self) -> Result<VmFd> {
        let fd = loop {
            match self.mshv.create_vm() {
                Ok(fd) => break fd,
                Err(e) if e.errno() == libc::EINTR => continue,
                Err(e) => return Err(mshv_err("MSHV_CREATE_PARTITION", e)),
            }
        };
        fd.set_partition_property(
            hv_partition_property_code_HV_PARTITION_PROPERTY_UNIMPLEMENTED_MSR_ACTION,
            u64::from(
                hv_unimplemented_msr_action_HV_UNIMPLEMENTED_MSR_ACTION_IGNORE_WRITE_READ_ZERO,
            ),
        )
        .map_err(|e| mshv_err("setting the unimplemented-MSR action", e))?;
        fd.initialize()
            .map_err(|e| mshv_err("MSHV_INITIALIZE_PARTITION", e))?;
        Ok(fd)
    }
}

/// The ioctl request numbers this backend issues, for seccomp allow-lists: on /dev/mshv and
/// the partition (from the thread that builds the VM), and on a vCPU (from its own thread,
/// which also reprograms MSI routes when the guest writes the emulated IOAPIC).
/// `MSHV_ROOT_HVCALL` carries register access, CPUID queries and results and partition
/// properties; the hypercall code is in memory, where a filter cannot look, and the kernel
/// allows only the codes it lets a VMM make.
pub fn seccomp_ioctls() -> (Vec<u64>, Vec<u64>) {
    use mshv_ioctls::*;
    let vcpu = [
        MSHV_RUN_VP(),
        MSHV_GET_VP_STATE(),
        MSHV_SET_VP_STATE(),
        MSHV_GET_VP_REGISTERS(),
        MSHV_SET_VP_REGISTERS(),
        MSHV_VP_TRANSLATE_GVA(),
        MSHV_READ_GPA(),
        MSHV_WRITE_GPA(),
        MSHV_ROOT_HVCALL(),
        MSHV_SET_MSI_ROUTING(),
        // PCI: BAR moves move ioeventfds (config space writes on a vCPU).
        MSHV_IOEVENTFD(),
    ];
    let vm = [
        MSHV_CREATE_PARTITION(),
        MSHV_GET_HOST_PARTITION_PROPERTY(),
        MSHV_INITIALIZE_PARTITION(),
        MSHV_SET_PARTITION_PROPERTY(),
        MSHV_GET_PARTITION_PROPERTY(),
        MSHV_CREATE_VP(),
        MSHV_SET_GUEST_MEMORY(),
        MSHV_IRQFD(),
        MSHV_IOEVENTFD(),
        MSHV_SET_MSI_ROUTING(),
        MSHV_INSTALL_INTERCEPT(),
        MSHV_VP_REGISTER_INTERCEPT_RESULT(),
        MSHV_GET_VP_CPUID_VALUES(),
        MSHV_ROOT_HVCALL(),
    ];
    // `c_ulong` is `u64` on x86_64.
    (vm.to_vec(), vcpu.to_vec())
}

/// An mshv-ioctls error as a hypervisor-layer error.
pub(crate) fn mshv_err(op: &'static str, e: mshv_ioctls::MshvError) -> Error {
    Error::call(op, std::io::Error::from_raw_os_error(e.errno()))
}

/// Leaves whose ECX input selects a subleaf, and how many subleaves petrel asks for.
const SUBLEAVES: &[(u32, u32)] = &[
    (0x4, 8),
    (0x7, 4),
    (0xb, 4),
    (0xd, 64),
    (0xf, 4),
    (0x10, 4),
    (0x12, 4),
    (0x14, 2),
    (0x17, 4),
    (0x18, 8),
    (0x1d, 2),
    (0x1f, 6),
    (0x8000_001d, 8),
    (0x8000_0020, 4),
];

/// The leaf ranges to ask for: up to the maximum each range reports in EAX (capped).
fn cpuid_leaves(query: &mut dyn FnMut(u32, u32) -> Option<[u32; 4]>) -> Vec<CpuidEntry> {
    let mut out = Vec::new();
    for (first, cap) in [
        (0u32, 0x20u32),
        (0x4000_0000, 0x4000_000a),
        (0x8000_0000, 0x8000_0021),
    ] {
        let Some(top) = query(first, 0) else { continue };
        let last = top[0].clamp(first, cap);
        for function in first..=last {
            let sub = SUBLEAVES.iter().find(|s| s.0 == function).map(|s| s.1);
            for index in 0..sub.unwrap_or(1) {
                let Some([eax, ebx, ecx, edx]) = query(function, index) else {
                    continue;
                };
                if index > 0 && eax == 0 && ebx == 0 && ecx == 0 && edx == 0 {
                    continue;
                }
                out.push(CpuidEntry {
                    function,
                    index,
                    flags: if sub.is_some() {
                        CPUID_FLAG_SIGNIFICANT_INDEX
                    } else {
                        0
                    },
                    eax,
                    ebx,
                    ecx,
                    edx,
                });
            }
        }
    }
    out
}

impl Hypervisor for MshvHypervisor {
    fn kind(&self) -> Kind {
        Kind::Mshv
    }

    fn create_vm(&self) -> Result<Arc<dyn Vm>> {
        let fd = self.create_partition()?;
        Ok(Arc::new(MshvVm {
            shared: Arc::new(VmShared {
                fd,
                ram: RwLock::new(Vec::new()),
                ioapic: Mutex::new(Ioapic::default()),
                pio_events: RwLock::new(Vec::new()),
                pci_msis: Mutex::new(BTreeMap::new()),
            }),
        }))
    }

    /// What the hypervisor would answer for each leaf on a fresh partition's vCPU 0: asked
    /// on a scratch partition the first time, then remembered.
    fn supported_cpuid(&self) -> Result<Vec<CpuidEntry>> {
        if let Some(known) = self.supported_cpuid.get() {
            return Ok(known.clone());
        }
        let fd = self.create_partition()?;
        let vp = fd
            .create_vcpu(0)
            .map_err(|e| mshv_err("MSHV_CREATE_VP", e))?;
        let leaves = cpuid_leaves(&mut |eax, ecx| vp.get_cpuid_values(eax, ecx, 0, 0).ok());
        Ok(self.supported_cpuid.get_or_init(|| leaves).clone())
    }

    fn max_vcpus(&self) -> u32 {
        // mshv-ioctls 0.7 takes vCPU indexes as u8.
        256
    }

    fn pins_guest_memory(&self) -> bool {
        true
    }
}

/// One host mapping of guest RAM.
#[derive(Debug, Clone, Copy)]
struct RamRegion {
    gpa: u64,
    host: u64,
    size: u64,
}

/// An eventfd written instead of a port write reaching the VMM.
struct PioEvent {
    port: u64,
    datamatch: Datamatch,
    evt: EventFd,
}

/// The MSI routing table MSHV gets: the emulated IOAPIC's unmasked pins, then every PCI
/// MSI-X route (GSIs from [`crate::FIRST_MSI_GSI`], so the two never collide).
fn merged_routes(
    mut routes: Vec<ioapic::MsiRoute>,
    pci: &BTreeMap<u32, MsiMessage>,
) -> Vec<ioapic::MsiRoute> {
    routes.extend(pci.iter().map(|(&gsi, m)| ioapic::MsiRoute {
        gsi,
        address_lo: m.address as u32,
        address_hi: (m.address >> 32) as u32,
        data: m.data,
    }));
    routes
}

/// State shared by the VM and its vCPUs.
pub(crate) struct VmShared {
    fd: VmFd,
    ram: RwLock<Vec<RamRegion>>,
    ioapic: Mutex<Ioapic>,
    pio_events: RwLock<Vec<PioEvent>>,
    /// The MSI routes of PCI devices' MSI-X vectors (GSI → message), set next to the
    /// IOAPIC's in one table.
    pci_msis: Mutex<BTreeMap<u32, MsiMessage>>,
}

impl VmShared {
    fn host_range(&self, gpa: u64, len: usize) -> Option<*mut u8> {
        let ram = self.ram.read().ok()?;
        let end = gpa.checked_add(len as u64)?;
        let r = ram.iter().find(|r| gpa >= r.gpa && end <= r.gpa + r.size)?;
        Some((r.host + (gpa - r.gpa)) as *mut u8)
    }

    /// Programs the MSI routes from the IOAPIC's unmasked entries and the PCI devices' MSIs.
    fn update_routes(&self, ioapic: &Ioapic) {
        if let Err(e) = self.set_routes(ioapic) {
            log::error!("mshv: {e}");
        }
    }

    /// [`VmShared::update_routes`], with the failure returned.
    fn set_routes(&self, ioapic: &Ioapic) -> Result<()> {
        let routes = {
            let pci = self.pci_msis.lock().unwrap_or_else(|e| e.into_inner());
            merged_routes(ioapic.routes(), &pci)
        };
        let entry = std::mem::size_of::<mshv_user_irq_entry>();
        let header = std::mem::size_of::<mshv_user_irq_table>();
        // A zeroed buffer of whole headers large enough for the header and the entries.
        let len = 1 + (routes.len() * entry).div_ceil(header);
        let mut buf: Vec<mshv_user_irq_table> = (0..len).map(|_| Default::default()).collect();
        let Some(table) = buf.first_mut() else {
            return Ok(());
        };
        table.nr = routes.len() as u32;
        // SAFETY: `buf` holds `routes.len()` entries after the header (sized above).
        let entries = unsafe { table.entries.as_mut_slice(routes.len()) };
        for (e, r) in entries.iter_mut().zip(&routes) {
            *e = mshv_user_irq_entry {
                gsi: r.gsi,
                address_lo: r.address_lo,
                address_hi: r.address_hi,
                data: r.data,
            };
        }
        self.fd
            .set_msi_routing(table)
            .map_err(|e| mshv_err("MSHV_SET_MSI_ROUTING", e))
    }
}

impl GuestRam for VmShared {
    fn read(&self, gpa: u64, data: &mut [u8]) -> bool {
        match self.host_range(gpa, data.len()) {
            Some(p) => {
                // SAFETY: `map_memory`'s caller guarantees the mapping stays valid for the VM's
                // life, and the range was checked to lie inside it.
                unsafe { std::ptr::copy_nonoverlapping(p, data.as_mut_ptr(), data.len()) };
                true
            }
            None => false,
        }
    }

    fn write(&self, gpa: u64, data: &[u8]) -> bool {
        match self.host_range(gpa, data.len()) {
            Some(p) => {
                // SAFETY: as in `read`; the guest itself writes this memory concurrently too,
                // exactly as a device model would.
                unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), p, data.len()) };
                true
            }
            None => false,
        }
    }
}

/// The I/O path of a vCPU: the backend's IOAPIC and port ioeventfds, then the VMM.
pub(crate) struct Dispatch<'a> {
    pub(crate) vm: &'a VmShared,
    pub(crate) io: &'a dyn IoHandler,
}

impl IoHandler for Dispatch<'_> {
    fn pio_read(&self, port: u16, data: &mut [u8]) {
        self.io.pio_read(port, data)
    }

    fn pio_write(&self, port: u16, data: &[u8]) {
        if let Ok(events) = self.vm.pio_events.read() {
            let hit = events
                .iter()
                .find(|e| e.port == u64::from(port) && e.datamatch.matches(data));
            if let Some(e) = hit {
                if let Err(err) = e.evt.write(1) {
                    log::error!("mshv: port {port:#x} ioeventfd write failed: {err}");
                }
                return;
            }
        }
        self.io.pio_write(port, data)
    }

    fn mmio_read(&self, addr: u64, data: &mut [u8]) {
        if Ioapic::contains(addr) {
            if let Ok(io) = self.vm.ioapic.lock() {
                io.mmio_read(addr, data);
            }
            return;
        }
        self.io.mmio_read(addr, data)
    }

    fn mmio_write(&self, addr: u64, data: &[u8]) {
        if Ioapic::contains(addr) {
            if let Ok(mut io) = self.vm.ioapic.lock() {
                if io.mmio_write(addr, data) {
                    self.vm.update_routes(&io);
                }
            }
            return;
        }
        self.io.mmio_write(addr, data)
    }
}

/// An MSHV partition.
pub struct MshvVm {
    shared: Arc<VmShared>,
}

/// Snapshots need the partition's and the VPs' full state (XSAVE, the synthetic timers, the
/// userspace IOAPIC): not done for MSHV yet, so a snapshot fails with this error instead of
/// saving part of a VM.
pub(crate) fn unsupported(op: &'static str) -> Error {
    Error::Unsupported {
        op,
        backend: "mshv",
    }
}

impl MshvVm {
    fn mmio_ioevent(
        &self,
        evt: &EventFd,
        addr: u64,
        datamatch: Datamatch,
        register: bool,
    ) -> Result<()> {
        use mshv_ioctls::{IoEventAddress as M, NoDatamatch};
        // mshv-ioctls takes the match width from the value's type, as kvm-ioctls does.
        let fd = &self.shared.fd;
        let a = &M::Mmio(addr);
        let r = match (datamatch, register) {
            (Datamatch::Any, true) => fd.register_ioevent(evt, a, NoDatamatch),
            (Datamatch::U16(v), true) => fd.register_ioevent(evt, a, v),
            (Datamatch::U32(v), true) => fd.register_ioevent(evt, a, v),
            (Datamatch::U64(v), true) => fd.register_ioevent(evt, a, v),
            (Datamatch::Any, false) => fd.unregister_ioevent(evt, a, NoDatamatch),
            (Datamatch::U16(v), false) => fd.unregister_ioevent(evt, a, v),
            (Datamatch::U32(v), false) => fd.unregister_ioevent(evt, a, v),
            (Datamatch::U64(v), false) => fd.unregister_ioevent(evt, a, v),
        };
        let op = if register {
            "MSHV_IOEVENTFD"
        } else {
            "MSHV_IOEVENTFD (deassign)"
        };
        r.map_err(|e| mshv_err(op, e))
    }
}

impl Vm for MshvVm {
    unsafe fn map_memory(&self, _slot: u32, gpa: u64, host_addr: u64, size: u64) -> Result<()> {
        let region = mshv_user_mem_region {
            size,
            guest_pfn: gpa >> PAGE_SHIFT,
            userspace_addr: host_addr,
            flags: (1 << MSHV_SET_MEM_BIT_WRITABLE) | (1 << MSHV_SET_MEM_BIT_EXECUTABLE),
            rsvd: [0; 7],
        };
        self.shared
            .fd
            .map_user_memory(region)
            .map_err(|e| mshv_err("MSHV_SET_GUEST_MEMORY", e))?;
        if let Ok(mut ram) = self.shared.ram.write() {
            ram.push(RamRegion {
                gpa,
                host: host_addr,
                size,
            });
        }
        Ok(())
    }

    fn setup_irqchip(&self) -> Result<()> {
        // The LAPICs are in the hypervisor (the partition's LAPIC flag); the IOAPIC is ours.
        if let Ok(mut io) = self.shared.ioapic.lock() {
            *io = Ioapic::default();
            self.shared.update_routes(&io);
        }
        Ok(())
    }

    fn create_vcpu(&self, id: u32) -> Result<Box<dyn Vcpu>> {
        let index = u8::try_from(id)
            .map_err(|_| Error::Unavailable(format!("mshv: vCPU id {id} is above 255")))?;
        let fd = self
            .shared
            .fd
            .create_vcpu(index)
            .map_err(|e| mshv_err("MSHV_CREATE_VP", e))?;
        Ok(Box::new(MshvVcpu::new(
            fd,
            u32::from(index),
            self.shared.clone(),
        )))
    }

    fn register_irqfd(&self, evt: &EventFd, gsi: u32) -> Result<()> {
        self.shared
            .fd
            .register_irqfd(evt, gsi)
            .map_err(|e| mshv_err("MSHV_IRQFD", e))
    }

    fn unregister_irqfd(&self, evt: &EventFd, gsi: u32) -> Result<()> {
        self.shared
            .fd
            .unregister_irqfd(evt, gsi)
            .map_err(|e| mshv_err("MSHV_IRQFD (deassign)", e))
    }

    fn register_ioevent(
        &self,
        evt: &EventFd,
        addr: IoEventAddress,
        datamatch: Datamatch,
    ) -> Result<()> {
        match addr {
            IoEventAddress::Pio(port) => {
                let evt = evt
                    .try_clone()
                    .map_err(|e| Error::call("dup of an ioeventfd", e))?;
                if let Ok(mut events) = self.shared.pio_events.write() {
                    events.push(PioEvent {
                        port,
                        datamatch,
                        evt,
                    });
                }
                Ok(())
            }
            IoEventAddress::Mmio(a) => self.mmio_ioevent(evt, a, datamatch, true),
        }
    }

    fn unregister_ioevent(
        &self,
        evt: &EventFd,
        addr: IoEventAddress,
        datamatch: Datamatch,
    ) -> Result<()> {
        match addr {
            IoEventAddress::Pio(port) => {
                if let Ok(mut events) = self.shared.pio_events.write() {
                    events.retain(|e| !(e.port == port && e.datamatch == datamatch));
                }
                Ok(())
            }
            IoEventAddress::Mmio(a) => self.mmio_ioevent(evt, a, datamatch, false),
        }
    }

    fn set_msi_route(&self, gsi: u32, msg: Option<MsiMessage>) -> Result<()> {
        {
            let mut pci = self
                .shared
                .pci_msis
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            match msg {
                Some(m) => pci.insert(gsi, m),
                None => pci.remove(&gsi),
            };
        }
        let io = self.shared.ioapic.lock().unwrap_or_else(|e| e.into_inner());
        self.shared.set_routes(&io)
    }

    unsafe fn set_dirty_log(
        &self,
        _slot: u32,
        _gpa: u64,
        _host_addr: u64,
        _size: u64,
        _on: bool,
    ) -> Result<()> {
        Err(unsupported("dirty-page tracking"))
    }

    fn dirty_log(&self, _slot: u32, _size: u64) -> Result<Vec<u64>> {
        Err(unsupported("dirty-page tracking"))
    }

    fn save_platform(&self) -> Result<crate::PlatformState> {
        Err(unsupported("saving the interrupt controllers and clock"))
    }

    fn restore_platform(&self, _state: &crate::PlatformState) -> Result<()> {
        Err(unsupported("restoring the interrupt controllers and clock"))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn pci_msi_routes_follow_the_ioapic_routes_in_one_table() {
        let ioapic = vec![ioapic::MsiRoute {
            gsi: 4,
            address_lo: 0xfee0_0000,
            address_hi: 0,
            data: 0x30,
        }];
        let mut pci = BTreeMap::new();
        pci.insert(
            25,
            MsiMessage {
                address: 0x2_fee0_1000,
                data: 0x51,
            },
        );
        let all = merged_routes(ioapic, &pci);
        let got: Vec<(u32, u32, u32, u32)> = all
            .iter()
            .map(|r| (r.gsi, r.address_lo, r.address_hi, r.data))
            .collect();
        assert_eq!(got, [(4, 0xfee0_0000, 0, 0x30), (25, 0xfee0_1000, 2, 0x51)]);
    }

    #[test]
    fn snapshot_state_is_refused_with_a_clear_error() {
        let e = super::unsupported("saving a vCPU's state");
        assert_eq!(
            e.to_string(),
            "saving a vCPU's state is not supported by the mshv backend"
        );
    }

    use super::*;

    #[test]
    fn cpuid_leaves_follow_each_range_maximum_and_subleaves() {
        let mut asked = Vec::new();
        let entries = cpuid_leaves(&mut |eax, ecx| {
            asked.push((eax, ecx));
            match (eax, ecx) {
                (0, _) => Some([0xd, 1, 2, 3]),
                (0x4000_0000, _) => None,
                (0x8000_0000, _) => Some([0x8000_0001, 0, 0, 0]),
                (0xb, 0..=1) => Some([1, 2, 0x100 | ecx, 0]),
                (0xb, _) | (0xd, 2..) => Some([0; 4]),
                (f, i) => Some([f, i, 0, 0]),
            }
        });
        let leaves: Vec<(u32, u32)> = entries.iter().map(|e| (e.function, e.index)).collect();
        assert!(leaves.contains(&(0xd, 0)) && leaves.contains(&(0xd, 1)));
        assert!(!leaves.contains(&(0xd, 2)), "empty subleaves are dropped");
        assert!(!leaves.contains(&(0xe, 0)), "stops at the basic maximum");
        assert!(leaves.contains(&(0xb, 1)) && !leaves.contains(&(0xb, 2)));
        assert!(leaves.contains(&(0x8000_0001, 0)));
        assert!(!leaves
            .iter()
            .any(|l| l.0 >= 0x4000_0000 && l.0 < 0x8000_0000));
        let b = entries.iter().find(|e| e.function == 0xb).unwrap();
        assert_eq!(b.flags, CPUID_FLAG_SIGNIFICANT_INDEX);
        assert_eq!(entries[0].flags, 0);
        assert!(asked.len() < 200);
    }
}
