//! Device configuration: disks, the entropy device, rate limiters, and the `key=value,…`
//! strings the command line uses for them (Cloud Hypervisor's spelling).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::config::ConfigError;

/// A token bucket: `size` tokens, refilled completely every `refill_time` ms, with an extra
/// `one_time_burst` available once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenBucketConfig {
    /// Bucket size (bytes or operations).
    pub size: u64,
    /// Extra tokens available once at start.
    #[serde(default)]
    pub one_time_burst: u64,
    /// Time to refill the whole bucket, in milliseconds.
    pub refill_time: u64,
}

/// Bandwidth and operation limits of one device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RateLimiterConfig {
    /// Bytes per refill time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth: Option<TokenBucketConfig>,
    /// Requests per refill time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ops: Option<TokenBucketConfig>,
}

/// A virtio-blk disk backed by a raw image file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskConfig {
    /// Image file.
    pub path: PathBuf,
    /// The guest may not write.
    #[serde(default)]
    pub readonly: bool,
    /// Open with O_DIRECT (bypass the host page cache).
    #[serde(default)]
    pub direct: bool,
    /// Device id; also what the guest reads with GET_ID unless `serial` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Serial string the guest reads with GET_ID (at most 20 bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    /// Rate limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter_config: Option<RateLimiterConfig>,
}

/// The virtio-rng entropy device (bytes come from getrandom(2)).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RngConfig {
    /// Entropy source; petrel reads the kernel's pool through getrandom(2), so only
    /// `/dev/urandom` (the default) and `/dev/random` are accepted.
    #[serde(default = "default_rng_src")]
    pub src: PathBuf,
}

fn default_rng_src() -> PathBuf {
    PathBuf::from("/dev/urandom")
}

impl Default for RngConfig {
    fn default() -> Self {
        RngConfig {
            src: default_rng_src(),
        }
    }
}

/// Largest GET_ID string (virtio spec: 20 bytes).
pub const DISK_ID_MAX: usize = 20;

fn parse_bool(field: &str, v: &str) -> Result<bool, ConfigError> {
    match v {
        "on" | "true" => Ok(true),
        "off" | "false" => Ok(false),
        _ => Err(ConfigError::new(field, format!("'{v}' is not on/off"))),
    }
}

fn parse_u64(field: &str, v: &str) -> Result<u64, ConfigError> {
    v.parse()
        .map_err(|_| ConfigError::new(field, format!("'{v}' is not a number")))
}

/// Splits `key=value,key=value` into pairs.
fn pairs<'a>(option: &str, s: &'a str) -> Result<Vec<(&'a str, &'a str)>, ConfigError> {
    s.split(',')
        .filter(|p| !p.is_empty())
        .map(|p| {
            p.split_once('=')
                .ok_or_else(|| ConfigError::new(option, format!("'{p}' is not key=value")))
        })
        .collect()
}

impl DiskConfig {
    /// Parses `--disk path=P[,readonly=on][,direct=on][,id=ID][,serial=S]`
    /// `[,bw_size=N,bw_refill_time=MS[,bw_one_time_burst=N]][,ops_size=…,ops_refill_time=…]`.
    pub fn parse(s: &str) -> Result<Self, ConfigError> {
        let mut disk = DiskConfig {
            path: PathBuf::new(),
            readonly: false,
            direct: false,
            id: None,
            serial: None,
            rate_limiter_config: None,
        };
        let mut bw = (None, 0, None);
        let mut ops = (None, 0, None);
        for (k, v) in pairs("--disk", s)? {
            let field = format!("--disk {k}");
            match k {
                "path" => disk.path = PathBuf::from(v),
                "readonly" => disk.readonly = parse_bool(&field, v)?,
                "direct" => disk.direct = parse_bool(&field, v)?,
                "id" => disk.id = Some(v.to_string()),
                "serial" => disk.serial = Some(v.to_string()),
                "bw_size" => bw.0 = Some(parse_u64(&field, v)?),
                "bw_one_time_burst" => bw.1 = parse_u64(&field, v)?,
                "bw_refill_time" => bw.2 = Some(parse_u64(&field, v)?),
                "ops_size" => ops.0 = Some(parse_u64(&field, v)?),
                "ops_one_time_burst" => ops.1 = parse_u64(&field, v)?,
                "ops_refill_time" => ops.2 = Some(parse_u64(&field, v)?),
                _ => return Err(ConfigError::new("--disk", format!("unknown key '{k}'"))),
            }
        }
        let bucket = |name: &str, b: (Option<u64>, u64, Option<u64>)| match b {
            (None, 0, None) => Ok(None),
            (Some(size), one_time_burst, Some(refill_time)) => Ok(Some(TokenBucketConfig {
                size,
                one_time_burst,
                refill_time,
            })),
            _ => Err(ConfigError::new(
                "--disk",
                format!("{name}_size and {name}_refill_time go together"),
            )),
        };
        let bandwidth = bucket("bw", bw)?;
        let ops = bucket("ops", ops)?;
        if bandwidth.is_some() || ops.is_some() {
            disk.rate_limiter_config = Some(RateLimiterConfig { bandwidth, ops });
        }
        Ok(disk)
    }

