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

/// The format of a disk image: Cloud Hypervisor's `ImageType`. petrel serves `Raw` and
/// `Qcow2`; `Unknown` (and an absent field) detects the format from the image's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum ImageType {
    /// Raw: the file's bytes are the disk's.
    Raw,
    /// qcow2, with its backing chain when `backing_files` allows it.
    Qcow2,
    /// A fixed VHD (refused).
    FixedVhd,
    /// VHDX (refused).
    Vhdx,
    /// Detect from the header.
    #[default]
    Unknown,
}

impl ImageType {
    /// Parses the `--disk image_type=` value (any case).
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "raw" => Some(Self::Raw),
            "qcow2" => Some(Self::Qcow2),
            "fixedvhd" | "vhd" => Some(Self::FixedVhd),
            "vhdx" => Some(Self::Vhdx),
            "unknown" | "auto" => Some(Self::Unknown),
            _ => None,
        }
    }
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// A virtio-blk disk backed by a raw or qcow2 image file.
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
    /// The image's format; absent or `Unknown`: detected from its header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_type: Option<ImageType>,
    /// A qcow2 image may open the backing files its header names (off by default, as in
    /// Cloud Hypervisor: a header the guest could write must not name host files).
    #[serde(default, skip_serializing_if = "is_false")]
    pub backing_files: bool,
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

/// A virtio-net interface on a host tap device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetConfig {
    /// Tap interface name (created if missing, which needs CAP_NET_ADMIN).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tap: Option<String>,
    /// Already-open tap file descriptors (inherited, or passed with SCM_RIGHTS); one queue
    /// pair uses one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fds: Option<Vec<i32>>,
    /// Guest MAC (`52:54:00:12:34:56`); a stable one derived from the id when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// Device id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Rate limits, applied to each direction.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter_config: Option<RateLimiterConfig>,
    /// petrel's own: limits on what the guest receives, instead of `rate_limiter_config`
    /// (which then limits only what it sends). Firecracker's separate `rx_rate_limiter` and
    /// `tx_rate_limiter`; no limit at all is a config with neither bucket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rx_rate_limiter_config: Option<RateLimiterConfig>,
}

/// A virtio-vsock device bridged to host Unix sockets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockConfig {
    /// The guest's context id (3 or more).
    pub cid: u64,
    /// Host Unix socket path petrel listens on.
    pub socket: PathBuf,
    /// Device id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

/// The virtio-balloon device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BalloonConfig {
    /// Initial balloon size (memory taken from the guest), in bytes.
    #[serde(default)]
    pub size: u64,
    /// Let the guest deflate the balloon when it runs out of memory.
    #[serde(default)]
    pub deflate_on_oom: bool,
    /// Seconds between guest statistics updates (0: no statistics).
    #[serde(default)]
    pub statistics_polling_interval_s: u16,
}

/// Parses a MAC address `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Result<[u8; 6], String> {
    let parts: Vec<&str> = s.split(':').collect();
    let mut mac = [0u8; 6];
    if parts.len() != 6 {
        return Err(format!("'{s}' is not a MAC address (aa:bb:cc:dd:ee:ff)"));
    }
    for (b, p) in mac.iter_mut().zip(parts) {
        *b = u8::from_str_radix(p, 16)
            .ok()
            .filter(|_| p.len() == 2)
            .ok_or_else(|| format!("'{s}' is not a MAC address (aa:bb:cc:dd:ee:ff)"))?;
    }
    if mac[0] & 1 == 1 {
        return Err(format!("'{s}' is a multicast address"));
    }
    Ok(mac)
}

impl NetConfig {
    /// Parses `--net tap=NAME[,mac=MAC][,id=ID]` or `--net fd=N[,mac=…]`, with the
    /// rate-limiter keys of `--disk` (applied to each direction).
    pub fn parse(s: &str) -> Result<Self, ConfigError> {
        let mut net = NetConfig {
            tap: None,
            fds: None,
            mac: None,
            id: None,
            rate_limiter_config: None,
            rx_rate_limiter_config: None,
        };
        let mut limits = RateLimiterKeys::default();
        for (k, v) in pairs("--net", s)? {
            let field = format!("--net {k}");
            match k {
                "tap" => net.tap = Some(v.to_string()),
                "fd" => {
                    let fd = v.parse::<i32>().ok().filter(|fd| *fd >= 0).ok_or_else(|| {
                        ConfigError::new(&field, format!("'{v}' is not a file descriptor"))
                    })?;
                    net.fds.get_or_insert_with(Vec::new).push(fd);
                }
                "mac" => net.mac = Some(v.to_string()),
                "id" => net.id = Some(v.to_string()),
                _ if limits.take(k, v, &field)? => {}
                _ => return Err(ConfigError::new("--net", format!("unknown key '{k}'"))),
            }
        }
        net.rate_limiter_config = limits.finish("--net")?;
        Ok(net)
    }

