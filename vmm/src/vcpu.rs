//! vCPU threads: each runs its vCPU until a lifecycle event, a failure, or a stop request,
//! and parks while the VM is paused.
//!
//! Stopping and pausing: the controller sets `stop` (or `paused`) and sends the kick signal
//! until the thread has left `run` (the backend makes a signal that lands just before guest
//! entry still end the run). A paused thread waits on a condition variable; the event loop
//! keeps serving devices meanwhile.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hypervisor::{IoHandler, Vcpu, VcpuExit, VcpuState};

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
    /// Bumped (under the `paused` lock) to ask every parked vCPU thread for its state.
    save_generation: AtomicU64,
    /// The states parked threads saved for the last request, by vCPU id.
    saved: Mutex<BTreeMap<u32, hypervisor::Result<VcpuState>>>,
    /// Signalled when a parked thread has put its state in `saved`.
    saved_cond: Condvar,
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
            save_generation: AtomicU64::new(0),
            saved: Mutex::new(BTreeMap::new()),
            saved_cond: Condvar::new(),
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

    /// Parks the calling vCPU thread while the VM is paused (and not stopping). Meanwhile it
    /// answers state requests ([`save_all`]) for its vCPU, which only its own thread holds.
    fn park_while_paused(&self, id: u32, vcpu: &dyn Vcpu) {
        let mut paused = self.paused.lock().unwrap_or_else(|e| e.into_inner());
        let mut served = self.save_generation.load(Ordering::Acquire);
        self.parked.fetch_add(1, Ordering::AcqRel);
        while *paused && !self.stop.load(Ordering::Acquire) {
            let asked = self.save_generation.load(Ordering::Acquire);
            if asked != served {
                served = asked;
                drop(paused);
                let state = vcpu.save_state();
                self.saved
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(id, state);
                self.saved_cond.notify_all();
                paused = self.paused.lock().unwrap_or_else(|e| e.into_inner());
                continue;
            }
            paused = self.resume.wait(paused).unwrap_or_else(|e| e.into_inner());
        }
        self.parked.fetch_sub(1, Ordering::AcqRel);
    }

    /// Makes the vCPU threads of the next boot park before they first enter the guest (a
    /// restored VM starts paused).
    pub fn start_paused(&self) {
        self.set_paused(true);
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
            shared.park_while_paused(id, vcpu.as_ref());
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

/// Why the vCPUs' states could not be collected.
#[derive(Debug, thiserror::Error)]
pub enum SaveError {
    /// A vCPU thread did not answer in time (it is not parked).
    #[error("vCPU {id} did not hand over its state within {secs} s")]
    Timeout {
        /// vCPU index.
        id: u32,
        /// How long was waited.
        secs: u64,
    },
    /// The hypervisor could not read a vCPU's state.
    #[error("vCPU {id}")]
    Hypervisor {
        /// vCPU index.
        id: u32,
        /// Why.
        #[source]
        source: hypervisor::Error,
    },
}

/// How long saving waits for the parked vCPU threads.
const SAVE_TIMEOUT: Duration = Duration::from_secs(5);

/// Asks every parked vCPU thread (the VM must be paused) for its vCPU's state; in id order.
pub fn save_all(
    threads: &[VcpuThread],
    shared: &VcpuShared,
) -> std::result::Result<Vec<VcpuState>, SaveError> {
    shared
        .saved
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clear();
    {
        let _paused = shared.paused.lock().unwrap_or_else(|e| e.into_inner());
        shared.save_generation.fetch_add(1, Ordering::AcqRel);
        shared.resume.notify_all();
    }
    let start = Instant::now();
    let mut saved = shared.saved.lock().unwrap_or_else(|e| e.into_inner());
    while saved.len() < threads.len() {
        let left = SAVE_TIMEOUT.saturating_sub(start.elapsed());
        if left.is_zero() {
            let missing = threads
                .iter()
                .map(|t| t.id)
                .find(|id| !saved.contains_key(id))
                .unwrap_or(0);
            return Err(SaveError::Timeout {
                id: missing,
                secs: SAVE_TIMEOUT.as_secs(),
            });
        }
        saved = shared
            .saved_cond
            .wait_timeout(saved, left)
            .unwrap_or_else(|e| e.into_inner())
            .0;
    }
    std::mem::take(&mut *saved)
        .into_iter()
        .map(|(id, r)| r.map_err(|source| SaveError::Hypervisor { id, source }))
        .collect()
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
