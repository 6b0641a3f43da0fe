//! Standard input forwarded to the guest's serial port (`--serial stdout`), as its own
//! subscriber of the event loop, with back-pressure: when the UART's receive FIFO is full,
//! stdin is not read until the guest drains it. A terminal or pipe is watched by epoll; a
//! regular file or /dev/null (which epoll refuses) is read a chunk at a time as the guest
//! drains the FIFO.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};

use devices::serial::{Error as SerialError, Serial};
use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

const STDIN: u32 = 1;
const DRAINED: u32 = 2;

/// Standard input on its way to the current VM's UART.
pub struct SerialInput {
    fd: RawFd,
    /// The UART of the current VM, if one is built.
    serial: Option<Arc<Mutex<Serial>>>,
    drained: EventFd,
    pending: Vec<u8>,
    /// Registered with epoll right now.
    reading: bool,
    /// epoll accepts the descriptor.
    pollable: bool,
    /// End of input seen.
    eof: bool,
}

impl SerialInput {
    /// Input from standard input; `drained` is written by the UART when the guest has
    /// emptied its receive FIFO.
    pub fn stdin(drained: EventFd) -> Self {
        SerialInput {
            fd: libc::STDIN_FILENO,
            serial: None,
            drained,
            pending: Vec::new(),
            reading: false,
            pollable: false,
            eof: false,
        }
    }

    /// Points the input at the current VM's UART (or none) and lets the loop offer held
    /// input to it.
    pub fn set_serial(&mut self, serial: Option<Arc<Mutex<Serial>>>) {
        self.serial = serial;
        let _ = self.drained.write(1);
    }

    /// Offers pending bytes to the UART; returns true when all were taken.
    fn flush(&mut self) -> bool {
        if self.pending.is_empty() {
            return true;
        }
        let Some(serial) = &self.serial else {
            // No VM yet: hold the input (and stop reading) until there is one.
            return false;
        };
        let mut serial = serial.lock().unwrap_or_else(|e| e.into_inner());
        match serial.enqueue_input(&self.pending) {
            Ok(n) => {
                self.pending.drain(..n.min(self.pending.len()));
            }
            Err(SerialError::FifoFull) => {}
            Err(e) => {
                log::warn!("serial input: {e}");
                self.pending.clear();
            }
        }
        self.pending.is_empty()
    }

    fn read(&mut self) -> std::io::Result<usize> {
        let mut buf = [0u8; 64];
        // SAFETY: reads into a local buffer of the given length from a file descriptor we
        // hold open for the loop's lifetime.
        let n = unsafe { libc::read(self.fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let n = n as usize;
        self.eof = n == 0;
        self.pending.extend_from_slice(&buf[..n]);
        Ok(n)
    }

    /// For input epoll cannot watch: reads and offers chunks until the FIFO is full or the
    /// input ends.
    fn pump_unpollable(&mut self) {
        while !self.pollable && !self.eof && self.flush() {
            if let Err(e) = self.read() {
                log::warn!("standard input: {e}; no more serial input");
                self.eof = true;
            }
        }
        self.flush();
    }

    fn stop_reading(&mut self, ops: &mut EventOps) {
        let _ = ops.remove(Events::empty_raw(self.fd));
        self.reading = false;
    }

    fn on_stdin(&mut self, ops: &mut EventOps) {
        match self.read() {
            // End of input: stop watching it; the guest keeps running.
            Ok(0) => self.stop_reading(ops),
            Ok(_) => {
                if !self.flush() && self.reading {
                    self.stop_reading(ops);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => {
                log::warn!("standard input: {e}; no more serial input");
                self.stop_reading(ops);
            }
        }
    }

    fn on_drained(&mut self, ops: &mut EventOps) {
        let _ = self.drained.read();
        if !self.pollable {
            self.pump_unpollable();
        } else if self.flush() && !self.reading && !self.eof {
            self.reading = ops
                .add(Events::with_data_raw(self.fd, STDIN, EventSet::IN))
                .is_ok();
        }
    }
}

impl MutEventSubscriber for SerialInput {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        match events.data() {
            STDIN => self.on_stdin(ops),
            DRAINED => self.on_drained(ops),
            _ => {}
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        // epoll refuses regular files and /dev/null: those are read as the guest drains.
        self.reading = ops
            .add(Events::with_data_raw(self.fd, STDIN, EventSet::IN))
            .is_ok();
        self.pollable = self.reading;
        if let Err(e) = ops.add(Events::with_data_raw(
            self.drained.as_raw_fd(),
            DRAINED,
            EventSet::IN,
        )) {
            log::warn!("event loop: serial input back-pressure unavailable: {e}");
        }
        self.pump_unpollable();
    }
}
