//! The real `petrelctl` binary against a fake per-VM API server (petrel_http::Server) that
//! answers with canned JSON and records every request.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use petrel_http::{Method, Request, Response, Server, ServerConfig};
use serde_json::{json, Value};

/// A request as the fake server saw it.
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    method: Method,
    path: String,
    body: String,
    fds: usize,
}

/// A fake petrel API: canned answers per path (404 for the rest), requests recorded.
struct Fake {
    _server: Server,
    socket: PathBuf,
    seen: Arc<Mutex<Vec<Seen>>>,
    answers: Arc<Mutex<HashMap<String, Response>>>,
}

fn temp_path(name: &str) -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!("petrelctl-{}-{n}-{name}", std::process::id()))
}

fn ping_body() -> Value {
    json!({"build_version": "v0.1.0-test", "version": "0.1.0", "pid": 4242,
           "features": ["kvm", "seccomp"], "hypervisor": "kvm"})
}

fn info_body() -> Value {
    json!({
        "config": {
            "cpus": {"boot_vcpus": 2},
            "memory": {"size": 536870912},
            "payload": {"kernel": "/boot/vmlinux", "cmdline": "console=ttyS0"},
            "serial": {"mode": "Tty"},
            "disks": [{"path": "/img/root.raw", "readonly": true, "direct": false, "id": "_disk0"}],
            "net": [{"tap": "tap0", "mac": "52:54:00:12:34:56", "id": "_net0"}],
            "balloon": {"size": 268435456, "deflate_on_oom": true, "statistics_polling_interval_s": 0}
        },
        "state": "Running",
        "memory_actual_size": 268435456u64
    })
}

fn counters_body() -> Value {
    json!({"_net0": {"tx_bytes": 1500, "rx_bytes": 3000}, "_disk0": {"read_bytes": 4096, "read_ops": 1}})
}

impl Fake {
    fn start(name: &str) -> Fake {
        let socket = temp_path(&format!("{name}.sock"));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let mut answers = HashMap::new();
        answers.insert(
            "/api/v1/vmm.ping".to_string(),
            Response::json(200, &ping_body()),
        );
        answers.insert(
            "/api/v1/vm.info".to_string(),
            Response::json(200, &info_body()),
        );
        answers.insert(
            "/api/v1/vm.counters".to_string(),
            Response::json(200, &counters_body()),
        );
        for route in [
            "vm.create",
            "vm.boot",
            "vm.pause",
            "vm.resume",
            "vm.reboot",
            "vm.power-button",
            "vm.shutdown",
            "vm.delete",
            "vmm.shutdown",
            "vm.resize",
            "vm.remove-device",
            "vm.add-net",
            "vm.add-vsock",
        ] {
            answers.insert(format!("/api/v1/{route}"), Response::no_content());
        }
        answers.insert(
            "/api/v1/vm.add-disk".to_string(),
            Response::json(200, &json!({"id": "_disk1", "bdf": "0000:00:05.0"})),
        );
        let answers = Arc::new(Mutex::new(answers));
        let (s, a) = (seen.clone(), answers.clone());
        let server = Server::bind(&socket, ServerConfig::default(), move |req: Request| {
            s.lock().unwrap().push(Seen {
                method: req.method,
                path: req.path().to_string(),
                body: String::from_utf8_lossy(&req.body).into_owned(),
                fds: req.fds.len(),
            });
            a.lock()
                .unwrap()
                .get(req.path())
                .cloned()
                .unwrap_or_else(|| Response::error(404, "unknown route"))
        })
        .unwrap();
        Fake {
            _server: server,
            socket,
            seen,
            answers,
        }
    }

    fn answer(&self, path: &str, response: Response) {
        self.answers
            .lock()
            .unwrap()
            .insert(path.to_string(), response);
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// Runs `petrelctl --api-socket SOCKET args…`.
    fn ctl(&self, args: &[&str]) -> Output {
        petrelctl(Some(&self.socket), args)
    }
}

fn petrelctl(socket: Option<&Path>, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_petrelctl"));
    if let Some(socket) = socket {
        cmd.arg("--api-socket").arg(socket);
    }
    cmd.args(args).stdin(Stdio::null()).output().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8(o.stderr.clone()).unwrap()
}

/// Exit code, stdout and stderr, for assertion messages.
fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

fn ok(o: &Output) -> String {
    assert_eq!(code(o), 0, "stdout: {}\nstderr: {}", stdout(o), stderr(o));
    assert_eq!(stderr(o), "");
    stdout(o)
}

#[test]
fn ping_text_and_json() {
    let fake = Fake::start("ping");
    let text = ok(&fake.ctl(&["ping"]));
    assert_eq!(
        text,
        "version:    0.1.0\nbuild:      v0.1.0-test\npid:        4242\nhypervisor: kvm\nfeatures:   kvm, seccomp\n"
    );
    let out = ok(&fake.ctl(&["ping", "-o", "json"]));
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap(), ping_body());
    assert!(out.contains("\n  \"pid\": 4242"), "pretty: {out}");
    let seen = fake.seen();
    assert_eq!(seen.len(), 2);
    assert!(seen
        .iter()
        .all(|s| s.method == Method::Get && s.path == "/api/v1/vmm.ping" && s.body.is_empty()));
}

