//! `VmConfig`: what a VM is made of. One type for the CLI, the config file and the API,
//! validated in one place.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::devices::{BalloonConfig, DiskConfig, NetConfig, RngConfig, VsockConfig};

/// A configuration problem, naming the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ConfigError {
    /// The field, e.g. `cpus.boot_vcpus`.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl ConfigError {
    /// A problem with `field`.
    pub fn new(field: &str, message: impl Into<String>) -> Self {
        ConfigError {
            field: field.to_string(),
            message: message.into(),
        }
    }
}

/// The whole VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    /// vCPUs.
    #[serde(default)]
    pub cpus: CpusConfig,
    /// Guest RAM.
    #[serde(default)]
    pub memory: MemoryConfig,
    /// Kernel, initramfs and command line.
    pub payload: PayloadConfig,
    /// The 8250 serial port.
    #[serde(default)]
    pub serial: SerialConfig,
    /// virtio-blk disks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disks: Option<Vec<DiskConfig>>,
    /// The virtio-rng device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rng: Option<RngConfig>,
    /// virtio-net interfaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub net: Option<Vec<NetConfig>>,
    /// The virtio-vsock device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock: Option<VsockConfig>,
    /// The virtio-balloon device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub balloon: Option<BalloonConfig>,
    /// Platform options.
    #[serde(default, skip_serializing_if = "PlatformConfig::is_default")]
    pub platform: PlatformConfig,
}

/// Platform options.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct PlatformConfig {
    /// Also describe the virtio-mmio devices on the kernel command line
    /// (`virtio_mmio.device=4K@ADDR:IRQ`), for kernels built with
    /// CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES. They are always in the ACPI DSDT.
    #[serde(default)]
    pub virtio_mmio_cmdline: bool,
    /// Which transport the virtio devices use (petrel's field; Cloud Hypervisor always uses
    /// PCI). Default: virtio-mmio, until Linux on virtio-pci is proven in petrel's tests.
    #[serde(default, skip_serializing_if = "Transport::is_mmio")]
    pub transport: Transport,
}

/// The virtio transport of a VM's devices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// virtio-mmio windows described in the DSDT.
    #[default]
    Mmio,
    /// virtio-pci functions on PCI segment 0 (ECAM, MSI-X).
    Pci,
}

impl Transport {
    fn is_mmio(&self) -> bool {
        *self == Transport::Mmio
    }

    /// Parses `mmio` or `pci`.
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "mmio" => Ok(Transport::Mmio),
            "pci" => Ok(Transport::Pci),
            _ => Err(format!("transport '{s}': expected mmio or pci")),
        }
    }
}

impl PlatformConfig {
    fn is_default(&self) -> bool {
        *self == PlatformConfig::default()
    }
}

/// vCPU configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CpusConfig {
    /// vCPUs started at boot.
    pub boot_vcpus: u32,
    /// The most vCPUs the VM may get (at least `boot_vcpus`). petrel has no CPU hotplug yet:
    /// the value is recorded and reported, and `vm.resize` to more than `boot_vcpus` is
    /// refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_vcpus: Option<u32>,
    /// How the vCPUs are arranged (Cloud Hypervisor's `CpuTopology`). petrel presents one
    /// package of single-threaded cores; a topology saying just that is accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topology: Option<CpuTopology>,
    /// Expose the host's virtualization extensions (VMX/SVM) to the guest when the
    /// hypervisor offers them (Cloud Hypervisor's default: on).
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub nested: bool,
    /// CPUID and MSR changes for every vCPU (Firecracker's custom CPU templates).
    #[serde(
        default,
        skip_serializing_if = "crate::cpu_template::CpuTemplate::is_empty"
    )]
    pub template: crate::cpu_template::CpuTemplate,
}

fn yes() -> bool {
    true
}

fn is_true(b: &bool) -> bool {
    *b
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl Default for CpusConfig {
    fn default() -> Self {
        CpusConfig {
            boot_vcpus: 1,
            max_vcpus: None,
            topology: None,
            nested: true,
            template: Default::default(),
        }
    }
}

/// Cloud Hypervisor's CPU topology: threads per core, cores per die, dies per package,
/// packages; their product is the vCPU count (`max_vcpus`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CpuTopology {
    /// Hardware threads per core.
    #[serde(default = "one")]
    pub threads_per_core: u32,
    /// Cores per die.
    #[serde(default = "one")]
    pub cores_per_die: u32,
    /// Dies per package.
    #[serde(default = "one")]
    pub dies_per_package: u32,
    /// Packages (sockets).
    #[serde(default = "one")]
    pub packages: u32,
}

