//! What the Cloud Hypervisor client tests (`ch_remote.rs`, `kata_replay.rs`) share: finding
//! the peer binaries (`ch-remote`, `cloud-hypervisor`), a VMM process (petrel or Cloud
//! Hypervisor) listening on an API socket, running `ch-remote` against it, and the names of a
//! process's threads.
#![allow(dead_code, unused_imports)]

use std::fs::File;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A peer binary: `$<env>` if set, else `name` on PATH, else `../shared/peers/bin/<name>`
/// next to the workspace (where the project's copies live).
pub fn find_peer(env: &str, name: &str) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(env).filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        assert!(p.is_file(), "{env}={} does not exist", p.display());
        return Some(p);
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    });
    on_path.or_else(|| {
        let p = petrel_tests::workspace_dir()
            .join("../shared/peers/bin")
            .join(name);
        p.is_file().then_some(p)
    })
}

/// `ch-remote` (`PETREL_CH_REMOTE`, PATH, ../shared/peers/bin).
pub fn ch_remote_bin() -> Option<PathBuf> {
    find_peer("PETREL_CH_REMOTE", "ch-remote")
}

/// `cloud-hypervisor` (`PETREL_CLOUD_HYPERVISOR`, PATH, ../shared/peers/bin).
pub fn cloud_hypervisor_bin() -> Option<PathBuf> {
    find_peer("PETREL_CLOUD_HYPERVISOR", "cloud-hypervisor")
}

/// Which VMM a [`VmmProcess`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    /// petrel.
    Petrel,
    /// Cloud Hypervisor, the reference.
    CloudHypervisor,
}

/// A VMM started with `--api-socket <dir>/api.sock` (plus extra arguments), its output in
/// files of `dir`; killed on drop.
pub struct VmmProcess {
    /// Which VMM.
    pub which: Which,
    /// The process.
    pub child: Child,
    /// The API socket.
    pub socket: PathBuf,
    dir: PathBuf,
}

impl VmmProcess {
    /// Starts the VMM `bin` in `dir` and waits until its socket accepts connections.
    pub fn start(which: Which, bin: &Path, dir: &Path, extra: &[&str]) -> VmmProcess {
        let socket = dir.join("api.sock");
        let _ = std::fs::remove_file(&socket);
        let out = File::create(dir.join("stdout")).unwrap();
        let err = File::create(dir.join("stderr")).unwrap();
        let child = Command::new(bin)
            .arg("--api-socket")
            .arg(&socket)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let vmm = VmmProcess {
            which,
            child,
            socket,
            dir: dir.to_path_buf(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while UnixStream::connect(&vmm.socket).is_err() {
            assert!(
                Instant::now() < deadline,
                "{which:?}: the API socket never accepted\n{}",
                vmm.logs()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        vmm
    }

    /// Process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What the VMM wrote so far (guest console on stdout, log on stderr).
    pub fn logs(&self) -> String {
        let read = |n: &str| std::fs::read_to_string(self.dir.join(n)).unwrap_or_default();
        format!(
            "--- {:?} stdout:\n{}\n--- stderr:\n{}",
            self.which,
            read("stdout"),
            read("stderr")
        )
    }

    /// Waits up to `within` for the process to exit; its exit code (None: still running, or
    /// ended by a signal).
    pub fn wait_exit(&mut self, within: Duration) -> Option<Option<i32>> {
        let deadline = Instant::now() + within;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status.code());
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for VmmProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One `ch-remote` run.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Exit status (None: killed by a signal or timed out).
    pub code: Option<i32>,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl Outcome {
    /// The `Server responded with <Status>` line of a failure, if any.
    pub fn server_status(&self) -> Option<&str> {
        self.stderr
            .lines()
            .find_map(|l| l.trim().split_once("Server responded with "))
            .map(|(_, s)| s.trim())
    }

    /// Whether ch-remote could not read the server's answer at all (what petrel's old status
    /// line and error bodies caused).
    pub fn unreadable(&self) -> bool {
        self.stderr.contains("Error parsing HTTP")
            || self.stderr.contains("Can't get remote's error messages")
            || self.stderr.contains("missing protocol")
    }
}

/// Runs `ch-remote --api-socket <socket> <args>` with at most 30 s.
pub fn ch_remote(bin: &Path, socket: &Path, args: &[&str]) -> Outcome {
    let mut child = Command::new(bin)
        .arg("--api-socket")
        .arg(socket)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    if child.try_wait().ok().flatten().is_none() {
        let _ = child.kill();
    }
    let out = child.wait_with_output().unwrap();
    Outcome {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The names (`comm`) of the threads of process `pid`.
pub fn thread_names(pid: u32) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    let mut names: Vec<String> = dir
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
        .map(|n| n.trim().to_string())
        .collect();
    names.sort();
    names
}

/// The `vcpuN` thread names of `pid`, sorted by N (the pattern Kata matches: `^vcpu\d+$`).
pub fn vcpu_threads(pid: u32) -> Vec<String> {
    let mut v: Vec<(u32, String)> = thread_names(pid)
        .into_iter()
        .filter_map(|n| {
            let id = n.strip_prefix("vcpu")?.parse::<u32>().ok()?;
            Some((id, n))
        })
        .collect();
    v.sort();
    v.into_iter().map(|(_, n)| n).collect()
}

pub use petrel_tests::ScratchDir;

/// Runs `ch-remote` like [`ch_remote`], with `fd` open as descriptor 3 in the child (for
/// `add-net fd=3`: ch-remote sends it with SCM_RIGHTS).
pub fn ch_remote_with_fd(
    bin: &Path,
    socket: &Path,
    args: &[&str],
    fd: std::os::fd::BorrowedFd<'_>,
) -> Outcome {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let raw = fd.as_raw_fd();
    let mut cmd = Command::new(bin);
    cmd.arg("--api-socket").arg(socket).args(args);
    // SAFETY: dup2 is async-signal-safe and touches only the child's descriptor table; `raw`
    // stays open in the parent until the child has been spawned (the borrow outlives it).
    unsafe {
        cmd.pre_exec(move || {
            // dup2 onto itself keeps FD_CLOEXEC: clear it then.
            let rc = if raw == 3 {
                libc::fcntl(3, libc::F_SETFD, 0)
            } else {
                libc::dup2(raw, 3)
            };
            if rc < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
    Outcome {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}
