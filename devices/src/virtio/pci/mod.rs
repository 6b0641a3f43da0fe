//! The virtio-pci transport, modern only (virtio 1.x spec 4.1): a PCI function whose BAR 0
//! holds the common configuration, the ISR status, the device configuration, the queue
//! notification addresses and the MSI-X table and pending bits, each named by a vendor
//! capability in configuration space.
//!
//! Devices do not change: the same [`VirtioDevice`] runs on either transport. The register
//! state machine (features, status, queues, activation) is virtio-mmio's, driven through the
//! common configuration (`common`); interrupts go through MSI-X (`interrupt`).
//!
//! Queue `i` is notified by a 2-byte write of `i` at `notify + i * NOTIFY_MULTIPLIER`: the VMM
//! registers the queue's eventfd there with a 2-byte datamatch (a 4-byte one would never match
//! Linux's `iowrite16`, and every kick would take a vCPU exit), and moves it when the guest
//! moves the BAR. A notification that reaches the transport still works and is counted.

mod common;
mod interrupt;
#[cfg(test)]
mod tests;

use std::sync::{Arc, Mutex};

use vmm_sys_util::eventfd::EventFd;

use crate::bus::BusDevice;
use crate::pci::config_space::{BarKind, ConfigSpace, Identity, CONFIG_SPACE_SIZE};
use crate::pci::msix::Msix;
use crate::pci::{BarIoEvent, IoEventMatch, PciDevice, PciWiring};
use crate::virtio::mmio::{self, MmioInterrupt, MmioTransport};
use crate::virtio::{device_type, GuestMemoryMmap, VirtioDevice};

pub use common::NO_VECTOR;
use common::{CommonConfig, Vectors, COMMON_CFG_LEN};
pub use interrupt::PciInterrupt;

/// PCI vendor ID of virtio devices.
pub const VIRTIO_VENDOR: u16 = 0x1af4;
/// Modern device IDs are this plus the virtio device type.
pub const MODERN_DEVICE_BASE: u16 = 0x1040;
/// Size of BAR 0.
pub const BAR_SIZE: u64 = 0x8000;
/// Where each structure lies in BAR 0.
pub const COMMON_OFFSET: u64 = 0x0000;
/// ISR status (1 byte; a read clears it).
pub const ISR_OFFSET: u64 = 0x1000;
/// Device-specific configuration.
pub const DEVICE_CFG_OFFSET: u64 = 0x2000;
/// Queue notification addresses.
pub const NOTIFY_OFFSET: u64 = 0x3000;
/// MSI-X table.
pub const MSIX_TABLE_OFFSET: u64 = 0x4000;
/// MSI-X pending bits.
pub const MSIX_PBA_OFFSET: u64 = 0x6000;
/// Bytes between two queues' notification addresses.
pub const NOTIFY_MULTIPLIER: u32 = 4;
const REGION: u64 = 0x1000;
/// Vendor-specific capability ID (virtio structures).
const VENDOR_CAPABILITY: u8 = 0x09;
/// `cfg_type` of the virtio structures.
const COMMON_CFG: u8 = 1;
const NOTIFY_CFG: u8 = 2;
const ISR_CFG: u8 = 3;
const DEVICE_CFG: u8 = 4;
/// The configuration-space window into BAR 0 (`VIRTIO_PCI_CAP_PCI_CFG`).
const PCI_CFG: u8 = 5;
/// Where `pci_cfg_data` sits in that capability.
const PCI_CFG_DATA: usize = 16;

