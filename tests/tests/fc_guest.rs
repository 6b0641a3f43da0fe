//! The freestanding test guest booted through Firecracker's dialect: `--no-api --config-file`
//! with drives, entropy and vsock, and the API (`PUT /network-interfaces` with a tap, then
//! `InstanceStart`), on petrel and, where its binary is present, on the real Firecracker with
//! the same config: the guest's drivers must report the same results on both.

mod fc_support;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::time::Duration;

use fc_support::{ScratchDir, Tap, Vmm, Which};
use petrel_http::Method::Put;
use petrel_tests::host_net::{test_frame, PacketSocket, TUN_DEVICE};
use petrel_tests::{require_kvm, GuestKind};
use serde_json::{json, Value};

const TIMEOUT: Duration = Duration::from_secs(120);

/// The VMMs to run: petrel, and Firecracker when present (a visible skip note otherwise).
fn vmms() -> Vec<Which> {
    match fc_support::firecracker_bin() {
        Some(_) => vec![Which::Petrel, Which::Firecracker],
        None => {
            petrel_tests::skip("the Firecracker binary is absent: petrel checked alone");
            vec![Which::Petrel]
        }
    }
}

fn dir_name(which: Which, what: &str) -> String {
    match which {
        Which::Petrel => format!("{what}-p"),
        Which::Firecracker => format!("{what}-f"),
    }
}

/// Boots `config` (its boot source added) with `--no-api` and returns the guest's output
/// after the VMM ended on its own.
fn boot_config_file(which: Which, dir: &Path, mut config: Value, action: &str) -> String {
    let kernel = petrel_tests::guest_image(GuestKind::Pvh);
    config["boot-source"] =
        json!({"kernel_image_path": kernel, "boot_args": format!("action={action}")});
    config["machine-config"] = json!({"vcpu_count": 1, "mem_size_mib": 64});
    // Firecracker requires the section.
    if config.get("drives").is_none() {
        config["drives"] = json!([]);
    }
    let file = dir.join("config.json");
    std::fs::write(&file, config.to_string()).unwrap();
    let file = file.to_string_lossy().into_owned();
    let mut vmm = Vmm::spawn(which, dir, &["--no-api", "--config-file", &file]);
    let status = vmm.wait_exit(TIMEOUT);
    let status = status.unwrap_or_else(|| panic!("{which:?} did not exit\n{}", vmm.dump()));
    assert!(
        status.success(),
        "{which:?} exited with {status}\n{}",
        vmm.dump()
    );
    let out = vmm.stdout();
    assert!(
        out.contains("VIRTIO: done"),
        "{which:?}: the driver did not finish\n{}",
        vmm.dump()
    );
    // Firecracker's own quirks with this polling driver (no RST after a vsock shutdown) are
    // not petrel's to check; its results are compared line by line instead.
    if which == Which::Petrel {
        assert!(
            !out.contains("VIRTIO: error"),
            "driver errors\n{}",
            vmm.dump()
        );
    }
    out
}

fn has(out: &str, which: Which, line: &str) {
    assert!(out.contains(line), "{which:?}: no `{line}` in\n{out}");
}

#[test]
fn config_file_drives_reach_the_guest() {
    require_kvm!();
    for which in vmms() {
        let dir = ScratchDir::new(&dir_name(which, "blk"));
        let root = dir.0.join("root.img");
        let data = dir.0.join("data.img");
        std::fs::File::create(&root)
            .unwrap()
            .set_len(1 << 20)
            .unwrap();
        std::fs::File::create(&data)
            .unwrap()
            .set_len(2 << 20)
            .unwrap();
        let config = json!({"drives": [
            {"drive_id": "root", "path_on_host": root, "is_root_device": true, "is_read_only": false},
            {"drive_id": "data", "path_on_host": data, "is_root_device": false, "is_read_only": true},
        ]});
        let out = boot_config_file(which, &dir.0, config, "virtio-blk");
        has(&out, which, "VIRTIO: blk dev=0 capacity=2048 ro=0");
        has(&out, which, "VIRTIO: blk dev=1 capacity=4096 ro=1");
        has(&out, which, "VIRTIO: blk write-read ok");
        has(&out, which, "VIRTIO: blk ro-write status=1");
        // The root drive is on the command line.
        has(&out, which, "root=/dev/vda rw");
        let written = std::fs::read(&root).unwrap();
        assert_eq!(
            &written[512..523],
            b"PETREL-BLK-",
            "{which:?}: sector 1 of the root drive"
        );
    }
}

