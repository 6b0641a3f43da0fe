//! Serializable state of a virtio device behind its transport: what a snapshot or a
//! migration needs to recreate it (registers, negotiated features, queue configuration and
//! positions, the config space, and what the device keeps on its own).

use serde::{Deserialize, Serialize};
use virtio_queue::QueueState;

/// One queue: its configuration and ring positions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct QueueSnapshot {
    /// Largest size the device offers.
    pub max_size: u16,
    /// Size the driver chose.
    pub size: u16,
    /// The driver enabled the queue.
    pub ready: bool,
    /// Descriptor table address.
    pub desc_table: u64,
    /// Available (driver) ring address.
    pub avail_ring: u64,
    /// Used (device) ring address.
    pub used_ring: u64,
    /// Next available-ring entry the device will read.
    pub next_avail: u16,
    /// Next used-ring entry the device will write.
    pub next_used: u16,
    /// VIRTIO_F_RING_EVENT_IDX was negotiated.
    pub event_idx_enabled: bool,
}

/// `From` both ways between two structs with the same fields.
macro_rules! same_fields {
    ($a:ident <-> $b:ident { $($field:ident),* $(,)? }) => {
        impl From<$a> for $b {
            fn from(s: $a) -> Self {
                $b { $($field: s.$field),* }
            }
        }

        impl From<$b> for $a {
            fn from(s: $b) -> Self {
                $a { $($field: s.$field),* }
            }
        }
    };
}

same_fields!(QueueState <-> QueueSnapshot {
    max_size,
    size,
    ready,
    desc_table,
    avail_ring,
    used_ring,
    next_avail,
    next_used,
    event_idx_enabled,
});

/// A virtio-mmio device's whole state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransportState {
    /// Virtio device type.
    pub device_type: u32,
    /// Device status register.
    pub status: u32,
    /// Features the device offers.
    pub device_features: u64,
    /// Features the driver accepted.
    pub acked_features: u64,
    /// DeviceFeaturesSel.
    pub device_features_sel: u32,
    /// DriverFeaturesSel.
    pub driver_features_sel: u32,
    /// QueueSel.
    pub queue_sel: u32,
    /// InterruptStatus.
    pub interrupt_status: u32,
    /// Every queue, with the device's ring positions where it is serving it.
    pub queues: Vec<QueueSnapshot>,
    /// The device's configuration space as the driver reads it.
    pub config: Vec<u8>,
}
