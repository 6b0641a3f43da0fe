//! Saving and restoring a virtio-mmio device: registers, negotiated features, queues (with the
//! device's ring positions) and the config space, as a serde [`TransportState`].
//!
//! Restore is done on a freshly built transport and device (made from the same VM config):
//! the registers are set back, the queues rebuilt from their saved state, and, if the driver
//! had set DRIVER_OK, the device is activated with them, continuing where it stopped.

use virtio_queue::{Queue, QueueState, QueueT};

use super::status::DRIVER_OK;
use super::MmioTransport;
use crate::virtio::state::{QueueSnapshot, TransportState};

/// Config space bytes kept in a snapshot.
const CONFIG_BYTES: usize = 256;

/// Why a saved state cannot be applied.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RestoreError {
    /// The state is for another kind of device.
    #[error("state is for device type {saved}, this is device type {actual}")]
    DeviceType {
        /// Type in the state.
        saved: u32,
        /// Type of this device.
        actual: u32,
    },
    /// The driver accepted features this device does not offer.
    #[error("state has features {acked:#x} that this device does not offer ({offered:#x})")]
    Features {
        /// Accepted features in the state.
        acked: u64,
        /// What the device offers.
        offered: u64,
    },
    /// The number of queues differs.
    #[error("state has {saved} queues, the device has {actual}")]
    QueueCount {
        /// Queues in the state.
        saved: usize,
        /// Queues of the device.
        actual: usize,
    },
    /// A queue cannot be rebuilt, or lies outside guest memory.
    #[error("queue {index}: {reason}")]
    Queue {
        /// Queue index.
        index: usize,
        /// What is wrong.
        reason: String,
    },
    /// The device refused to activate.
    #[error("activation failed")]
    Activate,
    /// The device refused its saved configuration space.
    #[error("config space: {0}")]
    Config(String),
}

impl MmioTransport {
    /// The device's state. Queues the device is serving carry its current ring positions.
    pub fn save(&self) -> TransportState {
        let device = self.lock_device();
        let mut queues: Vec<QueueSnapshot> = self.queues.iter().map(|q| q.state().into()).collect();
        for (index, state) in device.active_queue_states() {
            if let Some(slot) = queues.get_mut(index) {
                *slot = state.into();
            }
        }
        let mut config = vec![0u8; CONFIG_BYTES];
        device.read_config(0, &mut config);
        TransportState {
            device_type: self.device_type,
            status: self.status,
            device_features: self.device_features,
            acked_features: self.features.acked,
            device_features_sel: self.features.device_sel,
            driver_features_sel: self.features.driver_sel,
            queue_sel: self.queue_sel,
            interrupt_status: self.interrupt.status(),
            queues,
            config,
        }
    }

