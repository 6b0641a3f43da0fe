//! `vm.send-migration` and `vm.receive-migration` on the [`Vmm`]: pre-copy over a Unix
//! socket with the hypervisor's dirty log (the stream is [`crate::migration`]).
//!
//! The source copies all memory while the guest runs, then rounds of the pages it dirtied
//! until a round is small enough, pauses, sends the last dirty pages and the state, and exits
//! once the destination says it runs the VM. Any failure leaves the source as it was (dirty
//! log off, running again if it was). The event loop is busy during the copy, so devices wait
//! (and write no guest memory the dirty log would miss).

use std::os::unix::net::UnixListener;
use std::time::Instant;

use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

use crate::event_loop::EventLoop;
use crate::migration::{self, MigrationError, Sender, PAGE};

use super::{OpError, VmState, Vmm};

/// Pre-copy stops when a round has at most this many bytes left (then the VM pauses).
const DOWNTIME_BYTES: usize = 8 << 20;
/// Pre-copy rounds after the full copy, at most.
const MAX_ROUNDS: u32 = 8;

impl From<MigrationError> for OpError {
    fn from(e: MigrationError) -> Self {
        match e {
            MigrationError::Url(m) => OpError::Invalid(m),
            other => OpError::Invalid(crate::error_chain(&other)),
        }
    }
}

/// What a migration did, for the log.
struct Stats {
    rounds: u32,
    bytes: u64,
    downtime_ms: u128,
}

impl Vmm {
    /// Turns the dirty log of every memory slot on or off.
    fn dirty_log(&self, on: bool) -> Result<(), MigrationError> {
        let Some(instance) = self.instance.as_ref() else {
            return Ok(());
        };
        let Some(running) = instance.running.as_ref() else {
            return Ok(());
        };
        for (slot, region) in instance.machine.memory.iter().enumerate() {
            // SAFETY: the same live mapping `machine::map_memory` gave this slot; guest
            // memory outlives the hypervisor VM.
            unsafe {
                running.vm.set_dirty_log(
                    slot as u32,
                    region.start_addr().0,
                    region.as_ptr() as u64,
                    region.len(),
                    on,
                )
            }
            .map_err(|source| MigrationError::Hypervisor {
                what: format!("dirty log of memory slot {slot}"),
                source,
            })?;
        }
        Ok(())
    }

    /// Each slot's dirty bitmap since the last call, merged into `acc`.
    fn take_dirty(&self, acc: &mut [Vec<u64>]) -> Result<usize, MigrationError> {
        let (Some(instance), mut count) = (self.instance.as_ref(), 0) else {
            return Ok(0);
        };
        let Some(running) = instance.running.as_ref() else {
            return Ok(0);
        };
        for ((slot, region), merged) in instance.machine.memory.iter().enumerate().zip(acc) {
            let bits = running
                .vm
                .dirty_log(slot as u32, region.len())
                .map_err(|source| MigrationError::Hypervisor {
                    what: format!("reading the dirty log of memory slot {slot}"),
                    source,
                })?;
            merged.resize(bits.len().max(merged.len()), 0);
            for (m, b) in merged.iter_mut().zip(bits) {
                *m |= b;
            }
            count += merged
                .iter()
                .map(|w| w.count_ones() as usize)
                .sum::<usize>();
        }
        Ok(count)
    }

    /// Sends the pages set in `dirty` and clears it.
    fn send_dirty(&self, tx: &mut Sender, dirty: &mut [Vec<u64>]) -> Result<(), MigrationError> {
        let Some(machine) = self.machine() else {
            return Ok(());
        };
        for (region, bits) in machine.memory.iter().zip(dirty.iter_mut()) {
            tx.pages(region, migration::dirty_pages(bits), false)?;
            bits.iter_mut().for_each(|w| *w = 0);
        }
        Ok(())
    }

    /// Releases or takes back every device's host locks (disk images).
    fn host_locks(&self, held: bool) -> Result<(), OpError> {
        let Some(machine) = self.machine() else {
            return Ok(());
        };
        for slot in machine.virtio.slots() {
            let mut device = slot.device.lock().unwrap_or_else(|e| e.into_inner());
            device
                .set_host_locks(held)
                .map_err(|e| OpError::invalid(format!("{}: {e}", slot.name)))?;
        }
        Ok(())
    }

