//! Snapshots: a VM's whole state in a directory, and reading it back.
//!
//! Layout (see `docs/snapshot.md`): `snapshot.json` (the header: format name and version,
//! petrel's version, and for every other file its name, size and CRC-32), `state.json` (the
//! config, every vCPU, the interrupt controllers and clock, every device) and one sparse
//! `memory-N.bin` per RAM region. The header is written last (through a rename), so an
//! interrupted snapshot has none and is refused as incomplete. Reading checks the version
//! first, then every size and checksum, before anything of a VM is built: a damaged snapshot
//! is an error naming the file, never a half-restored VM.

pub mod memory;
pub mod two_files;

use std::path::{Path, PathBuf};

use api::VmConfig;
use devices::i8042::I8042Snapshot;
use devices::rtc::RtcSnapshot;
use devices::serial::SerialSnapshot;
use devices::virtio::state::TransportState;
use hypervisor::{PlatformState, VcpuState};
use serde::{Deserialize, Serialize};

pub use memory::MemoryFile;

/// The format's name in the header.
pub const FORMAT: &str = "petrel-snapshot";
/// The format version this petrel writes and reads.
pub const VERSION: u32 = 1;
/// The header's file name.
pub const HEADER_FILE: &str = "snapshot.json";
/// The state's file name.
pub const STATE_FILE: &str = "state.json";

/// Why a snapshot cannot be written or read.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The URL is not `file:///absolute/dir`.
    #[error("{0}")]
    Url(String),
    /// A file of the snapshot is missing.
    #[error("the snapshot has no {0} (not a snapshot, or an incomplete one)")]
    Missing(String),
    /// The snapshot was written in another format version.
    #[error("snapshot format version {found}; this petrel reads version {VERSION}")]
    Version {
        /// The version in the header.
        found: u64,
    },
    /// A file does not parse.
    #[error("{file} is damaged: {reason}")]
    Garbled {
        /// Which file.
        file: String,
        /// What the parser said.
        reason: String,
    },
    /// A file has another size than the header says.
    #[error("{file} is {actual} bytes, the header says {expected} (truncated or damaged)")]
    Size {
        /// Which file.
        file: String,
        /// Size in the header.
        expected: u64,
        /// Size on disk.
        actual: u64,
    },
    /// A file's checksum does not match the header's.
    #[error("{file} is damaged: its checksum does not match the header's")]
    Checksum {
        /// Which file.
        file: String,
    },
    /// The snapshot does not fit this petrel or host.
    #[error("{0}")]
    Mismatch(String),
    /// Collecting the vCPUs' states failed.
    #[error("saving the vCPUs")]
    Vcpus(#[source] crate::vcpu::SaveError),
    /// The hypervisor refused to save or restore state.
    #[error("{what}")]
    Hypervisor {
        /// What was attempted.
        what: String,
        /// Why.
        #[source]
        source: hypervisor::Error,
    },
    /// A device refused its saved state.
    #[error("device {device}: {reason}")]
    Device {
        /// Which device.
        device: String,
        /// Why.
        reason: String,
    },
    /// A file operation failed.
    #[error("{what}")]
    Io {
        /// What was attempted.
        what: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

impl SnapshotError {
    /// Whether the caller's input (the snapshot or URL) is at fault, rather than petrel or the
    /// host.
    pub fn is_bad_input(&self) -> bool {
        matches!(
            self,
            SnapshotError::Url(_)
                | SnapshotError::Missing(_)
                | SnapshotError::Version { .. }
                | SnapshotError::Garbled { .. }
                | SnapshotError::Size { .. }
                | SnapshotError::Checksum { .. }
                | SnapshotError::Mismatch(_)
                | SnapshotError::Device { .. }
        )
    }
}

/// Maps an OS error to [`SnapshotError::Io`] naming what was attempted.
pub(crate) fn io_err(what: String) -> impl FnOnce(std::io::Error) -> SnapshotError {
    move |source| SnapshotError::Io { what, source }
}

/// The directory a `file:///dir` URL names.
pub fn dir_from_url(field: &str, url: &str) -> Result<PathBuf, SnapshotError> {
    match url.strip_prefix("file://") {
        Some(path) if path.starts_with('/') => Ok(PathBuf::from(path)),
        _ => Err(SnapshotError::Url(format!(
            "{field}: '{url}' is not a file:///absolute/path URL"
        ))),
    }
}

/// One file the header vouches for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Name inside the directory.
    pub file: String,
    /// Size in bytes.
    pub size: u64,
    /// CRC-32 of the whole file.
    pub crc32: u32,
}

/// `snapshot.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Header {
    /// Always [`FORMAT`].
    pub format: String,
    /// The format version ([`VERSION`]).
    pub version: u32,
    /// The petrel that wrote it.
    pub petrel_version: String,
    /// `state.json`.
    pub state: FileEntry,
    /// One file per RAM region.
    pub memory: Vec<MemoryFile>,
}

