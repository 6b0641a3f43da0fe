//! Cloud Hypervisor compatibility of the per-VM API: CH-shaped bodies map to petrel's types,
//! unsupported values and unknown fields are refused naming the field, and the OpenAPI
//! document (docs/api/petrel-vmm.yaml) agrees with the compatibility table and the server's
//! routes.

mod yaml_subset;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use api::compat::{
    disk_config_from_ch, net_config_from_ch, remove_device_from_ch, resize_from_ch,
    vm_config_from_ch, vsock_config_from_ch, Dv, Rule, Schema, SCHEMAS, VM_CONFIG,
};
use api::{
    BalloonConfig, ConfigError, CpusConfig, DiskConfig, ImageType, MemoryConfig, NetConfig,
    PayloadConfig, PlatformConfig, RateLimiterConfig, RngConfig, SerialConfig, SerialMode,
    TokenBucketConfig, VmConfig, VsockConfig,
};
use serde_json::{json, Value};
use yaml_subset::yaml;

/// A VmConfig as Kata's generated client or `ch-remote create` sends it: every optional
/// field present with Cloud Hypervisor's default.
fn ch_full() -> Value {
    json!({
        "cpus": {"boot_vcpus": 2, "max_vcpus": 2, "topology": null, "kvm_hyperv": false,
                 "max_phys_bits": 46, "nested": true, "affinity": null,
                 "features": {"amx": false}, "core_scheduling": "Vm"},
        "memory": {"size": 268435456u64, "mergeable": false, "hotplug_method": "Acpi",
                   "hotplug_size": null, "hotplugged_size": null, "shared": false,
                   "hugepages": false, "hugepage_size": null, "prefault": false,
                   "reserve": false, "zones": null, "thp": true},
        "payload": {"firmware": null, "kernel": "/boot/vmlinux", "cmdline": "console=ttyS0",
                    "initramfs": "/boot/initrd", "igvm": null, "host_data": null},
        "rate_limit_groups": null,
        "disks": [{"path": "/img/root.raw", "readonly": true, "direct": false, "iommu": false,
                   "num_queues": 1, "queue_size": 128, "vhost_user": false,
                   "vhost_socket": null, "rate_limit_group": null,
                   "rate_limiter_config": {"bandwidth": {"size": 1000, "one_time_burst": null,
                                                         "refill_time": 10}, "ops": null},
                   "id": "root", "disable_io_uring": false, "disable_aio": false,
                   "pci_segment": 0, "serial": null, "queue_affinity": null,
                   "backing_files": false, "sparse": true, "image_type": "Raw",
                   "lock_granularity": "ByteRange"}],
        "net": [{"tap": null, "ip": "192.168.249.1", "mask": "255.255.255.0",
                 "mac": "52:54:00:12:34:56", "host_mac": null, "mtu": null, "iommu": false,
                 "num_queues": 2, "queue_size": 256, "vhost_user": false, "vhost_socket": null,
                 "vhost_mode": "Client", "id": "eth0", "fds": [-1], "rate_limiter_config": null,
                 "pci_segment": 0, "offload_tso": true, "offload_ufo": true,
                 "offload_csum": true}],
        "rng": {"src": "/dev/urandom", "iommu": false},
        "balloon": {"size": 0, "deflate_on_oom": true, "free_page_reporting": false},
        "fs": null, "pmem": null,
        "serial": {"file": null, "mode": "Tty", "iommu": false, "socket": null},
        "console": {"file": null, "mode": "Off", "iommu": false, "socket": null},
        "debug_console": {"file": null, "mode": "Off", "iobase": 233},
        "devices": null, "user_devices": null, "vdpa": null,
        "vsock": {"cid": 3, "socket": "/run/v.sock", "iommu": false, "id": "vsock0",
                  "pci_segment": 0},
        "pvpanic": false, "iommu": false, "numa": null, "watchdog": false,
        "pci_segments": null,
        "platform": {"num_pci_segments": 1, "iommu_segments": null,
                     "iommu_address_width_bits": 64, "serial_number": null, "uuid": null,
                     "oem_strings": null, "tdx": false, "sev_snp": false},
        "tpm": null, "landlock_enable": false, "landlock_rules": null
    })
}

fn parse(v: &Value) -> Result<VmConfig, ConfigError> {
    vm_config_from_ch(v.to_string().as_bytes())
}

