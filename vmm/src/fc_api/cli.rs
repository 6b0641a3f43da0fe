//! Firecracker's command line: `petrel --api-sock PATH …`, or the binary invoked as
//! `firecracker`. The flags are Firecracker's; what petrel cannot do is refused by name.

use std::path::{Path, PathBuf};

use petrel_http::SocketSpec;

use super::types::{parse_level, FcConfig, Logger, Metrics};
use super::{FcApi, FC_API_VERSION};
use crate::event_loop::EventLoop;
use crate::lifecycle::Vmm;
use crate::run::Options;
use crate::seccomp::SeccompMode;

/// Firecracker's default API socket.
pub const DEFAULT_API_SOCK: &str = "/run/firecracker.socket";

/// Firecracker's default instance id.
pub const DEFAULT_ID: &str = "anonymous-instance";

/// How the process was launched in the Firecracker dialect.
#[derive(Debug, Clone, Default)]
pub struct FcLaunch {
    /// `--id`.
    pub id: String,
    /// `--config-file`, parsed.
    pub config: Option<FcConfig>,
    /// `--metrics-path`.
    pub metrics_path: Option<String>,
    /// `--boot-timer`.
    pub boot_timer: bool,
    /// `--no-api`: the config file must start the microVM.
    pub no_api: bool,
    /// `--show-log-origin`.
    pub show_log_origin: bool,
    /// `--metadata`: a JSON file put into the MMDS at start.
    pub metadata: Option<String>,
    /// `--mmds-size-limit`: the MMDS data store's limit in bytes.
    pub mmds_size_limit: Option<usize>,
}

/// Whether these arguments (program name first) select the Firecracker dialect: the program
/// is called `firecracker`, or a flag only Firecracker has is given.
pub fn selected(argv0: &str, args: &[String]) -> bool {
    let name = Path::new(argv0)
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    name == "firecracker"
        || args.iter().any(|a| {
            let flag = a.split('=').next().unwrap_or("");
            flag == "--api-sock" || flag == "--no-api"
        })
}

/// The `--version` line: Firecracker's form (`Firecracker vX.Y.Z`, which Kata's driver and the
/// SDKs split on the space) with the API version followed, and what is really answering.
pub fn version_line() -> String {
    format!(
        "Firecracker v{FC_API_VERSION} (petrel v{}, Firecracker API dialect)",
        env!("CARGO_PKG_VERSION")
    )
}

/// The `--help` text.
pub fn usage() -> String {
    "petrel, speaking Firecracker's command line and API\n\
     usage: firecracker [--api-sock PATH | --no-api] [--config-file FILE] [--id ID]\n\
     \x20      [--log-path PATH] [--level Error|Warning|Info|Debug|Trace|Off] [--show-level]\n\
     \x20      [--show-log-origin] [--metrics-path PATH] [--boot-timer] [--no-seccomp]\n\
     \x20      [--http-api-max-payload-size N] [--start-time-us N] [--start-time-cpu-us N]\n\
     \x20      [--parent-cpu-time-us N] [--metadata FILE] [--mmds-size-limit BYTES]\n\
     \x20      firecracker --version | --help\n\
     Not supported: --seccomp-filter (Firecracker's compiled BPF files; petrel applies its own \
     filters), --module.\n\
     --describe-snapshot FILE prints the format version of a state file petrel wrote."
        .to_string()
}

/// What the command line asks for.
#[derive(Debug)]
pub enum FcCommand {
    /// Run the VMM.
    Run(Box<Options>),
    /// Print the version.
    Version,
    /// Print the format version of a snapshot's state file.
    DescribeSnapshot(String),
    /// Print the usage.
    Help,
}

fn read_config(path: &str) -> Result<FcConfig, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("config file {path}: {e}"))?;
    serde_json::from_str(&text).map_err(|e| format!("config file {path}: {e}"))
}

