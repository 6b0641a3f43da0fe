//! Building a running VM from its configuration: guest memory, the kernel and boot structures,
//! the ACPI tables, interrupt wiring, and the vCPU threads.

use std::sync::Arc;

use api::VmConfig;
use arch::acpi::{create_acpi_tables, AcpiConfig};
use arch::loader::{load_initramfs, low_ram_end, BootProtocol};
use arch::GuestMemoryMmap;
use hypervisor::{Hypervisor, IoHandler, Vm};
use vm_memory::{Address, GuestMemoryBackend, GuestMemoryRegion};

use crate::device_manager::VirtioDevices;
use crate::legacy::{LegacyDevices, LifecycleEvents};
use crate::vcpu::{run_vcpu, VcpuShared, VcpuThread};
use crate::{Error, Result};

/// A VM whose vCPUs are running. vCPU threads must be stopped (`vcpu::stop_all`) before the
/// hypervisor VM is dropped; guest memory belongs to the caller and outlives both.
pub struct RunningVm {
    /// vCPU threads.
    pub threads: Vec<VcpuThread>,
    /// The hypervisor VM.
    pub vm: Arc<dyn Vm>,
}

/// Maps every region of `memory` into `vm`.
fn map_memory(vm: &dyn Vm, memory: &GuestMemoryMmap) -> Result<()> {
    for (slot, region) in memory.iter().enumerate() {
        let host = region.as_ptr() as u64;
        // SAFETY: the region is a live anonymous mapping owned by `memory`, which the caller
        // keeps for the whole process, longer than any VM.
        unsafe {
            vm.map_memory(
                slot as u32,
                region.start_addr().raw_value(),
                host,
                region.len(),
            )?
        };
    }
    Ok(())
}

/// Loads the payload and writes every boot structure. Returns the boot vCPU's registers.
fn load_payload(
    cfg: &VmConfig,
    machine: &Machine,
) -> Result<(hypervisor::Regs, hypervisor::SpecialRegs)> {
    let memory = &machine.memory;
    let kernel_path = cfg.payload.kernel.to_string_lossy();
    let kernel = arch::load_kernel(memory, &kernel_path)?;
    let initramfs = match &cfg.payload.initramfs {
        Some(path) => {
            let mut limit = low_ram_end(memory);
            if let BootProtocol::BzImage { header, .. } = kernel.protocol {
                if header.initrd_addr_max != 0 {
                    limit = limit.min(u64::from(header.initrd_addr_max) + 1);
                }
            }
            Some(load_initramfs(
                memory,
                &path.to_string_lossy(),
                kernel.kernel_end,
                limit,
            )?)
        }
        None => None,
    };
    let mut cmdline = cfg.cmdline().to_string();
    if cfg.platform.virtio_mmio_cmdline {
        cmdline.push_str(&machine.virtio.cmdline_tokens());
    }
    let rsdp = create_acpi_tables(
        memory,
        &AcpiConfig {
            cpus: cfg.cpus.boot_vcpus,
            virtio_mmio: &machine.virtio.acpi_entries(),
            pci: machine.virtio.pci_acpi(),
        },
    )
    .map_err(arch::Error::Acpi)?;
    arch::write_boot_info(
        memory,
        &arch::bootinfo::BootInfo {
            kernel: &kernel,
            cmdline: &cmdline,
            initramfs,
            rsdp: rsdp.raw_value(),
            mem_size: cfg.memory.size,
        },
    )?;
    log::info!(
        "kernel {} loaded: {} entry {:#x}",
        kernel_path,
        match kernel.protocol {
            BootProtocol::Pvh { .. } => "PVH",
            BootProtocol::BzImage { .. } => "bzImage",
        },
        kernel.entry()
    );
    Ok(arch::regs::boot_state(memory, &kernel)?)
}

/// What outlives a guest reboot: RAM, devices, and the buses the vCPUs dispatch to.
pub struct Machine {
    /// Guest RAM.
    pub memory: GuestMemoryMmap,
    /// Legacy devices.
    pub legacy: LegacyDevices,
    /// Virtio devices.
    pub virtio: VirtioDevices,
    /// Port I/O and MMIO buses with every device on them.
    pub io: Arc<dyn IoHandler + Send + Sync>,
}

impl Machine {
    /// Allocates RAM and creates every device the config asks for.
    pub fn new(
        cfg: &VmConfig,
        start: std::time::Instant,
        events: &LifecycleEvents,
    ) -> Result<Self> {
        let memory = crate::memory::create_memory(&cfg.memory)?;
        Self::with_memory(cfg, memory, start, events)
    }

    /// Creates every device the config asks for around existing guest RAM (a snapshot's).
    pub fn with_memory(
        cfg: &VmConfig,
        memory: GuestMemoryMmap,
        start: std::time::Instant,
        events: &LifecycleEvents,
    ) -> Result<Self> {
        let legacy = LegacyDevices::new(&cfg.serial, start, events)?;
        let mut virtio = VirtioDevices::new(cfg, &memory)?;
        let mut buses = legacy.buses()?;
        virtio.add_to_buses(&mut buses)?;
        Ok(Machine {
            memory,
            legacy,
            virtio,
            io: Arc::new(buses),
        })
    }
}

