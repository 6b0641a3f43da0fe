//! Checks of a VM config against this host before anything is built: the config's own
//! validation, the payload files readable, the memory no larger than the host's.

use std::os::unix::fs::FileTypeExt;
use std::path::Path;

use api::VmConfig;

use crate::{Error, Result};

/// Total host RAM in bytes, from /proc/meminfo.
pub fn host_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// A payload file must be a regular file we can open; the open never blocks (a FIFO named
/// as a kernel must not hang the thread that serves the API).
fn check_readable(path: &Path, what: &str) -> Result<()> {
    arch::loader::open_regular(path)
        .map(drop)
        .map_err(|e| Error::io(format!("{what} {}", path.display()), e))
}

/// A disk image that exists must be a regular file or a block device; checked with `stat`,
/// which never blocks, so a FIFO is refused before the device opens it on the event loop. A
/// missing image is left to boot (it may be created in between, as Cloud Hypervisor allows).
fn check_disk(path: &Path, field: &str) -> Result<()> {
    let meta = match std::fs::metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io(format!("{field} {}", path.display()), e)),
    };
    let kind = meta.file_type();
    if kind.is_file() || kind.is_block_device() {
        return Ok(());
    }
    Err(api::ConfigError::new(
        field,
        format!(
            "{} is neither a regular file nor a block device",
            path.display()
        ),
    )
    .into())
}

/// Checks the config against this host before anything is created.
pub fn check(cfg: &VmConfig) -> Result<()> {
    cfg.validate()?;
    check_readable(&cfg.payload.kernel, "kernel")?;
    if let Some(initramfs) = &cfg.payload.initramfs {
        check_readable(initramfs, "initramfs")?;
    }
    for (i, disk) in cfg.disks.iter().flatten().enumerate() {
        check_disk(&disk.path, &format!("disks[{i}].path"))?;
    }
    if let Some(host) = host_memory() {
        if cfg.memory.size > host {
            return Err(api::ConfigError::new(
                "memory.size",
                format!(
                    "{} MiB is more than the host's {} MiB",
                    cfg.memory.size >> 20,
                    host >> 20
                ),
            )
            .into());
        }
    }
    Ok(())
}
