//! The command line: global options, accepted before or after the command, and the words
//! left for the target's command parser.
//!
//! Global options: `--api-socket PATH` (the per-VM API of one petrel) or `--socket PATH`
//! (petreld, the default target, on its default socket when not given), `-o|--output
//! json|text`, `--timeout SECONDS`, `-h|--help`, `-V|--version`. Options take their value as
//! the next argument or after `=` (`-ojson` too); `--` ends option parsing.
//!
//! With petreld as the target, commands have options of their own: an option that is not
//! global is left in the command's words, and so is `--timeout` once the command has begun
//! (`vm stop --timeout 5 web`); `--` is kept for the command's parser.

use std::ffi::{OsStr, OsString};
use std::path::PathBuf;
use std::time::Duration;

use super::{CtlError, Result, Target};

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OutputFormat {
    /// Short lines and tables for people.
    #[default]
    Text,
    /// The server's JSON, pretty-printed.
    Json,
}

/// Default time one request may take.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// A command to run against a target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    /// What to talk to.
    pub target: Target,
    /// How to print the result.
    pub output: OutputFormat,
    /// Time one request may take.
    pub timeout: Duration,
    /// The command and its arguments.
    pub words: Vec<OsString>,
}

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// `--help` or `help`: print [`usage`].
    Help,
    /// `--version`.
    Version,
    /// Run a command.
    Run(Invocation),
}

/// The help text.
pub fn usage() -> String {
    format!(
        "\
usage: petrelctl [--socket PATH] [-o text|json] [--timeout SECONDS] COMMAND [ARGS]
       petrelctl --api-socket PATH [-o text|json] [--timeout SECONDS] COMMAND [ARGS]

Drives petreld, the orchestrator (default), or one petrel VM through its per-VM API socket.

petreld commands:
{}
Per-VM API commands (with --api-socket):
{}
Options:
  --socket PATH       petreld's socket (default {})
  --api-socket PATH   one VM's API socket (petrel --api-socket PATH)
  -o, --output FMT    text (default) or json (the server's JSON, pretty)
  --timeout SECONDS   time one request may take (default {})
  -h, --help          this text
  -V, --version       petrelctl's version

Exit status: 0 on success, 1 when the request failed, 2 for usage errors.
",
        super::daemon::command_help(),
        super::vmm::command_help(),
        api::petreld::default_socket().display(),
        DEFAULT_TIMEOUT.as_secs()
    )
}

/// Parses the arguments (without the program name).
pub fn parse(args: Vec<OsString>) -> Result<Parsed> {
    let daemon = !names_api_socket(&args);
    let mut api_socket: Option<PathBuf> = None;
    let mut socket: Option<PathBuf> = None;
    let mut output = OutputFormat::Text;
    let mut timeout = DEFAULT_TIMEOUT;
    let mut words = Vec::new();
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let Some(text) = arg.to_str() else {
            words.push(arg);
            continue;
        };
        if text == "--" {
            if daemon && !words.is_empty() {
                words.push(arg);
            }
            words.extend(args.by_ref());
            break;
        }
        if !text.starts_with('-') || text == "-" {
            words.push(arg);
            continue;
        }
        let (name, inline) = split_option(text);
        // petreld commands have options of their own once the command has begun.
        let in_command = daemon && !words.is_empty();
        let mut value = |name: &str| -> Result<OsString> {
            match &inline {
                Some(v) => Ok(OsString::from(v)),
                None => args
                    .next()
                    .ok_or_else(|| CtlError::usage(format!("option {name} needs a value"))),
            }
        };
        match name {
            "-h" | "--help" => return Ok(Parsed::Help),
            "-V" | "--version" => return Ok(Parsed::Version),
            "--api-socket" => {
                let path = value(name)?;
                if path.is_empty() {
                    return Err(CtlError::usage("--api-socket: empty path"));
                }
                api_socket = Some(PathBuf::from(path));
            }
            "--socket" if !daemon => {
                return Err(CtlError::usage(
                    "--socket (petreld) and --api-socket (one VM): give only one",
                ))
            }
            "--socket" => {
                let path = value(name)?;
                if path.is_empty() {
                    return Err(CtlError::usage("--socket: empty path"));
                }
                socket = Some(PathBuf::from(path));
            }
            "-o" | "--output" => output = parse_output(&value(name)?)?,
            "--timeout" if !in_command => timeout = parse_timeout(&value(name)?)?,
            _ if daemon => words.push(arg),
            _ => return Err(CtlError::usage(format!("unknown option '{text}'"))),
        }
    }
    if words.first().is_some_and(|w| w == "help") {
        return Ok(Parsed::Help);
    }
    let target = match (api_socket, socket) {
        (Some(path), _) => Target::Vmm(path),
        (None, Some(path)) => Target::Daemon(path),
        (None, None) => Target::Daemon(api::petreld::default_socket()),
    };
    if words.is_empty() {
        return Err(CtlError::usage("missing command"));
    }
    Ok(Parsed::Run(Invocation {
        target,
        output,
        timeout,
        words,
    }))
}

