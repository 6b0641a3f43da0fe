//! petrel in Firecracker's dialect (`--api-sock`, Firecracker's API and `--config-file`),
//! against the real Firecracker where its binary is present (`../shared/peers/bin/firecracker`
//! or `PETREL_FIRECRACKER`): the same request sequences, before and after `InstanceStart` and
//! with error cases, must get the same status codes and body shapes; the test guest sees
//! SendCtrlAltDel's keys on the i8042 and resets, which ends both processes.

mod fc_support;

use std::path::Path;
use std::time::Duration;

use fc_support::{assert_fault, shape, step, ScratchDir, Shape, Step, Vmm, Which};
use petrel_http::Method::{self, Delete, Get, Patch, Put};
use petrel_tests::{require_kvm, GuestKind};
use serde_json::{json, Value};

const BOOT_TIMEOUT: Duration = Duration::from_secs(60);

fn j(v: Value) -> Option<String> {
    Some(v.to_string())
}

fn raw(s: &str) -> Option<String> {
    Some(s.to_string())
}

/// The sequence before `InstanceStart`, for a VMM whose scratch directory is `dir`.
fn before_start(dir: &Path, kernel: &str) -> Vec<Step> {
    let rootfs = dir.join("rootfs.img");
    let data = dir.join("data.img");
    for f in [&rootfs, &data] {
        let file = std::fs::File::create(f).unwrap();
        file.set_len(1 << 20).unwrap();
    }
    let p = |f: &Path| f.to_string_lossy().into_owned();
    vec![
        step(Get, "/", None),
        step(Get, "/version", None),
        step(Get, "/vm/config", None),
        step(Get, "/machine-config", None),
        step(Get, "/nope", None),
        step(Delete, "/machine-config", None),
        step(
            Put,
            "/machine-config",
            j(json!({"vcpu_count": 0, "mem_size_mib": 64})),
        ),
        step(
            Put,
            "/machine-config",
            j(json!({"vcpu_count": "a", "mem_size_mib": 64})),
        ),
        step(
            Put,
            "/machine-config",
            j(json!({"vcpu_count": 1, "mem_size_mib": -1})),
        ),
        step(
            Put,
            "/machine-config",
            j(json!({"vcpu_count": 1, "mem_size_mib": 64, "bogus": 1})),
        ),
        step(Put, "/machine-config", j(json!({"mem_size_mib": 64}))),
        step(Put, "/machine-config", None),
        step(Put, "/machine-config", raw("xx")),
        step(
            Put,
            "/machine-config",
            j(json!({"vcpu_count": 1, "mem_size_mib": 128})),
        ),
        step(Patch, "/machine-config", j(json!({"mem_size_mib": 64}))),
        step(Patch, "/machine-config", j(json!({"vcpu_count": 300}))),
        step(Get, "/machine-config", None),
        step(
            Put,
            "/boot-source",
            j(json!({"kernel_image_path": "/nonexistent/k"})),
        ),
        step(Put, "/boot-source", j(json!({"boot_args": "x"}))),
        step(
            Put,
            "/boot-source",
            j(json!({"kernel_image_path": kernel, "boot_args": "action=ctrl-alt-del"})),
        ),
        step(
            Put,
            "/drives/a",
            j(json!({"drive_id": "b", "path_on_host": p(&rootfs), "is_root_device": false})),
        ),
        step(
            Put,
            "/drives/rootfs",
            j(
                json!({"drive_id": "rootfs", "path_on_host": "/nonexistent/r", "is_root_device": true}),
            ),
        ),
        step(
            Put,
            "/drives/rootfs",
            j(json!({"drive_id": "rootfs", "path_on_host": p(&rootfs), "is_root_device": "yes"})),
        ),
        step(
            Put,
            "/drives/rootfs",
            j(json!({"drive_id": "rootfs", "path_on_host": p(&rootfs), "is_root_device": true})),
        ),
        step(
            Put,
            "/drives/data",
            j(
                json!({"drive_id": "data", "path_on_host": p(&data), "is_root_device": false, "is_read_only": true, "cache_type": "Writeback"}),
            ),
        ),
        step(
            Put,
            "/drives/data",
            j(
                json!({"drive_id": "data", "path_on_host": p(&data), "is_root_device": false, "cache_type": "Sometimes"}),
            ),
        ),
        step(
            Put,
            "/vsock",
            j(json!({"guest_cid": 3, "uds_path": p(&dir.join("v.sock"))})),
        ),
        step(
            Put,
            "/vsock",
            j(json!({"guest_cid": "three", "uds_path": "x"})),
        ),
        step(Put, "/entropy", j(json!({}))),
        step(Put, "/entropy", j(json!({"bogus": 1}))),
        step(
            Put,
            "/balloon",
            j(json!({"amount_mib": 0, "deflate_on_oom": false})),
        ),
        step(
            Put,
            "/balloon",
            j(json!({"amount_mib": "x", "deflate_on_oom": false})),
        ),
        step(Get, "/balloon", None),
        step(Get, "/balloon/statistics", None),
        step(Patch, "/balloon", j(json!({"amount_mib": 1}))),
        step(Patch, "/vm", j(json!({"state": "Paused"}))),
        step(Put, "/actions", j(json!({"action_type": "Bogus"}))),
        step(Put, "/actions", j(json!({}))),
        step(Put, "/logger", j(json!({"level": "Bogus"}))),
        step(
            Put,
            "/metrics",
            j(json!({"metrics_path": "/nonexistent/dir/m"})),
        ),
        step(
            Put,
            "/metrics",
            j(json!({"metrics_path": p(&dir.join("metrics.json"))})),
        ),
        step(Put, "/actions", j(json!({"action_type": "FlushMetrics"}))),
        step(Get, "/vm/config", None),
        step(Put, "/actions", j(json!({"action_type": "InstanceStart"}))),
    ]
}

