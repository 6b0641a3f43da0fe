//! Firecracker's request bodies and `--config-file` sections, as its swagger document
//! describes them, and their translation into petrel's [`VmConfig`]. Unknown fields are refused
//! (as Firecracker does); fields petrel cannot honour are accepted only at values that change
//! nothing, and named otherwise.

use std::path::PathBuf;

use api::{
    BalloonConfig, DiskConfig, NetConfig, RateLimiterConfig, RngConfig, SerialConfig, SerialMode,
    TokenBucketConfig, VmConfig, VsockConfig,
};
use serde::{Deserialize, Serialize};

/// The kernel command line when `boot_args` is left out: a serial console and no reboot loop.
pub const DEFAULT_BOOT_ARGS: &str = "console=ttyS0 reboot=k panic=1";

/// Most vCPUs Firecracker accepts.
pub const MAX_VCPUS: u8 = 32;

/// `boot-source`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootSource {
    /// The kernel image.
    pub kernel_image_path: String,
    /// The kernel command line.
    #[serde(default)]
    pub boot_args: Option<String>,
    /// An initrd.
    #[serde(default)]
    pub initrd_path: Option<String>,
}

/// `machine-config` (PUT: the two sizes required).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineConfig {
    /// vCPUs, 1..=32.
    pub vcpu_count: u8,
    /// Guest memory in MiB.
    pub mem_size_mib: u64,
    /// Simultaneous multithreading (petrel: only off).
    #[serde(default)]
    pub smt: bool,
    /// Dirty page tracking for diff snapshots (petrel: only off).
    #[serde(default)]
    pub track_dirty_pages: bool,
    /// A CPU template (petrel: only `None`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_template: Option<String>,
    /// Huge pages backing memory (petrel: only `None`).
    #[serde(default = "no_huge_pages")]
    pub huge_pages: String,
}

fn no_huge_pages() -> String {
    "None".to_string()
}

impl Default for MachineConfig {
    fn default() -> Self {
        MachineConfig {
            vcpu_count: 1,
            mem_size_mib: 128,
            smt: false,
            track_dirty_pages: false,
            cpu_template: None,
            huge_pages: no_huge_pages(),
        }
    }
}

/// `PATCH /machine-config`: every field optional.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineConfigPatch {
    vcpu_count: Option<u8>,
    mem_size_mib: Option<u64>,
    smt: Option<bool>,
    track_dirty_pages: Option<bool>,
    cpu_template: Option<String>,
    huge_pages: Option<String>,
}

impl MachineConfig {
    /// Firecracker's checks, with its messages' meaning.
    pub fn validate(&self) -> Result<(), String> {
        if self.vcpu_count == 0 || self.vcpu_count > MAX_VCPUS {
            return Err(format!(
                "Machine config error: The number of vCPUs must be greater than 0, less than \
                 {MAX_VCPUS} and must be 1 or an even number if SMT is enabled (got {})",
                self.vcpu_count
            ));
        }
        if self.mem_size_mib == 0 {
            return Err("Machine config error: The memory size (MiB) is invalid: 0".into());
        }
        let unsupported = [
            (self.smt, "smt: petrel does not enable SMT"),
            (
                self.track_dirty_pages,
                "track_dirty_pages: petrel has no dirty page tracking (no diff snapshots) yet",
            ),
            (
                self.cpu_template.as_deref().is_some_and(|t| t != "None"),
                "cpu_template: petrel has no CPU templates yet (only \"None\")",
            ),
            (
                self.huge_pages != "None",
                "huge_pages: petrel backs memory with normal pages only (only \"None\")",
            ),
        ];
        match unsupported.iter().find(|(bad, _)| *bad) {
            Some((_, why)) => Err(format!("Machine config error: {why}")),
            None => Ok(()),
        }
    }

