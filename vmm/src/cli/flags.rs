//! The flags of the `petrel` command line, each listed once in [`FLAGS`] with what it takes,
//! when it is applied, its usage text and what it does.

use std::path::PathBuf;

use api::{
    parse_size, BalloonConfig, ConfigError, DiskConfig, NetConfig, RngConfig, SerialMode, VmConfig,
    VsockConfig,
};
use hypervisor::Request;
use petrel_http::SocketSpec;

use super::{CliError, Command};

fn field_err(field: &str, msg: impl Into<String>) -> String {
    ConfigError::new(field, msg).to_string()
}

/// `--cpus 2` or Cloud Hypervisor's `--cpus boot=2`.
fn parse_cpus(v: &str) -> Result<u32, String> {
    let n = v.strip_prefix("boot=").unwrap_or(v);
    n.parse::<u32>()
        .map_err(|_| field_err("--cpus", format!("'{v}' is not a number of vCPUs")))
}

/// `--memory 512M` or Cloud Hypervisor's `--memory size=512M`.
fn parse_memory(v: &str) -> Result<u64, String> {
    parse_size(v.strip_prefix("size=").unwrap_or(v)).map_err(|e| field_err("--memory", e))
}

fn parse_serial(v: &str, cfg: &mut VmConfig) -> Result<(), String> {
    match v {
        "stdout" | "tty" => cfg.serial.mode = SerialMode::Tty,
        "off" | "null" => cfg.serial.mode = SerialMode::Off,
        _ => match v.strip_prefix("file=") {
            Some(p) if !p.is_empty() => {
                cfg.serial.mode = SerialMode::File;
                cfg.serial.file = Some(PathBuf::from(p));
            }
            _ => {
                return Err(field_err(
                    "--serial",
                    format!("'{v}' (expected stdout, off or file=PATH)"),
                ))
            }
        },
    }
    Ok(())
}

/// `--restore source_url=file:///dir[,prefault=on|off][,resume=on|off]` (Cloud Hypervisor's
/// form).
fn parse_restore(v: &str) -> Result<api::compat::VmRestore, String> {
    let mut r = api::compat::VmRestore {
        source_url: String::new(),
        prefault: false,
        resume: false,
        serial_file: None,
        net_fds: None,
    };
    let on_off = |key: &str, value: &str| match value {
        "on" | "true" => Ok(true),
        "off" | "false" => Ok(false),
        _ => Err(field_err(
            "--restore",
            format!("{key}='{value}' (expected on or off)"),
        )),
    };
    for part in v.split(',').filter(|p| !p.is_empty()) {
        match part.split_once('=') {
            Some(("source_url", url)) => r.source_url = url.to_string(),
            Some(("prefault", value)) => r.prefault = on_off("prefault", value)?,
            Some(("resume", value)) => r.resume = on_off("resume", value)?,
            _ => {
                return Err(field_err(
                    "--restore",
                    format!("'{part}' (expected source_url=, prefault= or resume=)"),
                ))
            }
        }
    }
    if r.source_url.is_empty() {
        return Err(field_err("--restore", "source_url=file:///dir is required"));
    }
    Ok(r)
}

fn read_config_file(path: &str) -> Result<VmConfig, CliError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| CliError::Input(format!("config file {path}: {e}")))?;
    VmConfig::from_json(&text).map_err(|e| CliError::Input(format!("config file {path}: {e}")))
}

/// What a flag takes after its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Takes {
    /// Nothing (`--no-reboot`).
    Nothing,
    /// A value, inline (`--memory=1G`) or as the next argument (`--memory 1G`).
    Value,
    /// Nothing, or a value inline only (`--rng`, `--rng=src=PATH`).
    InlineValue,
}

/// When a flag is applied: flags are applied stage by stage, so that the flags describing
/// the VM override the config file whatever their order on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Stage {
    /// Feature gates (they change what `--capabilities` reports).
    Gates,
    /// Ends parsing with a command (`--help`, `--version`, `--capabilities`).
    Command,
    /// Where the VM comes from and how the process runs; allowed without a VM.
    Process,
    /// `--kernel`, after `--config-file` so that it overrides the file's.
    Kernel,
    /// Describes the VM: needs `--kernel` or `--config-file`.
    Vm,
}