/// The value at `path` (`a.b[0].c`), created as objects when missing.
fn at<'a>(mut v: &'a mut Value, path: &str) -> &'a mut Value {
    for seg in path.split('.') {
        let (name, index) = match seg.split_once('[') {
            Some((n, i)) => (n, Some(i.trim_end_matches(']').parse::<usize>().unwrap())),
            None => (seg, None),
        };
        if !v.is_object() {
            *v = json!({});
        }
        v = v
            .as_object_mut()
            .unwrap()
            .entry(name)
            .or_insert(Value::Null);
        if let Some(i) = index {
            v = &mut v.as_array_mut().unwrap()[i];
        }
    }
    v
}

fn with(path: &str, value: Value) -> Value {
    let mut v = ch_full();
    *at(&mut v, path) = value;
    v
}

#[test]
fn full_ch_config_maps_to_petrel() {
    let cfg = parse(&ch_full()).unwrap();
    let want = VmConfig {
        cpus: CpusConfig {
            boot_vcpus: 2,
            max_vcpus: Some(2),
            ..CpusConfig::default()
        },
        memory: MemoryConfig {
            size: 256 << 20,
            ..MemoryConfig::default()
        },
        payload: PayloadConfig {
            kernel: "/boot/vmlinux".into(),
            initramfs: Some("/boot/initrd".into()),
            cmdline: Some("console=ttyS0".into()),
        },
        serial: SerialConfig {
            mode: SerialMode::Tty,
            file: None,
        },
        disks: Some(vec![DiskConfig {
            path: "/img/root.raw".into(),
            readonly: true,
            direct: false,
            id: Some("root".into()),
            serial: None,
            rate_limiter_config: Some(RateLimiterConfig {
                bandwidth: Some(TokenBucketConfig {
                    size: 1000,
                    one_time_burst: 0,
                    refill_time: 10,
                }),
                ops: None,
            }),
            image_type: Some(ImageType::Raw),
            backing_files: false,
        }]),
        rng: Some(RngConfig::default()),
        net: Some(vec![NetConfig {
            tap: None,
            fds: Some(vec![-1]),
            mac: Some("52:54:00:12:34:56".into()),
            id: Some("eth0".into()),
            rate_limiter_config: None,
            rx_rate_limiter_config: None,
        }]),
        vsock: Some(VsockConfig {
            cid: 3,
            socket: "/run/v.sock".into(),
            id: Some("vsock0".into()),
        }),
        balloon: Some(BalloonConfig {
            size: 0,
            deflate_on_oom: true,
            statistics_polling_interval_s: 0,
        }),
        platform: PlatformConfig::default(),
    };
    assert_eq!(cfg, want);
    cfg.validate().unwrap();
}

#[test]
fn minimal_and_petrel_native_bodies() {
    let cfg = parse(&json!({"payload": {"kernel": "/k"}})).unwrap();
    assert_eq!(cfg, VmConfig::new("/k".into()));
    // petrel's own JSON (what vm.info returns) goes back in unchanged.
    let mut native = parse(&ch_full()).unwrap();
    native.platform.virtio_mmio_cmdline = true;
    native
        .balloon
        .as_mut()
        .unwrap()
        .statistics_polling_interval_s = 5;
    native.serial = SerialConfig {
        mode: SerialMode::File,
        file: Some("/tmp/serial.log".into()),
    };
    let text = serde_json::to_string(&native).unwrap();
    assert_eq!(vm_config_from_ch(text.as_bytes()).unwrap(), native);
    assert_eq!(VmConfig::from_json(&text).unwrap(), native);
}

#[test]
fn unsupported_values_name_the_field() {
    let cases = [
        ("memory.hugepages", json!(true)),
        ("memory.hotplug_method", json!("VirtioMem")),
        ("memory.zones", json!([{"id": "z0", "size": 1048576}])),
        ("cpus.kvm_hyperv", json!(true)),
        ("cpus.max_phys_bits", json!(40)),
        ("cpus.affinity", json!([{"vcpu": 0, "host_cpus": [1]}])),
        ("cpus.features.amx", json!(true)),
        ("payload.firmware", json!("/fw.bin")),
        ("disks[0].num_queues", json!(4)),
        ("disks[0].vhost_user", json!(true)),
        ("net[0].mtu", json!(9000)),
        ("net[0].ip", json!("10.0.0.1")),
        ("net[0].num_queues", json!(4)),
        ("net[0].offload_tso", json!(false)),
        ("rng.iommu", json!(true)),
        ("vsock.iommu", json!(true)),
        ("balloon.free_page_reporting", json!(true)),
        ("serial.socket", json!("/run/serial.sock")),
        ("console.mode", json!("Pty")),
        ("console.file", json!("/tmp/console")),
        ("fs", json!([{"tag": "t", "socket": "/s"}])),
        ("iommu", json!(true)),
        ("watchdog", json!(true)),
        ("platform.uuid", json!("1234")),
        ("tpm", json!({"socket": "/tpm"})),
        ("landlock_enable", json!(true)),
    ];
    for (path, value) in cases {
        let e = parse(&with(path, value.clone())).unwrap_err();
        assert_eq!(e.field, path, "{path} = {value}: {e}");
        assert!(e.message.starts_with("not supported"), "{e}");
    }
    let e = parse(&with("memory.hugepages", json!(true))).unwrap_err();
    assert!(
        e.to_string().starts_with("memory.hugepages: not supported"),
        "{e}"
    );
}

