//! Room on the state disk for the operations that free space.
//!
//! A full state disk must not stop petreld from stopping, pausing or deleting VMs (deleting
//! is how an operator frees space), nor from starting again. petreld keeps a reserve file
//! ([`RESERVE_BYTES`] of zeros) next to its database; when free space falls under
//! [`LOW_WATER`] the reserve is removed, which gives SQLite room for its writes, and petreld
//! runs degraded: it refuses what would use more space (creating and starting VMs) with 507
//! until there is room to put the reserve back.

use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Size of the reserve file.
pub const RESERVE_BYTES: u64 = 4 << 20;
/// Free space under which the reserve is given up before a write.
pub const LOW_WATER: u64 = 1 << 20;

/// The reserve file of a state directory.
#[derive(Debug)]
pub struct Reserve {
    path: PathBuf,
}

impl Reserve {
    /// The reserve in `dir` (nothing is created yet).
    pub fn new(dir: &Path) -> Reserve {
        Reserve {
            path: dir.join("petreld.reserve"),
        }
    }

    /// Free bytes for petreld on the reserve's file system (`None` if unknown).
    pub fn free_bytes(&self) -> Option<u64> {
        let dir = self.path.parent()?;
        let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
        // SAFETY: an all-zero statvfs is a valid value for the call to overwrite.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: `c` is NUL-terminated and `st` is valid for writes.
        if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
            return None;
        }
        Some(st.f_bavail.saturating_mul(st.f_frsize))
    }

    /// Whether the reserve is in place (petreld is not degraded).
    pub fn held(&self) -> bool {
        std::fs::metadata(&self.path).is_ok_and(|m| m.len() >= RESERVE_BYTES)
    }

    /// Gives the reserve up when free space is under [`LOW_WATER`], before a write.
    pub fn make_room(&self) {
        if self.free_bytes().is_some_and(|f| f < LOW_WATER) {
            self.release();
        }
    }

    /// Removes the reserve file (after a write failed for want of space, or to make room).
    pub fn release(&self) {
        if std::fs::remove_file(&self.path).is_ok() {
            log::error!(
                "state disk full: released the {} MiB reserve; petreld is degraded (creating \
                 and starting VMs refused until there is room again; stop, pause and delete \
                 work)",
                RESERVE_BYTES >> 20
            );
        }
    }

    /// Puts the reserve (back) in place if there is room for it and some to spare. Returns
    /// whether it is held.
    pub fn ensure(&self) -> bool {
        if self.held() {
            return true;
        }
        let room = self
            .free_bytes()
            .is_some_and(|f| f >= RESERVE_BYTES + 2 * LOW_WATER);
        if !room {
            return false;
        }
        let written = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o600)
            .open(&self.path)
            .and_then(|mut f| {
                let zeros = vec![0u8; 64 << 10];
                for _ in 0..RESERVE_BYTES / zeros.len() as u64 {
                    f.write_all(&zeros)?;
                }
                f.sync_all()
            });
        match written {
            Ok(()) => {
                log::info!("state disk: {} MiB reserve in place", RESERVE_BYTES >> 20);
                true
            }
            Err(e) => {
                let _ = std::fs::remove_file(&self.path);
                log::warn!("state disk: cannot write the reserve: {e}");
                false
            }
        }
    }
}

/// Whether `e` says the disk is full.
pub fn is_disk_full(e: &rusqlite::Error) -> bool {
    match e {
        rusqlite::Error::SqliteFailure(f, _) => matches!(
            f.code,
            rusqlite::ErrorCode::DiskFull | rusqlite::ErrorCode::SystemIoFailure
        ),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reserve_is_written_whole_and_released() {
        let dir = std::env::temp_dir().join(format!("pd-reserve-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let r = Reserve::new(&dir);
        assert!(!r.held());
        assert!(r.ensure(), "room in {}", dir.display());
        assert!(r.held());
        assert_eq!(
            std::fs::metadata(dir.join("petreld.reserve"))
                .unwrap()
                .len(),
            RESERVE_BYTES
        );
        r.release();
        assert!(!r.held());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
