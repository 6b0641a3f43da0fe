//! The event loop of the process (the main thread): one event-manager loop serving the
//! lifecycle [`Controller`] (guest poweroff and reset, vCPU failures, SIGTERM/SIGINT, API
//! requests waiting), the serial input ([`SerialInput`]) and every virtio device.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};

use devices::serial::Serial;
use event_manager::{
    EventManager, EventOps, Events, MutEventSubscriber, SubscriberId, SubscriberOps,
};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use crate::serial_input::SerialInput;
use crate::signals::SignalFd;
use crate::vcpu::{VcpuEvent, VcpuFailure, VcpuShared};
use crate::{Error, Result};

/// How a boot of the guest ended.
#[derive(Debug)]
pub enum Outcome {
    /// The guest powered off.
    PowerOff,
    /// The guest asked for a reset.
    Reset,
    /// petrel got SIGTERM or SIGINT (the signal number).
    Signal(i32),
    /// A vCPU failed.
    Failed(VcpuFailure),
}

const EXIT: u32 = 1;
const RESET: u32 = 2;
const VCPU: u32 = 3;
const SIGNAL: u32 = 4;
const API: u32 = 5;

/// The lifecycle subscriber.
pub struct Controller {
    exit_evt: EventFd,
    reset_evt: EventFd,
    signals: SignalFd,
    shared: Arc<VcpuShared>,
    api_evt: Option<EventFd>,
    outcome: Option<Outcome>,
    api_pending: bool,
}

impl Controller {
    fn finish(&mut self, outcome: Outcome) {
        if self.outcome.is_none() {
            self.outcome = Some(outcome);
        }
    }
}

impl MutEventSubscriber for Controller {
    fn process(&mut self, events: Events, _ops: &mut EventOps) {
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
                        VcpuEvent::Failed(failure) => self.finish(Outcome::Failed(failure)),
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
    serial_input: Option<Arc<Mutex<SerialInput>>>,
}

impl EventLoop {
    /// Creates the loop with its controller and, with `--serial stdout`, the serial input.
    pub fn new(controller: Controller, serial_input: Option<SerialInput>) -> Result<Self> {
        let mut manager: EventManager<Subscriber> =
            EventManager::new().map_err(Error::EventLoop)?;
        let controller = Arc::new(Mutex::new(controller));
        manager.add_subscriber(controller.clone());
        let serial_input = serial_input.map(|input| Arc::new(Mutex::new(input)));
        if let Some(input) = &serial_input {
            manager.add_subscriber(input.clone());
        }
        Ok(EventLoop {
            manager,
            controller,
            serial_input,
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
        if let Some(input) = &self.serial_input {
            input
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .set_serial(serial);
        }
    }

    /// Runs until something needs the VMM: the guest stopped, a signal, or an API request.
    /// Devices are served all along.
    pub fn run_turn(&mut self) -> Result<Turn> {
        loop {
            self.manager.run().map_err(Error::EventLoop)?;
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
