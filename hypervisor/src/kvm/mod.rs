//! The KVM backend.

mod convert;
mod routing;
mod state;
mod vcpu;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use kvm_bindings::{kvm_userspace_memory_region, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{Kvm, VmFd};
use vmm_sys_util::eventfd::EventFd;

use crate::{
    CpuidEntry, Datamatch, Error, Hypervisor, IoEventAddress, Kind, MsiMessage, Result, Vcpu, Vm,
};

pub use vcpu::KvmVcpu;

/// Where KVM puts the three-page TSS it needs on Intel hosts (just below the BIOS area at the
/// top of the 32-bit space, inside petrel's MMIO hole and clear of the APICs).
const TSS_ADDRESS: usize = 0xfffb_d000;

/// KVM through /dev/kvm.
pub struct KvmHypervisor {
    kvm: Kvm,
}

impl KvmHypervisor {
    /// Opens /dev/kvm.
    pub fn new() -> Result<Self> {
        let kvm = Kvm::new().map_err(|e| Error::Open {
            device: crate::select::KVM_DEVICE,
            source: e.into(),
        })?;
        Ok(KvmHypervisor { kvm })
    }
}

impl Hypervisor for KvmHypervisor {
    fn kind(&self) -> Kind {
        Kind::Kvm
    }

    fn create_vm(&self) -> Result<Arc<dyn Vm>> {
        let fd = self
            .kvm
            .create_vm()
            .map_err(|e| Error::call("KVM_CREATE_VM", e))?;
        fd.set_tss_address(TSS_ADDRESS)
            .map_err(|e| Error::call("KVM_SET_TSS_ADDR", e))?;
        let msrs = self
            .kvm
            .get_msr_index_list()
            .map_err(|e| Error::call("KVM_GET_MSR_INDEX_LIST", e))?;
        Ok(Arc::new(KvmVm {
            fd,
            msrs: Arc::new(msrs.as_slice().to_vec()),
            msi_routes: Mutex::new(BTreeMap::new()),
        }))
    }

    fn supported_cpuid(&self) -> Result<Vec<CpuidEntry>> {
        let cpuid = self
            .kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(|e| Error::call("KVM_GET_SUPPORTED_CPUID", e))?;
        Ok(cpuid
            .as_slice()
            .iter()
            .map(convert::cpuid_from_kvm)
            .collect())
    }

    fn max_vcpus(&self) -> u32 {
        self.kvm.get_max_vcpus() as u32
    }
}

/// A KVM VM.
pub struct KvmVm {
    fd: VmFd,
    /// The MSRs KVM saves and restores on this host (KVM_GET_MSR_INDEX_LIST).
    msrs: Arc<Vec<u32>>,
    /// The MSI routes set so far (GSI → message); the routing table is rebuilt from them.
    msi_routes: Mutex<BTreeMap<u32, MsiMessage>>,
}

impl KvmVm {
    fn ioevent(
        &self,
        evt: &EventFd,
        addr: IoEventAddress,
        datamatch: Datamatch,
        register: bool,
    ) -> Result<()> {
        use kvm_ioctls::{IoEventAddress as K, NoDatamatch};
        let addr = match addr {
            IoEventAddress::Pio(p) => K::Pio(p),
            IoEventAddress::Mmio(a) => K::Mmio(a),
        };
        // kvm-ioctls takes the match width from the value's type (`size_of::<T>()`).
        let fd = &self.fd;
        let r = match (datamatch, register) {
            (Datamatch::Any, true) => fd.register_ioevent(evt, &addr, NoDatamatch),
            (Datamatch::U16(v), true) => fd.register_ioevent(evt, &addr, v),
            (Datamatch::U32(v), true) => fd.register_ioevent(evt, &addr, v),
            (Datamatch::U64(v), true) => fd.register_ioevent(evt, &addr, v),
            (Datamatch::Any, false) => fd.unregister_ioevent(evt, &addr, NoDatamatch),
            (Datamatch::U16(v), false) => fd.unregister_ioevent(evt, &addr, v),
            (Datamatch::U32(v), false) => fd.unregister_ioevent(evt, &addr, v),
            (Datamatch::U64(v), false) => fd.unregister_ioevent(evt, &addr, v),
        };
        let op = if register {
            "KVM_IOEVENTFD"
        } else {
            "KVM_IOEVENTFD (deassign)"
        };
        r.map_err(|e| Error::call(op, e))
    }
}

impl Vm for KvmVm {
    unsafe fn map_memory(&self, slot: u32, gpa: u64, host_addr: u64, size: u64) -> Result<()> {
        let region = kvm_userspace_memory_region {
            slot,
            flags: 0,
            guest_phys_addr: gpa,
            memory_size: size,
            userspace_addr: host_addr,
        };
        // SAFETY: the caller guarantees the host range is a valid mapping that outlives the VM.
        unsafe { self.fd.set_user_memory_region(region) }
            .map_err(|e| Error::call("KVM_SET_USER_MEMORY_REGION", e))
    }

