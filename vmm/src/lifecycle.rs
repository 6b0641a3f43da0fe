//! The VM's life in this process: the state machine the command line and the API drive.
//!
//! States follow Cloud Hypervisor's: no VM, `Created` (a config), `Running`, `Paused`,
//! `Shutdown` (the guest or a caller stopped it; it can be booted again). Every operation
//! checks the state first and names it when refusing.

use std::fmt;
use std::sync::Arc;

use api::VmConfig;
use event_manager::SubscriberId;
use hypervisor::{Hypervisor, Selection};

use crate::event_loop::{EventLoop, Outcome};
use crate::legacy::LifecycleEvents;
use crate::machine::{self, Machine, RunningVm};
use crate::vcpu::{self, VcpuShared};
use crate::{Error, Result};

/// Where the VM is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmState {
    /// No VM has been created.
    NotCreated,
    /// A config is set; not booted yet.
    Created,
    /// vCPUs are running.
    Running,
    /// vCPUs are parked; devices keep being served.
    Paused,
    /// Stopped by the guest or a caller; can be booted again.
    Shutdown,
}

impl fmt::Display for VmState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            VmState::NotCreated => "NotCreated",
            VmState::Created => "Created",
            VmState::Running => "Running",
            VmState::Paused => "Paused",
            VmState::Shutdown => "Shutdown",
        })
    }
}

/// A refused or failed operation, with the HTTP status the API answers.
#[derive(Debug)]
pub struct OpError {
    /// HTTP status (4xx for the caller's mistakes, 5xx for petrel's).
    pub status: u16,
    /// One line saying why.
    pub message: String,
}

impl fmt::Display for OpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for OpError {}

impl OpError {
    /// The operation is not allowed in `state`.
    pub fn state(op: &str, state: VmState) -> Self {
        let status = if state == VmState::NotCreated {
            404
        } else {
            409
        };
        OpError {
            status,
            message: format!("{op}: not allowed while the VM is {state}"),
        }
    }

    /// A bad request.
    pub fn bad(message: impl Into<String>) -> Self {
        OpError {
            status: 400,
            message: message.into(),
        }
    }

    fn internal(e: Error) -> Self {
        OpError {
            status: 500,
            message: crate::error_chain(&e),
        }
    }
}

/// What the VMM should do after handling something.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Keep running.
    Continue,
    /// End the process with this status.
    Exit(i32),
}

/// A built VM: its machine (kept across guest reboots) and, while booted, its vCPUs.
struct Instance {
    machine: Machine,
    subscribers: Vec<SubscriberId>,
    running: Option<RunningVm>,
}

/// The VMM of one VM.
pub struct Vmm {
    hv: Box<dyn Hypervisor>,
    selection: Selection,
    no_reboot: bool,
    /// Without an API socket the process ends when the guest stops.
    exit_when_stopped: bool,
    config: Option<VmConfig>,
    instance: Option<Instance>,
    state: VmState,
    shared: Arc<VcpuShared>,
    events: LifecycleEvents,
    boots: u32,
    /// Descriptors received with API calls (tap fds) that the config refers to by number.
    kept_fds: Vec<std::os::fd::OwnedFd>,
}

impl Vmm {
    /// A VMM with no VM yet.
    pub fn new(
        hv: Box<dyn Hypervisor>,
        selection: Selection,
        shared: Arc<VcpuShared>,
        events: LifecycleEvents,
        no_reboot: bool,
        exit_when_stopped: bool,
    ) -> Self {
        Vmm {
            hv,
            selection,
            no_reboot,
            exit_when_stopped,
            config: None,
            instance: None,
            state: VmState::NotCreated,
            shared,
            events,
            boots: 0,
            kept_fds: Vec::new(),
        }
    }

    /// Keeps descriptors the config refers to open until the VM is deleted.
    pub fn keep_fds(&mut self, fds: Vec<std::os::fd::OwnedFd>) {
        self.kept_fds.extend(fds);
    }

    /// The current state.
    pub fn state(&self) -> VmState {
        self.state
    }

    /// The hypervisor in use and why.
    pub fn selection(&self) -> &Selection {
        &self.selection
    }

    /// The VM's config, if created.
    pub fn config(&self) -> Option<&VmConfig> {
        self.config.as_ref()
    }

    /// The built machine, if booted at least once.
    pub fn machine(&self) -> Option<&Machine> {
        self.instance.as_ref().map(|i| &i.machine)
    }

