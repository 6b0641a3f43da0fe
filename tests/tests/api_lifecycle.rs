//! The per-VM API over its Unix socket, against the real `petrel` binary and the test guest:
//! a VM's whole life (create → boot → pause/resume → counters → reboot → shutdown → boot again
//! → delete → `vmm.shutdown`), the ACPI power button, a VM booted at start, an inherited
//! listening socket (`--api-socket fd=N`), a tap fd passed with SCM_RIGHTS on `vm.add-net`,
//! and start-up and round-trip times (printed, not asserted).

mod api_support;

use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::net::UnixListener;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use api_support::{guest_config, median, tail, ApiVm, ScratchDir, STATE_TIMEOUT};
use petrel_http::{Client, Method};
use petrel_tests::guest_actions::{
    count_values, expect_power_button_ack, wait_power_button_armed, GUEST_BOOT_TIMEOUT,
};
use petrel_tests::host_net::{parse_mac, test_frame, PacketSocket, TapFd, TUN_DEVICE};
use petrel_tests::{guest_image, petrel_bin, require_kvm, GuestKind};
use serde_json::{json, Value};

const START_LINE: &str = "PETREL-GUEST: start boot=pvh";
/// Boots of the guest in `out` (a forced reboot may cut the previous line short, so the start
/// line need not begin a line).
fn starts(out: &str) -> usize {
    out.matches(START_LINE).count()
}

/// How long the COUNT stream is watched for (no) progress.
const WATCH: Duration = Duration::from_millis(1500);

/// The highest `COUNT` value printed so far (`None` before the first).
fn last_count(vm: &ApiVm) -> Option<u64> {
    count_values(&vm.petrel.stdout()).last().copied()
}

/// Waits until the guest prints a `COUNT` above `above`, within `timeout`.
fn wait_count_above(vm: &mut ApiVm, above: Option<u64>, timeout: Duration) -> bool {
    vm.petrel
        .wait_for_stdout(timeout, |out| count_values(out).last().copied() > above)
}

/// The serial output without the `COUNT` lines (each run of them shown as its first and last
/// value), and petrel's log: for assertion messages.
fn summary(vm: &ApiVm) -> String {
    let mut out = Vec::new();
    let mut run: Option<(u64, u64)> = None;
    for line in vm.petrel.stdout().lines() {
        match (
            line.strip_prefix("COUNT ").and_then(|n| n.parse().ok()),
            run,
        ) {
            (Some(n), Some((first, _))) => run = Some((first, n)),
            (Some(n), None) => run = Some((n, n)),
            (None, _) => {
                if let Some((a, b)) = run.take() {
                    out.push(format!("COUNT {a}..={b}"));
                }
                out.push(line.to_string());
            }
        }
    }
    if let Some((a, b)) = run {
        out.push(format!("COUNT {a}..={b}"));
    }
    format!(
        "--- serial ---\n{}\n--- stderr ---\n{}",
        out.join("\n"),
        vm.petrel.stderr()
    )
}

/// Every device in `vm.counters` maps counter names to unsigned integers.
fn assert_counter_types(counters: &Value) {
    let devices = counters.as_object().expect("vm.counters is an object");
    for (name, values) in devices {
        let values = values
            .as_object()
            .unwrap_or_else(|| panic!("counters of {name} are not an object: {values}"));
        assert!(!values.is_empty(), "{name} has no counters");
        for (k, v) in values {
            assert!(v.is_u64(), "{name}.{k} is not an unsigned integer: {v}");
        }
    }
}

