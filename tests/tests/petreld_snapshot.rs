//! petreld's snapshots and migrations with real petrels and the counting test guest
//! (`action=count`): a snapshot is taken while the VM runs on, listed with its size, a revert
//! brings the count back to where the snapshot was, a delete removes the files; a VM moves to
//! a second petreld and counts on there while the first records it `migrated`; a petreld
//! killed (SIGKILL) during a snapshot or a migration leaves records and files that agree.
//!
//! Needs the binaries built first (`cargo build -p petreld -p vmm`).

mod petreld_support;

use std::time::{Duration, Instant};

use petrel_http::Method;
use petrel_tests::guest_actions::count_values;
use petrel_tests::require_kvm;
use petreld_support::{pid_alive, Petreld};
use serde_json::{json, Value};

/// The `COUNT`s on whole lines of VM `name`'s console.
fn counts(d: &Petreld, name: &str) -> Vec<u64> {
    let r = d.call(Method::Get, &format!("/v1/vms/{name}/console"), None);
    assert_eq!(r.status, 200, "{}", r.error_message());
    let text = String::from_utf8_lossy(&r.body).into_owned();
    let whole = text.rfind('\n').map_or("", |end| &text[..=end]);
    count_values(whole)
}

/// Waits until VM `name`'s console has a count above `above`; returns the counts.
fn wait_count(d: &Petreld, name: &str, above: u64) -> Vec<u64> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let c = counts(d, name);
        if c.last().is_some_and(|&n| n > above) {
            return c;
        }
        assert!(
            Instant::now() < deadline,
            "{name}: the count never passed {above}: {c:?}\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn snapshot_dir(d: &Petreld, id: &str, name: &str) -> std::path::PathBuf {
    d.dir
        .join("state/vms")
        .join(id)
        .join("snapshots")
        .join(name)
}

fn id_of(vm: &Value) -> String {
    vm["id"].as_str().unwrap().to_string()
}

#[test]
fn snapshots_are_taken_listed_reverted_and_deleted() {
    require_kvm!();
    let mut d = Petreld::new("snap");
    let vm = d.create("counter", "action=count", json!({}));
    let id = id_of(&vm);
    wait_count(&d, "counter", 3);

    let snap = d.ok(
        Method::Post,
        "/v1/vms/counter/snapshots",
        Some(&json!({"name": "first"})),
        201,
    );
    let at_snapshot = *counts(&d, "counter").last().unwrap();
    assert_eq!(snap["state"], "ready", "{snap:#}");
    assert!(snap["size_bytes"].as_u64() > Some(0), "{snap:#}");
    let dir = snapshot_dir(&d, &id, "first");
    assert!(dir.join("snapshot.json").is_file(), "{}", dir.display());
    // The VM was resumed: it counts on.
    assert_eq!(d.vm("counter")["state"], "running");
    let before_revert = wait_count(&d, "counter", at_snapshot + 8);

    // Another snapshot without a name gets one; a taken name is refused.
    let other = d.ok(Method::Post, "/v1/vms/counter/snapshots", None, 201);
    assert!(
        other["name"].as_str().unwrap().starts_with("snap-"),
        "{other:#}"
    );
    let r = d.call(
        Method::Post,
        "/v1/vms/counter/snapshots",
        Some(&json!({"name": "first"})),
    );
    assert_eq!(r.status, 409, "{}", r.error_message());
    let list = d.ok(Method::Get, "/v1/vms/counter/snapshots", None, 200);
    let names: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names.len(), 2, "{list:#}");
    assert!(names.contains(&"first"), "{list:#}");

    // Revert: a new petrel restores the snapshot; the count goes back to where it was.
    let old_pid = d.vm("counter")["pid"].as_u64().unwrap();
    let reverted = d.ok(
        Method::Post,
        "/v1/vms/counter/revert",
        Some(&json!({"snapshot": "first"})),
        200,
    );
    assert_eq!(reverted["state"], "running", "{reverted:#}");
    assert_ne!(reverted["pid"].as_u64(), Some(old_pid));
    assert!(!pid_alive(old_pid), "the old petrel still runs");
    let after = wait_count(&d, "counter", 0);
    let last_before = *before_revert.last().unwrap();
    assert!(
        after[0] <= at_snapshot + 1 && after[0] + 5 < last_before,
        "after the revert the count went on at {} (snapshot taken at about {at_snapshot}, \
         {last_before} before the revert)",
        after[0]
    );
    let after = wait_count(&d, "counter", after[0] + 3);
    assert!(
        after.windows(2).all(|w| w[1] == w[0] + 1),
        "the count skips after the revert: {after:?}"
    );

    // Errors name the problem.
    let r = d.call(
        Method::Post,
        "/v1/vms/counter/revert",
        Some(&json!({"snapshot": "nope"})),
    );
    assert_eq!(r.status, 404, "{}", r.error_message());
    assert!(r.error_message().contains("nope"), "{}", r.error_message());

    // Delete: the record and the files go.
    d.ok(Method::Delete, "/v1/vms/counter/snapshots/first", None, 204);
    assert!(!dir.exists(), "{} is still there", dir.display());
    let r = d.call(Method::Get, "/v1/vms/counter/snapshots/first", None);
    assert_eq!(r.status, 404);
    let r = d.call(Method::Delete, "/v1/vms/counter/snapshots/first", None);
    assert_eq!(r.status, 404);

    // Kept across a petreld restart.
    d.kill9();
    d.start();
    let list = d.ok(Method::Get, "/v1/vms/counter/snapshots", None, 200);
    assert_eq!(list["items"].as_array().unwrap().len(), 1, "{list:#}");
    assert_eq!(d.vm("counter")["state"], "running");
    // Deleting the VM removes its snapshots.
    d.ok(Method::Delete, "/v1/vms/counter", None, 204);
    assert!(!d.dir.join("state/vms").join(&id).exists());
}

