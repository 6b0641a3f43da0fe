//! The petrel VMM: configuration to running VM, vCPU threads, the event loop and the
//! command line.
#![deny(missing_docs)]

pub mod api_server;
pub mod cli;
pub mod cpu_template;
pub mod device_manager;
pub mod event_loop;
pub mod fc_api;
pub mod landlock;
pub mod legacy;
pub mod lifecycle;
pub mod logger;
pub mod machine;
pub mod memory;
pub mod migration;
pub mod pci;
pub mod preflight;
pub mod rotating_file;
pub mod run;
pub mod seccomp;
pub mod serial_input;
pub mod signals;
pub mod snapshot;
pub mod vcpu;

/// Errors of the VMM, each naming what failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] api::ConfigError),
    /// The hypervisor layer failed.
    #[error(transparent)]
    Hypervisor(#[from] hypervisor::Error),
    /// Loading or setting up the guest failed.
    #[error(transparent)]
    Boot(#[from] arch::Error),
    /// Guest memory could not be allocated.
    #[error("cannot allocate {size} bytes of guest memory")]
    Memory {
        /// Requested size.
        size: u64,
        /// Why.
        #[source]
        source: vm_memory::mmap::FromRangesError,
    },
    /// A virtio device could not be created or placed.
    #[error("{device}")]
    Device {
        /// Which device (`disks[0] (/path)`, `net[1]`, `rng`, …).
        device: String,
        /// Why.
        #[source]
        source: device_manager::DeviceError,
    },
    /// More virtio devices than there are GSIs for them.
    #[error("{device}: too many virtio devices (at most {max})")]
    TooManyDevices {
        /// The first device that did not fit.
        device: String,
        /// How many fit.
        max: u32,
    },
    /// A legacy device could not be put on its bus.
    #[error("legacy devices")]
    Bus(#[from] devices::bus::Error),
    /// A thread's seccomp filter could not be installed.
    #[error(transparent)]
    Seccomp(#[from] seccomp::SeccompError),
    /// The CPU template does not fit this guest's CPUID.
    #[error("cpu template: {0}")]
    CpuTemplate(String),
    /// The main thread's file access could not be narrowed.
    #[error(transparent)]
    Landlock(#[from] landlock::LandlockError),
    /// The API socket could not be served.
    #[error("api socket")]
    ApiSocket(#[source] petrel_http::Error),
    /// The event loop could not be created or run.
    #[error("event loop")]
    EventLoop(#[source] event_manager::Error),
    /// An operation on the VM was refused or failed (the VM given on the command line).
    #[error(transparent)]
    Refused(#[from] lifecycle::OpError),
    /// A vCPU failed; the guest is stopped.
    #[error(transparent)]
    Vcpu(#[from] vcpu::VcpuFailure),
    /// An OS call failed.
    #[error("{what}")]
    Io {
        /// What was attempted.
        what: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// An OS error while doing `what`.
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            what: what.into(),
            source,
        }
    }
}

/// Result type of the VMM.
pub type Result<T> = std::result::Result<T, Error>;

/// Formats an error with its chain of causes on one line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let text = c.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        cur = c.source();
    }
    s
}
