//! What the VM state machine answers: its states, the typed replies to requests and the typed
//! errors. HTTP status codes are not known here: the API server maps [`ErrorKind`] to them.

use std::fmt;

use api::VmConfig;
use hypervisor::{Kind, Selection};

use crate::Error;

/// Where the VM is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmState {
    /// No VM has been created.
    NotCreated,
    /// A config is set; not booted yet.
    Created,
    /// vCPUs are running.
    Running,
    /// vCPUs are parked; devices keep being served.
    Paused,
    /// Stopped by the guest or a caller; can be booted again.
    Shutdown,
}

impl fmt::Display for VmState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            VmState::NotCreated => "NotCreated",
            VmState::Created => "Created",
            VmState::Running => "Running",
            VmState::Paused => "Paused",
            VmState::Shutdown => "Shutdown",
        })
    }
}

/// Why the VM's last boot ended (`vm.info`'s `end_reason`), so that a supervisor can tell a
/// guest that chose to stop from one that crashed or a VMM failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    /// The guest powered off (ACPI S5, the power-off port).
    PowerOff,
    /// The guest reset and `--no-reboot` was given.
    Reset,
    /// The guest triple-faulted.
    TripleFault,
    /// petrel failed to run the guest (a vCPU could not be prepared or run).
    InternalError,
    /// A caller's `vm.shutdown`.
    Shutdown,
}

impl EndReason {
    /// Whether the VM ended by failure (what `restart: on-failure` restarts).
    pub fn is_failure(self) -> bool {
        matches!(self, EndReason::TripleFault | EndReason::InternalError)
    }
}

impl fmt::Display for EndReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EndReason::PowerOff => "poweroff",
            EndReason::Reset => "reset",
            EndReason::TripleFault => "triple-fault",
            EndReason::InternalError => "internal-error",
            EndReason::Shutdown => "shutdown",
        })
    }
}

/// The kinds of refusal and failure a caller sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// What the request names does not exist (no VM, no such device).
    NotFound,
    /// Not allowed in the VM's current state.
    Conflict,
    /// The request, or the config it leads to, is invalid.
    Invalid,
    /// petrel failed to do what was asked.
    Internal,
}

/// A refused or failed operation.
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    /// Not allowed in the VM's state (`NotCreated`: there is no VM).
    #[error("{op}: not allowed while the VM is {state}")]
    State {
        /// The operation (`vm.pause`).
        op: &'static str,
        /// The VM's state.
        state: VmState,
    },
    /// A config change once the VM runs, which would need device hotplug.
    #[error(
        "{op}: not allowed while the VM is {state} (hotplug needs virtio-pci, which petrel does \
         not have yet)"
    )]
    Hotplug {
        /// The operation (`vm.add-disk`).
        op: &'static str,
        /// The VM's state.
        state: VmState,
    },
    /// `vm.remove-device` names an id no device has.
    #[error("vm.remove-device: no device with id '{id}'")]
    NoSuchDevice {
        /// The id asked for.
        id: String,
    },
    /// The request or the config it leads to is invalid; the message names the field.
    #[error("{0}")]
    Invalid(String),
    /// Building or booting the VM failed.
    #[error(transparent)]
    Boot(Box<Error>),
    /// The power button could not be pressed.
    #[error("vm.power-button")]
    PowerButton(#[source] std::io::Error),
    /// A snapshot could not be written or read.
    #[error(transparent)]
    Snapshot(#[from] crate::snapshot::SnapshotError),
}

impl OpError {
    /// The operation is not allowed in `state`.
    pub fn state(op: &'static str, state: VmState) -> Self {
        OpError::State { op, state }
    }

    /// A bad request.
    pub fn invalid(message: impl Into<String>) -> Self {
        OpError::Invalid(message.into())
    }

    /// What kind of refusal or failure it is.
    pub fn kind(&self) -> ErrorKind {
        match self {
            OpError::State {
                state: VmState::NotCreated,
                ..
            }
            | OpError::NoSuchDevice { .. } => ErrorKind::NotFound,
            OpError::State { .. } | OpError::Hotplug { .. } => ErrorKind::Conflict,
            OpError::Invalid(_) => ErrorKind::Invalid,
            OpError::Snapshot(e) if e.is_bad_input() => ErrorKind::Invalid,
            OpError::Boot(_) | OpError::PowerButton(_) | OpError::Snapshot(_) => {
                ErrorKind::Internal
            }
        }
    }
}

/// `vm.info`'s answer.
#[derive(Debug, Clone)]
pub struct VmInfo {
    /// The VM's config.
    pub config: VmConfig,
    /// Its state.
    pub state: VmState,
    /// Guest memory minus what the balloon holds, in bytes.
    pub memory_actual_size: u64,
    /// The hypervisor in use.
    pub hypervisor: Kind,
    /// Why the last boot ended, once it has.
    pub end_reason: Option<EndReason>,
}

/// One device's counters, by name.
pub type DeviceCounters = (String, Vec<(&'static str, u64)>);

/// What a request produced.
#[derive(Debug)]
pub enum Reply {
    /// Done; nothing to report.
    Done,
    /// `vmm.ping`: the hypervisor in use and why.
    Ping(Selection),
    /// `vm.info`.
    Info(Box<VmInfo>),
    /// `vm.counters`: every virtio device's counters.
    Counters(Vec<DeviceCounters>),
    /// A device was added (its id, if it has one).
    Added(Option<String>),
    /// The process is to end with this status (`vmm.shutdown`).
    Exit(i32),
}

/// What the VMM should do after handling something.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Keep running.
    Continue,
    /// End the process with this status.
    Exit(i32),
}
