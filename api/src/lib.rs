//! Wire and configuration types shared by petrel's command line, its config file and (later)
//! its HTTP API. The JSON shape follows Cloud Hypervisor's `VmConfig` for the fields petrel
//! supports; unknown fields are rejected naming the field.
#![deny(missing_docs)]

pub mod compat;
pub mod config;
pub mod devices;
pub mod size;

pub use config::{
    ConfigError, CpusConfig, MemoryConfig, PayloadConfig, PlatformConfig, SerialConfig, SerialMode,
    VmConfig,
};
pub use devices::{
    parse_mac, BalloonConfig, DiskConfig, NetConfig, RateLimiterConfig, RngConfig,
    TokenBucketConfig, VsockConfig,
};
pub use size::parse_size;
