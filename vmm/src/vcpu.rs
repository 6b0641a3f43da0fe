//! vCPU threads: each runs its vCPU until a lifecycle event, a failure, or a stop request.
//!
//! Stopping: the controller sets `stop` and sends the kick signal until the thread has left
//! `run` (the backend makes a signal that lands just before guest entry still end the run).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use hypervisor::{IoHandler, Vcpu, VcpuExit};
use vmm_sys_util::eventfd::EventFd;

/// What a vCPU thread reports to the event loop when it ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VcpuEvent {
    /// The guest asked for a reset.
    Reset,
    /// The guest asked to power off.
    PowerOff,
    /// The vCPU failed; the message names the cause and the instruction pointer.
    Failed(String),
}

/// State shared between the vCPU threads and the event loop.
pub struct VcpuShared {
    /// Set to make every vCPU thread return.
    pub stop: AtomicBool,
    /// Events from vCPU threads, read by the event loop when `event_fd` fires.
    pub events: Mutex<Vec<VcpuEvent>>,
    /// Written after pushing to `events`.
    pub event_fd: EventFd,
}

impl VcpuShared {
    /// New shared state with its eventfd.
    pub fn new() -> std::io::Result<Self> {
        Ok(VcpuShared {
            stop: AtomicBool::new(false),
            events: Mutex::new(Vec::new()),
            event_fd: EventFd::new(vmm_sys_util::eventfd::EFD_NONBLOCK)?,
        })
    }

    fn report(&self, event: VcpuEvent) {
        self.events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(event);
        if let Err(e) = self.event_fd.write(1) {
            log::error!("cannot signal the event loop: {e}");
        }
    }

    /// Readies the shared state for a new boot: no stop request, no stale events.
    pub fn reset_for_boot(&self) {
        self.stop.store(false, Ordering::Release);
        self.take_events();
        // Nothing pending reads as EAGAIN, which is fine.
        let _ = self.event_fd.read();
    }

    /// Takes the reported events.
    pub fn take_events(&self) -> Vec<VcpuEvent> {
        std::mem::take(&mut *self.events.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// Runs vCPU `id` on the current thread until it stops.
pub fn run_vcpu(
    id: u32,
    mut vcpu: Box<dyn Vcpu>,
    io: Arc<dyn IoHandler + Send + Sync>,
    shared: Arc<VcpuShared>,
) {
    if let Err(e) = vcpu.prepare_thread() {
        shared.report(VcpuEvent::Failed(format!(
            "vCPU {id}: {}",
            crate::error_chain(&e)
        )));
        return;
    }
    while !shared.stop.load(Ordering::Acquire) {
        let event = match vcpu.run(io.as_ref()) {
            Ok(VcpuExit::Interrupted) => continue,
            Ok(VcpuExit::Hlt) => {
                // Only without an in-kernel LAPIC does HLT reach us; wait for a kick.
                std::thread::sleep(Duration::from_millis(1));
                continue;
            }
            Ok(VcpuExit::Reset) => VcpuEvent::Reset,
            Ok(VcpuExit::PowerOff) => VcpuEvent::PowerOff,
            Ok(VcpuExit::TripleFault) => {
                let rip = vcpu.regs().map(|r| r.rip).unwrap_or(0);
                VcpuEvent::Failed(format!(
                    "vCPU {id}: guest triple fault (shutdown) at rip {rip:#x}"
                ))
            }
            Err(e) => VcpuEvent::Failed(format!("vCPU {id}: {}", crate::error_chain(&e))),
        };
        shared.report(event);
        return;
    }
}

/// A running vCPU thread.
pub struct VcpuThread {
    /// vCPU index.
    pub id: u32,
    /// The thread.
    pub handle: JoinHandle<()>,
}

/// Stops and joins every vCPU thread.
pub fn stop_all(threads: Vec<VcpuThread>, shared: &VcpuShared) {
    use vmm_sys_util::signal::Killable;
    shared.stop.store(true, Ordering::Release);
    for t in threads {
        while !t.handle.is_finished() {
            // A failed kill means the thread is already gone.
            if t.handle.kill(hypervisor::kick_signal()).is_err() {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        if t.handle.join().is_err() {
            log::error!("vCPU {} thread panicked", t.id);
        }
    }
}