    /// Checks one interface; `field` names it (e.g. `net[0]`).
    pub fn validate(&self, field: &str) -> Result<(), ConfigError> {
        match (&self.tap, &self.fds) {
            (None, None) => {
                return Err(ConfigError::new(
                    &format!("{field}.tap"),
                    "a tap name or fds is required",
                ))
            }
            (Some(_), Some(_)) => {
                return Err(ConfigError::new(
                    &format!("{field}.fds"),
                    "give a tap name or fds, not both",
                ))
            }
            (Some(name), None) if name.is_empty() || name.len() >= 16 => {
                return Err(ConfigError::new(
                    &format!("{field}.tap"),
                    format!("'{name}' is not a valid interface name (1 to 15 bytes)"),
                ))
            }
            (None, Some(fds)) if fds.len() != 1 => {
                return Err(ConfigError::new(
                    &format!("{field}.fds"),
                    "exactly one fd (petrel has one queue pair per interface)",
                ))
            }
            _ => {}
        }
        if let Some(mac) = &self.mac {
            parse_mac(mac).map_err(|e| ConfigError::new(&format!("{field}.mac"), e))?;
        }
        Ok(())
    }
}

impl VsockConfig {
    /// Parses `--vsock cid=C,socket=PATH[,id=ID]`.
    pub fn parse(s: &str) -> Result<Self, ConfigError> {
        let (mut cid, mut socket, mut id) = (None, None, None);
        for (k, v) in pairs("--vsock", s)? {
            match k {
                "cid" => cid = Some(parse_u64("--vsock cid", v)?),
                "socket" => socket = Some(PathBuf::from(v)),
                "id" => id = Some(v.to_string()),
                _ => return Err(ConfigError::new("--vsock", format!("unknown key '{k}'"))),
            }
        }
        Ok(VsockConfig {
            cid: cid.ok_or_else(|| ConfigError::new("--vsock", "cid= is required"))?,
            socket: socket.ok_or_else(|| ConfigError::new("--vsock", "socket= is required"))?,
            id,
        })
    }

    /// Checks the CID and socket path.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.cid < 3 || self.cid >= u64::from(u32::MAX) {
            return Err(ConfigError::new(
                "vsock.cid",
                format!("{} is reserved or out of range (3 to 4294967294)", self.cid),
            ));
        }
        if self.socket.as_os_str().is_empty() {
            return Err(ConfigError::new("vsock.socket", "is required"));
        }
        Ok(())
    }
}

