//! Clean-up on Ctrl-C, SIGTERM, SIGHUP and panics: the one VMM process the harness is running
//! at a time is registered here, and the signal handler (or panic hook) kills it with SIGKILL
//! and records that the run was interrupted.
//!
//! A pid is registered only while its process is unreaped (alive or a zombie), so the handler
//! can never signal a recycled pid: [`crate::child`] unregisters it before reaping.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

static CURRENT_CHILD: AtomicI32 = AtomicI32::new(0);
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Signals that stop the harness.
const SIGNALS: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

extern "C" fn on_signal(_sig: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
    kill_current();
}

/// Sends SIGKILL to the registered child, if any. Async-signal-safe.
pub fn kill_current() {
    let pid = CURRENT_CHILD.load(Ordering::SeqCst);
    if pid > 0 {
        // SAFETY: kill(2) is async-signal-safe; `pid` is an unreaped child of ours (see the
        // module doc), so it names that process and no other.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
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

/// Registers `pid` as the running child (0 clears it).
pub fn set_current(pid: libc::pid_t) {
    CURRENT_CHILD.store(pid, Ordering::SeqCst);
}

/// True once a stop signal arrived.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}
