//! The VM's virtio devices on the virtio-mmio transport: which device sits in which 4 KiB
//! window with which GSI, how each is wired to the hypervisor (irqfd, one ioeventfd per
//! queue), and how each is served on the event loop.

use std::sync::{Arc, Mutex};

use api::VmConfig;
use arch::acpi::VirtioMmioAcpi;
use arch::layout::{VIRTIO_MMIO_FIRST_GSI, VIRTIO_MMIO_LAST_GSI, VIRTIO_MMIO_START};
use devices::virtio::balloon::{Balloon, BalloonConfig, BalloonError};
use devices::virtio::block::{Block, BlockConfig, BlockError};
use devices::virtio::mmio::{self, MmioTransport, MMIO_WINDOW, NOTIFY_REG_OFFSET};
use devices::virtio::net::{format_mac, Net, NetConfig as NetDeviceConfig, NetError, TapSource};
use devices::virtio::rng::Rng;
use devices::virtio::vsock::{Vsock, VsockConfig as VsockDeviceConfig, VsockError};
use devices::virtio::{GuestMemoryMmap, VirtioDevice};
use devices::BusDevice;

/// The virtio-mmio Status register.
const STATUS_REG_OFFSET: u64 = 0x70;
use event_manager::{EventOps, Events, MutEventSubscriber};
use hypervisor::{Datamatch, IoEventAddress, Vm};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::event_loop::Subscriber;
use crate::{Error, Result};