#[test]
fn info_text_and_json() {
    let fake = Fake::start("info");
    let text = ok(&fake.ctl(&["info"]));
    for line in [
        "state:   Running\n",
        "vcpus:   2\n",
        "memory:  512 MiB (actual 256 MiB)\n",
        "kernel:  /boot/vmlinux\n",
        "cmdline: console=ttyS0\n",
        "serial:  Tty\n",
        "disk:    /img/root.raw (id _disk0, readonly)\n",
        "net:     tap tap0 (id _net0, mac 52:54:00:12:34:56)\n",
        "balloon: 256 MiB (deflate_on_oom)\n",
    ] {
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }
    assert!(text.starts_with("state:"), "{text}");
    let out = ok(&fake.ctl(&["-o", "json", "info"]));
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap(), info_body());
    assert_eq!(fake.seen()[0].method, Method::Get);
    assert_eq!(fake.seen()[0].path, "/api/v1/vm.info");
}

#[test]
fn counters_table_and_json() {
    let fake = Fake::start("counters");
    let text = ok(&fake.ctl(&["counters"]));
    assert_eq!(
        text,
        "DEVICE  COUNTER     VALUE\n\
         _disk0  read_bytes  4096\n\
         \x20       read_ops    1\n\
         _net0   rx_bytes    3000\n\
         \x20       tx_bytes    1500\n"
    );
    let out = ok(&fake.ctl(&["counters", "--output=json"]));
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap(),
        counters_body()
    );
    fake.answer("/api/v1/vm.counters", Response::json(200, &json!({})));
    assert_eq!(ok(&fake.ctl(&["counters"])), "no counters\n");
}

#[test]
fn every_action_sends_a_bodyless_put() {
    let fake = Fake::start("actions");
    let cases = [
        ("boot", "vm.boot", "VM booted"),
        ("pause", "vm.pause", "VM paused"),
        ("resume", "vm.resume", "VM resumed"),
        ("reboot", "vm.reboot", "VM rebooted"),
        ("power-button", "vm.power-button", "power button pressed"),
        ("shutdown", "vm.shutdown", "VM shut down"),
        ("delete", "vm.delete", "VM deleted"),
        ("shutdown-vmm", "vmm.shutdown", "VMM shutting down"),
    ];
    for (word, _, line) in cases {
        assert_eq!(ok(&fake.ctl(&[word])), format!("{line}\n"), "{word}");
        // No body from the server: nothing to print as JSON.
        assert_eq!(ok(&fake.ctl(&[word, "-o", "json"])), "", "{word}");
    }
    let seen = fake.seen();
    assert_eq!(seen.len(), 2 * cases.len());
    for (pair, (_, route, _)) in seen.chunks(2).zip(cases) {
        for s in pair {
            assert_eq!(s.method, Method::Put);
            assert_eq!(s.path, format!("/api/v1/{route}"));
            assert_eq!(s.body, "");
        }
    }
}

#[test]
fn create_sends_the_validated_config() {
    let fake = Fake::start("create");
    let file = temp_path("vm.json");
    let config = json!({
        "payload": {"kernel": "/boot/vmlinux", "cmdline": "console=ttyS0"},
        "cpus": {"boot_vcpus": 2},
        "memory": {"size": 268435456},
        "disks": [{"path": "/img/root.raw", "readonly": true}]
    });
    std::fs::write(&file, config.to_string()).unwrap();
    assert_eq!(
        ok(&fake.ctl(&["create", file.to_str().unwrap()])),
        "VM created\n"
    );
    let seen = fake.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        (seen[0].method, seen[0].path.as_str()),
        (Method::Put, "/api/v1/vm.create")
    );
    let sent = api::VmConfig::from_json(&seen[0].body).unwrap();
    assert_eq!(sent, api::VmConfig::from_json(&config.to_string()).unwrap());
    std::fs::remove_file(&file).unwrap();
}

