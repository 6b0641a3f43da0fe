//! The petrel VMM: configuration to running VM, vCPU threads, the event loop and the
//! command line.
#![deny(missing_docs)]

pub mod api_server;
pub mod cli;
pub mod devices;
pub mod event_loop;
pub mod landlock;
pub mod logger;
pub mod run;
pub mod seccomp;
pub mod signals;
pub mod vcpu;
pub mod virtio;
pub mod vm;
pub mod vmm;

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
    #[error("cannot allocate {size} bytes of guest memory: {reason}")]
    Memory {
        /// Requested size.
        size: u64,
        /// Why.
        reason: String,
    },
    /// Device setup failed.
    #[error("device setup: {0}")]
    Device(String),
    /// An OS call failed.
    #[error("{what}: {source}")]
    Io {
        /// What was attempted.
        what: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The guest or a vCPU failed at run time.
    #[error("{0}")]
    Guest(String),
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
