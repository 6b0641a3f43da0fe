//! What the API test files (`api_lifecycle.rs`, `api_errors.rs`) share: a `petrel
//! --api-socket` process in a scratch directory with a client of its socket, JSON calls by
//! operation name, the VM state, and assertions on error responses. It lives here rather than
//! in `petrel_tests` because it uses the `api` crate's client (a dev-dependency).
#![allow(dead_code)]

use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use petrel_http::{Client, Method, Response};
use petrel_tests::Petrel;
use serde_json::{json, Value};

/// Longest an API call may take (a boot builds the machine; reboot and shutdown join vCPUs).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a state change the guest makes (poweroff) may take to show in `vm.info`.
pub const STATE_TIMEOUT: Duration = Duration::from_secs(20);

pub use petrel_tests::ScratchDir;

/// How long the process took to come up, from spawn.
#[derive(Debug, Clone, Copy)]
pub struct Startup {
    /// Until a connect(2) to the socket succeeded.
    pub accepting: Duration,
    /// Until the first `vmm.ping` was answered.
    pub ping: Duration,
}

/// A `petrel --api-socket <dir>/api.sock` process and a client of its socket.
pub struct ApiVm {
    /// The process (its stdout is the guest's serial console when the VM's serial is Tty).
    pub petrel: Petrel,
    /// A client of the socket.
    pub client: Client,
    /// The socket path.
    pub socket: PathBuf,
    /// Start-up times.
    pub startup: Startup,
    /// The scratch directory (socket, disk images); removed on drop, after the process.
    pub dir: ScratchDir,
}

impl ApiVm {
    /// Starts petrel with `--api-socket` in a new scratch directory `name`, plus `extra`
    /// arguments, and waits until it answers `vmm.ping`.
    pub fn start(name: &str, extra: &[&str]) -> ApiVm {
        let dir = ScratchDir::new(name);
        let socket = dir.0.join("api.sock");
        let sock = socket.to_str().unwrap().to_string();
        let mut args = vec!["--api-socket", sock.as_str()];
        args.extend_from_slice(extra);
        let t0 = Instant::now();
        let petrel = Petrel::spawn(&args);
        let deadline = t0 + Duration::from_secs(20);
        let accepting = loop {
            if UnixStream::connect(&socket).is_ok() {
                break t0.elapsed();
            }
            assert!(
                Instant::now() < deadline,
                "the API socket never accepted\nstderr:\n{}",
                petrel.stderr()
            );
            std::thread::sleep(Duration::from_micros(200));
        };
        let client = Client::new(&socket).with_timeout(CALL_TIMEOUT);
        let r = client.get("/api/v1/vmm.ping");
        let ping = t0.elapsed();
        match r {
            Ok(r) if r.status == 200 => {}
            other => panic!("vmm.ping failed: {other:?}\nstderr:\n{}", petrel.stderr()),
        }
        ApiVm {
            petrel,
            client,
            socket,
            startup: Startup { accepting, ping },
            dir,
        }
    }

    /// `PUT /api/v1/<op>` with an optional JSON body.
    pub fn put(&self, op: &str, body: Option<&Value>) -> Response {
        let bytes = body.map(|b| serde_json::to_vec(b).unwrap());
        self.put_raw(op, bytes.as_deref())
    }

    /// `PUT /api/v1/<op>` with raw body bytes.
    pub fn put_raw(&self, op: &str, body: Option<&[u8]>) -> Response {
        let path = format!("/api/v1/{op}");
        self.client
            .request(Method::Put, &path, body)
            .unwrap_or_else(|e| panic!("PUT {op}: {e:?}\nstderr:\n{}", self.petrel.stderr()))
    }

    /// `GET /api/v1/<op>`.
    pub fn get(&self, op: &str) -> Response {
        self.client
            .get(&format!("/api/v1/{op}"))
            .unwrap_or_else(|e| panic!("GET {op}: {e:?}\nstderr:\n{}", self.petrel.stderr()))
    }

