//! The virtio-pci common configuration structure (virtio 1.x spec 4.1.4.3), translated onto
//! the virtio-mmio register state machine ([`MmioTransport`]): feature negotiation, device
//! status, queue set-up, activation and reset are the same code for both transports. What
//! only PCI has — MSI-X vector numbers per queue and for configuration changes, read-back of
//! the selectors and of the driver's features — is kept here.

use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;

use virtio_bindings::virtio_mmio::*;

use crate::bus::BusDevice;
use crate::virtio::mmio::{MmioTransport, NOTIFY_REG_OFFSET};

/// "No vector" (spec 4.1.4.3): the driver wants no interrupt for this event.
pub const NO_VECTOR: u16 = 0xffff;

/// Offsets in the common configuration structure.
mod off {
    pub const DEVICE_FEATURE_SELECT: u64 = 0x00;
    pub const DEVICE_FEATURE: u64 = 0x04;
    pub const DRIVER_FEATURE_SELECT: u64 = 0x08;
    pub const DRIVER_FEATURE: u64 = 0x0c;
    pub const CONFIG_MSIX_VECTOR: u64 = 0x10;
    pub const NUM_QUEUES: u64 = 0x12;
    pub const DEVICE_STATUS: u64 = 0x14;
    pub const CONFIG_GENERATION: u64 = 0x15;
    pub const QUEUE_SELECT: u64 = 0x16;
    pub const QUEUE_SIZE: u64 = 0x18;
    pub const QUEUE_MSIX_VECTOR: u64 = 0x1a;
    pub const QUEUE_ENABLE: u64 = 0x1c;
    pub const QUEUE_NOTIFY_OFF: u64 = 0x1e;
    pub const QUEUE_DESC: u64 = 0x20;
    pub const QUEUE_DRIVER: u64 = 0x28;
    pub const QUEUE_DEVICE: u64 = 0x30;
}

/// Bytes of the structure.
pub const COMMON_CFG_LEN: u64 = 0x38;

/// The vectors the driver chose: read by the device's interrupt on the event loop, written by
/// the driver on a vCPU.
pub struct Vectors {
    /// Vector of configuration changes.
    pub config: AtomicU16,
    /// Vector of each queue.
    pub queues: Vec<AtomicU16>,
}

impl Vectors {
    /// Every event without a vector.
    pub fn new(queues: usize) -> Self {
        Vectors {
            config: AtomicU16::new(NO_VECTOR),
            queues: (0..queues).map(|_| AtomicU16::new(NO_VECTOR)).collect(),
        }
    }

    fn reset(&self) {
        self.config.store(NO_VECTOR, Ordering::Release);
        for q in &self.queues {
            q.store(NO_VECTOR, Ordering::Release);
        }
    }
}

/// The common configuration of one device.
pub struct CommonConfig {
    device_feature_select: u32,
    driver_feature_select: u32,
    driver_features: [u32; 2],
    queue_select: u16,
    vectors: Arc<Vectors>,
    /// How many MSI-X vectors exist (a vector beyond reads back as NO_VECTOR).
    msix_vectors: u16,
}

impl CommonConfig {
    /// The common configuration of a device with `vectors.queues.len()` queues and
    /// `msix_vectors` MSI-X vectors.
    pub fn new(vectors: Arc<Vectors>, msix_vectors: u16) -> Self {
        CommonConfig {
            device_feature_select: 0,
            driver_feature_select: 0,
            driver_features: [0; 2],
            queue_select: 0,
            vectors,
            msix_vectors,
        }
    }

    fn mmio_read(t: &mut MmioTransport, reg: u32) -> u32 {
        let mut b = [0u8; 4];
        t.read(u64::from(reg), &mut b);
        u32::from_le_bytes(b)
    }

    fn mmio_write(t: &mut MmioTransport, reg: u32, v: u32) {
        t.write(u64::from(reg), &v.to_le_bytes());
    }

    /// Reads the structure (the guest is not trusted: unknown places read zeros).
    pub fn read(&self, t: &mut MmioTransport, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let queue = usize::from(self.queue_select);
        let v: u64 = match (offset, data.len()) {
            (off::DEVICE_FEATURE_SELECT, 4) => self.device_feature_select.into(),
            (off::DEVICE_FEATURE, 4) => Self::mmio_read(t, VIRTIO_MMIO_DEVICE_FEATURES).into(),
            (off::DRIVER_FEATURE_SELECT, 4) => self.driver_feature_select.into(),
            (off::DRIVER_FEATURE, 4) => match self.driver_feature_select {
                s @ 0..=1 => self.driver_features[s as usize].into(),
                _ => 0,
            },
            (off::CONFIG_MSIX_VECTOR, 2) => self.vectors.config.load(Ordering::Acquire).into(),
            (off::NUM_QUEUES, 2) => self.vectors.queues.len() as u64,
            (off::DEVICE_STATUS, 1) => Self::mmio_read(t, VIRTIO_MMIO_STATUS).into(),
            (off::CONFIG_GENERATION, 1) => Self::mmio_read(t, VIRTIO_MMIO_CONFIG_GENERATION).into(),
            (off::QUEUE_SELECT, 2) => self.queue_select.into(),
            (off::QUEUE_SIZE, 2) => Self::mmio_read(t, VIRTIO_MMIO_QUEUE_NUM).into(),
            (off::QUEUE_MSIX_VECTOR, 2) => self
                .vectors
                .queues
                .get(queue)
                .map_or(NO_VECTOR, |v| v.load(Ordering::Acquire))
                .into(),
            (off::QUEUE_ENABLE, 2) => Self::mmio_read(t, VIRTIO_MMIO_QUEUE_READY).into(),
            (off::QUEUE_NOTIFY_OFF, 2) => {
                if queue < self.vectors.queues.len() {
                    queue as u64
                } else {
                    0
                }
            }
            (off::QUEUE_DESC..=0x37, 4 | 8) if offset.is_multiple_of(4) => {
                let mut v = 0u64;
                for (i, o) in (offset..offset + data.len() as u64).step_by(4).enumerate() {
                    let reg = address_register(o);
                    v |= u64::from(Self::mmio_read(t, reg)) << (32 * i);
                }
                v
            }
            _ => return,
        };
        data.copy_from_slice(&v.to_le_bytes()[..data.len()]);
    }

