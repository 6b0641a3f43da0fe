//! Fuzzes the readers of a saved or moving VM, which a restore or a migration receiver runs
//! on bytes someone else wrote:
//! - mode 0: the live-migration stream (`vmm::migration::receive`: magic, version, config,
//!   memory runs, state, end) read from a real Unix socket;
//! - mode 1: a snapshot directory (`vmm::snapshot::read`: `snapshot.json`, the state file,
//!   the memory files), written to a scratch directory. With bit 1 of the mode byte the
//!   target fixes the state file's size and CRC in the header (a fuzzer cannot compute a
//!   CRC-32), so the state's JSON is reached too.
//!
//! Input: byte 0 the mode; mode 1 then has a 2-byte length + `snapshot.json`, a 2-byte
//! length + the state file (written under the name the header gives, if plain), and the rest
//! is written at the start of each memory file the header lists (each made sparse at its
//! listed size, up to 1 GiB).
//!
//! Invariants checked:
//! - no panic, for any bytes;
//! - the receiver's check sees every config before memory is allocated for it, and memory is
//!   never allocated beyond what the check allowed (here: at most 64 MiB);
//! - a received VM's memory is the size its state's config says (config and state agree);
//! - a read snapshot's state has one vCPU state per vCPU and memory files matching its RAM
//!   layout.
#![no_main]

use std::cell::Cell;
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

/// The largest guest the receiver's check lets in (keeps each run fast).
const MAX_MEMORY: u64 = 64 << 20;

fn migration(stream: &[u8]) {
    let Ok((mut rx, mut tx)) = UnixStream::pair() else {
        return;
    };
    // The socket buffer holds a fuzz input (max_len is a few KiB).
    if tx.write_all(stream).is_err() {
        return;
    }
    drop(tx);
    let allowed = Cell::new(None);
    let check = |cfg: &api::VmConfig| {
        if cfg.memory.size > MAX_MEMORY {
            return Err(format!("{} bytes of memory", cfg.memory.size));
        }
        allowed.set(Some(cfg.memory.size));
        Ok(())
    };
    if let Ok((memory, state)) = vmm::migration::receive(&mut rx, &check) {
        let size: u64 = memory.iter().map(|r| r.len()).sum();
        let want = allowed.get().expect("memory was allocated without a checked config");
        assert_eq!(size, want, "memory of another size than the checked config's");
        assert_eq!(
            state.config.memory.size, size,
            "the state's config and the memory sent disagree"
        );
    }
}

fn scratch() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = std::env::temp_dir().join(format!("petrel-fuzz-snapshot-{}", std::process::id()));
        std::fs::create_dir_all(&d).expect("scratch directory");
        d
    })
}

fn take<'a>(data: &mut &'a [u8]) -> Option<&'a [u8]> {
    let [a, b, rest @ ..] = *data else {
        return None;
    };
    let n = usize::from(u16::from_le_bytes([*a, *b]));
    let part = rest.get(..n)?;
    *data = &rest[n..];
    Some(part)
}

fn plain(name: &str) -> bool {
    !name.is_empty() && !name.contains('/') && name != "." && name != ".."
}

fn snapshot(mut data: &[u8], fix_crc: bool) {
    let (Some(header), Some(state)) = (take(&mut data), take(&mut data)) else {
        return;
    };
    let memory = data;
    let dir = scratch();
    let _ = std::fs::remove_dir_all(dir);
    if std::fs::create_dir_all(dir).is_err() {
        return;
    }
    let mut header: Vec<u8> = header.to_vec();
    let parsed: Option<serde_json::Value> = serde_json::from_slice(&header).ok();
    let state_name = parsed
        .as_ref()
        .and_then(|h| h["state"]["file"].as_str())
        .filter(|n| plain(n))
        .unwrap_or("state.json")
        .to_string();
    if let (true, Some(mut h)) = (fix_crc, parsed.clone()) {
        if h["state"].is_object() {
            h["state"]["size"] = serde_json::json!(state.len());
            h["state"]["crc32"] = serde_json::json!(crc32fast::hash(state));
            header = serde_json::to_vec(&h).unwrap_or(header);
        }
    }
    let _ = std::fs::write(dir.join(vmm::snapshot::HEADER_FILE), &header);
    let _ = std::fs::write(dir.join(&state_name), state);
    let files = parsed
        .as_ref()
        .and_then(|h| h["memory"].as_array().cloned())
        .unwrap_or_default();
    for m in files.iter().take(4) {
        let (Some(name), Some(size)) = (m["file"].as_str(), m["size"].as_u64()) else {
            continue;
        };
        if !plain(name) || size > 1 << 30 {
            continue;
        }
        if let Ok(f) = std::fs::File::create(dir.join(name)) {
            let _ = f.set_len(size);
            let n = memory.len().min(size as usize);
            let _ = std::os::unix::fs::FileExt::write_all_at(&f, &memory[..n], 0);
        }
    }
    if let Ok(loaded) = vmm::snapshot::read(dir) {
        let cfg = &loaded.state.config;
        assert_eq!(loaded.state.vcpus.len() as u64, u64::from(cfg.cpus.boot_vcpus));
        let listed: Vec<(u64, u64)> = loaded.header.memory.iter().map(|m| (m.gpa, m.size)).collect();
        assert_eq!(listed, arch::ram_ranges(cfg.memory.size));
    }
}

fuzz_target!(|data: &[u8]| {
    let [mode, rest @ ..] = data else {
        return;
    };
    match mode & 1 {
        0 => migration(rest),
        _ => snapshot(rest, mode & 2 != 0),
    }
});
