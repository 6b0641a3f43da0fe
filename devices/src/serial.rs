//! The 8250/16550 UART (COM1): `vm_superio::Serial` on the port bus.
//!
//! The device occupies 8 ports from its base. Guest output goes to a writer given at
//! construction and is flushed after every byte (the first byte's latency matters more than
//! syscall count). Host input (stdin, read by the event loop) enters through
//! [`Serial::enqueue_input`]; the receive FIFO holds 64 bytes.

use std::io::{self, Write};

use log::{debug, warn};
use vm_superio::serial::{Error as SuperioError, SerialEvents, SerialState};
use vmm_sys_util::eventfd::EventFd;

use crate::bus::BusDevice;
use crate::interrupt::EventFdTrigger;

/// Number of ports the UART occupies.
pub const SERIAL_PORT_LEN: u64 = 8;

/// Errors from feeding input to the UART.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The receive FIFO has no room; the guest has not read what it holds yet.
    #[error("serial receive FIFO is full")]
    FifoFull,
    /// Raising the interrupt failed.
    #[error("cannot raise the serial interrupt")]
    Interrupt(#[source] io::Error),
}

/// Result type of this module.
pub type Result<T> = std::result::Result<T, Error>;

/// Callbacks from `vm_superio`: tells the event loop when the guest has emptied the FIFO.
struct FifoEvents {
    drained: Option<EventFd>,
}

impl SerialEvents for FifoEvents {
    fn buffer_read(&self) {}
    fn out_byte(&self) {}
    fn tx_lost_byte(&self) {}
    fn in_buffer_empty(&self) {
        if let Some(evt) = &self.drained {
            if let Err(e) = evt.write(1) {
                debug!("serial: cannot signal the drained FIFO: {e}");
            }
        }
    }
}

type Uart = vm_superio::Serial<EventFdTrigger, FifoEvents, Box<dyn Write + Send>>;

/// A 16550A UART whose interrupt is an eventfd (the VMM registers it as the irqfd of IRQ 4
/// for COM1).
pub struct Serial {
    uart: Uart,
    /// Set after the first failed output write, so a closed output logs one warning, not one
    /// per byte.
    output_failed: bool,
}

impl Serial {
    /// A UART raising `interrupt` and writing guest output to `out` (stdout, a file or
    /// `std::io::sink()`).
    pub fn new(interrupt: EventFdTrigger, out: Box<dyn Write + Send>) -> Self {
        Self::build(interrupt, out, None)
    }

    /// Like [`Serial::new`], and also writes 1 to `drained` whenever the guest reads the
    /// receive FIFO empty, so an event loop that stopped reading its input because the FIFO
    /// was full knows when to resume.
    pub fn with_drained_event(
        interrupt: EventFdTrigger,
        out: Box<dyn Write + Send>,
        drained: EventFd,
    ) -> Self {
        Self::build(interrupt, out, Some(drained))
    }

    fn build(
        interrupt: EventFdTrigger,
        out: Box<dyn Write + Send>,
        drained: Option<EventFd>,
    ) -> Self {
        Self {
            uart: vm_superio::Serial::with_events(interrupt, FifoEvents { drained }, out),
            output_failed: false,
        }
    }

    /// Free room in the receive FIFO, in bytes.
    pub fn fifo_capacity(&self) -> usize {
        self.uart.fifo_capacity()
    }

    /// Queues host input for the guest and raises the receive interrupt if the guest enabled
    /// it. Returns how many leading bytes of `bytes` were accepted (fewer than `bytes.len()`
    /// when the FIFO fills up; 0 for empty input or while the UART is in loopback mode), or
    /// [`Error::FifoFull`] when none fit. Bytes not accepted must be offered again later.
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> Result<usize> {
        self.uart.enqueue_raw_bytes(bytes).map_err(|e| match e {
            SuperioError::FullFifo => Error::FifoFull,
            SuperioError::Trigger(e) | SuperioError::IOError(e) => Error::Interrupt(e),
        })
    }
}

/// The UART's registers and receive FIFO, for a snapshot.
#[allow(missing_docs)]
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SerialSnapshot {
    pub baud_divisor_low: u8,
    pub baud_divisor_high: u8,
    pub interrupt_enable: u8,
    pub interrupt_identification: u8,
    pub line_control: u8,
    pub line_status: u8,
    pub modem_control: u8,
    pub modem_status: u8,
    pub scratch: u8,
    /// Bytes the guest has not read yet.
    pub in_buffer: Vec<u8>,
}

impl From<SerialState> for SerialSnapshot {
    fn from(s: SerialState) -> Self {
        SerialSnapshot {
            baud_divisor_low: s.baud_divisor_low,
            baud_divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer,
        }
    }
}

impl From<SerialSnapshot> for SerialState {
    fn from(s: SerialSnapshot) -> Self {
        SerialState {
            baud_divisor_low: s.baud_divisor_low,
            baud_divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer,
        }
    }
}

impl Serial {
    /// The registers and the receive FIFO.
    pub fn save(&self) -> SerialSnapshot {
        self.uart.state().into()
    }

