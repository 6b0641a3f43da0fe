//! petreld against the real `petrel` and the test guest: 20 VMs created, listed, filtered,
//! paginated, stopped and started; `kill -9` of petreld in the middle of operations and of a
//! petrel (failed, or restarted per policy); a guest that powers itself off; templates,
//! console, metrics; bad requests answered 4xx with the database unchanged.
//!
//! Needs the binaries built first (`cargo build -p petreld -p vmm`): petreld is found next to
//! petrel, or at `$PETRELD_BIN`.

mod petreld_support;

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use petrel_http::{Client, Method};
use petrel_tests::require_kvm;
use petreld_support::{guest_config, names, pid_alive, Petreld};
use serde_json::json;

#[test]
fn twenty_vms_list_filter_paginate_stop_start() {
    require_kvm!();
    let d = Petreld::new("twenty");
    let mode = std::fs::metadata(d.dir.join("petreld.sock"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "socket mode {mode:o}");
    let t0 = Instant::now();
    for i in 0..20 {
        let group = if i % 2 == 0 { "even" } else { "odd" };
        let vm = d.create(
            &format!("vm-{i:02}"),
            "action=halt",
            json!({"labels": {"group": group, "app": "test"}}),
        );
        assert_eq!(vm["state"], "running", "{vm:#}");
        assert_eq!(vm["hypervisor"], "kvm", "{vm:#}");
        assert!(pid_alive(vm["pid"].as_u64().unwrap()));
    }
    // petrel does not inherit petreld's blocked signals: SIGHUP (bit 0), which petrel never
    // blocks itself, is deliverable (petrel blocks only SIGTERM and SIGINT, for its signalfd).
    let pid = d.vm("vm-00")["pid"].as_u64().unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let blocked = status
        .lines()
        .find_map(|l| l.strip_prefix("SigBlk:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap();
    assert_eq!(
        blocked & 1,
        0,
        "petrel inherited petreld's signal mask: {blocked:#x}"
    );
    eprintln!("20 VMs created and booted in {:?}", t0.elapsed());

    let all = d.all();
    assert_eq!(all.len(), 20);
    let even = d.list("?label=group%3Deven&sort=name");
    assert_eq!(
        names(&even),
        (0..20)
            .step_by(2)
            .map(|i| format!("vm-{i:02}"))
            .collect::<Vec<_>>()
    );
    assert_eq!(names(&d.list("?name=vm-07"))[..], ["vm-07"]);
    assert_eq!(
        d.list("?hypervisor=kvm&state=running")["items"]
            .as_array()
            .unwrap()
            .len(),
        20
    );
    assert!(d.list("?hypervisor=mshv")["items"]
        .as_array()
        .unwrap()
        .is_empty());

    // Pagination by name, descending, 7 at a time.
    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let q = if token.is_empty() {
            "?sort=-name&limit=7".to_string()
        } else {
            format!("?sort=-name&limit=7&continue={token}")
        };
        let page = d.list(&q);
        pages += 1;
        seen.extend(names(&page));
        match page["continue"].as_str() {
            Some(t) => token = t.to_string(),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    let expected: Vec<String> = (0..20).rev().map(|i| format!("vm-{i:02}")).collect();
    assert_eq!(seen, expected);
    // A token for another sort order is refused.
    let first = d.list("?sort=name&limit=2");
    let t = first["continue"].as_str().unwrap();
    assert_eq!(
        d.call(
            Method::Get,
            &format!("/v1/vms?sort=created&continue={t}"),
            None
        )
        .status,
        400
    );

    // Stop four (the halted guest ignores the power button: forced after the timeout).
    for i in 0..4 {
        let old_pid = d.vm(&format!("vm-{i:02}"))["pid"].as_u64().unwrap();
        let timeout = if i == 0 { "?timeout=1" } else { "?timeout=0" };
        let vm = d.ok(
            Method::Post,
            &format!("/v1/vms/vm-{i:02}/stop{timeout}"),
            None,
            200,
        );
        assert_eq!(vm["state"], "stopped", "{vm:#}");
        assert_eq!(vm["desired_state"], "stopped");
        assert!(vm["pid"].is_null());
        assert!(
            !pid_alive(old_pid),
            "petrel {old_pid} still runs after stop"
        );
    }
    assert_eq!(
        names(&d.list("?state=stopped&sort=name")),
        ["vm-00", "vm-01", "vm-02", "vm-03"]
    );
    // Start two again; stopping a stopped VM is a no-op.
    for i in 0..2 {
        let vm = d.ok(Method::Post, &format!("/v1/vms/vm-{i:02}/start"), None, 200);
        assert_eq!(vm["state"], "running", "{vm:#}");
    }
    d.ok(Method::Post, "/v1/vms/vm-03/stop", None, 200);
    assert_eq!(
        d.list("?state=running")["items"].as_array().unwrap().len(),
        18
    );

    // Pause, resume, reboot, kill, delete.
    assert_eq!(
        d.ok(Method::Post, "/v1/vms/vm-04/pause", None, 200)["state"],
        "paused"
    );
    assert_eq!(
        d.call(Method::Post, "/v1/vms/vm-04/pause", None).status,
        409
    );
    assert_eq!(
        d.ok(Method::Post, "/v1/vms/vm-04/resume", None, 200)["state"],
        "running"
    );
    assert_eq!(
        d.ok(Method::Post, "/v1/vms/vm-04/reboot", None, 200)["state"],
        "running"
    );
    let killed = d.ok(Method::Post, "/v1/vms/vm-05/kill", None, 200);
    assert_eq!(killed["state"], "stopped");
    assert_eq!(killed["exit_reason"], "killed by request");
    let pid = d.vm("vm-06")["pid"].as_u64().unwrap();
    d.ok(Method::Delete, "/v1/vms/vm-06", None, 204);
    assert_eq!(d.call(Method::Get, "/v1/vms/vm-06", None).status, 404);
    assert!(!pid_alive(pid));
    assert_eq!(d.all().len(), 19);

    // Metrics: one state series per VM and state, sizes.
    let r = d.call(Method::Get, "/metrics", None);
    assert_eq!(r.status, 200);
    let text = String::from_utf8(r.body).unwrap();
    let id = d.vm("vm-07")["id"].as_str().unwrap().to_string();
    let labels = format!("id=\"{id}\",name=\"vm-07\",hypervisor=\"kvm\"");
    for line in [
        format!("petreld_vm_state{{{labels},state=\"running\"}} 1"),
        format!("petreld_vm_state{{{labels},state=\"stopped\"}} 0"),
        format!("petreld_vm_memory_bytes{{{labels}}} {}", 64u64 << 20),
        format!("petreld_vm_vcpus{{{labels}}} 1"),
        "petreld_vms{state=\"running\"} 16".to_string(),
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "metrics lack {line}\n{text}"
        );
    }
}

#[test]
fn kill9_petreld_mid_operation_and_kill9_petrel() {
    require_kvm!();
    let mut d = Petreld::new("restart");
    d.create("never", "action=halt", json!({"restart": "never"}));
    d.create("onfail", "action=halt", json!({"restart": "on-failure"}));
    d.create("stopme", "action=halt", json!({}));
    for i in 0..3 {
        d.create(&format!("keep-{i}"), "action=halt", json!({}));
    }
    d.create("idle", "action=halt", json!({"start": false}));
    let before: Vec<(String, u64)> = ["never", "onfail", "keep-0", "keep-1", "keep-2"]
        .iter()
        .map(|n| (n.to_string(), d.vm(n)["pid"].as_u64().unwrap()))
        .collect();

    // Operations in flight while petreld is killed: creates and a graceful stop.
    let socket = d.dir.join("petreld.sock");
    let stopper = {
        let socket = socket.clone();
        std::thread::spawn(move || {
            let c = Client::new(socket).with_timeout(Duration::from_secs(30));
            let _ = c.request(Method::Post, "/v1/vms/stopme/stop?timeout=5", None);
        })
    };
    let creator = std::thread::spawn(move || {
        let c = Client::new(socket).with_timeout(Duration::from_secs(30));
        for i in 0..8 {
            let body = json!({"name": format!("mid-{i}"), "config": guest_config("action=halt")});
            let _ = c.request(
                Method::Post,
                "/v1/vms",
                Some(&serde_json::to_vec(&body).unwrap()),
            );
        }
    });
    std::thread::sleep(Duration::from_millis(250));
    d.kill9();
    stopper.join().unwrap();
    creator.join().unwrap();
    d.start();

    // Nothing lost: the VMs from before are listed, the running ones re-attached (same pid).
    let all = d.all();
    let listed: Vec<&str> = all.iter().map(|v| v["name"].as_str().unwrap()).collect();
    for n in [
        "never", "onfail", "stopme", "keep-0", "keep-1", "keep-2", "idle",
    ] {
        assert!(listed.contains(&n), "{n} lost: {listed:?}");
    }
    for (name, pid) in &before {
        let vm = d.vm(name);
        assert_eq!(vm["state"], "running", "{vm:#}");
        assert_eq!(
            vm["pid"].as_u64(),
            Some(*pid),
            "{name} not re-attached: {vm:#}"
        );
    }
    assert_eq!(d.vm("idle")["state"], "created");
    let stopme = d.vm("stopme");
    assert_eq!(stopme["desired_state"], "stopped", "{stopme:#}");
    assert_eq!(stopme["state"], "stopped", "{stopme:#}");
    // Interrupted creates end up running (their desired state) or were never recorded.
    for vm in all
        .iter()
        .filter(|v| v["name"].as_str().unwrap().starts_with("mid-"))
    {
        let name = vm["name"].as_str().unwrap();
        let vm = d.wait_vm(name, "running", |v| v["state"] == "running");
        assert!(pid_alive(vm["pid"].as_u64().unwrap()));
    }
    eprintln!("after the restart: {listed:?}");

    // kill -9 of a petrel (not petreld's child any more): failed, or restarted per policy.
    let (_, never_pid) = before[0];
    // SAFETY: kill has no memory effects.
    unsafe { libc::kill(never_pid as i32, 9) };
    let vm = d.wait_vm("never", "failed", |v| v["state"] == "failed");
    let reason = vm["exit_reason"].as_str().unwrap();
    assert!(reason.contains(&format!("pid {never_pid}")), "{reason}");
    assert_eq!(vm["desired_state"], "running");
    let (_, onfail_pid) = before[1];
    // SAFETY: as above.
    unsafe { libc::kill(onfail_pid as i32, 9) };
    let vm = d.wait_vm("onfail", "restarted", |v| {
        v["state"] == "running" && v["restart_count"] == 1
    });
    assert_ne!(vm["pid"].as_u64(), Some(onfail_pid));
    // A petrel started by this petreld: its exit status is known.
    let vm = d.ok(Method::Post, "/v1/vms/never/start", None, 200);
    let pid = vm["pid"].as_u64().unwrap();
    // SAFETY: as above.
    unsafe { libc::kill(pid as i32, 9) };
    let vm = d.wait_vm("never", "failed", |v| v["state"] == "failed");
    assert!(
        vm["exit_reason"]
            .as_str()
            .unwrap()
            .contains("killed by signal 9"),
        "{vm:#}"
    );

    // A petrel that dies while petreld is down: failed with the reason at the next start.
    let pid = d.vm("keep-0")["pid"].as_u64().unwrap();
    d.kill9();
    // SAFETY: as above.
    unsafe { libc::kill(pid as i32, 9) };
    std::thread::sleep(Duration::from_millis(100));
    d.start();
    let vm = d.vm("keep-0");
    assert_eq!(vm["state"], "failed", "{vm:#}");
    assert!(
        vm["exit_reason"].as_str().unwrap().contains("vanished"),
        "{vm:#}"
    );
}

#[test]
fn guest_poweroff_templates_console() {
    require_kvm!();
    let d = Petreld::new("guest");
    let tpl =
        json!({"name": "tiny", "description": "test guest", "config": guest_config("action=halt")});
    d.ok(Method::Post, "/v1/templates", Some(&tpl), 201);
    assert_eq!(
        d.ok(Method::Get, "/v1/templates", None, 200)["items"][0]["name"],
        "tiny"
    );
    assert_eq!(
        d.ok(Method::Get, "/v1/templates/tiny", None, 200)["description"],
        "test guest"
    );

    // From the template, with the command line overridden: the guest powers off by itself.
    let body = json!({"name": "quick", "template": "tiny",
        "overrides": {"payload": {"cmdline": "action=quick"}}});
    let vm = d.ok(Method::Post, "/v1/vms", Some(&body), 201);
    assert_eq!(vm["template"], "tiny");
    assert_eq!(vm["config"]["payload"]["cmdline"], "action=quick");
    let vm = d.wait_vm("quick", "stopped", |v| v["state"] == "stopped");
    assert_eq!(vm["exit_reason"], "guest powered off", "{vm:#}");
    assert_eq!(vm["desired_state"], "stopped");
    let r = d.call(Method::Get, "/v1/vms/quick/console", None);
    assert_eq!(r.status, 200);
    let console = String::from_utf8_lossy(&r.body).into_owned();
    assert!(
        console.contains("PETREL-GUEST: start boot=pvh"),
        "{console}"
    );
    assert!(console.contains("PETREL-GUEST: poweroff"), "{console}");
    let tail = d.call(Method::Get, "/v1/vms/quick/console?tail=10", None);
    assert_eq!(tail.body.len(), 10);

    // restart: always boots it again after each poweroff.
    let body = json!({"name": "again", "template": "tiny", "restart": "always",
        "overrides": {"payload": {"cmdline": "action=quick"}}});
    d.ok(Method::Post, "/v1/vms", Some(&body), 201);
    let vm = d.wait_vm("again", "restarted twice", |v| {
        v["restart_count"].as_u64() >= Some(2)
    });
    assert_eq!(vm["desired_state"], "running", "{vm:#}");
    d.ok(Method::Post, "/v1/vms/again/kill", None, 200);

    d.ok(Method::Delete, "/v1/templates/tiny", None, 204);
    assert_eq!(d.call(Method::Get, "/v1/templates/tiny", None).status, 404);
    // The VM made from it keeps its configuration.
    assert_eq!(
        d.vm("quick")["config"]["payload"]["cmdline"],
        "action=quick"
    );

    let host = d.ok(Method::Get, "/v1/host", None, 200);
    assert_eq!(host["kvm"], true, "{host:#}");
    assert_eq!(host["auto"]["hypervisor"], "kvm", "{host:#}");
    assert!(host["cpus"].as_u64() >= Some(1));
    let gates = d.ok(Method::Get, "/v1/feature-gates", None, 200);
    assert_eq!(gates["items"][0]["name"], "mshv");
    assert_eq!(gates["items"][0]["enabled"], false);
}

/// A bad request: method, path, body, expected status, a word the message must contain.
type BadCase = (Method, &'static str, Option<Vec<u8>>, u16, &'static str);

#[test]
fn bad_requests_are_4xx_and_change_nothing() {
    require_kvm!();
    let d = Petreld::new("bad");
    d.create("taken", "action=halt", json!({"start": false}));
    d.ok(
        Method::Post,
        "/v1/templates",
        Some(&json!({"name": "t", "config": guest_config("x")})),
        201,
    );
    let snapshot = |d: &Petreld| {
        (
            d.all(),
            d.ok(Method::Get, "/v1/templates", None, 200),
            std::fs::read_dir(d.dir.join("state/vms")).map_or(0, |r| r.count()),
        )
    };
    let before = snapshot(&d);
    let mut huge = guest_config("action=halt");
    huge["memory"]["size"] = json!(1u64 << 40);
    let mut many = guest_config("action=halt");
    many["cpus"]["boot_vcpus"] = json!(100_000);
    let cases: Vec<BadCase> = vec![
        (
            Method::Post,
            "/v1/vms",
            Some(br#"{"name":"t2","template":"nope"}"#.to_vec()),
            422,
            "nope",
        ),
        (
            Method::Post,
            "/v1/vms",
            Some(
                json!({"name": "taken", "config": guest_config("x")})
                    .to_string()
                    .into_bytes(),
            ),
            409,
            "taken",
        ),
        (
            Method::Post,
            "/v1/vms",
            Some(
                json!({"name": "big", "config": huge})
                    .to_string()
                    .into_bytes(),
            ),
            422,
            "memory.size",
        ),
        (
            Method::Post,
            "/v1/vms",
            Some(
                json!({"name": "wide", "config": many})
                    .to_string()
                    .into_bytes(),
            ),
            422,
            "boot_vcpus",
        ),
        (
            Method::Post,
            "/v1/vms",
            Some(b"{\"name\": ".to_vec()),
            400,
            "malformed JSON",
        ),
        (Method::Post, "/v1/vms", None, 400, "body"),
        (
            Method::Post,
            "/v1/vms",
            Some(
                json!({"name": "bad name", "config": guest_config("x")})
                    .to_string()
                    .into_bytes(),
            ),
            400,
            "name",
        ),
        (
            Method::Post,
            "/v1/vms",
            Some(
                json!({"name": "x", "config": guest_config("x"), "hypervisor": "xen"})
                    .to_string()
                    .into_bytes(),
            ),
            400,
            "xen",
        ),
        (
            Method::Post,
            "/v1/vms",
            Some(
                json!({"name": "x", "config": guest_config("x"), "hypervisor": "mshv"})
                    .to_string()
                    .into_bytes(),
            ),
            422,
            "mshv",
        ),
        (
            Method::Post,
            "/v1/vms",
            Some(
                json!({"name": "x", "config": {"payload": {"kernel": "/nonexistent"}}})
                    .to_string()
                    .into_bytes(),
            ),
            422,
            "payload.kernel",
        ),
        (
            Method::Post,
            "/v1/vms",
            Some(
                json!({"name": "x", "config": {"payload": {"kernel": "/k"}, "memroy": {}}})
                    .to_string()
                    .into_bytes(),
            ),
            400,
            "memroy",
        ),
        (
            Method::Post,
            "/v1/vms",
            Some(
                json!({"name": "x", "template": "t", "overrides": {"cpus": {"boot_vcpus": 0}}})
                    .to_string()
                    .into_bytes(),
            ),
            400,
            "boot_vcpus",
        ),
        (
            Method::Post,
            "/v1/vms",
            Some(
                json!({"name": "x", "config": guest_config("x"), "labels": {"a b": "c"}})
                    .to_string()
                    .into_bytes(),
            ),
            400,
            "labels",
        ),
        (
            Method::Post,
            "/v1/templates",
            Some(
                json!({"name": "t", "config": guest_config("y")})
                    .to_string()
                    .into_bytes(),
            ),
            409,
            "t",
        ),
        (Method::Get, "/v1/feature-gates/warp", None, 404, "warp"),
        (Method::Get, "/v1/vms?colour=red", None, 400, "colour"),
        (Method::Get, "/v1/vms?state=dancing", None, 400, "dancing"),
        (Method::Get, "/v1/vms?limit=0", None, 400, "limit"),
        (Method::Get, "/v1/vms?continue=zz", None, 400, "continue"),
        (Method::Get, "/v1/vms/ghost", None, 404, "ghost"),
        (Method::Post, "/v1/vms/taken/pause", None, 409, "pause"),
        (Method::Put, "/v1/vms", None, 405, "allows"),
        (Method::Get, "/v1/nothing", None, 404, "no route"),
    ];
    for (method, path, body, status, word) in cases {
        let r = d.client.request(method, path, body.as_deref()).unwrap();
        let msg = r.error_message();
        assert_eq!(r.status, status, "{method} {path}: {msg}");
        assert!(
            msg.contains(word),
            "{method} {path}: {msg:?} does not name {word:?}"
        );
    }
    assert_eq!(snapshot(&d), before, "a bad request changed the state");
}