    /// The config with `patch` applied.
    pub fn patched(&self, patch: MachineConfigPatch) -> MachineConfig {
        MachineConfig {
            vcpu_count: patch.vcpu_count.unwrap_or(self.vcpu_count),
            mem_size_mib: patch.mem_size_mib.unwrap_or(self.mem_size_mib),
            smt: patch.smt.unwrap_or(self.smt),
            track_dirty_pages: patch.track_dirty_pages.unwrap_or(self.track_dirty_pages),
            cpu_template: patch.cpu_template.or_else(|| self.cpu_template.clone()),
            huge_pages: patch.huge_pages.unwrap_or_else(|| self.huge_pages.clone()),
        }
    }
}

/// A token bucket of a rate limiter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenBucket {
    /// Bucket size (bytes or operations).
    pub size: u64,
    /// Initial extra credit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub one_time_burst: Option<u64>,
    /// Milliseconds to refill the bucket.
    pub refill_time: u64,
}

/// A rate limiter: a bandwidth and an operations bucket.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimiter {
    /// Bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth: Option<TokenBucket>,
    /// Operations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ops: Option<TokenBucket>,
}

impl RateLimiter {
    pub(super) fn to_petrel(&self) -> Option<RateLimiterConfig> {
        let bucket = |b: &TokenBucket| TokenBucketConfig {
            size: b.size,
            one_time_burst: b.one_time_burst.unwrap_or(0),
            refill_time: b.refill_time,
        };
        // Firecracker: a bucket of size 0 or refill time 0 means no limit.
        let keep = |b: &&TokenBucket| b.size > 0 && b.refill_time > 0;
        let cfg = RateLimiterConfig {
            bandwidth: self.bandwidth.as_ref().filter(keep).map(bucket),
            ops: self.ops.as_ref().filter(keep).map(bucket),
        };
        (cfg.bandwidth.is_some() || cfg.ops.is_some()).then_some(cfg)
    }
}

/// `drives/{drive_id}` (PUT).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Drive {
    /// The drive's id (also in the path).
    pub drive_id: String,
    /// The image file.
    #[serde(default)]
    pub path_on_host: Option<String>,
    /// The root device: `root=` on the command line.
    pub is_root_device: bool,
    /// Root partition's UUID (with `is_root_device`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partuuid: Option<String>,
    /// Read-only.
    #[serde(default)]
    pub is_read_only: Option<bool>,
    /// `Unsafe` or `Writeback` (petrel honours flushes either way).
    #[serde(default = "unsafe_cache")]
    pub cache_type: String,
    /// `Sync` or `Async` (petrel's block device has one engine).
    #[serde(default = "sync_engine")]
    pub io_engine: String,
    /// The rate limiter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<RateLimiter>,
    /// A vhost-user socket (petrel: not supported).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket: Option<String>,
}

fn unsafe_cache() -> String {
    "Unsafe".into()
}

fn sync_engine() -> String {
    "Sync".into()
}

impl Drive {
    /// Firecracker's checks (the file is opened when the drive is configured).
    pub fn validate(&self) -> Result<(), String> {
        if self.socket.is_some() {
            return Err(format!(
                "Drive config error: drive {}: vhost-user block (socket) is not supported by petrel",
                self.drive_id
            ));
        }
        if !matches!(self.cache_type.as_str(), "Unsafe" | "Writeback") {
            return Err(format!(
                "Drive config error: cache_type '{}' (expected Unsafe or Writeback)",
                self.cache_type
            ));
        }
        if !matches!(self.io_engine.as_str(), "Sync" | "Async") {
            return Err(format!(
                "Drive config error: io_engine '{}' (expected Sync or Async)",
                self.io_engine
            ));
        }
        let Some(path) = &self.path_on_host else {
            return Err(format!(
                "Drive config error: drive {}: path_on_host is required",
                self.drive_id
            ));
        };
        let write = !self.is_read_only.unwrap_or(false);
        std::fs::OpenOptions::new()
            .read(true)
            .write(write)
            .open(path)
            .map_err(|e| {
                format!(
                    "Drive config error: Unable to create the virtio block device: the backing \
                     file {path}: {e}"
                )
            })?;
        Ok(())
    }
}

