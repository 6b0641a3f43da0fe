//! petreld's networks (`/v1/networks`, issue 18) against the real tools, each test in its own
//! network namespace (petreld runs there through `ip netns exec`; the host's networking is
//! untouched): bad input refused with the state unchanged, a network in use kept, DHCP
//! leases and fixed addresses from petreld's dnsmasq (busybox `udhcpc` on a veth joined to
//! the bridge), dnsmasq restarted when it dies with its leases kept, re-adoption and cleanup
//! after `kill -9` of petreld, and test guests exchanging frames on a nat network while an
//! isolated network's guest hears nothing and is heard nowhere else.
//!
//! Needs root, iproute2, nftables, dnsmasq-base and busybox (skipped, visibly, otherwise),
//! and the binaries built first (`cargo build -p petreld -p vmm`).

mod petreld_support;

use std::time::{Duration, Instant};

use petrel_http::Method;
use petreld_support::netns::{console, error_of, nat, netns_or_skip, Netns};
use petreld_support::Petreld;
use serde_json::{json, Value};

/// Every live dnsmasq started for a network under `d`'s state directory.
fn dnsmasqs(d: &Petreld) -> Vec<(u32, String)> {
    let want = d.dir.join("state/networks").display().to_string();
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        let first = cmd.split(' ').next().unwrap_or_default();
        if first.ends_with("dnsmasq")
            && cmd.contains(&want)
            && petreld_support::pid_alive(u64::from(pid))
        {
            out.push((pid, cmd));
        }
    }
    out
}

