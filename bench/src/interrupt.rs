//! Clean-up on Ctrl-C, SIGTERM, SIGHUP and panics: the VMM processes the harness is running
//! (one at a time, or up to [`MAX_CHILDREN`] at once for `create-rate`) are registered here,
//! and the signal handler (or panic hook) kills them with SIGKILL and records that the run was
//! interrupted.
//!
//! A pid is registered only while its process is unreaped (alive or a zombie), so the handler
//! can never signal a recycled pid: [`crate::child`] and [`crate::live`] unregister it before
//! reaping.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

/// How many children may be registered at once.
pub const MAX_CHILDREN: usize = 64;

#[allow(clippy::declare_interior_mutable_const)] // Only used to initialise the array.
const EMPTY: AtomicI32 = AtomicI32::new(0);
static CHILDREN: [AtomicI32; MAX_CHILDREN] = [EMPTY; MAX_CHILDREN];
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Signals that stop the harness.
const SIGNALS: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

extern "C" fn on_signal(_sig: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
    kill_current();
}

/// Sends SIGKILL to every registered child. Async-signal-safe.
pub fn kill_current() {
    for slot in &CHILDREN {
        let pid = slot.load(Ordering::SeqCst);
        if pid > 0 {
            // SAFETY: kill(2) is async-signal-safe; `pid` is an unreaped child of ours (see
            // the module doc), so it names that process and no other.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }
}

/// Installs the handler for SIGINT, SIGTERM and SIGHUP (without SA_RESTART, so a blocked
/// `poll` returns EINTR) and a panic hook that kills the current child before the default
/// hook runs.
pub fn install() -> io::Result<()> {
    for sig in SIGNALS {
        // SAFETY: a zeroed sigaction is a valid value (empty mask, no flags); we fill in the
        // handler and its address comes from an `extern "C" fn(c_int)` as sa_sigaction wants.
        let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
        action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
        // SAFETY: `action` is initialised and `sig` is a valid catchable signal; the old
        // action is not needed.
        let rc = unsafe { libc::sigaction(sig, &action, std::ptr::null_mut()) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        kill_current();
        default_hook(info);
    }));
    Ok(())
}

/// Registers `pid` (an unreaped child) so that a stop signal kills it. Fails when
/// [`MAX_CHILDREN`] are registered already.
pub fn register(pid: libc::pid_t) -> io::Result<()> {
    for slot in &CHILDREN {
        if slot
            .compare_exchange(0, pid, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
        {
            return Ok(());
        }
    }
    Err(io::Error::other("too many VMM processes at once"))
}

/// Unregisters `pid` (before it is reaped).
pub fn unregister(pid: libc::pid_t) {
    for slot in &CHILDREN {
        let _ = slot.compare_exchange(pid, 0, Ordering::SeqCst, Ordering::SeqCst);
    }
}

/// True once a stop signal arrived.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn register_and_unregister_use_free_slots() {
        // Pids that are not ours: never signalled (no stop signal in tests).
        let pids: Vec<libc::pid_t> = (0..3).map(|i| 0x7fff_0000 + i).collect();
        for &p in &pids {
            register(p).unwrap();
        }
        for &p in &pids {
            assert!(CHILDREN.iter().any(|s| s.load(Ordering::SeqCst) == p));
            unregister(p);
            assert!(!CHILDREN.iter().any(|s| s.load(Ordering::SeqCst) == p));
        }
    }
}