/// The legacy devices.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LegacyState {
    /// COM1.
    pub serial: SerialSnapshot,
    /// The CMOS RTC.
    pub rtc: RtcSnapshot,
    /// The i8042 controller.
    pub i8042: I8042Snapshot,
}

/// One virtio device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VirtioState {
    /// Its name (`disk0`, `rng` …), checked against the rebuilt device.
    pub name: String,
    /// Transport registers, features, queues and config space.
    pub transport: TransportState,
    /// The budgets of the device's rate limiters, in the device's order (disk: one; net: rx,
    /// tx); absent in snapshots of devices without limiters.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub limiters: Vec<devices::rate_limiter::RateLimiterState>,
}

/// `state.json`: everything but memory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmSnapshot {
    /// The VM's config (devices are rebuilt from it).
    pub config: VmConfig,
    /// Every vCPU, by id.
    pub vcpus: Vec<VcpuState>,
    /// Interrupt controllers and clock.
    pub platform: PlatformState,
    /// Legacy devices.
    pub legacy: LegacyState,
    /// Virtio devices in slot order.
    pub virtio: Vec<VirtioState>,
    /// What the API front end that took the snapshot keeps of the VM beyond its config
    /// (Firecracker's dialect: its configuration pieces, for `GET /vm/config` and
    /// `PATCH /drives` after a load); opaque to the core.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub front_end: Option<serde_json::Value>,
}

/// Writes a snapshot of `state` and `memory` into `dir` (created if missing).
pub fn write(
    dir: &Path,
    state: &VmSnapshot,
    ram: &arch::GuestMemoryMmap,
) -> Result<Header, SnapshotError> {
    std::fs::create_dir_all(dir).map_err(io_err(format!("creating {}", dir.display())))?;
    // An older header would vouch for files about to be replaced: remove it first.
    match std::fs::remove_file(dir.join(HEADER_FILE)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(io_err(format!("removing the old {HEADER_FILE}"))(e))
        }
        _ => {}
    }
    let memory = memory::save(ram, dir)?;
    let json = serde_json::to_vec(state)
        .map_err(|e| SnapshotError::Mismatch(format!("encoding the state: {e}")))?;
    let state_path = dir.join(STATE_FILE);
    std::fs::write(&state_path, &json)
        .map_err(io_err(format!("writing {}", state_path.display())))?;
    let header = Header {
        format: FORMAT.into(),
        version: VERSION,
        petrel_version: env!("CARGO_PKG_VERSION").into(),
        state: FileEntry {
            file: STATE_FILE.into(),
            size: json.len() as u64,
            crc32: crc32fast::hash(&json),
        },
        memory,
    };
    let text = serde_json::to_vec_pretty(&header)
        .map_err(|e| SnapshotError::Mismatch(format!("encoding the header: {e}")))?;
    let tmp = dir.join(format!("{HEADER_FILE}.tmp"));
    std::fs::write(&tmp, &text).map_err(io_err(format!("writing {}", tmp.display())))?;
    std::fs::rename(&tmp, dir.join(HEADER_FILE))
        .map_err(io_err(format!("renaming {}", tmp.display())))?;
    Ok(header)
}