fn wait_until(what: &str, d: &Petreld, mut pred: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !pred() {
        assert!(Instant::now() < deadline, "never {what}\n{}", d.log());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Bad input is refused with a clear 4xx and nothing changes; a network in use cannot be
/// deleted; a delete removes the bridge, the table, the dnsmasq and the files.
#[test]
fn network_api_refuses_bad_input_and_keeps_networks_in_use() {
    let Some(ns) = netns_or_skip("api") else {
        return;
    };
    let d = Petreld::in_netns("net-api", &ns.name);
    let n1 = d.ok(
        Method::Post,
        "/v1/networks",
        Some(&nat("n1", "10.50.0.0/24")),
        201,
    );
    assert_eq!(n1["bridge"], "pb-n1", "{n1:#}");
    assert_eq!(n1["gateway"], "10.50.0.1", "{n1:#}");
    let addrs = ns
        .run(&["ip", "-4", "addr", "show", "dev", "pb-n1"])
        .unwrap();
    assert!(addrs.contains("10.50.0.1/24"), "{addrs}");
    assert_eq!(ns.tables(), ["petrel-n1"]);
    let table = ns
        .run(&["nft", "list", "table", "inet", "petrel-n1"])
        .unwrap();
    assert!(table.contains("masquerade"), "{table}");
    let running = dnsmasqs(&d);
    assert_eq!(running.len(), 1, "{running:?}");
    // dnsmasq must see SIGTERM: petreld's blocked signals are not passed on to it.
    let status = std::fs::read_to_string(format!("/proc/{}/status", running[0].0)).unwrap();
    assert!(
        status.contains("SigBlk:\t0000000000000000"),
        "dnsmasq started with signals blocked:\n{status}"
    );

    let cases: &[(Value, u16, &str)] = &[
        (nat("n2", "10.50.0.0/16"), 409, "overlaps network \"n1\""),
        (nat("n2", "10.50.0.128/25"), 409, "overlaps"),
        (nat("n2", "10.60.0.0/33"), 400, "subnet"),
        (nat("n2", "10.60.0.1/24"), 400, "host bits"),
        (nat("n2", "ten/8"), 400, "subnet"),
        (nat("a/b", "10.60.0.0/24"), 400, "'/'"),
        (nat("..", "10.60.0.0/24"), 400, "'..'"),
        (
            nat("abcdefghijklm", "10.60.0.0/24"),
            400,
            "15-byte interface name",
        ),
        (nat("n1", "10.60.0.0/24"), 409, "already in use"),
        (json!({"name": "n2", "type": "nat"}), 400, "subnet"),
        (
            json!({"name": "n2", "type": "routed", "subnet": "10.60.0.0/24"}),
            400,
            "unknown variant `routed`",
        ),
        (
            json!({"name": "lan", "type": "bridged", "bridge": "br-none"}),
            422,
            "br-none",
        ),
    ];
    for (body, status, want) in cases {
        let e = error_of(&d, Method::Post, "/v1/networks", body, *status);
        assert!(e.contains(want), "{body}: {e:?} lacks {want:?}");
    }
    // State unchanged: one network, one bridge, one table, one dnsmasq.
    let list = d.ok(Method::Get, "/v1/networks", None, 200);
    assert_eq!(list["items"].as_array().unwrap().len(), 1, "{list:#}");
    assert_eq!(ns.bridges(), ["pb-n1"]);
    assert_eq!(ns.tables(), ["petrel-n1"]);
    assert_eq!(dnsmasqs(&d).len(), 1);

    // A host bridge for a bridged network.
    ns.run(&["ip", "link", "add", "br-lan", "type", "bridge"])
        .unwrap();
    d.ok(
        Method::Post,
        "/v1/networks",
        Some(&json!({"name": "lan", "type": "bridged", "bridge": "br-lan"})),
        201,
    );

    // VM interfaces: an unknown network, an address outside the subnet, the gateway.
    let vm = |net: Value| {
        json!({"name": "web", "start": false, "net": [net],
               "config": petreld_support::guest_config("action=halt")})
    };
    for (net, status, want) in [
        (json!({"network": "nope"}), 422, "no network \"nope\""),
        (
            json!({"network": "n1", "ip": "10.9.0.5"}),
            400,
            "10.50.0.0/24",
        ),
        (json!({"network": "n1", "ip": "10.50.0.1"}), 400, "gateway"),
        (json!({"network": "n1", "ip": "bogus"}), 400, "not an IPv4"),
        (
            json!({"network": "n1", "bridge": "br-lan"}),
            400,
            "not both",
        ),
    ] {
        let e = error_of(&d, Method::Post, "/v1/vms", &vm(net.clone()), status);
        assert!(e.contains(want), "{net}: {e:?} lacks {want:?}");
    }
    assert_eq!(d.list("")["items"].as_array().unwrap().len(), 0);
    let web = d.ok(
        Method::Post,
        "/v1/vms",
        Some(&vm(json!({"network": "n1", "ip": "10.50.0.9"}))),
        201,
    );
    let mac = web["net"][0]["mac"].as_str().unwrap().to_string();
    assert_eq!(web["net"][0]["bridge"], "pb-n1", "{web:#}");
    // The same address or MAC again on the network: 409 naming the VM.
    let mut again = vm(json!({"network": "n1", "ip": "10.50.0.9"}));
    again["name"] = json!("web2");
    let e = error_of(&d, Method::Post, "/v1/vms", &again, 409);
    assert!(e.contains("web"), "{e}");
    again["net"] = json!([{"network": "n1", "mac": mac}]);
    let e = error_of(&d, Method::Post, "/v1/vms", &again, 409);
    assert!(e.contains("web"), "{e}");
    let conf = std::fs::read_to_string(d.dir.join("state/networks/n1/dnsmasq.conf")).unwrap();
    assert!(
        conf.contains(&format!("dhcp-host={mac},10.50.0.9,web")),
        "{conf}"
    );

    // In use: 409 naming the VM, nothing removed.
    let e = error_of(&d, Method::Delete, "/v1/networks/n1", &json!({}), 409);
    assert!(e.contains("web"), "{e}");
    assert_eq!(ns.bridges().iter().filter(|b| *b == "pb-n1").count(), 1);
    d.ok(Method::Delete, "/v1/vms/web", None, 204);
    d.ok(Method::Delete, "/v1/networks/n1", None, 204);
    d.ok(Method::Get, "/v1/networks/n1", None, 404);
    d.ok(Method::Delete, "/v1/networks/lan", None, 204);
    assert_eq!(
        ns.bridges(),
        ["br-lan"],
        "a bridged network leaves its bridge"
    );
    assert!(ns.tables().is_empty(), "{:?}", ns.tables());
    wait_until("dnsmasq gone", &d, || dnsmasqs(&d).is_empty());
    assert!(!d.dir.join("state/networks/n1").exists());
}

fn leases(d: &Petreld, net: &str) -> Vec<(String, String)> {
    let n = d.ok(Method::Get, &format!("/v1/networks/{net}"), None, 200);
    n["leases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["mac"].as_str().unwrap().to_string(),
                l["ip"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// A real DHCP client on a veth joined to the bridge gets a lease from petreld's dnsmasq,
/// and an interface's fixed address is what its MAC gets; dnsmasq killed is restarted by
/// petreld with its leases file kept, and serves the same addresses again.
#[test]
fn dhcp_leases_and_fixed_addresses_survive_dnsmasq_dying() {
    let Some(ns) = netns_or_skip("dhcp") else {
        return;
    };
    let d = Petreld::in_netns("net-dhcp", &ns.name);
    d.ok(
        Method::Post,
        "/v1/networks",
        Some(&nat("n1", "10.51.0.0/24")),
        201,
    );
    let fixed_mac = "02:aa:00:00:00:01";
    d.ok(
        Method::Post,
        "/v1/vms",
        Some(&json!({"name": "db", "start": false,
                      "net": [{"network": "n1", "mac": fixed_mac, "ip": "10.51.0.50"}],
                      "config": petreld_support::guest_config("action=halt")})),
        201,
    );
    ns.veth_on("pb-n1", "vb0", "vc0", fixed_mac).unwrap();
    ns.veth_on("pb-n1", "vb1", "vc1", "02:bb:00:00:00:02")
        .unwrap();
    let fixed = ns.dhcp("vc0");
    assert_eq!(fixed.as_deref(), Some("10.51.0.50"), "{}", d.log());
    let dynamic = ns
        .dhcp("vc1")
        .unwrap_or_else(|| panic!("no lease\n{}", d.log()));
    let octet: u8 = dynamic.rsplit('.').next().unwrap().parse().unwrap();
    assert!(dynamic.starts_with("10.51.0.") && octet >= 2, "{dynamic}");
    let before = leases(&d, "n1");
    assert!(
        before.contains(&(fixed_mac.into(), "10.51.0.50".into())),
        "{before:?}"
    );
    assert!(
        before.contains(&("02:bb:00:00:00:02".into(), dynamic.clone())),
        "{before:?}"
    );

    // DNS: the VM's name resolves to its fixed address through the network's dnsmasq.
    let dns = ns
        .run(&["busybox", "nslookup", "db", "10.51.0.1"])
        .unwrap_or_else(|e| e);
    assert!(dns.contains("10.51.0.50"), "{dns}");
    let metrics = String::from_utf8_lossy(&d.call(Method::Get, "/metrics", None).body).into_owned();
    assert!(
        metrics.contains("petreld_network_leases{network=\"n1\",type=\"nat\"} 2")
            && metrics.contains("petreld_network_dnsmasq_up{network=\"n1\",type=\"nat\"} 1"),
        "{metrics}"
    );

    // dnsmasq dies: petreld starts another, with the same leases.
    let old = d.ok(Method::Get, "/v1/networks/n1", None, 200)["dnsmasq"]["pid"]
        .as_u64()
        .unwrap();
    // SAFETY: kill has no memory effects.
    unsafe { libc::kill(old as i32, libc::SIGKILL) };
    let mut net = Value::Null;
    wait_until("dnsmasq restarted", &d, || {
        net = d.ok(Method::Get, "/v1/networks/n1", None, 200);
        net["dnsmasq"]["restarts"] == 1 && net["dnsmasq"]["running"] == true
    });
    assert_ne!(net["dnsmasq"]["pid"].as_u64(), Some(old), "{net:#}");
    assert_eq!(leases(&d, "n1"), before, "leases kept across the restart");
    assert_eq!(dnsmasqs(&d).len(), 1, "{:?}", dnsmasqs(&d));
    assert_eq!(ns.dhcp("vc1").as_deref(), Some(dynamic.as_str()));
    assert_eq!(ns.dhcp("vc0").as_deref(), Some("10.51.0.50"));
    assert!(
        d.log().contains("dnsmasq (pid") && d.log().contains("died; restarting"),
        "{}",
        d.log()
    );
}

/// After `kill -9` of petreld: its networks' dnsmasq processes are adopted (same pid, not a
/// second one), a bridge someone removed is made again, and what no stored network owns —
/// a bridge, a table and a dnsmasq left by a create cut short — is removed. Foreign
/// interfaces and tables are left alone.
#[test]
fn after_petreld_crash_networks_are_adopted_and_leftovers_removed() {
    let Some(ns) = netns_or_skip("crash") else {
        return;
    };
    let mut d = Petreld::in_netns("net-crash", &ns.name);
    d.ok(
        Method::Post,
        "/v1/networks",
        Some(&nat("n1", "10.52.0.0/24")),
        201,
    );
    let iso = json!({"name": "n2", "type": "isolated", "subnet": "10.53.0.0/24"});
    d.ok(Method::Post, "/v1/networks", Some(&iso), 201);
    let pid_of = |d: &Petreld, n: &str| {
        d.ok(Method::Get, &format!("/v1/networks/{n}"), None, 200)["dnsmasq"]["pid"].as_u64()
    };
    let p1 = pid_of(&d, "n1");
    d.kill9();
    // What a create cut short leaves: a bridge with petreld's alias, its table, a dnsmasq.
    let state = d.dir.join("state");
    let owner = state.display().to_string();
    ns.run(&["ip", "link", "add", "pb-ghost", "type", "bridge"])
        .unwrap();
    ns.run(&[
        "ip",
        "link",
        "set",
        "pb-ghost",
        "alias",
        &format!("petreld:{owner}"),
    ])
    .unwrap();
    ns.run(&["ip", "addr", "add", "10.54.0.1/24", "dev", "pb-ghost"])
        .unwrap();
    ns.run(&["ip", "link", "set", "pb-ghost", "up"]).unwrap();
    let table = format!(
        "table inet petrel-ghost {{\n comment \"petreld {owner}\"\n chain c {{\n type filter \
         hook forward priority 0;\n }}\n}}\n"
    );
    std::fs::write(d.dir.join("ghost.nft"), &table).unwrap();
    ns.run(&["nft", "-f", &d.dir.join("ghost.nft").display().to_string()])
        .unwrap();
    let ghost_dir = state.join("networks/ghost");
    std::fs::create_dir_all(&ghost_dir).unwrap();
    let conf = ghost_dir.join("dnsmasq.conf");
    std::fs::write(
        &conf,
        format!(
            "pid-file={}\ninterface=pb-ghost\nbind-dynamic\nexcept-interface=lo\n\
             dhcp-range=10.54.0.2,10.54.0.9,1h\n",
            ghost_dir.join("dnsmasq.pid").display()
        ),
    )
    .unwrap();
    ns.run(&["dnsmasq", &format!("--conf-file={}", conf.display())])
        .unwrap();
    // Not petreld's: a pb- bridge with another alias and another table.
    ns.run(&["ip", "link", "add", "pb-other", "type", "bridge"])
        .unwrap();
    ns.run(&["ip", "link", "set", "pb-other", "alias", "someone else"])
        .unwrap();
    ns.run(&["nft", "add", "table", "inet", "petrel-theirs"])
        .unwrap();
    // And n2 is left as a create cut short just after its record: no bridge, no table, no
    // dnsmasq.
    ns.run(&["ip", "link", "del", "pb-n2"]).unwrap();
    ns.run(&["nft", "delete", "table", "inet", "petrel-n2"])
        .unwrap();
    let n2 = dnsmasqs(&d)
        .into_iter()
        .find(|(_, c)| c.contains("/n2/"))
        .unwrap();
    // SAFETY: kill has no memory effects.
    unsafe { libc::kill(n2.0 as i32, libc::SIGKILL) };
    // The killed process stays listed until it is reaped (by init: dnsmasq daemonized).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while dnsmasqs(&d).len() != 2 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(dnsmasqs(&d).len(), 2, "{:?}", dnsmasqs(&d));

    d.start();
    assert_eq!(pid_of(&d, "n1"), p1, "n1's dnsmasq adopted\n{}", d.log());
    let mut bridges = ns.bridges();
    bridges.sort();
    assert_eq!(bridges, ["pb-n1", "pb-n2", "pb-other"], "{}", d.log());
    let addrs = ns
        .run(&["ip", "-4", "addr", "show", "dev", "pb-n2"])
        .unwrap();
    assert!(addrs.contains("10.53.0.1/24"), "{addrs}");
    let mut tables = ns.tables();
    tables.sort();
    assert_eq!(tables, ["petrel-n1", "petrel-n2", "petrel-theirs"]);
    let running = dnsmasqs(&d);
    assert_eq!(running.len(), 2, "one dnsmasq per network: {running:?}");
    assert!(running.iter().any(|(_, c)| c.contains("/n1/")));
    assert!(running.iter().any(|(_, c)| c.contains("/n2/")));
    assert!(!ghost_dir.exists());
    // n2 serves DHCP on its new bridge.
    ns.veth_on("pb-n2", "vb0", "vc0", "02:cc:00:00:00:03")
        .unwrap();
    let lease = ns
        .dhcp("vc0")
        .unwrap_or_else(|| panic!("no lease\n{}", d.log()));
    assert!(lease.starts_with("10.53.0."), "{lease}");
    // Once more: nothing is duplicated by a second restart.
    d.kill9();
    d.start();
    assert_eq!(pid_of(&d, "n1"), p1);
    assert_eq!(dnsmasqs(&d).len(), 2);
    assert_eq!(ns.bridges().len(), 3);
}

/// A VM running the test guest's `net-peer` mode on network `net`.
fn peer_vm(d: &Petreld, name: &str, net: &str) -> String {
    let mut config = petreld_support::guest_config("action=virtio-net net-peer");
    config["platform"] = json!({"virtio_mmio_cmdline": true});
    let vm = d.ok(
        Method::Post,
        "/v1/vms",
        Some(&json!({"name": name, "net": [{"network": net}], "config": config})),
        201,
    );
    vm["net"][0]["mac"].as_str().unwrap().to_string()
}

/// The source MACs of the test-ethertype frames `sock` saw, until it is quiet for a second.
fn sources(sock: &petrel_tests::host_net::PacketSocket) -> Vec<String> {
    let mut out = Vec::new();
    while let Ok(Some(f)) = sock.recv(Duration::from_secs(1)) {
        if let Some(src) = f.get(6..12) {
            let mac: Vec<String> = src.iter().map(|b| format!("{b:02x}")).collect();
            out.push(mac.join(":"));
        }
    }
    out
}

/// Two test guests on a nat network hear each other's frames; a guest on an isolated
/// network hears neither, and its frames reach its own bridge only (not the nat network's
/// bridge, not the uplink).
#[test]
fn guests_on_a_network_exchange_frames_and_networks_are_apart() {
    petrel_tests::require_kvm!();
    let Some(ns) = netns_or_skip("frames") else {
        return;
    };
    // The uplink: a veth pair (the kernel here has no dummy interfaces).
    ns.run(&[
        "ip", "link", "add", "up0", "type", "veth", "peer", "name", "up1",
    ])
    .unwrap();
    ns.run(&["ip", "link", "set", "up0", "up"]).unwrap();
    ns.run(&["ip", "link", "set", "up1", "up"]).unwrap();
    let d = Petreld::in_netns("net-frames", &ns.name);
    d.ok(
        Method::Post,
        "/v1/networks",
        Some(&nat("a", "10.61.0.0/24")),
        201,
    );
    let iso = json!({"name": "b", "type": "isolated", "subnet": "10.62.0.0/24"});
    d.ok(Method::Post, "/v1/networks", Some(&iso), 201);
    let on_a = ns.packet_socket("pb-a").unwrap();
    let on_b = ns.packet_socket("pb-b").unwrap();
    let uplink = ns.packet_socket("up0").unwrap();

    let b1 = peer_vm(&d, "b1", "b");
    let a1 = peer_vm(&d, "a1", "a");
    let a2 = peer_vm(&d, "a2", "a");
    for vm in ["a1", "a2", "b1"] {
        d.wait_vm(vm, "powered off", |v| v["state"] == "stopped");
    }
    let (c1, c2, cb) = (console(&d, "a1"), console(&d, "a2"), console(&d, "b1"));
    assert!(
        c1.contains(&format!("VIRTIO: net peer {a2} PETREL-NET-TX 1")),
        "{c1}"
    );
    assert!(
        c2.contains(&format!("VIRTIO: net peer {a1} PETREL-NET-TX 1")),
        "{c2}"
    );
    assert!(cb.contains("VIRTIO: error net peer timeout"), "{cb}");
    assert!(!cb.contains("VIRTIO: net peer "), "{cb}");

    let (seen_a, seen_b, seen_up) = (sources(&on_a), sources(&on_b), sources(&uplink));
    assert!(
        seen_b.contains(&b1),
        "b1's frames on its bridge: {seen_b:?}"
    );
    assert!(seen_a.contains(&a1) && seen_a.contains(&a2), "{seen_a:?}");
    assert!(
        !seen_a.contains(&b1),
        "b1's frame left its network: {seen_a:?}"
    );
    assert!(!seen_b.contains(&a1) && !seen_b.contains(&a2), "{seen_b:?}");
    assert!(seen_up.is_empty(), "frames on the uplink: {seen_up:?}");
}

/// A client namespace on `bridge` (a veth into it) configured by DHCP through `script`.
fn client(ns: &Netns, tag: &str, bridge: &str, script: &str) -> Netns {
    let c = Netns::new(tag).unwrap();
    let (host, guest) = (format!("{tag}0"), format!("{tag}1"));
    ns.run(&[
        "ip", "link", "add", &host, "type", "veth", "peer", "name", &guest, "netns", &c.name,
    ])
    .unwrap();
    ns.run(&["ip", "link", "set", &host, "master", bridge, "up"])
        .unwrap();
    c.run(&["ip", "link", "set", &guest, "up"]).unwrap();
    c.run(&[
        "busybox", "udhcpc", "-i", &guest, "-n", "-q", "-f", "-t", "6", "-T", "1", "-s", script,
    ])
    .unwrap();
    c
}

fn pings(from: &Netns, to: &str) -> bool {
    from.run(&["busybox", "ping", "-c", "1", "-W", "2", to])
        .is_ok()
}

fn address(c: &Netns) -> String {
    let text = c
        .run(&["ip", "-j", "-4", "addr", "show", "scope", "global"])
        .unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    v[0]["addr_info"][0]["local"].as_str().unwrap().to_string()
}

/// Real IP traffic through petreld's nftables tables, from namespaces configured by DHCP:
/// a nat network reaches the outside (masqueraded: the outside has no route back to the
/// subnet); an isolated one gets no router and is not forwarded even with a route; two
/// networks cannot reach each other though the host routes between them.
#[test]
fn nat_goes_out_masqueraded_isolated_does_not_and_networks_are_apart() {
    let Some(ns) = netns_or_skip("route") else {
        return;
    };
    let world = Netns::new("world").unwrap();
    ns.run(&[
        "ip",
        "link",
        "add",
        "up0",
        "type",
        "veth",
        "peer",
        "name",
        "up1",
        "netns",
        &world.name,
    ])
    .unwrap();
    ns.run(&["ip", "addr", "add", "198.51.100.1/24", "dev", "up0"])
        .unwrap();
    ns.run(&["ip", "link", "set", "up0", "up"]).unwrap();
    ns.run(&["ip", "route", "add", "default", "via", "198.51.100.2"])
        .unwrap();
    world
        .run(&["ip", "addr", "add", "198.51.100.2/24", "dev", "up1"])
        .unwrap();
    world.run(&["ip", "link", "set", "up1", "up"]).unwrap();

    let d = Petreld::in_netns("net-route", &ns.name);
    d.ok(
        Method::Post,
        "/v1/networks",
        Some(&nat("a", "10.71.0.0/24")),
        201,
    );
    d.ok(
        Method::Post,
        "/v1/networks",
        Some(&nat("c", "10.73.0.0/24")),
        201,
    );
    let iso = json!({"name": "b", "type": "isolated", "subnet": "10.72.0.0/24"});
    d.ok(Method::Post, "/v1/networks", Some(&iso), 201);
    // The same host route the world would need, refused for a network: it overlaps.
    let e = error_of(
        &d,
        Method::Post,
        "/v1/networks",
        &nat("w", "198.51.100.0/25"),
        409,
    );
    assert!(e.contains("host's route"), "{e}");

    let script = d.dir.join("dhcp.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\ncase \"$1\" in bound|renew) ip addr add \"$ip/$mask\" dev \"$interface\"\n\
         [ -n \"$router\" ] && ip route add default via \"${router%% *}\";; esac\nexit 0\n",
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let script = script.display().to_string();
    let ca = client(&ns, "ca", "pb-a", &script);
    let cb = client(&ns, "cb", "pb-b", &script);
    let cc = client(&ns, "cc", "pb-c", &script);
    let (a, c) = (address(&ca), address(&cc));
    assert!(
        a.starts_with("10.71.0.") && c.starts_with("10.73.0."),
        "{a} {c}"
    );

    assert!(pings(&ca, "10.71.0.1"), "nat client to its gateway");
    assert!(
        pings(&ca, "198.51.100.2"),
        "nat out, masqueraded\n{}",
        d.log()
    );
    assert!(pings(&cc, "198.51.100.2"), "second nat network out");
    let routes = cb.run(&["ip", "route"]).unwrap();
    assert!(
        !routes.contains("default"),
        "isolated got a router: {routes}"
    );
    assert!(pings(&cb, "10.72.0.1"), "isolated client to the host");
    cb.run(&["ip", "route", "add", "default", "via", "10.72.0.1"])
        .unwrap();
    assert!(!pings(&cb, "198.51.100.2"), "isolated forwarded out");
    assert!(!pings(&ca, &c), "nat network a reached network c");
    assert!(!pings(&cc, &a), "nat network c reached network a");
    // Without petreld's tables the host would route between them: its rules do the work.
    d.ok(Method::Delete, "/v1/networks/b", None, 204);
    ns.run(&["nft", "delete", "table", "inet", "petrel-a"])
        .unwrap();
    ns.run(&["nft", "delete", "table", "inet", "petrel-c"])
        .unwrap();
    assert!(pings(&ca, &c), "control: routed once the tables are gone");
}

/// A running VM's tap joins its network's bridge again when petreld, restarted after
/// `kill -9`, has to make the bridge again; the VM keeps running.
#[test]
fn a_running_vms_tap_rejoins_a_remade_bridge() {
    petrel_tests::require_kvm!();
    let Some(ns) = netns_or_skip("rejoin") else {
        return;
    };
    let mut d = Petreld::in_netns("net-rejoin", &ns.name);
    d.ok(
        Method::Post,
        "/v1/networks",
        Some(&nat("n1", "10.55.0.0/24")),
        201,
    );
    let mut config = petreld_support::guest_config("action=halt");
    config["platform"] = json!({"virtio_mmio_cmdline": true});
    let vm = d.ok(
        Method::Post,
        "/v1/vms",
        Some(&json!({"name": "idle", "net": [{"network": "n1"}], "config": config})),
        201,
    );
    let tap = vm["net"][0]["tap"].as_str().unwrap().to_string();
    let master = |ns: &Netns| {
        let text = ns.run(&["ip", "-j", "link", "show", "dev", &tap]).unwrap();
        let v: Value = serde_json::from_str(&text).unwrap();
        v[0]["master"].as_str().map(String::from)
    };
    assert_eq!(master(&ns).as_deref(), Some("pb-n1"));
    d.kill9();
    ns.run(&["ip", "link", "del", "pb-n1"]).unwrap();
    assert_eq!(master(&ns), None);
    d.start();
    assert_eq!(master(&ns).as_deref(), Some("pb-n1"), "{}", d.log());
    assert_eq!(d.vm("idle")["state"], "running");
    d.ok(Method::Post, "/v1/vms/idle/kill", None, 200);
}
