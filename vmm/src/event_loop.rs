//! The event loop of a running VM (the main thread): guest poweroff and reset, vCPU failures,
//! SIGTERM/SIGINT, and standard input for the serial port, all as events on one
//! event-manager loop.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};

use devices::serial::{Error as SerialError, Serial};
use event_manager::{
    EventManager, EventOps, Events, MutEventSubscriber, SubscriberId, SubscriberOps,
};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use crate::signals::SignalFd;
use crate::vcpu::{VcpuEvent, VcpuShared};
use crate::{Error, Result};

/// How a boot of the guest ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The guest powered off.
    PowerOff,
    /// The guest asked for a reset.
    Reset,
    /// petrel got SIGTERM or SIGINT (the signal number).
    Signal(i32),
    /// A vCPU failed.
    Failed(String),
}

const EXIT: u32 = 1;
const RESET: u32 = 2;
const VCPU: u32 = 3;
const SIGNAL: u32 = 4;
const STDIN: u32 = 5;
const DRAINED: u32 = 6;
const API: u32 = 7;

/// The lifecycle subscriber.
pub struct Controller {
    exit_evt: EventFd,
    reset_evt: EventFd,
    signals: SignalFd,
    shared: Arc<VcpuShared>,
    stdin: Option<StdinInput>,
    api_evt: Option<EventFd>,
    outcome: Option<Outcome>,
    api_pending: bool,
}

/// Standard input forwarded to the serial port, with back-pressure: when the receive FIFO is
/// full, stdin is not read until the guest drains it. A terminal or pipe is watched by epoll;
/// a regular file (which epoll refuses) is read a chunk at a time as the guest drains the FIFO.
struct StdinInput {
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

impl StdinInput {
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
}

impl Controller {
    fn finish(&mut self, outcome: Outcome) {
        if self.outcome.is_none() {
            self.outcome = Some(outcome);
        }
    }

