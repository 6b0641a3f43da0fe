//! The device's housekeeping timer: one non-blocking timerfd, watched by the event loop like
//! the device's other fds, that ticks periodically only while something waits on a deadline
//! (host connections that have not sent their `CONNECT` line or whose REQUEST the guest has
//! not answered, or a listening socket paused after running out of file descriptors). It is
//! disarmed whenever nothing waits, so an idle device never wakes up.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::time::Duration;

use vmm_sys_util::timerfd::TimerFd;

/// Shortest tick (a guard against a zero timeout).
const MIN_PERIOD: Duration = Duration::from_millis(1);

/// How often the timer ticks for a given timeout: a quarter of it, so that a deadline is acted
/// on at most a quarter late.
pub fn period(timeout: Duration) -> Duration {
    (timeout / 4).max(MIN_PERIOD)
}

/// See the module documentation.
#[derive(Debug)]
pub struct HostTimer {
    fd: TimerFd,
    /// The period it is armed with (`None`: disarmed).
    period: Option<Duration>,
}

impl HostTimer {
    /// A disarmed timer whose reads never block (it may be disarmed or re-armed between the
    /// epoll wake-up and the read, which resets its expiration count).
    pub fn new() -> io::Result<Self> {
        // SAFETY: plain syscall with constant arguments; the result is checked.
        let fd = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just created, is a timerfd and is owned by nobody else.
        let fd = unsafe { TimerFd::from_raw_fd(fd) };
        Ok(Self { fd, period: None })
    }

    /// Arms the timer to tick every `period`, or disarms it (`None`); nothing if it is
    /// already so.
    pub fn set(&mut self, period: Option<Duration>) -> io::Result<()> {
        if period == self.period {
            return Ok(());
        }
        match period {
            Some(p) => self.fd.reset(p, Some(p))?,
            None => self.fd.clear()?,
        }
        self.period = period;
        Ok(())
    }

    /// The period it is armed with, if armed.
    pub fn period(&self) -> Option<Duration> {
        self.period
    }

    /// Consumes the pending ticks (none pending is fine).
    pub fn drain(&mut self) {
        let _ = self.fd.wait();
    }
}

impl AsRawFd for HostTimer {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arms_disarms_and_never_blocks() {
        let mut t = HostTimer::new().unwrap();
        assert_eq!(t.period(), None);
        // Nothing pending: the read returns at once.
        t.drain();
        t.set(Some(Duration::from_millis(1))).unwrap();
        assert_eq!(t.period(), Some(Duration::from_millis(1)));
        std::thread::sleep(Duration::from_millis(5));
        assert!(t.fd.wait().unwrap() >= 1);
        t.set(None).unwrap();
        assert!(!t.fd.is_armed().unwrap());
        t.drain();
        assert_eq!(period(Duration::from_secs(2)), Duration::from_millis(500));
        assert_eq!(period(Duration::ZERO), MIN_PERIOD);
    }
}
