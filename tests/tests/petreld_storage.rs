//! petreld's storage against a real petreld, the real `qemu-img`/`qemu-io` (Debian
//! `qemu-utils`) and, for a VM on a volume, the real petrel and the test guest: pools under the
//! allowed roots only, volumes made, thin-cloned, grown, converted and deleted, their capacity
//! and allocation, 409 for a volume in use, 507 for one larger than the pool, names with `/` or
//! `..` refused, and everything still there after `kill -9` of petreld.
//!
//! Needs the binaries built first (`cargo build -p petreld -p vmm`).

mod petreld_support;

use std::path::{Path, PathBuf};
use std::process::Command;

use petrel_http::Method;
use petrel_tests::require_kvm;
use petreld_support::{guest_config, Petreld};
use serde_json::{json, Value};

/// `qemu-img`/`qemu-io` present, else a visible skip.
fn have_qemu_utils() -> bool {
    let ok = ["qemu-img", "qemu-io"].iter().all(|t| {
        Command::new(t)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    });
    if !ok {
        petrel_tests::skip("qemu-img/qemu-io not available; install qemu-utils");
    }
    ok
}

fn tool(name: &str, args: &[&str]) -> String {
    let out = Command::new(name).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{name} {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `qemu-img info` as JSON.
fn info(path: &Path) -> Value {
    let text = tool(
        "qemu-img",
        &["info", "-U", "--output=json", path.to_str().unwrap()],
    );
    serde_json::from_str(&text).unwrap()
}

/// The directory petreld's test support uses for `name`; storage roots go under it.
fn scratch(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("pd-{name}-{}", std::process::id()))
}

fn err(d: &Petreld, method: Method, path: &str, body: Option<&Value>, status: u16) -> String {
    let r = d.call(method, path, body);
    assert_eq!(r.status, status, "{method} {path}: {}", r.error_message());
    r.error_message()
}

#[test]
fn pools_and_volumes_made_cloned_grown_converted_and_kept() {
    if !have_qemu_utils() {
        return;
    }
    let root = scratch("storage").join("roots");
    let mut d = Petreld::with_config("storage", json!({"storage_roots": [root]}));
    let pool_path = root.join("p1");

    // Pools: only under the roots, plain names.
    let outside = json!({"name": "out", "path": "/tmp/petrel-outside-pool"});
    let m = err(&d, Method::Post, "/v1/pools", Some(&outside), 403);
    assert!(m.contains("storage root"), "{m}");
    assert!(!Path::new("/tmp/petrel-outside-pool").exists());
    let dotdot = json!({"name": "dd", "path": root.join("p1/../../escape")});
    err(&d, Method::Post, "/v1/pools", Some(&dotdot), 400);
    for name in ["a/b", "..", "a..b"] {
        let body = json!({"name": name, "path": root.join("x")});
        err(&d, Method::Post, "/v1/pools", Some(&body), 400);
    }
    // A symlink inside the root that leads out of it.
    std::fs::create_dir_all(&root).unwrap();
    std::os::unix::fs::symlink("/tmp", root.join("link")).unwrap();
    let via_link = json!({"name": "ln", "path": root.join("link/sub")});
    err(&d, Method::Post, "/v1/pools", Some(&via_link), 403);

    let pool = d.ok(
        Method::Post,
        "/v1/pools",
        Some(&json!({"name": "p1", "path": pool_path})),
        201,
    );
    assert_eq!(pool["volumes"], 0);
    assert!(pool["free"].as_u64().unwrap() > 0, "{pool:#}");
    err(
        &d,
        Method::Post,
        "/v1/pools",
        Some(&json!({"name": "p1", "path": root.join("p2")})),
        409,
    );

    // A sparse raw volume.
    let raw = d.ok(
        Method::Post,
        "/v1/volumes",
        Some(&json!({"pool": "p1", "name": "data", "capacity": "64M"})),
        201,
    );
    assert_eq!(raw["format"], "raw");
    assert_eq!(raw["capacity"], 64 << 20);
    assert!(raw["allocation"].as_u64().unwrap() < 1 << 20, "{raw:#}");
    assert_eq!(info(&pool_path.join("data"))["format"], "raw");
    for (name, status) in [("data", 409), ("x/y", 400), ("..", 400)] {
        let body = json!({"pool": "p1", "name": name, "capacity": "1M"});
        err(&d, Method::Post, "/v1/volumes", Some(&body), status);
    }
    let huge = json!({"pool": "p1", "name": "huge", "capacity": "1024T"});
    let m = err(&d, Method::Post, "/v1/volumes", Some(&huge), 507);
    assert!(m.contains("free space"), "{m}");
    assert!(!pool_path.join("huge").exists());

    // A qcow2 base with data, and a thin clone of it.
    d.ok(
        Method::Post,
        "/v1/volumes",
        Some(&json!({"pool": "p1", "name": "base", "format": "qcow2", "capacity": 16 << 20})),
        201,
    );
    let base_path = pool_path.join("base");
    tool(
        "qemu-io",
        &["-c", "write -P 0xab 0 64k", base_path.to_str().unwrap()],
    );
    let clone = d.ok(
        Method::Post,
        "/v1/volumes",
        Some(&json!({"pool": "p1", "name": "clone", "clone_of": "p1/base"})),
        201,
    );
    assert_eq!(clone["format"], "qcow2");
    assert_eq!(clone["clone_of"], "p1/base");
    assert_eq!(clone["capacity"], 16 << 20);
    let clone_path = pool_path.join("clone");
    let ci = info(&clone_path);
    assert_eq!(
        ci["full-backing-filename"].as_str(),
        base_path.to_str(),
        "{ci:#}"
    );
    let cp = clone_path.to_str().unwrap();
    tool("qemu-io", &["-c", "read -P 0xab 0 64k", cp]);
    let m = err(&d, Method::Delete, "/v1/volumes/p1/base", None, 409);
    assert!(m.contains("p1/clone"), "{m}");

    // Grow the clone; shrinking is refused.
    let grown = d.ok(
        Method::Post,
        "/v1/volumes/p1/clone/resize",
        Some(&json!({"capacity": "32M"})),
        200,
    );
    assert_eq!(grown["capacity"], 32 << 20);
    assert_eq!(info(&clone_path)["virtual-size"], 32 << 20);
    let small = json!({"capacity": "1M"});
    err(
        &d,
        Method::Post,
        "/v1/volumes/p1/clone/resize",
        Some(&small),
        400,
    );

    // Convert it to raw: a full copy, no longer a clone; the base can go.
    let conv = d.ok(
        Method::Post,
        "/v1/volumes/p1/clone/convert",
        Some(&json!({"format": "raw"})),
        200,
    );
    assert_eq!(conv["format"], "raw");
    assert_eq!(conv["clone_of"], Value::Null);
    assert_eq!(info(&clone_path)["format"], "raw");
    tool("qemu-io", &["-f", "raw", "-c", "read -P 0xab 0 64k", cp]);

    // Everything survives kill -9 of petreld.
    d.kill9();
    d.start();
    let vols = d.ok(Method::Get, "/v1/volumes?pool=p1", None, 200);
    let names: Vec<&str> = vols["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["base", "clone", "data"]);
    let pool = d.ok(Method::Get, "/v1/pools/p1", None, 200);
    assert_eq!(pool["volumes"], 3);
    assert_eq!(pool["capacity"], (64 + 16 + 32) << 20);

    let m = err(&d, Method::Delete, "/v1/pools/p1", None, 409);
    assert!(m.contains("data"), "{m}");
    for v in ["base", "clone", "data"] {
        d.ok(Method::Delete, &format!("/v1/volumes/p1/{v}"), None, 204);
        assert!(!pool_path.join(v).exists());
    }
    d.ok(Method::Delete, "/v1/pools/p1", None, 204);
    err(&d, Method::Get, "/v1/pools/p1", None, 404);
}

#[test]
fn a_vm_on_a_cloned_volume_writes_its_clone_and_holds_it() {
    require_kvm!();
    if !have_qemu_utils() {
        return;
    }
    let root = scratch("storage-vm").join("roots");
    let d = Petreld::with_config("storage-vm", json!({"storage_roots": [root]}));
    let pool_path = root.join("p");
    d.ok(
        Method::Post,
        "/v1/pools",
        Some(&json!({"name": "p", "path": pool_path})),
        201,
    );
    d.ok(
        Method::Post,
        "/v1/volumes",
        Some(&json!({"pool": "p", "name": "base", "format": "qcow2", "capacity": "8M"})),
        201,
    );
    d.ok(
        Method::Post,
        "/v1/volumes",
        Some(&json!({"pool": "p", "name": "root", "clone_of": "p/base"})),
        201,
    );
    let mut config = guest_config("action=virtio-blk");
    config["platform"] = json!({"virtio_mmio_cmdline": true});
    config["disks"] = json!([{"volume": "p/root", "id": "petrel-disk-1"}]);
    // A volume that does not exist, and a volume beside a path.
    let mut missing = config.clone();
    missing["disks"] = json!([{"volume": "p/nope"}]);
    let m = err(
        &d,
        Method::Post,
        "/v1/vms",
        Some(&json!({"name": "m", "config": missing})),
        422,
    );
    assert!(m.contains("p/nope"), "{m}");

    let vm = d.ok(
        Method::Post,
        "/v1/vms",
        Some(&json!({"name": "onvol", "config": config})),
        201,
    );
    let disk = &vm["config"]["disks"][0];
    let root_path = pool_path.join("root");
    assert_eq!(disk["path"].as_str(), root_path.to_str(), "{vm:#}");
    assert_eq!(disk["image_type"], "Qcow2");
    assert_eq!(disk["backing_files"], true);
    let m = err(&d, Method::Delete, "/v1/volumes/p/root", None, 409);
    assert!(m.contains("onvol"), "{m}");
    let v = d.ok(Method::Get, "/v1/volumes/p/root", None, 200);
    assert_eq!(v["used_by"], json!(["onvol"]));

    // The guest writes sector 1 and powers off; the write is in the clone, not the base.
    d.wait_vm("onvol", "stopped", |vm| vm["state"] == "stopped");
    let cp = root_path.to_str().unwrap();
    let out = tool("qemu-io", &["-r", "-U", "-c", "read -v 512 16", cp]);
    // "PETREL-BLK-" in qemu-io's hex dump.
    assert!(
        out.contains("50 45 54 52 45 4c 2d 42 4c 4b 2d"),
        "clone sector 1:\n{out}"
    );
    let bp = pool_path.join("base");
    let out = tool(
        "qemu-io",
        &["-r", "-U", "-c", "read -P 0 0 1M", bp.to_str().unwrap()],
    );
    assert!(!out.contains("Pattern verification failed"), "{out}");

    d.ok(Method::Delete, "/v1/vms/onvol", None, 204);
    d.ok(Method::Delete, "/v1/volumes/p/root", None, 204);
    d.ok(Method::Delete, "/v1/volumes/p/base", None, 204);
}

/// `petrelctl --socket S args…`: (exit code, stdout, stderr).
fn petrelctl(d: &Petreld, args: &[&str]) -> (i32, String, String) {
    let bin = petrel_tests::petrel_bin().with_file_name("petrelctl");
    let out = Command::new(bin)
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

#[test]
fn petrelctl_pool_and_volume_commands() {
    if !have_qemu_utils() {
        return;
    }
    let root = scratch("storage-ctl").join("roots");
    let d = Petreld::with_config("storage-ctl", json!({"storage_roots": [root]}));
    let pool_path = root.join("p");
    let ok = |args: &[&str]| {
        let (code, out, err) = petrelctl(&d, args);
        assert_eq!(code, 0, "petrelctl {args:?}: {out}{err}");
        out
    };
    ok(&["pool", "create", "p", pool_path.to_str().unwrap()]);
    ok(&[
        "volume", "create", "p/base", "--size", "8M", "--format", "qcow2",
    ]);
    ok(&["volume", "clone", "p/base", "p/vm1"]);
    ok(&["volume", "resize", "p/vm1", "16M"]);
    let table = ok(&["volume", "list", "--pool", "p"]);
    assert!(
        table.contains("p/vm1") && table.contains("p/base"),
        "{table}"
    );
    assert!(table.contains("16 MiB"), "{table}");
    let v: Value = serde_json::from_str(&ok(&["-o", "json", "volume", "get", "p/vm1"])).unwrap();
    assert_eq!(v["clone_of"], "p/base");
    assert_eq!(v["capacity"], 16 << 20);
    let pools = ok(&["pool", "list"]);
    assert!(pools.contains(pool_path.to_str().unwrap()), "{pools}");

    let (code, _, err) = petrelctl(&d, &["volume", "delete", "p/base"]);
    assert_ne!(code, 0);
    assert!(err.contains("p/vm1"), "{err}");
    let (code, _, err) = petrelctl(&d, &["volume", "create", "bad", "--size", "1M"]);
    assert_ne!(code, 0);
    assert!(err.contains("POOL/NAME"), "{err}");

    let src = d.dir.join("import-me");
    std::fs::write(&src, b"an initramfs, say").unwrap();
    let sum = tool("sha256sum", &[src.to_str().unwrap()]);
    let sum = sum.split_whitespace().next().unwrap();
    let src_s = src.to_str().unwrap();
    ok(&[
        "volume", "create", "p/initrd", "--import", src_s, "--sha256", sum,
    ]);
    assert_eq!(
        std::fs::read(pool_path.join("initrd")).unwrap(),
        b"an initramfs, say"
    );
    ok(&["volume", "delete", "p/initrd"]);
    ok(&["volume", "convert", "p/vm1", "raw"]);
    ok(&["volume", "delete", "p/base"]);
    ok(&["volume", "delete", "p/vm1"]);
    ok(&["pool", "delete", "p"]);
    assert_eq!(ok(&["pool", "list"]), "no pools\n");
}

#[test]
fn imported_kernel_checked_by_sha256_boots_a_vm_by_name() {
    require_kvm!();
    if !have_qemu_utils() {
        return;
    }
    let root = scratch("storage-img").join("roots");
    let d = Petreld::with_config("storage-img", json!({"storage_roots": [root]}));
    let pool_path = root.join("img");
    d.ok(
        Method::Post,
        "/v1/pools",
        Some(&json!({"name": "img", "path": pool_path})),
        201,
    );
    let kernel = petrel_tests::guest_image(petrel_tests::GuestKind::Pvh);
    let sum = tool("sha256sum", &[&kernel]);
    let sum = sum.split_whitespace().next().unwrap().to_string();

    // A wrong checksum: refused, nothing left in the pool.
    let wrong = format!("{}0", &sum[..63]);
    let body = json!({"pool": "img", "name": "guest", "import": kernel, "sha256": wrong});
    let m = err(&d, Method::Post, "/v1/volumes", Some(&body), 422);
    assert!(m.contains("sha256") && m.contains(&sum), "{m}");
    assert_eq!(std::fs::read_dir(&pool_path).unwrap().count(), 0);
    let missing = json!({"pool": "img", "name": "x", "import": "/nonexistent/k", "sha256": sum});
    let m = err(&d, Method::Post, "/v1/volumes", Some(&missing), 422);
    assert!(m.contains("/nonexistent/k"), "{m}");

    let body = json!({"pool": "img", "name": "guest", "import": kernel, "sha256": sum});
    let v = d.ok(Method::Post, "/v1/volumes", Some(&body), 201);
    assert_eq!(v["format"], "raw");
    let copy = std::fs::read(pool_path.join("guest")).unwrap();
    assert_eq!(copy, std::fs::read(&kernel).unwrap());

    let mut config = guest_config("action=poweroff");
    config["payload"]["kernel"] = json!({"volume": "img/guest"});
    let vm = d.ok(
        Method::Post,
        "/v1/vms",
        Some(&json!({"name": "byname", "config": config})),
        201,
    );
    let kpath = pool_path.join("guest");
    assert_eq!(vm["config"]["payload"]["kernel"].as_str(), kpath.to_str());
    let m = err(&d, Method::Delete, "/v1/volumes/img/guest", None, 409);
    assert!(m.contains("byname"), "{m}");
    let vm = d.wait_vm("byname", "stopped", |vm| vm["state"] == "stopped");
    assert_ne!(vm["exit_reason"], "crashed", "{vm:#}");
    d.ok(Method::Delete, "/v1/vms/byname", None, 204);
    d.ok(Method::Delete, "/v1/volumes/img/guest", None, 204);
}
