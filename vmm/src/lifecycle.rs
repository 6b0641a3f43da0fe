//! The VM's life in this process: the state machine the command line and the API drive.
//!
//! States follow Cloud Hypervisor's: no VM, `Created` (a config), `Running`, `Paused`,
//! `Shutdown` (the guest or a caller stopped it; it can be booted again). Every operation
//! checks the state first and names it when refusing.

use std::sync::Arc;

use api::compat::VmResize;
use api::request::VmmRequest;
use api::VmConfig;
use event_manager::SubscriberId;
use hypervisor::{Hypervisor, Selection};

use crate::event_loop::{EventLoop, Outcome};
use crate::legacy::LifecycleEvents;
use crate::machine::{self, Machine, RunningVm};
use crate::vcpu::{self, VcpuShared};
use crate::Result;

mod migration;
mod reply;
mod resize_disk;
mod snapshot;
#[cfg(test)]
mod tests;

pub use reply::{DeviceCounters, EndReason, ErrorKind, Next, OpError, Reply, VmInfo, VmState};
pub use snapshot::SnapshotFiles;

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
    /// Why the last boot ended (cleared by the next boot).
    end_reason: Option<EndReason>,
    /// Descriptors received with API calls (tap fds) that the config refers to by number.
    kept_fds: Vec<std::os::fd::OwnedFd>,
    /// Landlock to apply at the first boot (a VM that came through the API).
    landlock: Option<crate::landlock::Deferred>,
    /// What answers some of the guest's frames on which net device (the MMDS).
    net_responders: Option<NetResponders>,
}

/// Makes the local responder a net device gets, by the device's id (None: it has none). The
/// Firecracker front end gives the MMDS to the interfaces its config names.
pub type NetResponders =
    Arc<dyn Fn(&str) -> Option<Box<dyn devices::virtio::net::LocalResponder>> + Send + Sync>;