    fn setup_irqchip(&self) -> Result<()> {
        self.fd
            .create_irq_chip()
            .map_err(|e| Error::call("KVM_CREATE_IRQCHIP", e))
    }

    fn create_vcpu(&self, id: u32) -> Result<Box<dyn Vcpu>> {
        let fd = self
            .fd
            .create_vcpu(u64::from(id))
            .map_err(|e| Error::call("KVM_CREATE_VCPU", e))?;
        Ok(Box::new(KvmVcpu::new(fd, self.msrs.clone())))
    }

    fn register_irqfd(&self, evt: &EventFd, gsi: u32) -> Result<()> {
        self.fd
            .register_irqfd(evt, gsi)
            .map_err(|e| Error::call("KVM_IRQFD", e))
    }

    fn unregister_irqfd(&self, evt: &EventFd, gsi: u32) -> Result<()> {
        self.fd
            .unregister_irqfd(evt, gsi)
            .map_err(|e| Error::call("KVM_IRQFD (deassign)", e))
    }

    fn register_ioevent(
        &self,
        evt: &EventFd,
        addr: IoEventAddress,
        datamatch: Datamatch,
    ) -> Result<()> {
        self.ioevent(evt, addr, datamatch, true)
    }

    fn unregister_ioevent(
        &self,
        evt: &EventFd,
        addr: IoEventAddress,
        datamatch: Datamatch,
    ) -> Result<()> {
        self.ioevent(evt, addr, datamatch, false)
    }

    fn set_msi_route(&self, gsi: u32, msg: Option<MsiMessage>) -> Result<()> {
        let mut routes = self.msi_routes.lock().unwrap_or_else(|e| e.into_inner());
        match msg {
            Some(m) => routes.insert(gsi, m),
            None => routes.remove(&gsi),
        };
        let table = routing::table(&routes)?;
        self.fd
            .set_gsi_routing(&table)
            .map_err(|e| Error::call("KVM_SET_GSI_ROUTING", e))
    }

    unsafe fn set_dirty_log(
        &self,
        slot: u32,
        gpa: u64,
        host_addr: u64,
        size: u64,
        on: bool,
    ) -> Result<()> {
        let region = kvm_userspace_memory_region {
            slot,
            flags: if on {
                kvm_bindings::KVM_MEM_LOG_DIRTY_PAGES
            } else {
                0
            },
            guest_phys_addr: gpa,
            memory_size: size,
            userspace_addr: host_addr,
        };
        // SAFETY: the caller guarantees the host range is the slot's live mapping.
        unsafe { self.fd.set_user_memory_region(region) }
            .map_err(|e| Error::call("KVM_SET_USER_MEMORY_REGION (dirty log)", e))
    }

    fn dirty_log(&self, slot: u32, size: u64) -> Result<Vec<u64>> {
        let size = usize::try_from(size)
            .map_err(|_| Error::BadState(format!("slot {slot} of {size} bytes")))?;
        self.fd
            .get_dirty_log(slot, size)
            .map_err(|e| Error::call("KVM_GET_DIRTY_LOG", e))
    }

    fn save_platform(&self) -> Result<crate::PlatformState> {
        state::save_platform(&self.fd)
    }

    fn restore_platform(&self, s: &crate::PlatformState) -> Result<()> {
        state::restore_platform(&self.fd, s)
    }
}
