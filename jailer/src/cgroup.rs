//! The jail's cgroups: `petrel-jailer/<id>` under each v1 controller named by a `--cgroup`
//! file (e.g. `pids.max` → `/sys/fs/cgroup/pids/petrel-jailer/<id>/pids.max`), or under the
//! v2 root with those controllers enabled. The jailer joins them before it forks, so petrel
//! is in them from its first instruction; they are removed when the jailer that waited for
//! petrel ends (a daemonized jail leaves them to its operator).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// The cgroup filesystem root.
pub const ROOT: &str = "/sys/fs/cgroup";
/// The parent group of every jail.
const PARENT: &str = "petrel-jailer";

fn err(path: &Path, what: &str, e: io::Error) -> String {
    format!("cgroup: {what} {}: {e}", path.display())
}

/// The hierarchy version on this host: 2 when the root is a unified hierarchy.
pub fn detect(root: &Path) -> u8 {
    if root.join("cgroup.controllers").is_file() {
        2
    } else {
        1
    }
}

fn controller(file: &str) -> &str {
    file.split('.').next().unwrap_or(file)
}

/// Creates the groups, writes the values, moves the calling process in. Returns the groups'
/// directories (for [`remove`]).
pub fn join(
    root: &Path,
    version: u8,
    id: &str,
    settings: &[(String, String)],
) -> Result<Vec<PathBuf>, String> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    if settings.is_empty() {
        return Ok(dirs);
    }
    let pid = std::process::id().to_string();
    if version == 2 {
        let parent = root.join(PARENT);
        fs::create_dir_all(&parent).map_err(|e| err(&parent, "create", e))?;
        for (file, _) in settings {
            let enable = format!("+{}", controller(file));
            for dir in [root, parent.as_path()] {
                let ctl = dir.join("cgroup.subtree_control");
                fs::write(&ctl, &enable)
                    .map_err(|e| err(&ctl, &format!("enable {enable} in"), e))?;
            }
        }
        dirs.push(parent.join(id));
    } else {
        for (file, _) in settings {
            let dir = root.join(controller(file)).join(PARENT).join(id);
            if !dirs.contains(&dir) {
                dirs.push(dir);
            }
        }
    }
    for dir in &dirs {
        fs::create_dir_all(dir).map_err(|e| err(dir, "create", e))?;
    }
    for (file, value) in settings {
        let dir = dirs
            .iter()
            .find(|d| version == 2 || d.starts_with(root.join(controller(file))))
            .ok_or_else(|| format!("cgroup: no group for {file}"))?;
        let path = dir.join(file);
        fs::write(&path, value).map_err(|e| err(&path, &format!("write {value:?} to"), e))?;
    }
    for dir in &dirs {
        let procs = dir.join("cgroup.procs");
        fs::write(&procs, &pid).map_err(|e| err(&procs, "join", e))?;
    }
    Ok(dirs)
}

/// Moves the calling process back to the root groups and removes `dirs` (best effort: a
/// group that still holds a process stays).
pub fn remove(root: &Path, version: u8, dirs: &[PathBuf]) {
    let pid = std::process::id().to_string();
    for dir in dirs {
        let top = if version == 2 {
            root.to_path_buf()
        } else {
            // <root>/<controller>/petrel-jailer/<id> → <root>/<controller>
            dir.parent()
                .and_then(Path::parent)
                .map(Path::to_path_buf)
                .unwrap_or_default()
        };
        let _ = fs::write(top.join("cgroup.procs"), &pid);
        let _ = fs::remove_dir(dir);
    }
}