/// Gives each net device of `machine` its local responder.
fn attach_responders(machine: &Machine, responders: Option<&NetResponders>) {
    for (id, net) in &machine.virtio.nets {
        let local = responders.and_then(|f| f(id));
        if local.is_some() {
            log::info!("{id}: the MMDS answers on this interface");
        }
        net.lock()
            .unwrap_or_else(|e| e.into_inner())
            .set_local_responder(local);
    }
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
            end_reason: None,
            kept_fds: Vec::new(),
            landlock: None,
            net_responders: None,
        }
    }

    /// Records in the config a change made to a running device (a disk's backing file, a
    /// rate limiter), so that what is rebuilt from the config (a snapshot's restore) has it.
    pub fn record_device_change(&mut self, edit: impl FnOnce(&mut VmConfig)) {
        if let Some(cfg) = self.config.as_mut() {
            edit(cfg);
        }
    }

    /// Sets what answers some of the guest's frames on which net device; applied to the
    /// devices at once if the machine is built, and to every machine built later.
    pub fn set_net_responders(&mut self, responders: Option<NetResponders>) {
        self.net_responders = responders;
        if let Some(instance) = &self.instance {
            attach_responders(&instance.machine, self.net_responders.as_ref());
        }
    }

    /// Restricts the main thread's files at the first boot or restore (see
    /// [`crate::landlock::Deferred`]).
    pub fn set_landlock(&mut self, deferred: crate::landlock::Deferred) {
        self.landlock = Some(deferred);
    }

    /// Applies (or checks against) the deferred Landlock restriction for `cfg`.
    pub(crate) fn landlock_before_boot(
        &mut self,
        cfg: &VmConfig,
    ) -> std::result::Result<(), OpError> {
        match self.landlock.as_mut() {
            Some(d) => d.before_boot(cfg).map_err(OpError::invalid),
            None => Ok(()),
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
        if let Some(d) = &self.landlock {
            d.check(cfg).map_err(OpError::invalid)?;
        }
        crate::preflight::check(cfg).map_err(|e| OpError::invalid(crate::error_chain(&e)))?;
        let max = self.hv.max_vcpus();
        if cfg.cpus.boot_vcpus > max {
            return Err(OpError::invalid(format!(
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
        op: &'static str,
        edit: impl FnOnce(&mut VmConfig) -> std::result::Result<(), OpError>,
    ) -> std::result::Result<(), OpError> {
        if self.state != VmState::Created {
            return Err(match self.state {
                VmState::Running | VmState::Paused => OpError::Hotplug {
                    op,
                    state: self.state,
                },
                state => OpError::state(op, state),
            });
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
        if let Some(cfg) = self.config.clone() {
            self.landlock_before_boot(&cfg)?;
        }
        self.start(event_loop)
            .map_err(|e| OpError::Boot(Box::new(e)))
    }

    fn start(&mut self, event_loop: &mut EventLoop) -> Result<()> {
        let Some(cfg) = self.config.clone() else {
            return Err(OpError::state("vm.boot", VmState::NotCreated).into());
        };
        let instance = match &mut self.instance {
            Some(instance) => instance,
            slot @ None => {
                let machine = Machine::new(&cfg, crate::logger::start_time(), &self.events)?;
                attach_responders(&machine, self.net_responders.as_ref());
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
        self.end_reason = None;
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
                instance.machine.unwire(running.vm.as_ref());
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
        self.end_reason = Some(EndReason::Shutdown);
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
        self.start(event_loop)
            .map_err(|e| OpError::Boot(Box::new(e)))
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
            return Err(OpError::invalid(
                "desired_balloon: the VM has no balloon (or has not been booted)",
            ));
        };
        let mut b = balloon.lock().unwrap_or_else(|e| e.into_inner());
        b.set_target_mib(bytes >> 20)
            .map_err(|e| OpError::invalid(format!("desired_balloon: {e}")))
    }

    /// `vm.power-button`: presses the ACPI power button; the guest shuts itself down.
    pub fn power_button(&mut self) -> std::result::Result<(), OpError> {
        if !matches!(self.state(), VmState::Running) {
            return Err(OpError::state("vm.power-button", self.state()));
        }
        let Some(machine) = self.machine() else {
            return Err(OpError::state("vm.power-button", self.state()));
        };
        machine
            .legacy
            .power_button
            .press()
            .map_err(OpError::PowerButton)
    }

    /// Handles one request of the API (or of the command line).
    pub fn handle(
        &mut self,
        request: VmmRequest,
        event_loop: &mut EventLoop,
    ) -> std::result::Result<Reply, OpError> {
        let done = |()| Reply::Done;
        match request {
            VmmRequest::Ping => Ok(Reply::Ping(self.selection.clone())),
            VmmRequest::ShutdownVmm => {
                self.teardown();
                log::info!("exiting: vmm.shutdown");
                Ok(Reply::Exit(0))
            }
            VmmRequest::Create(cfg) => self.create(*cfg).map(done),
            VmmRequest::Boot => self.boot(event_loop).map(done),
            VmmRequest::Info => self.info().map(|i| Reply::Info(Box::new(i))),
            VmmRequest::Pause => self.pause().map(done),
            VmmRequest::Resume => self.resume().map(done),
            VmmRequest::Reboot => self.reboot(event_loop).map(done),
            VmmRequest::Shutdown => self.shutdown().map(done),
            VmmRequest::PowerButton => self.power_button().map(done),
            VmmRequest::Delete => self.delete(event_loop).map(done),
            VmmRequest::Counters => self.counters().map(Reply::Counters),
            VmmRequest::Resize(r) => self.resize(&r).map(done),
            VmmRequest::ResizeDisk(r) => self.resize_disk(&r).map(done),
            VmmRequest::AddDisk(disk) => {
                let id = disk.id.clone();
                self.edit_config("vm.add-disk", |cfg| {
                    cfg.disks.get_or_insert_with(Vec::new).push(disk);
                    Ok(())
                })?;
                Ok(Reply::Added(id))
            }
            VmmRequest::AddNet { net, fds } => {
                let id = net.id.clone();
                // The fds stay open (owned by the Vmm) only if the device is added; otherwise
                // dropping them closes them.
                self.edit_config("vm.add-net", |cfg| {
                    cfg.net.get_or_insert_with(Vec::new).push(net);
                    Ok(())
                })?;
                self.keep_fds(fds);
                Ok(Reply::Added(id))
            }
            VmmRequest::AddVsock(vsock) => {
                let id = vsock.id.clone();
                self.edit_config("vm.add-vsock", |cfg| {
                    if cfg.vsock.is_some() {
                        return Err(OpError::invalid(
                            "vm.add-vsock: the VM already has a vsock device",
                        ));
                    }
                    cfg.vsock = Some(vsock);
                    Ok(())
                })?;
                Ok(Reply::Added(id))
            }
            VmmRequest::RemoveDevice(r) => self.remove_device(&r.id).map(done),
            VmmRequest::Snapshot(s) => self.snapshot(&s.destination_url).map(done),
            VmmRequest::Restore { restore: r, fds } => {
                self.restore(&r, fds, event_loop)?;
                if r.resume {
                    self.resume()?;
                }
                Ok(Reply::Done)
            }
            VmmRequest::SendMigration(m) => {
                self.send_migration(&m.destination_url)?;
                log::info!("exiting: the VM was migrated");
                Ok(Reply::Exit(0))
            }
            VmmRequest::ReceiveMigration(m) => self.receive_migration(&m, event_loop).map(done),
        }
    }

    /// `vm.info`.
    pub fn info(&self) -> std::result::Result<VmInfo, OpError> {
        let Some(cfg) = self.config() else {
            return Err(OpError::state("vm.info", VmState::NotCreated));
        };
        let balloon = self
            .machine()
            .and_then(|m| m.virtio.balloon.as_ref())
            .map(|b| b.lock().unwrap_or_else(|e| e.into_inner()).actual_mib() << 20)
            .unwrap_or(0);
        Ok(VmInfo {
            config: cfg.clone(),
            state: self.state,
            memory_actual_size: cfg.memory.size.saturating_sub(balloon),
            hypervisor: self.selection.kind,
            end_reason: self.end_reason,
        })
    }

    /// `vm.counters`: every virtio device's counters (none before the first boot).
    pub fn counters(&self) -> std::result::Result<Vec<DeviceCounters>, OpError> {
        if self.config().is_none() {
            return Err(OpError::state("vm.counters", VmState::NotCreated));
        }
        let Some(machine) = self.machine() else {
            return Ok(Vec::new());
        };
        Ok(machine.virtio.counters())
    }

    /// `vm.resize`: only the balloon target can change.
    pub fn resize(&mut self, r: &VmResize) -> std::result::Result<(), OpError> {
        let Some(cfg) = self.config() else {
            return Err(OpError::state("vm.resize", VmState::NotCreated));
        };
        match r.balloon_target(cfg) {
            Ok(Some(target)) => self.set_balloon(target),
            Ok(None) => Ok(()),
            Err(e) => Err(OpError::invalid(format!("vm.resize: {e}"))),
        }
    }

    /// `vm.remove-device`: removes the disk, interface or vsock device with this id.
    pub fn remove_device(&mut self, id: &str) -> std::result::Result<(), OpError> {
        self.edit_config("vm.remove-device", |cfg| {
            let count = |cfg: &VmConfig| {
                (
                    cfg.disks.as_ref().map_or(0, Vec::len),
                    cfg.net.as_ref().map_or(0, Vec::len),
                    cfg.vsock.is_some(),
                )
            };
            let before = count(cfg);
            if let Some(d) = cfg.disks.as_mut() {
                d.retain(|d| d.id.as_deref() != Some(id));
            }
            if let Some(n) = cfg.net.as_mut() {
                n.retain(|n| n.id.as_deref() != Some(id));
            }
            if cfg
                .vsock
                .as_ref()
                .is_some_and(|v| v.id.as_deref() == Some(id))
            {
                cfg.vsock = None;
            }
            if before == count(cfg) {
                return Err(OpError::NoSuchDevice { id: id.to_string() });
            }
            Ok(())
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
                self.end_reason = Some(EndReason::PowerOff);
                log::info!("guest powered off");
                if exit {
                    log::info!("exiting: guest powered off");
                    return Ok(Next::Exit(0));
                }
            }
            Outcome::Reset if self.no_reboot => {
                self.stop();
                self.state = VmState::Shutdown;
                self.end_reason = Some(EndReason::Reset);
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
                self.end_reason = Some(if failure.is_triple_fault() {
                    EndReason::TripleFault
                } else {
                    EndReason::InternalError
                });
                if exit {
                    return Err(failure.into());
                }
                log::error!("VM stopped: {}", crate::error_chain(&failure));
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
        return Err(OpError::invalid(format!(
            "balloon: not available with {}: it pins guest memory, so pages the guest gives \
             back cannot be returned to the host",
            hv.kind()
        )));
    }
    Ok(())
}
