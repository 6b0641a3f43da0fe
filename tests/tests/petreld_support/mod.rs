//! What `petreld.rs` needs: a real petreld in a scratch directory (killed with every petrel
//! it started when dropped), JSON calls, listing with continuation tokens, waiting for a VM
//! state, and the test guest's config.
#![allow(dead_code)]

pub mod netns;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use petrel_http::{Client, Method, Response};
use petrel_tests::{guest_image, petrel_bin, GuestKind};
use serde_json::{json, Value};

/// How long a VM state change may take.
pub const WAIT: Duration = Duration::from_secs(30);

pub fn petreld_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("PETRELD_BIN").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let p = petrel_bin().with_file_name("petreld");
    assert!(
        p.is_file(),
        "{} not built (cargo build -p petreld)",
        p.display()
    );
    p
}

/// A petreld in a scratch directory; on drop it and every petrel it started are killed.
pub struct Petreld {
    /// The scratch directory.
    pub dir: PathBuf,
    child: Option<Child>,
    /// A client of its socket.
    pub client: Client,
    /// The network namespace it runs in (`ip netns exec`), if not the test's.
    pub netns: Option<String>,
}

impl Petreld {
    pub fn new(name: &str) -> Petreld {
        Petreld::with_config(name, json!({}))
    }

    /// A petreld whose config file has `extra` merged in.
    pub fn with_config(name: &str, extra: Value) -> Petreld {
        Petreld::build(name, extra, None)
    }

    /// A petreld run in network namespace `netns` (`ip netns exec`, which also mounts that
    /// namespace's /sys).
    pub fn in_netns(name: &str, netns: &str) -> Petreld {
        Petreld::build(name, json!({}), Some(netns.to_string()))
    }

    fn build(name: &str, extra: Value, netns: Option<String>) -> Petreld {
        let dir = std::env::temp_dir().join(format!("pd-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut config = json!({
            "petrel": petrel_bin(),
            "poll_interval_ms": 200,
            "stop_timeout_s": 2,
            "cpu_overcommit": 64.0,
        });
        merge(&mut config, extra);
        std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
        let client = Client::new(dir.join("petreld.sock")).with_timeout(Duration::from_secs(60));
        let mut d = Petreld {
            dir,
            child: None,
            client,
            netns,
        };
        d.start();
        d
    }

    pub fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("petreld.log"))
            .unwrap();
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(petreld_bin());
                c
            }
            None => Command::new(petreld_bin()),
        };
        let child = cmd
            .arg("--socket")
            .arg(self.dir.join("petreld.sock"))
            .arg("--state-dir")
            .arg(self.dir.join("state"))
            .arg("--config")
            .arg(self.dir.join("config.json"))
            .env("PETRELD_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + WAIT;
        loop {
            if let Ok(r) = self.client.get("/v1/ping") {
                assert_eq!(r.status, 200);
                break;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("petreld exited: {status}\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "petreld never answered\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("petreld.log")).unwrap_or_default()
    }

    pub fn call(&self, method: Method, path: &str, body: Option<&Value>) -> Response {
        let bytes = body.map(|b| serde_json::to_vec(b).unwrap());
        self.client
            .request(method, path, bytes.as_deref())
            .unwrap_or_else(|e| panic!("{method} {path}: {e:?}\n{}", self.log()))
    }

    /// The JSON of a request that must answer `status`.
    pub fn ok(&self, method: Method, path: &str, body: Option<&Value>, status: u16) -> Value {
        let r = self.call(method, path, body);
        assert_eq!(
            r.status,
            status,
            "{method} {path}: {}\n{}",
            r.error_message(),
            self.log()
        );
        if r.body.is_empty() {
            Value::Null
        } else {
            r.json_body()
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&r.body).into()))
        }
    }

    pub fn vm(&self, name: &str) -> Value {
        self.ok(Method::Get, &format!("/v1/vms/{name}"), None, 200)
    }

    pub fn create(&self, name: &str, cmdline: &str, extra: Value) -> Value {
        let mut body = json!({"name": name, "config": guest_config(cmdline)});
        merge(&mut body, extra);
        self.ok(Method::Post, "/v1/vms", Some(&body), 201)
    }

    pub fn list(&self, query: &str) -> Value {
        self.ok(Method::Get, &format!("/v1/vms{query}"), None, 200)
    }

    /// Every VM (following continuation tokens).
    pub fn all(&self) -> Vec<Value> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let q = match &token {
                Some(t) => format!("?limit=5&continue={t}"),
                None => "?limit=5".into(),
            };
            let page = self.list(&q);
            out.extend(page["items"].as_array().unwrap().iter().cloned());
            match page["continue"].as_str() {
                Some(t) => token = Some(t.to_string()),
                None => return out,
            }
        }
    }

    /// Waits until VM `name` satisfies `pred`; returns it.
    pub fn wait_vm(&self, name: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let vm = self.vm(name);
            if pred(&vm) {
                return vm;
            }
            assert!(
                Instant::now() < deadline,
                "{name}: never {what}: {vm:#}\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Petreld {
    fn drop(&mut self) {
        self.kill9();
        kill_petrels_under(&self.dir);
        remove_cgroups_under(&self.dir);
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// SIGKILLs every process whose command line mentions `dir` (the petrels of a test).
pub fn kill_petrels_under(dir: &Path) {
    let want = dir.to_string_lossy().into_owned();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(&want) {
            // SAFETY: kill has no memory effects.
            unsafe { libc::kill(pid, 9) };
        }
    }
}

/// Removes the cgroups (`petrel/<id>`, v2 or v1) of the VMs under `dir/state/vms` that a
/// petreld running as root made (their petrels were just killed).
pub fn remove_cgroups_under(dir: &Path) {
    let Ok(vms) = std::fs::read_dir(dir.join("state/vms")) else {
        return;
    };
    for vm in vms.flatten() {
        let id = vm.file_name();
        for base in ["", "memory/", "cpu/"] {
            let cg = Path::new("/sys/fs/cgroup")
                .join(format!("{base}petrel"))
                .join(&id);
            for _ in 0..100 {
                if !cg.exists() || std::fs::remove_dir(&cg).is_ok() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

pub fn merge(target: &mut Value, extra: Value) {
    if let (Some(t), Value::Object(e)) = (target.as_object_mut(), extra) {
        t.extend(e);
    }
}

pub fn guest_config(cmdline: &str) -> Value {
    json!({
        "payload": {"kernel": guest_image(GuestKind::Pvh), "cmdline": cmdline},
        "cpus": {"boot_vcpus": 1},
        "memory": {"size": 64u64 << 20},
    })
}

pub fn names(items: &Value) -> Vec<String> {
    items["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap().to_string())
        .collect()
}

pub fn pid_alive(pid: u64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        !s.rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z')
    })
}
