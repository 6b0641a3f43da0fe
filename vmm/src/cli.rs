//! The `petrel` command line: flags (or a JSON `--config-file` of the same `VmConfig` the API
//! uses), `--version` and `--capabilities`.

use std::path::PathBuf;

use api::{
    parse_size, BalloonConfig, ConfigError, DiskConfig, NetConfig, RngConfig, SerialMode, VmConfig,
    VsockConfig,
};
use hypervisor::Request;
use petrel_http::SocketSpec;

use crate::run::{run, Options};

const USAGE: &str = "usage: petrel --kernel PATH [--initramfs PATH] [--cmdline STR] [--cpus N] \
[--memory SIZE] [--serial stdout|off|file=PATH] [--hypervisor auto|kvm|mshv] \
[--feature-gates LIST] [--no-reboot] [--config-file FILE] \
[--disk path=FILE[,readonly=on][,direct=on][,id=ID][,serial=S]]... [--rng[=src=PATH]] \
[--balloon size=SIZE[,deflate_on_oom=on][,statistics_polling_interval_s=N]] \
[--net tap=NAME|fd=N[,mac=MAC][,id=ID]]... [--vsock cid=N,socket=PATH] \
[--virtio-mmio-cmdline] [--api-socket PATH|fd=N] [--id NAME] [--log-file PATH] \
[--log-level error|warn|info|debug|trace|off] [--seccomp true|false|log]
       petrel --api-socket PATH|fd=N [--hypervisor …] [--seccomp …]  (VM created through the API)
       petrel --version | --capabilities | --help";

/// What the command line asks for.
#[derive(Debug)]
pub enum Command {
    /// Run a VM.
    Run(Box<Options>),
    /// Print the version.
    Version,
    /// Print host capabilities.
    Capabilities {
        /// Whether the mshv gate is on (it changes what `auto` picks).
        mshv_gate: bool,
    },
    /// Print usage.
    Help,
}

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

/// Why the command line was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum CliError {
    /// A malformed command line (exit status 2).
    Usage(String),
    /// Bad input the command line points at, such as the config file (exit status 1).
    Input(String),
}

impl From<String> for CliError {
    fn from(s: String) -> Self {
        CliError::Usage(s)
    }
}

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CliError::Usage(s) | CliError::Input(s) => f.write_str(s),
        }
    }
}

fn read_config_file(path: &str) -> Result<VmConfig, CliError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| CliError::Input(format!("config file {path}: {e}")))?;
    VmConfig::from_json(&text).map_err(|e| CliError::Input(format!("config file {path}: {e}")))
}

