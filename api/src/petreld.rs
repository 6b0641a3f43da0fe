//! What petreld and its clients (petrelctl, tests) agree on besides the VM config: the
//! VM states and policies as their wire names, JSON merge patch, and petreld's default socket.
//! The records and requests themselves live with petreld (`petreld::model`).

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// What a caller asked the VM to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DesiredState {
    /// Running (or booting).
    Running,
    /// Paused.
    Paused,
    /// Not running.
    Stopped,
    /// Being deleted: the process is stopped and the record removed.
    Deleted,
}

/// What petreld last saw of the VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ObservedState {
    /// Recorded, never started.
    Created,
    /// petrel is being started and the VM booted.
    Starting,
    /// The guest runs.
    Running,
    /// The vCPUs are parked.
    Paused,
    /// Being stopped.
    Stopping,
    /// Not running (stopped by a caller or powered off by the guest).
    Stopped,
    /// petrel died or could not start; `exit_reason` says why.
    Failed,
    /// Being moved to another petreld (this one is the source).
    Migrating,
    /// Moved to another petreld, which runs it now (`exit_reason` names it); kept as a record.
    Migrated,
    /// Being received from another petreld (this one is the destination).
    Incoming,
}

/// When petreld starts a VM again by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    /// Never.
    #[default]
    Never,
    /// When its petrel process dies while the VM should run.
    OnFailure,
    /// Also when the guest powers itself off.
    Always,
}

/// Which hypervisor a VM asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HypervisorRequest {
    /// Whatever the host offers (MSHV only with the `mshv` gate on).
    #[default]
    Auto,
    /// KVM.
    Kvm,
    /// MSHV.
    Mshv,
}

macro_rules! text_enum {
    ($ty:ty { $($variant:ident = $text:literal),* $(,)? }) => {
        impl $ty {
            /// The wire name.
            pub fn as_str(self) -> &'static str {
                match self { $(<$ty>::$variant => $text),* }
            }
        }
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
        impl FromStr for $ty {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($text => Ok(<$ty>::$variant),)*
                    _ => Err(format!(
                        "'{s}' is not one of {}",
                        [$($text),*].join(", ")
                    )),
                }
            }
        }
    };
}

text_enum!(DesiredState { Running = "running", Paused = "paused", Stopped = "stopped", Deleted = "deleted" });
text_enum!(ObservedState {
    Created = "created",
    Starting = "starting",
    Running = "running",
    Paused = "paused",
    Stopping = "stopping",
    Stopped = "stopped",
    Failed = "failed",
    Migrating = "migrating",
    Migrated = "migrated",
    Incoming = "incoming",
});
text_enum!(RestartPolicy { Never = "never", OnFailure = "on-failure", Always = "always" });
text_enum!(HypervisorRequest { Auto = "auto", Kvm = "kvm", Mshv = "mshv" });

/// Every observed state, in a stable order (metrics, docs).
pub const OBSERVED_STATES: [ObservedState; 10] = [
    ObservedState::Created,
    ObservedState::Starting,
    ObservedState::Running,
    ObservedState::Paused,
    ObservedState::Stopping,
    ObservedState::Stopped,
    ObservedState::Failed,
    ObservedState::Migrating,
    ObservedState::Migrated,
    ObservedState::Incoming,
];

/// Applies a JSON merge patch (RFC 7386) to `target`.
pub fn merge_patch(target: &mut serde_json::Value, patch: &serde_json::Value) {
    let serde_json::Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = serde_json::Value::Object(serde_json::Map::new());
    }
    if let serde_json::Value::Object(map) = target {
        for (k, v) in patch {
            if v.is_null() {
                map.remove(k);
            } else {
                merge_patch(map.entry(k.clone()).or_insert(serde_json::Value::Null), v);
            }
        }
    }
}

/// petreld's default socket: `/run/petrel/petreld.sock` for root, else under
/// `$XDG_RUNTIME_DIR/petrel/` (or `/tmp/petrel-UID/` without it).
pub fn default_socket() -> PathBuf {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return PathBuf::from("/run/petrel/petreld.sock");
    }
    match std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
    {
        Some(d) => d.join("petrel/petreld.sock"),
        // SAFETY: getuid has no preconditions and cannot fail.
        None => PathBuf::from(format!("/tmp/petrel-{}/petreld.sock", unsafe {
            libc::getuid()
        })),
    }
}