impl Machine {
    /// Detaches every interrupt eventfd [`boot`] attached to `vm`, so that the next VM of this
    /// machine can attach them at once (see [`hypervisor::Vm::unregister_irqfd`]).
    pub fn unwire(&self, vm: &dyn Vm) {
        for irq in &self.legacy.irqs {
            if let Err(e) = vm.unregister_irqfd(&irq.evt, irq.gsi) {
                log::warn!("detaching GSI {}: {e}", irq.gsi);
            }
        }
        self.virtio.unwire(vm);
    }
}

/// Creates the VM, loads the guest and starts its vCPUs.
pub fn boot(
    cfg: &VmConfig,
    hv: &dyn Hypervisor,
    machine: &Machine,
    shared: Arc<VcpuShared>,
) -> Result<RunningVm> {
    let vm = hv.create_vm()?;
    map_memory(vm.as_ref(), &machine.memory)?;
    vm.setup_irqchip()?;
    let (regs, sregs) = load_payload(cfg, machine)?;
    for irq in &machine.legacy.irqs {
        vm.register_irqfd(&irq.evt, irq.gsi)?;
    }
    machine.virtio.wire(vm.as_ref())?;
    machine.virtio.wire_pci(&vm)?;
    let supported = hv.supported_cpuid()?;
    let cpus = cfg.cpus.boot_vcpus;
    let mut vcpus = Vec::with_capacity(cpus as usize);
    for id in 0..cpus {
        let vcpu = vm.create_vcpu(id)?;
        let err = |source| arch::Error::Vcpu { id, source };
        let mut cpuid = arch::cpuid::filter(&supported, id, cpus);
        if !cfg.cpus.nested {
            arch::cpuid::hide_virtualization(&mut cpuid);
        }
        crate::cpu_template::apply_cpuid(&mut cpuid, &cfg.cpus.template)?;
        vcpu.set_cpuid(&cpuid).map_err(err)?;
        arch::regs::setup_common(vcpu.as_ref(), id)?;
        crate::cpu_template::apply_msrs(vcpu.as_ref(), &cfg.cpus.template)?;
        if id == 0 {
            arch::regs::setup_boot_vcpu(vcpu.as_ref(), &regs, &sregs)?;
        }
        vcpus.push(vcpu);
    }
    start_vcpus(vm, vcpus, machine, shared)
}

/// Starts one thread per vCPU.
fn start_vcpus(
    vm: Arc<dyn Vm>,
    vcpus: Vec<Box<dyn hypervisor::Vcpu>>,
    machine: &Machine,
    shared: Arc<VcpuShared>,
) -> Result<RunningVm> {
    let io = machine.io.clone();
    let mut threads = Vec::with_capacity(vcpus.len());
    for (id, vcpu) in (0u32..).zip(vcpus) {
        let io = io.clone();
        let sh = shared.clone();
        let handle = std::thread::Builder::new()
            .name(format!("vcpu{id}"))
            .spawn(move || run_vcpu(id, vcpu, io, sh))
            .map_err(|e| Error::io(format!("spawning the vCPU {id} thread"), e))?;
        threads.push(VcpuThread { id, handle });
    }
    if !crate::vcpu::wait_started(&threads, &shared) {
        log::warn!("a vCPU thread did not start within 5 s; boot goes on");
    }
    Ok(RunningVm { threads, vm })
}

/// Recreates a saved VM: a hypervisor VM over the (snapshot's) memory, its interrupt
/// controllers and clock, its vCPUs in their saved states, and their threads. The threads
/// park before entering the guest if `shared` says the VM starts paused.
pub fn restore(
    hv: &dyn Hypervisor,
    machine: &Machine,
    shared: Arc<VcpuShared>,
    vcpu_states: &[hypervisor::VcpuState],
    platform: &hypervisor::PlatformState,
) -> Result<RunningVm> {
    let vm = hv.create_vm()?;
    map_memory(vm.as_ref(), &machine.memory)?;
    vm.setup_irqchip()?;
    vm.restore_platform(platform)?;
    for irq in &machine.legacy.irqs {
        vm.register_irqfd(&irq.evt, irq.gsi)?;
    }
    machine.virtio.wire(vm.as_ref())?;
    machine.virtio.wire_pci(&vm)?;
    let mut vcpus = Vec::with_capacity(vcpu_states.len());
    for (id, state) in (0u32..).zip(vcpu_states) {
        let vcpu = vm.create_vcpu(id)?;
        vcpu.restore_state(state)?;
        vcpus.push(vcpu);
    }
    start_vcpus(vm, vcpus, machine, shared)
}
