//! `vm.snapshot` and `vm.restore` on the [`Vmm`]: what is saved from a paused VM and how a
//! process with no VM takes one over from a snapshot (see [`crate::snapshot`] for the files).

use std::path::PathBuf;
use std::time::Instant;

use crate::event_loop::EventLoop;
use crate::machine::{self, Machine};
use crate::snapshot::{self, LegacyState, SnapshotError, VirtioState, VmSnapshot};
use crate::vcpu;

use super::{Instance, OpError, VmState, Vmm};

fn lock<T: ?Sized>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Where a snapshot is written or read.
#[derive(Debug, Clone)]
pub enum SnapshotFiles {
    /// petrel's snapshot directory (`vm.snapshot`, `vm.restore`).
    Dir(PathBuf),
    /// A state file and a memory file (Firecracker's `snapshot_path` and `mem_file_path`).
    Two {
        /// The state file.
        state: PathBuf,
        /// The memory file.
        memory: PathBuf,
    },
}

impl std::fmt::Display for SnapshotFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SnapshotFiles::Dir(dir) => write!(f, "{}", dir.display()),
            SnapshotFiles::Two { state, memory } => {
                write!(f, "{} + {}", state.display(), memory.display())
            }
        }
    }
}

impl Vmm {
    /// Refuses to save a VM whose devices are on PCI: their configuration space, BAR
    /// placement and MSI-X state are not carried yet, and a restored guest would lose them.
    pub(crate) fn refuse_pci(&self, op: &str) -> Result<(), OpError> {
        let pci = self
            .config
            .as_ref()
            .is_some_and(|c| c.platform.transport == api::Transport::Pci);
        if pci {
            return Err(OpError::invalid(format!(
                "{op}: a VM with virtio-pci devices cannot be saved yet (PCI and MSI-X state \
                 is not carried); use platform.transport = mmio"
            )));
        }
        Ok(())
    }

    /// Everything of the (paused) VM but its memory.
    pub(crate) fn collect_state(&self, op: &'static str) -> Result<VmSnapshot, OpError> {
        self.refuse_pci(op)?;
        let (Some(cfg), Some(instance)) = (self.config.as_ref(), self.instance.as_ref()) else {
            return Err(OpError::state(op, self.state));
        };
        let Some(running) = instance.running.as_ref() else {
            return Err(OpError::state(op, self.state));
        };
        let machine = &instance.machine;
        let vcpus = vcpu::save_all(&running.threads, &self.shared).map_err(SnapshotError::Vcpus)?;
        let platform = running
            .vm
            .save_platform()
            .map_err(|source| SnapshotError::Hypervisor {
                what: "saving the interrupt controllers and clock".into(),
                source,
            })?;
        let legacy = LegacyState {
            serial: lock(&machine.legacy.serial).save(),
            rtc: lock(&machine.legacy.rtc).save(),
            i8042: lock(&machine.legacy.i8042).save(),
        };
        let virtio = machine
            .virtio
            .slots()
            .iter()
            .map(|slot| VirtioState {
                name: slot.name.clone(),
                transport: lock(&slot.transport).save(),
                limiters: save_limiters(&mut *lock(&slot.device)),
            })
            .collect();
        Ok(VmSnapshot {
            config: cfg.clone(),
            vcpus,
            platform,
            legacy,
            virtio,
            front_end: None,
        })
    }

    /// `vm.snapshot`: writes the paused VM into `destination_url` (`file:///dir`).
    pub fn snapshot(&mut self, destination_url: &str) -> Result<(), OpError> {
        let dir = snapshot::dir_from_url("destination_url", destination_url)?;
        self.snapshot_to(&SnapshotFiles::Dir(dir), None)
    }

    /// Writes the paused VM into `files`, with `front_end`'s own record of it.
    pub fn snapshot_to(
        &mut self,
        files: &SnapshotFiles,
        front_end: Option<serde_json::Value>,
    ) -> Result<(), OpError> {
        if self.state != VmState::Paused {
            return Err(OpError::invalid(format!(
                "vm.snapshot: the VM must be paused first (it is {})",
                self.state
            )));
        }
        self.refuse_pci("vm.snapshot")?;
        let started = Instant::now();
        let mut state = self.collect_state("vm.snapshot")?;
        state.front_end = front_end;
        let Some(machine) = self.machine() else {
            return Err(OpError::state("vm.snapshot", self.state));
        };
        let header = match files {
            SnapshotFiles::Dir(dir) => snapshot::write(dir, &state, &machine.memory)?,
            SnapshotFiles::Two { state: s, memory } => {
                snapshot::two_files::write(s, memory, &state, &machine.memory)?
            }
        };
        let data: u64 = header.memory.iter().map(|m| m.data_pages).sum();
        log::info!(
            "snapshot written to {files} in {} ms ({} MiB of RAM, {} MiB written)",
            started.elapsed().as_millis(),
            state.config.memory.size >> 20,
            (data * snapshot::memory::PAGE as u64) >> 20
        );
        Ok(())
    }

