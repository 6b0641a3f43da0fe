//! The bodies of `vm.snapshot`, `vm.restore`, `vm.send-migration` and `vm.receive-migration`:
//! Cloud Hypervisor's schemas (with the fields `ch-remote` sends) and the typed requests.

use serde::{Deserialize, Serialize};

use super::{parse_as, ConfigError, Dv, Rule, Schema, FALSE, NO_LIST, NULL};

/// `vm.snapshot`'s body.
pub static SNAPSHOT: Schema = Schema {
    name: "VmSnapshotConfig",
    fields: &[("destination_url", Rule::Petrel)],
};

/// `vm.restore`'s body. petrel always maps the memory files on demand (copy-on-write), which
/// serves either memory restore mode.
pub static RESTORE: Schema = Schema {
    name: "RestoreConfig",
    fields: &[
        ("source_url", Rule::Petrel),
        ("prefault", Rule::Petrel),
        ("resume", Rule::Petrel),
        ("serial_file", Rule::Petrel),
        (
            "memory_restore_mode",
            Rule::Default(&[Dv::Str("Copy"), Dv::Str("OnDemand")]),
        ),
        ("zone_updates", NO_LIST),
        // New tap descriptors for interfaces saved as descriptors (SCM_RIGHTS, in order).
        ("net_fds", Rule::Petrel),
        // Sent by ch-remote (descriptors for restored devices): only without descriptors.
        ("vfio_fds", NULL),
        ("iommufd_fd", NULL),
    ],
};

/// `vm.receive-migration`'s body.
pub static RECEIVE_MIGRATION: Schema = Schema {
    name: "ReceiveMigrationData",
    fields: &[
        ("receiver_url", Rule::Petrel),
        ("serial_file", Rule::Petrel),
        ("tls_dir", NULL),
        ("memory_mode", Rule::Default(&[Dv::Str("Precopy")])),
        ("zone_updates", NO_LIST),
        // Sent by ch-remote: only without descriptors.
        ("vfio_fds", NULL),
        ("iommufd_fd", NULL),
    ],
};

/// `vm.send-migration`'s body. `local` is accepted and memory is copied either way.
pub static SEND_MIGRATION: Schema = Schema {
    name: "SendMigrationData",
    fields: &[
        ("destination_url", Rule::Petrel),
        ("local", Rule::Petrel),
        // Sent by ch-remote: the source always ends once the destination runs the VM.
        ("preserve_source", FALSE),
        ("downtime_ms", Rule::Default(&[Dv::U64(300)])),
        ("timeout_s", Rule::Default(&[Dv::U64(3600)])),
        ("timeout_strategy", Rule::Default(&[Dv::Str("Cancel")])),
        ("connections", Rule::Default(&[Dv::U64(1)])),
        ("tls_dir", NULL),
        ("memory_mode", Rule::Default(&[Dv::Str("Precopy")])),
    ],
};

/// `vm.snapshot`: where to write the snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmSnapshot {
    /// `file:///dir`.
    pub destination_url: String,
}

/// `vm.restore`: which snapshot, and how.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmRestore {
    /// `file:///dir`.
    pub source_url: String,
    /// Fault every page of guest memory in before the VM runs.
    #[serde(default)]
    pub prefault: bool,
    /// Resume the VM at once (otherwise it stays Paused until `vm.resume`).
    #[serde(default)]
    pub resume: bool,
    /// petrel's extension: a serial port saved in `File` mode writes to this file instead of
    /// the saved one (petreld restores a VM under another directory).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial_file: Option<std::path::PathBuf>,
    /// New tap descriptors for the interfaces saved as descriptors (`net[].fds`), which did not
    /// outlive their process: the descriptors come with the request (SCM_RIGHTS), `num_fds`
    /// of them per entry, in order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub net_fds: Option<Vec<RestoredNet>>,
}

/// One entry of `vm.restore`'s `net_fds` (Cloud Hypervisor's `RestoredNetConfig`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestoredNet {
    /// The interface's id (`net[].id`, or `netN` for the N-th interface without one).
    pub id: String,
    /// How many of the request's descriptors are this interface's (petrel: 1).
    #[serde(default = "one")]
    pub num_fds: usize,
    /// Descriptor numbers: set from those received with the request (numbers in the body
    /// are not used).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fds: Option<Vec<i32>>,
}

fn one() -> usize {
    1
}

/// `vm.receive-migration`: where to wait for the VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmReceiveMigration {
    /// `unix:/path`.
    pub receiver_url: String,
    /// petrel's extension: a serial port received in `File` mode writes to this file instead
    /// of the source's (petreld's destination keeps it in its own VM directory).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial_file: Option<std::path::PathBuf>,
}

/// `vm.send-migration`: where to send the VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmSendMigration {
    /// `unix:/path`.
    pub destination_url: String,
    /// Same host (petrel copies memory either way).
    #[serde(default)]
    pub local: bool,
}

/// Parses a `vm.receive-migration` body.
pub fn receive_migration_from_ch(body: &[u8]) -> Result<VmReceiveMigration, ConfigError> {
    parse_as(body, &RECEIVE_MIGRATION)
}

/// Parses a `vm.send-migration` body.
pub fn send_migration_from_ch(body: &[u8]) -> Result<VmSendMigration, ConfigError> {
    parse_as(body, &SEND_MIGRATION)
}

/// Parses a `vm.snapshot` body.
pub fn snapshot_from_ch(body: &[u8]) -> Result<VmSnapshot, ConfigError> {
    parse_as(body, &SNAPSHOT)
}

/// Parses a `vm.restore` body.
pub fn restore_from_ch(body: &[u8]) -> Result<VmRestore, ConfigError> {
    parse_as(body, &RESTORE)
}