    /// Sets the registers and the receive FIFO (the output and the interrupt stay).
    pub fn restore(&mut self, state: &SerialSnapshot) -> io::Result<()> {
        let trigger = self.uart.interrupt_evt().try_clone()?;
        let drained = match &self.uart.events().drained {
            Some(e) => Some(e.try_clone()?),
            None => None,
        };
        let placeholder = vm_superio::Serial::with_events(
            trigger.try_clone()?,
            FifoEvents { drained: None },
            Box::new(io::sink()) as Box<dyn Write + Send>,
        );
        let out = std::mem::replace(&mut self.uart, placeholder).into_writer();
        let state = SerialState::from(state.clone());
        match Uart::from_state(&state, trigger.try_clone()?, FifoEvents { drained }, out) {
            Ok(uart) => {
                self.uart = uart;
                Ok(())
            }
            Err(e) => Err(io::Error::other(format!("serial state: {e:?}"))),
        }
    }
}

impl BusDevice for Serial {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match (data.len(), u8::try_from(offset)) {
            (1, Ok(offset)) => data[0] = self.uart.read(offset),
            _ => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let (&[value], Ok(offset)) = (data, u8::try_from(offset)) else {
            return;
        };
        match self.uart.write(offset, value) {
            Ok(()) => self.output_failed = false,
            Err(SuperioError::IOError(e)) => {
                if !self.output_failed {
                    warn!("serial: guest output lost: {e}");
                    self.output_failed = true;
                }
            }
            Err(SuperioError::Trigger(e)) => warn!("serial: cannot raise the interrupt: {e}"),
            Err(SuperioError::FullFifo) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    use super::*;
    use crate::bus::Bus;

    const COM1: u64 = 0x3f8;
    const DATA: u64 = COM1;
    const IER: u64 = COM1 + 1;
    const IIR: u64 = COM1 + 2;
    const LSR: u64 = COM1 + 5;

    /// A writer that only publishes what was flushed, like a buffered stdout.
    struct Flushed {
        pending: Vec<u8>,
        out: Arc<Mutex<Vec<u8>>>,
    }

    impl Write for Flushed {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.pending.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            self.out.lock().unwrap().append(&mut self.pending);
            Ok(())
        }
    }

    struct Fixture {
        bus: Bus,
        serial: Arc<Mutex<Serial>>,
        irq: EventFd,
        drained: EventFd,
        out: Arc<Mutex<Vec<u8>>>,
    }

    fn fixture() -> Fixture {
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        let drained = EventFd::new(EFD_NONBLOCK).unwrap();
        let out = Arc::new(Mutex::new(Vec::new()));
        let writer = Flushed {
            pending: Vec::new(),
            out: out.clone(),
        };
        let serial = Arc::new(Mutex::new(Serial::with_drained_event(
            EventFdTrigger::new(irq.try_clone().unwrap()),
            Box::new(writer),
            drained.try_clone().unwrap(),
        )));
        let mut bus = Bus::new();
        bus.insert(serial.clone(), COM1, SERIAL_PORT_LEN).unwrap();
        Fixture {
            bus,
            serial,
            irq,
            drained,
            out,
        }
    }

    fn inb(bus: &Bus, port: u64) -> u8 {
        let mut b = [0u8];
        assert!(bus.read(port, &mut b));
        b[0]
    }

    #[test]
    fn output_is_flushed_byte_by_byte() {
        let f = fixture();
        assert!(f.bus.write(DATA, b"h"));
        assert_eq!(f.out.lock().unwrap().as_slice(), b"h");
        assert!(f.bus.write(DATA, b"i"));
        assert_eq!(f.out.lock().unwrap().as_slice(), b"hi");
        // Transmitter always empty.
        assert_eq!(inb(&f.bus, LSR) & 0x60, 0x60);
    }

    #[test]
    fn thr_empty_interrupt_fires_when_enabled() {
        let f = fixture();
        assert!(f.irq.read().is_err(), "no interrupt before IER is set");
        assert!(f.bus.write(IER, &[0x02]));
        assert_eq!(f.irq.read().unwrap(), 1);
        assert_eq!(inb(&f.bus, IIR) & 0x0f, 0x02);
    }

    #[test]
    fn input_respects_fifo_capacity_and_interrupts() {
        let f = fixture();
        assert!(f.bus.write(IER, &[0x01]));
        let mut serial = f.serial.lock().unwrap();
        assert_eq!(serial.enqueue_input(b"").unwrap(), 0);
        assert_eq!(serial.enqueue_input(b"ab").unwrap(), 2);
        assert_eq!(serial.fifo_capacity(), 62);
        let big = [b'x'; 100];
        assert_eq!(serial.enqueue_input(&big).unwrap(), 62);
        assert!(matches!(serial.enqueue_input(b"c"), Err(Error::FifoFull)));
        drop(serial);
        assert_eq!(f.irq.read().unwrap(), 1);
        assert_eq!(inb(&f.bus, LSR) & 0x01, 0x01, "data ready");
        assert_eq!(inb(&f.bus, DATA), b'a');
        assert_eq!(inb(&f.bus, DATA), b'b');
        for _ in 0..62 {
            assert_eq!(inb(&f.bus, DATA), b'x');
        }
        assert_eq!(inb(&f.bus, LSR) & 0x01, 0, "FIFO empty");
        assert!(f.drained.read().unwrap() >= 1);
    }

    #[test]
    fn wide_accesses_are_ignored() {
        let f = fixture();
        let mut w = [0u8; 2];
        assert!(f.bus.read(COM1, &mut w));
        assert_eq!(w, [0xff, 0xff]);
        assert!(f.bus.write(COM1, b"ab"));
        assert!(f.out.lock().unwrap().is_empty());
    }

    #[test]
    fn scratch_register_round_trips() {
        let f = fixture();
        assert!(f.bus.write(COM1 + 7, &[0x5a]));
        assert_eq!(inb(&f.bus, COM1 + 7), 0x5a);
    }
}