/// Parses the arguments (without the program name).
pub fn parse(args: &[String]) -> Result<Command, CliError> {
    let mut flags: Vec<(String, Option<String>)> = Vec::new();
    let mut it = args.iter();
    const VALUELESS: [&str; 5] = [
        "--no-reboot",
        "--version",
        "--capabilities",
        "--help",
        "--virtio-mmio-cmdline",
    ];
    const WITH_VALUE: [&str; 18] = [
        "--api-socket",
        "--seccomp",
        "--id",
        "--log-file",
        "--log-level",
        "--disk",
        "--net",
        "--vsock",
        "--balloon",
        "--kernel",
        "--initramfs",
        "--cmdline",
        "--cpus",
        "--memory",
        "--serial",
        "--hypervisor",
        "--feature-gates",
        "--config-file",
    ];
    while let Some(arg) = it.next() {
        if !arg.starts_with("--") {
            return Err(CliError::Usage(format!("unexpected argument '{arg}'")));
        }
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) => (n.to_string(), Some(v.to_string())),
            None => (arg.clone(), None),
        };
        // `--rng` alone, or `--rng=src=PATH` (Cloud Hypervisor's form).
        if name == "--rng" {
            flags.push((name, Some(inline.unwrap_or_default())));
            continue;
        }
        if VALUELESS.contains(&name.as_str()) {
            if inline.is_some() {
                return Err(CliError::Usage(format!("{name} takes no value")));
            }
            flags.push((name, None));
            continue;
        }
        if !WITH_VALUE.contains(&name.as_str()) {
            return Err(CliError::Usage(format!("unknown option {name}\n{USAGE}")));
        }
        let value = match inline {
            Some(v) => v,
            None => it
                .next()
                .cloned()
                .ok_or_else(|| format!("{name} needs a value"))?,
        };
        flags.push((name, Some(value)));
    }
    let has = |n: &str| flags.iter().any(|(f, _)| f == n);
    let mut mshv_gate = false;
    for (name, value) in &flags {
        if name == "--feature-gates" {
            for gate in value
                .as_deref()
                .unwrap_or("")
                .split(',')
                .filter(|g| !g.is_empty())
            {
                match gate {
                    "mshv" => mshv_gate = true,
                    other => {
                        return Err(CliError::Usage(field_err(
                            "--feature-gates",
                            format!("unknown gate '{other}' (known: mshv)"),
                        )))
                    }
                }
            }
        }
    }
    if has("--help") {
        return Ok(Command::Help);
    }
    if has("--version") {
        return Ok(Command::Version);
    }
    if has("--capabilities") {
        return Ok(Command::Capabilities { mshv_gate });
    }

    for once in ["--config-file", "--kernel"] {
        if flags.iter().filter(|(f, _)| f == once).count() > 1 {
            return Err(CliError::Usage(format!("{once} given more than once")));
        }
    }
    let api_socket = match flags.iter().find(|(f, _)| f == "--api-socket") {
        Some((_, Some(v))) => Some(
            v.parse::<SocketSpec>()
                .map_err(|e| field_err("--api-socket", e.to_string()))?,
        ),
        _ => None,
    };
    let has_vm = flags
        .iter()
        .any(|(f, _)| f == "--kernel" || f == "--config-file");
    let mut config = match flags.iter().find(|(f, _)| f == "--config-file") {
        Some((_, Some(path))) => Some(read_config_file(path)?),
        _ => None,
    };
    let kernel = flags
        .iter()
        .find(|(f, _)| f == "--kernel")
        .and_then(|(_, v)| v.clone());
    let mut cfg = match (config.take(), kernel) {
        (Some(mut c), Some(k)) => {
            c.payload.kernel = PathBuf::from(k);
            c
        }
        (Some(c), None) => c,
        (None, Some(k)) => VmConfig::new(PathBuf::from(k)),
        (None, None) if api_socket.is_some() => VmConfig::new(PathBuf::new()),
        (None, None) => {
            return Err(CliError::Usage(format!(
                "missing --kernel (or --config-file, or --api-socket)\n{USAGE}"
            )))
        }
    };
    let mut opts_hv = Request::Auto;
    let (mut log_level, mut log_file, mut id) = (None, None, None);
    let mut seccomp = crate::seccomp::SeccompMode::default();
    let mut no_reboot = false;
    const PROCESS_OPTIONS: [&str; 10] = [
        "--seccomp",
        "--id",
        "--log-file",
        "--log-level",
        "--kernel",
        "--config-file",
        "--feature-gates",
        "--api-socket",
        "--hypervisor",
        "--no-reboot",
    ];
    for (name, value) in flags {
        let v = value.unwrap_or_default();
        if !has_vm && !PROCESS_OPTIONS.contains(&name.as_str()) {
            return Err(CliError::Usage(format!(
                "{name} describes a VM: give --kernel or --config-file too (or create the VM \
                 through the API)"
            )));
        }
        match name.as_str() {
            "--kernel" | "--config-file" | "--feature-gates" | "--api-socket" => {}
            "--log-level" => {
                log_level = Some(crate::logger::parse_level(&v).ok_or_else(|| {
                    field_err(
                        "--log-level",
                        format!("'{v}' (expected error, warn, info, debug, trace or off)"),
                    )
                })?)
            }
            "--log-file" => log_file = Some(PathBuf::from(v)),
            "--id" => id = Some(v),
            "--seccomp" => seccomp = v.parse().map_err(CliError::Usage)?,
            "--initramfs" => cfg.payload.initramfs = Some(PathBuf::from(v)),
            "--cmdline" => cfg.payload.cmdline = Some(v),
            "--cpus" => cfg.cpus.boot_vcpus = parse_cpus(&v)?,
            "--memory" => cfg.memory.size = parse_memory(&v)?,
            "--serial" => parse_serial(&v, &mut cfg)?,
            "--hypervisor" => {
                opts_hv = v
                    .parse()
                    .map_err(|e: String| field_err("--hypervisor", e))?
            }
            "--no-reboot" => no_reboot = true,
            "--disk" => cfg
                .disks
                .get_or_insert_with(Vec::new)
                .push(DiskConfig::parse(&v).map_err(|e| CliError::Usage(e.to_string()))?),
            "--rng" => {
                cfg.rng = Some(RngConfig::parse(&v).map_err(|e| CliError::Usage(e.to_string()))?)
            }
            "--virtio-mmio-cmdline" => cfg.platform.virtio_mmio_cmdline = true,
            "--net" => cfg
                .net
                .get_or_insert_with(Vec::new)
                .push(NetConfig::parse(&v).map_err(|e| CliError::Usage(e.to_string()))?),
            "--vsock" => {
                cfg.vsock =
                    Some(VsockConfig::parse(&v).map_err(|e| CliError::Usage(e.to_string()))?)
            }
            "--balloon" => {
                cfg.balloon =
                    Some(BalloonConfig::parse(&v).map_err(|e| CliError::Usage(e.to_string()))?)
            }
            other => return Err(CliError::Usage(format!("unknown option {other}\n{USAGE}"))),
        }
    }
    Ok(Command::Run(Box::new(Options {
        serial_mode: cfg.serial.mode,
        config: has_vm.then_some(cfg),
        hypervisor: opts_hv,
        mshv_gate,
        no_reboot,
        api_socket,
        log_level,
        log_file,
        id,
        seccomp,
    })))
}