#[test]
fn lifecycle_over_the_socket() {
    require_kvm!();
    let mut vm = ApiVm::start("api-life", &[]);
    eprintln!(
        "startup: socket accepting after {:?}, vmm.ping answered after {:?}",
        vm.startup.accepting, vm.startup.ping
    );

    let ping = vm.get_json("vmm.ping");
    assert!(
        ping["version"].as_str().is_some_and(|v| !v.is_empty()),
        "{ping}"
    );
    assert_eq!(
        ping["pid"].as_u64(),
        Some(u64::from(vm.petrel.pid())),
        "{ping}"
    );
    assert_eq!(ping["hypervisor"], "kvm", "{ping}");
    assert_eq!(vm.state(), None, "no VM at start");

    let disk = vm.dir.0.join("disk.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let mut cfg = guest_config("action=count");
    cfg["rng"] = json!({"src": "/dev/urandom"});
    cfg["disks"] = json!([{"path": disk, "id": "disk0"}]);
    vm.put_ok("vm.create", Some(&cfg), 204);
    let info = vm.get_json("vm.info");
    assert_eq!(info["state"], "Created", "{info}");
    assert_eq!(info["config"]["memory"]["size"], 64u64 << 20, "{info}");
    assert_eq!(info["config"]["cpus"]["boot_vcpus"], 1, "{info}");
    assert_eq!(info["config"]["disks"][0]["id"], "disk0", "{info}");
    assert!(vm.petrel.stdout().is_empty(), "output before boot");

    // Boot: the guest counts.
    vm.put_ok("vm.boot", None, 204);
    vm.assert_state("Running");
    let counting = vm
        .petrel
        .wait_for_stdout(GUEST_BOOT_TIMEOUT, |out| count_values(out).len() >= 3);
    assert!(counting, "no COUNT lines\n{}", tail(&vm.petrel.stdout()));
    // How long 4 lines take while running: the pause is watched at least that long, so that
    // a guest that kept running would show it even on a loaded host.
    let before = last_count(&vm);
    let t = Instant::now();
    assert!(
        wait_count_above(&mut vm, before.map(|n| n + 3), Duration::from_secs(20)),
        "the guest stopped counting\n{}",
        summary(&vm)
    );
    let four = t.elapsed();
    let watch = four.max(WATCH);

    // Pause: the count stops (one line may be in flight).
    vm.put_ok("vm.pause", None, 204);
    vm.assert_state("Paused");
    let at_pause = last_count(&vm);
    std::thread::sleep(watch);
    let after = last_count(&vm);
    assert!(
        after <= at_pause.map(|n| n + 1),
        "the guest kept counting while paused: {at_pause:?} → {after:?} in {watch:?}"
    );
    eprintln!("count: 4 lines in {four:?} running; {at_pause:?} → {after:?} paused");
    vm.assert_state("Paused");

    // Resume: it counts again.
    vm.put_ok("vm.resume", None, 204);
    vm.assert_state("Running");
    assert!(
        wait_count_above(&mut vm, after.map(|n| n + 2), Duration::from_secs(20)),
        "no progress after vm.resume (last {after:?})"
    );

    // Counters: the disk and the entropy device, named counters of unsigned integers.
    let counters = vm.get_json("vm.counters");
    assert_counter_types(&counters);
    for (device, counter) in [("disk0", "read_bytes"), ("rng", "bytes")] {
        assert!(
            counters[device][counter].is_u64(),
            "no {device}.{counter} in {counters}"
        );
    }

    // Reboot: a second boot of the guest, counting from 0 again.
    assert_eq!(starts(&vm.petrel.stdout()), 1, "{}", summary(&vm));
    vm.put_ok("vm.reboot", None, 204);
    vm.assert_state("Running");
    let rebooted = vm.petrel.wait_for_stdout(GUEST_BOOT_TIMEOUT, |out| {
        let second = out.rfind(START_LINE).unwrap_or(0);
        starts(out) == 2 && count_values(&out[second..]).len() >= 2
    });
    assert!(rebooted, "no second boot\n{}", summary(&vm));
    let out = vm.petrel.stdout();
    let second = &out[out.rfind(START_LINE).unwrap()..];
    assert_eq!(count_values(second)[..2], [0, 1], "{second}");

    // Shutdown: the count stops for good.
    vm.put_ok("vm.shutdown", None, 204);
    vm.assert_state("Shutdown");
    let at_stop = count_values(&vm.petrel.stdout()).len();
    std::thread::sleep(watch);
    let lines = count_values(&vm.petrel.stdout()).len();
    assert!(
        lines <= at_stop + 1,
        "COUNT lines after vm.shutdown: {at_stop} → {lines}"
    );

    // Boot again from Shutdown: a third boot.
    vm.put_ok("vm.boot", None, 204);
    vm.assert_state("Running");
    let third = vm.petrel.wait_for_stdout(GUEST_BOOT_TIMEOUT, |out| {
        starts(out) == 3 && count_values(&out[out.rfind(START_LINE).unwrap_or(0)..]).len() >= 2
    });
    assert!(
        third,
        "no boot after vm.shutdown\n{}",
        tail(&vm.petrel.stdout())
    );

    // Delete: no VM any more.
    vm.put_ok("vm.delete", None, 204);
    assert_eq!(vm.get("vm.info").status, 404);
    assert_eq!(vm.get("vm.counters").status, 404);

    let socket = vm.socket.clone();
    let (_run, _dir) = vm.shutdown_vmm();
    assert!(
        !socket.exists(),
        "petrel left its API socket {} behind after vmm.shutdown",
        socket.display()
    );
}

#[test]
fn power_button_shuts_the_guest_down_and_the_vmm_keeps_serving() {
    require_kvm!();
    let mut vm = ApiVm::start("api-power", &[]);
    vm.put_ok("vm.create", Some(&guest_config("action=power-button")), 204);
    // Before boot the button has nothing to press.
    assert_eq!(vm.put("vm.power-button", None).status, 409);
    vm.put_ok("vm.boot", None, 204);
    wait_power_button_armed(&mut vm.petrel);
    vm.assert_state("Running");

    let client = &vm.client;
    expect_power_button_ack(&mut vm.petrel, |_| {
        let r = client
            .request(Method::Put, "/api/v1/vm.power-button", None)
            .unwrap();
        assert_eq!(r.status, 204, "vm.power-button: {}", r.error_message());
    });
    let t = Instant::now();
    assert!(
        vm.wait_state("Shutdown", STATE_TIMEOUT),
        "state {:?} after the guest powered off\n{}",
        vm.state(),
        vm.petrel.stderr()
    );
    eprintln!(
        "power button: Shutdown state {:?} after the guest's ack",
        t.elapsed()
    );
    // The process keeps serving (API mode): still there a moment later.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(vm.get("vmm.ping").status, 200);
    vm.assert_state("Shutdown");
    vm.shutdown_vmm();
}

#[test]
fn vm_given_on_the_command_line_boots_at_start() {
    require_kvm!();
    let kernel = guest_image(GuestKind::Pvh);
    let vm = ApiVm::start(
        "api-boot",
        &["--kernel", &kernel, "--cmdline", "action=halt"],
    );
    // The first answer already sees the booted VM.
    vm.assert_state("Running");
    let info = vm.get_json("vm.info");
    assert_eq!(
        info["config"]["payload"]["cmdline"], "action=halt",
        "{info}"
    );
    let mut petrel = vm.petrel;
    petrel.signal(libc::SIGTERM);
    let run = petrel.wait(Duration::from_secs(10));
    assert!(!run.timed_out, "SIGTERM did not end petrel\n{}", run.dump());
    assert!(run.success(), "SIGTERM must exit 0\n{}", run.dump());
    assert!(
        !vm.socket.exists(),
        "petrel left its API socket {} behind after SIGTERM",
        vm.socket.display()
    );
}

#[test]
fn inherited_listening_socket() {
    require_kvm!();
    /// The descriptor number petrel inherits the listener as.
    const FD: i32 = 42;
    let dir = ScratchDir::new("api-fd");
    let path = dir.0.join("inherited.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let raw = listener.as_raw_fd();
    let stderr = std::fs::File::create(dir.0.join("stderr")).unwrap();
    let mut cmd = Command::new(petrel_bin());
    cmd.args(["--api-socket", &format!("fd={FD}")])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr);
    // SAFETY: the hook runs in the child between fork and exec and calls only dup2 and fcntl,
    // which are async-signal-safe; it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            // dup2 leaves the new descriptor without FD_CLOEXEC (when it is a different
            // number; otherwise clear the flag).
            let ok = if raw == FD {
                libc::fcntl(FD, libc::F_SETFD, 0) == 0
            } else {
                libc::dup2(raw, FD) == FD
            };
            if ok {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
    let mut child = cmd.spawn().unwrap();
    let client = Client::new(&path).with_timeout(Duration::from_secs(10));
    let ping = client.get("/api/v1/vmm.ping");
    let log = || std::fs::read_to_string(dir.0.join("stderr")).unwrap_or_default();
    let ping = match ping {
        Ok(r) if r.status == 200 => r.json_body::<Value>().unwrap(),
        other => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("ping over the inherited socket: {other:?}\n{}", log());
        }
    };
    assert_eq!(ping["pid"].as_u64(), Some(u64::from(child.id())), "{ping}");
    let r = client
        .request(Method::Put, "/api/v1/vmm.shutdown", None)
        .unwrap();
    assert_eq!(r.status, 200);
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("vmm.shutdown did not end petrel\n{}", log());
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(status.success(), "{status}\n{}", log());
    drop(listener);
}

#[test]
fn tap_fd_passed_with_scm_rights_on_add_net() {
    require_kvm!();
    if !Path::new(TUN_DEVICE).exists() {
        petrel_tests::skip(format!("{TUN_DEVICE} not available"));
        return;
    }
    let name = format!("pat{}", std::process::id() % 1_000_000);
    let tap = match TapFd::open(&name) {
        Ok(t) => t,
        Err(e) => {
            petrel_tests::skip(format!("cannot create tap {name}: {e}"));
            return;
        }
    };
    let sock = PacketSocket::bind(tap.name()).unwrap();
    let mut vm = ApiVm::start("api-net", &[]);
    let mut cfg = guest_config("action=virtio-net");
    cfg["platform"] = json!({"virtio_mmio_cmdline": true});
    vm.put_ok("vm.create", Some(&cfg), 204);
    let r = vm
        .client
        .request_with_fds(
            Method::Put,
            "/api/v1/vm.add-net",
            Some(br#"{"id":"net9"}"#),
            &[tap.as_fd()],
        )
        .unwrap();
    assert_eq!(r.status, 204, "vm.add-net: {}", r.error_message());
    let info = vm.get_json("vm.info");
    assert_eq!(info["config"]["net"][0]["id"], "net9", "{info}");

    vm.put_ok("vm.boot", None, 204);
    let tx_ok = vm
        .petrel
        .wait_for_stdout(GUEST_BOOT_TIMEOUT, |s| s.contains("VIRTIO: net tx ok"));
    assert!(
        tx_ok,
        "no `VIRTIO: net tx ok`\n{}",
        tail(&vm.petrel.stdout())
    );
    let got = sock.recv(Duration::from_secs(10)).unwrap();
    let counters = vm.get_json("vm.counters");
    let Some(frame) = got else {
        panic!("no frame from the guest on {name}\n{}", vm.petrel.stdout());
    };
    // Answer while the guest polls its RX queue.
    let host_mac = [0x02, 0x50, 0x45, 0x54, 0x00, 0x09];
    let guest_mac = frame[6..12].try_into().unwrap();
    sock.send(&test_frame(guest_mac, host_mac, b"PETREL-NET-RX api"))
        .unwrap();

    assert_counter_types(&counters);
    assert!(
        counters["net9"]["tx_packets"].as_u64() >= Some(1),
        "net9 sent nothing: {counters}"
    );
    let out = vm.petrel.stdout();
    let mac = out
        .lines()
        .find_map(|l| l.strip_prefix("VIRTIO: net mac="))
        .and_then(parse_mac)
        .unwrap_or_else(|| panic!("no `VIRTIO: net mac=` line\n{out}"));
    assert_eq!(frame, test_frame([0xff; 6], mac, b"PETREL-NET-TX 1"));

    let rx = vm.petrel.wait_for_stdout(GUEST_BOOT_TIMEOUT, |s| {
        s.contains("VIRTIO: net rx PETREL-NET-RX api")
    });
    assert!(
        rx,
        "the guest did not get the frame\n{}",
        tail(&vm.petrel.stdout())
    );
    assert!(
        vm.wait_state("Shutdown", STATE_TIMEOUT),
        "the guest did not power off\n{}",
        tail(&vm.petrel.stdout())
    );
    assert!(!vm.petrel.stdout().contains("VIRTIO: error"));
    vm.shutdown_vmm();
}

#[test]
fn startup_and_round_trip_times() {
    require_kvm!();
    let vm = ApiVm::start("api-rtt", &[]);
    let cfg = guest_config("action=halt");
    vm.put_ok("vm.create", Some(&cfg), 204);
    let time = |op: &str| {
        let mut samples: Vec<Duration> = (0..50)
            .map(|_| {
                let t = Instant::now();
                let r = vm.get(op);
                let d = t.elapsed();
                assert_eq!(r.status, 200, "{op}: {}", r.error_message());
                d
            })
            .collect();
        median(&mut samples)
    };
    let ping = time("vmm.ping");
    let info = time("vm.info");
    eprintln!(
        "api timing: start→accepting {:?}, start→ping answered {:?}; median of 50: vmm.ping \
         {ping:?}, vm.info {info:?}",
        vm.startup.accepting, vm.startup.ping
    );
    vm.shutdown_vmm();
}