#[test]
fn bad_files_fail_before_sending() {
    let fake = Fake::start("badfile");
    let cases = [
        (
            r#"{"payload":{"kernel":"/k"},"memroy":{"size":1}}"#,
            "memroy",
        ),
        (
            r#"{"payload":{"kernel":"/k"},"cpus":{"boot_vcpus":0}}"#,
            "cpus.boot_vcpus: must be at least 1",
        ),
        (
            r#"{"payload":{"kernel":"/k"},"rng":{"src":"/dev/zero"}}"#,
            "rng.src",
        ),
        (
            r#"{"payload":{"kernel":"/k"},"net":[{"mac":"52:54:00:00:00:01"}]}"#,
            "net[0].tap",
        ),
        ("not json", "config:"),
    ];
    for (text, expected) in cases {
        let file = temp_path("bad.json");
        std::fs::write(&file, text).unwrap();
        let name = file.to_str().unwrap();
        let out = fake.ctl(&["create", name]);
        assert_eq!(code(&out), 1, "{text}");
        let err = stderr(&out);
        assert!(err.starts_with(&format!("petrelctl: {name}: ")), "{err}");
        assert!(err.contains(expected), "{expected:?} not in {err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert_eq!(stdout(&out), "");
        std::fs::remove_file(&file).unwrap();
    }
    let missing = temp_path("missing.json");
    let out = fake.ctl(&["create", missing.to_str().unwrap()]);
    assert_eq!(code(&out), 1);
    assert!(
        stderr(&out).starts_with(&format!("petrelctl: cannot read {}: ", missing.display())),
        "{}",
        stderr(&out)
    );
    assert!(fake.seen().is_empty(), "{:?}", fake.seen());
}

#[test]
fn resize_and_devices() {
    let fake = Fake::start("resize");
    assert_eq!(
        ok(&fake.ctl(&["resize", "256M"])),
        "balloon target: 256 MiB\n"
    );
    assert_eq!(
        ok(&fake.ctl(&["add-disk", "path=/img/data.raw,readonly=on,id=data"])),
        "disk added: _disk1 at 0000:00:05.0\n"
    );
    let out = ok(&fake.ctl(&["add-disk", "path=/img/x.raw", "-o", "json"]));
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap(),
        json!({"id": "_disk1", "bdf": "0000:00:05.0"})
    );
    assert_eq!(
        ok(&fake.ctl(&["remove-device", "data"])),
        "device data removed\n"
    );
    let seen = fake.seen();
    let bodies: Vec<(String, Value)> = seen
        .iter()
        .map(|s| {
            assert_eq!(s.method, Method::Put);
            (s.path.clone(), serde_json::from_str(&s.body).unwrap())
        })
        .collect();
    assert_eq!(
        bodies[0],
        (
            "/api/v1/vm.resize".into(),
            json!({"desired_balloon": 268435456u64})
        )
    );
    assert_eq!(bodies[1].0, "/api/v1/vm.add-disk");
    assert_eq!(
        (
            &bodies[1].1["path"],
            &bodies[1].1["readonly"],
            &bodies[1].1["id"]
        ),
        (&json!("/img/data.raw"), &json!(true), &json!("data"))
    );
    assert_eq!(
        bodies[3],
        ("/api/v1/vm.remove-device".into(), json!({"id": "data"}))
    );
}

#[test]
fn add_net_and_vsock() {
    let fake = Fake::start("net");
    // A 204 (before boot, as Cloud Hypervisor answers) names the id the request gave.
    assert_eq!(
        ok(&fake.ctl(&["add-net", "tap=tap1,mac=52:54:00:00:00:02,id=eth1"])),
        "network interface added: eth1\n"
    );
    // fd 0 (stdin, /dev/null here) travels with SCM_RIGHTS.
    assert_eq!(
        ok(&fake.ctl(&["add-net", "fd=0"])),
        "network interface added\n"
    );
    assert_eq!(
        ok(&fake.ctl(&["add-vsock", "cid=3,socket=/tmp/v.sock"])),
        "vsock device added\n"
    );
    let out = fake.ctl(&["add-net", "fd=987"]);
    assert_eq!(code(&out), 1);
    assert_eq!(stderr(&out), "petrelctl: add-net: fd 987 is not open\n");
    let seen = fake.seen();
    assert_eq!(seen.len(), 3, "{seen:?}");
    let body = |i: usize| serde_json::from_str::<Value>(&seen[i].body).unwrap();
    assert_eq!(seen[0].path, "/api/v1/vm.add-net");
    assert_eq!(
        body(0),
        json!({"tap": "tap1", "mac": "52:54:00:00:00:02", "id": "eth1"})
    );
    assert_eq!(seen[0].fds, 0);
    assert_eq!(body(1), json!({"fds": [0]}));
    assert_eq!(seen[1].fds, 1);
    assert_eq!(seen[2].path, "/api/v1/vm.add-vsock");
    assert_eq!(body(2), json!({"cid": 3, "socket": "/tmp/v.sock"}));
}

