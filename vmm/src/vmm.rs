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

use crate::devices::LifecycleEvents;
use crate::event_loop::{EventLoop, Outcome};
use crate::vcpu::{self, VcpuShared};
use crate::vm::{self, Machine, RunningVm};
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
        crate::run::preflight(cfg).map_err(|e| OpError::bad(crate::error_chain(&e)))?;
        let max = self.hv.max_vcpus();
        if cfg.cpus.boot_vcpus > max {
            return Err(OpError::bad(format!(
                "cpus.boot_vcpus: {} is more than {} allows ({max})",
                cfg.cpus.boot_vcpus, self.selection.kind
            )));
        }
        check_balloon(cfg, self.hv.as_ref())
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
            return Err(Error::Guest("no VM config".into()));
        };
        if self.instance.is_none() {
            let machine = Machine::new(&cfg, crate::logger::start_time(), &self.events)?;
            let subscribers = event_loop.add_subscribers(machine.virtio.subscribers());
            event_loop.set_serial(Some(machine.legacy.serial.clone()));
            self.instance = Some(Instance {
                machine,
                subscribers,
                running: None,
            });
        }
        let Some(instance) = self.instance.as_mut() else {
            return Err(Error::Guest("no machine".into()));
        };
        self.events.clear();
        self.shared.reset_for_boot();
        let running = vm::boot(
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
            Outcome::Failed(msg) => {
                self.stop();
                self.state = VmState::Shutdown;
                if exit {
                    return Err(Error::Guest(msg));
                }
                log::error!("VM stopped: {msg}");
            }
        }
        Ok(Next::Continue)
    }
}

/// Refuses a balloon where the hypervisor pins guest memory (MSHV): releasing a page the
/// guest gave back with `MADV_DONTNEED` would pull it from under the hypervisor.
fn check_balloon(
    cfg: &VmConfig,
    hv: &dyn hypervisor::Hypervisor,
) -> std::result::Result<(), OpError> {
    if cfg.balloon.is_some() && hv.pins_guest_memory() {
        return Err(OpError::bad(format!(
            "balloon: not available with {}: it pins guest memory, so pages the guest gives \
             back cannot be returned to the host",
            hv.kind()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hypervisor that only answers what `check_balloon` asks.
    struct Pinning(bool);

    impl hypervisor::Hypervisor for Pinning {
        fn kind(&self) -> hypervisor::Kind {
            if self.0 {
                hypervisor::Kind::Mshv
            } else {
                hypervisor::Kind::Kvm
            }
        }
        fn create_vm(&self) -> hypervisor::Result<Arc<dyn hypervisor::Vm>> {
            Err(hypervisor::Error::Unavailable("test".into()))
        }
        fn supported_cpuid(&self) -> hypervisor::Result<Vec<hypervisor::CpuidEntry>> {
            Ok(Vec::new())
        }
        fn max_vcpus(&self) -> u32 {
            1
        }
        fn pins_guest_memory(&self) -> bool {
            self.0
        }
    }

    #[test]
    fn a_balloon_is_refused_where_guest_memory_is_pinned() {
        let mut cfg = VmConfig::new("/kernel".into());
        assert!(
            check_balloon(&cfg, &Pinning(true)).is_ok(),
            "no balloon, no refusal"
        );
        cfg.balloon = Some(api::BalloonConfig {
            size: 0,
            deflate_on_oom: false,
            statistics_polling_interval_s: 0,
        });
        assert!(check_balloon(&cfg, &Pinning(false)).is_ok());
        let e = check_balloon(&cfg, &Pinning(true)).unwrap_err();
        assert!(
            e.message.contains("balloon") && e.message.contains("mshv"),
            "{}",
            e.message
        );
    }
}
