//! The VM's PCI segment (with `platform.transport = pci`): the host bridge, one virtio-pci
//! function per device with its BAR placed by the allocator and one MSI-X vector (GSI from
//! [`hypervisor::FIRST_MSI_GSI`], irqfd) per queue plus one, the ECAM window, the 0xCF8 ports
//! and the BAR windows on the buses, and [`VmWiring`], through which a device reaches the
//! hypervisor VM of the current boot (ioeventfds that follow BAR moves, MSI routes).

use std::sync::{Arc, Mutex, RwLock};

use arch::acpi::PciAcpi;
use arch::layout;
use devices::pci::{
    BarAllocator, ConfigPorts, Ecam, HostBridge, IoEventMatch, MmioWindow, MsiMessage, PciSegment,
    PciWiring, CONFIG_PORTS_LEN,
};
use devices::virtio::pci::{vectors_for, VirtioPciDevice, BAR_SIZE};
use devices::virtio::{GuestMemoryMmap, VirtioDevice};
use hypervisor::{Datamatch, IoEventAddress, Vm};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::legacy::Buses;
use crate::{Error, Result};

/// The hypervisor VM of the current boot, as PCI devices see it.
#[derive(Default)]
pub struct VmWiring {
    vm: RwLock<Option<Arc<dyn Vm>>>,
}

impl VmWiring {
    /// Devices reach `vm` from now on (`None`: no VM, changes are dropped).
    pub fn set_vm(&self, vm: Option<Arc<dyn Vm>>) {
        *self.vm.write().unwrap_or_else(|e| e.into_inner()) = vm;
    }

    fn with_vm(
        &self,
        f: impl FnOnce(&dyn Vm) -> hypervisor::Result<()>,
    ) -> std::result::Result<(), String> {
        match &*self.vm.read().unwrap_or_else(|e| e.into_inner()) {
            Some(vm) => f(vm.as_ref()).map_err(|e| crate::error_chain(&e)),
            None => Ok(()),
        }
    }
}

fn datamatch(m: IoEventMatch) -> Datamatch {
    match m {
        IoEventMatch::U16(v) => Datamatch::U16(v),
        IoEventMatch::U32(v) => Datamatch::U32(v),
    }
}

impl PciWiring for VmWiring {
    fn add_ioevent(
        &self,
        evt: &EventFd,
        addr: u64,
        m: IoEventMatch,
    ) -> std::result::Result<(), String> {
        self.with_vm(|vm| vm.register_ioevent(evt, IoEventAddress::Mmio(addr), datamatch(m)))
    }

    fn remove_ioevent(
        &self,
        evt: &EventFd,
        addr: u64,
        m: IoEventMatch,
    ) -> std::result::Result<(), String> {
        self.with_vm(|vm| vm.unregister_ioevent(evt, IoEventAddress::Mmio(addr), datamatch(m)))
    }

    fn set_msi_route(&self, gsi: u32, msg: MsiMessage) -> std::result::Result<(), String> {
        let msg = hypervisor::MsiMessage {
            address: msg.address,
            data: msg.data,
        };
        self.with_vm(|vm| vm.set_msi_route(gsi, Some(msg)))
    }
}

/// One virtio device on PCI.
pub struct PciFunction {
    /// Its name (`disk0`, `rng`).
    pub name: String,
    /// Its slot on bus 0.
    pub slot: usize,
    /// The device.
    pub device: Arc<Mutex<dyn VirtioDevice>>,
    /// The PCI function.
    pub function: Arc<Mutex<VirtioPciDevice>>,
    /// The MSI-X vectors' eventfds and GSIs (registered as irqfds at each boot).
    irqs: Vec<(EventFd, u32)>,
}

impl PciFunction {
    /// The device's counters, then `notify_slow_path`: queue notifications that reached the
    /// transport (a vCPU exit each) because no ioeventfd matched.
    pub fn counter_values(&self) -> Vec<(&'static str, u64)> {
        let mut values = self
            .device
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .counter_values();
        let function = self.function.lock().unwrap_or_else(|e| e.into_inner());
        values.push((
            "notify_slow_path",
            function.transport().slow_notifications(),
        ));
        values
    }
}

/// The segment and its devices.
pub struct PciDevices {
    segment: PciSegment,
    shared: Option<Arc<PciSegment>>,
    allocator: BarAllocator,
    wiring: Arc<VmWiring>,
    next_gsi: u32,
    /// The virtio functions.
    pub functions: Vec<PciFunction>,
    window64: (u64, u64),
}

impl PciDevices {
    /// A segment with the host bridge at 00:00.0; the 64-bit window starts after `ram_end`.
    pub fn new(ram_end: u64) -> Result<Self> {
        let window32 = (layout::PCI_MMIO32_START, layout::PCI_MMIO32_SIZE);
        let window64 = (layout::pci_mmio64_start(ram_end), layout::PCI_MMIO64_SIZE);
        let wiring = Arc::new(VmWiring::default());
        let mut segment = PciSegment::new([window32, window64], wiring.clone());
        segment.insert(0, Arc::new(Mutex::new(HostBridge::new())));
        let allocator = BarAllocator::new(window32, window64)
            .map_err(|e| Error::io("PCI windows", std::io::Error::other(e)))?;
        Ok(PciDevices {
            segment,
            shared: None,
            allocator,
            wiring,
            next_gsi: hypervisor::FIRST_MSI_GSI,
            functions: Vec::new(),
            window64,
        })
    }

