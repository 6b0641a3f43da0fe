//! Runs one VMM process and measures it: time from just before spawn to the first byte on
//! its stdout and to its exit (seen through a pidfd), its peak RSS from `wait4`'s rusage, and
//! its exit status. The process is always killed and reaped, on every path.

use std::fmt;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::interrupt;

/// How long stdout may stay open after the process exited (a grandchild holding the pipe).
const DRAIN: Duration = Duration::from_secs(1);
/// Cap on the stdout kept per run.
const MAX_OUTPUT: usize = 1 << 20;

/// How the process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Exited with this code.
    Code(i32),
    /// Killed by this signal.
    Signal(i32),
}

impl Exit {
    /// Exited with code 0.
    pub fn success(self) -> bool {
        self == Exit::Code(0)
    }

    /// Decodes a `wait4` status.
    pub(crate) fn from_wait_status(status: libc::c_int) -> Exit {
        if libc::WIFEXITED(status) {
            Exit::Code(libc::WEXITSTATUS(status))
        } else {
            Exit::Signal(libc::WTERMSIG(status))
        }
    }
}

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Exit::Code(c) => write!(f, "exit {c}"),
            Exit::Signal(s) => write!(f, "signal {s}"),
        }
    }
}

/// What one measured run observed.
#[derive(Debug, Clone)]
pub struct Measured {
    /// From just before spawn to the first byte read on stdout; `None` if none came.
    pub first_byte: Option<Duration>,
    /// From just before spawn to the process's exit.
    pub exit: Duration,
    /// How it ended.
    pub status: Exit,
    /// Peak resident set of the process in KiB (`ru_maxrss`, i.e. its VmHWM).
    pub max_rss_kib: u64,
    /// Everything it wrote on stdout (up to 1 MiB).
    pub stdout: Vec<u8>,
    /// When each read of stdout returned (from just before spawn) and how long `stdout`
    /// was after it: byte `i` arrived with the first chunk whose length exceeds `i`.
    pub chunks: Vec<(Duration, usize)>,
    /// Killed because it outlived the timeout.
    pub timed_out: bool,
    /// Killed because the harness got a stop signal.
    pub interrupted: bool,
}

/// Kills (if still unreaped) and reaps the child when dropped.
pub(crate) struct Reaper {
    pid: libc::pid_t,
    reaped: bool,
}

impl Reaper {
    /// Takes charge of `pid` (an unreaped child) and registers it with [`interrupt`]; on
    /// failure the child is killed and reaped.
    pub(crate) fn register(pid: libc::pid_t) -> io::Result<Reaper> {
        let reaper = Reaper { pid, reaped: false };
        interrupt::register(pid)?;
        if interrupt::interrupted() {
            reaper.kill();
        }
        Ok(reaper)
    }

    /// Sends SIGKILL unless already reaped.
    pub(crate) fn kill(&self) {
        if !self.reaped {
            // SAFETY: `pid` is our child and not yet reaped, so it names that process only.
            unsafe {
                libc::kill(self.pid, libc::SIGKILL);
            }
        }
    }

    /// Waits for the child and returns its wait status and rusage.
    pub(crate) fn reap(&mut self) -> io::Result<(libc::c_int, libc::rusage)> {
        // Unregister before reaping: once reaped, the pid may be reused.
        interrupt::unregister(self.pid);
        let mut status: libc::c_int = 0;
        // SAFETY: an all-zero rusage is a valid value for wait4 to overwrite.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        loop {
            // SAFETY: `status` and `usage` are valid for writes; `pid` is our child.
            let rc = unsafe { libc::wait4(self.pid, &mut status, 0, &mut usage) };
            if rc == self.pid {
                self.reaped = true;
                return Ok((status, usage));
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                self.reaped = true; // ECHILD: nothing left to reap.
                return Err(err);
            }
        }
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        if !self.reaped {
            self.kill();
            let _ = self.reap();
        }
    }
}

/// A pidfd of `pid` (readable once the process exits).
pub(crate) fn pidfd_open(pid: libc::pid_t) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1; no memory is passed.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = RawFd::try_from(fd).map_err(io::Error::other)?;
    // SAFETY: `fd` was just returned by pidfd_open and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// poll(2) on `fds` for at most `timeout` (at least 1 ms); EINTR is not an error.
