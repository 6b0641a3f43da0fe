//! `vm.send-migration` / `vm.receive-migration` over a Unix socket between two real `petrel`
//! processes (default seccomp) with the counting guest (`action=count-blk`): the destination
//! keeps counting where the source was, its disk agrees, and the source exits. A dead
//! destination, one that dies mid-way, a bad URL, a stream of another version and a
//! destination that already has a VM are refused with the reason; the source keeps running
//! and the destination stays empty. Time and downtime are in the petrel logs (printed).

mod api_support;

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::{Duration, Instant};

use api_support::{assert_error, guest_config, tail, ApiVm};
use petrel_http::{Client, Method};
use petrel_tests::guest_actions::{count_values, GUEST_BOOT_TIMEOUT};
use petrel_tests::require_kvm;
use serde_json::json;

/// The `COUNT`s on whole lines (a line being printed may be cut short).
fn whole_counts(out: &str) -> Vec<u64> {
    let whole = out.rfind('\n').map_or("", |end| &out[..=end]);
    count_values(whole)
}

/// The last `COUNT` on a whole line.
fn last_count(out: &str) -> Option<u64> {
    whole_counts(out).last().copied()
}

/// The count the guest last wrote to its disk (sector 2: `PCNT` + u64 little endian).
fn disk_count(disk: &Path) -> Option<u64> {
    let bytes = std::fs::read(disk).ok()?;
    let sector = bytes.get(1024..1024 + 12)?;
    (&sector[..4] == b"PCNT").then(|| u64::from_le_bytes(sector[4..12].try_into().unwrap()))
}