/// Why a virtio device could not be created or placed.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// The block device refused its config or image.
    #[error(transparent)]
    Block(#[from] BlockError),
    /// The net device refused its config or tap.
    #[error(transparent)]
    Net(#[from] NetError),
    /// Neither a tap name nor exactly one tap fd.
    #[error("a tap name or exactly one fd is required")]
    NetBackend,
    /// A MAC address that does not parse.
    #[error("mac: {0}")]
    Mac(String),
    /// The vsock device refused its config.
    #[error(transparent)]
    Vsock(#[from] VsockError),
    /// The balloon refused its config.
    #[error(transparent)]
    Balloon(#[from] BalloonError),
    /// The entropy device could not be created.
    #[error("opening the entropy source")]
    Rng(#[source] std::io::Error),
    /// The virtio-mmio transport refused the device.
    #[error(transparent)]
    Transport(#[from] mmio::Error),
    /// Its MMIO window overlaps another device.
    #[error(transparent)]
    Bus(#[from] devices::bus::Error),
}

fn device_error(device: impl Into<String>) -> impl FnOnce(DeviceError) -> Error {
    let device = device.into();
    move |source| Error::Device { device, source }
}

/// One virtio-mmio device.
pub struct VirtioSlot {
    /// What it is, for logs (`disk0`, `rng`).
    pub name: String,
    /// Start of its MMIO window.
    pub base: u64,
    /// Its interrupt.
    pub gsi: u32,
    /// The device.
    pub device: Arc<Mutex<dyn VirtioDevice>>,
    pub(crate) transport: Arc<Mutex<MmioTransport>>,
    irq: EventFd,
}

impl VirtioSlot {
    /// The device's counters, then the transport's `notify_slow_path`: queue notifications
    /// that cost a vCPU exit because the ioeventfd did not match (0 while the fast path works).
    pub fn counter_values(&self) -> Vec<(&'static str, u64)> {
        let mut values = self
            .device
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .counter_values();
        let transport = self.transport.lock().unwrap_or_else(|e| e.into_inner());
        values.push(("notify_slow_path", transport.slow_notifications()));
        values
    }
}

/// Serves a shared device on the event loop.
struct DeviceSubscriber(Arc<Mutex<dyn VirtioDevice>>);

impl MutEventSubscriber for DeviceSubscriber {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .process(events, ops)
    }

    fn init(&mut self, ops: &mut EventOps) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).init(ops)
    }
}

/// The VM's virtio devices.
#[derive(Default)]
pub struct VirtioDevices {
    slots: Vec<VirtioSlot>,
    /// The balloon, for runtime target changes.
    pub balloon: Option<Arc<Mutex<Balloon>>>,
    /// The disks by name (their id), for backing-file changes while the VM runs.
    pub disks: Vec<(String, Arc<Mutex<Block>>)>,
    /// The PCI segment, when the devices use virtio-pci (`platform.transport = pci`).
    pub pci: Option<crate::pci::PciDevices>,
    /// The net devices by name (their id), for rate-limiter changes and local responders.
    pub nets: Vec<(String, Arc<Mutex<Net>>)>,
}

impl VirtioDevices {
    /// Creates the devices the config asks for: disks in order, then the rng.
    pub fn new(cfg: &VmConfig, mem: &GuestMemoryMmap) -> Result<Self> {
        let mut list = VirtioDevices::default();
        if cfg.platform.transport == api::Transport::Pci {
            use vm_memory::{Address, GuestMemoryBackend};
            let ram_end = mem.last_addr().raw_value() + 1;
            list.pci = Some(crate::pci::PciDevices::new(ram_end)?);
        }
        for (i, disk) in cfg.disks.iter().flatten().enumerate() {
            let block = Block::new(BlockConfig {
                path: disk.path.clone(),
                format: image_format(disk.image_type),
                backing_files: disk.backing_files,
                readonly: disk.readonly,
                direct: disk.direct,
                id: disk.guest_id().to_string(),
                rate_limiter: disk
                    .rate_limiter_config
                    .map(crate::device_manager::rate_limiter),
            })
            .map_err(|e| device_error(format!("disks[{i}] ({})", disk.path.display()))(e.into()))?;
            let name = disk.id.clone().unwrap_or_else(|| format!("disk{i}"));
            let block = Arc::new(Mutex::new(block));
            list.disks.push((name.clone(), block.clone()));
            list.add(name, block, mem)?;
        }
        for (i, n) in cfg.net.iter().flatten().enumerate() {
            let id = n.id.clone().unwrap_or_else(|| format!("net{i}"));
            let tap = match (&n.tap, n.fds.as_deref()) {
                (Some(name), _) => TapSource::Name(name.clone()),
                (None, Some([fd])) => TapSource::Fd(*fd),
                _ => return Err(device_error(format!("net[{i}]"))(DeviceError::NetBackend)),
            };
            let mac = n
                .mac
                .as_deref()
                .map(api::parse_mac)
                .transpose()
                .map_err(|e| device_error(format!("net[{i}]"))(DeviceError::Mac(e)))?;
            let limiter = n.rate_limiter_config.map(rate_limiter);
            let rx_limiter = match n.rx_rate_limiter_config {
                Some(rx) => Some(rate_limiter(rx)),
                None => limiter,
            };
            let net = Net::new(NetDeviceConfig {
                tap,
                mac,
                id: id.clone(),
                rate_limiter_rx: rx_limiter,
                rate_limiter_tx: limiter,
            })
            .map_err(|e| device_error(format!("net[{i}]"))(e.into()))?;
            log::info!(
                "{id}: tap {} mac {}",
                net.tap().name(),
                format_mac(&net.mac())
            );
            let net = Arc::new(Mutex::new(net));
            list.nets.push((id.clone(), net.clone()));
            list.add(id, net, mem)?;
        }
        if let Some(b) = &cfg.balloon {
            let balloon = Balloon::new(
                BalloonConfig {
                    amount_mib: b.size >> 20,
                    deflate_on_oom: b.deflate_on_oom,
                    stats_polling_interval_s: b.statistics_polling_interval_s,
                    id: "balloon".into(),
                },
                cfg.memory.size,
            )
            .map_err(|e| device_error("balloon")(e.into()))?;
            let balloon = Arc::new(Mutex::new(balloon));
            list.balloon = Some(balloon.clone());
            list.add("balloon".into(), balloon, mem)?;
        }
        if let Some(v) = &cfg.vsock {
            let vsock = Vsock::new(VsockDeviceConfig {
                guest_cid: v.cid,
                uds_path: v.socket.clone(),
                id: v.id.clone().unwrap_or_else(|| "vsock".into()),
            })
            .map_err(|e| device_error("vsock")(e.into()))?;
            list.add("vsock".into(), Arc::new(Mutex::new(vsock)), mem)?;
        }
        if cfg.rng.is_some() {
            let rng = Rng::new().map_err(|e| device_error("rng")(DeviceError::Rng(e)))?;
            list.add("rng".into(), Arc::new(Mutex::new(rng)), mem)?;
        }
        Ok(list)
    }

    fn add(
        &mut self,
        name: String,
        device: Arc<Mutex<dyn VirtioDevice>>,
        mem: &GuestMemoryMmap,
    ) -> Result<()> {
        if let Some(pci) = &mut self.pci {
            return pci.add(name, device, mem);
        }
        let index = self.slots.len() as u32;
        let gsi = VIRTIO_MMIO_FIRST_GSI + index;
        if gsi > VIRTIO_MMIO_LAST_GSI {
            return Err(Error::TooManyDevices {
                device: name,
                max: VIRTIO_MMIO_LAST_GSI - VIRTIO_MMIO_FIRST_GSI + 1,
            });
        }
        let irq = EventFd::new(EFD_NONBLOCK)
            .map_err(|e| Error::io(format!("{name}: creating its interrupt eventfd"), e))?;
        let transport_irq = crate::legacy::clone_eventfd(&irq, "virtio interrupt")?;
        let transport = MmioTransport::new(mem.clone(), device.clone(), transport_irq)
            .map_err(|e| device_error(name.clone())(e.into()))?;
        self.slots.push(VirtioSlot {
            name,
            base: VIRTIO_MMIO_START + u64::from(index) * MMIO_WINDOW,
            gsi,
            device,
            transport: Arc::new(Mutex::new(transport)),
            irq,
        });
        Ok(())
    }

    /// The devices.
    pub fn slots(&self) -> &[VirtioSlot] {
        &self.slots
    }

    /// Puts every transport on the buses (virtio-mmio windows; or the PCI segment's ECAM,
    /// configuration ports and BAR windows).
    pub fn add_to_buses(&mut self, buses: &mut crate::legacy::Buses) -> Result<()> {
        for s in &self.slots {
            buses
                .mmio
                .insert(s.transport.clone(), s.base, MMIO_WINDOW)
                .map_err(|e| device_error(s.name.clone())(e.into()))?;
        }
        if let Some(pci) = &mut self.pci {
            pci.add_to_bus(buses)?;
        }
        Ok(())
    }

    /// Every device's counters by name, each followed by its transport's
    /// `notify_slow_path`.
    pub fn counters(&self) -> Vec<(String, Vec<(&'static str, u64)>)> {
        let pci = self.pci.iter().flat_map(|p| p.functions.iter());
        self.slots
            .iter()
            .map(|slot| (slot.name.clone(), slot.counter_values()))
            .chain(pci.map(|f| (f.name.clone(), f.counter_values())))
            .collect()
    }

    /// Whether the devices are on PCI.
    pub fn is_pci(&self) -> bool {
        self.pci.is_some()
    }

    /// The PCI segment as ACPI describes it, if there is one.
    pub fn pci_acpi(&self) -> Option<arch::acpi::PciAcpi> {
        self.pci.as_ref().map(|p| p.acpi())
    }

    /// Wires the PCI segment to `vm` (MSI-X irqfds; BAR moves and MSI routes from now on).
    pub fn wire_pci(&self, vm: &Arc<dyn Vm>) -> Result<()> {
        match &self.pci {
            Some(pci) => pci.wire(vm),
            None => Ok(()),
        }
    }

    /// Wires every device to a new hypervisor VM: its interrupt as an irqfd, and each
    /// queue's eventfd as an ioeventfd on the notify register (datamatch = queue index), so
    /// neither a kick nor an interrupt costs a vCPU exit.
    pub fn wire(&self, vm: &dyn Vm) -> Result<()> {
        for s in &self.slots {
            vm.register_irqfd(&s.irq, s.gsi)?;
            let device = s.device.lock().unwrap_or_else(|e| e.into_inner());
            for (queue, evt) in (0u32..).zip(device.queue_events()) {
                // QueueNotify is a 4-byte register: an 8-byte datamatch would never match
                // and every kick would take the slow path through the transport.
                vm.register_ioevent(
                    evt,
                    IoEventAddress::Mmio(s.base + NOTIFY_REG_OFFSET),
                    Datamatch::U32(queue),
                )?;
            }
        }
        Ok(())
    }

    /// Detaches the interrupts [`VirtioDevices::wire`] attached, before `vm` is closed.
    pub fn unwire(&self, vm: &dyn Vm) {
        if let Some(pci) = &self.pci {
            pci.unwire(vm);
        }
        for s in &self.slots {
            if let Err(e) = vm.unregister_irqfd(&s.irq, s.gsi) {
                log::warn!("{}: detaching its interrupt: {e}", s.name);
            }
        }
    }

    /// Resets every device (before a guest reboot: the new kernel starts from scratch).
    pub fn reset_all(&self) {
        if let Some(pci) = &self.pci {
            pci.reset_all();
        }
        for s in &self.slots {
            // What a driver does to reset it: write 0 to the Status register.
            s.transport
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .write(STATUS_REG_OFFSET, &0u32.to_le_bytes());
        }
    }

    /// The event-loop subscribers serving the devices.
    pub fn subscribers(&self) -> Vec<Subscriber> {
        let pci = self.pci.iter().flat_map(|p| p.functions.iter());
        self.slots
            .iter()
            .map(|s| s.device.clone())
            .chain(pci.map(|f| f.device.clone()))
            .map(|d| Arc::new(Mutex::new(DeviceSubscriber(d))) as Subscriber)
            .collect()
    }

    /// The devices as the ACPI DSDT describes them.
    pub fn acpi_entries(&self) -> Vec<VirtioMmioAcpi> {
        self.slots
            .iter()
            .map(|s| VirtioMmioAcpi {
                base: s.base,
                size: MMIO_WINDOW,
                gsi: s.gsi,
            })
            .collect()
    }

    /// `virtio_mmio.device=4K@ADDR:GSI` tokens for the kernel command line.
    pub fn cmdline_tokens(&self) -> String {
        self.slots
            .iter()
            .map(|s| format!(" virtio_mmio.device=4K@{:#x}:{}", s.base, s.gsi))
            .collect()
    }
}

/// Maps the API's rate-limiter config to the device's.
fn rate_limiter(cfg: api::RateLimiterConfig) -> devices::rate_limiter::RateLimiterConfig {
    let bucket = |b: api::TokenBucketConfig| devices::rate_limiter::TokenBucketConfig {
        size: b.size,
        one_time_burst: b.one_time_burst,
        refill_time_ms: b.refill_time,
    };
    devices::rate_limiter::RateLimiterConfig {
        bandwidth: cfg.bandwidth.map(bucket),
        ops: cfg.ops.map(bucket),
    }
}

/// The device's image format for the config's `image_type` (FixedVhd and Vhdx were refused by
/// validation; here they fall back to detection, which refuses them again by their header).
fn image_format(t: Option<api::ImageType>) -> devices::virtio::block::ImageFormat {
    use devices::virtio::block::ImageFormat;
    match t {
        Some(api::ImageType::Raw) => ImageFormat::Raw,
        Some(api::ImageType::Qcow2) => ImageFormat::Qcow2,
        _ => ImageFormat::Detect,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn memory() -> GuestMemoryMmap {
        crate::memory::create_memory(&api::MemoryConfig {
            size: 16 << 20,
            ..api::MemoryConfig::default()
        })
        .unwrap()
    }

    #[test]
    fn device_errors_name_the_device_and_the_cause() {
        let mut cfg = VmConfig::new("/k".into());
        cfg.net = Some(vec![api::NetConfig {
            tap: None,
            fds: None,
            mac: None,
            id: None,
            rate_limiter_config: None,
            rx_rate_limiter_config: None,
        }]);
        let Err(e) = VirtioDevices::new(&cfg, &memory()) else {
            panic!("a net device without a tap must be refused");
        };
        assert!(matches!(
            e,
            Error::Device {
                source: DeviceError::NetBackend,
                ..
            }
        ));
        assert_eq!(
            crate::error_chain(&e),
            "net[0]: a tap name or exactly one fd is required"
        );

        let mut cfg = VmConfig::new("/k".into());
        cfg.disks = Some(vec![
            api::DiskConfig::parse("path=/nonexistent/petrel.img").unwrap()
        ]);
        let Err(e) = VirtioDevices::new(&cfg, &memory()) else {
            panic!("a missing disk image must be refused");
        };
        assert!(matches!(
            e,
            Error::Device {
                source: DeviceError::Block(_),
                ..
            }
        ));
        let text = crate::error_chain(&e);
        assert!(
            text.starts_with("disks[0] (/nonexistent/petrel.img): "),
            "{text}"
        );
    }

    #[test]
    fn more_devices_than_gsis_is_its_own_error() {
        let mut devices = VirtioDevices::default();
        let mem = memory();
        let max = VIRTIO_MMIO_LAST_GSI - VIRTIO_MMIO_FIRST_GSI + 1;
        for i in 0..max {
            let rng = Rng::new().unwrap();
            devices
                .add(format!("rng{i}"), Arc::new(Mutex::new(rng)), &mem)
                .unwrap();
        }
        let e = devices
            .add(
                "one-more".into(),
                Arc::new(Mutex::new(Rng::new().unwrap())),
                &mem,
            )
            .unwrap_err();
        assert!(
            matches!(&e, Error::TooManyDevices { device, max: m } if device == "one-more" && *m == max),
            "{e:?}"
        );
    }
}
