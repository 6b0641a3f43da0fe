//! petrel's compatibility table (api/src/compat.rs) and document (docs/api/petrel-vmm.yaml)
//! checked against Cloud Hypervisor's published OpenAPI document, a copy of which is kept at
//! docs/api/cloud-hypervisor.yaml (its header names the commit compared with):
//! - every field Cloud Hypervisor documents for a schema petrel reads is in petrel's table
//!   (so a body written from Cloud Hypervisor's document never hits "unknown field");
//! - the fields petrel's table has beyond Cloud Hypervisor's document are exactly the known
//!   list below (fields Cloud Hypervisor's code and ch-remote send that its document lacks,
//!   and petrel's own additions);
//! - each field's type agrees: what the table accepts (a boolean default, a number, a
//!   string, a list, an object of a schema) is of the type Cloud Hypervisor documents;
//! - defaults agree: where Cloud Hypervisor documents a default for a field petrel accepts
//!   only at its default, that default is accepted; where petrel's document states a default
//!   for a field both have, it is Cloud Hypervisor's; enum values petrel accepts are values
//!   of Cloud Hypervisor's enum.

mod yaml_subset;

use std::collections::BTreeSet;
use std::path::PathBuf;

use api::compat::{Dv, Rule, SCHEMAS};
use serde_json::Value;
use yaml_subset::yaml;

fn doc(name: &str) -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../docs/api")
        .join(name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    yaml(&text)
}

/// Fields in petrel's table that Cloud Hypervisor's document does not list, and why.
const NOT_IN_CH_DOCUMENT: &[(&str, &str, &str)] = &[
    (
        "RestoreConfig",
        "serial_file",
        "petrel's extension: where a File serial port writes after restore",
    ),
    (
        "ReceiveMigrationData",
        "serial_file",
        "petrel's extension: where a File serial port writes after migration",
    ),
    (
        "ReceiveMigrationData",
        "vfio_fds",
        "sent by ch-remote receive-migration (null without descriptors)",
    ),
    (
        "ReceiveMigrationData",
        "iommufd_fd",
        "sent by ch-remote receive-migration (null without descriptors)",
    ),
    (
        "SendMigrationData",
        "preserve_source",
        "sent by ch-remote send-migration (false)",
    ),
    (
        "RestoreConfig",
        "net_fds",
        "sent by ch-remote restore: new tap descriptors (SCM_RIGHTS) for restored interfaces",
    ),
    (
        "RestoreConfig",
        "vfio_fds",
        "sent by ch-remote restore (null without descriptors)",
    ),
    (
        "RestoreConfig",
        "iommufd_fd",
        "sent by ch-remote restore (null without descriptors)",
    ),
    (
        "VmConfig",
        "gdb",
        "in Cloud Hypervisor's VmConfig (guest_debug builds)",
    ),
    (
        "VmConfig",
        "pvmemcontrol",
        "in Cloud Hypervisor's VmConfig (pvmemcontrol builds)",
    ),
    (
        "VmConfig",
        "ivshmem",
        "in Cloud Hypervisor's VmConfig (ivshmem builds)",
    ),
    (
        "VmConfig",
        "sgx_epc",
        "sent by older Cloud Hypervisor clients (removed since)",
    ),
    (
        "PayloadConfig",
        "fw_cfg_config",
        "in Cloud Hypervisor's PayloadConfig (fw_cfg builds)",
    ),
    (
        "DiskConfig",
        "disable_io_uring",
        "sent by ch-remote add-disk",
    ),
    ("DiskConfig", "disable_aio", "sent by ch-remote add-disk"),
    (
        "NetConfig",
        "fds",
        "in Cloud Hypervisor's NetConfig (fds also come with SCM_RIGHTS)",
    ),
    (
        "SerialConfig",
        "iommu",
        "sent by Kata's Go client, whose serial is a ConsoleConfig",
    ),
    (
        "BalloonConfig",
        "statistics_polling_interval_s",
        "petrel's own: balloon statistics",
    ),
    (
        "PlatformConfig",
        "virtio_mmio_cmdline",
        "petrel's own: virtio-mmio on the cmdline",
    ),
    (
        "PlatformConfig",
        "transport",
        "petrel's own: virtio-mmio or virtio-pci (Cloud Hypervisor is PCI only)",
    ),
];

/// The schema `v` refers to (`$ref`), followed once.
fn deref<'a>(ch: &'a Value, v: &'a Value) -> &'a Value {
    match v["$ref"].as_str() {
        Some(r) => {
            let name = r.rsplit('/').next().unwrap_or_default();
            &ch["components"]["schemas"][name]
        }
        None => v,
    }
}

/// The JSON type Cloud Hypervisor documents for property `p` (following one `$ref`):
/// "integer", "boolean", "string", "array" or "object".
fn ch_type(ch: &Value, p: &Value) -> String {
    let t = deref(ch, p);
    match t["type"].as_str() {
        Some(t) => t.to_string(),
        None if t["properties"].is_object() => "object".into(),
        None => panic!("no type for {p}"),
    }
}

/// The type a table default value has.
fn dv_type(dv: &Dv) -> &'static str {
    match dv {
        Dv::Bool(_) => "boolean",
        Dv::U64(_) => "integer",
        Dv::Str(_) => "string",
        Dv::EmptyList => "array",
        Dv::Object(_) => "object",
    }
}

