//! Cloud Hypervisor compatibility of the per-VM API: request bodies written against Cloud
//! Hypervisor's schemas (`VmConfig`, `DiskConfig`, `NetConfig`, `VsockConfig`, `VmResize`,
//! `VmRemoveDevice`), as its `ch-remote` and Kata Containers send them, become petrel's types.
//!
//! One table ([`VM_CONFIG`] and the [`Schema`]s it refers to) lists every field of those
//! schemas and what petrel does with it:
//! - [`Rule::Petrel`], [`Rule::Object`], [`Rule::List`]: petrel models the field and keeps it
//!   (`null` counts as absent, so petrel's own default applies);
//! - [`Rule::Default`]: petrel does not model it and accepts it only with Cloud Hypervisor's
//!   default value (absent and `null` always count as default); any other value is an error
//!   `FIELD: not supported …` naming the field path, e.g. `memory.hugepages`;
//! - [`Rule::Renamed`]: an enum whose Cloud Hypervisor spellings map to petrel's
//!   (serial `Null` → `Off`; `Pty` and `Socket` are not supported);
//! - [`Rule::PciLayout`]: PCI segment numbers, which shape a layout petrel does not have
//!   yet: any unsigned integer, no effect.
//!
//! A field in no table is an error `FIELD: unknown field 'x' in PARENT`. After the walk the
//! body holds only petrel's fields and is deserialized into petrel's types, whose own checks
//! (`deny_unknown_fields`, types, `validate`) then apply.
//!
//! Where petrel's default differs from Cloud Hypervisor's for a section petrel models, an
//! absent section takes petrel's default, as in petrel's own config file: `serial` absent is
//! `Tty` (Cloud Hypervisor: `Null`), `rng` absent is no entropy device (Cloud Hypervisor:
//! `/dev/urandom`). A body of petrel's own `VmConfig` JSON is accepted unchanged.