/// Parses Firecracker's flags (without the program name).
pub fn parse(args: &[String]) -> Result<FcCommand, String> {
    let mut launch = FcLaunch {
        id: DEFAULT_ID.to_string(),
        ..FcLaunch::default()
    };
    let mut api_sock = Some(PathBuf::from(DEFAULT_API_SOCK));
    let mut no_api = false;
    let mut logger = Logger::default();
    let mut seccomp = SeccompMode::Enforce;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            None => (arg.as_str(), None),
        };
        // Firecracker spells its flags with two dashes; one is accepted too.
        let name = format!("--{}", name.trim_start_matches('-'));
        let mut value = || {
            inline
                .clone()
                .or_else(|| it.next().cloned())
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match name.as_str() {
            "--version" => return Ok(FcCommand::Version),
            "--help" => return Ok(FcCommand::Help),
            "--api-sock" => api_sock = Some(PathBuf::from(value()?)),
            "--no-api" => no_api = true,
            "--id" => {
                let id = value()?;
                if id.is_empty()
                    || id.len() > 64
                    || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                {
                    return Err(format!(
                        "--id '{id}': 1 to 64 characters, alphanumeric or '-'"
                    ));
                }
                launch.id = id;
            }
            "--config-file" => launch.config = Some(read_config(&value()?)?),
            "--log-path" => logger.log_path = Some(value()?),
            "--level" => {
                let level = value()?;
                parse_level(&level)?;
                logger.level = Some(level);
            }
            "--show-level" => logger.show_level = Some(true),
            // petrel's lines always show the level.
            "--show-log-origin" => launch.show_log_origin = true,
            "--metrics-path" => launch.metrics_path = Some(value()?),
            "--boot-timer" => launch.boot_timer = true,
            "--no-seccomp" => seccomp = SeccompMode::Off,
            "--seccomp-filter" => {
                let file = value()?;
                return Err(format!(
                    "--seccomp-filter {file}: petrel cannot load Firecracker's compiled seccomp \
                     filters; it applies its own per-thread filters (leave the flag out), or \
                     --no-seccomp turns them off"
                ));
            }
            "--http-api-max-payload-size"
            | "--start-time-us"
            | "--start-time-cpu-us"
            | "--parent-cpu-time-us" => {
                let v = value()?;
                v.parse::<u64>()
                    .map_err(|_| format!("{name}: '{v}' is not a number"))?;
            }
            "--metadata" => launch.metadata = Some(value()?),
            "--mmds-size-limit" => {
                let v = value()?;
                launch.mmds_size_limit = Some(
                    v.parse::<usize>()
                        .map_err(|_| format!("{name}: '{v}' is not a number"))?,
                );
            }
            "--module" => return Err("--module: petrel cannot filter its log by module".into()),
            "--describe-snapshot" => return Ok(FcCommand::DescribeSnapshot(value()?)),
            "--snapshot-version" => {
                return Err(format!(
                    "{name}: petrel writes one snapshot format (version {}); there is no \
                     other to choose",
                    crate::snapshot::VERSION
                ))
            }
            _ => {
                return Err(format!(
                    "Found argument '{arg}' which wasn't expected.\n{}",
                    usage()
                ))
            }
        }
    }
    if no_api {
        if launch
            .config
            .as_ref()
            .is_none_or(|c| c.boot_source.is_none())
        {
            return Err(
                "--no-api needs --config-file with a boot-source (nothing else could start the \
                 microVM)"
                    .into(),
            );
        }
        launch.no_api = true;
        api_sock = None;
    }
    let log_level = logger.level.as_deref().map(parse_level).transpose()?;
    Ok(FcCommand::Run(Box::new(Options {
        config: None,
        hypervisor: hypervisor::Request::Auto,
        mshv_gate: false,
        // Firecracker ends the process when the guest resets or powers off.
        no_reboot: true,
        api_socket: api_sock.map(SocketSpec::Path),
        serial_mode: api::SerialMode::Tty,
        log_level,
        log_file: logger.log_path.map(PathBuf::from),
        id: Some(launch.id.clone()),
        seccomp,
        firecracker: Some(launch),
        restore: None,
        // Firecracker has no Landlock; its users confine it with the jailer.
        landlock: false,
    })))
}

/// After the event loop exists: the metrics path and the config file; a config file with a
/// boot source starts the microVM at once, as Firecracker does.
pub fn start(
    fc: &mut FcApi,
    launch: &FcLaunch,
    vmm: &mut Vmm,
    event_loop: &mut EventLoop,
) -> Result<(), String> {
    if let Some(path) = &launch.metrics_path {
        fc.put_metrics(Metrics {
            metrics_path: path.clone(),
        })?;
    }
    if let Some(limit) = launch.mmds_size_limit {
        fc.set_mmds_size_limit(limit);
    }
    if let Some(path) = &launch.metadata {
        let text = std::fs::read_to_string(path).map_err(|e| format!("--metadata {path}: {e}"))?;
        let data = serde_json::from_str(&text).map_err(|e| format!("--metadata {path}: {e}"))?;
        fc.put_mmds(data).map_err(|r| {
            format!(
                "--metadata {path}: {}",
                String::from_utf8_lossy(&r.body).trim()
            )
        })?;
    }
    if launch.boot_timer {
        log::info!(
            "--boot-timer: petrel logs guest boot milestones written to the port 0x80 debug device"
        );
    }
    if let Some(cfg) = &launch.config {
        let boots = cfg.boot_source.is_some();
        fc.apply_config(cfg.clone())?;
        if boots {
            fc.instance_start(vmm, event_loop)?;
            fc.flush_metrics(vmm)?;
        }
    }
    Ok(())
}