    /// `PUT op` must succeed with `status`; returns the response.
    pub fn put_ok(&self, op: &str, body: Option<&Value>, status: u16) -> Response {
        let r = self.put(op, body);
        assert_eq!(
            r.status,
            status,
            "PUT {op}: {}\nstdout:\n{}\nstderr:\n{}",
            r.error_message(),
            tail(&self.petrel.stdout()),
            self.petrel.stderr()
        );
        r
    }

    /// The JSON of a `GET op` that must answer 200.
    pub fn get_json(&self, op: &str) -> Value {
        let r = self.get(op);
        assert_eq!(r.status, 200, "GET {op}: {}", r.error_message());
        r.json_body().unwrap_or_else(|e| panic!("GET {op}: {e}"))
    }

    /// The VM state from `vm.info` (`None` when it answers 404: no VM).
    pub fn state(&self) -> Option<String> {
        let r = self.get("vm.info");
        if r.status == 404 {
            return None;
        }
        assert_eq!(r.status, 200, "vm.info: {}", r.error_message());
        let info: Value = r.json_body().unwrap();
        Some(info["state"].as_str().expect("vm.info state").to_string())
    }

    /// Asserts the state is `want` now.
    pub fn assert_state(&self, want: &str) {
        assert_eq!(
            self.state().as_deref(),
            Some(want),
            "stderr:\n{}",
            self.petrel.stderr()
        );
    }

    /// Waits up to `timeout` for the state to become `want`.
    pub fn wait_state(&self, want: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.state().as_deref() == Some(want) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `vmm.shutdown`, then the process must exit 0 within 10 s. Returns the run and the
    /// scratch directory (still there: the caller may look for the socket file).
    pub fn shutdown_vmm(self) -> (petrel_tests::Run, ScratchDir) {
        let r = self.put("vmm.shutdown", None);
        assert_eq!(r.status, 200, "vmm.shutdown: {}", r.error_message());
        let run = self.petrel.wait(Duration::from_secs(10));
        assert!(
            !run.timed_out,
            "vmm.shutdown did not end petrel\n{}",
            run.dump()
        );
        assert!(run.success(), "vmm.shutdown must exit 0\n{}", run.dump());
        assert!(!run.stderr.contains("panicked"), "{}", run.dump());
        (run, self.dir)
    }
}

/// The last 40 lines of `s` (for assertion messages).
pub fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// A `vm.create` body for the PVH test guest running `cmdline`, 1 vCPU, 64 MiB, its serial
/// console on petrel's stdout.
pub fn guest_config(cmdline: &str) -> Value {
    let kernel = petrel_tests::guest_image(petrel_tests::GuestKind::Pvh);
    json!({
        "payload": {"kernel": kernel, "cmdline": cmdline},
        "cpus": {"boot_vcpus": 1},
        "memory": {"size": 64u64 << 20},
        "serial": {"mode": "Tty"},
    })
}

/// `r` is an error with `status` whose message contains each of `words`, in Cloud
/// Hypervisor's shape: a JSON array of messages, with no reason phrase on the status line.
#[track_caller]
pub fn assert_error(r: &Response, status: u16, words: &[&str], what: &str) {
    let msg = r.error_message();
    assert_eq!(r.status, status, "{what}: {msg}");
    assert_eq!(r.reason, "", "{what}: status line with a reason phrase");
    assert_eq!(r.header("content-type"), Some("application/json"), "{what}");
    let list: Result<Vec<String>, _> = r.json_body();
    assert!(
        list.is_ok_and(|l| !l.is_empty()),
        "{what}: the error body is not a JSON array of messages: {:?}",
        String::from_utf8_lossy(&r.body)
    );
    for w in words {
        assert!(msg.contains(w), "{what}: error {msg:?} does not name {w:?}");
    }
}

/// The median of `samples` (sorted in place).
pub fn median(samples: &mut [Duration]) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}
