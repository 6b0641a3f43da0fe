//! A VMM process the harness works with while it runs (rather than only timing it to its
//! exit, as [`crate::child::run_measured`] does): wait for a line on its stdout, look at
//! `/proc/<pid>`, talk to its API socket, then kill it. The process is registered with
//! [`crate::interrupt`] and always killed and reaped, on every path (drop included).

use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::process::{ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use crate::child::{self, Exit, Reaper};
use crate::interrupt;

/// Cap on the stdout kept.
const MAX_OUTPUT: usize = 1 << 20;

/// A running VMM process with its stdout piped to the harness.
pub struct Live {
    reaper: Reaper,
    pid: libc::pid_t,
    stdout: Option<ChildStdout>,
    /// What it wrote on stdout so far (up to 1 MiB).
    pub out: Vec<u8>,
    /// Just before spawn.
    pub start: Instant,
}

impl Live {
    /// Spawns `cmd` with stdout piped (stdin and stderr as the caller set them).
    pub fn spawn(mut cmd: Command) -> io::Result<Live> {
        cmd.stdout(Stdio::piped());
        let start = Instant::now();
        let mut c = cmd.spawn()?;
        let pid = libc::pid_t::try_from(c.id()).map_err(io::Error::other)?;
        let reaper = Reaper::register(pid)?;
        Ok(Live {
            reaper,
            pid,
            stdout: c.stdout.take(),
            out: Vec::new(),
            start,
        })
    }

    /// The process id (valid until [`Live::kill`] or drop).
    pub fn pid(&self) -> libc::pid_t {
        self.pid
    }

    /// Reads stdout until `marker` appears in it; returns when that read returned (from
    /// just before spawn). `None` at `deadline`, at the end of stdout, or on a stop signal.
    pub fn wait_for(&mut self, marker: &[u8], deadline: Instant) -> io::Result<Option<Duration>> {
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            if contains(&self.out, marker) {
                return Ok(Some(self.start.elapsed()));
            }
            let now = Instant::now();
            if now >= deadline || interrupt::interrupted() {
                return Ok(None);
            }
            let Some(stdout) = self.stdout.as_mut() else {
                return Ok(None);
            };
            let mut fds = [libc::pollfd {
                fd: stdout.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            }];
            child::poll(&mut fds, deadline - now)?;
            if fds[0].revents == 0 {
                continue;
            }
            match stdout.read(&mut chunk) {
                Ok(0) => self.stdout = None,
                Ok(n) => {
                    let room = MAX_OUTPUT.saturating_sub(self.out.len());
                    self.out.extend_from_slice(&chunk[..n.min(room)]);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Kills the process (SIGKILL) and reaps it; returns how it ended.
    pub fn kill(mut self) -> io::Result<Exit> {
        self.reaper.kill();
        self.stdout = None;
        let (status, _usage) = self.reaper.reap()?;
        Ok(Exit::from_wait_status(status))
    }
}

/// `needle` occurs in `hay`.
pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    find(hay, needle).is_some()
}

/// Where `needle` first occurs in `hay`.
pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return Some(0);
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_for_a_marker_then_kills() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo one; sleep 0.1; echo READY; exec sleep 30"])
            .stdin(Stdio::null());
        let mut l = Live::spawn(cmd).unwrap();
        let t = l
            .wait_for(b"READY", Instant::now() + Duration::from_secs(10))
            .unwrap()
            .unwrap();
        assert!(t >= Duration::from_millis(80), "{t:?}");
        assert!(contains(&l.out, b"one\n"));
        assert!(l.pid() > 0);
        assert_eq!(l.kill().unwrap(), Exit::Signal(libc::SIGKILL));
    }

    #[test]
    fn marker_never_comes() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo nothing"]).stdin(Stdio::null());
        let mut l = Live::spawn(cmd).unwrap();
        let r = l
            .wait_for(b"READY", Instant::now() + Duration::from_secs(10))
            .unwrap();
        assert!(r.is_none());
        assert!(find(b"abc", b"c") == Some(2) && find(b"abc", b"") == Some(0));
    }
}