/// What a flag does.
pub(super) enum Action {
    /// Ends parsing with this command.
    Command(fn(&Settings) -> Command),
    /// Changes the settings with the flag's value (empty for a flag without one).
    Set(fn(&mut Settings, &str) -> Result<(), CliError>),
}

/// One flag of the command line: the only place it is listed.
pub(super) struct Flag {
    pub(super) name: &'static str,
    pub(super) takes: Takes,
    pub(super) stage: Stage,
    /// Refused when given more than once.
    pub(super) once: bool,
    /// Its part of the usage line.
    pub(super) usage: &'static str,
    pub(super) action: Action,
}

/// What the flags build.
#[derive(Default)]
pub(super) struct Settings {
    pub(super) mshv_gate: bool,
    pub(super) api_socket: Option<SocketSpec>,
    pub(super) config: Option<VmConfig>,
    pub(super) hypervisor: Option<Request>,
    pub(super) no_reboot: bool,
    pub(super) landlock: bool,
    pub(super) log_level: Option<log::LevelFilter>,
    /// How many `-v` were given.
    pub(super) verbosity: u8,
    pub(super) log_file: Option<PathBuf>,
    pub(super) id: Option<String>,
    pub(super) seccomp: crate::seccomp::SeccompMode,
    pub(super) restore: Option<api::compat::VmRestore>,
}

impl Settings {
    /// The VM config a VM flag changes.
    fn vm(&mut self, flag: &str) -> Result<&mut VmConfig, CliError> {
        self.config.as_mut().ok_or_else(|| {
            CliError::Usage(format!(
                "{flag} describes a VM: give --kernel or --config-file too (or create the VM \
                 through the API)"
            ))
        })
    }
}

fn usage_error(e: impl std::fmt::Display) -> CliError {
    CliError::Usage(e.to_string())
}

fn set_gates(s: &mut Settings, v: &str) -> Result<(), CliError> {
    for gate in v.split(',').filter(|g| !g.is_empty()) {
        match gate {
            "mshv" => s.mshv_gate = true,
            other => {
                return Err(CliError::Usage(field_err(
                    "--feature-gates",
                    format!("unknown gate '{other}' (known: mshv)"),
                )))
            }
        }
    }
    Ok(())
}