fn dv_json(dv: &Dv) -> Option<Value> {
    match dv {
        Dv::Bool(b) => Some(Value::from(*b)),
        Dv::U64(n) => Some(Value::from(*n)),
        Dv::Str(s) => Some(Value::from(*s)),
        Dv::EmptyList | Dv::Object(_) => None,
    }
}

#[test]
fn ch_document_header_names_the_commit_compared_with() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/api/cloud-hypervisor.yaml");
    let text = std::fs::read_to_string(path).unwrap();
    let header: String = text.lines().take_while(|l| l.starts_with('#')).collect();
    assert!(
        header.contains("ae44c2971c83dd2b1bd704fa81102ec0dec4e7d4"),
        "{header}"
    );
    assert!(header.contains("Apache License 2.0"), "{header}");
}

#[test]
fn compat_table_agrees_with_cloud_hypervisors_document() {
    let ch = doc("cloud-hypervisor.yaml");
    let petrel = doc("petrel-vmm.yaml");
    let ch_schemas = &ch["components"]["schemas"];
    let mut extra_found = BTreeSet::new();
    let mut problems = Vec::new();
    for schema in SCHEMAS {
        let c = &ch_schemas[schema.name];
        assert!(
            c.is_object(),
            "{} is not in Cloud Hypervisor's document",
            schema.name
        );
        let props = c["properties"].as_object().unwrap();
        let table: BTreeSet<&str> = schema.fields.iter().map(|(n, _)| *n).collect();
        for name in props.keys() {
            if !table.contains(name.as_str()) {
                problems.push(format!(
                    "{}.{name}: documented by Cloud Hypervisor, not in petrel's table",
                    schema.name
                ));
            }
        }
        let petrel_props = &petrel["components"]["schemas"][schema.name]["properties"];
        for (name, rule) in schema.fields {
            let at = format!("{}.{name}", schema.name);
            let Some(p) = props.get(*name) else {
                extra_found.insert((schema.name, *name));
                continue;
            };
            let ty = ch_type(&ch, p);
            let target = deref(&ch, p);
            match rule {
                Rule::Object(s) => {
                    if p["$ref"]
                        .as_str()
                        .is_none_or(|r| !r.ends_with(&format!("/{}", s.name)))
                    {
                        problems.push(format!(
                            "{at}: petrel walks it as {}, Cloud Hypervisor says {p}",
                            s.name
                        ));
                    }
                }
                Rule::List(s) => {
                    let item = p["items"]["$ref"].as_str().unwrap_or_default();
                    if ty != "array" || !item.ends_with(&format!("/{}", s.name)) {
                        problems.push(format!(
                            "{at}: petrel reads a list of {}, Cloud Hypervisor says {p}",
                            s.name
                        ));
                    }
                }
                Rule::Default(accepted) => {
                    for dv in *accepted {
                        if dv_type(dv) != ty {
                            problems.push(format!("{at}: petrel accepts a {} ({dv:?}), Cloud Hypervisor's type is {ty}", dv_type(dv)));
                        }
                        if let (Some(v), Some(values)) = (dv_json(dv), target["enum"].as_array()) {
                            if !values.contains(&v) {
                                problems.push(format!(
                                    "{at}: {v} is not in Cloud Hypervisor's enum {values:?}"
                                ));
                            }
                        }
                    }
                    let ch_default = p.get("default").or_else(|| target.get("default"));
                    if let Some(d) = ch_default {
                        if !accepted.iter().filter_map(dv_json).any(|v| &v == d) {
                            problems.push(format!("{at}: Cloud Hypervisor's default {d} is not accepted ({accepted:?})"));
                        }
                    }
                }
                Rule::PciLayout => {
                    if ty != "integer" {
                        problems.push(format!(
                            "{at}: a PCI segment number, Cloud Hypervisor's type is {ty}"
                        ));
                    }
                }
                Rule::Renamed(map) => {
                    let values = target["enum"].as_array().cloned().unwrap_or_default();
                    for (spelling, _) in *map {
                        if !values.contains(&Value::from(*spelling)) {
                            problems.push(format!(
                                "{at}: {spelling} is not in Cloud Hypervisor's enum {values:?}"
                            ));
                        }
                    }
                }
                Rule::Petrel => {
                    // petrel's document gives the field's type and default; they are CH's.
                    let mine = deref(&petrel, &petrel_props[*name]);
                    if let Some(t) = mine["type"].as_str() {
                        let t = if t == "number" { "integer" } else { t };
                        if t != ty {
                            problems
                                .push(format!("{at}: petrel documents {t}, Cloud Hypervisor {ty}"));
                        }
                    }
                    if let (Some(a), Some(b)) =
                        (petrel_props[*name].get("default"), p.get("default"))
                    {
                        if a != b {
                            problems.push(format!(
                                "{at}: petrel's default {a}, Cloud Hypervisor's {b}"
                            ));
                        }
                    }
                }
            }
        }
    }
    let expected: BTreeSet<(&str, &str)> = NOT_IN_CH_DOCUMENT
        .iter()
        .map(|(s, f, _)| (*s, *f))
        .collect();
    assert_eq!(
        extra_found, expected,
        "fields of petrel's table absent from Cloud Hypervisor's document"
    );
    assert!(problems.is_empty(), "{problems:#?}");
}
