//! Landlock for a petrel serving an API: the paths arrive with `vm.create` (and `vm.add-*`),
//! so the main thread is restricted at the first boot (or restore, or received migration) of
//! a VM, before its vCPU
//! threads start (they inherit it), to that VM's files (see [`rules`]) plus the API socket's
//! directory and the log's.
//!
//! The API socket's directory is the VM's own working directory: petrel removes its socket
//! there at exit, and snapshots and serial/vsock files usually live there, so it keeps every
//! file right (put the socket in a private directory, which petrel already insists on for
//! world-writable ones). The API thread was started before and is not restricted: it only
//! reads and writes its sockets (and its seccomp filter forbids opening files).
//!
//! A restriction cannot be widened: a later VM in the same process (after `vm.delete`, or a
//! reboot with an edited config) may only use files the first one was allowed, and anything
//! else is refused with an error naming the path, before any open is tried.

use std::path::{Path, PathBuf};

use api::VmConfig;

use super::{restrict, rules, Rule, ABI1_ALL, REFER, TRUNCATE};

/// The restriction still to apply, or the one applied.
#[derive(Debug)]
pub struct Deferred {
    /// Rules added to every VM's: the socket's and the log's directories.
    extra: Vec<Rule>,
    log_file: Option<PathBuf>,
    /// The rules in force once applied.
    applied: Option<Vec<Rule>>,
}

/// `path`'s directory (`.` for a bare file name).
fn dir_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Whether `need` is within one of `have` (the same path, or under a directory of it, with
/// no right more).
fn covered(need: &Rule, have: &[Rule]) -> bool {
    have.iter()
        .any(|h| need.path.starts_with(&h.path) && need.access & !h.access == 0)
}

impl Deferred {
    /// A restriction to apply at the first boot, for a petrel whose API socket is at
    /// `socket` (a path; `None` for an inherited socket) and log at `log_file`.
    pub fn new(socket: Option<&Path>, log_file: Option<&Path>) -> Self {
        let all = ABI1_ALL | REFER | TRUNCATE;
        let extra = socket
            .map(|s| Rule {
                path: dir_of(s),
                access: all,
            })
            .into_iter()
            .collect();
        Deferred {
            extra,
            log_file: log_file.map(Path::to_path_buf),
            applied: None,
        }
    }

    /// The rules `cfg` needs here.
    pub fn rules_for(&self, cfg: &VmConfig) -> Vec<Rule> {
        let mut v = rules(cfg, self.log_file.as_deref());
        v.extend(self.extra.iter().cloned());
        v
    }

    /// Once applied: `cfg` must need nothing more than was allowed. The error names the
    /// path.
    pub fn check(&self, cfg: &VmConfig) -> Result<(), String> {
        let Some(have) = &self.applied else {
            return Ok(());
        };
        match self.rules_for(cfg).iter().find(|r| !covered(r, have)) {
            Some(r) => Err(format!(
                "landlock: {} is outside the files this petrel was limited to at its first \
                 boot; start a new petrel for this VM",
                r.path.display()
            )),
            None => Ok(()),
        }
    }

    /// Before `cfg` boots: the first time, restricts the calling thread to what it needs;
    /// afterwards, [`Deferred::check`]s it.
    pub fn before_boot(&mut self, cfg: &VmConfig) -> Result<(), String> {
        if self.applied.is_some() {
            return self.check(cfg);
        }
        let needed = self.rules_for(cfg);
        match restrict(&needed) {
            Ok(true) => log::info!(
                "landlock: main thread limited to the {} paths of this VM",
                needed.len()
            ),
            Ok(false) => log::warn!("landlock: not in this kernel; file access is not narrowed"),
            Err(e) => return Err(crate::error_chain(&e)),
        }
        self.applied = Some(needed);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::landlock::{READ_FILE, WRITE_FILE};

    #[test]
    fn a_later_config_must_stay_within_the_first() {
        let rule = |p: &str, access| Rule {
            path: p.into(),
            access,
        };
        let have = vec![rule("/vm/a", ABI1_ALL), rule("/k/vmlinux", READ_FILE)];
        assert!(covered(&rule("/vm/a/snap/x", WRITE_FILE), &have));
        assert!(covered(&rule("/k/vmlinux", READ_FILE), &have));
        assert!(!covered(&rule("/k/vmlinux", READ_FILE | WRITE_FILE), &have));
        assert!(!covered(&rule("/k/other", READ_FILE), &have));
        assert!(
            !covered(&rule("/vm/ab", READ_FILE), &have),
            "a prefix that is no parent"
        );
    }

    #[test]
    fn the_socket_directory_and_the_config_are_allowed() {
        let d = Deferred::new(Some(Path::new("/run/vm-a/api.sock")), None);
        let r = d.rules_for(&VmConfig::new("/k/vmlinux".into()));
        assert!(r
            .iter()
            .any(|r| r.path == Path::new("/run/vm-a") && r.access & WRITE_FILE != 0));
        assert!(r
            .iter()
            .any(|r| r.path == Path::new("/k/vmlinux") && r.access == READ_FILE));
    }
}