fn one() -> u32 {
    1
}

/// Memory configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryConfig {
    /// Guest RAM in bytes.
    pub size: u64,
    /// Map guest RAM shared (`MAP_SHARED`), as a vhost-user back end needs.
    #[serde(default, skip_serializing_if = "is_false")]
    pub shared: bool,
    /// Ask for transparent huge pages on guest RAM (`MADV_HUGEPAGE`; Cloud Hypervisor's
    /// default: on).
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub thp: bool,
    /// Let the kernel merge identical guest pages (`MADV_MERGEABLE`, KSM).
    #[serde(default, skip_serializing_if = "is_false")]
    pub mergeable: bool,
    /// Fault all of guest RAM in before boot (`MAP_POPULATE`).
    #[serde(default, skip_serializing_if = "is_false")]
    pub prefault: bool,
    /// Bytes reserved above RAM for memory hotplug (ACPI). petrel has no memory hotplug yet:
    /// the value is recorded and reported, and `vm.resize` of the RAM is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hotplug_size: Option<u64>,
}

/// Default guest memory: 512 MiB, as Cloud Hypervisor.
pub const DEFAULT_MEMORY: u64 = 512 << 20;
/// Smallest guest memory petrel accepts.
pub const MIN_MEMORY: u64 = 2 << 20;

impl Default for MemoryConfig {
    fn default() -> Self {
        MemoryConfig {
            size: DEFAULT_MEMORY,
            shared: false,
            thp: true,
            mergeable: false,
            prefault: false,
            hotplug_size: None,
        }
    }
}

/// What to boot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PayloadConfig {
    /// ELF vmlinux (PVH) or bzImage.
    pub kernel: PathBuf,
    /// Optional initramfs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initramfs: Option<PathBuf>,
    /// Kernel command line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmdline: Option<String>,
}

/// Where the serial port's output goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum SerialMode {
    /// Discarded.
    Off,
    /// petrel's standard output (input from its standard input).
    #[default]
    Tty,
    /// A file (`file`).
    File,
}

/// Serial port configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct SerialConfig {
    /// Output mode.
    pub mode: SerialMode,
    /// Output file for `File`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
}

/// Default command line when none is given.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 reboot=k panic=1";

/// The longest command line the guest can be given (4 KiB with its terminating NUL).
pub const MAX_CMDLINE_LEN: usize = 4095;

impl VmConfig {
    /// A config booting `kernel` with defaults for everything else.
    pub fn new(kernel: PathBuf) -> Self {
        VmConfig {
            cpus: CpusConfig::default(),
            memory: MemoryConfig::default(),
            payload: PayloadConfig {
                kernel,
                initramfs: None,
                cmdline: None,
            },
            serial: SerialConfig::default(),
            disks: None,
            rng: None,
            net: None,
            vsock: None,
            balloon: None,
            platform: PlatformConfig::default(),
        }
    }

    /// Parses a JSON config, naming unknown or malformed fields.
    pub fn from_json(text: &str) -> Result<Self, ConfigError> {
        serde_json::from_str(text).map_err(|e| ConfigError::new("config", e.to_string()))
    }

    /// The command line the guest gets.
    pub fn cmdline(&self) -> &str {
        self.payload.cmdline.as_deref().unwrap_or(DEFAULT_CMDLINE)
    }

    /// Checks what can be checked without the host: counts, sizes, required fields.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.cpus.boot_vcpus == 0 {
            return Err(ConfigError::new("cpus.boot_vcpus", "must be at least 1"));
        }
        let max = self.cpus.max_vcpus.unwrap_or(self.cpus.boot_vcpus);
        if max < self.cpus.boot_vcpus {
            return Err(ConfigError::new(
                "cpus.max_vcpus",
                format!("{max} is less than boot_vcpus ({})", self.cpus.boot_vcpus),
            ));
        }
        if let Some(t) = self.cpus.topology {
            t.check(max)?;
        }
        if self.memory.size < MIN_MEMORY {
            return Err(ConfigError::new(
                "memory.size",
                format!("{} bytes is too small (at least 2 MiB)", self.memory.size),
            ));
        }
        if !self.memory.size.is_multiple_of(4096) {
            return Err(ConfigError::new(
                "memory.size",
                "must be a multiple of 4 KiB",
            ));
        }
        if let Some(cmdline) = &self.payload.cmdline {
            if cmdline.len() > MAX_CMDLINE_LEN {
                return Err(ConfigError::new(
                    "payload.cmdline",
                    format!(
                        "is {} bytes, more than the {MAX_CMDLINE_LEN} the guest's command line holds",
                        cmdline.len()
                    ),
                ));
            }
            if cmdline.contains('\0') {
                return Err(ConfigError::new("payload.cmdline", "contains a NUL byte"));
            }
        }
        if self.payload.kernel.as_os_str().is_empty() {
            return Err(ConfigError::new("payload.kernel", "is empty"));
        }
        if self.serial.mode == SerialMode::File && self.serial.file.is_none() {
            return Err(ConfigError::new(
                "serial.file",
                "is required with mode File",
            ));
        }
        for (i, disk) in self.disks.iter().flatten().enumerate() {
            disk.validate(&format!("disks[{i}]"))?;
        }
        Ok(())
    }
}