#[test]
fn config_file_entropy_reaches_the_guest() {
    require_kvm!();
    for which in vmms() {
        let dir = ScratchDir::new(&dir_name(which, "rng"));
        // Firecracker wants the log and metrics files to exist.
        let log = dir.0.join("vmm.log");
        let metrics = dir.0.join("metrics.json");
        std::fs::File::create(&log).unwrap();
        std::fs::File::create(&metrics).unwrap();
        let config = json!({
            "entropy": {},
            "logger": {"log_path": log, "level": "Info"},
            "metrics": {"metrics_path": metrics},
        });
        let out = boot_config_file(which, &dir.0, config, "virtio-rng");
        has(&out, which, "VIRTIO: rng bytes=32");
        let log_text = std::fs::read_to_string(&log).unwrap();
        assert!(
            !log_text.trim().is_empty(),
            "{which:?}: nothing in the log file"
        );
        // A metrics line at start, in JSON, with the entropy device's section.
        let text = std::fs::read_to_string(&metrics).unwrap();
        let first = text
            .lines()
            .next()
            .unwrap_or_else(|| panic!("{which:?}: no metrics line"));
        let line: Value = serde_json::from_str(first).unwrap();
        assert!(
            line["utc_timestamp_ms"].as_u64().is_some(),
            "{which:?}: {line}"
        );
        assert!(line["entropy"].is_object(), "{which:?}: {line}");
    }
}

#[test]
fn config_file_vsock_connects_to_the_host() {
    require_kvm!();
    for which in vmms() {
        let dir = ScratchDir::new(&dir_name(which, "vsock"));
        let uds = dir.0.join("v.sock");
        let listener = UnixListener::bind(format!("{}_5001", uds.display())).unwrap();
        let server = std::thread::spawn(move || {
            let (stream, _) = listener.accept().ok()?;
            stream.set_read_timeout(Some(TIMEOUT)).ok()?;
            let mut line = String::new();
            BufReader::new(stream.try_clone().ok()?)
                .read_line(&mut line)
                .ok()?;
            (&stream).write_all(b"pong\n").ok()?;
            Some(line)
        });
        let config = json!({"vsock": {"guest_cid": 3, "uds_path": uds}});
        let out = boot_config_file(which, &dir.0, config, "virtio-vsock");
        has(&out, which, "VIRTIO: vsock cid=3");
        has(&out, which, "VIRTIO: vsock reply pong");
        let line = server.join().unwrap();
        assert_eq!(
            line.as_deref(),
            Some("hello from petrel guest\n"),
            "{which:?}"
        );
    }
}

#[test]
fn api_network_interface_carries_frames_both_ways() {
    require_kvm!();
    if !Path::new(TUN_DEVICE).exists() {
        petrel_tests::skip(format!("{TUN_DEVICE} not available"));
        return;
    }
    let kernel = petrel_tests::guest_image(GuestKind::Pvh);
    for which in vmms() {
        let name = format!("pfc{}{}", std::process::id() % 100_000, which as u8);
        let _tap = match Tap::create(&name) {
            Ok(t) => t,
            Err(e) => {
                petrel_tests::skip(format!("cannot create tap {name}: {e}"));
                return;
            }
        };
        let sock = PacketSocket::bind(&name).unwrap();
        let dir = ScratchDir::new(&dir_name(which, "net"));
        let mut vmm = Vmm::spawn(which, &dir.0, &[]);
        assert!(
            vmm.wait_api(Duration::from_secs(10)),
            "{which:?}: no API\n{}",
            vmm.dump()
        );
        let calls = [
            (
                "/boot-source",
                json!({"kernel_image_path": kernel, "boot_args": "action=virtio-net"}),
            ),
            (
                "/machine-config",
                json!({"vcpu_count": 1, "mem_size_mib": 64}),
            ),
            (
                "/network-interfaces/eth0",
                json!({"iface_id": "eth0", "host_dev_name": name, "guest_mac": "06:00:ac:10:00:02"}),
            ),
            ("/actions", json!({"action_type": "InstanceStart"})),
        ];
        for (path, body) in calls {
            let r = vmm.call(Put, path, Some(&body.to_string()));
            assert_eq!(
                r.status,
                204,
                "{which:?} PUT {path}: {}",
                String::from_utf8_lossy(&r.body)
            );
        }
        let tx = vmm.wait_for(TIMEOUT, |o| o.contains("VIRTIO: net tx ok"));
        let frame = sock.recv(Duration::from_secs(10)).unwrap();
        if frame.is_some() {
            let guest = [0x06, 0x00, 0xac, 0x10, 0x00, 0x02];
            sock.send(&test_frame(
                guest,
                [0x02, 0, 0, 0, 0, 1],
                b"PETREL-NET-RX hello",
            ))
            .unwrap();
        }
        let status = vmm.wait_exit(TIMEOUT);
        let out = vmm.stdout();
        assert!(tx, "{which:?}: no tx\n{}", vmm.dump());
        assert!(
            status.is_some_and(|s| s.success()),
            "{which:?}\n{}",
            vmm.dump()
        );
        let f = frame.unwrap_or_else(|| panic!("{which:?}: no frame on the tap\n{}", vmm.dump()));
        assert_eq!(
            &f[6..12],
            &[0x06, 0x00, 0xac, 0x10, 0x00, 0x02],
            "{which:?}: source MAC"
        );
        has(&out, which, "VIRTIO: net mac=06:00:ac:10:00:02");
        // Firecracker does not deliver the answer to this polling driver (its RX waits for a
        // notification the driver never sends); petrel must.
        if which == Which::Petrel {
            has(&out, which, "VIRTIO: net rx PETREL-NET-RX hello");
            assert!(
                !out.contains("VIRTIO: error"),
                "driver errors\n{}",
                vmm.dump()
            );
        }
    }
}

