//! petreld's template versions and VM metadata against a real petreld and the test guest:
//! a template gets versions (from a config or from an existing VM), VMs record and may ask
//! for the version they come from, carry a description and tags, and `GET /v1/vms` filters
//! by tag, template and description; all of it survives a `kill -9` of petreld. Bad input
//! gets a clear 4xx and changes nothing.
//!
//! Needs the binaries built first (`cargo build -p petreld -p vmm`).

mod petreld_support;

use petrel_http::Method;
use petrel_tests::require_kvm;
use petreld_support::{guest_config, names, Petreld};
use serde_json::{json, Value};

fn listed(d: &Petreld, query: &str) -> Vec<String> {
    names(&d.list(query))
}

fn error(d: &Petreld, method: Method, path: &str, body: Option<&Value>, status: u16, has: &str) {
    let r = d.call(method, path, body);
    assert_eq!(r.status, status, "{path}: {r:?}");
    let msg = r.error_message();
    assert!(msg.contains(has), "{path}: {msg:?} should name {has:?}");
}

#[test]
fn template_versions_and_vm_metadata() {
    require_kvm!();
    let mut d = Petreld::new("tmplv");
    let v1 = d.ok(
        Method::Post,
        "/v1/templates",
        Some(&json!({"name": "web", "description": "first", "config": guest_config("action=halt v=1")})),
        201,
    );
    assert_eq!(v1["version"], 1, "{v1:#}");
    let v2 = d.ok(
        Method::Post,
        "/v1/templates/web/versions",
        Some(&json!({"description": "second", "config": guest_config("action=halt v=2")})),
        201,
    );
    assert_eq!(v2["version"], 2, "{v2:#}");
    let latest = d.ok(Method::Get, "/v1/templates/web", None, 200);
    assert_eq!(
        (&latest["version"], &latest["description"]),
        (&json!(2), &json!("second"))
    );
    let versions = d.ok(Method::Get, "/v1/templates/web/versions", None, 200);
    assert_eq!(versions["items"].as_array().unwrap().len(), 2);
    let one = d.ok(Method::Get, "/v1/templates/web/versions/1", None, 200);
    assert_eq!(one["config"]["payload"]["cmdline"], "action=halt v=1");

    // VMs: the latest version by default, or the one asked for; description and tags.
    let a = d.ok(
        Method::Post,
        "/v1/vms",
        Some(
            &json!({"name": "a", "template": "web", "description": "the shop's front end",
                     "tags": ["prod", "eu"]}),
        ),
        201,
    );
    assert_eq!(a["template_version"], 2, "{a:#}");
    assert_eq!(a["config"]["payload"]["cmdline"], "action=halt v=2");
    assert_eq!(a["tags"], json!(["prod", "eu"]));
    let b = d.ok(
        Method::Post,
        "/v1/vms",
        Some(&json!({"name": "b", "template": "web", "template_version": 1, "tags": ["prod"]})),
        201,
    );
    assert_eq!(b["template_version"], 1, "{b:#}");
    assert_eq!(b["config"]["payload"]["cmdline"], "action=halt v=1");
    d.create("c", "action=halt", json!({}));
    d.wait_vm("a", "running", |v| v["state"] == "running");

    // A template from an existing VM's config.
    let from = d.ok(
        Method::Post,
        "/v1/templates",
        Some(&json!({"name": "from-c", "from_vm": "c"})),
        201,
    );
    assert_eq!(from["config"]["payload"]["cmdline"], "action=halt");
    let v3 = d.ok(
        Method::Post,
        "/v1/templates/web/versions",
        Some(&json!({"from_vm": "b"})),
        201,
    );
    assert_eq!(
        (&v3["version"], &v3["config"]["payload"]["cmdline"]),
        (&json!(3), &json!("action=halt v=1"))
    );

    assert_eq!(listed(&d, "?tag=prod&sort=name"), ["a", "b"]);
    assert_eq!(listed(&d, "?tag=prod&tag=eu"), ["a"]);
    assert_eq!(listed(&d, "?template=web&sort=name"), ["a", "b"]);
    assert_eq!(listed(&d, "?description=front"), ["a"]);
    assert!(listed(&d, "?tag=none").is_empty());

    // Bad input: clear errors, nothing changed.
    let before = d.all().len();
    let post = |b: Value| Some(b);
    error(
        &d,
        Method::Post,
        "/v1/vms",
        post(json!({"name": "x", "template": "web", "template_version": 9})).as_ref(),
        422,
        "version 9",
    );
    error(
        &d,
        Method::Post,
        "/v1/vms",
        post(json!({"name": "x", "config": guest_config("action=halt"), "template_version": 1}))
            .as_ref(),
        400,
        "template_version",
    );
    error(
        &d,
        Method::Post,
        "/v1/vms",
        post(json!({"name": "x", "config": guest_config("action=halt"), "tags": ["a b"]})).as_ref(),
        400,
        "tags",
    );
    error(
        &d,
        Method::Post,
        "/v1/vms",
        post(json!({"name": "x", "config": guest_config("action=halt"), "tags": ["t", "t"]}))
            .as_ref(),
        400,
        "twice",
    );
    error(
        &d,
        Method::Post,
        "/v1/templates",
        post(json!({"name": "y", "config": guest_config("action=halt"), "from_vm": "a"})).as_ref(),
        400,
        "not both",
    );
    error(
        &d,
        Method::Post,
        "/v1/templates",
        post(json!({"name": "y", "from_vm": "nobody"})).as_ref(),
        404,
        "nobody",
    );
    error(
        &d,
        Method::Post,
        "/v1/templates/none/versions",
        post(json!({"config": guest_config("action=halt")})).as_ref(),
        404,
        "none",
    );
    error(
        &d,
        Method::Get,
        "/v1/templates/web/versions/abc",
        None,
        400,
        "abc",
    );
    error(
        &d,
        Method::Get,
        "/v1/templates/web/versions/7",
        None,
        404,
        "version 7",
    );
    assert_eq!(d.all().len(), before);
    let versions = d.ok(Method::Get, "/v1/templates/web/versions", None, 200);
    assert_eq!(versions["items"].as_array().unwrap().len(), 3);

    // All of it survives petreld's crash.
    d.kill9();
    d.start();
    let a = d.vm("a");
    assert_eq!(
        (&a["template_version"], &a["description"], &a["tags"]),
        (
            &json!(2),
            &json!("the shop's front end"),
            &json!(["prod", "eu"])
        )
    );
    let versions = d.ok(Method::Get, "/v1/templates/web/versions", None, 200);
    assert_eq!(versions["items"].as_array().unwrap().len(), 3);
    assert_eq!(listed(&d, "?tag=eu"), ["a"]);

    // The same through the real petrelctl.
    let (code, out, err) = petrelctl(&d, &["template", "add-version", "web", "--from-vm", "c"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("template web version 4 added"), "{out}");
    let (code, out, err) = petrelctl(&d, &["template", "versions", "web"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().count(), 5, "a header and four versions:\n{out}");
    let (code, out, _) = petrelctl(&d, &["template", "version", "web", "1"]);
    assert!(code == 0 && out.contains("first"), "{out}");
    let (code, out, err) = petrelctl(
        &d,
        &[
            "vm",
            "create",
            "--name",
            "e",
            "--template",
            "web",
            "--template-version",
            "2",
            "--tag",
            "blue",
            "--description",
            "made by petrelctl",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    let e = d.vm("e");
    assert_eq!(
        (&e["template_version"], &e["tags"]),
        (&json!(2), &json!(["blue"]))
    );
    let (code, out, _) = petrelctl(&d, &["vm", "list", "--tag", "blue", "--template", "web"]);
    assert_eq!(code, 0, "{out}");
    let rows: Vec<&str> = out
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().nth(1))
        .collect();
    assert!(rows.contains(&"e") && !rows.contains(&"a"), "{out}");
    let (code, _, err) = petrelctl(&d, &["template", "add-version", "web"]);
    assert_eq!(code, 2, "a usage error: {err}");

    d.ok(Method::Delete, "/v1/templates/web", None, 204);
    error(
        &d,
        Method::Get,
        "/v1/templates/web/versions",
        None,
        404,
        "web",
    );
}

/// `petrelctl --socket S args…`: (exit code, stdout, stderr).
fn petrelctl(d: &Petreld, args: &[&str]) -> (i32, String, String) {
    let bin = petrel_tests::petrel_bin().with_file_name("petrelctl");
    let out = std::process::Command::new(bin)
        .arg("--socket")
        .arg(d.dir.join("petreld.sock"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