mod persist;
pub use persist::{
    receive_migration_from_ch, restore_from_ch, send_migration_from_ch, snapshot_from_ch,
    RestoredNet, VmReceiveMigration, VmRestore, VmSendMigration, VmSnapshot,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::config::{ConfigError, VmConfig};
use crate::devices::{DiskConfig, NetConfig, VsockConfig};

/// What petrel does with one field of a Cloud Hypervisor object.
#[derive(Debug)]
pub enum Rule {
    /// Modelled by petrel: the value is kept as it is.
    Petrel,
    /// Modelled by petrel: an object walked with its own schema.
    Object(&'static Schema),
    /// Modelled by petrel: an array of objects, each walked with the schema.
    List(&'static Schema),
    /// Not modelled: accepted (and dropped) only when `null`, absent or one of these values.
    Default(&'static [Dv]),
    /// Modelled, spelled differently: Cloud Hypervisor's string → petrel's, or `None` when
    /// petrel does not support that value.
    Renamed(&'static [(&'static str, Option<&'static str>)]),
    /// Shapes only the PCI layout (segment numbers), which petrel does not have yet: any
    /// unsigned integer is accepted and has no effect (devices are virtio-mmio).
    PciLayout,
}

/// A default value in the table.
#[derive(Debug)]
pub enum Dv {
    /// A boolean.
    Bool(bool),
    /// An unsigned integer.
    U64(u64),
    /// A string (enum spellings, default addresses).
    Str(&'static str),
    /// An empty array (same meaning as an absent list).
    EmptyList,
    /// An object whose every field has its default (its schema holds only
    /// [`Rule::Default`] fields).
    Object(&'static Schema),
}

/// The fields of one Cloud Hypervisor object.
#[derive(Debug)]
pub struct Schema {
    /// The schema's name in Cloud Hypervisor's OpenAPI document (and petrel's).
    pub name: &'static str,
    /// Every field, with what petrel does with it.
    pub fields: &'static [(&'static str, Rule)],
}

const NULL: Rule = Rule::Default(&[]);
const NO_LIST: Rule = Rule::Default(&[Dv::EmptyList]);
const FALSE: Rule = Rule::Default(&[Dv::Bool(false)]);
const TRUE: Rule = Rule::Default(&[Dv::Bool(true)]);
const SEGMENT: Rule = Rule::PciLayout;

/// What petrel lacks for some of the fields it accepts only at their defaults, added to the
/// refusal so that the caller learns why.
const MISSING: &[(&str, &str)] = &[
    (
        "fs",
        "virtio-fs needs vhost-user, which petrel does not have yet",
    ),
    ("pmem", "petrel has no virtio-pmem device yet"),
    (
        "devices",
        "VFIO passthrough needs PCI, which petrel does not have yet",
    ),
    (
        "user_devices",
        "vfio-user devices need PCI, which petrel does not have yet",
    ),
    ("vdpa", "petrel has no vDPA support yet"),
    ("generic_vhost_user", "petrel has no vhost-user yet"),
    ("numa", "petrel presents one NUMA node"),
    (
        "memory.hugepages",
        "petrel maps guest RAM with normal pages (memory.thp asks for transparent huge pages)",
    ),
    ("memory.zones", "petrel has no memory zones yet"),
    (
        "memory.hotplug_method",
        "petrel has no memory hotplug yet (hotplug_size is recorded)",
    ),
];

/// `VmConfig`: the body of `vm.create`.
pub static VM_CONFIG: Schema = Schema {
    name: "VmConfig",
    fields: &[
        ("cpus", Rule::Object(&CPUS)),
        ("memory", Rule::Object(&MEMORY)),
        ("payload", Rule::Object(&PAYLOAD)),
        ("disks", Rule::List(&DISK)),
        ("net", Rule::List(&NET)),
        ("rng", Rule::Object(&RNG)),
        ("balloon", Rule::Object(&BALLOON)),
        ("vsock", Rule::Object(&VSOCK)),
        ("serial", Rule::Object(&SERIAL)),
        ("platform", Rule::Object(&PLATFORM)),
        // petrel has no virtio-console: Cloud Hypervisor's default (Tty) and the modes that
        // mean "no console" are accepted and have no effect.
        ("console", Rule::Default(&[Dv::Object(&CONSOLE)])),
        (
            "debug_console",
            Rule::Default(&[Dv::Object(&DEBUG_CONSOLE)]),
        ),
        ("rate_limit_groups", NO_LIST),
        ("fs", NO_LIST),
        ("pmem", NO_LIST),
        ("generic_vhost_user", NO_LIST),
        ("devices", NO_LIST),
        ("user_devices", NO_LIST),
        ("vdpa", NO_LIST),
        ("sgx_epc", NO_LIST),
        ("numa", NO_LIST),
        ("pci_segments", NO_LIST),
        ("landlock_rules", NO_LIST),
        ("iommu", FALSE),
        ("watchdog", FALSE),
        ("pvpanic", FALSE),
        ("gdb", FALSE),
        ("landlock_enable", FALSE),
        ("rtc", NULL),
        ("tpm", NULL),
        ("pvmemcontrol", NULL),
        ("ivshmem", NULL),
    ],
};

static CPUS: Schema = Schema {
    name: "CpusConfig",
    fields: &[
        ("boot_vcpus", Rule::Petrel),
        ("max_vcpus", Rule::Petrel),
        ("topology", Rule::Object(&CPU_TOPOLOGY)),
        ("kvm_hyperv", FALSE),
        ("max_phys_bits", Rule::Default(&[Dv::U64(46)])),
        ("nested", Rule::Petrel),
        ("affinity", NO_LIST),
        ("features", Rule::Default(&[Dv::Object(&CPU_FEATURES)])),
        ("core_scheduling", Rule::Default(&[Dv::Str("Vm")])),
    ],
};

static CPU_TOPOLOGY: Schema = Schema {
    name: "CpuTopology",
    fields: &[
        ("threads_per_core", Rule::Petrel),
        ("cores_per_die", Rule::Petrel),
        ("dies_per_package", Rule::Petrel),
        ("packages", Rule::Petrel),
    ],
};

static CPU_FEATURES: Schema = Schema {
    name: "CpuFeatures",
    fields: &[("amx", FALSE)],
};

static MEMORY: Schema = Schema {
    name: "MemoryConfig",
    fields: &[
        ("size", Rule::Petrel),
        ("mergeable", Rule::Petrel),
        ("hotplug_method", Rule::Default(&[Dv::Str("Acpi")])),
        ("hotplug_size", Rule::Petrel),
        ("hotplugged_size", NULL),
        ("shared", Rule::Petrel),
        ("hugepages", FALSE),
        ("hugepage_size", NULL),
        ("prefault", Rule::Petrel),
        ("reserve", FALSE),
        ("thp", Rule::Petrel),
        ("zones", NO_LIST),
    ],
};

static PAYLOAD: Schema = Schema {
    name: "PayloadConfig",
    fields: &[
        ("kernel", Rule::Petrel),
        ("cmdline", Rule::Petrel),
        ("initramfs", Rule::Petrel),
        ("firmware", NULL),
        ("igvm", NULL),
        ("host_data", NULL),
        ("fw_cfg_config", NULL),
    ],
};

static TOKEN_BUCKET: Schema = Schema {
    name: "TokenBucket",
    fields: &[
        ("size", Rule::Petrel),
        // Cloud Hypervisor allows null here; petrel's default is 0, the same meaning.
        ("one_time_burst", Rule::Petrel),
        ("refill_time", Rule::Petrel),
    ],
};

static RATE_LIMITER: Schema = Schema {
    name: "RateLimiterConfig",
    fields: &[
        ("bandwidth", Rule::Object(&TOKEN_BUCKET)),
        ("ops", Rule::Object(&TOKEN_BUCKET)),
    ],
};

/// `DiskConfig`: a `disks` entry and the body of `vm.add-disk`.
pub static DISK: Schema = Schema {
    name: "DiskConfig",
    fields: &[
        ("path", Rule::Petrel),
        ("readonly", Rule::Petrel),
        ("direct", Rule::Petrel),
        ("id", Rule::Petrel),
        ("serial", Rule::Petrel),
        ("rate_limiter_config", Rule::Object(&RATE_LIMITER)),
        ("iommu", FALSE),
        ("num_queues", Rule::Default(&[Dv::U64(1)])),
        ("queue_size", Rule::Default(&[Dv::U64(128)])),
        ("vhost_user", FALSE),
        ("vhost_socket", NULL),
        ("rate_limit_group", NULL),
        ("disable_io_uring", FALSE),
        ("disable_aio", FALSE),
        ("pci_segment", SEGMENT),
        ("pci_device_id", NULL),
        ("queue_affinity", NO_LIST),
        // qcow2 backing files, off unless asked (as in Cloud Hypervisor).
        ("backing_files", Rule::Petrel),
        ("sparse", TRUE),
        // Raw and Qcow2 are served; Unknown (Cloud Hypervisor's default, sent by `ch-remote
        // add-disk path=…`) detects the format; FixedVhd and Vhdx are refused by validation.
        ("image_type", Rule::Petrel),
        ("lock_granularity", Rule::Default(&[Dv::Str("ByteRange")])),
    ],
};

/// `NetConfig`: a `net` entry and the body of `vm.add-net`.
pub static NET: Schema = Schema {
    name: "NetConfig",
    fields: &[
        ("tap", Rule::Petrel),
        ("fds", Rule::Petrel),
        ("mac", Rule::Petrel),
        ("id", Rule::Petrel),
        ("rate_limiter_config", Rule::Object(&RATE_LIMITER)),
        // The host side of a tap is configured outside petrel.
        ("ip", Rule::Default(&[Dv::Str("192.168.249.1")])),
        ("mask", Rule::Default(&[Dv::Str("255.255.255.0")])),
        ("host_mac", NULL),
        ("mtu", NULL),
        ("iommu", FALSE),
        // One queue pair.
        ("num_queues", Rule::Default(&[Dv::U64(2)])),
        ("queue_size", Rule::Default(&[Dv::U64(256)])),
        ("vhost_user", FALSE),
        ("vhost_socket", NULL),
        ("vhost_mode", Rule::Default(&[Dv::Str("Client")])),
        ("pci_segment", SEGMENT),
        ("pci_device_id", NULL),
        ("offload_tso", TRUE),
        ("offload_ufo", TRUE),
        ("offload_csum", TRUE),
    ],
};

static RNG: Schema = Schema {
    name: "RngConfig",
    fields: &[
        ("src", Rule::Petrel),
        ("iommu", FALSE),
        ("id", NULL),
        ("pci_segment", SEGMENT),
        ("pci_device_id", NULL),
    ],
};

static BALLOON: Schema = Schema {
    name: "BalloonConfig",
    fields: &[
        ("size", Rule::Petrel),
        ("deflate_on_oom", Rule::Petrel),
        ("statistics_polling_interval_s", Rule::Petrel),
        ("free_page_reporting", FALSE),
        ("iommu", FALSE),
        ("id", NULL),
        ("pci_segment", SEGMENT),
        ("pci_device_id", NULL),
    ],
};

/// `VsockConfig`: the `vsock` section and the body of `vm.add-vsock`.
pub static VSOCK: Schema = Schema {
    name: "VsockConfig",
    fields: &[
        ("cid", Rule::Petrel),
        ("socket", Rule::Petrel),
        ("id", Rule::Petrel),
        ("iommu", FALSE),
        ("pci_segment", SEGMENT),
        ("pci_device_id", NULL),
    ],
};

static SERIAL: Schema = Schema {
    name: "SerialConfig",
    fields: &[
        (
            "mode",
            Rule::Renamed(&[
                ("Tty", Some("Tty")),
                ("File", Some("File")),
                ("Off", Some("Off")),
                ("Null", Some("Off")),
                ("Pty", None),
                ("Socket", None),
            ]),
        ),
        ("file", Rule::Petrel),
        ("socket", NULL),
        ("iommu", FALSE),
    ],
};

static CONSOLE: Schema = Schema {
    name: "ConsoleConfig",
    fields: &[
        (
            "mode",
            Rule::Default(&[Dv::Str("Tty"), Dv::Str("Off"), Dv::Str("Null")]),
        ),
        ("file", NULL),
        ("socket", NULL),
        ("iommu", FALSE),
        ("id", NULL),
        ("pci_segment", SEGMENT),
        ("pci_device_id", NULL),
    ],
};

static DEBUG_CONSOLE: Schema = Schema {
    name: "DebugConsoleConfig",
    fields: &[
        ("mode", Rule::Default(&[Dv::Str("Off")])),
        ("file", NULL),
        ("iobase", Rule::Default(&[Dv::U64(0xe9)])),
    ],
};

static PLATFORM: Schema = Schema {
    name: "PlatformConfig",
    fields: &[
        ("virtio_mmio_cmdline", Rule::Petrel),
        ("transport", Rule::Petrel),
        ("num_pci_segments", Rule::PciLayout),
        ("iommu_segments", NO_LIST),
        ("iommu_address_width_bits", Rule::Default(&[Dv::U64(64)])),
        ("serial_number", NULL),
        ("uuid", NULL),
        ("oem_strings", NO_LIST),
        ("system_serial_number", NULL),
        ("system_uuid", NULL),
        ("system_manufacturer", NULL),
        ("system_product_name", NULL),
        ("system_version", NULL),
        ("system_family", NULL),
        ("system_sku_number", NULL),
        ("chassis_asset_tag", NULL),
        ("tdx", FALSE),
        ("sev_snp", FALSE),
        ("iommufd", FALSE),
        ("vfio_p2p_dma", TRUE),
    ],
};

/// `VmResize`: the body of `vm.resize`.
pub static RESIZE: Schema = Schema {
    name: "VmResize",
    fields: &[
        ("desired_vcpus", Rule::Petrel),
        ("desired_ram", Rule::Petrel),
        ("desired_balloon", Rule::Petrel),
    ],
};

/// `VmRemoveDevice`: the body of `vm.remove-device`.
pub static REMOVE_DEVICE: Schema = Schema {
    name: "VmRemoveDevice",
    fields: &[("id", Rule::Petrel)],
};

/// `VmResizeDisk`: the body of `vm.resize-disk`.
pub static RESIZE_DISK: Schema = Schema {
    name: "VmResizeDisk",
    fields: &[("id", Rule::Petrel), ("desired_size", Rule::Petrel)],
};

/// Every schema of the table, for documentation and tests.
pub static SCHEMAS: &[&Schema] = &[
    &VM_CONFIG,
    &CPUS,
    &CPU_TOPOLOGY,
    &CPU_FEATURES,
    &MEMORY,
    &PAYLOAD,
    &TOKEN_BUCKET,
    &RATE_LIMITER,
    &DISK,
    &NET,
    &RNG,
    &BALLOON,
    &VSOCK,
    &SERIAL,
    &CONSOLE,
    &DEBUG_CONSOLE,
    &PLATFORM,
    &RESIZE,
    &REMOVE_DEVICE,
    &RESIZE_DISK,
    &persist::SNAPSHOT,
    &persist::RESTORE,
    &persist::RECEIVE_MIGRATION,
    &persist::SEND_MIGRATION,
];

/// `vm.resize`: new vCPU count, RAM size and balloon size (each optional).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmResize {
    /// vCPUs wanted (petrel: only the current count).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired_vcpus: Option<u32>,
    /// RAM wanted in bytes (petrel: only the current size).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired_ram: Option<u64>,
    /// Balloon size wanted in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired_balloon: Option<u64>,
}

impl VmResize {
    /// Checks the request against the VM's config (no CPU or memory hotplug: the desired
    /// counts must equal the current ones) and returns the balloon target, if any.
    pub fn balloon_target(&self, cfg: &VmConfig) -> Result<Option<u64>, ConfigError> {
        if let Some(v) = self.desired_vcpus.filter(|&v| v != cfg.cpus.boot_vcpus) {
            return Err(ConfigError::new(
                "desired_vcpus",
                format!(
                    "{v} is not supported: petrel has no CPU hotplug yet (the VM has {} vCPUs)",
                    cfg.cpus.boot_vcpus
                ),
            ));
        }
        if let Some(v) = self.desired_ram.filter(|&v| v != cfg.memory.size) {
            return Err(ConfigError::new(
                "desired_ram",
                format!(
                    "{v} is not supported: petrel has no memory hotplug yet (the VM has {} \
                     bytes; desired_balloon changes what the guest may use)",
                    cfg.memory.size
                ),
            ));
        }
        Ok(self.desired_balloon)
    }
}

/// `vm.remove-device`: the id of a device to remove.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmRemoveDevice {
    /// The device id (`disks[].id`, `net[].id`, `vsock.id`).
    pub id: String,
}

/// Parses a `vm.create` body (Cloud Hypervisor's or petrel's `VmConfig` JSON).
/// Does not call [`VmConfig::validate`].
pub fn vm_config_from_ch(body: &[u8]) -> Result<VmConfig, ConfigError> {
    let mut m = walk_body(body, &VM_CONFIG)?;
    let cfg = VmConfig {
        cpus: take(&mut m, "cpus")?.unwrap_or_default(),
        memory: take(&mut m, "memory")?.unwrap_or_default(),
        payload: take(&mut m, "payload")?
            .ok_or_else(|| ConfigError::new("payload", "is required"))?,
        serial: take(&mut m, "serial")?.unwrap_or_default(),
        disks: take_list(&mut m, "disks")?,
        rng: take(&mut m, "rng")?,
        net: take_list(&mut m, "net")?,
        vsock: take(&mut m, "vsock")?,
        balloon: take(&mut m, "balloon")?,
        platform: take(&mut m, "platform")?.unwrap_or_default(),
    };
    match m.keys().next() {
        Some(k) => Err(unknown("", k)),
        None => Ok(cfg),
    }
}

/// Parses a `vm.add-disk` body.
pub fn disk_config_from_ch(body: &[u8]) -> Result<DiskConfig, ConfigError> {
    parse_as(body, &DISK)
}

/// Parses a `vm.add-net` body (tap fds sent with SCM_RIGHTS are the caller's business).
pub fn net_config_from_ch(body: &[u8]) -> Result<NetConfig, ConfigError> {
    parse_as(body, &NET)
}

/// Parses a `vm.add-vsock` body.
pub fn vsock_config_from_ch(body: &[u8]) -> Result<VsockConfig, ConfigError> {
    parse_as(body, &VSOCK)
}

/// Parses a `vm.resize` body.
pub fn resize_from_ch(body: &[u8]) -> Result<VmResize, ConfigError> {
    parse_as(body, &RESIZE)
}

/// `vm.resize-disk`: a disk (by id) grows to `desired_size` bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmResizeDisk {
    /// The disk's id (`disks[].id`).
    pub id: String,
    /// Its new size in bytes (a multiple of 512, not smaller than now).
    pub desired_size: u64,
}

/// Parses a `vm.resize-disk` body.
pub fn resize_disk_from_ch(body: &[u8]) -> Result<VmResizeDisk, ConfigError> {
    parse_as(body, &RESIZE_DISK)
}

/// Parses a `vm.remove-device` body.
pub fn remove_device_from_ch(body: &[u8]) -> Result<VmRemoveDevice, ConfigError> {
    parse_as(body, &REMOVE_DEVICE)
}

/// Walks `body` with `schema` and deserializes what is left into `T`.
fn parse_as<T: DeserializeOwned>(body: &[u8], schema: &Schema) -> Result<T, ConfigError> {
    let m = walk_body(body, schema)?;
    from_value_at(Value::Object(m), "", schema.name)
}

/// Deserializes `v` found at `at` (`""` for the body itself, whose errors fall back to
/// `name`), naming the exact field that is wrong (`cpus.boot_vcpus`) in errors.
fn from_value_at<T: DeserializeOwned>(v: Value, at: &str, name: &str) -> Result<T, ConfigError> {
    serde_path_to_error::deserialize(v).map_err(|e| {
        let path = e.path().to_string();
        let field = match (at, path.as_str()) {
            ("", "" | ".") => name.to_string(),
            (_, "" | ".") => at.to_string(),
            ("", p) => p.to_string(),
            (a, p) => format!("{a}.{p}"),
        };
        ConfigError::new(&field, e.into_inner().to_string())
    })
}

/// Parses JSON and walks it as `schema` (the top-level object).
fn walk_body(body: &[u8], schema: &Schema) -> Result<Map<String, Value>, ConfigError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ConfigError::new(schema.name, "a JSON body is required"));
    }
    let mut v: Value = serde_json::from_slice(body)
        .map_err(|e| ConfigError::new(schema.name, format!("malformed JSON: {e}")))?;
    let Value::Object(m) = &mut v else {
        return Err(ConfigError::new(schema.name, "expected a JSON object"));
    };
    walk(m, schema, "")?;
    Ok(std::mem::take(m))
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn unknown(path: &str, key: &str) -> ConfigError {
    let message = if path.is_empty() {
        format!("unknown field '{key}'")
    } else {
        format!("unknown field '{key}' in {path}")
    };
    ConfigError::new(&join(path, key), message)
}