    /// `vm.restore`: builds the VM saved in `source_url` (`file:///dir`) in this process,
    /// which must have no VM. The restored VM is Paused until `vm.resume`.
    pub fn restore(
        &mut self,
        request: &api::compat::VmRestore,
        fds: Vec<std::os::fd::OwnedFd>,
        event_loop: &mut EventLoop,
    ) -> Result<(), OpError> {
        let dir = snapshot::dir_from_url("source_url", &request.source_url)?;
        let received = fds.len();
        self.restore_from(
            &SnapshotFiles::Dir(dir),
            request.prefault,
            |cfg| {
                redirect_serial(cfg, request.serial_file.as_deref());
                give_net_fds(cfg, request.net_fds.as_deref(), received)
            },
            event_loop,
        )?;
        // The devices hold copies; the config names these numbers, so they stay open.
        self.keep_fds(fds);
        Ok(())
    }

    /// Builds the VM saved in `files` in this process, which must have no VM; `adjust` may
    /// change the saved config first (a tap's name: Firecracker's `network_overrides`; new
    /// tap descriptors and serial file: `vm.restore`'s `net_fds` and `serial_file`). The
    /// restored VM is Paused. Returns the front end's record saved with it.
    pub fn restore_from(
        &mut self,
        files: &SnapshotFiles,
        prefault: bool,
        adjust: impl FnOnce(&mut api::VmConfig) -> Result<(), OpError>,
        event_loop: &mut EventLoop,
    ) -> Result<Option<serde_json::Value>, OpError> {
        if self.state != VmState::NotCreated {
            return Err(OpError::invalid(format!(
                "vm.restore: this petrel already has a VM (it is {}); restore into a petrel \
                 started without one",
                self.state
            )));
        }
        let started = Instant::now();
        let (header, mut state) = match files {
            SnapshotFiles::Dir(dir) => {
                let loaded = snapshot::read(dir)?;
                (loaded.header, loaded.state)
            }
            SnapshotFiles::Two { state, memory } => snapshot::two_files::read(state, memory)?,
        };
        if state.config.platform.transport == api::Transport::Pci {
            return Err(OpError::invalid(
                "vm.restore: the snapshot's devices are on virtio-pci, whose state petrel does \
                 not carry yet",
            ));
        }
        adjust(&mut state.config)?;
        self.check_config(&state.config)?;
        let memory = match files {
            SnapshotFiles::Dir(dir) => snapshot::memory::map(dir, &header.memory, prefault)?,
            SnapshotFiles::Two { memory, .. } => {
                snapshot::two_files::map(memory, &header, prefault)?
            }
        };
        // The snapshot's files are read or mapped; the VM's own files are opened below, and
        // its vCPU threads start there too (inheriting the restriction).
        self.landlock_before_boot(&state.config)?;
        let front_end = state.front_end.take();
        self.install(memory, state, event_loop)?;
        log::info!(
            "snapshot {files} restored in {} ms (paused; prefault {prefault})",
            started.elapsed().as_millis()
        );
        Ok(front_end)
    }

    /// Builds a saved VM over `memory` (already holding its RAM) in this process, which has
    /// no VM: devices from the config with their states, the hypervisor VM, the vCPUs parked.
    /// On failure nothing is left of it.
    pub(crate) fn install(
        &mut self,
        memory: arch::GuestMemoryMmap,
        state: VmSnapshot,
        event_loop: &mut EventLoop,
    ) -> Result<(), OpError> {
        let cfg = state.config.clone();
        let machine = Machine::with_memory(&cfg, memory, crate::logger::start_time(), &self.events)
            .map_err(|e| OpError::Boot(Box::new(e)))?;
        restore_devices(&machine, &state)?;
        super::attach_responders(&machine, self.net_responders.as_ref());
        let subscribers = event_loop.add_subscribers(machine.virtio.subscribers());
        self.events.clear();
        self.shared.reset_for_boot();
        self.shared.start_paused();
        let running = match machine::restore(
            self.hv.as_ref(),
            &machine,
            self.shared.clone(),
            &state.vcpus,
            &state.platform,
        ) {
            Ok(r) => r,
            Err(e) => {
                event_loop.remove_subscribers(&subscribers);
                return Err(OpError::Boot(Box::new(e)));
            }
        };
        event_loop.set_serial(Some(machine.legacy.serial.clone()));
        kick_queues(&machine);
        self.instance = Some(Instance {
            machine,
            subscribers,
            running: Some(running),
        });
        self.config = Some(cfg);
        self.boots += 1;
        self.state = VmState::Paused;
        Ok(())
    }
}