/// The sequence after `InstanceStart` (SendCtrlAltDel is sent separately).
fn after_start(dir: &Path) -> Vec<Step> {
    let p = |f: &str| dir.join(f).to_string_lossy().into_owned();
    vec![
        step(Get, "/", None),
        step(
            Put,
            "/machine-config",
            j(json!({"vcpu_count": 1, "mem_size_mib": 64})),
        ),
        step(Patch, "/machine-config", j(json!({"vcpu_count": 1}))),
        step(
            Put,
            "/boot-source",
            j(json!({"kernel_image_path": "/nonexistent/k"})),
        ),
        step(
            Put,
            "/drives/late",
            j(
                json!({"drive_id": "late", "path_on_host": p("rootfs.img"), "is_root_device": false}),
            ),
        ),
        step(Put, "/logger", j(json!({"level": "Info"}))),
        step(Put, "/metrics", j(json!({"metrics_path": p("m2.json")}))),
        step(Put, "/actions", j(json!({"action_type": "InstanceStart"}))),
        step(Patch, "/vm", j(json!({"state": "Paused"}))),
        step(Patch, "/vm", j(json!({"state": "Paused"}))),
        step(Get, "/", None),
        step(Patch, "/vm", j(json!({"state": "Resumed"}))),
        step(Patch, "/vm", j(json!({"state": "Bogus"}))),
        step(Patch, "/balloon", j(json!({"amount_mib": 1}))),
        step(Get, "/balloon", None),
        step(Get, "/balloon/statistics", None),
        step(Patch, "/drives/nope", j(json!({"drive_id": "nope"}))),
        step(Put, "/actions", j(json!({"action_type": "FlushMetrics"}))),
        step(Get, "/vm/config", None),
    ]
}

/// Runs both sequences against `which` and returns the shapes, the VMM (guest started and
/// waiting for Ctrl+Alt+Del) and its scratch directory.
fn run_sequences(which: Which, kernel: &str) -> (Vec<(String, Shape)>, Vmm, ScratchDir) {
    let name = match which {
        Which::Petrel => "seq-p",
        Which::Firecracker => "seq-f",
    };
    let dir = ScratchDir::new(name);
    let mut vmm = Vmm::spawn(which, &dir.0, &["--id", "difftest"]);
    assert!(
        vmm.wait_api(Duration::from_secs(10)),
        "no API socket\n{}",
        vmm.dump()
    );
    let mut shapes = Vec::new();
    let mut send = |vmm: &mut Vmm, s: &Step| {
        let r = vmm.call(s.method, &s.path, s.body.as_deref());
        let label = format!(
            "{} {} {}",
            s.method.as_str(),
            s.path,
            s.body.as_deref().unwrap_or("")
        );
        if !r.is_success() {
            assert_fault(&r, &format!("{which:?}: {label}"));
        }
        shapes.push((label, shape(&r)));
    };
    for s in before_start(&dir.0, kernel) {
        send(&mut vmm, &s);
    }
    assert!(
        vmm.wait_for(BOOT_TIMEOUT, |o| o
            .contains("PETREL-GUEST: waiting for ctrl-alt-del")),
        "{which:?}: the guest did not start\n{}",
        vmm.dump()
    );
    for s in after_start(&dir.0) {
        send(&mut vmm, &s);
    }
    (shapes, vmm, dir)
}

