//! Checks of a VM config against this host before anything is built: the config's own
//! validation, the payload files readable, the memory no larger than the host's.

use std::fs::File;

use api::VmConfig;

use crate::{Error, Result};

/// Total host RAM in bytes, from /proc/meminfo.
pub fn host_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn check_readable(path: &std::path::Path, what: &str) -> Result<()> {
    let f = File::open(path).map_err(|e| Error::io(format!("{what} {}", path.display()), e))?;
    let meta = f
        .metadata()
        .map_err(|e| Error::io(format!("{what} {}", path.display()), e))?;
    if meta.is_dir() {
        return Err(Error::io(
            format!("{what} {}", path.display()),
            std::io::Error::other("is a directory"),
        ));
    }
    Ok(())
}

/// Checks the config against this host before anything is created.
pub fn check(cfg: &VmConfig) -> Result<()> {
    cfg.validate()?;
    check_readable(&cfg.payload.kernel, "kernel")?;
    if let Some(initramfs) = &cfg.payload.initramfs {
        check_readable(initramfs, "initramfs")?;
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
