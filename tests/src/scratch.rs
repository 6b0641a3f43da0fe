//! A scratch directory for a test: short (Unix socket paths are limited to 107 bytes), under
//! the system temporary directory, emptied when made and removed on drop.

use std::path::PathBuf;

/// `<tmp>/petrel-<name>-<pid>`, removed on drop.
pub struct ScratchDir(pub PathBuf);

impl ScratchDir {
    /// Makes `<tmp>/petrel-<name>-<pid>`, emptied.
    ///
    /// Panics (failing the test) when it cannot be created.
    pub fn new(name: &str) -> ScratchDir {
        let dir = std::env::temp_dir().join(format!("petrel-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        if let Err(e) = std::fs::create_dir_all(&dir) {
            panic!("cannot create {}: {e}", dir.display());
        }
        ScratchDir(dir)
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