/// The budgets of `device`'s rate limiters (an unlimited slot saves as unlimited); empty
/// when it has none.
fn save_limiters(
    device: &mut dyn devices::virtio::VirtioDevice,
) -> Vec<devices::rate_limiter::RateLimiterState> {
    let limiters = device.rate_limiters();
    if limiters.iter().all(Option::is_none) {
        return Vec::new();
    }
    limiters
        .into_iter()
        .map(|l| l.map(|l| l.save()).unwrap_or_default())
        .collect()
}

/// Puts the descriptors of `net_fds` (numbers of the `received` descriptors, set by the API
/// server) into the interfaces saved as descriptors. Every such interface needs one: a saved
/// number means nothing in this process.
fn give_net_fds(
    cfg: &mut api::VmConfig,
    net_fds: Option<&[api::compat::RestoredNet]>,
    received: usize,
) -> Result<(), OpError> {
    let list = net_fds.unwrap_or_default();
    let named: usize = list.iter().map(|n| n.num_fds).sum();
    if named != received {
        return Err(OpError::invalid(format!(
            "vm.restore: net_fds names {named} descriptors, {received} came with the request \
             (SCM_RIGHTS)"
        )));
    }
    let nets = cfg.net.get_or_insert_with(Vec::new);
    for entry in list {
        let net = nets
            .iter_mut()
            .enumerate()
            .find(|(i, n)| n.id.clone().unwrap_or_else(|| format!("net{i}")) == entry.id)
            .map(|(_, n)| n)
            .ok_or_else(|| {
                OpError::invalid(format!(
                    "vm.restore: net_fds: the snapshot has no interface '{}'",
                    entry.id
                ))
            })?;
        if entry.num_fds != 1 {
            return Err(OpError::invalid(format!(
                "vm.restore: net_fds '{}': {} descriptors (petrel takes one tap per interface)",
                entry.id, entry.num_fds
            )));
        }
        net.fds = entry.fds.clone();
        net.tap = None;
    }
    for (i, n) in nets.iter().enumerate() {
        let given = list
            .iter()
            .any(|e| Some(&e.id) == n.id.as_ref() || e.id == format!("net{i}"));
        if n.fds.is_some() && !given {
            return Err(OpError::invalid(format!(
                "vm.restore: net[{i}] ({}) was given as a tap descriptor, which did not outlive \
                 its process: pass a new one in net_fds",
                n.id.as_deref().unwrap_or("no id")
            )));
        }
    }
    Ok(())
}

/// A serial port saved in `File` mode writes to `file` instead, when one is given (the
/// `serial_file` extension of `vm.restore` and `vm.receive-migration`).
pub(crate) fn redirect_serial(cfg: &mut api::VmConfig, file: Option<&std::path::Path>) {
    if let Some(file) = file {
        if cfg.serial.mode == api::SerialMode::File {
            cfg.serial.file = Some(file.to_path_buf());
        }
    }
}

/// Sets every device's saved state on the freshly built machine.
fn restore_devices(machine: &Machine, state: &VmSnapshot) -> Result<(), SnapshotError> {
    let device = |device: &str| {
        let device = device.to_string();
        move |reason: String| SnapshotError::Device { device, reason }
    };
    lock(&machine.legacy.serial)
        .restore(&state.legacy.serial)
        .map_err(|e| device("serial")(e.to_string()))?;
    lock(&machine.legacy.rtc)
        .restore(&state.legacy.rtc)
        .map_err(device("rtc"))?;
    lock(&machine.legacy.i8042).restore(&state.legacy.i8042);
    let slots = machine.virtio.slots();
    if slots.len() != state.virtio.len() {
        return Err(SnapshotError::Mismatch(format!(
            "{} virtio devices saved, the config makes {}",
            state.virtio.len(),
            slots.len()
        )));
    }
    for (slot, saved) in slots.iter().zip(&state.virtio) {
        if slot.name != saved.name {
            return Err(SnapshotError::Mismatch(format!(
                "virtio device '{}' saved where the config puts '{}'",
                saved.name, slot.name
            )));
        }
        lock(&slot.transport)
            .restore(&saved.transport)
            .map_err(|e| device(&slot.name)(e.to_string()))?;
        let mut dev = lock(&slot.device);
        for (limiter, state) in dev.rate_limiters().into_iter().zip(&saved.limiters) {
            if let Some(limiter) = limiter {
                limiter.restore(state);
            }
        }
    }
    Ok(())
}

/// Tells every active device it was restored (vsock: a transport reset event, as the host
/// side of its connections is gone), then kicks each of its queues once: a notification the
/// guest sent just before the snapshot may not have been served yet (a spurious kick finds
/// nothing to do).
fn kick_queues(machine: &Machine) {
    for slot in machine.virtio.slots() {
        let mut device = lock(&slot.device);
        if device.is_activated() {
            device.restored();
            for evt in device.queue_events() {
                if let Err(e) = evt.write(1) {
                    log::warn!("{}: cannot kick a queue after restore: {e}", slot.name);
                }
            }
        }
    }
}
