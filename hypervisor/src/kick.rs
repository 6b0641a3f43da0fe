//! The vCPU kick: [`crate::kick_signal`]'s handler, installed once per process by the backend
//! in use, and unblocked on each vCPU thread. The handler itself is the backend's (it marks
//! its own vCPU's run as interrupted).

use std::sync::OnceLock;

use vmm_sys_util::signal::{register_signal_handler, unblock_signal, SignalHandler};

use crate::{Error, Result};

/// The errno of the one registration (0 when it worked).
static INSTALLED: OnceLock<i32> = OnceLock::new();

/// Installs `handler` for the kick signal (the first call in the process wins) and makes the
/// signal deliverable on the calling thread.
pub(crate) fn prepare_thread(handler: SignalHandler) -> Result<()> {
    let errno = *INSTALLED.get_or_init(|| {
        register_signal_handler(crate::kick_signal(), handler)
            .map(|_| 0)
            .unwrap_or_else(|e| e.errno())
    });
    if errno != 0 {
        return Err(Error::call(
            "installing the vCPU kick signal handler",
            std::io::Error::from_raw_os_error(errno),
        ));
    }
    unblock_signal(crate::kick_signal())
        .map_err(|e| Error::Unavailable(format!("cannot unblock the vCPU kick signal: {e}")))
}