/// A value different from every accepted default.
fn non_default(accepted: &[Dv]) -> Value {
    match accepted.first() {
        Some(Dv::Bool(b)) => json!(!b),
        Some(Dv::U64(n)) => json!(n + 1),
        Some(Dv::Str(_)) => json!("not-a-default"),
        Some(Dv::EmptyList) => json!([1]),
        Some(Dv::Object(_)) => json!("not-an-object"),
        None => json!(1),
    }
}

/// Every `Rule::Default` field reachable from `schema`, with a non-default value.
fn unsupported_paths(schema: &Schema, path: &str, out: &mut Vec<(String, Value)>) {
    for (name, rule) in schema.fields {
        let p = if path.is_empty() {
            name.to_string()
        } else {
            format!("{path}.{name}")
        };
        match rule {
            Rule::Object(s) => unsupported_paths(s, &p, out),
            Rule::List(s) => unsupported_paths(s, &format!("{p}[0]"), out),
            Rule::Default(accepted) => {
                out.push((p.clone(), non_default(accepted)));
                for dv in *accepted {
                    if let Dv::Object(s) = dv {
                        unsupported_paths(s, &p, out);
                    }
                }
            }
            Rule::Petrel | Rule::Renamed(_) | Rule::PciLayout => {}
        }
    }
}

#[test]
fn every_unsupported_field_of_the_table_is_refused_unless_default() {
    let mut cases = Vec::new();
    unsupported_paths(&VM_CONFIG, "", &mut cases);
    assert!(cases.len() > 100, "{}", cases.len());
    let mut base = ch_full();
    *at(&mut base, "disks[0].rate_limiter_config.ops") = json!({"size": 1, "refill_time": 1});
    for (path, value) in cases {
        let mut v = base.clone();
        *at(&mut v, &path) = value.clone();
        let e = parse(&v).unwrap_err();
        assert_eq!(e.field, path, "{path} = {value}: {e}");
        assert!(e.message.starts_with("not supported"), "{e}");
        // null is always the default.
        *at(&mut v, &path) = Value::Null;
        parse(&v).unwrap_or_else(|e| panic!("{path} = null: {e}"));
    }
}

#[test]
fn unknown_fields_name_the_field() {
    for (path, parent) in [
        ("colour", ""),
        ("memory.colour", "memory"),
        ("cpus.features.colour", "cpus.features"),
        ("payload.initrd", "payload"),
        ("disks[0].colour", "disks[0]"),
        (
            "disks[0].rate_limiter_config.bandwidth.colour",
            "disks[0].rate_limiter_config.bandwidth",
        ),
        ("net[0].colour", "net[0]"),
        ("serial.colour", "serial"),
        ("console.colour", "console"),
        ("platform.colour", "platform"),
    ] {
        let e = parse(&with(path, json!(1))).unwrap_err();
        assert_eq!(e.field, path, "{e}");
        let name = path.rsplit('.').next().unwrap().rsplit(']').next().unwrap();
        let want = if parent.is_empty() {
            format!("unknown field '{name}'")
        } else {
            format!("unknown field '{name}' in {parent}")
        };
        assert_eq!(e.message, want);
    }
}

