//! `vm.snapshot` and `vm.restore` against the real `petrel` (default seccomp) and the counting
//! test guest (`action=count-blk`: each count is written to its virtio-blk disk before it is
//! printed): the guest keeps counting from where it was after snapshot → kill → restore →
//! resume, and its disk agrees with its console; a second restore of the same snapshot starts from the same count; damaged,
//! truncated, missing and wrong-version snapshots and a restore into a petrel that has a VM
//! are refused with errors naming the problem, and leave no VM behind. Snapshot size and
//! time and restore-to-running time are printed (not asserted).

mod api_support;

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

use api_support::{assert_error, guest_config, tail, ApiVm};
use petrel_tests::guest_actions::{count_values, GUEST_BOOT_TIMEOUT};
use petrel_tests::require_kvm;
use serde_json::{json, Value};

/// The last `COUNT` on a whole line (a pause can cut the line being printed short).
fn last_count(vm: &ApiVm) -> Option<u64> {
    let out = vm.petrel.stdout();
    let whole = out.rfind('\n').map_or("", |end| &out[..=end]);
    count_values(whole).last().copied()
}

/// Bytes on disk (allocated blocks) and apparent size of the files in `dir`.
fn disk_usage(dir: &Path) -> (u64, u64) {
    let mut used = 0;
    let mut apparent = 0;
    for e in std::fs::read_dir(dir).unwrap() {
        let m = e.unwrap().metadata().unwrap();
        used += m.blocks() * 512;
        apparent += m.len();
    }
    (used, apparent)
}

/// Copies a snapshot directory (to damage the copy).
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

/// The count the guest last wrote to its disk (sector 2: `PCNT` + u64 little endian).
fn disk_count(disk: &Path) -> Option<u64> {
    let bytes = std::fs::read(disk).ok()?;
    let sector = bytes.get(1024..1024 + 12)?;
    if &sector[..4] != b"PCNT" {
        return None;
    }
    Some(u64::from_le_bytes(sector[4..12].try_into().ok()?))
}

/// The disk holds the count last printed or the one about to be (written, not yet printed).
#[track_caller]
fn assert_disk_agrees(disk: &Path, printed: u64, what: &str) {
    let on_disk = disk_count(disk);
    assert!(
        on_disk == Some(printed) || on_disk == Some(printed + 1),
        "{what}: the disk holds {on_disk:?}, the console last printed {printed}"
    );
}

fn url(dir: &Path) -> String {
    format!("file://{}", dir.display())
}

/// Restores `snap` into a fresh petrel, resumes it, and returns the process with the first
/// COUNT it printed and how long restore → that first COUNT took.
fn restore_and_resume(name: &str, snap: &Path, prefault: bool) -> (ApiVm, u64, Duration) {
    let vm = ApiVm::start(name, &[]);
    let t0 = Instant::now();
    vm.put_ok(
        "vm.restore",
        Some(&json!({"source_url": url(snap), "prefault": prefault})),
        204,
    );
    let restore_call = t0.elapsed();
    vm.assert_state("Paused");
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        count_values(&vm.petrel.stdout()).is_empty(),
        "a restored VM runs before vm.resume\n{}",
        tail(&vm.petrel.stdout())
    );
    vm.put_ok("vm.resume", None, 204);
    let mut vm = vm;
    let running = vm
        .petrel
        .wait_for_stdout(GUEST_BOOT_TIMEOUT, |out| !count_values(out).is_empty());
    let to_running = t0.elapsed();
    assert!(
        running,
        "the restored guest does not count\nstdout:\n{}\nstderr:\n{}",
        tail(&vm.petrel.stdout()),
        vm.petrel.stderr()
    );
    let first = count_values(&vm.petrel.stdout())[0];
    println!(
        "{name}: vm.restore answered in {restore_call:?} (prefault {prefault}); first COUNT \
         after {to_running:?}"
    );
    (vm, first, to_running)
}