pub(crate) fn poll(fds: &mut [libc::pollfd], timeout: Duration) -> io::Result<()> {
    let ms = libc::c_int::try_from(timeout.as_millis().max(1)).unwrap_or(libc::c_int::MAX);
    let n = libc::nfds_t::try_from(fds.len()).map_err(io::Error::other)?;
    // SAFETY: `fds` points to `n` initialised pollfd entries that poll may update.
    let rc = unsafe { libc::poll(fds.as_mut_ptr(), n, ms) };
    if rc < 0 {
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
    Ok(())
}

impl Measured {
    /// When byte `index` of `stdout` was read (from just before spawn).
    pub fn arrival(&self, index: usize) -> Option<Duration> {
        self.chunks
            .iter()
            .find(|&&(_, len)| len > index)
            .map(|&(t, _)| t)
    }
}

/// Spawns `cmd` with stdout piped (stdin and stderr as the caller set them), measures it,
/// and kills it at `timeout` or when the harness is interrupted.
pub fn run_measured(mut cmd: Command, timeout: Duration) -> io::Result<Measured> {
    cmd.stdout(Stdio::piped());
    let start = Instant::now();
    let mut child = cmd.spawn()?;
    let pid = libc::pid_t::try_from(child.id()).map_err(io::Error::other)?;
    let mut reaper = Reaper::register(pid)?;
    let mut stdout = child
        .stdout
        .take()
        .ok_or_else(|| io::Error::other("no stdout pipe"))?;
    let pidfd = pidfd_open(pid)?;

    let deadline = start + timeout;
    let mut out = Vec::new();
    let mut chunks = Vec::new();
    let mut first_byte = None;
    let mut exited: Option<Instant> = None;
    let mut stdout_open = true;
    let mut timed_out = false;
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let now = Instant::now();
        match exited {
            Some(t) if !stdout_open || now >= t + DRAIN => break,
            None if now >= deadline && !timed_out => {
                timed_out = true;
                reaper.kill();
            }
            _ => {}
        }
        let wait = match exited {
            Some(t) => (t + DRAIN).saturating_duration_since(now),
            None if timed_out => DRAIN,
            None => deadline.saturating_duration_since(now),
        };
        let mut fds = [
            libc::pollfd {
                fd: if stdout_open { stdout.as_raw_fd() } else { -1 },
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: if exited.is_none() {
                    pidfd.as_raw_fd()
                } else {
                    -1
                },
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        poll(&mut fds, wait)?;
        let seen = Instant::now();
        if fds[0].revents != 0 {
            match stdout.read(&mut chunk) {
                Ok(0) => stdout_open = false,
                Ok(n) => {
                    first_byte.get_or_insert(seen - start);
                    let room = MAX_OUTPUT.saturating_sub(out.len());
                    out.extend_from_slice(&chunk[..n.min(room)]);
                    chunks.push((seen - start, out.len()));
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => stdout_open = false,
            }
        }
        if fds[1].revents != 0 && exited.is_none() {
            exited = Some(seen);
        }
        if interrupt::interrupted() {
            reaper.kill();
        }
    }
    let exit = exited.map_or_else(|| start.elapsed(), |t| t - start);
    drop(stdout);
    let (status, usage) = reaper.reap()?;
    Ok(Measured {
        first_byte,
        exit,
        status: Exit::from_wait_status(status),
        max_rss_kib: u64::try_from(usage.ru_maxrss).unwrap_or(0),
        stdout: out,
        chunks,
        timed_out,
        interrupted: interrupt::interrupted(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str, timeout_s: u64) -> Measured {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", script]).stdin(Stdio::null());
        run_measured(cmd, Duration::from_secs(timeout_s)).unwrap()
    }

    #[test]
    fn measures_first_byte_exit_and_status() {
        let m = sh("sleep 0.2; echo hi; sleep 0.2; exit 3", 10);
        assert_eq!(m.status, Exit::Code(3));
        assert_eq!(m.stdout, b"hi\n");
        assert_eq!(m.arrival(0), m.first_byte);
        assert!(m.arrival(3).is_none());
        let first = m.first_byte.unwrap();
        assert!(first >= Duration::from_millis(150), "{first:?}");
        assert!(m.exit >= first + Duration::from_millis(150), "{m:?}");
        assert!(m.max_rss_kib > 0);
        assert!(!m.timed_out);
    }

    #[test]
    fn silent_process_has_no_first_byte() {
        let m = sh("exit 0", 10);
        assert!(m.status.success());
        assert!(m.first_byte.is_none());
    }

    #[test]
    fn kills_at_timeout() {
        let t = Instant::now();
        let m = sh("exec sleep 30", 1);
        assert!(m.timed_out);
        assert_eq!(m.status, Exit::Signal(libc::SIGKILL));
        assert!(t.elapsed() < Duration::from_secs(10));
        assert_eq!(Exit::Signal(9).to_string(), "signal 9");
    }
}