#[test]
fn server_errors_are_reported_with_status_and_message() {
    let fake = Fake::start("errors");
    fake.answer(
        "/api/v1/vm.boot",
        Response::error(409, "VM is in state Running"),
    );
    fake.answer(
        "/api/v1/vm.create",
        Response::error(400, "memory.hugepages: not supported"),
    );
    let out = fake.ctl(&["boot"]);
    assert_eq!(code(&out), 1);
    assert_eq!(
        stderr(&out),
        "petrelctl: vm.boot: 409 Conflict: VM is in state Running\n"
    );
    assert_eq!(stdout(&out), "");

    let file = temp_path("ok.json");
    std::fs::write(&file, r#"{"payload":{"kernel":"/k"}}"#).unwrap();
    let out = fake.ctl(&["create", file.to_str().unwrap(), "-o", "json"]);
    assert_eq!(code(&out), 1);
    assert_eq!(
        stderr(&out),
        "petrelctl: vm.create: 400 Bad Request: memory.hugepages: not supported\n"
    );
    std::fs::remove_file(&file).unwrap();

    // A route the server does not know.
    fake.answers.lock().unwrap().remove("/api/v1/vm.counters");
    let out = fake.ctl(&["counters"]);
    assert_eq!(code(&out), 1);
    assert_eq!(
        stderr(&out),
        "petrelctl: vm.counters: 404 Not Found: unknown route\n"
    );

    // A success that is not JSON where JSON is required.
    fake.answer("/api/v1/vm.info", Response::text(200, "surprise"));
    let out = fake.ctl(&["info"]);
    assert_eq!(code(&out), 1);
    assert!(
        stderr(&out).starts_with("petrelctl: vm.info: malformed JSON response"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn missing_socket() {
    let socket = temp_path("nobody.sock");
    let out = petrelctl(Some(&socket), &["ping"]);
    assert_eq!(code(&out), 1);
    let err = stderr(&out);
    assert!(
        err.starts_with(&format!(
            "petrelctl: cannot connect to {}: ",
            socket.display()
        )),
        "{err}"
    );
    assert!(err.contains("No such file or directory"), "{err}");
    assert_eq!(err.lines().count(), 1);
}

#[test]
fn usage_errors_exit_2() {
    let fake = Fake::start("usage");
    for args in [
        &["frobnicate"][..],
        &[],
        &["boot", "extra"],
        &["create"],
        &["resize", "much"],
        &["ping", "-o", "yaml"],
        &["ping", "--no-such-option"],
        &["add-disk", "readonly=on"],
    ] {
        let out = fake.ctl(args);
        assert_eq!(code(&out), 2, "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).starts_with("petrelctl: "), "{}", stderr(&out));
        assert_eq!(stdout(&out), "");
    }
    let out = petrelctl(None, &["ping"]);
    assert_eq!(code(&out), 2);
    assert!(
        stderr(&out).contains("missing --api-socket"),
        "{}",
        stderr(&out)
    );
    assert!(fake.seen().is_empty(), "{:?}", fake.seen());

    let out = petrelctl(None, &["--help"]);
    assert_eq!(code(&out), 0);
    let help = stdout(&out);
    for word in [
        "ping",
        "info",
        "create FILE",
        "power-button",
        "counters",
        "resize SIZE",
        "-o, --output",
    ] {
        assert!(help.contains(word), "{word} not in help:\n{help}");
    }
}

#[test]
fn create_reads_standard_input() {
    use std::io::Write;
    let fake = Fake::start("stdin");
    let mut child = Command::new(env!("CARGO_BIN_EXE_petrelctl"))
        .arg("--api-socket")
        .arg(&fake.socket)
        .args(["create", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin
        .write_all(br#"{"payload":{"kernel":"/k"},"memory":{"size":134217728}}"#)
        .unwrap();
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    assert_eq!(ok(&out), "VM created\n");
    let sent = api::VmConfig::from_json(&fake.seen()[0].body).unwrap();
    assert_eq!(sent.memory.size, 128 << 20);
}
