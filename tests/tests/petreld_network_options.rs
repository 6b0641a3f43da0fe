//! petreld's network options beyond membership, each test in its own network namespace:
//! `petrelctl network …`, VLAN tags on a bridged network, per-interface rate limits (QoS).
//!
//! Needs root, iproute2, nftables, dnsmasq-base and busybox (skipped, visibly, otherwise),
//! and the binaries built first (`cargo build -p petreld -p petrelctl -p vmm`).

mod petreld_support;

use petrel_http::Method;
use petreld_support::netns::{console, error_of, nat, netns_or_skip};
use petreld_support::Petreld;
use serde_json::{json, Value};

/// `petrelctl network …` against petreld: create, list, show, a refused overlap (exit 1,
/// petreld's message), delete.
#[test]
fn petrelctl_network_commands() {
    let Some(ns) = netns_or_skip("ctl") else {
        return;
    };
    let d = Petreld::in_netns("net-ctl", &ns.name);
    let ctl = |args: &[&str]| {
        let out =
            std::process::Command::new(petreld_support::petreld_bin().with_file_name("petrelctl"))
                .arg("--socket")
                .arg(d.dir.join("petreld.sock"))
                .args(args)
                .output()
                .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, err) = ctl(&[
        "network",
        "create",
        "n1",
        "--type",
        "nat",
        "--subnet",
        "10.80.0.0/24",
        "--dhcp-range",
        "10.80.0.100-10.80.0.120",
    ]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("network n1 created (bridge pb-n1)"), "{out}");
    let (code, out, _) = ctl(&["network", "list"]);
    assert_eq!(code, Some(0));
    assert!(out.contains("n1") && out.contains("10.80.0.0/24"), "{out}");
    ns.veth_on("pb-n1", "vb0", "vc0", "02:dd:00:00:00:04")
        .unwrap();
    let lease = ns.dhcp("vc0").unwrap_or_default();
    let octet: u8 = lease.rsplit('.').next().unwrap_or("0").parse().unwrap_or(0);
    assert!((100..=120).contains(&octet), "{lease} outside the range");
    let (code, out, _) = ctl(&["network", "show", "n1"]);
    assert_eq!(code, Some(0));
    assert!(
        out.contains("running true") && out.contains(&lease),
        "{out}"
    );
    // A VM on the network from the command line, with a fixed address.
    let file = d.dir.join("vm.json");
    std::fs::write(
        &file,
        petreld_support::guest_config("action=halt").to_string(),
    )
    .unwrap();
    let file = file.display().to_string();
    let (code, _, err) = ctl(&[
        "vm",
        "create",
        "--name",
        "web",
        "--no-start",
        "--net",
        "network=n1,ip=10.80.0.7",
        &file,
    ]);
    assert_eq!(code, Some(0), "{err}");
    let (_, out, _) = ctl(&["network", "show", "n1"]);
    assert!(out.contains("web"), "{out}");
    let conf = std::fs::read_to_string(d.dir.join("state/networks/n1/dnsmasq.conf")).unwrap();
    assert!(conf.contains(",10.80.0.7,web"), "{conf}");
    let (code, _, err) = ctl(&["network", "delete", "n1"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("used by VM web"), "{err}");
    let (code, _, err) = ctl(&["vm", "delete", "web"]);
    assert_eq!(code, Some(0), "{err}");
    let (code, _, err) = ctl(&[
        "network",
        "create",
        "n2",
        "--type",
        "isolated",
        "--subnet",
        "10.80.0.0/16",
    ]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("overlaps network \"n1\""), "{err}");
    let (code, out, _) = ctl(&["-o", "json", "network", "list"]);
    assert_eq!(code, Some(0));
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["items"].as_array().map(Vec::len), Some(1), "{v:#}");
    let (code, out, err) = ctl(&["network", "delete", "n1"]);
    assert_eq!(
        (code, out.as_str()),
        (Some(0), "network n1 deleted\n"),
        "{err}"
    );
    assert!(ns.bridges().is_empty());
}