    /// The GET_ID string: `serial`, else `id`, else empty.
    pub fn guest_id(&self) -> &str {
        self.serial.as_deref().or(self.id.as_deref()).unwrap_or("")
    }

    /// Checks one disk; `field` names it (e.g. `disks[0]`).
    pub fn validate(&self, field: &str) -> Result<(), ConfigError> {
        if self.path.as_os_str().is_empty() {
            return Err(ConfigError::new(&format!("{field}.path"), "is required"));
        }
        if let Some(serial) = &self.serial {
            if serial.len() > DISK_ID_MAX {
                return Err(ConfigError::new(
                    &format!("{field}.serial"),
                    format!("longer than {DISK_ID_MAX} bytes"),
                ));
            }
        }
        if let Some(rl) = &self.rate_limiter_config {
            for (name, b) in [("bandwidth", rl.bandwidth), ("ops", rl.ops)] {
                if let Some(b) = b {
                    if b.size == 0 || b.refill_time == 0 {
                        return Err(ConfigError::new(
                            &format!("{field}.rate_limiter_config.{name}"),
                            "size and refill_time must be non-zero",
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}

impl RngConfig {
    /// Parses `--rng` (empty) or `--rng src=PATH`.
    pub fn parse(s: &str) -> Result<Self, ConfigError> {
        let mut rng = RngConfig::default();
        for (k, v) in pairs("--rng", s)? {
            match k {
                "src" => rng.src = PathBuf::from(v),
                _ => return Err(ConfigError::new("--rng", format!("unknown key '{k}'"))),
            }
        }
        Ok(rng)
    }

    /// Checks the source.
    pub fn validate(&self) -> Result<(), ConfigError> {
        match self.src.to_str() {
            Some("/dev/urandom") | Some("/dev/random") => Ok(()),
            _ => Err(ConfigError::new(
                "rng.src",
                format!(
                    "{} is not supported (petrel uses getrandom: /dev/urandom or /dev/random)",
                    self.src.display()
                ),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_strings() {
        let d = DiskConfig::parse("path=/a.img,readonly=on,id=root,bw_size=1000,bw_refill_time=10")
            .unwrap();
        assert_eq!(d.path, PathBuf::from("/a.img"));
        assert!(d.readonly);
        assert_eq!(d.guest_id(), "root");
        let rl = d.rate_limiter_config.unwrap();
        assert_eq!(rl.bandwidth.unwrap().size, 1000);
        assert!(rl.ops.is_none());
        assert!(DiskConfig::parse("path=/a,readonly=maybe").is_err());
        assert!(DiskConfig::parse("path=/a,colour=red").is_err());
        assert!(DiskConfig::parse("path=/a,bw_size=5").is_err());
        assert!(DiskConfig::parse("/a.img").is_err());
        let d = DiskConfig::parse("readonly=on").unwrap();
        assert_eq!(d.validate("disks[0]").unwrap_err().field, "disks[0].path");
        let d = DiskConfig::parse("path=/a,serial=012345678901234567890").unwrap();
        assert!(d.validate("disks[0]").is_err());
    }

    #[test]
    fn rng_strings() {
        assert_eq!(RngConfig::parse("").unwrap(), RngConfig::default());
        assert!(RngConfig::parse("src=/dev/random")
            .unwrap()
            .validate()
            .is_ok());
        assert!(RngConfig::parse("src=/tmp/x").unwrap().validate().is_err());
        assert!(RngConfig::parse("seed=1").is_err());
    }
}
