//! Landlock on the main thread: which files the thread that serves the devices may open,
//! where seccomp cannot look (a path is in memory). Applied when every path is known at start
//! (a VM from the command line or `--config-file`, or Firecracker's `--no-api --config-file`
//! with its log, metrics and `--metadata` files; no API socket that could name others later),
//! before the seccomp filters and before the vCPU threads, which inherit it.
//!
//! What remains open: the payload (read again at every reboot), the disks (read, and write
//! unless read-only; a qcow2 image's backing files read-only), `/dev/net/tun` with a tap, the serial output file, the directory of the
//! vsock socket (to create and remove it), and `/proc/meminfo` (the memory check). Everything
//! else fails with `EACCES`. Descriptors opened before (the log file, /dev/kvm) are not
//! affected.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use api::{SerialMode, VmConfig};

const EXECUTE: u64 = 1 << 0;
const WRITE_FILE: u64 = 1 << 1;
const READ_FILE: u64 = 1 << 2;
const REMOVE_FILE: u64 = 1 << 5;
const MAKE_REG: u64 = 1 << 8;
const MAKE_SOCK: u64 = 1 << 9;
/// Every right of ABI 1 (bits 0 to 12).
const ABI1_ALL: u64 = (1 << 13) - 1;
/// ABI 2: linking or renaming across directories.
const REFER: u64 = 1 << 13;
/// ABI 3: truncating.
const TRUNCATE: u64 = 1 << 14;

const CREATE_RULESET_VERSION: u32 = 1;
const RULE_PATH_BENEATH: libc::c_int = 1;

/// `struct landlock_ruleset_attr` (ABI 1: filesystem rights only).
#[repr(C)]
struct RulesetAttr {
    handled_access_fs: u64,
}

/// `struct landlock_path_beneath_attr` (packed in the kernel's headers).
#[repr(C, packed)]
struct PathBeneathAttr {
    allowed_access: u64,
    parent_fd: i32,
}

/// A path and what may be done at or under it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// A file, or a directory (the rights then hold for everything under it).
    pub path: PathBuf,
    /// Landlock access rights.
    pub access: u64,
}

/// Why the restriction could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum LandlockError {
    /// A path to allow could not be opened.
    #[error("landlock: {path}")]
    Path {
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A Landlock call failed.
    #[error("landlock: {op}")]
    Call {
        /// Which call.
        op: &'static str,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// The files `cfg`'s devices and payload need.
pub fn rules(cfg: &VmConfig, log_file: Option<&Path>) -> Vec<Rule> {
    let file = |path: &Path, access: u64| Rule {
        path: path.to_path_buf(),
        access,
    };
    let parent = |path: &Path| match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut v = vec![
        file(&cfg.payload.kernel, READ_FILE),
        file(Path::new("/proc/meminfo"), READ_FILE),
    ];
    if let Some(initramfs) = &cfg.payload.initramfs {
        v.push(file(initramfs, READ_FILE));
    }
    for d in cfg.disks.iter().flatten() {
        let access = if d.readonly {
            READ_FILE
        } else {
            // A qcow2 image grows (imago sets its length with ftruncate).
            READ_FILE | WRITE_FILE | TRUNCATE
        };
        v.push(file(&d.path, access));
        if d.backing_files {
            // A qcow2 image's backing chain, read-only. An image that cannot be read here
            // fails again, with its error, when the disk is opened.
            let chain = devices::virtio::block::backing_chain(&d.path);
            v.extend(chain.iter().map(|p| file(p, READ_FILE)));
        }
    }
    if cfg.net.iter().flatten().any(|n| n.tap.is_some()) {
        v.push(file(
            Path::new(devices::virtio::net::tap::TUN_DEVICE),
            READ_FILE | WRITE_FILE,
        ));
    }
    if let Some(rng) = &cfg.rng {
        v.push(file(&rng.src, READ_FILE));
    }
    if let (SerialMode::File, Some(path)) = (cfg.serial.mode, &cfg.serial.file) {
        // Created (or truncated) at boot, and copied to `<file>.1` when it reaches its size
        // cap (rotating_file.rs): the directory, for those files.
        v.push(file(
            &parent(path),
            MAKE_REG | READ_FILE | WRITE_FILE | TRUNCATE,
        ));
    }
    if let Some(log) = log_file {
        // The log rotates like the serial file.
        v.push(file(
            &parent(log),
            MAKE_REG | READ_FILE | WRITE_FILE | TRUNCATE,
        ));
    }
    if let Some(vsock) = &cfg.vsock {
        // A stale socket is removed and the listening one created.
        v.push(file(&parent(&vsock.socket), MAKE_SOCK | REMOVE_FILE));
    }
    v
}

/// A file that is only read (a `--metadata` file).
pub fn read_rule(path: &Path) -> Rule {
    Rule {
        path: path.to_path_buf(),
        access: READ_FILE,
    }
}

/// A file written or created (a log, a metrics file or FIFO): its directory, to create,
/// append to and truncate files there.
pub fn output_rule(path: &Path) -> Rule {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    Rule {
        path: dir,
        access: MAKE_REG | READ_FILE | WRITE_FILE | TRUNCATE,
    }
}

/// The Landlock ABI version of the running kernel, or `None` without Landlock.
pub fn abi_version() -> Option<u32> {
    // SAFETY: with the VERSION flag the call takes no attribute and returns the ABI version.
    let v = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<RulesetAttr>(),
            0usize,
            CREATE_RULESET_VERSION,
        )
    };
    u32::try_from(v).ok().filter(|&v| v > 0)
}

