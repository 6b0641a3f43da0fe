//! The two-file layout Firecracker's API names (`snapshot_path` + `mem_file_path`): a state
//! file and a memory file at paths the caller chooses, rather than a directory petrel names
//! the files in.
//!
//! - The state file is the directory layout's header (one line of JSON: format, version, the
//!   state's size and CRC-32, each RAM region's entry), a newline, then the state JSON the
//!   header vouches for. One file, so a client can move or copy it as it would Firecracker's.
//! - The memory file is guest RAM, region after region in address order (each entry's
//!   `offset` says where its region starts), sparse, with the same per-region checksums. The
//!   memory file may be moved: loading takes its path from the request, not from the header.
//!
//! Reading checks the same things as the directory layout (version, sizes, checksums, the RAM
//! layout) before anything of a VM is built.

use std::path::{Path, PathBuf};

use super::{
    check_state, io_err, memory, parse_header, FileEntry, Header, SnapshotError, VmSnapshot,
    FORMAT, VERSION,
};

fn name_of(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

/// Writes `state` to `state_path` and guest RAM to `mem_path`.
pub fn write(
    state_path: &Path,
    mem_path: &Path,
    state: &VmSnapshot,
    ram: &arch::GuestMemoryMmap,
) -> Result<Header, SnapshotError> {
    if state_path == mem_path {
        return Err(SnapshotError::Url(
            "the state file and the memory file must be two different paths".into(),
        ));
    }
    // An older state file would vouch for a memory file about to be replaced: remove it first,
    // so a snapshot cut short leaves no state file rather than a wrong one.
    match std::fs::remove_file(state_path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(io_err(format!("removing the old {}", state_path.display()))(e))
        }
        _ => {}
    }
    let memory = memory::save_one_file(ram, mem_path)?;
    let json = serde_json::to_vec(state)
        .map_err(|e| SnapshotError::Mismatch(format!("encoding the state: {e}")))?;
    let header = Header {
        format: FORMAT.into(),
        version: VERSION,
        petrel_version: env!("CARGO_PKG_VERSION").into(),
        state: FileEntry {
            file: name_of(state_path),
            size: json.len() as u64,
            crc32: crc32fast::hash(&json),
        },
        memory,
    };
    let mut text = serde_json::to_vec(&header)
        .map_err(|e| SnapshotError::Mismatch(format!("encoding the header: {e}")))?;
    text.push(b'\n');
    text.extend_from_slice(&json);
    let mut tmp = state_path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, &text).map_err(io_err(format!("writing {}", tmp.display())))?;
    std::fs::rename(&tmp, state_path).map_err(io_err(format!("renaming {}", tmp.display())))?;
    Ok(header)
}

/// The header of a state file (its first line), checked for format and version.
pub fn read_header(state_path: &Path) -> Result<Header, SnapshotError> {
    let bytes = std::fs::read(state_path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => SnapshotError::Missing(state_path.display().to_string()),
        _ => io_err(format!("reading {}", state_path.display()))(e),
    })?;
    let line = bytes.split(|&b| b == b'\n').next().unwrap_or(&[]);
    parse_header(line, &name_of(state_path))
}

/// Reads and checks a snapshot in the two-file layout; the memory file is checked region by
/// region, not read into memory.
pub fn read(state_path: &Path, mem_path: &Path) -> Result<(Header, VmSnapshot), SnapshotError> {
    let name = name_of(state_path);
    let bytes = std::fs::read(state_path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => SnapshotError::Missing(state_path.display().to_string()),
        _ => io_err(format!("reading {}", state_path.display()))(e),
    })?;
    let Some(newline) = bytes.iter().position(|&b| b == b'\n') else {
        return Err(SnapshotError::Garbled {
            file: name,
            reason: "it is not a petrel state file (no header line)".into(),
        });
    };
    let header = parse_header(&bytes[..newline], &name)?;
    let state = check_state(&header, &name, &bytes[newline + 1..])?;
    let mem_len: u64 = header.memory.iter().map(|m| m.size).sum();
    let mem_name = mem_path.display().to_string();
    let mut expected_offset = 0;
    for m in &header.memory {
        if m.offset != expected_offset {
            return Err(SnapshotError::Garbled {
                file: name,
                reason: format!(
                    "memory region at {:#x} starts at file offset {:#x}, not {expected_offset:#x}",
                    m.gpa, m.offset
                ),
            });
        }
        expected_offset += m.size;
        memory::verify_at(mem_path, &mem_name, m, mem_len)?;
    }
    Ok((header, state))
}

/// Maps guest RAM from the memory file (private, as the directory layout's).
pub fn map(
    mem_path: &Path,
    header: &Header,
    prefault: bool,
) -> Result<arch::GuestMemoryMmap, SnapshotError> {
    let located: Vec<_> = header
        .memory
        .iter()
        .map(|m| (mem_path.to_path_buf(), m))
        .collect();
    memory::map_at(&located, prefault)
}
