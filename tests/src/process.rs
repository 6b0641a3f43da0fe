//! Runs the real `petrel` binary: finds it, starts it with a timeout, collects its stdout
//! (the guest serial console by default) and stderr (petrel's log), and stops it; or, with
//! [`Petrel`], drives it step by step (wait for output, write its stdin, signal it).

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::guest_build::{target_dir, workspace_dir};

/// How long a process gets to exit after SIGTERM before it is killed.
const TERM_GRACE: Duration = Duration::from_secs(5);
/// Poll interval for the child's exit while no output arrives.
const POLL: Duration = Duration::from_millis(5);

/// What one run of `petrel` produced.
#[derive(Debug)]
pub struct Run {
    /// Exit status; `None` when the harness had to kill it with SIGKILL (timeout, or still
    /// alive 5 s after SIGTERM).
    pub status: Option<ExitStatus>,
    /// Everything written to stdout.
    pub stdout: String,
    /// Everything written to stderr.
    pub stderr: String,
    /// From spawn to exit (or kill).
    pub elapsed: Duration,
    /// The timeout expired before the process exited.
    pub timed_out: bool,
}

impl Run {
    /// True when the process exited by itself with status 0.
    pub fn success(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }

    /// The exit code (`None` when killed by a signal or by the harness).
    pub fn code(&self) -> Option<i32> {
        self.status.and_then(|s| s.code())
    }

    /// The stderr lines that are not log lines (errors such as `petrel: error: …`).
    pub fn error_lines(&self) -> Vec<&str> {
        crate::petrel_log::error_lines(&self.stderr)
    }

    /// stdout and stderr, labelled, for assertion messages.
    pub fn dump(&self) -> String {
        format!(
            "status={:?} timed_out={} elapsed={:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.status, self.timed_out, self.elapsed, self.stdout, self.stderr
        )
    }
}

/// The petrel binary: `$PETREL_BIN`, else `<target dir>/debug/petrel` (honouring
/// `$CARGO_TARGET_DIR`), else `<workspace>/target/debug/petrel`.
///
/// Panics with a clear message when none exists.
pub fn petrel_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("PETREL_BIN").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        assert!(p.is_file(), "PETREL_BIN={} does not exist", p.display());
        return p;
    }
    let candidates = [
        target_dir().join("debug/petrel"),
        workspace_dir().join("target/debug/petrel"),
    ];
    for c in &candidates {
        if c.is_file() {
            return c.clone();
        }
    }
    panic!(
        "petrel binary not found at {} (build it first: cargo build --workspace, or set PETREL_BIN)",
        candidates[0].display()
    );
}

/// The jailer binary: `<target dir>/debug/petrel-jailer`, else
/// `<workspace>/target/debug/petrel-jailer`.
///
/// Panics with a clear message when none exists.
pub fn jailer_bin() -> PathBuf {
    let candidates = [
        target_dir().join("debug/petrel-jailer"),
        workspace_dir().join("target/debug/petrel-jailer"),
    ];
    for c in &candidates {
        if c.is_file() {
            return c.clone();
        }
    }
    panic!(
        "petrel-jailer binary not found at {} (build it first: cargo build --workspace)",
        candidates[0].display()
    );
}

/// True when `/dev/kvm` can be opened read-write.
pub fn kvm_available() -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
}

/// Returns from the calling test (after recording a visible skip) when `/dev/kvm` cannot be
/// used.
#[macro_export]
macro_rules! require_kvm {
    () => {
        if !$crate::kvm_available() {
            $crate::skip("/dev/kvm not available");
            return;
        }
    };
}

/// Runs petrel with `args` until it exits, killing it with SIGKILL at `timeout`.
pub fn run_petrel(args: &[&str], timeout: Duration) -> Run {
    run(args, timeout, None)
}

/// Runs petrel with `args`; as soon as `done(stdout so far)` is true, sends SIGTERM (and
/// SIGKILL 5 s later if it is still alive). SIGKILL at `timeout` in any case.
pub fn run_petrel_until(args: &[&str], timeout: Duration, done: impl Fn(&str) -> bool) -> Run {
    run(args, timeout, Some(&done))
}

fn spawn_reader(
    mut pipe: impl Read + Send + 'static,
    buf: Arc<Mutex<Vec<u8>>>,
    tx: mpsc::Sender<()>,
) -> JoinHandle<()> {
    thread::spawn(move || {
        let mut chunk = [0u8; 4096];
        loop {
            match pipe.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    buf.lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .extend_from_slice(&chunk[..n]);
                    let _ = tx.send(());
                }
            }
        }
    })
}

