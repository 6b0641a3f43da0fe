//! The `petrel` command line: flags (or a JSON `--config-file` of the same `VmConfig` the API
//! uses), `--version` and `--capabilities`.

use api::SerialMode;
use hypervisor::Request;

use crate::run::{run, Options};

mod flags;
#[cfg(test)]
mod tests;

use flags::{Action, Flag, Settings, Stage, Takes, FLAGS};

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

/// The usage text, built from [`FLAGS`].
pub fn usage() -> String {
    let flags: Vec<&str> = FLAGS
        .iter()
        .map(|f| f.usage)
        .filter(|u| !u.is_empty())
        .collect();
    format!(
        "usage: petrel {}
       petrel --api-socket PATH|path=PATH|fd=N [--hypervisor …] [--seccomp …]  (VM created through the API)
       petrel --api-sock PATH | --no-api --config-file FILE [...]  (Firecracker's command line and API;
                                                                   `petrel --api-sock X --help`)
       petrel --version | --capabilities | --help",
        flags.join(" ")
    )
}

/// Splits the arguments into known flags with their values (empty for a flag without one).
fn tokenize(args: &[String]) -> Result<Vec<(&'static Flag, String)>, CliError> {
    let mut flags = Vec::new();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        // `-v`, `-vv`, `-vvv`: one `-v` flag per letter.
        if let Some(vs) = arg.strip_prefix('-').filter(|v| !v.is_empty()) {
            if let (true, Some(v)) = (
                vs.bytes().all(|b| b == b'v'),
                FLAGS.iter().find(|f| f.name == "-v"),
            ) {
                flags.extend(std::iter::repeat_n((v, String::new()), vs.len()));
                continue;
            }
        }
        if !arg.starts_with("--") {
            return Err(CliError::Usage(format!("unexpected argument '{arg}'")));
        }
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            None => (arg.as_str(), None),
        };
        let Some(flag) = FLAGS.iter().find(|f| f.name == name) else {
            return Err(CliError::Usage(format!(
                "unknown option {name}\n{}",
                usage()
            )));
        };
        let value = match (flag.takes, inline) {
            (Takes::Nothing, Some(_)) => {
                return Err(CliError::Usage(format!("{name} takes no value")))
            }
            (Takes::Nothing, None) => String::new(),
            (Takes::InlineValue, inline) => inline.unwrap_or_default(),
            (Takes::Value, Some(v)) => v,
            (Takes::Value, None) => it
                .next()
                .cloned()
                .ok_or_else(|| CliError::Usage(format!("{name} needs a value")))?,
        };
        flags.push((flag, value));
    }
    Ok(flags)
}

/// Without a VM flag, the process needs a VM source or an API socket to wait on.
fn check_vm_source(s: &Settings) -> Result<(), CliError> {
    if s.config.is_none() && s.api_socket.is_none() && s.restore.is_none() {
        return Err(CliError::Usage(format!(
            "missing --kernel (or --config-file, or --api-socket)\n{}",
            usage()
        )));
    }
    Ok(())
}

/// Parses the arguments (without the program name).
pub fn parse(args: &[String]) -> Result<Command, CliError> {
    let mut flags = tokenize(args)?;
    // Stable: flags of one stage keep their command-line order.
    flags.sort_by_key(|(f, _)| f.stage);
    let mut s = Settings::default();
    let twice = flags.iter().enumerate().find_map(|(i, (f, _))| {
        (f.once && flags[..i].iter().any(|(g, _)| g.name == f.name)).then_some(f.name)
    });
    let mut source_checked = false;
    for (flag, value) in flags {
        if let (Some(name), true) = (twice, flag.stage > Stage::Command) {
            return Err(CliError::Usage(format!("{name} given more than once")));
        }
        if flag.stage == Stage::Vm && !source_checked {
            check_vm_source(&s)?;
            source_checked = true;
        }
        match flag.action {
            Action::Command(command) => return Ok(command(&s)),
            Action::Set(set) => set(&mut s, &value)?,
        }
    }
    if !source_checked {
        check_vm_source(&s)?;
    }
    if s.restore.is_some() && s.config.is_some() {
        return Err(CliError::Usage(
            "--restore brings its own VM: drop --kernel/--config-file".into(),
        ));
    }
    let config = s.config;
    Ok(Command::Run(Box::new(Options {
        restore: s.restore,
        serial_mode: config
            .as_ref()
            .map_or(SerialMode::default(), |c| c.serial.mode),
        config,
        hypervisor: s.hypervisor.unwrap_or(Request::Auto),
        mshv_gate: s.mshv_gate,
        no_reboot: s.no_reboot,
        api_socket: s.api_socket,
        log_level: s.log_level,
        log_file: s.log_file,
        id: s.id,
        seccomp: s.seccomp,
        firecracker: None,
        landlock: s.landlock,
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
    let argv0 = std::env::args().next().unwrap_or_default();
    let args: Vec<String> = std::env::args().skip(1).collect();
    if crate::fc_api::cli::selected(&argv0, &args) {
        return crate::fc_api::cli::main(&args);
    }
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
            println!("{}", usage());
            0
        }
        Command::Version => {
            // `NAME vSEMVER`, the form of `cloud-hypervisor --version` (Kata records the line).
            println!("petrel v{}", env!("CARGO_PKG_VERSION"));
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
