//! vCPU threads: each runs its vCPU until a lifecycle event, a failure, or a stop request,
//! and parks while the VM is paused.
//!
//! Stopping and pausing: the controller sets `stop` (or `paused`) and sends the kick signal
//! until the thread has left `run` (the backend makes a signal that lands just before guest
//! entry still end the run). A paused thread waits on a condition variable; the event loop
//! keeps serving devices meanwhile.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hypervisor::{IoHandler, Vcpu, VcpuExit};

use crate::seccomp::{self, SeccompMode, ThreadKind};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::signal::Killable;

/// What a vCPU thread reports to the event loop when it ends.
#[derive(Debug)]
pub enum VcpuEvent {
    /// The guest asked for a reset.
    Reset,
    /// The guest asked to power off.
    PowerOff,
    /// The vCPU failed.
    Failed(VcpuFailure),
}

/// Why a vCPU thread stopped the guest.
#[derive(Debug, thiserror::Error)]
pub enum VcpuFailure {
    /// The thread could not be prepared to run the vCPU.
    #[error("vCPU {id}")]
    Prepare {
        /// vCPU index.
        id: u32,
        /// Why.
        #[source]
        source: hypervisor::Error,
    },
    /// The thread's seccomp filter could not be installed.
    #[error("vCPU {id}")]
    Seccomp {
        /// vCPU index.
        id: u32,
        /// Why.
        #[source]
        source: seccomp::SeccompError,
    },
    /// The guest triple-faulted, and the hypervisor reset the vCPU (AMD SVM): rip is lost.
    #[error(
        "vCPU {id}: guest triple fault (shutdown); rip unknown: the hypervisor reset the vCPU on \
         shutdown"
    )]
    TripleFaultRipLost {
        /// vCPU index.
        id: u32,
    },
    /// The guest triple-faulted.
    #[error("vCPU {id}: guest triple fault (shutdown) at rip {rip:#x}")]
    TripleFault {
        /// vCPU index.
        id: u32,
        /// Instruction pointer (0 if it could not be read).
        rip: u64,
    },
    /// Running the vCPU failed.
    #[error("vCPU {id}")]
    Run {
        /// vCPU index.
        id: u32,
        /// Why.
        #[source]
        source: hypervisor::Error,
    },
}

/// State shared between the vCPU threads and the event loop.
pub struct VcpuShared {
    /// Set to make every vCPU thread return.
    pub stop: AtomicBool,
    /// Events from vCPU threads, read by the event loop when `event_fd` fires.
    pub events: Mutex<Vec<VcpuEvent>>,
    /// Written after pushing to `events`.
    pub event_fd: EventFd,
    paused: Mutex<bool>,
    resume: Condvar,
    parked: AtomicUsize,
    /// vCPU threads that have installed the kick signal's handler (process-wide once the
    /// first one has): before that, the kick signal's default action would end the process.
    prepared: AtomicUsize,
    /// vCPU threads of the current boot that are set up and about to enter the guest (each
    /// thread is named `vcpu<id>` by then, as Kata expects when it lists them).
    started: AtomicUsize,
    /// The seccomp mode each vCPU thread installs, and for which backend.
    seccomp: (SeccompMode, seccomp::Backend),
}