/// Checks every field of `m` against `schema`: drops the default-valued fields petrel does
/// not model, maps spellings, and fails naming the first field petrel cannot take.
fn walk(m: &mut Map<String, Value>, schema: &Schema, path: &str) -> Result<(), ConfigError> {
    let keys: Vec<String> = m.keys().cloned().collect();
    for key in keys {
        let field = join(path, &key);
        let Some((_, rule)) = schema.fields.iter().find(|(name, _)| *name == key) else {
            return Err(unknown(path, &key));
        };
        if m.get(&key).is_none_or(Value::is_null) {
            m.remove(&key);
            continue;
        }
        let Some(value) = m.get_mut(&key) else {
            continue;
        };
        match rule {
            Rule::Petrel => {}
            Rule::Object(s) => walk(object(value, &field)?, s, &field)?,
            Rule::List(s) => {
                let Value::Array(items) = value else {
                    return Err(ConfigError::new(&field, "expected an array"));
                };
                for (i, item) in items.iter_mut().enumerate() {
                    let at = format!("{field}[{i}]");
                    walk(object(item, &at)?, s, &at)?;
                }
            }
            Rule::Default(accepted) => {
                if !is_default(value, accepted, &field)? {
                    let why = MISSING
                        .iter()
                        .find(|(name, _)| *name == field)
                        .map(|(_, why)| format!(": {why}"))
                        .unwrap_or_default();
                    return Err(ConfigError::new(
                        &field,
                        format!(
                            "not supported (petrel accepts only {}){why}",
                            describe(accepted)
                        ),
                    ));
                }
                m.remove(&key);
            }
            Rule::PciLayout => {
                if value.as_u64().is_none() {
                    return Err(ConfigError::new(&field, "expected an unsigned integer"));
                }
                m.remove(&key);
            }
            Rule::Renamed(map) => {
                let given = value.as_str().unwrap_or_default().to_string();
                match map.iter().find(|(ch, _)| *ch == given) {
                    Some((_, Some(petrel))) => *value = Value::String((*petrel).to_string()),
                    Some((_, None)) => {
                        return Err(ConfigError::new(
                            &field,
                            format!("{given} is not supported"),
                        ))
                    }
                    None => {
                        let names: Vec<&str> = map.iter().map(|(ch, _)| *ch).collect();
                        return Err(ConfigError::new(
                            &field,
                            format!("{value} is not one of {}", names.join(", ")),
                        ));
                    }
                }
            }
        }
    }
    Ok(())
}