pub(super) const FLAGS: &[Flag] = &[
    Flag {
        name: "--kernel",
        takes: Takes::Value,
        stage: Stage::Kernel,
        once: true,
        usage: "--kernel PATH",
        action: Action::Set(|s, v| {
            match s.config.as_mut() {
                Some(c) => c.payload.kernel = PathBuf::from(v),
                None => s.config = Some(VmConfig::new(PathBuf::from(v))),
            }
            Ok(())
        }),
    },
    Flag {
        name: "--initramfs",
        takes: Takes::Value,
        stage: Stage::Vm,
        once: false,
        usage: "[--initramfs PATH]",
        action: Action::Set(|s, v| {
            s.vm("--initramfs")?.payload.initramfs = Some(PathBuf::from(v));
            Ok(())
        }),
    },
    Flag {
        name: "--cmdline",
        takes: Takes::Value,
        stage: Stage::Vm,
        once: false,
        usage: "[--cmdline STR]",
        action: Action::Set(|s, v| {
            s.vm("--cmdline")?.payload.cmdline = Some(v.to_string());
            Ok(())
        }),
    },
    Flag {
        name: "--cpus",
        takes: Takes::Value,
        stage: Stage::Vm,
        once: false,
        usage: "[--cpus N]",
        action: Action::Set(|s, v| {
            s.vm("--cpus")?.cpus.boot_vcpus = parse_cpus(v)?;
            Ok(())
        }),
    },
    Flag {
        name: "--memory",
        takes: Takes::Value,
        stage: Stage::Vm,
        once: false,
        usage: "[--memory SIZE]",
        action: Action::Set(|s, v| {
            s.vm("--memory")?.memory.size = parse_memory(v)?;
            Ok(())
        }),
    },
    Flag {
        name: "--serial",
        takes: Takes::Value,
        stage: Stage::Vm,
        once: false,
        usage: "[--serial stdout|off|file=PATH]",
        action: Action::Set(|s, v| Ok(parse_serial(v, s.vm("--serial")?)?)),
    },
    Flag {
        name: "--hypervisor",
        takes: Takes::Value,
        stage: Stage::Process,
        once: false,
        usage: "[--hypervisor auto|kvm|mshv]",
        action: Action::Set(|s, v| {
            s.hypervisor = Some(
                v.parse()
                    .map_err(|e: String| field_err("--hypervisor", e))?,
            );
            Ok(())
        }),
    },
    Flag {
        name: "--feature-gates",
        takes: Takes::Value,
        stage: Stage::Gates,
        once: false,
        usage: "[--feature-gates LIST]",
        action: Action::Set(set_gates),
    },
    Flag {
        name: "--no-reboot",
        takes: Takes::Nothing,
        stage: Stage::Process,
        once: false,
        usage: "[--no-reboot]",
        action: Action::Set(|s, _| {
            s.no_reboot = true;
            Ok(())
        }),
    },
    Flag {
        name: "--landlock",
        takes: Takes::Nothing,
        stage: Stage::Process,
        once: false,
        usage: "[--landlock]",
        action: Action::Set(|s, _| {
            s.landlock = true;
            Ok(())
        }),
    },
    Flag {
        name: "--config-file",
        takes: Takes::Value,
        stage: Stage::Process,
        once: true,
        usage: "[--config-file FILE]",
        action: Action::Set(|s, v| {
            s.config = Some(read_config_file(v)?);
            Ok(())
        }),
    },
    Flag {
        name: "--disk",
        takes: Takes::Value,
        stage: Stage::Vm,
        once: false,
        usage: "[--disk path=FILE[,readonly=on][,direct=on][,id=ID][,serial=S][,image_type=raw|qcow2|unknown][,backing_files=on]]...",
        action: Action::Set(|s, v| {
            let disk = DiskConfig::parse(v).map_err(usage_error)?;
            s.vm("--disk")?
                .disks
                .get_or_insert_with(Vec::new)
                .push(disk);
            Ok(())
        }),
    },
    Flag {
        name: "--rng",
        takes: Takes::InlineValue,
        stage: Stage::Vm,
        once: false,
        usage: "[--rng[=src=PATH]]",
        action: Action::Set(|s, v| {
            s.vm("--rng")?.rng = Some(RngConfig::parse(v).map_err(usage_error)?);
            Ok(())
        }),
    },
    Flag {
        name: "--balloon",
        takes: Takes::Value,
        stage: Stage::Vm,
        once: false,
        usage: "[--balloon size=SIZE[,deflate_on_oom=on][,statistics_polling_interval_s=N]]",
        action: Action::Set(|s, v| {
            s.vm("--balloon")?.balloon = Some(BalloonConfig::parse(v).map_err(usage_error)?);
            Ok(())
        }),
    },
    Flag {
        name: "--net",
        takes: Takes::Value,
        stage: Stage::Vm,
        once: false,
        usage: "[--net tap=NAME|fd=N[,mac=MAC][,id=ID]]...",
        action: Action::Set(|s, v| {
            let net = NetConfig::parse(v).map_err(usage_error)?;
            s.vm("--net")?.net.get_or_insert_with(Vec::new).push(net);
            Ok(())
        }),
    },
    Flag {
        name: "--vsock",
        takes: Takes::Value,
        stage: Stage::Vm,
        once: false,
        usage: "[--vsock cid=N,socket=PATH]",
        action: Action::Set(|s, v| {
            s.vm("--vsock")?.vsock = Some(VsockConfig::parse(v).map_err(usage_error)?);
            Ok(())
        }),
    },
    Flag {
        name: "--transport",
        takes: Takes::Value,
        stage: Stage::Vm,
        once: true,
        usage: "[--transport mmio|pci]",
        action: Action::Set(|s, v| {
            let t = api::Transport::parse(v).map_err(|e| field_err("--transport", e))?;
            s.vm("--transport")?.platform.transport = t;
            Ok(())
        }),
    },
    Flag {
        name: "--virtio-mmio-cmdline",
        takes: Takes::Nothing,
        stage: Stage::Vm,
        once: false,
        usage: "[--virtio-mmio-cmdline]",
        action: Action::Set(|s, _| {
            s.vm("--virtio-mmio-cmdline")?.platform.virtio_mmio_cmdline = true;
            Ok(())
        }),
    },
    Flag {
        name: "--api-socket",
        takes: Takes::Value,
        stage: Stage::Process,
        once: false,
        usage: "[--api-socket PATH|path=PATH|fd=N]",
        action: Action::Set(|s, v| {
            s.api_socket = Some(
                v.parse::<SocketSpec>()
                    .map_err(|e| field_err("--api-socket", e.to_string()))?,
            );
            Ok(())
        }),
    },
    Flag {
        name: "--restore",
        takes: Takes::Value,
        stage: Stage::Process,
        once: true,
        usage: "[--restore source_url=file:///DIR[,prefault=on][,resume=on]]",
        action: Action::Set(|s, v| {
            s.restore = Some(parse_restore(v)?);
            Ok(())
        }),
    },
    Flag {
        name: "--id",
        takes: Takes::Value,
        stage: Stage::Process,
        once: false,
        usage: "[--id NAME]",
        action: Action::Set(|s, v| {
            s.id = Some(v.to_string());
            Ok(())
        }),
    },
    Flag {
        name: "--log-file",
        takes: Takes::Value,
        stage: Stage::Process,
        once: false,
        usage: "[--log-file PATH]",
        action: Action::Set(|s, v| {
            s.log_file = Some(PathBuf::from(v));
            Ok(())
        }),
    },
    // Cloud Hypervisor's `-v` (repeatable; `-vv` counts two): more log detail, as Kata
    // launches it. One: info, two: debug, more: trace.
    Flag {
        name: "-v",
        takes: Takes::Nothing,
        stage: Stage::Process,
        once: false,
        usage: "[-v|-vv|-vvv]",
        action: Action::Set(|s, _| {
            s.verbosity = s.verbosity.saturating_add(1);
            s.log_level = Some(match s.verbosity {
                1 => log::LevelFilter::Info,
                2 => log::LevelFilter::Debug,
                _ => log::LevelFilter::Trace,
            });
            Ok(())
        }),
    },
    Flag {
        name: "--log-level",
        takes: Takes::Value,
        stage: Stage::Process,
        once: false,
        usage: "[--log-level error|warn|info|debug|trace|off]",
        action: Action::Set(|s, v| {
            s.log_level = Some(crate::logger::parse_level(v).ok_or_else(|| {
                field_err(
                    "--log-level",
                    format!("'{v}' (expected error, warn, info, debug, trace or off)"),
                )
            })?);
            Ok(())
        }),
    },
    Flag {
        name: "--seccomp",
        takes: Takes::Value,
        stage: Stage::Process,
        once: false,
        usage: "[--seccomp true|false|log]",
        action: Action::Set(|s, v| {
            s.seccomp = v.parse().map_err(CliError::Usage)?;
            Ok(())
        }),
    },
    Flag {
        name: "--help",
        takes: Takes::Nothing,
        stage: Stage::Command,
        once: false,
        usage: "",
        action: Action::Command(|_| Command::Help),
    },
    Flag {
        name: "--version",
        takes: Takes::Nothing,
        stage: Stage::Command,
        once: false,
        usage: "",
        action: Action::Command(|_| Command::Version),
    },
    Flag {
        name: "--capabilities",
        takes: Takes::Nothing,
        stage: Stage::Command,
        once: false,
        usage: "",
        action: Action::Command(|s| Command::Capabilities {
            mshv_gate: s.mshv_gate,
        }),
    },
];