/// The files the main thread may open when the microVM comes from `--config-file` with
/// `--no-api` (every path is then known at start, as in the Cloud Hypervisor dialect's
/// `--config-file` without a socket): the microVM's (its config as petrel's), the log, the
/// metrics file and the `--metadata` file. None when the config cannot make a microVM (the
/// start then fails with Firecracker's message).
pub fn landlock_rules(
    launch: &FcLaunch,
    log_file: Option<&Path>,
) -> Option<Vec<crate::landlock::Rule>> {
    use crate::landlock::{output_rule, read_rule, rules};
    let cfg = launch.config.as_ref()?;
    let vm = cfg.to_vm_config().ok()?;
    let mut out = rules(&vm, log_file);
    let outputs = [
        launch.metrics_path.as_deref(),
        cfg.metrics.as_ref().map(|m| m.metrics_path.as_str()),
        cfg.logger.as_ref().and_then(|l| l.log_path.as_deref()),
    ];
    out.extend(
        outputs
            .into_iter()
            .flatten()
            .map(|p| output_rule(Path::new(p))),
    );
    out.extend(launch.metadata.as_deref().map(|p| read_rule(Path::new(p))));
    Some(out)
}

/// Entry point in the Firecracker dialect; returns the exit status.
pub fn main(args: &[String]) -> i32 {
    match parse(args) {
        Ok(FcCommand::Version) => {
            println!("{}", version_line());
            0
        }
        Ok(FcCommand::Help) => {
            println!("{}", usage());
            0
        }
        Ok(FcCommand::DescribeSnapshot(path)) => {
            match crate::snapshot::two_files::read_header(Path::new(&path)) {
                // Firecracker prints `vX.Y.Z`; the first word stays that shape.
                Ok(h) => {
                    println!(
                        "v{}.0.0 ({} format {}, written by petrel {})",
                        h.version, h.format, h.version, h.petrel_version
                    );
                    0
                }
                Err(e) => {
                    eprintln!("--describe-snapshot {path}: {}", crate::error_chain(&e));
                    1
                }
            }
        }
        Ok(FcCommand::Run(opts)) => {
            if opts.firecracker.as_ref().is_some_and(|l| l.show_log_origin) {
                crate::logger::show_origin(true);
            }
            match crate::run::run(&opts) {
                Ok(code) => code,
                Err(e) => {
                    eprintln!(
                        "petrel (firecracker dialect): error: {}",
                        crate::error_chain(&e)
                    );
                    1
                }
            }
        }
        Err(msg) => {
            eprintln!("petrel (firecracker dialect): {msg}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_dialect_is_chosen_by_name_or_by_firecracker_flags() {
        assert!(selected("/usr/bin/firecracker", &[]));
        assert!(selected("petrel", &args(&["--api-sock", "/tmp/s"])));
        assert!(selected(
            "petrel",
            &args(&["--no-api", "--config-file", "x"])
        ));
        assert!(!selected("petrel", &args(&["--api-socket", "/tmp/s"])));
    }

    #[test]
    fn version_line_is_parsed_as_firecracker_tools_do() {
        let line = version_line();
        let fields: Vec<&str> = line.split(' ').collect();
        assert_eq!(fields[0], "Firecracker");
        let v = fields[1].trim_start_matches('v');
        assert_eq!(v.split('.').filter(|p| p.parse::<u32>().is_ok()).count(), 3);
        assert!(line.contains("petrel"));
    }

    #[test]
    fn flags_are_read_and_unsupported_ones_named() {
        let FcCommand::Run(o) = parse(&args(&[
            "--api-sock",
            "/tmp/a.sock",
            "--id",
            "vm-1",
            "--level",
            "Warning",
        ]))
        .unwrap() else {
            panic!("not a run")
        };
        assert_eq!(o.id.as_deref(), Some("vm-1"));
        assert_eq!(o.log_level, Some(log::LevelFilter::Warn));
        assert!(o.no_reboot);
        let e = parse(&args(&["--seccomp-filter", "f.bpf"])).unwrap_err();
        assert!(e.contains("seccomp"), "{e}");
        assert!(parse(&args(&["--no-api"]))
            .unwrap_err()
            .contains("--config-file"));
        assert!(parse(&args(&["--level", "Loud"])).is_err());
        assert!(parse(&args(&["--bogus"])).is_err());
        assert!(matches!(
            parse(&args(&["--version"])),
            Ok(FcCommand::Version)
        ));
    }
}