#[test]
fn serial_and_console_modes() {
    for (ch, petrel) in [
        ("Tty", SerialMode::Tty),
        ("Off", SerialMode::Off),
        ("Null", SerialMode::Off),
    ] {
        let cfg = parse(&with("serial", json!({"mode": ch}))).unwrap();
        assert_eq!(cfg.serial.mode, petrel, "{ch}");
    }
    let cfg = parse(&with("serial", json!({"mode": "File", "file": "/tmp/s"}))).unwrap();
    assert_eq!(cfg.serial.mode, SerialMode::File);
    assert_eq!(cfg.serial.file, Some(PathBuf::from("/tmp/s")));
    for mode in ["Pty", "Socket"] {
        let e = parse(&with("serial.mode", json!(mode))).unwrap_err();
        assert_eq!(e.field, "serial.mode");
        assert_eq!(e.message, format!("{mode} is not supported"));
    }
    let e = parse(&with("serial.mode", json!("Loud"))).unwrap_err();
    assert_eq!(e.field, "serial.mode");
    assert!(e.message.contains("not one of"), "{e}");
    assert!(parse(&with("serial.mode", json!(3))).is_err());
    for mode in ["Tty", "Off", "Null"] {
        parse(&with("console", json!({"mode": mode}))).unwrap();
    }
    parse(&with("console", Value::Null)).unwrap();
    for mode in ["Pty", "File", "Socket"] {
        let e = parse(&with("console.mode", json!(mode))).unwrap_err();
        assert_eq!(e.field, "console.mode", "{mode}");
    }
}

#[test]
fn malformed_bodies_and_types() {
    let e = vm_config_from_ch(b"").unwrap_err();
    assert!(e.message.contains("body is required"), "{e}");
    assert!(vm_config_from_ch(b"{\"payload\":").is_err());
    assert!(vm_config_from_ch(b"[1,2]").is_err());
    assert_eq!(vm_config_from_ch(b"{}").unwrap_err().field, "payload");
    let e = parse(&with("memory", json!(5))).unwrap_err();
    assert_eq!(e.field, "memory");
    let e = parse(&with("disks", json!({"path": "/x"}))).unwrap_err();
    assert_eq!(e.field, "disks");
    let e = parse(&with("cpus.boot_vcpus", json!("two"))).unwrap_err();
    assert_eq!(e.field, "cpus.boot_vcpus");
    assert!(e.message.contains("invalid type"), "{e}");
    let e = parse(&with("disks[0].readonly", json!("yes"))).unwrap_err();
    assert_eq!(e.field, "disks[0].readonly");
    let e = parse(&with("payload.kernel", Value::Null)).unwrap_err();
    assert_eq!(e.field, "payload");
    assert!(e.message.contains("kernel"), "{e}");
}