impl BalloonConfig {
    /// Parses `--balloon size=SIZE[,deflate_on_oom=on][,statistics_polling_interval_s=N]`.
    pub fn parse(s: &str) -> Result<Self, ConfigError> {
        let mut b = BalloonConfig {
            size: 0,
            deflate_on_oom: false,
            statistics_polling_interval_s: 0,
        };
        for (k, v) in pairs("--balloon", s)? {
            let field = format!("--balloon {k}");
            match k {
                "size" => b.size = crate::parse_size(v).map_err(|e| ConfigError::new(&field, e))?,
                "deflate_on_oom" => b.deflate_on_oom = parse_bool(&field, v)?,
                "statistics_polling_interval_s" => {
                    b.statistics_polling_interval_s = v.parse().map_err(|_| {
                        ConfigError::new(&field, format!("'{v}' is not a number of seconds"))
                    })?
                }
                _ => return Err(ConfigError::new("--balloon", format!("unknown key '{k}'"))),
            }
        }
        Ok(b)
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

/// The rate-limiter keys of a device option string (Cloud Hypervisor's names):
/// `bw_size`, `bw_one_time_burst`, `bw_refill_time`, `ops_size`, `ops_one_time_burst`,
/// `ops_refill_time`.
#[derive(Default)]
struct RateLimiterKeys {
    bw: (Option<u64>, u64, Option<u64>),
    ops: (Option<u64>, u64, Option<u64>),
}

impl RateLimiterKeys {
    /// Takes `k=v` if it is a rate-limiter key; false if it is not one.
    fn take(&mut self, k: &str, v: &str, field: &str) -> Result<bool, ConfigError> {
        match k {
            "bw_size" => self.bw.0 = Some(parse_u64(field, v)?),
            "bw_one_time_burst" => self.bw.1 = parse_u64(field, v)?,
            "bw_refill_time" => self.bw.2 = Some(parse_u64(field, v)?),
            "ops_size" => self.ops.0 = Some(parse_u64(field, v)?),
            "ops_one_time_burst" => self.ops.1 = parse_u64(field, v)?,
            "ops_refill_time" => self.ops.2 = Some(parse_u64(field, v)?),
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// The limits given, if any.
    fn finish(self, option: &str) -> Result<Option<RateLimiterConfig>, ConfigError> {
        let bucket = |name: &str, b: (Option<u64>, u64, Option<u64>)| match b {
            (None, 0, None) => Ok(None),
            (Some(size), one_time_burst, Some(refill_time)) => Ok(Some(TokenBucketConfig {
                size,
                one_time_burst,
                refill_time,
            })),
            _ => Err(ConfigError::new(
                option,
                format!("{name}_size and {name}_refill_time go together"),
            )),
        };
        let bandwidth = bucket("bw", self.bw)?;
        let ops = bucket("ops", self.ops)?;
        Ok((bandwidth.is_some() || ops.is_some()).then_some(RateLimiterConfig { bandwidth, ops }))
    }
}

impl DiskConfig {
    /// Parses `--disk path=P[,readonly=on][,direct=on][,id=ID][,serial=S]`
    /// `[,image_type=raw|qcow2|unknown][,backing_files=on]`
    /// `[,bw_size=N,bw_refill_time=MS[,bw_one_time_burst=N]][,ops_size=…,ops_refill_time=…]`.
    pub fn parse(s: &str) -> Result<Self, ConfigError> {
        let mut disk = DiskConfig {
            path: PathBuf::new(),
            readonly: false,
            direct: false,
            id: None,
            serial: None,
            rate_limiter_config: None,
            image_type: None,
            backing_files: false,
        };
        let mut limits = RateLimiterKeys::default();
        for (k, v) in pairs("--disk", s)? {
            let field = format!("--disk {k}");
            match k {
                "path" => disk.path = PathBuf::from(v),
                "readonly" => disk.readonly = parse_bool(&field, v)?,
                "direct" => disk.direct = parse_bool(&field, v)?,
                "id" => disk.id = Some(v.to_string()),
                "serial" => disk.serial = Some(v.to_string()),
                "image_type" => {
                    disk.image_type = Some(ImageType::parse(v).ok_or_else(|| {
                        ConfigError::new(&field, format!("unknown image type '{v}'"))
                    })?)
                }
                "backing_files" => disk.backing_files = parse_bool(&field, v)?,
                _ if limits.take(k, v, &field)? => {}
                _ => return Err(ConfigError::new("--disk", format!("unknown key '{k}'"))),
            }
        }
        disk.rate_limiter_config = limits.finish("--disk")?;
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
        if let Some(t @ (ImageType::FixedVhd | ImageType::Vhdx)) = self.image_type {
            return Err(ConfigError::new(
                &format!("{field}.image_type"),
                format!(
                    "{t:?} is not supported; petrel serves Raw and Qcow2 images (Unknown: detect)"
                ),
            ));
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
    fn net_vsock_balloon_strings() {
        let n = NetConfig::parse("tap=ptap0,mac=52:54:00:12:34:56,id=eth0").unwrap();
        assert_eq!(n.tap.as_deref(), Some("ptap0"));
        assert!(n.validate("net[0]").is_ok());
        assert!(NetConfig::parse("fd=-1").is_err());
        let n = NetConfig::parse("fd=5").unwrap();
        assert_eq!(n.fds, Some(vec![5]));
        let n = NetConfig::parse("tap=t0,ops_size=100,ops_refill_time=1000").unwrap();
        assert_eq!(n.rate_limiter_config.unwrap().ops.unwrap().size, 100);
        assert!(NetConfig::parse("tap=t0,bw_refill_time=10").is_err());
        assert!(NetConfig::parse("mac=52:54:00:12:34:56")
            .unwrap()
            .validate("net[0]")
            .is_err());
        let bad_mac = NetConfig::parse("tap=t,mac=01:00:00:00:00:00").unwrap();
        assert_eq!(bad_mac.validate("net[0]").unwrap_err().field, "net[0].mac");
        assert!(parse_mac("52:54:00:12:34").is_err());
        assert!(parse_mac("52:54:00:12:34:zz").is_err());
        let v = VsockConfig::parse("cid=3,socket=/tmp/v.sock").unwrap();
        assert!(v.validate().is_ok());
        assert!(VsockConfig::parse("cid=2,socket=/x")
            .unwrap()
            .validate()
            .is_err());
        assert!(VsockConfig::parse("socket=/x").is_err());
        let b = BalloonConfig::parse("size=64M,deflate_on_oom=on").unwrap();
        assert_eq!(b.size, 64 << 20);
        assert!(b.deflate_on_oom);
        assert!(BalloonConfig::parse("size=lots").is_err());
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
