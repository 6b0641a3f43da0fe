//! petrel's cgroup when petreld runs as root: `petrel/<vm id>` with the VM's limits.
//!
//! - cgroup v2 when `/sys/fs/cgroup` is a v2 hierarchy offering the `memory` and `cpu`
//!   controllers: `memory.max` = guest memory + [`OVERHEAD`], `cpu.max` = vCPUs × 100 ms per
//!   100 ms.
//! - else cgroup v1 when `/sys/fs/cgroup/memory` and `/sys/fs/cgroup/cpu` are mounted:
//!   `memory.limit_in_bytes` and `cpu.cfs_quota_us` / `cpu.cfs_period_us` alike.
//! - else nothing (logged once per VM start).
//!
//! petrel joins its groups between fork and exec (it writes `0` to `cgroup.procs`), so every
//! byte it allocates is charged. The groups are removed when the VM is deleted.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Memory allowed beyond the guest's: petrel itself, its devices' buffers, page tables.
pub const OVERHEAD: u64 = 128 << 20;

/// CPU accounting period, microseconds.
const PERIOD_US: u64 = 100_000;

/// The cgroup filesystem root.
const ROOT: &str = "/sys/fs/cgroup";

/// Which hierarchy petreld uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hierarchy {
    /// The unified hierarchy at this path.
    V2(PathBuf),
    /// v1 `memory` and `cpu` controllers at these mount points.
    V1 {
        /// The memory controller's mount.
        memory: PathBuf,
        /// The cpu controller's mount.
        cpu: PathBuf,
    },
}

/// The hierarchy to use on this host, if any.
pub fn detect() -> Option<Hierarchy> {
    let root = Path::new(ROOT);
    let controllers = std::fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
    let words: Vec<&str> = controllers.split_whitespace().collect();
    if words.contains(&"memory") && words.contains(&"cpu") {
        return Some(Hierarchy::V2(root.to_path_buf()));
    }
    let memory = root.join("memory");
    let cpu = root.join("cpu");
    if memory.join("memory.limit_in_bytes").is_file() && cpu.join("cpu.cfs_quota_us").is_file() {
        return Some(Hierarchy::V1 { memory, cpu });
    }
    None
}

/// The groups of one VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmCgroup {
    /// Its directories (one for v2, memory and cpu for v1).
    pub dirs: Vec<PathBuf>,
}

fn write(path: &Path, value: &str) -> Result<(), String> {
    std::fs::write(path, value).map_err(|e| format!("write {value:?} to {}: {e}", path.display()))
}

fn mkdir(path: &Path) -> Result<(), String> {
    match std::fs::create_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) => Err(format!("create {}: {e}", path.display())),
    }
}

/// The directories VM `id`'s groups have (or would have) in `h`.
pub fn dirs(h: &Hierarchy, id: &str) -> Vec<PathBuf> {
    match h {
        Hierarchy::V2(root) => vec![root.join("petrel").join(id)],
        Hierarchy::V1 { memory, cpu } => {
            vec![memory.join("petrel").join(id), cpu.join("petrel").join(id)]
        }
    }
}

/// Creates (or updates) VM `id`'s groups in `h` with the limits of `memory` bytes of guest
/// memory and `vcpus`.
pub fn create(h: &Hierarchy, id: &str, memory: u64, vcpus: u32) -> Result<VmCgroup, String> {
    let mem_max = (memory.saturating_add(OVERHEAD)).to_string();
    let quota = u64::from(vcpus.max(1)) * PERIOD_US;
    let d = dirs(h, id);
    match h {
        Hierarchy::V2(root) => {
            let parent = root.join("petrel");
            // The controllers must be enabled in every ancestor's subtree_control.
            let _ = write(&root.join("cgroup.subtree_control"), "+memory +cpu");
            mkdir(&parent)?;
            write(&parent.join("cgroup.subtree_control"), "+memory +cpu")?;
            mkdir(&d[0])?;
            write(&d[0].join("memory.max"), &mem_max)?;
            write(&d[0].join("cpu.max"), &format!("{quota} {PERIOD_US}"))?;
        }
        Hierarchy::V1 { .. } => {
            mkdir(&d[0])?;
            write(&d[0].join("memory.limit_in_bytes"), &mem_max)?;
            mkdir(&d[1])?;
            write(&d[1].join("cpu.cfs_period_us"), &PERIOD_US.to_string())?;
            write(&d[1].join("cpu.cfs_quota_us"), &quota.to_string())?;
        }
    }
    Ok(VmCgroup { dirs: d })
}

impl VmCgroup {
    /// The `cgroup.procs` files the child joins, as C strings made before the fork.
    pub fn procs_files(&self) -> Vec<CString> {
        self.dirs
            .iter()
            .filter_map(|d| CString::new(d.join("cgroup.procs").as_os_str().as_bytes()).ok())
            .collect()
    }
}

/// Moves the calling process into the groups whose `cgroup.procs` are `files`. Only
/// async-signal-safe calls: meant for `pre_exec`.
pub fn join_self(files: &[CString]) -> std::io::Result<()> {
    for f in files {
        // SAFETY: `f` is NUL-terminated; open/write/close are async-signal-safe and take
        // valid pointers of the lengths given.
        unsafe {
            let fd = libc::open(f.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let n = libc::write(fd, b"0".as_ptr().cast(), 1);
            let err = std::io::Error::last_os_error();
            libc::close(fd);
            if n != 1 {
                return Err(err);
            }
        }
    }
    Ok(())
}

/// Removes VM `id`'s groups (they must be empty: call after petrel exited). Best effort,
/// retried briefly while the kernel finishes the exit.
pub fn remove(h: &Hierarchy, id: &str) {
    for d in dirs(h, id) {
        if !d.exists() {
            continue;
        }
        for _ in 0..50 {
            if std::fs::remove_dir(&d).is_ok() || !d.exists() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        if d.exists() {
            log::warn!("cgroup {}: not removed (still in use?)", d.display());
        }
    }
}
