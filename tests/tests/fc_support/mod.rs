//! What the Firecracker-dialect tests share: a VMM process (petrel in Firecracker's dialect, or
//! the real Firecracker) in a scratch directory, its serial output in a file, a client of its
//! API socket, and request steps whose answers can be compared between the two.
#![allow(dead_code)]

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use petrel_http::{Client, Method, Response};
use serde_json::Value;

/// How long an API call may take.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// The real Firecracker binary: `PETREL_FIRECRACKER`, else `../shared/peers/bin/firecracker`
/// next to the workspace.
pub fn firecracker_bin() -> Option<PathBuf> {
    let path = std::env::var_os("PETREL_FIRECRACKER")
        .map(PathBuf::from)
        .unwrap_or_else(|| petrel_tests::workspace_dir().join("../shared/peers/bin/firecracker"));
    path.is_file().then_some(path)
}

#[allow(unused_imports)]
pub use petrel_tests::ScratchDir;

/// Which VMM a process is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    /// petrel, launched as Firecracker is.
    Petrel,
    /// The real Firecracker.
    Firecracker,
}

/// A running VMM with its output in files; killed on drop if still running.
pub struct Vmm {
    pub which: Which,
    pub child: Child,
    pub dir: PathBuf,
    pub socket: PathBuf,
    pub started: Instant,
    status: Option<ExitStatus>,
}

impl Vmm {
    /// Starts `which` with Firecracker's flags `args` (the API socket is `<dir>/api.sock`
    /// unless `--no-api` is among them), serial output and log in `dir`.
    pub fn spawn(which: Which, dir: &Path, args: &[&str]) -> Vmm {
        let bin = match which {
            Which::Petrel => petrel_tests::petrel_bin(),
            Which::Firecracker => firecracker_bin().expect("firecracker binary"),
        };
        let socket = dir.join("api.sock");
        let mut cmd = Command::new(bin);
        if !args.contains(&"--no-api") {
            cmd.arg("--api-sock").arg(&socket);
        }
        cmd.args(args).args(["--level", "Error"]);
        let out = File::create(dir.join("stdout")).unwrap();
        let err = File::create(dir.join("stderr")).unwrap();
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err));
        let started = Instant::now();
        let child = cmd.spawn().unwrap();
        Vmm {
            which,
            child,
            dir: dir.to_path_buf(),
            socket,
            started,
            status: None,
        }
    }

    /// Waits for the API socket to accept connections.
    pub fn wait_api(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if std::os::unix::net::UnixStream::connect(&self.socket).is_ok() {
                return true;
            }
            if self.exited() {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        false
    }

    /// One request; the transport must answer.
    pub fn call(&self, method: Method, path: &str, body: Option<&str>) -> Response {
        Client::new(&self.socket)
            .with_timeout(CALL_TIMEOUT)
            .request(method, path, body.map(str::as_bytes))
            .unwrap_or_else(|e| {
                panic!(
                    "{:?}: {} {path}: {e}\n{}",
                    self.which,
                    method.as_str(),
                    self.dump()
                )
            })
    }

    /// The serial output so far.
    pub fn stdout(&self) -> String {
        std::fs::read_to_string(self.dir.join("stdout")).unwrap_or_default()
    }

    /// Whether the process has ended.
    pub fn exited(&mut self) -> bool {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status.is_some()
    }

    /// Waits until `pred(stdout)` holds.
    pub fn wait_for(&mut self, timeout: Duration, pred: impl Fn(&str) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if pred(&self.stdout()) {
                return true;
            }
            if self.exited() {
                return pred(&self.stdout());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Waits for the exit; None at the timeout.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.exited() {
                return self.status;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Output for a failure message.
    pub fn dump(&self) -> String {
        let err = std::fs::read_to_string(self.dir.join("stderr")).unwrap_or_default();
        let out = self.stdout();
        let tail: Vec<&str> = out.lines().rev().take(30).collect();
        format!(
            "--- {:?} stderr ---\n{err}\n--- stdout (last lines) ---\n{}",
            self.which,
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        )
    }
}

impl Drop for Vmm {
    fn drop(&mut self) {
        if !self.exited() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// One request of a sequence.
#[derive(Debug, Clone)]
pub struct Step {
    pub method: Method,
    pub path: String,
    pub body: Option<String>,
}

/// `METHOD path [body]`.
pub fn step(method: Method, path: &str, body: Option<String>) -> Step {
    Step {
        method,
        path: path.to_string(),
        body,
    }
}

/// What an answer looks like, for comparison: the status and the shape of the body (the
/// top-level keys of a JSON object; `fault_message` for an error).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shape {
    pub status: u16,
    pub keys: Vec<String>,
}

/// The shape of `r`; an error body must be `{"fault_message": "<non-empty>"}`.
pub fn shape(r: &Response) -> Shape {
    let keys = match serde_json::from_slice::<Value>(&r.body) {
        Ok(Value::Object(m)) => {
            let mut k: Vec<String> = m.keys().cloned().collect();
            k.sort();
            k
        }
        Ok(other) => vec![format!("<{}>", kind(&other))],
        Err(_) if r.body.is_empty() => Vec::new(),
        Err(_) => vec!["<not json>".to_string()],
    };
    Shape {
        status: r.status,
        keys,
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Asserts an error answer: 400 and a non-empty `fault_message`.
pub fn assert_fault(r: &Response, what: &str) {
    assert_eq!(
        r.status,
        400,
        "{what}: {}",
        String::from_utf8_lossy(&r.body)
    );
    let v: Value = serde_json::from_slice(&r.body)
        .unwrap_or_else(|e| panic!("{what}: error body is not JSON ({e})"));
    let msg = v["fault_message"].as_str().unwrap_or("");
    assert!(!msg.is_empty(), "{what}: no fault_message in {v}");
}

/// Runs `ip ARGS`.
pub fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip {args:?}: {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    Err(format!(
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    ))
}

/// A tap made for the test, deleted on drop.
pub struct Tap(pub String);

impl Tap {
    pub fn create(name: &str) -> Result<Tap, String> {
        if Path::new("/sys/class/net").join(name).exists() {
            ip(&["link", "del", "dev", name])?;
        }
        ip(&["tuntap", "add", "dev", name, "mode", "tap"])?;
        let tap = Tap(name.to_string());
        let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6"), "1");
        ip(&["link", "set", "dev", name, "up"])?;
        Ok(tap)
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        let _ = ip(&["link", "del", "dev", &self.0]);
    }
}