    /// Writes the structure; writes to read-only or unknown places are ignored.
    pub fn write(&mut self, t: &mut MmioTransport, offset: u64, data: &[u8]) {
        let mut b = [0u8; 8];
        b[..data.len().min(8)].copy_from_slice(&data[..data.len().min(8)]);
        let v = u64::from_le_bytes(b);
        let queue = usize::from(self.queue_select);
        match (offset, data.len()) {
            (off::DEVICE_FEATURE_SELECT, 4) => {
                self.device_feature_select = v as u32;
                Self::mmio_write(t, VIRTIO_MMIO_DEVICE_FEATURES_SEL, v as u32);
            }
            (off::DRIVER_FEATURE_SELECT, 4) => {
                self.driver_feature_select = v as u32;
                Self::mmio_write(t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, v as u32);
            }
            (off::DRIVER_FEATURE, 4) => {
                Self::mmio_write(t, VIRTIO_MMIO_DRIVER_FEATURES, v as u32);
                if let Some(f) = self
                    .driver_features
                    .get_mut(self.driver_feature_select as usize)
                {
                    *f = v as u32;
                }
            }
            (off::CONFIG_MSIX_VECTOR, 2) => {
                let vector = self.checked_vector(v as u16);
                self.vectors.config.store(vector, Ordering::Release);
            }
            (off::DEVICE_STATUS, 1) => {
                Self::mmio_write(t, VIRTIO_MMIO_STATUS, v as u32);
                if v == 0 {
                    self.reset();
                }
            }
            (off::QUEUE_SELECT, 2) => {
                self.queue_select = v as u16;
                Self::mmio_write(t, VIRTIO_MMIO_QUEUE_SEL, v as u32);
            }
            (off::QUEUE_SIZE, 2) => Self::mmio_write(t, VIRTIO_MMIO_QUEUE_NUM, v as u32),
            (off::QUEUE_MSIX_VECTOR, 2) => {
                let vector = self.checked_vector(v as u16);
                if let Some(q) = self.vectors.queues.get(queue) {
                    q.store(vector, Ordering::Release);
                }
            }
            (off::QUEUE_ENABLE, 2) => Self::mmio_write(t, VIRTIO_MMIO_QUEUE_READY, v as u32),
            (off::QUEUE_DESC..=0x37, 4 | 8) if offset.is_multiple_of(4) => {
                for (i, o) in (offset..offset + data.len() as u64).step_by(4).enumerate() {
                    Self::mmio_write(t, address_register(o), (v >> (32 * i)) as u32);
                }
            }
            _ => {}
        }
    }

    /// A vector the table has, or NO_VECTOR (which the driver reads back as a refusal).
    fn checked_vector(&self, v: u16) -> u16 {
        if v < self.msix_vectors {
            v
        } else {
            NO_VECTOR
        }
    }

    fn reset(&mut self) {
        self.device_feature_select = 0;
        self.driver_feature_select = 0;
        self.driver_features = [0; 2];
        self.queue_select = 0;
        self.vectors.reset();
    }

    /// A queue notification that reached the transport (the ioeventfd did not match).
    pub fn notify(t: &mut MmioTransport, queue: u16) {
        t.write(NOTIFY_REG_OFFSET, &u32::from(queue).to_le_bytes());
    }
}

/// The virtio-mmio register holding the 32 bits of a queue address at `offset` (0x20..0x38).
fn address_register(offset: u64) -> u32 {
    let high = offset % 8 == 4;
    match (offset & !7, high) {
        (off::QUEUE_DESC, false) => VIRTIO_MMIO_QUEUE_DESC_LOW,
        (off::QUEUE_DESC, true) => VIRTIO_MMIO_QUEUE_DESC_HIGH,
        (off::QUEUE_DRIVER, false) => VIRTIO_MMIO_QUEUE_AVAIL_LOW,
        (off::QUEUE_DRIVER, true) => VIRTIO_MMIO_QUEUE_AVAIL_HIGH,
        (off::QUEUE_DEVICE, false) => VIRTIO_MMIO_QUEUE_USED_LOW,
        _ => VIRTIO_MMIO_QUEUE_USED_HIGH,
    }
}