#[test]
fn a_counting_guest_moves_to_another_petrel() {
    require_kvm!();
    let mut src = ApiVm::start("mig-src", &[]);
    let disk = src.dir.0.join("disk.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let mut cfg = guest_config("action=count-blk");
    cfg["disks"] = json!([{"path": disk, "id": "disk0"}]);
    cfg["platform"] = json!({"virtio_mmio_cmdline": true});
    src.put_ok("vm.create", Some(&cfg), 204);
    src.put_ok("vm.boot", None, 204);
    assert!(
        src.petrel
            .wait_for_stdout(GUEST_BOOT_TIMEOUT, |out| count_values(out).len() >= 5),
        "no COUNT lines\n{}",
        tail(&src.petrel.stdout())
    );

    // Nobody listening: refused with the reason; the source runs on.
    let dead = src.dir.0.join("nobody.sock");
    let r = src.put(
        "vm.send-migration",
        Some(&json!({"destination_url": format!("unix:{}", dead.display())})),
    );
    assert_error(&r, 400, &["connecting"], "migration to a dead endpoint");
    let r = src.put(
        "vm.send-migration",
        Some(&json!({"destination_url": "tcp:127.0.0.1:1"})),
    );
    assert_error(&r, 400, &["destination_url", "unix:"], "tcp URL");
    src.assert_state("Running");
    let before = last_count(&src.petrel.stdout());
    assert!(
        src.petrel.wait_for_stdout(Duration::from_secs(20), |out| {
            last_count(out) > before.map(|n| n + 2)
        }),
        "the source stopped counting after a failed migration"
    );

    // A destination that already has a VM refuses to receive one.
    let r = src.put(
        "vm.receive-migration",
        Some(&json!({"receiver_url": "unix:/tmp/x.sock"})),
    );
    assert_error(&r, 400, &["already has a VM"], "receive into a busy petrel");

    // A destination that dies after taking the whole stream, before answering (the source
    // has paused by then): the source names it, takes its disk back and runs on.
    let fake = src.dir.0.join("fake.sock");
    let listener = UnixListener::bind(&fake).unwrap();
    let dying = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let mut buf = vec![0u8; 1 << 20];
        while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
        drop(s);
    });
    let r = src.put(
        "vm.send-migration",
        Some(&json!({"destination_url": format!("unix:{}", fake.display())})),
    );
    dying.join().unwrap();
    // The fake stops reading after 500 ms of silence: on a loaded host that can come before
    // the source has sent everything, and the source then fails writing instead of waiting for
    // the answer. Either way it must name the destination and keep running.
    assert_error(&r, 400, &["destination"], "destination died mid-way");
    let msg = r.error_message();
    assert!(
        msg.contains("destination's answer") || msg.contains("writing to the destination"),
        "destination died mid-way: {msg:?}"
    );
    src.assert_state("Running");
    let before = last_count(&src.petrel.stdout());
    assert!(
        src.petrel.wait_for_stdout(Duration::from_secs(20), |out| {
            last_count(out) > before.map(|n| n + 2)
        }),
        "the source stopped counting after the destination died"
    );

    let dst = ApiVm::start("mig-dst", &[]);
    let sock = dst.dir.0.join("mig.sock");
    let url = format!("unix:{}", sock.display());
    let receive = || {
        let api = dst.socket.clone();
        let sock = sock.clone();
        let body = json!({"receiver_url": url}).to_string();
        let _ = std::fs::remove_file(&sock);
        let t = std::thread::spawn(move || {
            Client::new(&api)
                .with_timeout(Duration::from_secs(120))
                .request(
                    Method::Put,
                    "/api/v1/vm.receive-migration",
                    Some(body.as_bytes()),
                )
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        while !sock.exists() {
            assert!(Instant::now() < deadline, "the destination never listened");
            std::thread::sleep(Duration::from_millis(10));
        }
        t
    };

    // A source of another stream version: the destination refuses it and stays empty.
    let receiver = receive();
    let mut s = UnixStream::connect(&sock).unwrap();
    s.write_all(b"PETRELMG").unwrap();
    s.write_all(&99u32.to_le_bytes()).unwrap();
    let r = receiver.join().unwrap().unwrap();
    assert_error(
        &r,
        400,
        &["version 99", "version 1"],
        "wrong stream version",
    );
    assert_eq!(dst.state(), None, "a refused stream left a VM behind");
    drop(s);

    // The real move, driven by Cloud Hypervisor's own client when it is here.
    let chr = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/peers/bin/ch-remote");
    let took = if chr.exists() {
        let _ = std::fs::remove_file(&sock);
        let dst_api = dst.socket.clone();
        let recv_arg = format!("receiver_url={url}");
        let chr2 = chr.clone();
        let receiver = std::thread::spawn(move || {
            std::process::Command::new(&chr2)
                .arg("--api-socket")
                .arg(&dst_api)
                .args(["receive-migration", &recv_arg])
                .output()
                .unwrap()
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        while !sock.exists() {
            assert!(Instant::now() < deadline, "the destination never listened");
            std::thread::sleep(Duration::from_millis(10));
        }
        let t = Instant::now();
        let out = std::process::Command::new(&chr)
            .arg("--api-socket")
            .arg(&src.socket)
            .args(["send-migration", &format!("destination_url={url}")])
            .output()
            .unwrap();
        let took = t.elapsed();
        assert!(
            out.status.success(),
            "ch-remote send-migration: {}\nsource stderr:\n{}\ndestination stderr:\n{}",
            String::from_utf8_lossy(&out.stderr),
            src.petrel.stderr(),
            dst.petrel.stderr()
        );
        let answer = receiver.join().unwrap();
        assert!(
            answer.status.success(),
            "ch-remote receive-migration: {}",
            String::from_utf8_lossy(&answer.stderr)
        );
        took
    } else {
        petrel_tests::skip("ch-remote migration: ../shared/peers/bin/ch-remote not found");
        let receiver = receive();
        let t = Instant::now();
        let r = src.put("vm.send-migration", Some(&json!({"destination_url": url})));
        let took = t.elapsed();
        assert_eq!(
            r.status,
            200,
            "vm.send-migration: {}\nsource stderr:\n{}\ndestination stderr:\n{}",
            r.error_message(),
            src.petrel.stderr(),
            dst.petrel.stderr()
        );
        let answer = receiver
            .join()
            .unwrap()
            .expect("vm.receive-migration answered");
        assert_eq!(answer.status, 204, "{}", answer.error_message());
        took
    };
    println!("migration of a 64 MiB counting guest: {took:?}");
    for line in src
        .petrel
        .stderr()
        .lines()
        .filter(|l| l.contains("migrated to"))
    {
        println!("source: {line}");
    }

    // The source exits 0 once the destination runs the VM.
    let src_out = src.petrel.stdout();
    let src_dir = src.dir.0.clone();
    let _keep = std::mem::replace(&mut src.dir.0, std::env::temp_dir().join("petrel-none"));
    let run = src.petrel.wait(Duration::from_secs(10));
    assert!(run.success(), "the source did not exit 0\n{}", run.dump());
    let last = last_count(&src_out).expect("the source counted");

    let mut dst = dst;
    dst.assert_state("Running");
    assert!(
        dst.petrel
            .wait_for_stdout(Duration::from_secs(20), |out| whole_counts(out).len() >= 3),
        "the migrated guest does not count\n{}\n{}",
        tail(&dst.petrel.stdout()),
        dst.petrel.stderr()
    );
    let counted = whole_counts(&dst.petrel.stdout());
    assert!(
        counted[0] == last + 1 || counted[0] == last + 2,
        "the source printed up to {last}, the destination started at {}",
        counted[0]
    );
    assert!(
        counted.windows(2).all(|w| w[1] == w[0] + 1),
        "the count skips or repeats after the migration: {counted:?}"
    );
    dst.put_ok("vm.pause", None, 204);
    std::thread::sleep(Duration::from_millis(200));
    let printed = last_count(&dst.petrel.stdout()).unwrap();
    let on_disk = disk_count(&disk);
    assert!(
        on_disk == Some(printed) || on_disk == Some(printed + 1),
        "the disk holds {on_disk:?}, the console last printed {printed}"
    );
    drop(dst);
    let _ = std::fs::remove_dir_all(src_dir);
}

/// A guest rewriting 32 MiB as fast as it can: the source needs pre-copy rounds, then pauses
/// anyway; the guest checks every page each sweep, so a page the dirty log missed shows as
/// `DIRTY-ERROR` on the destination.
#[test]
fn a_guest_dirtying_memory_migrates_through_precopy_rounds() {
    require_kvm!();
    let mut src = ApiVm::start("mig-dirty-src", &[]);
    src.put_ok("vm.create", Some(&guest_config("action=dirty")), 204);
    src.put_ok("vm.boot", None, 204);
    assert!(
        src.petrel
            .wait_for_stdout(GUEST_BOOT_TIMEOUT, |out| whole_counts(out).len() >= 2),
        "the guest does not sweep\n{}",
        tail(&src.petrel.stdout())
    );
    let dst = ApiVm::start("mig-dirty-dst", &[]);
    let sock = dst.dir.0.join("mig.sock");
    let url = format!("unix:{}", sock.display());
    let api = dst.socket.clone();
    let body = json!({"receiver_url": url}).to_string();
    let receiver = std::thread::spawn(move || {
        Client::new(&api)
            .with_timeout(Duration::from_secs(120))
            .request(
                Method::Put,
                "/api/v1/vm.receive-migration",
                Some(body.as_bytes()),
            )
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    while !sock.exists() {
        assert!(Instant::now() < deadline, "the destination never listened");
        std::thread::sleep(Duration::from_millis(10));
    }
    let r = src.put("vm.send-migration", Some(&json!({"destination_url": url})));
    assert_eq!(
        r.status,
        200,
        "{}\n{}",
        r.error_message(),
        src.petrel.stderr()
    );
    let answer = receiver.join().unwrap().unwrap();
    assert_eq!(answer.status, 204, "{}", answer.error_message());
    let log = src.petrel.stderr();
    let line = log
        .lines()
        .find(|l| l.contains("migrated to"))
        .unwrap_or_else(|| panic!("no migration line\n{log}"));
    println!("source: {line}");
    let rounds: u32 = line
        .split(": ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no round count in {line:?}"));
    assert!(
        rounds >= 1,
        "a guest dirtying 32 MiB per sweep needed no round: {line}"
    );
    let last = last_count(&src.petrel.stdout()).unwrap();
    let run = src.petrel.wait(Duration::from_secs(10));
    assert!(run.success(), "{}", run.dump());

    let mut dst = dst;
    assert!(
        dst.petrel.wait_for_stdout(Duration::from_secs(60), |out| {
            out.contains("DIRTY-ERROR") || whole_counts(out).len() >= 3
        }),
        "the migrated guest does not sweep\n{}",
        tail(&dst.petrel.stdout())
    );
    let out = dst.petrel.stdout();
    assert!(
        !out.contains("DIRTY-ERROR"),
        "a page was lost:\n{}",
        tail(&out)
    );
    let counted = whole_counts(&out);
    assert!(
        counted[0] == last + 1 || counted[0] == last + 2,
        "the source swept {last} times, the destination went on at {}",
        counted[0]
    );
}

/// A request still queued when petrel exits is answered at once and does not hold the exit up
/// (the API thread waited out its 60 s reply timeout first: a petreld restarted during a
/// migration out timed out pinging the source petrel that was exiting).
#[test]
fn a_request_queued_at_exit_does_not_hold_it_up() {
    require_kvm!();
    let vm = ApiVm::start("exit-queue", &[]);
    let sock = vm.dir.0.join("mig.sock");
    let request = |method: Method, op: &'static str, body: Option<String>| {
        let api = vm.socket.clone();
        std::thread::spawn(move || {
            Client::new(&api)
                .with_timeout(Duration::from_secs(120))
                .request(
                    method,
                    &format!("/api/v1/{op}"),
                    body.as_deref().map(str::as_bytes),
                )
                .map(|r| r.status)
        })
    };
    // The event loop waits in vm.receive-migration; a shutdown and a ping queue up behind it.
    let body = json!({"receiver_url": format!("unix:{}", sock.display())}).to_string();
    let receive = request(Method::Put, "vm.receive-migration", Some(body));
    let deadline = Instant::now() + Duration::from_secs(20);
    while !sock.exists() {
        assert!(Instant::now() < deadline, "the destination never listened");
        std::thread::sleep(Duration::from_millis(10));
    }
    let shutdown = request(Method::Put, "vmm.shutdown", None);
    std::thread::sleep(Duration::from_millis(300));
    let ping = request(Method::Get, "vmm.ping", None);
    std::thread::sleep(Duration::from_millis(300));
    // Not a migration stream: vm.receive-migration fails, then vmm.shutdown ends petrel.
    let mut s = UnixStream::connect(&sock).unwrap();
    s.write_all(b"not a petrel stream").unwrap();
    drop(s);
    let t = Instant::now();
    assert_eq!(receive.join().unwrap().ok(), Some(400));
    assert_eq!(shutdown.join().unwrap().ok(), Some(200));
    let run = vm.petrel.wait(Duration::from_secs(20));
    assert!(
        !run.timed_out && run.success(),
        "petrel did not exit within 20 s of vmm.shutdown\n{}",
        run.dump()
    );
    let pinged = ping.join().unwrap();
    assert!(
        t.elapsed() < Duration::from_secs(20),
        "the queued ping was answered after {:?}: {pinged:?}",
        t.elapsed()
    );
    assert!(
        !matches!(pinged, Ok(200)),
        "a ping queued behind vmm.shutdown was served"
    );
}