/// VLAN tags on a bridged network: two guests on VLAN 10 hear each other, the guest on
/// VLAN 20 hears neither; a VLAN on a bridge without VLAN filtering, or on a nat network,
/// is refused.
#[test]
fn vlan_tagged_guests_see_only_their_vlan() {
    petrel_tests::require_kvm!();
    let Some(ns) = netns_or_skip("vlan") else {
        return;
    };
    ns.run(&["ip", "link", "add", "br-v", "type", "bridge"])
        .unwrap();
    ns.run(&["ip", "link", "set", "br-v", "up"]).unwrap();
    let d = Petreld::in_netns("net-vlan", &ns.name);
    let lan = json!({"name": "lan", "type": "bridged", "bridge": "br-v"});
    d.ok(Method::Post, "/v1/networks", Some(&lan), 201);
    d.ok(
        Method::Post,
        "/v1/networks",
        Some(&nat("n1", "10.56.0.0/24")),
        201,
    );
    let vm = |name: &str, net: Value| {
        let mut config = petreld_support::guest_config("action=virtio-net net-peer");
        config["platform"] = json!({"virtio_mmio_cmdline": true});
        json!({"name": name, "net": [net], "config": config})
    };
    let e = error_of(
        &d,
        Method::Post,
        "/v1/vms",
        &vm("x", json!({"network": "lan", "vlan": 10})),
        422,
    );
    assert!(e.contains("VLAN filtering off"), "{e}");
    let e = error_of(
        &d,
        Method::Post,
        "/v1/vms",
        &vm("x", json!({"network": "n1", "vlan": 10})),
        400,
    );
    assert!(e.contains("bridged networks"), "{e}");
    let e = error_of(
        &d,
        Method::Post,
        "/v1/vms",
        &vm("x", json!({"network": "lan", "vlan": 5000})),
        400,
    );
    assert!(e.contains("1 to 4094"), "{e}");
    let filtering = ["ip", "link", "set", "dev", "br-v", "type", "bridge"];
    if let Err(e) = ns.run(&[&filtering[..], &["vlan_filtering", "1"]].concat()) {
        petrel_tests::skip(format!(
            "the kernel has no bridge VLAN filtering (CONFIG_BRIDGE_VLAN_FILTERING): {e}"
        ));
        return;
    }

    let mac = |v: &Value| v["net"][0]["mac"].as_str().unwrap().to_string();
    let lone = d.ok(
        Method::Post,
        "/v1/vms",
        Some(&vm("v20", json!({"network": "lan", "vlan": 20}))),
        201,
    );
    let a = d.ok(
        Method::Post,
        "/v1/vms",
        Some(&vm("v10a", json!({"network": "lan", "vlan": 10}))),
        201,
    );
    let b = d.ok(
        Method::Post,
        "/v1/vms",
        Some(&vm("v10b", json!({"network": "lan", "vlan": 10}))),
        201,
    );
    assert_eq!(lone["net"][0]["vlan"], 20, "{lone:#}");
    for name in ["v10a", "v10b", "v20"] {
        d.wait_vm(name, "powered off", |v| v["state"] == "stopped");
    }
    let (ca, cb, c20) = (console(&d, "v10a"), console(&d, "v10b"), console(&d, "v20"));
    assert!(
        ca.contains(&format!("VIRTIO: net peer {} ", mac(&b))),
        "{ca}"
    );
    assert!(
        cb.contains(&format!("VIRTIO: net peer {} ", mac(&a))),
        "{cb}"
    );
    assert!(
        c20.contains("VIRTIO: error net peer timeout"),
        "{c20}\n{}",
        mac(&lone)
    );
}

/// An interface's rate limits (QoS) reach petrel with its tap: `vm.info` of the VM's petrel
/// shows them on the interface; zero-sized buckets are refused.
#[test]
fn interface_rate_limits_reach_petrel() {
    petrel_tests::require_kvm!();
    let Some(ns) = netns_or_skip("qos") else {
        return;
    };
    let d = Petreld::in_netns("net-qos", &ns.name);
    d.ok(
        Method::Post,
        "/v1/networks",
        Some(&nat("n1", "10.57.0.0/24")),
        201,
    );
    let mut config = petreld_support::guest_config("action=halt");
    config["platform"] = json!({"virtio_mmio_cmdline": true});
    let limits = json!({"bandwidth": {"size": 125000, "refill_time": 100}});
    let bad = json!({"name": "bad", "net": [{"network": "n1",
        "rate_limiter": {"ops": {"size": 0, "refill_time": 100}}}], "config": config});
    let e = error_of(&d, Method::Post, "/v1/vms", &bad, 400);
    assert!(e.contains("net[0].rate_limiter.ops"), "{e}");
    let vm = d.ok(
        Method::Post,
        "/v1/vms",
        Some(
            &json!({"name": "qos", "net": [{"network": "n1", "rate_limiter": limits}],
                      "config": config}),
        ),
        201,
    );
    let socket = vm["api_socket"].as_str().unwrap().to_string();
    let info: Value = petrel_http::Client::new(&socket)
        .get("/api/v1/vm.info")
        .unwrap()
        .json_body()
        .unwrap();
    let net = &info["config"]["net"][0];
    assert_eq!(
        net["rate_limiter_config"],
        json!({"bandwidth": {"size": 125000, "one_time_burst": 0, "refill_time": 100}}),
        "{info:#}"
    );
    assert_eq!(net["mac"], vm["net"][0]["mac"], "{info:#}");
    d.ok(Method::Post, "/v1/vms/qos/kill", None, 200);
}
