//! petreld beyond its first slice, against the real `petrel` and the test guest: tap devices
//! petreld makes for a VM's interfaces (root only), `/v1/events` (server-sent events), and,
//! as root, petrel's cgroup.
//!
//! Needs the binaries built first (`cargo build -p petreld -p vmm`).

mod petreld_support;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use petrel_http::{Client, Method};
use petrel_tests::require_kvm;
use petreld_support::{guest_config, Petreld};
use serde_json::{json, Value};

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn link_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

/// A bridge for the test, deleted on drop.
struct Bridge(String);

impl Bridge {
    fn new(name: &str) -> Option<Bridge> {
        let ok = Command::new("ip")
            .args(["link", "add", "name", name, "type", "bridge"])
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Bridge(name.to_string()))
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", &self.0]).status();
    }
}

#[test]
fn taps_made_attached_and_removed() {
    require_kvm!();
    if !is_root() || !Path::new("/dev/net/tun").exists() {
        petrel_tests::skip("needs root and /dev/net/tun");
        return;
    }
    let d = Petreld::new("taps");
    let br_name = format!("ptbr{}", std::process::id() % 100_000);
    let Some(br) = Bridge::new(&br_name) else {
        petrel_tests::skip("cannot create a bridge");
        return;
    };

    // A bridge that does not exist: 422, nothing stored.
    let mut bad = json!({"name": "nobr", "config": guest_config("action=halt"),
        "net": [{"id": "eth0", "bridge": "no-such-br9"}]});
    let r = d.call(Method::Post, "/v1/vms", Some(&bad));
    assert_eq!(r.status, 422, "{}", r.error_message());
    assert!(
        r.error_message().contains("net[0].bridge"),
        "{}",
        r.error_message()
    );
    bad["net"] = json!([{"mac": "nonsense"}]);
    assert_eq!(d.call(Method::Post, "/v1/vms", Some(&bad)).status, 400);
    assert!(d.list("")["items"].as_array().unwrap().is_empty());

    // One interface from `net` (on the bridge), one from a config.net entry without a tap.
    let mut config = guest_config("action=halt");
    config["net"] = json!([{"id": "eth1", "mac": "12:34:56:78:9A:BC"}]);
    let vm = d.ok(
        Method::Post,
        "/v1/vms",
        Some(&json!({"name": "netvm", "config": config,
            "net": [{"id": "eth0", "bridge": br.0}]})),
        201,
    );
    assert_eq!(vm["state"], "running", "{vm:#}");
    let nets = vm["net"].as_array().unwrap().clone();
    assert_eq!(nets.len(), 2, "{vm:#}");
    let id = vm["id"].as_str().unwrap();
    let tap0 = nets[0]["tap"].as_str().unwrap().to_string();
    let tap1 = nets[1]["tap"].as_str().unwrap().to_string();
    assert!(tap0.len() <= 15 && tap0.starts_with("pt") && tap0.contains(&id[..10]));
    assert!(link_exists(&tap0) && link_exists(&tap1), "taps missing");
    let master = std::fs::read_link(format!("/sys/class/net/{tap0}/master")).unwrap();
    assert!(master.ends_with(&br.0), "{master:?}");
    let flags = std::fs::read_to_string(format!("/sys/class/net/{tap0}/flags")).unwrap();
    let flags = u32::from_str_radix(flags.trim().trim_start_matches("0x"), 16).unwrap();
    assert_eq!(flags & 1, 1, "tap not up");
    // tun_flags: IFF_TAP 0x2 | IFF_NO_PI 0x1000 | IFF_VNET_HDR 0x4000.
    let tf = std::fs::read_to_string(format!("/sys/class/net/{tap0}/tun_flags")).unwrap();
    let tf = u32::from_str_radix(tf.trim().trim_start_matches("0x"), 16).unwrap();
    assert_eq!(tf & 0x5002, 0x5002, "tun_flags {tf:#x}");
    let mac0 = nets[0]["mac"].as_str().unwrap().to_string();
    assert!(mac0.starts_with("02:"), "{mac0}");
    assert_eq!(nets[1]["mac"], "12:34:56:78:9a:bc");

    // petrel's view: the guest config has both devices with their MACs, from fds.
    let petrel = Client::new(vm["api_socket"].as_str().unwrap());
    let info: Value = petrel.get("/api/v1/vm.info").unwrap().json_body().unwrap();
    let guest_net = info["config"]["net"].as_array().unwrap();
    let macs: Vec<&str> = guest_net
        .iter()
        .map(|n| n["mac"].as_str().unwrap())
        .collect();
    assert_eq!(macs, [mac0.as_str(), "12:34:56:78:9a:bc"], "{info:#}");
    assert!(guest_net
        .iter()
        .all(|n| n["tap"].is_null() && n["fds"].is_array()));

    // Stable MACs: stop and start again, same taps and MACs.
    d.ok(Method::Post, "/v1/vms/netvm/stop", None, 200);
    assert!(!link_exists(&tap0), "tap outlived its petrel");
    let again = d.ok(Method::Post, "/v1/vms/netvm/start", None, 200);
    assert_eq!(again["net"], vm["net"]);
    assert!(link_exists(&tap0));

    d.ok(Method::Delete, "/v1/vms/netvm", None, 204);
    let deadline = Instant::now() + Duration::from_secs(5);
    while link_exists(&tap0) || link_exists(&tap1) {
        assert!(Instant::now() < deadline, "taps left after delete");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Reads SSE records (`event`/`data` pairs and comments) from a subscription.
struct Events {
    reader: BufReader<UnixStream>,
}

impl Events {
    fn subscribe(d: &Petreld) -> Events {
        let s = UnixStream::connect(d.dir.join("petreld.sock")).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        (&s).write_all(b"GET /v1/events HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut reader = BufReader::new(s);
        let mut head = Vec::new();
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            if line == "\r\n" {
                break;
            }
            head.push(line);
        }
        assert!(head[0].starts_with("HTTP/1.1 200"), "{head:?}");
        assert!(
            head.iter()
                .any(|h| h.eq_ignore_ascii_case("content-type: text/event-stream\r\n")),
            "{head:?}"
        );
        assert!(!head
            .iter()
            .any(|h| h.to_ascii_lowercase().starts_with("content-length")));
        let mut e = Events { reader };
        assert_eq!(e.next_record(), (None, ": subscribed".to_string()));
        e
    }

    /// The next record: (event name, data) or (None, comment).
    fn next_record(&mut self) -> (Option<String>, String) {
        let mut event = None;
        let mut data = String::new();
        loop {
            let mut line = String::new();
            let n = self.reader.read_line(&mut line).unwrap();
            assert!(n > 0, "event stream closed");
            let line = line.trim_end_matches('\n');
            if line.is_empty() {
                return (event, data);
            }
            if let Some(v) = line.strip_prefix("event: ") {
                event = Some(v.to_string());
            } else if let Some(v) = line.strip_prefix("data: ") {
                data = v.to_string();
            } else {
                data = line.to_string();
            }
        }
    }

    /// The next `vm` event (comments skipped).
    fn next_vm(&mut self) -> Value {
        loop {
            if let (Some(ev), data) = self.next_record() {
                assert_eq!(ev, "vm");
                return serde_json::from_str(&data).unwrap();
            }
        }
    }
}

#[test]
fn events_stream_state_changes_in_order() {
    require_kvm!();
    let d = Petreld::with_config("events", json!({"events_keepalive_ms": 300}));
    let mut ev = Events::subscribe(&d);
    let mut second = Events::subscribe(&d);
    let vm = d.create("ev1", "action=halt", json!({}));
    let id = vm["id"].as_str().unwrap().to_string();
    d.ok(Method::Post, "/v1/vms/ev1/stop", None, 200);
    d.ok(Method::Delete, "/v1/vms/ev1", None, 204);
    let mut seen = Vec::new();
    for _ in 0..5 {
        let e = ev.next_vm();
        assert_eq!(e["id"], id.as_str());
        assert_eq!(e["name"], "ev1");
        seen.push(e["state"].as_str().unwrap().to_string());
        if seen.len() == 4 {
            assert!(e["reason"].as_str().is_some(), "stop has a reason: {e}");
        }
    }
    assert_eq!(
        seen,
        ["starting", "running", "stopping", "stopped", "deleted"]
    );
    assert_eq!(second.next_vm()["state"], "starting");
    // Quiet: a keep-alive comment.
    let t = Instant::now();
    assert_eq!(ev.next_record(), (None, ": keep-alive".to_string()));
    assert!(t.elapsed() < Duration::from_secs(5));
    // The rest of the API still answers while streams are open.
    assert_eq!(d.call(Method::Get, "/v1/ping", None).status, 200);
}

/// VM `id`'s cgroup directories petreld would use here (v2, else v1 memory and cpu).
fn cgroup_dirs(id: &str) -> Vec<std::path::PathBuf> {
    let root = Path::new("/sys/fs/cgroup");
    let controllers = std::fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
    if controllers.contains("memory") && controllers.contains("cpu") {
        return vec![root.join("petrel").join(id)];
    }
    if root.join("memory/memory.limit_in_bytes").is_file() {
        return vec![
            root.join("memory/petrel").join(id),
            root.join("cpu/petrel").join(id),
        ];
    }
    Vec::new()
}

fn read_trim(p: &Path) -> String {
    std::fs::read_to_string(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .trim()
        .to_string()
}

#[test]
fn root_petrel_runs_in_its_own_cgroup() {
    require_kvm!();
    if !is_root() {
        petrel_tests::skip("needs root");
        return;
    }
    let d = Petreld::new("cgroup");
    let mut config = guest_config("action=halt");
    config["cpus"]["boot_vcpus"] = json!(2);
    let vm = d.ok(
        Method::Post,
        "/v1/vms",
        Some(&json!({"name": "cg", "config": config})),
        201,
    );
    let id = vm["id"].as_str().unwrap().to_string();
    let pid = vm["pid"].as_u64().unwrap().to_string();
    let dirs = cgroup_dirs(&id);
    if dirs.is_empty() {
        petrel_tests::skip("no cgroup hierarchy with memory and cpu");
        return;
    }
    let want_mem = (64u64 << 20) + (128 << 20);
    for dir in &dirs {
        let procs = read_trim(&dir.join("cgroup.procs"));
        assert!(
            procs.lines().any(|l| l == pid),
            "{}: {procs}",
            dir.display()
        );
    }
    if dirs.len() == 1 {
        assert_eq!(read_trim(&dirs[0].join("memory.max")), want_mem.to_string());
        assert_eq!(read_trim(&dirs[0].join("cpu.max")), "200000 100000");
    } else {
        assert_eq!(
            read_trim(&dirs[0].join("memory.limit_in_bytes")),
            want_mem.to_string()
        );
        assert_eq!(read_trim(&dirs[1].join("cpu.cfs_quota_us")), "200000");
        assert_eq!(read_trim(&dirs[1].join("cpu.cfs_period_us")), "100000");
    }
    // Root: seccomp on, when this petrel has the flag.
    let help = Command::new(petrel_tests::petrel_bin())
        .arg("--help")
        .output()
        .unwrap();
    if String::from_utf8_lossy(&[help.stdout, help.stderr].concat()).contains("--seccomp") {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
        let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
        assert!(
            args.windows(2)
                .any(|w| w[0] == b"--seccomp" && w[1] == b"true"),
            "{}",
            String::from_utf8_lossy(&cmdline)
        );
    }
    // petrel's own view agrees.
    let own = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    assert!(own.contains(&format!("/petrel/{id}")), "{own}");
    d.ok(Method::Delete, "/v1/vms/cg", None, 204);
    for dir in &dirs {
        assert!(!dir.exists(), "{} left after delete", dir.display());
    }
}