/// `PATCH /drives/{drive_id}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrivePatch {
    /// The drive's id.
    pub drive_id: String,
    /// A new image file.
    #[serde(default)]
    pub path_on_host: Option<String>,
    /// A new rate limiter.
    #[serde(default)]
    pub rate_limiter: Option<RateLimiter>,
}

/// `network-interfaces/{iface_id}` (PUT).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetIface {
    /// The interface's id (also in the path).
    pub iface_id: String,
    /// The tap device's name.
    pub host_dev_name: String,
    /// The guest's MAC address.
    #[serde(default)]
    pub guest_mac: Option<String>,
    /// The guest's MTU (petrel: not set, the guest's default).
    #[serde(default)]
    pub mtu: Option<u16>,
    /// Guest-bound traffic limiter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rx_rate_limiter: Option<RateLimiter>,
    /// Host-bound traffic limiter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tx_rate_limiter: Option<RateLimiter>,
}

/// `PATCH /network-interfaces/{iface_id}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetIfacePatch {
    /// The interface's id.
    pub iface_id: String,
    /// New guest-bound limiter.
    #[serde(default)]
    pub rx_rate_limiter: Option<RateLimiter>,
    /// New host-bound limiter.
    #[serde(default)]
    pub tx_rate_limiter: Option<RateLimiter>,
}

/// A net interface's limiters in petrel's config: `rate_limiter_config` (TX, and RX too
/// unless `rx` says otherwise) and `rx_rate_limiter_config` (RX when it differs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetLimiters {
    /// What the guest sends (and receives, when `rx` is None).
    pub tx: Option<RateLimiterConfig>,
    /// What the guest receives, when it differs from `tx`.
    pub rx: Option<RateLimiterConfig>,
}

impl NetIface {
    /// The interface's limiters as petrel's config holds them.
    pub fn rate_limiters(&self) -> Result<NetLimiters, String> {
        if self.mtu.is_some() {
            return Err(format!(
                "Network interface config error: {}: mtu: petrel does not set the guest's MTU \
                 yet (leave it out)",
                self.iface_id
            ));
        }
        let rx = self
            .rx_rate_limiter
            .as_ref()
            .and_then(RateLimiter::to_petrel);
        let tx = self
            .tx_rate_limiter
            .as_ref()
            .and_then(RateLimiter::to_petrel);
        if rx == tx {
            return Ok(NetLimiters { tx, rx: None });
        }
        // RX differs: unlimited is a config with neither bucket.
        let unlimited = RateLimiterConfig {
            bandwidth: None,
            ops: None,
        };
        Ok(NetLimiters {
            tx,
            rx: Some(rx.unwrap_or(unlimited)),
        })
    }
}

/// `vsock` (PUT).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vsock {
    /// Deprecated id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock_id: Option<String>,
    /// The guest's context id.
    pub guest_cid: u32,
    /// The host-side Unix socket.
    pub uds_path: String,
}

/// `entropy` (PUT).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entropy {
    /// The rate limiter (petrel's entropy device has none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<RateLimiter>,
}

/// `balloon` (PUT).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Balloon {
    /// Target size in MiB.
    pub amount_mib: u32,
    /// Deflate when the guest runs out of memory.
    pub deflate_on_oom: bool,
    /// Seconds between statistics updates (0: no statistics).
    #[serde(default)]
    pub stats_polling_interval_s: u16,
    /// Free page hinting (petrel: only off).
    #[serde(default)]
    pub free_page_hinting: bool,
    /// Free page reporting (petrel: only off).
    #[serde(default)]
    pub free_page_reporting: bool,
}

/// `PATCH /balloon`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BalloonPatch {
    /// New target in MiB.
    pub amount_mib: u32,
}

/// `PATCH /balloon/statistics`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BalloonStatsPatch {
    /// New interval.
    pub stats_polling_interval_s: u16,
}