fn counts(out: &str) -> usize {
    out.lines().filter(|l| l.starts_with("COUNT ")).count()
}

#[test]
fn patch_vm_pauses_and_resumes_the_guest() {
    require_kvm!();
    let kernel = petrel_tests::guest_image(GuestKind::Pvh);
    let dir = ScratchDir::new("pause");
    let mut vmm = Vmm::spawn(Which::Petrel, &dir.0, &[]);
    assert!(
        vmm.wait_api(Duration::from_secs(10)),
        "no API\n{}",
        vmm.dump()
    );
    let put = |vmm: &Vmm, method, path: &str, body: Value| {
        let r = vmm.call(method, path, Some(&body.to_string()));
        assert_eq!(
            r.status,
            204,
            "{path}: {}",
            String::from_utf8_lossy(&r.body)
        );
    };
    put(
        &vmm,
        Put,
        "/boot-source",
        json!({"kernel_image_path": kernel, "boot_args": "action=ctrl-alt-del"}),
    );
    put(
        &vmm,
        Put,
        "/actions",
        json!({"action_type": "InstanceStart"}),
    );
    assert!(
        vmm.wait_for(TIMEOUT, |o| counts(o) >= 2),
        "not counting\n{}",
        vmm.dump()
    );
    put(
        &vmm,
        petrel_http::Method::Patch,
        "/vm",
        json!({"state": "Paused"}),
    );
    let state = |vmm: &Vmm| {
        vmm.call(petrel_http::Method::Get, "/", None)
            .json_body::<Value>()
            .unwrap()["state"]
            .clone()
    };
    assert_eq!(state(&vmm), "Paused");
    // A line may be in flight as the vCPU parks; after that, nothing.
    std::thread::sleep(Duration::from_millis(300));
    let at_pause = counts(&vmm.stdout());
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        counts(&vmm.stdout()),
        at_pause,
        "the guest ran while paused"
    );
    put(
        &vmm,
        petrel_http::Method::Patch,
        "/vm",
        json!({"state": "Resumed"}),
    );
    assert_eq!(state(&vmm), "Running");
    assert!(
        vmm.wait_for(TIMEOUT, |o| counts(o) > at_pause + 1),
        "not resumed\n{}",
        vmm.dump()
    );
    put(
        &vmm,
        Put,
        "/actions",
        json!({"action_type": "SendCtrlAltDel"}),
    );
    let status = vmm.wait_exit(TIMEOUT);
    assert!(status.is_some_and(|s| s.success()), "{}", vmm.dump());
}