impl CpuTopology {
    /// Checks the topology describes `vcpus` vCPUs the way petrel presents them: one package,
    /// one die, single-threaded cores.
    pub fn check(&self, vcpus: u32) -> Result<(), ConfigError> {
        let field = |name: &str| format!("cpus.topology.{name}");
        for (name, value) in [
            ("threads_per_core", self.threads_per_core),
            ("dies_per_package", self.dies_per_package),
            ("packages", self.packages),
        ] {
            if value != 1 {
                return Err(ConfigError::new(
                    &field(name),
                    format!(
                        "{value} is not supported (petrel presents one package of \
                         single-threaded cores: only 1)"
                    ),
                ));
            }
        }
        if self.cores_per_die != vcpus {
            return Err(ConfigError::new(
                &field("cores_per_die"),
                format!(
                    "{} does not match the {vcpus} vCPUs (max_vcpus, else boot_vcpus)",
                    self.cores_per_die
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_round_trip_and_unknown_fields() {
        let cfg = VmConfig::from_json(
            r#"{"payload":{"kernel":"/k","cmdline":"x"},"cpus":{"boot_vcpus":2},"memory":{"size":134217728}}"#,
        )
        .unwrap();
        assert_eq!(cfg.cpus.boot_vcpus, 2);
        assert_eq!(cfg.memory.size, 128 << 20);
        assert_eq!(cfg.cmdline(), "x");
        let back = VmConfig::from_json(&serde_json::to_string(&cfg).unwrap()).unwrap();
        assert_eq!(back, cfg);
        let e = VmConfig::from_json(r#"{"payload":{"kernel":"/k"},"memroy":{}}"#).unwrap_err();
        assert!(e.to_string().contains("memroy"), "{e}");
        let e = VmConfig::from_json(r#"{"payload":{"kernel":"/k","initrd":"x"}}"#).unwrap_err();
        assert!(e.to_string().contains("initrd"), "{e}");
    }

    #[test]
    fn validation_names_the_field() {
        let mut cfg = VmConfig::new("/k".into());
        assert!(cfg.validate().is_ok());
        cfg.cpus.boot_vcpus = 0;
        assert_eq!(cfg.validate().unwrap_err().field, "cpus.boot_vcpus");
        cfg.cpus.boot_vcpus = 1;
        cfg.memory.size = 0;
        assert_eq!(cfg.validate().unwrap_err().field, "memory.size");
        cfg.memory.size = 1 << 20;
        assert_eq!(cfg.validate().unwrap_err().field, "memory.size");
        cfg.memory.size = DEFAULT_MEMORY;
        cfg.serial.mode = SerialMode::File;
        assert_eq!(cfg.validate().unwrap_err().field, "serial.file");
        cfg.serial.mode = SerialMode::Off;
        cfg.cpus.boot_vcpus = 2;
        cfg.cpus.max_vcpus = Some(1);
        assert_eq!(cfg.validate().unwrap_err().field, "cpus.max_vcpus");
    }

    #[test]
    fn topology_must_be_one_package_of_single_threaded_cores() {
        let mut cfg = VmConfig::new("/k".into());
        cfg.cpus.boot_vcpus = 2;
        cfg.cpus.max_vcpus = Some(4);
        let kata = CpuTopology {
            threads_per_core: 1,
            cores_per_die: 4,
            dies_per_package: 1,
            packages: 1,
        };
        cfg.cpus.topology = Some(kata);
        assert_eq!(cfg.validate(), Ok(()));
        cfg.cpus.topology = Some(CpuTopology {
            threads_per_core: 2,
            cores_per_die: 2,
            ..kata
        });
        let e = cfg.validate().unwrap_err();
        assert_eq!(e.field, "cpus.topology.threads_per_core", "{e}");
        cfg.cpus.topology = Some(CpuTopology {
            cores_per_die: 2,
            ..kata
        });
        assert_eq!(
            cfg.validate().unwrap_err().field,
            "cpus.topology.cores_per_die"
        );
    }
}