/// `logger` (PUT).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Logger {
    /// The log file or FIFO.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_path: Option<String>,
    /// `Error`, `Warning`, `Info`, `Debug`, `Trace`, `Off`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<String>,
    /// Prefix lines with the level.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub show_level: Option<bool>,
    /// Prefix lines with file and line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub show_log_origin: Option<bool>,
    /// Only this module's lines.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module: Option<String>,
}

/// A Firecracker log level name (case-insensitive, as Firecracker reads it).
pub fn parse_level(s: &str) -> Result<log::LevelFilter, String> {
    Ok(match s.to_ascii_lowercase().as_str() {
        "off" => log::LevelFilter::Off,
        "error" => log::LevelFilter::Error,
        "warning" | "warn" => log::LevelFilter::Warn,
        "info" => log::LevelFilter::Info,
        "debug" => log::LevelFilter::Debug,
        "trace" => log::LevelFilter::Trace,
        _ => {
            return Err(format!(
                "Invalid LevelFilter '{s}' (expected Off, Error, Warning, Info, Debug or Trace)"
            ))
        }
    })
}

/// `metrics` (PUT).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metrics {
    /// The metrics file or FIFO.
    pub metrics_path: String,
}

/// `actions` (PUT).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Action {
    /// What to do.
    pub action_type: ActionType,
}

/// Firecracker's actions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum ActionType {
    /// Flush the metrics now.
    FlushMetrics,
    /// Boot the microVM.
    InstanceStart,
    /// Press Ctrl+Alt+Del on the i8042 keyboard.
    SendCtrlAltDel,
}

/// `PATCH /vm`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmStatePatch {
    /// The wanted state.
    pub state: VmStateName,
}

/// The states `PATCH /vm` sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum VmStateName {
    /// Pause the vCPUs.
    Paused,
    /// Resume them.
    Resumed,
}

/// The whole pre-boot configuration: `--config-file`'s JSON and `GET /vm/config`'s answer.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FcConfig {
    /// `balloon`.
    #[serde(default)]
    pub balloon: Option<Balloon>,
    /// `drives`.
    #[serde(default)]
    pub drives: Vec<Drive>,
    /// `boot-source`.
    #[serde(default, rename = "boot-source")]
    pub boot_source: Option<BootSource>,
    /// `cpu-config`: a custom CPU template (checked when given).
    #[serde(default, rename = "cpu-config")]
    pub cpu_config: Option<serde_json::Value>,
    /// `logger`.
    #[serde(default)]
    pub logger: Option<Logger>,
    /// `machine-config`.
    #[serde(default, rename = "machine-config")]
    pub machine_config: Option<MachineConfig>,
    /// `metrics`.
    #[serde(default)]
    pub metrics: Option<Metrics>,
    /// `mmds-config`.
    #[serde(default, rename = "mmds-config")]
    pub mmds_config: Option<super::mmds::MmdsConfigBody>,
    /// `network-interfaces`.
    #[serde(default, rename = "network-interfaces")]
    pub network_interfaces: Vec<NetIface>,
    /// `vsock`.
    #[serde(default)]
    pub vsock: Option<Vsock>,
    /// `entropy`.
    #[serde(default)]
    pub entropy: Option<Entropy>,
}

/// The body `GET /vm/config` answers: every section, `null` when not set.
pub fn full_config_json(cfg: &FcConfig) -> serde_json::Value {
    serde_json::json!({
        "balloon": cfg.balloon,
        "drives": cfg.drives,
        "boot-source": cfg.boot_source.clone().unwrap_or_default(),
        "cpu-config": cfg.cpu_config,
        "logger": cfg.logger,
        "machine-config": cfg.machine_config.clone().unwrap_or_default(),
        "metrics": cfg.metrics,
        "mmds-config": cfg.mmds_config,
        "network-interfaces": cfg.network_interfaces,
        "vsock": cfg.vsock,
        "entropy": cfg.entropy,
        "pmem": [],
        "memory-hotplug": null,
    })
}