/// Whether `--api-socket` (the per-VM target) is among the global options, i.e. before `--`.
fn names_api_socket(args: &[OsString]) -> bool {
    args.iter()
        .filter_map(|a| a.to_str())
        .take_while(|a| *a != "--")
        .any(|a| a == "--api-socket" || a.starts_with("--api-socket="))
}

/// `--name=value` → (`--name`, `value`); `-ojson` → (`-o`, `json`).
fn split_option(text: &str) -> (&str, Option<String>) {
    if text.starts_with("--") {
        match text.split_once('=') {
            Some((name, value)) => (name, Some(value.to_string())),
            None => (text, None),
        }
    } else if text.len() > 2 && text.is_char_boundary(2) {
        (
            &text[..2],
            Some(text[2..].trim_start_matches('=').to_string()),
        )
    } else {
        (text, None)
    }
}

fn parse_output(value: &OsStr) -> Result<OutputFormat> {
    match value.to_str() {
        Some("json") => Ok(OutputFormat::Json),
        Some("text") => Ok(OutputFormat::Text),
        _ => Err(CtlError::usage(format!(
            "unknown output format {value:?} (use json or text)"
        ))),
    }
}

fn parse_timeout(value: &OsStr) -> Result<Duration> {
    value
        .to_str()
        .and_then(|s| s.parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s > 0.0 && *s <= 86_400.0)
        .map(Duration::from_secs_f64)
        .ok_or_else(|| {
            CtlError::usage(format!(
                "--timeout {value:?}: expected seconds between 0 and 86400"
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<OsString> {
        list.iter().map(OsString::from).collect()
    }

    fn run(list: &[&str]) -> Invocation {
        match parse(args(list)).unwrap() {
            Parsed::Run(inv) => inv,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn options_anywhere() {
        let inv = run(&["info", "--api-socket", "/s", "-o", "json"]);
        assert_eq!(inv.target, Target::Vmm("/s".into()));
        assert_eq!(inv.output, OutputFormat::Json);
        assert_eq!(inv.words, args(&["info"]));
        let inv = run(&["--api-socket=/s", "-ojson", "--timeout=1.5", "create", "-"]);
        assert_eq!(inv.output, OutputFormat::Json);
        assert_eq!(inv.timeout, Duration::from_millis(1500));
        assert_eq!(inv.words, args(&["create", "-"]));
        let inv = run(&["--api-socket", "/s", "--", "create", "--odd-name"]);
        assert_eq!(inv.words, args(&["create", "--odd-name"]));
    }

    #[test]
    fn usage_errors() {
        for bad in [
            &["--api-socket", "/s"][..],
            &["--socket", "/d", "--api-socket", "/s", "ping"],
            &["--api-socket", "/s", "--socket", "/d", "ping"],
            &["vm", "list", "--socket"],
            &["--api-socket"],
            &["--api-socket", "/s", "-o", "yaml", "ping"],
            &["--api-socket", "/s", "--timeout", "0", "ping"],
            &["--api-socket", "/s", "--bogus", "ping"],
        ] {
            let e = parse(args(bad)).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{bad:?}: {e}");
        }
        assert_eq!(parse(args(&["--help"])).unwrap(), Parsed::Help);
        assert_eq!(parse(args(&["help"])).unwrap(), Parsed::Help);
        assert_eq!(parse(args(&["-V"])).unwrap(), Parsed::Version);
    }

    #[test]
    fn petreld_target() {
        let inv = run(&[
            "--timeout",
            "5",
            "vm",
            "stop",
            "--timeout",
            "3",
            "web",
            "-ojson",
        ]);
        assert_eq!(inv.target, Target::Daemon(api::petreld::default_socket()));
        assert_eq!(inv.timeout, Duration::from_secs(5));
        assert_eq!(inv.output, OutputFormat::Json);
        assert_eq!(inv.words, args(&["vm", "stop", "--timeout", "3", "web"]));
        let inv = run(&[
            "vm",
            "list",
            "--socket=/d",
            "--state",
            "running",
            "--",
            "-x",
        ]);
        assert_eq!(inv.target, Target::Daemon("/d".into()));
        assert_eq!(
            inv.words,
            args(&["vm", "list", "--state", "running", "--", "-x"])
        );
        let inv = run(&["--", "host"]);
        assert_eq!(inv.words, args(&["host"]));
    }
}