    /// Applies `state` to this (freshly created) transport and its device.
    pub fn restore(&mut self, state: &TransportState) -> Result<(), RestoreError> {
        if state.device_type != self.device_type {
            return Err(RestoreError::DeviceType {
                saved: state.device_type,
                actual: self.device_type,
            });
        }
        if state.acked_features & !self.device_features != 0 {
            return Err(RestoreError::Features {
                acked: state.acked_features,
                offered: self.device_features,
            });
        }
        if state.queues.len() != self.queues.len() {
            return Err(RestoreError::QueueCount {
                saved: state.queues.len(),
                actual: self.queues.len(),
            });
        }
        let mut queues = Vec::with_capacity(state.queues.len());
        for (index, (saved, own)) in state.queues.iter().zip(&self.queues).enumerate() {
            let queue_err = |reason: String| RestoreError::Queue { index, reason };
            if saved.max_size != own.max_size() {
                return Err(queue_err(format!(
                    "max size {} differs from the device's {}",
                    saved.max_size,
                    own.max_size()
                )));
            }
            let q =
                Queue::try_from(QueueState::from(*saved)).map_err(|e| queue_err(e.to_string()))?;
            if q.ready() && !q.is_valid(&self.mem) {
                return Err(queue_err("outside guest memory".into()));
            }
            queues.push(q);
        }
        self.lock_device()
            .restore_config(&state.config)
            .map_err(RestoreError::Config)?;
        self.queues = queues;
        self.features.acked = state.acked_features;
        self.features.device_sel = state.device_features_sel;
        self.features.driver_sel = state.driver_features_sel;
        self.queue_sel = state.queue_sel;
        self.queue_config_error = false;
        if state.status & DRIVER_OK != 0 && !self.activate() {
            return Err(RestoreError::Activate);
        }
        self.status = state.status;
        self.interrupt.set_status(state.interrupt_status);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use vm_memory::{GuestAddress, GuestMemoryMmap};
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    use super::*;
    use crate::bus::BusDevice;
    use crate::virtio::rng::Rng;
    use crate::virtio::VirtioDevice;

    fn write(t: &mut MmioTransport, offset: u64, value: u32) {
        t.write(offset, &value.to_le_bytes());
    }

    fn transport(mem: &GuestMemoryMmap) -> (MmioTransport, Arc<Mutex<Rng>>) {
        let rng = Arc::new(Mutex::new(Rng::new().unwrap()));
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        (
            MmioTransport::new(mem.clone(), rng.clone(), irq).unwrap(),
            rng,
        )
    }

    /// Drives the handshake for a one-queue device with its rings at 0x1000/0x2000/0x3000.
    fn bring_up(t: &mut MmioTransport) {
        write(t, 0x70, 1); // ACKNOWLEDGE
        write(t, 0x70, 3); // DRIVER
        write(t, 0x24, 1); // DriverFeaturesSel = 1: VERSION_1 is bit 32
        write(t, 0x20, 1);
        write(t, 0x70, 0xb); // FEATURES_OK
        write(t, 0x30, 0); // QueueSel
        write(t, 0x38, 16); // QueueNum
        write(t, 0x80, 0x1000);
        write(t, 0x90, 0x2000);
        write(t, 0xa0, 0x3000);
        write(t, 0x44, 1); // QueueReady
        write(t, 0x70, 0xf); // DRIVER_OK
    }

    #[test]
    fn saved_state_round_trips_through_json_and_reactivates() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let (mut t, rng) = transport(&mem);
        bring_up(&mut t);
        assert_eq!(t.status(), 0xf);
        assert!(rng.lock().unwrap().is_activated());
        let state = t.save();
        assert_eq!(state.queues[0].size, 16);
        assert_eq!(state.queues[0].desc_table, 0x1000);
        assert!(state.queues[0].ready);
        let json = serde_json::to_string(&state).unwrap();
        let back: TransportState = serde_json::from_str(&json).unwrap();
        assert_eq!(back, state);

        let (mut fresh, fresh_rng) = transport(&mem);
        fresh.restore(&back).unwrap();
        assert_eq!(fresh.status(), 0xf);
        assert!(fresh_rng.lock().unwrap().is_activated());
        assert_eq!(fresh.save(), state);
    }

    #[test]
    fn mismatched_states_are_refused() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let (mut t, _) = transport(&mem);
        bring_up(&mut t);
        let state = t.save();
        let (mut fresh, _) = transport(&mem);
        let mut wrong = state.clone();
        wrong.device_type = 2;
        assert!(matches!(
            fresh.restore(&wrong),
            Err(RestoreError::DeviceType { .. })
        ));
        let mut wrong = state.clone();
        wrong.acked_features |= 1 << 40;
        assert!(matches!(
            fresh.restore(&wrong),
            Err(RestoreError::Features { .. })
        ));
        let mut wrong = state.clone();
        wrong.queues[0].desc_table = 0x2000_0000;
        assert!(matches!(
            fresh.restore(&wrong),
            Err(RestoreError::Queue { .. })
        ));
        let mut wrong = state;
        wrong.queues.push(QueueSnapshot::default());
        assert!(matches!(
            fresh.restore(&wrong),
            Err(RestoreError::QueueCount { .. })
        ));
    }
}