/// Sends SendCtrlAltDel and checks the guest read Ctrl, Alt, Del and reset, ending the VMM.
fn ctrl_alt_del_ends_the_vm(vmm: &mut Vmm) {
    let r = vmm.call(
        Put,
        "/actions",
        Some(r#"{"action_type": "SendCtrlAltDel"}"#),
    );
    assert_eq!(
        r.status,
        204,
        "{:?}: {}",
        vmm.which,
        String::from_utf8_lossy(&r.body)
    );
    let status = vmm.wait_exit(BOOT_TIMEOUT);
    let out = vmm.stdout();
    assert!(
        out.contains("KEYS: 14 11 e0 71") && out.contains("PETREL-GUEST: ctrl-alt-del"),
        "{:?}: the guest did not see Ctrl+Alt+Del\n{}",
        vmm.which,
        vmm.dump()
    );
    let status =
        status.unwrap_or_else(|| panic!("{:?} did not exit after the guest's reset", vmm.which));
    assert!(
        status.success(),
        "{:?} exited with {status}\n{}",
        vmm.which,
        vmm.dump()
    );
}

/// The metrics file holds JSON lines with Firecracker's sections.
fn metrics_lines(dir: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(dir.join("metrics.json")).unwrap_or_default();
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("metrics line {l:?}: {e}")))
        .collect()
}

#[test]
fn same_answers_as_firecracker_before_and_after_start() {
    require_kvm!();
    let kernel = petrel_tests::guest_image(GuestKind::Pvh);
    let (petrel, mut pvmm, pdir) = run_sequences(Which::Petrel, &kernel);
    // petrel's own expectations, with or without Firecracker to compare with.
    let status_of = |label: &str| {
        petrel
            .iter()
            .find(|(l, _)| l.starts_with(label))
            .map(|(_, s)| s.status)
            .unwrap_or_else(|| panic!("no step {label}"))
    };
    assert_eq!(
        status_of("PUT /actions {\"action_type\":\"InstanceStart\"}"),
        204
    );
    assert_eq!(status_of("GET /nope"), 400);
    assert_eq!(status_of("PUT /machine-config {\"mem_size_mib\":64}"), 400);
    // Paused shows in GET /.
    let paused = pvmm.call(Get, "/", None);
    assert_eq!(paused.json_body::<Value>().unwrap()["state"], "Running");
    ctrl_alt_del_ends_the_vm(&mut pvmm);
    let plines = metrics_lines(&pdir.0);
    assert!(
        plines.len() >= 2,
        "FlushMetrics wrote {} lines",
        plines.len()
    );
    for l in &plines {
        for key in [
            "utc_timestamp_ms",
            "api_server",
            "block",
            "net",
            "vsock",
            "entropy",
        ] {
            assert!(l.get(key).is_some(), "metrics line without {key}: {l}");
        }
    }

    // The first line (written at InstanceStart) counts the six PUT /drives, four refused.
    assert_eq!(
        plines[0]["put_api_requests"]["drive_count"], 6,
        "{}",
        plines[0]
    );
    assert_eq!(
        plines[0]["put_api_requests"]["drive_fails"], 4,
        "{}",
        plines[0]
    );
    // The second counts only what came after it.
    assert_eq!(
        plines[1]["put_api_requests"]["drive_count"], 1,
        "{}",
        plines[1]
    );
    let Some(_) = fc_support::firecracker_bin() else {
        petrel_tests::skip("the Firecracker binary is absent: petrel checked alone, no comparison");
        return;
    };
    let (fc, mut fvmm, fdir) = run_sequences(Which::Firecracker, &kernel);
    ctrl_alt_del_ends_the_vm(&mut fvmm);
    let mut diffs = Vec::new();
    for ((label, p), (_, f)) in petrel.iter().zip(&fc) {
        if p != f {
            diffs.push(format!("{label}\n    petrel {p:?}\n    firecracker {f:?}"));
        }
    }
    assert!(diffs.is_empty(), "answers differ:\n{}", diffs.join("\n"));
    // petrel's metrics fields are Firecracker's.
    let flines = metrics_lines(&fdir.0);
    let (Some(p), Some(f)) = (plines.last(), flines.last()) else {
        panic!("no metrics lines from Firecracker");
    };
    for section in [
        "api_server",
        "block",
        "net",
        "vsock",
        "entropy",
        "get_api_requests",
        "put_api_requests",
        "patch_api_requests",
    ] {
        let Some(Value::Object(pfields)) = p.get(section) else {
            continue;
        };
        for field in pfields.keys() {
            assert!(
                f[section].get(field).is_some(),
                "metrics field {section}.{field} is not Firecracker's"
            );
        }
    }
}