impl FcConfig {
    /// petrel's config for this microVM: Firecracker's devices on virtio-mmio, described on
    /// the kernel command line, the serial console on standard output.
    pub fn to_vm_config(&self) -> Result<VmConfig, String> {
        let Some(boot) = &self.boot_source else {
            return Err(
                "Start microvm error: Cannot start microvm without kernel configuration.".into(),
            );
        };
        let machine = self.machine_config.clone().unwrap_or_default();
        let mut cmdline = boot
            .boot_args
            .clone()
            .unwrap_or_else(|| DEFAULT_BOOT_ARGS.to_string());
        // The root drive is the first virtio-blk device: /dev/vda, as Firecracker puts it.
        let mut drives: Vec<&Drive> = self.drives.iter().filter(|d| d.is_root_device).collect();
        drives.extend(self.drives.iter().filter(|d| !d.is_root_device));
        if let Some(root) = drives.first().filter(|d| d.is_root_device) {
            let mode = if root.is_read_only.unwrap_or(false) {
                "ro"
            } else {
                "rw"
            };
            match &root.partuuid {
                Some(uuid) => cmdline.push_str(&format!(" root=PARTUUID={uuid} {mode}")),
                None => cmdline.push_str(&format!(" root=/dev/vda {mode}")),
            }
        }
        let mut cfg = VmConfig::new(PathBuf::from(&boot.kernel_image_path));
        cfg.cpus.boot_vcpus = u32::from(machine.vcpu_count);
        cfg.memory.size = machine.mem_size_mib << 20;
        cfg.payload.initramfs = boot.initrd_path.as_ref().map(PathBuf::from);
        cfg.payload.cmdline = Some(cmdline);
        cfg.serial = SerialConfig {
            mode: SerialMode::Tty,
            file: None,
        };
        cfg.platform.virtio_mmio_cmdline = true;
        let disks: Vec<DiskConfig> = drives
            .iter()
            .map(|d| DiskConfig {
                path: PathBuf::from(d.path_on_host.clone().unwrap_or_default()),
                readonly: d.is_read_only.unwrap_or(false),
                direct: false,
                id: Some(d.drive_id.clone()),
                serial: Some(d.drive_id.clone()),
                rate_limiter_config: d.rate_limiter.as_ref().and_then(RateLimiter::to_petrel),
                // Firecracker serves every drive as raw.
                image_type: Some(api::ImageType::Raw),
                backing_files: false,
            })
            .collect();
        cfg.disks = (!disks.is_empty()).then_some(disks);
        let mut nets = Vec::new();
        for n in &self.network_interfaces {
            let limiters = n.rate_limiters()?;
            nets.push(NetConfig {
                tap: Some(n.host_dev_name.clone()),
                fds: None,
                mac: n.guest_mac.clone(),
                id: Some(n.iface_id.clone()),
                rate_limiter_config: limiters.tx,
                rx_rate_limiter_config: limiters.rx,
            });
        }
        cfg.net = (!nets.is_empty()).then_some(nets);
        cfg.vsock = self.vsock.as_ref().map(|v| VsockConfig {
            cid: u64::from(v.guest_cid),
            socket: PathBuf::from(&v.uds_path),
            id: v.vsock_id.clone(),
        });
        cfg.rng = self.entropy.as_ref().map(|_| RngConfig::default());
        if let Some(t) = &self.cpu_config {
            cfg.cpus.template = super::cpu_config::parse(t)?;
        }
        cfg.balloon = self.balloon.as_ref().map(|b| BalloonConfig {
            size: u64::from(b.amount_mib) << 20,
            deflate_on_oom: b.deflate_on_oom,
            statistics_polling_interval_s: b.stats_polling_interval_s,
        });
        cfg.validate()
            .map_err(|e| format!("Start microvm error: {e}"))?;
        Ok(cfg)
    }
}