    fn on_stdin(&mut self, ops: &mut EventOps) {
        let Some(input) = self.stdin.as_mut() else {
            return;
        };
        match input.read() {
            Ok(0) => {
                // End of input: stop watching it; the guest keeps running.
                let _ = ops.remove(Events::empty_raw(input.fd));
                input.reading = false;
            }
            Ok(_) => {
                if !input.flush() && input.reading {
                    let _ = ops.remove(Events::empty_raw(input.fd));
                    input.reading = false;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => {
                log::warn!("standard input: {e}; no more serial input");
                let _ = ops.remove(Events::empty_raw(input.fd));
                input.reading = false;
            }
        }
    }

    fn on_drained(&mut self, ops: &mut EventOps) {
        let Some(input) = self.stdin.as_mut() else {
            return;
        };
        let _ = input.drained.read();
        if !input.pollable {
            input.pump_unpollable();
        } else if input.flush() && !input.reading && !input.eof {
            input.reading = ops
                .add(Events::with_data_raw(input.fd, STDIN, EventSet::IN))
                .is_ok();
        }
    }
}

impl MutEventSubscriber for Controller {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        match events.data() {
            EXIT => {
                let _ = self.exit_evt.read();
                log::info!("guest powered off (ACPI S5)");
                self.finish(Outcome::PowerOff);
            }
            RESET => {
                let _ = self.reset_evt.read();
                log::info!("guest reset (i8042)");
                self.finish(Outcome::Reset);
            }
            VCPU => {
                let _ = self.shared.event_fd.read();
                for event in self.shared.take_events() {
                    match event {
                        VcpuEvent::PowerOff => self.finish(Outcome::PowerOff),
                        VcpuEvent::Reset => self.finish(Outcome::Reset),
                        VcpuEvent::Failed(msg) => self.finish(Outcome::Failed(msg)),
                    }
                }
            }
            SIGNAL => {
                if let Some(sig) = self.signals.read() {
                    self.finish(Outcome::Signal(sig));
                }
            }
            API => {
                if let Some(evt) = &self.api_evt {
                    let _ = evt.read();
                }
                self.api_pending = true;
            }
            STDIN => self.on_stdin(ops),
            DRAINED => self.on_drained(ops),
            _ => {}
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        let mut fds: Vec<(RawFd, u32)> = vec![
            (self.exit_evt.as_raw_fd(), EXIT),
            (self.reset_evt.as_raw_fd(), RESET),
            (self.shared.event_fd.as_raw_fd(), VCPU),
            (self.signals.as_raw_fd(), SIGNAL),
        ];
        if let Some(evt) = &self.api_evt {
            fds.push((evt.as_raw_fd(), API));
        }
        for (fd, tag) in fds {
            if let Err(e) = ops.add(Events::with_data_raw(fd, tag, EventSet::IN)) {
                log::error!("event loop: cannot watch fd {fd}: {e}");
            }
        }
        if let Some(input) = self.stdin.as_mut() {
            // epoll refuses regular files and /dev/null: those are read as the guest drains.
            input.reading = ops
                .add(Events::with_data_raw(input.fd, STDIN, EventSet::IN))
                .is_ok();
            input.pollable = input.reading;
            if let Err(e) = ops.add(Events::with_data_raw(
                input.drained.as_raw_fd(),
                DRAINED,
                EventSet::IN,
            )) {
                log::warn!("event loop: serial input back-pressure unavailable: {e}");
            }
            input.pump_unpollable();
        }
    }
}

/// What the controller watches besides the vCPUs.
pub struct LoopInputs {
    /// Guest poweroff.
    pub exit_evt: EventFd,
    /// Guest reset.
    pub reset_evt: EventFd,
    /// SIGTERM/SIGINT.
    pub signals: SignalFd,
    /// Serial input from standard input: the UART's drained event (the UART itself is set
    /// with [`EventLoop::set_serial`] once a VM exists).
    pub stdin: Option<EventFd>,
    /// Written by the API thread when a request is waiting.
    pub api_evt: Option<EventFd>,
}

impl Controller {
    /// A controller for the process's whole life.
    pub fn new(inputs: LoopInputs, shared: Arc<VcpuShared>) -> Self {
        Controller {
            exit_evt: inputs.exit_evt,
            reset_evt: inputs.reset_evt,
            signals: inputs.signals,
            shared,
            stdin: inputs.stdin.map(|drained| StdinInput {
                fd: libc::STDIN_FILENO,
                serial: None,
                drained,
                pending: Vec::new(),
                reading: false,
                pollable: false,
                eof: false,
            }),
            api_evt: inputs.api_evt,
            outcome: None,
            api_pending: false,
        }
    }
}

/// A subscriber of the event loop, shared with whoever else drives it.
pub type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

/// What one turn of the loop produced for the VMM to act on.
#[derive(Debug, Default)]
pub struct Turn {
    /// How the current boot ended, if it did.
    pub outcome: Option<Outcome>,
    /// API requests are waiting.
    pub api: bool,
}

/// The process's event loop: the controller and every device.
pub struct EventLoop {
    manager: EventManager<Subscriber>,
    controller: Arc<Mutex<Controller>>,
}

impl EventLoop {
    /// Creates the loop with its controller.
    pub fn new(controller: Controller) -> Result<Self> {
        let mut manager: EventManager<Subscriber> = EventManager::new()
            .map_err(|e| Error::Guest(format!("cannot create the event loop: {e}")))?;
        let controller = Arc::new(Mutex::new(controller));
        manager.add_subscriber(controller.clone());
        Ok(EventLoop {
            manager,
            controller,
        })
    }

    fn controller(&self) -> std::sync::MutexGuard<'_, Controller> {
        self.controller.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds device subscribers; returns their ids, for removal.
    pub fn add_subscribers(&mut self, subscribers: Vec<Subscriber>) -> Vec<SubscriberId> {
        subscribers
            .into_iter()
            .map(|s| self.manager.add_subscriber(s))
            .collect()
    }

    /// Removes subscribers added with [`EventLoop::add_subscribers`].
    pub fn remove_subscribers(&mut self, ids: &[SubscriberId]) {
        for id in ids {
            if let Err(e) = self.manager.remove_subscriber(*id) {
                log::warn!("event loop: cannot remove a subscriber: {e}");
            }
        }
    }

    /// Points serial input at the current VM's UART (or none).
    pub fn set_serial(&mut self, serial: Option<Arc<Mutex<Serial>>>) {
        let mut c = self.controller();
        if let Some(input) = c.stdin.as_mut() {
            input.serial = serial;
            // Let the loop offer held input to the new UART.
            let _ = input.drained.write(1);
        }
    }

    /// Runs until something needs the VMM: the guest stopped, a signal, or an API request.
    /// Devices are served all along.
    pub fn run_turn(&mut self) -> Result<Turn> {
        loop {
            self.manager
                .run()
                .map_err(|e| Error::Guest(format!("event loop failed: {e}")))?;
            let mut c = self.controller();
            let turn = Turn {
                outcome: c.outcome.take(),
                api: std::mem::take(&mut c.api_pending),
            };
            if turn.outcome.is_some() || turn.api {
                return Ok(turn);
            }
        }
    }
}
