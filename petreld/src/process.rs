//! Processes petreld watches but may not be the parent of: identity by pid plus start time
//! (from `/proc/PID/stat`, so a reused pid is told apart), pidfds to learn of their exit at
//! once, signals, reaping when they are petreld's children, and finding a petrel by its
//! command line.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// A process's identity: its pid and its start time in clock ticks since boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessId {
    /// Process id.
    pub pid: u32,
    /// Start time (field 22 of `/proc/PID/stat`).
    pub start: u64,
}

/// `(state, start time)` of `pid` from `/proc/PID/stat`; `None` if it does not exist.
fn stat(pid: u32) -> Option<(char, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain anything: split after the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); start time is field 22.
    let state = fields.first()?.chars().next()?;
    let start = fields.get(22 - 3)?.parse().ok()?;
    Some((state, start))
}

impl ProcessId {
    /// The identity of the live process `pid`.
    pub fn of(pid: u32) -> Option<ProcessId> {
        stat(pid).map(|(_, start)| ProcessId { pid, start })
    }

    /// Whether this very process still runs (exists, same start time, not a zombie).
    pub fn alive(&self) -> bool {
        matches!(stat(self.pid), Some((state, start)) if start == self.start && state != 'Z' && state != 'X')
    }

    /// A pidfd for it, checked to refer to this process (not a reused pid).
    pub fn pidfd(&self) -> io::Result<OwnedFd> {
        let pid = libc::pid_t::try_from(self.pid).map_err(|_| io::ErrorKind::InvalidInput)?;
        // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the syscall returned a new descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        if !self.alive() {
            return Err(io::Error::new(io::ErrorKind::NotFound, "process is gone"));
        }
        Ok(fd)
    }

    /// Sends `signal` if the process is still this one.
    pub fn signal(&self, signal: i32) -> io::Result<()> {
        if !self.alive() {
            return Ok(());
        }
        // SAFETY: kill has no memory effects; the pid was just checked to be this process.
        if unsafe { libc::kill(self.pid as libc::pid_t, signal) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// Reaps `pid` if it is an exited child of petreld: its exit described (`exited with status
/// N`, `killed by signal N`), or `None` when it is not petreld's child or still runs.
pub fn reap(pid: u32) -> Option<String> {
    let mut status: libc::c_int = 0;
    // SAFETY: `status` is valid for a write; WNOHANG never blocks.
    let rc = unsafe { libc::waitpid(pid as libc::pid_t, &mut status, libc::WNOHANG) };
    if rc <= 0 {
        return None;
    }
    Some(if libc::WIFEXITED(status) {
        format!("exited with status {}", libc::WEXITSTATUS(status))
    } else if libc::WIFSIGNALED(status) {
        format!("killed by signal {}", libc::WTERMSIG(status))
    } else {
        "ended".to_string()
    })
}

/// Waits up to `timeout_ms` for `pidfd` to become readable (the process exited).
pub fn wait_exit(pidfd: &OwnedFd, timeout_ms: i32) -> bool {
    use std::os::fd::AsRawFd;
    let mut pfd = libc::pollfd {
        fd: pidfd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let rc = unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
    rc > 0
}

/// A live process whose command line contains `--api-socket SOCKET` (a petrel started for
/// `socket` whose pid was never recorded), or `--chroot-dir <its directory>` (the jailer of
/// a jailed one).
pub fn find_by_api_socket(socket: &Path) -> Option<ProcessId> {
    let want = socket.as_os_str().as_encoded_bytes();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
        // A jailed petrel is known by its jailer's `--chroot-dir` (the socket's directory).
        let found = args.windows(2).any(|w| {
            (w[0] == b"--api-socket" && w[1] == want)
                || (w[0] == b"--chroot-dir"
                    && Some(Path::new(std::ffi::OsStr::from_bytes(w[1]))) == socket.parent())
        });
        if found {
            if let Some(id) = ProcessId::of(pid).filter(ProcessId::alive) {
                return Some(id);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_identity_and_pidfd() {
        let me = ProcessId::of(std::process::id()).unwrap();
        assert!(me.alive());
        assert!(me.pidfd().is_ok());
        let other = ProcessId {
            start: me.start + 1,
            ..me
        };
        assert!(!other.alive());
    }

    #[test]
    #[allow(clippy::zombie_processes)] // reaped with `reap` below
    fn child_exit_is_seen_and_reaped() {
        let child = std::process::Command::new("true").spawn().unwrap();
        let id = ProcessId::of(child.id());
        if let Some(id) = id {
            if let Ok(fd) = id.pidfd() {
                assert!(wait_exit(&fd, 5000));
            }
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            if let Some(how) = reap(child.id()) {
                assert_eq!(how, "exited with status 0");
                break;
            }
            assert!(std::time::Instant::now() < deadline);
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
}