    /// Checks a config against this host and hypervisor.
    pub fn check_config(&self, cfg: &VmConfig) -> std::result::Result<(), OpError> {
        crate::preflight::check(cfg).map_err(|e| OpError::bad(crate::error_chain(&e)))?;
        let max = self.hv.max_vcpus();
        if cfg.cpus.boot_vcpus > max {
            return Err(OpError::bad(format!(
                "cpus.boot_vcpus: {} is more than {} allows ({max})",
                cfg.cpus.boot_vcpus, self.selection.kind
            )));
        }
        Ok(())
    }

    /// `vm.create`: sets the config.
    pub fn create(&mut self, cfg: VmConfig) -> std::result::Result<(), OpError> {
        if self.state != VmState::NotCreated {
            return Err(OpError::state("vm.create", self.state));
        }
        self.check_config(&cfg)?;
        self.config = Some(cfg);
        self.state = VmState::Created;
        Ok(())
    }

    /// Changes the config before boot (`vm.add-*`, `vm.remove-device`).
    pub fn edit_config(
        &mut self,
        op: &str,
        edit: impl FnOnce(&mut VmConfig) -> std::result::Result<(), OpError>,
    ) -> std::result::Result<(), OpError> {
        if self.state != VmState::Created {
            let mut e = OpError::state(op, self.state);
            if matches!(self.state, VmState::Running | VmState::Paused) {
                e.message
                    .push_str(" (hotplug needs virtio-pci, which petrel does not have yet)");
            }
            return Err(e);
        }
        let Some(cfg) = self.config.as_ref() else {
            return Err(OpError::state(op, self.state));
        };
        let mut new = cfg.clone();
        edit(&mut new)?;
        self.check_config(&new)?;
        self.config = Some(new);
        Ok(())
    }

    /// `vm.boot`: builds the machine if needed and starts the vCPUs.
    pub fn boot(&mut self, event_loop: &mut EventLoop) -> std::result::Result<(), OpError> {
        if !matches!(self.state, VmState::Created | VmState::Shutdown) {
            return Err(OpError::state("vm.boot", self.state));
        }
        self.start(event_loop).map_err(OpError::internal)
    }

    fn start(&mut self, event_loop: &mut EventLoop) -> Result<()> {
        let Some(cfg) = self.config.clone() else {
            return Err(OpError::state("vm.boot", VmState::NotCreated).into());
        };
        let instance = match &mut self.instance {
            Some(instance) => instance,
            slot @ None => {
                let machine = Machine::new(&cfg, crate::logger::start_time(), &self.events)?;
                let subscribers = event_loop.add_subscribers(machine.virtio.subscribers());
                event_loop.set_serial(Some(machine.legacy.serial.clone()));
                slot.insert(Instance {
                    machine,
                    subscribers,
                    running: None,
                })
            }
        };
        self.events.clear();
        self.shared.reset_for_boot();
        let running = machine::boot(
            &cfg,
            self.hv.as_ref(),
            &instance.machine,
            self.shared.clone(),
        )?;
        instance.running = Some(running);
        self.boots += 1;
        self.state = VmState::Running;
        log::info!(
            "guest started (boot {}, {} vCPUs, {} MiB)",
            self.boots,
            cfg.cpus.boot_vcpus,
            cfg.memory.size >> 20
        );
        Ok(())
    }

    /// Stops the vCPUs and closes the hypervisor VM; the machine stays for a later boot.
    fn stop(&mut self) {
        if let Some(instance) = self.instance.as_mut() {
            if let Some(running) = instance.running.take() {
                vcpu::stop_all(running.threads, &self.shared);
                log::debug!("vCPUs stopped");
                drop(running.vm);
                log::debug!("VM closed");
            }
            instance.machine.virtio.reset_all();
        }
    }

    /// `vm.shutdown`: stops the VM (it can be booted again).
    pub fn shutdown(&mut self) -> std::result::Result<(), OpError> {
        if !matches!(self.state, VmState::Running | VmState::Paused) {
            return Err(OpError::state("vm.shutdown", self.state));
        }
        self.stop();
        self.state = VmState::Shutdown;
        log::info!("VM shut down by request");
        Ok(())
    }