fn object<'a>(v: &'a mut Value, field: &str) -> Result<&'a mut Map<String, Value>, ConfigError> {
    match v {
        Value::Object(m) => Ok(m),
        _ => Err(ConfigError::new(field, "expected an object")),
    }
}

/// True when `v` (not null) is one of `accepted`. An object is walked with its schema, which
/// fails naming the first nested field that is not at its default.
fn is_default(v: &mut Value, accepted: &[Dv], field: &str) -> Result<bool, ConfigError> {
    for dv in accepted {
        let hit = match (dv, &mut *v) {
            (Dv::Bool(b), Value::Bool(x)) => b == x,
            (Dv::U64(n), Value::Number(x)) => x.as_u64() == Some(*n),
            (Dv::Str(s), Value::String(x)) => s == x,
            (Dv::EmptyList, Value::Array(x)) => x.is_empty(),
            (Dv::Object(s), Value::Object(m)) => {
                walk(m, s, field)?;
                true
            }
            _ => false,
        };
        if hit {
            return Ok(true);
        }
    }
    Ok(false)
}

fn describe(accepted: &[Dv]) -> String {
    let mut out = vec!["null".to_string()];
    out.extend(accepted.iter().map(|dv| match dv {
        Dv::Bool(b) => b.to_string(),
        Dv::U64(n) => n.to_string(),
        Dv::Str(s) => format!("\"{s}\""),
        Dv::EmptyList => "[]".to_string(),
        Dv::Object(s) => format!("a {} with default fields", s.name),
    }));
    let last = out.pop().unwrap_or_default();
    if out.is_empty() {
        last
    } else {
        format!("{} or {last}", out.join(", "))
    }
}

/// Removes `key` and deserializes it, naming it in errors.
fn take<T: DeserializeOwned>(
    m: &mut Map<String, Value>,
    key: &str,
) -> Result<Option<T>, ConfigError> {
    m.remove(key)
        .map(|v| from_value_at(v, key, key))
        .transpose()
}

/// Removes the array `key` and deserializes each element, naming `key[i]` in errors.
fn take_list<T: DeserializeOwned>(
    m: &mut Map<String, Value>,
    key: &str,
) -> Result<Option<Vec<T>>, ConfigError> {
    let Some(v) = m.remove(key) else {
        return Ok(None);
    };
    let Value::Array(items) = v else {
        return Err(ConfigError::new(key, "expected an array"));
    };
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| {
            let at = format!("{key}[{i}]");
            from_value_at(item, &at, &at)
        })
        .collect::<Result<Vec<T>, _>>()
        .map(Some)
}