fn text(buf: &Mutex<Vec<u8>>) -> String {
    String::from_utf8_lossy(&buf.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
}

/// Sends `sig` to `child` unless it has been reaped.
fn send_signal(child: &mut Child, sig: libc::c_int) {
    if !matches!(child.try_wait(), Ok(None)) {
        return;
    }
    let Ok(pid) = libc::pid_t::try_from(child.id()) else {
        return;
    };
    // SAFETY: kill(2) on the pid of our own child, which try_wait just found not yet reaped
    // (we only reap it through `child`), so the pid cannot name another process.
    unsafe {
        libc::kill(pid, sig);
    }
}

fn sigterm(child: &mut Child) {
    send_signal(child, libc::SIGTERM);
}

fn run(args: &[&str], timeout: Duration, done: Option<&dyn Fn(&str) -> bool>) -> Run {
    let mut p = Petrel::start(&petrel_bin(), args, false);
    let (status, timed_out) = supervise(&mut p.child, p.start, timeout, &p.rx, &p.out, done);
    p.collect(status, timed_out)
}

/// A running `petrel` that a test drives step by step: wait for serial output, write to its
/// standard input (the guest's COM1 input), send it signals, then wait for its exit.
/// Dropping it kills the process if it is still running.
pub struct Petrel {
    child: Child,
    start: Instant,
    out: Arc<Mutex<Vec<u8>>>,
    err: Arc<Mutex<Vec<u8>>>,
    rx: Receiver<()>,
    readers: Vec<JoinHandle<()>>,
    stdin: Option<ChildStdin>,
}

impl Petrel {
    /// Starts petrel with `args` and standard input from /dev/null.
    pub fn spawn(args: &[&str]) -> Petrel {
        Petrel::start(&petrel_bin(), args, false)
    }

    /// Starts another program (e.g. the jailer, which runs petrel) the same way.
    pub fn spawn_program(bin: &std::path::Path, args: &[&str]) -> Petrel {
        Petrel::start(bin, args, false)
    }

    /// Starts petrel with `args` and standard input a pipe written by [`Petrel::write_stdin`].
    pub fn spawn_with_stdin(args: &[&str]) -> Petrel {
        Petrel::start(&petrel_bin(), args, true)
    }

    fn start(bin: &std::path::Path, args: &[&str], piped_stdin: bool) -> Petrel {
        let start = Instant::now();
        let mut child = Command::new(bin)
            .args(args)
            .stdin(if piped_stdin {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let out = Arc::new(Mutex::new(Vec::new()));
        let err = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let readers = [
            child
                .stdout
                .take()
                .map(|p| spawn_reader(p, out.clone(), tx.clone())),
            child
                .stderr
                .take()
                .map(|p| spawn_reader(p, err.clone(), tx.clone())),
        ];
        Petrel {
            stdin: child.stdin.take(),
            child,
            start,
            out,
            err,
            rx,
            readers: readers.into_iter().flatten().collect(),
        }
    }

    /// Process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// stdout so far.
    pub fn stdout(&self) -> String {
        text(&self.out)
    }

    /// stderr so far.
    pub fn stderr(&self) -> String {
        text(&self.err)
    }

    /// Waits until `pred(stdout so far)` holds (true), or until petrel exits or `timeout`
    /// passes without it holding (false).
    pub fn wait_for_stdout(&mut self, timeout: Duration, pred: impl Fn(&str) -> bool) -> bool {
        let start = Instant::now();
        loop {
            if pred(&self.stdout()) {
                return true;
            }
            if start.elapsed() >= timeout || !matches!(self.child.try_wait(), Ok(None)) {
                return pred(&self.stdout());
            }
            let _ = self.rx.recv_timeout(POLL);
        }
    }

    /// Writes `data` to petrel's standard input (started with [`Petrel::spawn_with_stdin`]).
    pub fn write_stdin(&mut self, data: &[u8]) -> std::io::Result<()> {
        let stdin = self
            .stdin
            .as_mut()
            .ok_or_else(|| std::io::Error::other("stdin is not a pipe (or was closed)"))?;
        stdin.write_all(data)?;
        stdin.flush()
    }

    /// Closes petrel's standard input (end of file).
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// Sends signal `sig` (e.g. `libc::SIGTERM`) unless petrel has already exited.
    pub fn signal(&mut self, sig: libc::c_int) {
        send_signal(&mut self.child, sig);
    }

    /// Names of petrel's threads (`/proc/<pid>/task/*/comm`), e.g. `vcpu0`.
    pub fn thread_names(&self) -> Vec<String> {
        let dir = format!("/proc/{}/task", self.child.id());
        let Ok(tasks) = std::fs::read_dir(dir) else {
            return Vec::new();
        };
        tasks
            .flatten()
            .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
            .map(|c| c.trim_end().to_string())
            .collect()
    }

    /// Waits up to `timeout` (from now) for petrel to exit, SIGKILLing it then, and returns
    /// the whole run; `elapsed` counts from the spawn.
    pub fn wait(mut self, timeout: Duration) -> Run {
        self.stdin = None;
        let deadline = Instant::now() + timeout;
        let (status, timed_out) = loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                break (Some(status), false);
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break (None, true);
            }
            match self.rx.recv_timeout(POLL) {
                Ok(()) | Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => thread::sleep(POLL),
            }
        };
        self.collect(status, timed_out)
    }

    /// Joins the readers (the process has exited) and builds the [`Run`].
    fn collect(mut self, status: Option<ExitStatus>, timed_out: bool) -> Run {
        let elapsed = self.start.elapsed();
        for r in std::mem::take(&mut self.readers) {
            let _ = r.join();
        }
        Run {
            status,
            stdout: text(&self.out),
            stderr: text(&self.err),
            elapsed,
            timed_out,
        }
    }
}

impl Drop for Petrel {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Waits for the child; returns its status (None when SIGKILLed) and whether it timed out.
fn supervise(
    child: &mut Child,
    start: Instant,
    timeout: Duration,
    rx: &Receiver<()>,
    out: &Mutex<Vec<u8>>,
    done: Option<&dyn Fn(&str) -> bool>,
) -> (Option<ExitStatus>, bool) {
    let mut term_sent: Option<Instant> = None;
    let mut check_done = done.is_some();
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return (Some(status), false);
        }
        let timed_out = start.elapsed() >= timeout;
        let grace_over = term_sent.is_some_and(|t| t.elapsed() >= TERM_GRACE);
        if timed_out || grace_over {
            let _ = child.kill();
            let _ = child.wait();
            return (None, timed_out);
        }
        if check_done {
            if let Some(done) = done {
                if done(&text(out)) {
                    sigterm(child);
                    term_sent = Some(Instant::now());
                    check_done = false;
                }
            }
        }
        match rx.recv_timeout(POLL) {
            Ok(()) | Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => thread::sleep(POLL),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kvm_check_does_not_panic() {
        let _ = kvm_available();
    }

    #[test]
    fn run_collects_output_and_status() {
        let (status, timed_out, out) = run_cmd("echo out; echo err >&2; exit 3", 10, None);
        assert_eq!(status.and_then(|s| s.code()), Some(3));
        assert!(!timed_out);
        assert_eq!(out, "out\n");
    }

    #[test]
    fn run_kills_at_timeout() {
        let t = Instant::now();
        let (status, timed_out, _) = run_cmd("exec sleep 30", 1, None);
        assert!(status.is_none());
        assert!(timed_out);
        assert!(t.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn run_until_terminates_when_done() {
        let t = Instant::now();
        let done = |s: &str| s.contains("ready");
        let (status, timed_out, out) = run_cmd("echo ready; exec sleep 30", 20, Some(&done));
        assert!(!timed_out);
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.and_then(|s| s.signal()), Some(libc::SIGTERM));
        assert!(out.contains("ready"));
        assert!(t.elapsed() < Duration::from_secs(10));
    }

    /// Runs `sh -c script` through the same supervision as petrel.
    fn run_cmd(
        script: &str,
        timeout_s: u64,
        done: Option<&dyn Fn(&str) -> bool>,
    ) -> (Option<ExitStatus>, bool, String) {
        let start = Instant::now();
        let mut child = Command::new("sh")
            .args(["-c", script])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let out = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let r = spawn_reader(child.stdout.take().unwrap(), out.clone(), tx.clone());
        let r2 = spawn_reader(child.stderr.take().unwrap(), Arc::default(), tx);
        let timeout = Duration::from_secs(timeout_s);
        let (status, timed_out) = supervise(&mut child, start, timeout, &rx, &out, done);
        r.join().unwrap();
        r2.join().unwrap();
        (status, timed_out, text(&out))
    }
}