impl VcpuShared {
    /// New shared state with its eventfd.
    pub fn new(seccomp: (SeccompMode, seccomp::Backend)) -> std::io::Result<Self> {
        Ok(VcpuShared {
            stop: AtomicBool::new(false),
            events: Mutex::new(Vec::new()),
            event_fd: EventFd::new(vmm_sys_util::eventfd::EFD_NONBLOCK)?,
            paused: Mutex::new(false),
            resume: Condvar::new(),
            parked: AtomicUsize::new(0),
            prepared: AtomicUsize::new(0),
            started: AtomicUsize::new(0),
            seccomp,
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

    /// Readies the shared state for a new boot: no stop or pause request, no stale events.
    pub fn reset_for_boot(&self) {
        self.stop.store(false, Ordering::Release);
        self.started.store(0, Ordering::Release);
        *self.paused.lock().unwrap_or_else(|e| e.into_inner()) = false;
        self.take_events();
        // Nothing pending reads as EAGAIN, which is fine.
        let _ = self.event_fd.read();
    }

    /// Takes the reported events.
    pub fn take_events(&self) -> Vec<VcpuEvent> {
        std::mem::take(&mut *self.events.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn is_paused(&self) -> bool {
        *self.paused.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Parks the calling vCPU thread while the VM is paused (and not stopping).
    fn park_while_paused(&self) {
        let mut paused = self.paused.lock().unwrap_or_else(|e| e.into_inner());
        self.parked.fetch_add(1, Ordering::AcqRel);
        while *paused && !self.stop.load(Ordering::Acquire) {
            paused = self.resume.wait(paused).unwrap_or_else(|e| e.into_inner());
        }
        self.parked.fetch_sub(1, Ordering::AcqRel);
    }

    fn set_paused(&self, on: bool) {
        *self.paused.lock().unwrap_or_else(|e| e.into_inner()) = on;
        self.resume.notify_all();
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
        shared.report(VcpuEvent::Failed(VcpuFailure::Prepare { id, source: e }));
        return;
    }
    shared.prepared.fetch_add(1, Ordering::AcqRel);
    if let Err(e) = seccomp::apply(ThreadKind::Vcpu, shared.seccomp.0, shared.seccomp.1) {
        shared.report(VcpuEvent::Failed(VcpuFailure::Seccomp { id, source: e }));
        return;
    }
    seccomp::selftest_if_requested(ThreadKind::Vcpu);
    shared.started.fetch_add(1, Ordering::AcqRel);
    while !shared.stop.load(Ordering::Acquire) {
        if shared.is_paused() {
            shared.park_while_paused();
            continue;
        }
        let event = match vcpu.run(io.as_ref()) {
            Ok(VcpuExit::Interrupted) => continue,
            Ok(VcpuExit::Hlt) => {
                // Only without an in-kernel LAPIC does HLT reach us; wait for a kick.
                std::thread::sleep(Duration::from_millis(1));
                continue;
            }
            Ok(VcpuExit::Reset) => VcpuEvent::Reset,
            Ok(VcpuExit::PowerOff) => VcpuEvent::PowerOff,
            Ok(VcpuExit::TripleFault) => VcpuEvent::Failed(triple_fault(id, &*vcpu)),
            Err(e) => VcpuEvent::Failed(VcpuFailure::Run { id, source: e }),
        };
        shared.report(event);
        return;
    }
}

impl VcpuFailure {
    /// Whether the guest triple-faulted (rather than petrel failing to run it).
    pub fn is_triple_fault(&self) -> bool {
        matches!(
            self,
            VcpuFailure::TripleFault { .. } | VcpuFailure::TripleFaultRipLost { .. }
        )
    }
}

/// What petrel can truly say about a triple fault. On Intel (and PVM) KVM leaves the vCPU
/// where it faulted, so its rip is named; on AMD SVM, KVM re-initialises the VMCB on a shutdown
/// intercept, so the registers read afterwards are the reset state (cs f000, rip fff0) and the
/// faulting rip is lost: the message says so instead of naming a wrong address.
fn triple_fault(id: u32, vcpu: &dyn Vcpu) -> VcpuFailure {
    let rip = vcpu.regs().map(|r| r.rip).unwrap_or(0);
    let cs = vcpu.sregs().map(|s| s.cs.selector).ok();
    if rip == 0xfff0 && cs == Some(0xf000) {
        VcpuFailure::TripleFaultRipLost { id }
    } else {
        VcpuFailure::TripleFault { id, rip }
    }
}

/// A running vCPU thread.
pub struct VcpuThread {
    /// vCPU index.
    pub id: u32,
    /// The thread.
    pub handle: JoinHandle<()>,
}

impl VcpuThread {
    /// Interrupts the vCPU's `run` (a failed kill means the thread is already gone). Does
    /// nothing until a vCPU thread has installed the signal's handler: a thread that has not
    /// started yet checks the stop and pause flags before it first enters the guest.
    fn kick(&self, shared: &VcpuShared) {
        if shared.prepared.load(Ordering::Acquire) > 0 {
            let _ = self.handle.kill(hypervisor::kick_signal());
        }
    }
}

/// How long booting waits for every vCPU thread to start.
const START_TIMEOUT: Duration = Duration::from_secs(5);

/// Waits until every thread of `threads` is set up and entering the guest (or has already
/// ended, having reported why). `vm.boot` returns after this: its caller then finds the
/// vCPUs running and their threads named. False if some thread did not start in time.
pub fn wait_started(threads: &[VcpuThread], shared: &VcpuShared) -> bool {
    let start = Instant::now();
    loop {
        let ended = threads.iter().filter(|t| t.handle.is_finished()).count();
        if shared.started.load(Ordering::Acquire) + ended >= threads.len() {
            return true;
        }
        if start.elapsed() > START_TIMEOUT {
            return false;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// How long pausing waits for every vCPU to park.
const PAUSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Pauses: every vCPU leaves the guest and parks. Returns false if some vCPU did not park
/// within the timeout (it will when it next leaves the guest).
pub fn pause_all(threads: &[VcpuThread], shared: &VcpuShared) -> bool {
    shared.set_paused(true);
    let live = threads.iter().filter(|t| !t.handle.is_finished()).count();
    let start = Instant::now();
    while shared.parked.load(Ordering::Acquire) < live {
        if start.elapsed() > PAUSE_TIMEOUT {
            return false;
        }
        threads.iter().for_each(|t| t.kick(shared));
        std::thread::sleep(Duration::from_millis(1));
    }
    true
}

/// Resumes parked vCPUs.
pub fn resume_all(shared: &VcpuShared) {
    shared.set_paused(false);
}

/// Stops and joins every vCPU thread.
pub fn stop_all(threads: Vec<VcpuThread>, shared: &VcpuShared) {
    shared.stop.store(true, Ordering::Release);
    // Wake parked threads so they see `stop`.
    shared.set_paused(false);
    for t in threads {
        while !t.handle.is_finished() {
            t.kick(shared);
            std::thread::sleep(Duration::from_millis(1));
        }
        if t.handle.join().is_err() {
            log::error!("vCPU {} thread panicked", t.id);
        }
    }
}