    /// `vm.reboot`: restarts the guest with the same config.
    pub fn reboot(&mut self, event_loop: &mut EventLoop) -> std::result::Result<(), OpError> {
        if !matches!(self.state, VmState::Running | VmState::Paused) {
            return Err(OpError::state("vm.reboot", self.state));
        }
        self.stop();
        self.state = VmState::Shutdown;
        self.start(event_loop).map_err(OpError::internal)
    }

    /// `vm.pause`.
    pub fn pause(&mut self) -> std::result::Result<(), OpError> {
        if self.state != VmState::Running {
            return Err(OpError::state("vm.pause", self.state));
        }
        if let Some(running) = self.instance.as_ref().and_then(|i| i.running.as_ref()) {
            if !vcpu::pause_all(&running.threads, &self.shared) {
                log::warn!("vm.pause: a vCPU did not park in time; it will when it next exits");
            }
        }
        self.state = VmState::Paused;
        Ok(())
    }

    /// `vm.resume`.
    pub fn resume(&mut self) -> std::result::Result<(), OpError> {
        if self.state != VmState::Paused {
            return Err(OpError::state("vm.resume", self.state));
        }
        vcpu::resume_all(&self.shared);
        self.state = VmState::Running;
        Ok(())
    }

    /// `vm.delete`: stops the VM if needed and forgets it.
    pub fn delete(&mut self, event_loop: &mut EventLoop) -> std::result::Result<(), OpError> {
        if self.state == VmState::NotCreated {
            return Err(OpError::state("vm.delete", self.state));
        }
        self.stop();
        if let Some(instance) = self.instance.take() {
            event_loop.remove_subscribers(&instance.subscribers);
            event_loop.set_serial(None);
        }
        self.config = None;
        self.kept_fds.clear();
        self.state = VmState::NotCreated;
        Ok(())
    }

    /// `vm.resize` with `desired_balloon`: sets the balloon target.
    pub fn set_balloon(&mut self, bytes: u64) -> std::result::Result<(), OpError> {
        let Some(balloon) = self.machine().and_then(|m| m.virtio.balloon.clone()) else {
            return Err(OpError::bad(
                "desired_balloon: the VM has no balloon (or has not been booted)",
            ));
        };
        let mut b = balloon.lock().unwrap_or_else(|e| e.into_inner());
        b.set_target_mib(bytes >> 20)
            .map_err(|e| OpError::bad(format!("desired_balloon: {e}")))
    }

    /// `vm.power-button`: presses the ACPI power button; the guest shuts itself down.
    pub fn power_button(&mut self) -> std::result::Result<(), OpError> {
        if !matches!(self.state(), VmState::Running) {
            return Err(OpError::state("vm.power-button", self.state()));
        }
        let Some(machine) = self.machine() else {
            return Err(OpError::state("vm.power-button", self.state()));
        };
        machine.legacy.power_button.press().map_err(|e| OpError {
            status: 500,
            message: format!("vm.power-button: {e}"),
        })
    }

    /// Stops everything before the process exits.
    pub fn teardown(&mut self) {
        self.stop();
    }

    /// Acts on how the current boot ended.
    pub fn on_outcome(&mut self, outcome: Outcome, event_loop: &mut EventLoop) -> Result<Next> {
        let exit = self.exit_when_stopped;
        match outcome {
            Outcome::Signal(sig) => {
                log::info!("exiting: stopped by signal {sig}");
                self.teardown();
                return Ok(Next::Exit(0));
            }
            Outcome::PowerOff => {
                self.stop();
                self.state = VmState::Shutdown;
                log::info!("guest powered off");
                if exit {
                    log::info!("exiting: guest powered off");
                    return Ok(Next::Exit(0));
                }
            }
            Outcome::Reset if self.no_reboot => {
                self.stop();
                self.state = VmState::Shutdown;
                if exit {
                    log::info!("exiting: guest reset and --no-reboot was given");
                    return Ok(Next::Exit(0));
                }
                log::info!("guest reset; --no-reboot: VM shut down");
            }
            Outcome::Reset => {
                log::info!("rebooting the guest");
                self.stop();
                self.state = VmState::Shutdown;
                self.start(event_loop)?;
            }
            Outcome::Failed(failure) => {
                self.stop();
                self.state = VmState::Shutdown;
                if exit {
                    return Err(failure.into());
                }
                log::error!("VM stopped: {}", crate::error_chain(&failure));
            }
        }
        Ok(Next::Continue)
    }
}