#[test]
fn a_counting_guest_continues_after_snapshot_kill_and_restore() {
    require_kvm!();
    let mut vm = ApiVm::start("snap-src", &[]);
    let disk = vm.dir.0.join("disk.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let mut cfg = guest_config("action=count-blk");
    cfg["rng"] = json!({"src": "/dev/urandom"});
    cfg["disks"] = json!([{"path": disk, "id": "disk0"}]);
    // The test guest finds its virtio devices on the command line.
    cfg["platform"] = json!({"virtio_mmio_cmdline": true});
    vm.put_ok("vm.create", Some(&cfg), 204);
    vm.put_ok("vm.boot", None, 204);
    assert!(
        vm.petrel
            .wait_for_stdout(GUEST_BOOT_TIMEOUT, |out| count_values(out).len() >= 5),
        "no COUNT lines\n{}",
        tail(&vm.petrel.stdout())
    );
    let snap = vm.dir.0.join("snap");
    let body = json!({"destination_url": url(&snap)});

    // Running: refused, as Cloud Hypervisor does.
    let r = vm.put("vm.snapshot", Some(&body));
    assert_error(&r, 400, &["paused"], "vm.snapshot while running");

    vm.put_ok("vm.pause", None, 204);
    let r = vm.put(
        "vm.snapshot",
        Some(&json!({"destination_url": "http://x/y"})),
    );
    assert_error(
        &r,
        400,
        &["destination_url"],
        "vm.snapshot to a non-file URL",
    );
    std::thread::sleep(Duration::from_millis(200));
    let last = last_count(&vm).expect("counted before the pause");
    assert_disk_agrees(&disk, last, "paused source");
    let t = Instant::now();
    vm.put_ok("vm.snapshot", Some(&body), 204);
    let took = t.elapsed();
    let (used, apparent) = disk_usage(&snap);
    println!(
        "snapshot of a 64 MiB guest: {took:?}, {} KiB on disk ({} KiB apparent)",
        used >> 10,
        apparent >> 10
    );
    assert!(
        used < apparent / 2,
        "memory is not written sparse: {used} of {apparent}"
    );

    // The source dies; its snapshot lives on.
    vm.petrel.signal(libc::SIGKILL);
    let source_dir = vm.dir.0.clone();
    let _keep = std::mem::replace(&mut vm.dir.0, std::env::temp_dir().join("petrel-none"));
    drop(vm);

    let (b, first_b, _) = restore_and_resume("snap-dst1", &snap, false);
    // The pause may have cut a line short: the first whole line is the next value or the one
    // after it, never a restart from 0.
    assert!(
        first_b == last + 1 || first_b == last + 2,
        "counted {last} before the snapshot, {first_b} first after restore\n{}",
        tail(&b.petrel.stdout())
    );
    let mut b = b;
    assert!(
        b.petrel.wait_for_stdout(Duration::from_secs(20), |out| {
            count_values(out).last().copied() > Some(first_b + 3)
        }),
        "the restored guest stopped counting\n{}",
        tail(&b.petrel.stdout())
    );
    let counted = count_values(&b.petrel.stdout());
    assert!(
        counted.windows(2).all(|w| w[1] == w[0] + 1),
        "the count skips or repeats after restore: {counted:?}"
    );
    b.put_ok("vm.pause", None, 204);
    std::thread::sleep(Duration::from_millis(200));
    let printed = last_count(&b).expect("counted after restore");
    assert_disk_agrees(&disk, printed, "paused restored VM");
    b.put_ok("vm.resume", None, 204);
    let info = b.get_json("vm.info");
    assert_eq!(info["config"]["disks"][0]["id"], "disk0", "{info}");

    // A petrel with a VM refuses a restore, and its VM is untouched.
    let r = b.put("vm.restore", Some(&json!({"source_url": url(&snap)})));
    assert_error(
        &r,
        400,
        &["already has a VM"],
        "vm.restore into a busy petrel",
    );
    b.assert_state("Running");
    drop(b);

    // The same snapshot again (prefaulted this time): the same state.
    let (c, first_c, _) = restore_and_resume("snap-dst2", &snap, true);
    assert_eq!(first_c, first_b, "two restores of one snapshot differ");
    drop(c);

    // Bad snapshots: each refused with the file and the fault named; no VM is left behind.
    let d = ApiVm::start("snap-bad", &[]);
    let restore = |dir: &Path| d.put("vm.restore", Some(&json!({"source_url": url(dir)})));
    let check = |dir: &Path, words: &[&str], what: &str| {
        assert_error(&restore(dir), 400, words, what);
        assert_eq!(d.state(), None, "{what}: a VM was left behind");
    };
    check(
        &d.dir.0.join("nothing-here"),
        &["no snapshot.json"],
        "missing",
    );
    let r = d.put("vm.restore", Some(&json!({"source_url": "relative/dir"})));
    assert_error(&r, 400, &["source_url"], "not a file URL");

    let bad = d.dir.0.join("garbled-state");
    copy_dir(&snap, &bad);
    let mut state = std::fs::read(bad.join("state.json")).unwrap();
    let mid = state.len() / 2;
    state[mid] ^= 0x20;
    std::fs::write(bad.join("state.json"), &state).unwrap();
    check(&bad, &["state.json", "checksum"], "garbled state");

    let bad = d.dir.0.join("truncated-memory");
    copy_dir(&snap, &bad);
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(bad.join("memory-0.bin"))
        .unwrap();
    f.set_len(f.metadata().unwrap().len() / 2).unwrap();
    check(&bad, &["memory-0.bin", "truncated"], "truncated memory");

    let bad = d.dir.0.join("changed-memory");
    copy_dir(&snap, &bad);
    let header: Value =
        serde_json::from_slice(&std::fs::read(bad.join("snapshot.json")).unwrap()).unwrap();
    let mem = bad.join("memory-0.bin");
    let f = std::fs::OpenOptions::new().write(true).open(&mem).unwrap();
    use std::os::unix::fs::FileExt;
    // Page 0x100 (1 MiB): where the guest's kernel sits, never all zero.
    f.write_all_at(b"\xde\xad\xbe\xef", 0x10_0000).unwrap();
    assert!(header["memory"][0]["data_pages"].as_u64().unwrap() > 0);
    check(&bad, &["memory-0.bin", "checksum"], "changed memory");

    let bad = d.dir.0.join("other-version");
    copy_dir(&snap, &bad);
    let mut header = header.clone();
    header["version"] = json!(99);
    std::fs::write(bad.join("snapshot.json"), header.to_string()).unwrap();
    check(&bad, &["version 99", "version 1"], "wrong version");

    let bad = d.dir.0.join("garbled-header");
    copy_dir(&snap, &bad);
    std::fs::write(bad.join("snapshot.json"), b"{\"format\": \"petrel-snap").unwrap();
    check(&bad, &["snapshot.json", "damaged"], "garbled header");

    // After all that, the good snapshot still restores in the same process, driven by Cloud
    // Hypervisor's own client when it is here.
    let chr = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/peers/bin/ch-remote");
    let sock = d.socket.to_str().unwrap().to_string();
    if chr.exists() {
        let run = |args: &[&str]| {
            let out = std::process::Command::new(&chr)
                .arg("--api-socket")
                .arg(&sock)
                .args(args)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "ch-remote {args:?}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        };
        run(&["restore", &format!("source_url={}", url(&snap))]);
        d.assert_state("Paused");
        run(&["resume"]);
        d.assert_state("Running");
        let mut d = d;
        assert!(
            d.petrel
                .wait_for_stdout(GUEST_BOOT_TIMEOUT, |out| count_values(out).first()
                    == Some(&first_b)),
            "restored through ch-remote, the guest does not continue at {first_b}\n{}",
            tail(&d.petrel.stdout())
        );
    } else {
        petrel_tests::skip("ch-remote restore: ../shared/peers/bin/ch-remote not found");
        d.put_ok("vm.restore", Some(&json!({"source_url": url(&snap)})), 204);
        d.assert_state("Paused");
    }
    let _ = std::fs::remove_dir_all(source_dir);
}

/// A VM whose devices are on virtio-pci cannot be saved yet (PCI configuration, BAR places
/// and MSI-X state are not carried): vm.snapshot and vm.send-migration answer 400 naming
/// virtio-pci, write nothing, and the VM resumes where it was.
#[test]
fn a_virtio_pci_vm_is_not_snapshotted_without_its_pci_state() {
    require_kvm!();
    let mut vm = ApiVm::start("snap-pci", &[]);
    let disk = vm.dir.0.join("disk.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let mut cfg = guest_config("action=count-blk");
    cfg["disks"] = json!([{"path": disk, "id": "disk0"}]);
    cfg["platform"] = json!({"transport": "pci"});
    vm.put_ok("vm.create", Some(&cfg), 204);
    vm.put_ok("vm.boot", None, 204);
    assert!(
        vm.petrel
            .wait_for_stdout(GUEST_BOOT_TIMEOUT, |out| count_values(out).len() >= 3),
        "no COUNT lines over virtio-pci\n{}",
        tail(&vm.petrel.stdout())
    );
    vm.put_ok("vm.pause", None, 204);
    let snap = vm.dir.0.join("snap");
    let r = vm.put("vm.snapshot", Some(&json!({"destination_url": url(&snap)})));
    assert_error(&r, 400, &["virtio-pci"], "vm.snapshot of a PCI VM");
    assert!(
        !snap.exists(),
        "the refused snapshot wrote {}",
        snap.display()
    );
    let r = vm.put(
        "vm.send-migration",
        Some(&json!({"destination_url": format!("unix:{}", vm.dir.0.join("m.sock").display())})),
    );
    assert_error(&r, 400, &["virtio-pci"], "vm.send-migration of a PCI VM");
    let before = last_count(&vm).expect("counted before the pause");
    vm.put_ok("vm.resume", None, 204);
    assert!(
        vm.petrel
            .wait_for_stdout(GUEST_BOOT_TIMEOUT, |out| count_values(out)
                .last()
                .is_some_and(|&n| n > before + 2)),
        "the guest did not go on counting after the refusals\n{}",
        tail(&vm.petrel.stdout())
    );
    let _ = vm.shutdown_vmm();
}

/// The ops budget of the disk's rate limiter in the snapshot at `dir` (`state.json`).
fn disk_ops_budget(dir: &Path) -> u64 {
    let state: Value =
        serde_json::from_slice(&std::fs::read(dir.join("state.json")).unwrap()).unwrap();
    let disk = state["virtio"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"] == "disk0")
        .unwrap_or_else(|| panic!("no disk0 in {state}"));
    disk["limiters"][0]["ops"]["budget"]
        .as_u64()
        .unwrap_or_else(|| panic!("no ops budget saved: {disk}"))
}

/// A rate limiter's budget is carried across snapshot → restore (a restored disk does not
/// get a full bucket): a disk limited to 1000 operations per hour that the guest has used is
/// restored with what was left, as a second snapshot of the restored VM shows.
#[test]
fn rate_limiter_budgets_are_carried_across_restore() {
    require_kvm!();
    let mut vm = ApiVm::start("snap-rl", &[]);
    let disk = vm.dir.0.join("disk.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let mut cfg = guest_config("action=count-blk");
    cfg["disks"] = json!([{"path": disk, "id": "disk0",
        "rate_limiter_config": {"ops": {"size": 1000, "refill_time": 3_600_000}}}]);
    cfg["platform"] = json!({"virtio_mmio_cmdline": true});
    vm.put_ok("vm.create", Some(&cfg), 204);
    vm.put_ok("vm.boot", None, 204);
    assert!(
        vm.petrel
            .wait_for_stdout(GUEST_BOOT_TIMEOUT, |out| count_values(out).len() >= 10),
        "no COUNT lines\n{}",
        tail(&vm.petrel.stdout())
    );
    vm.put_ok("vm.pause", None, 204);
    let first = vm.dir.0.join("first");
    vm.put_ok(
        "vm.snapshot",
        Some(&json!({"destination_url": url(&first)})),
        204,
    );
    let used = disk_ops_budget(&first);
    assert!(
        used < 995,
        "ten counts used no disk operations: budget {used}"
    );
    // The source goes (its disk lock with it); its directory stays for the restore.
    let source_dir = vm.dir.0.clone();
    let _keep = std::mem::replace(&mut vm.dir.0, std::env::temp_dir().join("petrel-none"));
    drop(vm);

    let restored = ApiVm::start("snap-rl-restored", &[]);
    restored.put_ok("vm.restore", Some(&json!({"source_url": url(&first)})), 204);
    let second = source_dir.join("second");
    restored.put_ok(
        "vm.snapshot",
        Some(&json!({"destination_url": url(&second)})),
        204,
    );
    let carried = disk_ops_budget(&second);
    // At most a token or two refilled meanwhile (1000 per hour).
    assert!(
        carried >= used && carried <= used + 2,
        "saved with {used} operations left, restored with {carried}"
    );
    drop(restored);
    let _ = std::fs::remove_dir_all(source_dir);
}