fn call_err(op: &'static str) -> LandlockError {
    LandlockError::Call {
        op,
        source: io::Error::last_os_error(),
    }
}

/// Restricts the calling thread (and the threads it creates afterwards) to `rules`. Returns
/// `Ok(false)` when the kernel has no Landlock.
pub fn restrict(rules: &[Rule]) -> Result<bool, LandlockError> {
    let Some(abi) = abi_version() else {
        return Ok(false);
    };
    let mut handled = ABI1_ALL;
    if abi >= 2 {
        handled |= REFER;
    }
    if abi >= 3 {
        handled |= TRUNCATE;
    }
    let attr = RulesetAttr {
        handled_access_fs: handled,
    };
    // SAFETY: `attr` is a valid ruleset attribute of the size given; the result is checked.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            &attr as *const RulesetAttr,
            std::mem::size_of::<RulesetAttr>(),
            0u32,
        )
    };
    if fd < 0 {
        return Err(call_err("landlock_create_ruleset"));
    }
    let fd = i32::try_from(fd).map_err(|_| call_err("landlock_create_ruleset"))?;
    // SAFETY: `fd` was just returned by the kernel and is owned by nobody else.
    let ruleset = unsafe { OwnedFd::from_raw_fd(fd) };
    for rule in rules {
        add_rule(&ruleset, rule, handled)?;
    }
    // SAFETY: prctl with these arguments only sets this thread's no_new_privs bit.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(call_err("PR_SET_NO_NEW_PRIVS"));
    }
    // SAFETY: restricts the calling thread with a valid ruleset descriptor.
    let rc = unsafe { libc::syscall(libc::SYS_landlock_restrict_self, ruleset.as_raw_fd(), 0u32) };
    if rc != 0 {
        return Err(call_err("landlock_restrict_self"));
    }
    Ok(true)
}

fn add_rule(ruleset: &OwnedFd, rule: &Rule, handled: u64) -> Result<(), LandlockError> {
    let path_err = |source| LandlockError::Path {
        path: rule.path.clone(),
        source,
    };
    let file = File::options()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_CLOEXEC)
        .open(&rule.path)
        .map_err(path_err)?;
    let is_dir = file.metadata().map_err(path_err)?.is_dir();
    // Rights that only mean something for directories are refused on a file.
    let file_rights = EXECUTE | WRITE_FILE | READ_FILE | TRUNCATE;
    let mut access = rule.access & handled;
    if !is_dir {
        access &= file_rights;
    }
    let attr = PathBeneathAttr {
        allowed_access: access,
        parent_fd: file.as_raw_fd(),
    };
    // SAFETY: `attr` is a valid path-beneath attribute whose descriptor is open for the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_landlock_add_rule,
            ruleset.as_raw_fd(),
            RULE_PATH_BENEATH,
            &attr as *const PathBeneathAttr,
            0u32,
        )
    };
    if rc != 0 {
        return Err(LandlockError::Path {
            path: rule.path.clone(),
            source: io::Error::last_os_error(),
        });
    }
    Ok(())
}

mod deferred;
pub use deferred::Deferred;

#[cfg(test)]
mod tests;