    fn migrate_out(&mut self, tx: &mut Option<Sender>) -> Result<Stats, OpError> {
        let (Some(cfg), Some(machine)) = (self.config.clone(), self.machine()) else {
            return Err(OpError::state("vm.send-migration", self.state));
        };
        let Some(sender) = tx.as_mut() else {
            return Err(OpError::state("vm.send-migration", self.state));
        };
        sender.config(&cfg)?;
        let regions = machine.memory.num_regions();
        self.dirty_log(true)?;
        for region in machine.memory.iter() {
            let pages = region.len() as usize / PAGE;
            sender.pages(region, 0..pages, true)?;
        }
        let mut dirty = vec![Vec::new(); regions];
        let mut rounds = 0;
        loop {
            let count = self.take_dirty(&mut dirty)?;
            if count * PAGE <= DOWNTIME_BYTES || rounds >= MAX_ROUNDS {
                break;
            }
            rounds += 1;
            self.send_dirty(sender, &mut dirty)?;
        }
        let paused_at = Instant::now();
        if self.state == VmState::Running {
            self.pause()?;
        }
        self.take_dirty(&mut dirty)?;
        self.send_dirty(sender, &mut dirty)?;
        let state = self.collect_state("vm.send-migration")?;
        // The destination opens the same disk images on this host before this process exits.
        self.host_locks(false)?;
        sender.state(&state)?;
        let bytes = sender.memory_bytes;
        if let Some(sender) = tx.take() {
            sender.finish()?;
        }
        Ok(Stats {
            rounds,
            bytes,
            downtime_ms: paused_at.elapsed().as_millis(),
        })
    }

    /// `vm.send-migration`: moves the VM to the petrel listening at `destination_url`
    /// (`unix:/path`). On success this process has handed the VM over and exits.
    pub fn send_migration(&mut self, destination_url: &str) -> Result<(), OpError> {
        if !matches!(self.state, VmState::Running | VmState::Paused) {
            return Err(OpError::state("vm.send-migration", self.state));
        }
        self.refuse_pci("vm.send-migration")?;
        let path = migration::path_from_url("destination_url", destination_url)?;
        let was_running = self.state == VmState::Running;
        let started = Instant::now();
        let mut tx = Some(Sender::connect(&path)?);
        let result = self.migrate_out(&mut tx);
        drop(tx);
        if let Err(e) = self.dirty_log(false) {
            log::warn!("vm.send-migration: {}", crate::error_chain(&e));
        }
        match result {
            Ok(stats) => {
                log::info!(
                    "migrated to {} in {} ms: {} pre-copy rounds, {} KiB sent, downtime {} ms",
                    path.display(),
                    started.elapsed().as_millis(),
                    stats.rounds,
                    stats.bytes >> 10,
                    stats.downtime_ms
                );
                self.teardown();
                Ok(())
            }
            Err(e) => {
                if let Err(lock) = self.host_locks(true) {
                    log::error!("vm.send-migration: taking the disk locks back: {lock}");
                }
                if was_running && self.state == VmState::Paused {
                    self.resume()?;
                }
                log::warn!("vm.send-migration failed; the VM stays here");
                Err(e)
            }
        }
    }

    /// `vm.receive-migration`: waits at `receiver_url` (`unix:/path`) for a VM and runs it.
    pub fn receive_migration(
        &mut self,
        request: &api::compat::VmReceiveMigration,
        event_loop: &mut EventLoop,
    ) -> Result<(), OpError> {
        let receiver_url = request.receiver_url.as_str();
        if self.state != VmState::NotCreated {
            return Err(OpError::invalid(format!(
                "vm.receive-migration: this petrel already has a VM (it is {})",
                self.state
            )));
        }
        let path = migration::path_from_url("receiver_url", receiver_url)?;
        let io = |what: String| move |source| MigrationError::Io { what, source };
        if path.exists() {
            std::fs::remove_file(&path).map_err(io(format!("removing {}", path.display())))?;
        }
        let listener =
            UnixListener::bind(&path).map_err(io(format!("listening on {}", path.display())))?;
        let accepted = listener.accept();
        let _ = std::fs::remove_file(&path);
        let (mut stream, _) = accepted.map_err(io("accepting the source".into()))?;
        let started = Instant::now();
        let check = |cfg: &api::VmConfig| self.check_config(cfg).map_err(|e| e.to_string());
        let received = migration::receive(&mut stream, &check);
        let installed = match received {
            // Before the VM's files are opened and its vCPU threads start.
            Ok((memory, mut state)) => {
                super::snapshot::redirect_serial(&mut state.config, request.serial_file.as_deref());
                self.landlock_before_boot(&state.config)
                    .and_then(|()| self.install(memory, state, event_loop))
            }
            Err(e) => Err(e.into()),
        };
        let answer = installed
            .as_ref()
            .map(|_| ())
            .map_err(|e| crate::error_chain(e));
        if let Err(e) = migration::answer(&mut stream, answer) {
            log::warn!("vm.receive-migration: cannot answer the source: {e}");
        }
        installed?;
        self.resume()?;
        log::info!(
            "VM received and running ({} ms from the first byte)",
            started.elapsed().as_millis()
        );
        Ok(())
    }
}