/// A stopped VM cannot be snapshotted (nothing runs to save) but can be reverted.
#[test]
fn a_stopped_vm_is_reverted_to_its_snapshot() {
    require_kvm!();
    let d = Petreld::new("snap-stopped");
    d.create("c2", "action=count", json!({}));
    wait_count(&d, "c2", 3);
    d.ok(
        Method::Post,
        "/v1/vms/c2/snapshots",
        Some(&json!({"name": "s"})),
        201,
    );
    let at = *counts(&d, "c2").last().unwrap();
    d.ok(Method::Post, "/v1/vms/c2/kill", None, 200);
    let r = d.call(Method::Post, "/v1/vms/c2/snapshots", None);
    assert_eq!(r.status, 409, "{}", r.error_message());
    let vm = d.ok(
        Method::Post,
        "/v1/vms/c2/revert",
        Some(&json!({"snapshot": "s"})),
        200,
    );
    assert_eq!(vm["state"], "running", "{vm:#}");
    let after = wait_count(&d, "c2", 0);
    assert!(
        after[0] <= at + 1,
        "went on at {} (snapshot at {at})",
        after[0]
    );
    d.ok(Method::Post, "/v1/vms/c2/kill", None, 200);
}

/// A petreld killed while it takes a snapshot: after its restart the snapshot is either
/// complete and listed, or gone with its files; the VM runs (not left paused).
#[test]
fn a_petreld_killed_during_a_snapshot_leaves_it_whole_or_gone() {
    require_kvm!();
    let mut d = Petreld::new("snap-kill");
    let vm = d.create("victim", "action=count", json!({}));
    let id = id_of(&vm);
    wait_count(&d, "victim", 3);
    let socket = d.dir.join("petreld.sock");
    let taker = std::thread::spawn(move || {
        petrel_http::Client::new(&socket)
            .with_timeout(Duration::from_secs(30))
            .request(
                Method::Post,
                "/v1/vms/victim/snapshots",
                Some(br#"{"name": "cut"}"#),
            )
            .map(|r| r.status)
    });
    std::thread::sleep(Duration::from_millis(15));
    d.kill9();
    let _ = taker.join();
    d.start();
    let list = d.ok(Method::Get, "/v1/vms/victim/snapshots", None, 200);
    let items = list["items"].as_array().unwrap();
    let dir = snapshot_dir(&d, &id, "cut");
    match items.as_slice() {
        [] => {
            println!("the kill came before the snapshot was complete: it is gone");
            assert!(!dir.exists(), "{} left behind", dir.display());
        }
        [s] => {
            println!("the snapshot was complete before the kill");
            assert_eq!(s["state"], "ready", "{list:#}");
            assert!(dir.join("snapshot.json").is_file());
        }
        _ => panic!("{list:#}"),
    }
    let vm = d.wait_vm("victim", "running", |v| v["state"] == "running");
    let c = counts(&d, "victim");
    wait_count(&d, "victim", *c.last().unwrap_or(&0) + 3);
    assert_eq!(vm["desired_state"], "running");
}

/// Two petrelds: a VM moves from the first to the second and counts on there; the first
/// records it `migrated`, its petrel is gone; a bad destination leaves it running here.
#[test]
fn a_vm_moves_to_another_petreld() {
    require_kvm!();
    let a = Petreld::new("mig-a");
    let b = Petreld::new("mig-b");
    let vm = a.create("mover", "action=count", json!({}));
    let id = id_of(&vm);
    wait_count(&a, "mover", 3);
    let src_pid = a.vm("mover")["pid"].as_u64().unwrap();

    // Nobody at the destination: refused, the VM runs on here.
    let r = a.call(
        Method::Post,
        "/v1/vms/mover/migrate",
        Some(&json!({"to": a.dir.join("nobody.sock")})),
    );
    assert_eq!(r.status, 502, "{}", r.error_message());
    assert!(
        r.error_message().contains("no petreld answers"),
        "{}",
        r.error_message()
    );
    assert_eq!(a.vm("mover")["state"], "running");
    // A destination that already has a VM of that name refuses it.
    b.create("mover", "action=halt", json!({"start": false}));
    let r = a.call(
        Method::Post,
        "/v1/vms/mover/migrate",
        Some(&json!({"to": b.dir.join("petreld.sock")})),
    );
    assert_eq!(r.status, 409, "{}", r.error_message());
    assert_eq!(a.vm("mover")["state"], "running");
    b.ok(Method::Delete, "/v1/vms/mover", None, 204);
    let before = *wait_count(&a, "mover", 5).last().unwrap();

    let t = Instant::now();
    let moved = a.ok(
        Method::Post,
        "/v1/vms/mover/migrate",
        Some(&json!({"to": b.dir.join("petreld.sock")})),
        200,
    );
    println!("migration between petrelds: {:?}", t.elapsed());
    assert_eq!(moved["state"], "migrated", "{moved:#}");
    assert!(moved["pid"].is_null(), "{moved:#}");
    assert!(!pid_alive(src_pid), "the source petrel still runs");
    let there = b.vm("mover");
    assert_eq!(there["state"], "running", "{there:#}");
    assert_eq!(there["id"], id.as_str());
    let counted = wait_count(&b, "mover", 0);
    assert!(
        counted[0] > before,
        "the count started over on the destination: {} (it was past {before})",
        counted[0]
    );
    let counted = wait_count(&b, "mover", counted[0] + 3);
    assert!(counted.windows(2).all(|w| w[1] == w[0] + 1), "{counted:?}");
    // Its petrel writes under the destination's directory.
    assert!(b
        .dir
        .join("state/vms")
        .join(&id)
        .join("serial.log")
        .is_file());
    // The source's record stays (migrated) across a restart of the source.
    let mut a = a;
    a.kill9();
    a.start();
    assert_eq!(a.vm("mover")["state"], "migrated");
    let r = a.call(
        Method::Post,
        "/v1/vms/mover/migrate",
        Some(&json!({"to": "/x"})),
    );
    assert_eq!(r.status, 409, "{}", r.error_message());
    b.ok(Method::Post, "/v1/vms/mover/kill", None, 200);
}

/// The source petreld killed mid-migration: once restarted, the two petrelds agree (the VM
/// runs on exactly one; the source's record says migrated or running accordingly).
#[test]
fn a_source_petreld_killed_mid_migration_ends_consistent() {
    require_kvm!();
    let mut a = Petreld::new("migk-a");
    let b = Petreld::new("migk-b");
    a.create("m2", "action=count", json!({}));
    wait_count(&a, "m2", 3);
    let socket = a.dir.join("petreld.sock");
    let to = b.dir.join("petreld.sock");
    let mover = std::thread::spawn(move || {
        let body = json!({"to": to}).to_string();
        petrel_http::Client::new(&socket)
            .with_timeout(Duration::from_secs(60))
            .request(Method::Post, "/v1/vms/m2/migrate", Some(body.as_bytes()))
            .map(|r| r.status)
    });
    // Killed once the destination has been asked (it records the VM `incoming`): the
    // source petrel may or may not have been told to send yet.
    let deadline = Instant::now() + Duration::from_secs(30);
    while b.call(Method::Get, "/v1/vms/m2", None).status != 200 {
        assert!(
            Instant::now() < deadline,
            "the destination was never asked\n{}",
            a.log()
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    a.kill9();
    let _ = mover.join();
    a.start();
    let here = a.wait_vm("m2", "settled", |v| {
        v["state"] == "migrated" || v["state"] == "running"
    });
    let there = b.call(Method::Get, "/v1/vms/m2", None);
    if here["state"] == "migrated" {
        println!("the migration finished after the source petreld restarted");
        assert_eq!(there.status, 200);
        let v: Value = there.json_body().unwrap();
        assert_eq!(v["state"], "running", "{v:#}");
        wait_count(&b, "m2", 0);
    } else {
        println!("the migration did not happen: the VM runs on the source");
        // The destination forgets its incoming record (at once when the source's petrel
        // refused, or when no source connected within its wait).
        let deadline = Instant::now() + Duration::from_secs(60);
        while b.call(Method::Get, "/v1/vms/m2", None).status != 404 {
            assert!(
                Instant::now() < deadline,
                "the destination kept m2\n{}",
                b.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = there;
        let c = counts(&a, "m2");
        wait_count(&a, "m2", *c.last().unwrap_or(&0) + 3);
    }
}

/// `petrelctl` (the real binary) drives the same: `vm snapshot`, `snapshot list|get|delete`,
/// `vm restore`, `vm migrate`.
#[test]
fn petrelctl_snapshots_restores_and_migrates() {
    require_kvm!();
    let ctl = petreld_support::petreld_bin().with_file_name("petrelctl");
    assert!(ctl.is_file(), "{} not built", ctl.display());
    let a = Petreld::new("ctl-a");
    let b = Petreld::new("ctl-b");
    let run = |d: &Petreld, args: &[&str]| -> String {
        let out = std::process::Command::new(&ctl)
            .arg("--socket")
            .arg(d.dir.join("petreld.sock"))
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "petrelctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    a.create("ctl", "action=count", json!({}));
    wait_count(&a, "ctl", 3);
    let out = run(&a, &["vm", "snapshot", "ctl", "--name", "one"]);
    assert!(
        out.contains("snapshot one") && out.contains("ready"),
        "{out}"
    );
    let out = run(&a, &["snapshot", "list", "ctl"]);
    assert!(out.contains("NAME") && out.contains("one"), "{out}");
    let out = run(&a, &["-o", "json", "snapshot", "get", "ctl", "one"]);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["state"], "ready");
    let out = run(&a, &["vm", "restore", "ctl", "one"]);
    assert!(
        out.contains("restored from one") && out.contains("running"),
        "{out}"
    );
    let to = b.dir.join("petreld.sock");
    let out = run(&a, &["vm", "migrate", "ctl", "--to", to.to_str().unwrap()]);
    assert!(out.contains("migrated"), "{out}");
    assert_eq!(b.vm("ctl")["state"], "running");
    wait_count(&b, "ctl", 0);
    let out = run(&a, &["snapshot", "delete", "ctl", "one"]);
    assert!(out.contains("deleted"), "{out}");
    let out = run(&a, &["snapshot", "list", "ctl"]);
    assert!(out.contains("no snapshots"), "{out}");
    b.ok(Method::Post, "/v1/vms/ctl/kill", None, 200);
}

/// A new VM made from another VM's snapshot (`POST /v1/vms` with `snapshot`) runs from where
/// the snapshot was, next to the first one, with its own console; bad references are refused.
#[test]
fn a_new_vm_is_made_from_another_vms_snapshot() {
    require_kvm!();
    let d = Petreld::new("snap-clone");
    d.create("origin", "action=count", json!({}));
    wait_count(&d, "origin", 3);
    d.ok(
        Method::Post,
        "/v1/vms/origin/snapshots",
        Some(&json!({"name": "base"})),
        201,
    );
    let at = *counts(&d, "origin").last().unwrap();
    let origin_ahead = *wait_count(&d, "origin", at + 8).last().unwrap();
    let clone = d.ok(
        Method::Post,
        "/v1/vms",
        Some(&json!({"name": "clone", "snapshot": {"vm": "origin", "name": "base"}})),
        201,
    );
    assert_eq!(clone["state"], "running", "{clone:#}");
    assert_ne!(clone["id"], d.vm("origin")["id"]);
    let c = wait_count(&d, "clone", 0);
    assert!(
        c[0] <= at + 1 && c[0] < origin_ahead,
        "the clone went on at {} (snapshot at about {at}, origin at {origin_ahead})",
        c[0]
    );
    // Both run on, each on its own console.
    let o = counts(&d, "origin");
    wait_count(&d, "origin", *o.last().unwrap() + 2);
    let c = wait_count(&d, "clone", c[0] + 3);
    assert!(c.windows(2).all(|w| w[1] == w[0] + 1), "{c:?}");

    for (body, status, word) in [
        (
            json!({"name": "x1", "snapshot": {"vm": "origin", "name": "nope"}}),
            422,
            "nope",
        ),
        (
            json!({"name": "x2", "snapshot": {"vm": "ghost", "name": "base"}}),
            422,
            "ghost",
        ),
        (
            json!({"name": "x3", "snapshot": {"vm": "origin", "name": "base"},
                   "config": petreld_support::guest_config("action=halt")}),
            400,
            "config",
        ),
    ] {
        let r = d.call(Method::Post, "/v1/vms", Some(&body));
        assert_eq!(r.status, status, "{body}: {}", r.error_message());
        assert!(r.error_message().contains(word), "{}", r.error_message());
    }
    d.ok(Method::Post, "/v1/vms/clone/kill", None, 200);
    d.ok(Method::Post, "/v1/vms/origin/kill", None, 200);
}
