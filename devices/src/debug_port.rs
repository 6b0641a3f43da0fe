//! The POST debug port (0x80): guests write progress codes to it, petrel logs each with the
//! time since the process started, which makes it a cheap boot-time probe.
//!
//! Reads return 0xff: the port has no readable register on PC hardware (a read there floats
//! the bus), and answering 0xff, like every unimplemented register on petrel's buses, keeps a
//! guest from taking the port for a device it could talk to.

use std::time::Instant;

use log::{debug, info};

use crate::bus::BusDevice;

/// Writes logged at info level; later ones go to debug level so that a guest hammering the
/// port (an I/O-delay loop, an exit benchmark) cannot flood petrel's log.
pub const INFO_WRITES: u64 = 64;

/// Number of ports the debug port spans.
pub const DEBUG_PORT_LEN: u64 = 1;

/// The debug port: logs and records every byte written to it.
pub struct DebugPort {
    start: Instant,
    last: Option<u8>,
    count: u64,
}

impl DebugPort {
    /// A debug port that timestamps writes relative to `start` (the process start).
    pub fn new(start: Instant) -> Self {
        Self {
            start,
            last: None,
            count: 0,
        }
    }

    /// The last value written, if any.
    pub fn last_value(&self) -> Option<u8> {
        self.last
    }

    /// How many writes the port has seen.
    pub fn write_count(&self) -> u64 {
        self.count
    }
}

impl BusDevice for DebugPort {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0xff);
    }

    fn write(&mut self, _offset: u64, data: &[u8]) {
        let &[value] = data else {
            return;
        };
        let ms = self.start.elapsed().as_secs_f64() * 1000.0;
        if self.count < INFO_WRITES {
            info!("debug port: {value:#04x} at {ms:.3} ms");
        } else {
            if self.count == INFO_WRITES {
                info!("debug port: more than {INFO_WRITES} writes; further ones are logged at debug level");
            }
            debug!("debug port: {value:#04x} at {ms:.3} ms");
        }
        self.last = Some(value);
        self.count = self.count.saturating_add(1);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::bus::Bus;

    #[test]
    fn records_writes_and_reads_ff() {
        let dev = Arc::new(Mutex::new(DebugPort::new(Instant::now())));
        let mut bus = Bus::new();
        bus.insert(dev.clone(), 0x80, DEBUG_PORT_LEN).unwrap();
        assert_eq!(dev.lock().unwrap().last_value(), None);
        assert!(bus.write(0x80, &[0x12]));
        assert!(bus.write(0x80, &[0x34]));
        let mut b = [0u8];
        assert!(bus.read(0x80, &mut b));
        assert_eq!(b[0], 0xff);
        let d = dev.lock().unwrap();
        assert_eq!(d.last_value(), Some(0x34));
        assert_eq!(d.write_count(), 2);
    }
}