#[test]
fn hotplug_bodies() {
    let d = disk_config_from_ch(
        br#"{"path":"/d.img","readonly":false,"direct":true,"iommu":false,"num_queues":1,
             "queue_size":128,"vhost_user":false,"id":"data","pci_segment":0}"#,
    )
    .unwrap();
    assert_eq!(d.path, PathBuf::from("/d.img"));
    assert!(d.direct);
    assert_eq!(d.id.as_deref(), Some("data"));
    let e = disk_config_from_ch(br#"{"path":"/d","num_queues":2}"#).unwrap_err();
    assert_eq!(e.field, "num_queues");
    assert!(e.message.starts_with("not supported"));
    let e = disk_config_from_ch(br#"{"path":"/d","colour":1}"#).unwrap_err();
    assert_eq!(
        (e.field.as_str(), e.message.as_str()),
        ("colour", "unknown field 'colour'")
    );

    let n = net_config_from_ch(
        br#"{"mac":"52:54:00:aa:bb:cc","num_queues":2,"queue_size":256,"id":"eth1",
             "ip":null,"mask":null,"vhost_mode":"Client","offload_csum":true}"#,
    )
    .unwrap();
    assert_eq!(n.mac.as_deref(), Some("52:54:00:aa:bb:cc"));
    assert_eq!((n.tap.as_ref(), n.fds.as_ref()), (None, None));
    assert_eq!(
        net_config_from_ch(br#"{"fds":[7]}"#).unwrap().fds,
        Some(vec![7])
    );
    let e = net_config_from_ch(br#"{"tap":"t0","vhost_user":true}"#).unwrap_err();
    assert_eq!(e.field, "vhost_user");

    let v =
        vsock_config_from_ch(br#"{"cid":5,"socket":"/v","iommu":false,"pci_segment":0}"#).unwrap();
    assert_eq!((v.cid, v.socket), (5, PathBuf::from("/v")));
    assert!(vsock_config_from_ch(br#"{"cid":5}"#).is_err());
    // PCI segments shape a layout petrel does not have: any number, no effect.
    assert!(vsock_config_from_ch(br#"{"cid":5,"socket":"/v","pci_segment":2}"#).is_ok());
    assert_eq!(
        vsock_config_from_ch(br#"{"cid":5,"socket":"/v","pci_segment":"two"}"#)
            .unwrap_err()
            .field,
        "pci_segment"
    );

    let cfg = parse(&ch_full()).unwrap();
    let r = resize_from_ch(br#"{"desired_balloon":67108864}"#).unwrap();
    assert_eq!(r.balloon_target(&cfg).unwrap(), Some(64 << 20));
    let r = resize_from_ch(br#"{"desired_vcpus":2,"desired_ram":268435456}"#).unwrap();
    assert_eq!(r.balloon_target(&cfg).unwrap(), None);
    let r = resize_from_ch(br#"{"desired_vcpus":4}"#).unwrap();
    assert_eq!(r.balloon_target(&cfg).unwrap_err().field, "desired_vcpus");
    let r = resize_from_ch(br#"{"desired_ram":1073741824}"#).unwrap();
    assert_eq!(r.balloon_target(&cfg).unwrap_err().field, "desired_ram");
    assert_eq!(
        resize_from_ch(br#"{"desired_disk":1}"#).unwrap_err().field,
        "desired_disk"
    );

    assert_eq!(
        remove_device_from_ch(br#"{"id":"root"}"#).unwrap().id,
        "root"
    );
    assert!(remove_device_from_ch(br#"{}"#).is_err());
    assert_eq!(
        remove_device_from_ch(br#"{"id":"a","b":1}"#)
            .unwrap_err()
            .field,
        "b"
    );
}

#[test]
fn table_is_well_formed() {
    for schema in SCHEMAS {
        let names: BTreeSet<&str> = schema.fields.iter().map(|(n, _)| *n).collect();
        assert_eq!(
            names.len(),
            schema.fields.len(),
            "duplicate field in {}",
            schema.name
        );
        for (_, rule) in schema.fields {
            if let Rule::Default(accepted) = rule {
                for dv in *accepted {
                    if let Dv::Object(s) = dv {
                        // A default-only object may hold only default-only fields.
                        assert!(s
                            .fields
                            .iter()
                            .all(|(_, r)| matches!(r, Rule::Default(_) | Rule::PciLayout)));
                    }
                }
            }
        }
    }
}

// ---- The OpenAPI document ----

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn document() -> Value {
    let text = std::fs::read_to_string(workspace().join("docs/api/petrel-vmm.yaml")).unwrap();
    yaml(&text)
}

/// The route table the server, petrelctl and petreld use (`api::request::ROUTES`).
fn server_routes() -> BTreeSet<(String, String)> {
    api::request::ROUTES
        .iter()
        .map(|r| (r.verb.as_str().to_lowercase(), r.path.to_string()))
        .collect()
}

#[test]
fn openapi_document_routes_match_the_server() {
    let doc = document();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.0"));
    let mut documented = BTreeSet::new();
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for method in ops.as_object().unwrap().keys() {
            documented.insert((method.clone(), path.clone()));
        }
    }
    assert_eq!(documented.len(), 22, "{documented:?}");
    assert_eq!(documented, server_routes());
}

fn resolve<'a>(doc: &'a Value, r: &str) -> &'a Value {
    let pointer = r
        .strip_prefix('#')
        .unwrap_or_else(|| panic!("external $ref {r}"));
    doc.pointer(pointer)
        .unwrap_or_else(|| panic!("dangling $ref {r}"))
}

fn check_refs(doc: &Value, v: &Value) {
    match v {
        Value::Object(m) => {
            if let Some(r) = m.get("$ref") {
                resolve(doc, r.as_str().unwrap());
            }
            m.values().for_each(|x| check_refs(doc, x));
        }
        Value::Array(a) => a.iter().for_each(|x| check_refs(doc, x)),
        _ => {}
    }
}

#[test]
fn openapi_schemas_match_the_compat_table() {
    let doc = document();
    check_refs(&doc, &doc);
    let schemas = &doc["components"]["schemas"];
    for schema in SCHEMAS {
        let s = &schemas[schema.name];
        assert!(s.is_object(), "{} missing from the document", schema.name);
        assert_eq!(s["additionalProperties"], json!(false), "{}", schema.name);
        let documented: BTreeSet<&str> = s["properties"]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        let table: BTreeSet<&str> = schema.fields.iter().map(|(n, _)| *n).collect();
        assert_eq!(documented, table, "fields of {}", schema.name);
        // Fields petrel keeps reference the schema the table walks them with.
        for (name, rule) in schema.fields {
            let want = match rule {
                Rule::Object(t) => Some(format!("#/components/schemas/{}", t.name)),
                Rule::List(t) => {
                    let r = &s["properties"][name]["items"]["$ref"];
                    assert_eq!(r, &json!(format!("#/components/schemas/{}", t.name)));
                    None
                }
                _ => None,
            };
            if let Some(want) = want {
                assert_eq!(
                    s["properties"][name]["$ref"],
                    json!(want),
                    "{}.{name}",
                    schema.name
                );
            }
        }
    }
}

/// The constraints the server enforces on a `vm.create` body are in the document, so that
/// schema-driven tools generate bodies the server accepts (issue 20), and each documented
/// bound is the server's: the value at the bound is accepted, the one past it refused.
#[test]
fn documented_bounds_are_the_servers() {
    let doc = document();
    let props = |name: &str| doc["components"]["schemas"][name]["properties"].clone();
    let (memory, payload) = (props("MemoryConfig"), props("PayloadConfig"));
    let (disk, net, vsock) = (
        props("DiskConfig"),
        props("NetConfig"),
        props("VsockConfig"),
    );
    assert_eq!(memory["size"]["minimum"], json!(2 << 20));
    assert_eq!(memory["size"]["multipleOf"], json!(4096));
    assert_eq!(payload["kernel"]["minLength"], json!(1));
    assert_eq!(payload["cmdline"]["maxLength"], json!(4095));
    assert_eq!(disk["path"]["minLength"], json!(1));
    assert_eq!(net["tap"]["minLength"], json!(1));
    assert_eq!(net["fds"]["minItems"], json!(1));
    assert_eq!(vsock["socket"]["minLength"], json!(1));
    assert!(net["mac"]["pattern"].is_string(), "{:#}", net["mac"]);

    let vm = |memory: u64, kernel: &str, cmdline: String| {
        parse(&json!({"payload": {"kernel": kernel, "cmdline": cmdline},
                      "memory": {"size": memory}}))
        .and_then(|c| c.validate())
    };
    let line = |n: usize| "x".repeat(n);
    assert!(vm(2 << 20, "/k", line(4095)).is_ok());
    assert!(
        vm((2 << 20) - 4096, "/k", line(1)).is_err(),
        "under the minimum"
    );
    assert!(
        vm((2 << 20) + 512, "/k", line(1)).is_err(),
        "not a multiple"
    );
    assert!(vm(2 << 20, "", line(1)).is_err(), "empty kernel");
    assert!(
        vm(2 << 20, "/k", line(4096)).is_err(),
        "command line too long"
    );

    let disk = |path: &str| {
        disk_config_from_ch(json!({"path": path}).to_string().as_bytes())
            .and_then(|d| d.validate("disks[0]"))
    };
    assert!(disk("/d").is_ok() && disk("").is_err());
    let net = |body: Value| {
        net_config_from_ch(body.to_string().as_bytes()).and_then(|n| n.validate("net[0]"))
    };
    assert!(net(json!({"tap": "t"})).is_ok() && net(json!({"tap": ""})).is_err());
    assert!(net(json!({"fds": [3]})).is_ok() && net(json!({"fds": []})).is_err());
    assert!(net(json!({"tap": "t", "mac": "12:34:56:78:9a:bc"})).is_ok());
    assert!(net(json!({"tap": "t", "mac": "12:34:56:78:9a"})).is_err());
    let vsock = |socket: &str| {
        vsock_config_from_ch(json!({"cid": 3, "socket": socket}).to_string().as_bytes())
            .and_then(|v| v.validate())
    };
    assert!(vsock("/v").is_ok() && vsock("").is_err());
}

#[test]
fn image_types_map_and_unsupported_ones_are_refused() {
    let cfg = parse(&with("disks[0].image_type", json!("Qcow2"))).unwrap();
    let disk = &cfg.disks.as_ref().unwrap()[0];
    assert_eq!(disk.image_type, Some(ImageType::Qcow2));
    let cfg = parse(&with("disks[0].backing_files", json!(true))).unwrap();
    assert!(cfg.disks.as_ref().unwrap()[0].backing_files);
    for t in ["Vhdx", "FixedVhd"] {
        let cfg = parse(&with("disks[0].image_type", json!(t))).unwrap();
        let e = cfg.validate().unwrap_err();
        assert_eq!(e.field, "disks[0].image_type", "{e}");
        assert!(e.message.contains("not supported"), "{e}");
    }
}