    /// Puts `device` in the next free slot.
    pub fn add(
        &mut self,
        name: String,
        device: Arc<Mutex<dyn VirtioDevice>>,
        mem: &GuestMemoryMmap,
    ) -> Result<()> {
        let too_many = || Error::TooManyDevices {
            device: name.clone(),
            max: devices::pci::SLOTS as u32 - 1,
        };
        let slot = self.segment.free_slot().ok_or_else(too_many)?;
        let queues = device
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .queue_max_sizes()
            .len();
        let mut irqs = Vec::new();
        for _ in 0..vectors_for(queues) {
            let evt = EventFd::new(EFD_NONBLOCK)
                .map_err(|e| Error::io(format!("{name}: an MSI-X eventfd"), e))?;
            irqs.push((evt, self.next_gsi));
            self.next_gsi += 1;
        }
        let bar = self
            .allocator
            .allocate(BAR_SIZE, true)
            .map_err(|e| Error::io(format!("{name}: its BAR"), std::io::Error::other(e)))?;
        let clones = irqs
            .iter()
            .map(|(e, _)| crate::legacy::clone_eventfd(e, "MSI-X"))
            .collect::<Result<Vec<_>>>()?;
        let function = VirtioPciDevice::new(
            mem.clone(),
            device.clone(),
            bar,
            clones,
            irqs.iter().map(|&(_, g)| g).collect(),
            self.wiring.clone(),
        )
        .map_err(|e| Error::io(format!("{name}: virtio-pci"), std::io::Error::other(e)))?;
        let function = Arc::new(Mutex::new(function));
        self.segment.insert(slot, function.clone());
        log::info!("{name}: PCI 0000:00:{slot:02x}.0, BAR 0 at {bar:#x}");
        self.functions.push(PciFunction {
            name,
            slot,
            device,
            function,
            irqs,
        });
        Ok(())
    }

    /// Freezes the segment and puts ECAM, the 0xCF8 ports and the BAR windows on the buses.
    pub fn add_to_bus(&mut self, buses: &mut Buses) -> Result<()> {
        let segment = std::mem::replace(
            &mut self.segment,
            PciSegment::new([(0, 0); 2], self.wiring.clone()),
        );
        let segment = Arc::new(segment);
        self.shared = Some(segment.clone());
        buses.mmio.insert(
            Arc::new(Mutex::new(Ecam(segment.clone()))),
            layout::PCI_ECAM_START,
            layout::PCI_ECAM_SIZE,
        )?;
        buses.pio.insert(
            Arc::new(Mutex::new(ConfigPorts::new(segment.clone()))),
            u64::from(layout::PCI_CONFIG_PORT),
            CONFIG_PORTS_LEN,
        )?;
        for (base, size) in [
            (layout::PCI_MMIO32_START, layout::PCI_MMIO32_SIZE),
            self.window64,
        ] {
            buses.mmio.insert(
                Arc::new(Mutex::new(MmioWindow::new(segment.clone(), base))),
                base,
                size,
            )?;
        }
        Ok(())
    }

    /// Wires the segment to a new hypervisor VM: every MSI-X vector's irqfd; BAR moves and
    /// MSI-X routes reach `vm` from now on.
    pub fn wire(&self, vm: &Arc<dyn Vm>) -> Result<()> {
        for f in &self.functions {
            for (evt, gsi) in &f.irqs {
                vm.register_irqfd(evt, *gsi)?;
            }
        }
        self.wiring.set_vm(Some(vm.clone()));
        Ok(())
    }

    /// Detaches the irqfds before `vm` is closed and forgets it.
    pub fn unwire(&self, vm: &dyn Vm) {
        self.wiring.set_vm(None);
        if let Some(s) = &self.shared {
            s.forget_wiring();
        }
        for f in &self.functions {
            for (evt, gsi) in &f.irqs {
                if let Err(e) = vm.unregister_irqfd(evt, *gsi) {
                    log::warn!("{}: detaching MSI-X GSI {gsi}: {e}", f.name);
                }
            }
        }
    }

    /// Resets every function (guest reboot).
    pub fn reset_all(&self) {
        if let Some(s) = &self.shared {
            s.reset();
        }
    }

    /// The segment as ACPI describes it.
    pub fn acpi(&self) -> PciAcpi {
        PciAcpi {
            ecam_base: layout::PCI_ECAM_START,
            last_bus: 0,
            mmio32: (layout::PCI_MMIO32_START, layout::PCI_MMIO32_SIZE),
            mmio64: self.window64,
        }
    }
}