/// Every swagger field with a wrong type or out of range: 400 with a fault_message.
#[test]
fn bad_input_is_a_400_with_fault_message() {
    let dir = ScratchDir::new("bad");
    let mut vmm = Vmm::spawn(Which::Petrel, &dir.0, &[]);
    assert!(
        vmm.wait_api(Duration::from_secs(10)),
        "no API socket\n{}",
        vmm.dump()
    );
    let cases: &[(Method, &str, &str)] = &[
        (
            Put,
            "/machine-config",
            r#"{"vcpu_count": 33, "mem_size_mib": 64}"#,
        ),
        (
            Put,
            "/machine-config",
            r#"{"vcpu_count": 1, "mem_size_mib": 0}"#,
        ),
        (
            Put,
            "/machine-config",
            r#"{"vcpu_count": 1, "mem_size_mib": 64, "smt": "no"}"#,
        ),
        (
            Put,
            "/machine-config",
            r#"{"vcpu_count": 1, "mem_size_mib": 64, "huge_pages": 7}"#,
        ),
        (
            Put,
            "/machine-config",
            r#"{"vcpu_count": 1, "mem_size_mib": 64, "cpu_template": "T2"}"#,
        ),
        (Patch, "/machine-config", r#"{"track_dirty_pages": 1}"#),
        (Put, "/boot-source", r#"{"kernel_image_path": 5}"#),
        (
            Put,
            "/boot-source",
            r#"{"kernel_image_path": "/dev/null", "initrd_path": "/nonexistent"}"#,
        ),
        (
            Put,
            "/drives/d",
            r#"{"drive_id": "d", "is_root_device": false}"#,
        ),
        (
            Put,
            "/drives/d",
            r#"{"drive_id": "d", "path_on_host": "/dev/null", "is_root_device": false, "io_engine": "Fast"}"#,
        ),
        (
            Put,
            "/drives/d",
            r#"{"drive_id": "d", "path_on_host": "/dev/null", "is_root_device": false, "rate_limiter": {"bandwidth": {"size": -1, "refill_time": 1}}}"#,
        ),
        (
            Put,
            "/drives/d",
            r#"{"drive_id": "d", "path_on_host": "/dev/null", "is_root_device": false, "socket": "/tmp/x"}"#,
        ),
        (Put, "/network-interfaces/e", r#"{"iface_id": "e"}"#),
        (
            Put,
            "/network-interfaces/e",
            r#"{"iface_id": "f", "host_dev_name": "t"}"#,
        ),
        (
            Put,
            "/network-interfaces/e",
            r#"{"iface_id": "e", "host_dev_name": "t", "guest_mac": "zz"}"#,
        ),
        (
            Put,
            "/network-interfaces/e",
            r#"{"iface_id": "e", "host_dev_name": "t", "mtu": "big"}"#,
        ),
        (
            Put,
            "/network-interfaces/e",
            r#"{"iface_id": "e", "host_dev_name": "t", "mtu": 9000}"#,
        ),
        (Put, "/vsock", r#"{"guest_cid": 2, "uds_path": "/tmp/x"}"#),
        (Put, "/vsock", r#"{"guest_cid": -3, "uds_path": "/tmp/x"}"#),
        (Put, "/balloon", r#"{"amount_mib": 1}"#),
        (
            Put,
            "/balloon",
            r#"{"amount_mib": 100000, "deflate_on_oom": true}"#,
        ),
        (
            Put,
            "/balloon",
            r#"{"amount_mib": 1, "deflate_on_oom": true, "stats_polling_interval_s": -1}"#,
        ),
        (Put, "/logger", r#"{"show_level": "yes"}"#),
        (Put, "/logger", r#"{"log_path": "/nonexistent/dir/log"}"#),
        (Put, "/metrics", r#"{}"#),
        (Put, "/actions", r#"{"action_type": 3}"#),
        (Patch, "/vm", r#"{"state": "Running"}"#),
        (Put, "/mmds", r#"{"a": "#),
        (Patch, "/mmds", r#"{"a": 1}"#),
        (Put, "/mmds/config", r#"{"network_interfaces": "eth0"}"#),
        (
            Put,
            "/mmds/config",
            r#"{"network_interfaces": ["nope"], "version": "V2"}"#,
        ),
        (
            Put,
            "/snapshot/create",
            r#"{"snapshot_path": "/tmp/s", "mem_file_path": "/tmp/m"}"#,
        ),
        (Put, "/snapshot/create", r#"{"snapshot_path": 3}"#),
        (
            Put,
            "/snapshot/load",
            r#"{"snapshot_path": "/nonexistent/s"}"#,
        ),
        (
            Put,
            "/snapshot/load",
            r#"{"snapshot_path": "/nonexistent/s", "mem_file_path": "/nonexistent/m"}"#,
        ),
        (Put, "/machine-config", "[1, 2"),
        (Put, "/machine-config", "\u{0}\u{1}"),
    ];
    for (method, path, body) in cases {
        let r = vmm.call(*method, path, Some(body));
        assert_fault(&r, &format!("{} {path} {body}", method.as_str()));
    }
    // A log FIFO nobody reads: refused at once (as Firecracker), not an API that hangs.
    let fifo = dir.0.join("log.fifo");
    let c = std::ffi::CString::new(fifo.to_string_lossy().as_bytes()).unwrap();
    // SAFETY: mkfifo(3) with a NUL-terminated path that outlives the call.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let body = json!({"log_path": fifo, "level": "Info"}).to_string();
    let r = vmm.call(Put, "/logger", Some(&body));
    assert_fault(&r, "PUT /logger to a FIFO without a reader");
    // A logger that names where each line comes from.
    let log = dir.0.join("vmm.log");
    let body = json!({"log_path": log, "level": "Info", "show_log_origin": true}).to_string();
    assert_eq!(vmm.call(Put, "/logger", Some(&body)).status, 204);
    vmm.call(Get, "/version", None);
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        text.lines()
            .any(|l| l.contains("fc_api/mod.rs:") && l.contains("GET /version")),
        "no log line with its origin in\n{text}"
    );
    // Still serving after all of them.
    assert_eq!(vmm.call(Get, "/", None).status, 200);
    assert!(!vmm.exited(), "petrel ended\n{}", vmm.dump());
}

#[test]
fn version_and_help_read_as_firecracker() {
    let out = std::process::Command::new(petrel_tests::petrel_bin())
        .args(["--api-sock", "/nonexistent/s", "--version"])
        .output()
        .unwrap();
    let line = String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .unwrap_or("")
        .to_string();
    // Kata's Firecracker driver: the second space-separated field of the first line, `v` cut.
    let fields: Vec<&str> = line.split(' ').collect();
    assert_eq!(fields[0], "Firecracker", "{line}");
    assert!(fields[1].starts_with("v1."), "{line}");
    assert!(line.contains("petrel"), "{line}");
    let help = std::process::Command::new(petrel_tests::petrel_bin())
        .args(["--no-api", "--help"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&help.stdout).contains("--api-sock"));
    let bad = std::process::Command::new(petrel_tests::petrel_bin())
        .args(["--api-sock", "/tmp/x", "--seccomp-filter", "/tmp/f.bpf"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("seccomp"));
}