/// Errors from building a virtio-pci function (VMM bugs or limits, not guest actions).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The register state machine refused the device.
    #[error(transparent)]
    Transport(#[from] mmio::Error),
    /// Laying out configuration space failed.
    #[error(transparent)]
    Config(#[from] crate::pci::config_space::Error),
    /// More queues than the notify region or MSI-X table holds.
    #[error("{0} queues are more than a virtio-pci function here serves")]
    TooManyQueues(usize),
    /// Not one eventfd and GSI per vector.
    #[error("{irqs} MSI-X eventfds for {vectors} vectors")]
    Vectors {
        /// Eventfds given.
        irqs: usize,
        /// Vectors needed.
        vectors: usize,
    },
    /// Duplicating an eventfd failed.
    #[error("cannot duplicate a queue eventfd")]
    CloneEventFd(#[source] std::io::Error),
}

/// The number of MSI-X vectors a device with `queues` queues gets: one per queue and one for
/// configuration changes.
pub fn vectors_for(queues: usize) -> usize {
    queues + 1
}

/// A virtio device on the PCI segment.
pub struct VirtioPciDevice {
    config: ConfigSpace,
    initial: ConfigSpace,
    msix_cap: usize,
    /// Offset of the `VIRTIO_PCI_CAP_PCI_CFG` capability.
    cfg_cap: usize,
    transport: MmioTransport,
    common: CommonConfig,
    isr: Arc<MmioInterrupt>,
    msix: Arc<Mutex<Msix>>,
    queue_events: Vec<EventFd>,
}

impl VirtioPciDevice {
    /// A function for `device` with BAR 0 (64-bit) at `bar_addr`. `irqs` and `gsis` are the
    /// MSI-X vectors' eventfds and GSIs ([`vectors_for`] of them), registered as irqfds by
    /// the VMM.
    pub fn new(
        mem: GuestMemoryMmap,
        device: Arc<Mutex<dyn VirtioDevice>>,
        bar_addr: u64,
        irqs: Vec<EventFd>,
        gsis: Vec<u32>,
        wiring: Arc<dyn PciWiring>,
    ) -> Result<Self, Error> {
        let queues = device
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .queue_max_sizes()
            .len();
        let vectors = vectors_for(queues);
        if queues as u64 * u64::from(NOTIFY_MULTIPLIER) > REGION
            || vectors > crate::pci::msix::MAX_VECTORS
        {
            return Err(Error::TooManyQueues(queues));
        }
        if irqs.len() != vectors || gsis.len() != vectors {
            return Err(Error::Vectors {
                irqs: irqs.len(),
                vectors,
            });
        }
        let msix = Arc::new(Mutex::new(Msix::new(irqs, gsis, wiring)));
        let isr = Arc::new(MmioInterrupt::status_only());
        let table = Arc::new(Vectors::new(queues));
        let notifier = Arc::new(PciInterrupt::new(isr.clone(), msix.clone(), table.clone()));
        let transport = MmioTransport::with_interrupt(mem, device, isr.clone(), notifier)?;
        let queue_events = transport
            .queue_events()
            .iter()
            .map(|e| e.try_clone().map_err(Error::CloneEventFd))
            .collect::<Result<Vec<_>, _>>()?;
        let kind = transport.device_type();
        let mut config = ConfigSpace::new(Identity {
            vendor: VIRTIO_VENDOR,
            device: MODERN_DEVICE_BASE + kind as u16,
            class: class_of(kind),
            revision: 1,
            subsystem_vendor: VIRTIO_VENDOR,
            subsystem: 0x40,
        });
        config.add_bar(0, BAR_SIZE, BarKind::Mem64, bar_addr)?;
        let device_cfg_len = REGION as u32;
        let notify_len = queues as u32 * NOTIFY_MULTIPLIER;
        for (kind, offset, len) in [
            (COMMON_CFG, COMMON_OFFSET, COMMON_CFG_LEN as u32),
            (ISR_CFG, ISR_OFFSET, 1),
            (DEVICE_CFG, DEVICE_CFG_OFFSET, device_cfg_len),
        ] {
            let cap = virtio_capability(kind, offset as u32, len, None);
            config.add_capability(&cap, &vec![0; cap.len()])?;
        }
        let cap = virtio_capability(
            NOTIFY_CFG,
            NOTIFY_OFFSET as u32,
            notify_len,
            Some(NOTIFY_MULTIPLIER),
        );
        config.add_capability(&cap, &vec![0; cap.len()])?;
        let (body, mask) = msix.lock().unwrap_or_else(|e| e.into_inner()).capability(
            0,
            MSIX_TABLE_OFFSET as u32,
            MSIX_PBA_OFFSET as u32,
        );
        let msix_cap = config.add_capability(&body, &mask)?;
        // The window: the driver writes bar, offset and length, then reads or writes
        // pci_cfg_data.
        let mut cap = virtio_capability(PCI_CFG, 0, 0, None);
        cap.extend_from_slice(&[0; 4]);
        cap[2] = cap.len() as u8;
        let mut mask = vec![0u8; cap.len()];
        mask[4] = 0xff;
        mask[8..20].fill(0xff);
        let cfg_cap = config.add_capability(&cap, &mask)?;
        Ok(VirtioPciDevice {
            initial: config.snapshot(),
            config,
            msix_cap,
            cfg_cap,
            transport,
            common: CommonConfig::new(table, vectors as u16),
            isr,
            msix,
            queue_events,
        })
    }

    /// The MSI-X state (its eventfds and GSIs are the VMM's irqfds).
    pub fn msix(&self) -> &Arc<Mutex<Msix>> {
        &self.msix
    }

    /// The virtio register state machine (status, slow notifications).
    pub fn transport(&self) -> &MmioTransport {
        &self.transport
    }

    /// Where the PCI configuration window points: (BAR, offset, length), if it is usable
    /// (length 1, 2 or 4 and the offset aligned to it).
    fn cfg_window(&self) -> Option<(usize, u64, usize)> {
        let mut b = [0u8; 4];
        self.config.read(self.cfg_cap + 4, &mut b[..1]);
        let bar = usize::from(b[0]);
        self.config.read(self.cfg_cap + 8, &mut b);
        let offset = u64::from(u32::from_le_bytes(b));
        self.config.read(self.cfg_cap + 12, &mut b);
        let len = u32::from_le_bytes(b) as usize;
        (matches!(len, 1 | 2 | 4) && offset.is_multiple_of(len as u64))
            .then_some((bar, offset, len))
    }

    fn in_cfg_data(&self, offset: usize, len: usize) -> bool {
        let data = self.cfg_cap + PCI_CFG_DATA;
        offset < data + 4 && data < offset + len
    }

    fn lock_msix(&self) -> std::sync::MutexGuard<'_, Msix> {
        self.msix.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A vendor capability naming one virtio structure in BAR 0 (`notify`: the multiplier).
fn virtio_capability(kind: u8, offset: u32, len: u32, notify: Option<u32>) -> Vec<u8> {
    let mut cap = vec![VENDOR_CAPABILITY, 0, 0, kind, 0, 0, 0, 0];
    cap.extend_from_slice(&offset.to_le_bytes());
    cap.extend_from_slice(&len.to_le_bytes());
    if let Some(m) = notify {
        cap.extend_from_slice(&m.to_le_bytes());
    }
    cap[2] = cap.len() as u8;
    cap
}

/// The PCI class of a virtio device type.
fn class_of(kind: u32) -> u32 {
    match kind {
        device_type::NET => 0x02_0000,
        device_type::BLOCK => 0x01_8000,
        _ => 0xff_0000,
    }
}

impl PciDevice for VirtioPciDevice {
    fn config_read(&mut self, offset: usize, data: &mut [u8]) {
        if self.in_cfg_data(offset, data.len()) {
            if let Some((bar, at, len)) = self.cfg_window() {
                let mut bytes = [0u8; 4];
                self.bar_read(bar, at, &mut bytes[..len]);
                self.config.set_bytes(self.cfg_cap + PCI_CFG_DATA, &bytes);
            }
        }
        self.config.read(offset, data);
    }

    fn config_write(&mut self, offset: usize, data: &[u8]) {
        if offset >= CONFIG_SPACE_SIZE || !self.config.write(offset, data) {
            return;
        }
        if self.in_cfg_data(offset, data.len()) {
            if let Some((bar, at, len)) = self.cfg_window() {
                let mut bytes = [0u8; 4];
                self.config.read(self.cfg_cap + PCI_CFG_DATA, &mut bytes);
                self.bar_write(bar, at, &bytes[..len]);
            }
            return;
        }
        let control = self.msix_cap + 2;
        if offset < control + 2 && control < offset + data.len() {
            let mut c = [0u8; 2];
            self.config.read(control, &mut c);
            self.lock_msix().set_control(u16::from_le_bytes(c));
        }
    }

    fn decoded_bars(&self) -> Vec<(usize, u64, u64)> {
        self.config.decoded_bars()
    }

    fn bar_read(&mut self, bar: usize, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if bar != 0 {
            return;
        }
        let within = offset % REGION;
        match offset / REGION * REGION {
            COMMON_OFFSET => self.common.read(&mut self.transport, within, data),
            ISR_OFFSET if within == 0 && data.len() == 1 => {
                // Reading the ISR clears it (spec 4.1.4.5).
                let bits = self.isr.status();
                self.isr.ack(bits);
                data[0] = bits as u8;
            }
            DEVICE_CFG_OFFSET => self
                .transport
                .read(mmio::CONFIG_SPACE_OFFSET + within, data),
            MSIX_TABLE_OFFSET | 0x5000 => self
                .lock_msix()
                .read_table(offset - MSIX_TABLE_OFFSET, data),
            MSIX_PBA_OFFSET => self.lock_msix().read_pba(within, data),
            _ => {}
        }
    }

    fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8]) {
        if bar != 0 {
            return;
        }
        let within = offset % REGION;
        match offset / REGION * REGION {
            COMMON_OFFSET => self.common.write(&mut self.transport, within, data),
            DEVICE_CFG_OFFSET => self
                .transport
                .write(mmio::CONFIG_SPACE_OFFSET + within, data),
            NOTIFY_OFFSET if within.is_multiple_of(u64::from(NOTIFY_MULTIPLIER)) => {
                let queue = within / u64::from(NOTIFY_MULTIPLIER);
                CommonConfig::notify(&mut self.transport, queue as u16);
            }
            MSIX_TABLE_OFFSET | 0x5000 => self
                .lock_msix()
                .write_table(offset - MSIX_TABLE_OFFSET, data),
            _ => {}
        }
    }

    fn ioevents(&self) -> Vec<BarIoEvent> {
        (0u16..)
            .zip(&self.queue_events)
            .filter_map(|(q, e)| {
                Some(BarIoEvent {
                    bar: 0,
                    offset: NOTIFY_OFFSET + u64::from(q) * u64::from(NOTIFY_MULTIPLIER),
                    datamatch: IoEventMatch::U16(q),
                    evt: e.try_clone().ok()?,
                })
            })
            .collect()
    }

    fn reset(&mut self) {
        // What a driver does to reset the device, then the function's own state.
        self.common.write(&mut self.transport, 0x14, &[0]);
        self.config.reset_to(&self.initial);
        self.lock_msix().reset();
    }
}
