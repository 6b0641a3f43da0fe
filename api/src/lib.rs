//! Wire and configuration types shared by petrel's command line, its config file, its HTTP API
//! and their clients (petrelctl, petreld). The JSON shape follows Cloud Hypervisor's `VmConfig`
//! for the fields petrel supports; unknown fields are rejected naming the field ([`compat`]
//! accepts Cloud Hypervisor's other fields at their defaults). No I/O lives here: the HTTP
//! transport is the `petrel-http` crate.
#![deny(missing_docs)]

pub mod compat;
pub mod config;
pub mod cpu_template;
pub mod devices;
pub mod petreld;
pub mod request;
pub mod size;

pub use config::{
    ConfigError, CpuTopology, CpusConfig, MemoryConfig, PayloadConfig, PlatformConfig,
    SerialConfig, SerialMode, Transport, VmConfig,
};
pub use devices::{
    parse_mac, BalloonConfig, DiskConfig, ImageType, NetConfig, RateLimiterConfig, RngConfig,
    TokenBucketConfig, VsockConfig,
};
pub use size::parse_size;