/// The `--capabilities` report, as JSON.
pub fn capabilities_json(mshv_gate: bool) -> serde_json::Value {
    let caps = hypervisor::capabilities();
    let auto = hypervisor::select::decide(Request::Auto, &caps, mshv_gate);
    let max_vcpus = match hypervisor::kvm::KvmHypervisor::new() {
        Ok(kvm) => Some(hypervisor::Hypervisor::max_vcpus(&kvm)),
        Err(_) => None,
    };
    serde_json::json!({
        "version": env!("CARGO_PKG_VERSION"),
        "hypervisors": {
            "kvm": {
                "device": hypervisor::select::KVM_DEVICE,
                "status": caps.kvm.to_string(),
                "built_in": true,
                "max_vcpus": max_vcpus,
            },
            "mshv": {
                "device": hypervisor::select::MSHV_DEVICE,
                "status": caps.mshv.to_string(),
                "built_in": caps.mshv_built_in,
                "gate": if mshv_gate { "on" } else { "off" },
            },
        },
        "auto": match auto {
            Ok(s) => serde_json::json!({"hypervisor": s.kind.to_string(), "reason": s.reason}),
            Err(e) => serde_json::json!({"hypervisor": null, "reason": e.to_string()}),
        },
        "boot_protocols": ["pvh", "bzimage"],
    })
}

/// Entry point of the `petrel` binary; returns the exit status.
pub fn main() -> i32 {
    crate::logger::init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let command = match parse(&args) {
        Ok(c) => c,
        Err(e) => {
            return match e {
                CliError::Input(msg) => {
                    eprintln!("petrel: error: {msg}");
                    1
                }
                CliError::Usage(msg) => {
                    eprintln!("petrel: {msg}");
                    2
                }
            };
        }
    };
    match command {
        Command::Help => {
            println!("{USAGE}");
            0
        }
        Command::Version => {
            println!("petrel {}", env!("CARGO_PKG_VERSION"));
            0
        }
        Command::Capabilities { mshv_gate } => {
            let text = serde_json::to_string_pretty(&capabilities_json(mshv_gate))
                .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
            println!("{text}");
            0
        }
        Command::Run(opts) => match run(&opts) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("petrel: error: {}", crate::error_chain(&e));
                1
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn flags_build_the_config() {
        let Ok(Command::Run(o)) = parse(&args(
            "--kernel /k --cpus boot=2 --memory=256M --serial off --no-reboot --hypervisor kvm",
        )) else {
            panic!("expected run");
        };
        let cfg = o.config.as_ref().unwrap();
        assert_eq!(cfg.cpus.boot_vcpus, 2);
        assert_eq!(cfg.memory.size, 256 << 20);
        assert_eq!(cfg.serial.mode, SerialMode::Off);
        assert!(o.no_reboot);
        assert_eq!(o.hypervisor, Request::Kvm);
    }

    #[test]
    fn bad_flags_are_one_line_errors_naming_the_flag() {
        for (a, want) in [
            ("--kernel /k --memory 12Q", "--memory"),
            ("--kernel /k --cpus two", "--cpus"),
            ("--kernel /k --serial pty", "--serial"),
            ("--kernel /k --hypervisor xen", "--hypervisor"),
            ("--kernel /k --frobnicate 1", "--frobnicate"),
            ("--kernel /k --bogus", "unknown option --bogus"),
            ("--kernel", "needs a value"),
            ("--kernel /k --feature-gates warp", "warp"),
        ] {
            let e = parse(&args(a)).unwrap_err();
            assert!(matches!(e, CliError::Usage(_)), "{a}: {e:?}");
            assert!(e.to_string().contains(want), "{a}: {e}");
        }
        let e = parse(&args("")).unwrap_err();
        assert!(e.to_string().contains("missing --kernel"));
        let e = parse(&args("--config-file a --config-file b")).unwrap_err();
        assert!(e.to_string().contains("more than once"), "{e}");
    }

    #[test]
    fn config_file_problems_are_input_errors() {
        let e = parse(&args("--config-file /nonexistent/petrel.json")).unwrap_err();
        assert!(matches!(e, CliError::Input(_)), "{e:?}");
        assert!(e.to_string().contains("/nonexistent/petrel.json"), "{e}");
    }
}