#[test]
fn patch_drive_path_swaps_the_backing_file_under_the_guest() {
    require_kvm!();
    let kernel = petrel_tests::guest_image(GuestKind::Pvh);
    for which in vmms() {
        let dir = ScratchDir::new(&dir_name(which, "swap"));
        let placeholder = dir.0.join("placeholder.img");
        let real = dir.0.join("real.img");
        std::fs::File::create(&placeholder)
            .unwrap()
            .set_len(1 << 20)
            .unwrap();
        std::fs::File::create(&real)
            .unwrap()
            .set_len(4 << 20)
            .unwrap();
        let mut vmm = Vmm::spawn(which, &dir.0, &[]);
        assert!(
            vmm.wait_api(Duration::from_secs(10)),
            "{which:?}: no API\n{}",
            vmm.dump()
        );
        let calls = [
            (
                "/boot-source",
                json!({"kernel_image_path": kernel, "boot_args": "action=virtio-blk-swap"}),
            ),
            (
                "/machine-config",
                json!({"vcpu_count": 1, "mem_size_mib": 64}),
            ),
            (
                "/drives/ph",
                json!({"drive_id": "ph", "path_on_host": placeholder, "is_root_device": false}),
            ),
            ("/actions", json!({"action_type": "InstanceStart"})),
        ];
        for (path, body) in calls {
            let r = vmm.call(Put, path, Some(&body.to_string()));
            assert_eq!(
                r.status,
                204,
                "{which:?} PUT {path}: {}",
                String::from_utf8_lossy(&r.body)
            );
        }
        assert!(
            vmm.wait_for(TIMEOUT, |o| o
                .contains("VIRTIO: blk swap-wait capacity=2048")),
            "{which:?}: the guest did not bind the placeholder\n{}",
            vmm.dump()
        );
        let patch = json!({"drive_id": "ph", "path_on_host": real}).to_string();
        let r = vmm.call(petrel_http::Method::Patch, "/drives/ph", Some(&patch));
        assert_eq!(
            r.status,
            204,
            "{which:?}: {}",
            String::from_utf8_lossy(&r.body)
        );
        let status = vmm.wait_exit(TIMEOUT);
        let out = vmm.stdout();
        assert!(
            status.is_some_and(|s| s.success()),
            "{which:?}\n{}",
            vmm.dump()
        );
        has(&out, which, "VIRTIO: blk swapped capacity=8192");
        has(&out, which, "VIRTIO: blk write-read ok");
        let new = std::fs::read(&real).unwrap();
        assert_eq!(
            &new[512..523],
            b"PETREL-BLK-",
            "{which:?}: the write went to the new file"
        );
        let old = std::fs::read(&placeholder).unwrap();
        assert!(
            old.iter().all(|&b| b == 0),
            "{which:?}: the placeholder was written"
        );
    }
}

/// With `--no-api` every path is known at start: petrel confines its main thread with
/// Landlock (as in the Cloud Hypervisor dialect's `--config-file`), and the log, metrics and
/// `--metadata` files it opens after that are among the allowed ones.
#[test]
fn config_file_start_is_confined_by_landlock() {
    require_kvm!();
    let dir = ScratchDir::new("fc-landlock");
    let kernel = petrel_tests::guest_image(GuestKind::Pvh);
    let log = dir.0.join("logs/vmm.log");
    std::fs::create_dir_all(log.parent().unwrap()).unwrap();
    let metrics = dir.0.join("metrics.json");
    let meta = dir.0.join("meta.json");
    std::fs::write(&meta, r#"{"k": "v"}"#).unwrap();
    let config = json!({
        "boot-source": {"kernel_image_path": kernel, "boot_args": "action=virtio-rng"},
        "machine-config": {"vcpu_count": 1, "mem_size_mib": 64},
        "entropy": {},
        "metrics": {"metrics_path": metrics},
    });
    let file = dir.0.join("config.json");
    std::fs::write(&file, config.to_string()).unwrap();
    let out = std::process::Command::new(petrel_tests::petrel_bin())
        .arg("--no-api")
        .arg("--config-file")
        .arg(&file)
        .arg("--metadata")
        .arg(&meta)
        .arg("--log-path")
        .arg(&log)
        .args(["--level", "Debug"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(out.status.success(), "{}\n{stdout}\n{text}", out.status);
    assert!(stdout.contains("VIRTIO: rng bytes=32"), "{stdout}");
    let landlocked = text.contains("landlock: main thread limited to");
    let absent = text.contains("landlock: not in this kernel");
    assert!(
        landlocked || absent,
        "no word of Landlock in the log:\n{text}"
    );
    if absent {
        petrel_tests::skip("Landlock is not in this kernel: confinement not checked");
    }
    // Written after the restriction.
    let lines = std::fs::read_to_string(&metrics).unwrap_or_default();
    assert!(lines.lines().count() >= 1, "no metrics line");
}