fn read_file(dir: &Path, name: &str) -> Result<Vec<u8>, SnapshotError> {
    let path = dir.join(name);
    std::fs::read(&path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => SnapshotError::Missing(name.to_string()),
        _ => io_err(format!("reading {}", path.display()))(e),
    })
}

/// Reads and checks the header: format, version, then the full structure.
pub fn read_header(dir: &Path) -> Result<Header, SnapshotError> {
    parse_header(&read_file(dir, HEADER_FILE)?, HEADER_FILE)
}

/// Parses a header (the bytes of the file `file`): format, version, then the full structure.
pub(crate) fn parse_header(bytes: &[u8], file: &str) -> Result<Header, SnapshotError> {
    let garbled = |reason: String| SnapshotError::Garbled {
        file: file.into(),
        reason,
    };
    let raw: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| garbled(e.to_string()))?;
    if raw.get("format").and_then(|f| f.as_str()) != Some(FORMAT) {
        return Err(garbled(format!("its format is not \"{FORMAT}\"")));
    }
    match raw.get("version").and_then(|v| v.as_u64()) {
        Some(v) if v == u64::from(VERSION) => {}
        Some(found) => return Err(SnapshotError::Version { found }),
        None => return Err(garbled("it has no version".into())),
    }
    serde_json::from_value(raw).map_err(|e| garbled(e.to_string()))
}

/// A snapshot read and checked, ready to be restored.
pub struct Loaded {
    /// Its directory.
    pub dir: PathBuf,
    /// The header.
    pub header: Header,
    /// The state.
    pub state: VmSnapshot,
}

/// Reads a snapshot and checks every file against the header.
pub fn read(dir: &Path) -> Result<Loaded, SnapshotError> {
    let header = read_header(dir)?;
    if header.state.file.contains('/') {
        return Err(SnapshotError::Garbled {
            file: HEADER_FILE.into(),
            reason: format!(
                "state file name '{}' is not a plain name",
                header.state.file
            ),
        });
    }
    let bytes = read_file(dir, &header.state.file)?;
    let state = check_state(&header, &header.state.file, &bytes)?;
    for m in &header.memory {
        if m.file.contains('/') {
            return Err(SnapshotError::Garbled {
                file: HEADER_FILE.into(),
                reason: format!("memory file name '{}' is not a plain name", m.file),
            });
        }
        memory::verify(dir, m)?;
    }
    Ok(Loaded {
        dir: dir.to_path_buf(),
        header,
        state,
    })
}

/// Checks the state's bytes (`file` in errors) against the header, parses them, and checks
/// they fit the memory files the header lists.
pub(crate) fn check_state(
    header: &Header,
    file: &str,
    bytes: &[u8],
) -> Result<VmSnapshot, SnapshotError> {
    if bytes.len() as u64 != header.state.size {
        return Err(SnapshotError::Size {
            file: file.to_string(),
            expected: header.state.size,
            actual: bytes.len() as u64,
        });
    }
    if crc32fast::hash(bytes) != header.state.crc32 {
        return Err(SnapshotError::Checksum {
            file: file.to_string(),
        });
    }
    let state: VmSnapshot = serde_json::from_slice(bytes).map_err(|e| SnapshotError::Garbled {
        file: file.to_string(),
        reason: e.to_string(),
    })?;
    let ranges = arch::ram_ranges(state.config.memory.size);
    let listed: Vec<(u64, u64)> = header.memory.iter().map(|m| (m.gpa, m.size)).collect();
    if listed != ranges {
        return Err(SnapshotError::Mismatch(format!(
            "the memory files {listed:x?} do not match the RAM layout of a {} MiB VM",
            state.config.memory.size >> 20
        )));
    }
    if state.vcpus.len() as u64 != u64::from(state.config.cpus.boot_vcpus) {
        return Err(SnapshotError::Mismatch(format!(
            "{} vCPU states for a VM of {} vCPUs",
            state.vcpus.len(),
            state.config.cpus.boot_vcpus
        )));
    }
    Ok(state)
}
