//! `petrelctl`, the command line people use to drive petrel.
//!
//! The code is split by concern so that a second target (the `petreld` orchestrator, with its
//! own socket option and its own commands) is an addition, not a rewrite:
//!
//! - [`args`]: global options (which [`Target`] to talk to, `-o json|text`, `--timeout`) found
//!   anywhere on the command line; what is left are the command's words.
//! - [`transport`]: one HTTP request over the target's Unix socket, with transport and server
//!   errors turned into one-line messages.
//! - [`daemon`]: the commands of petreld (`--socket PATH`, the default target): VMs,
//!   templates, the host and feature gates.
//! - [`vmm`]: the commands of the per-VM API (`petrel --api-socket`): parsing their words and
//!   running them.
//! - [`output`]: rendering server JSON for people (aligned `key: value` lines, tables).
//!
//! Exit status: 0 on success, 1 when the request failed (one line `petrelctl: <message>` on
//! standard error), 2 for usage errors.

pub mod args;
pub mod daemon;
pub mod output;
pub mod transport;
pub mod vmm;

use std::ffi::OsString;
use std::io::Write;
use std::path::PathBuf;

pub use args::{Invocation, OutputFormat, Parsed};
pub use transport::Api;

/// Exit status of a successful run.
pub const EXIT_OK: i32 = 0;
/// Exit status when the request failed.
pub const EXIT_FAILURE: i32 = 1;
/// Exit status of a usage error.
pub const EXIT_USAGE: i32 = 2;

/// What `petrelctl` talks to. Each variant is selected by its own global option and has its
/// own command set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// One `petrel` process over its per-VM API socket (`--api-socket PATH`).
    Vmm(PathBuf),
    /// The `petreld` orchestrator (`--socket PATH`, else its default socket).
    Daemon(PathBuf),
}

impl Target {
    /// The Unix socket the target listens on.
    pub fn socket(&self) -> &std::path::Path {
        match self {
            Target::Vmm(path) | Target::Daemon(path) => path,
        }
    }
}

/// Why a run failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CtlError {
    /// The command line is wrong (exit status 2).
    #[error("{0}")]
    Usage(String),
    /// The command could not be carried out (exit status 1).
    #[error("{0}")]
    Failed(String),
}

impl CtlError {
    /// A usage error.
    pub fn usage(message: impl Into<String>) -> CtlError {
        CtlError::Usage(message.into())
    }

    /// A failure.
    pub fn failed(message: impl Into<String>) -> CtlError {
        CtlError::Failed(message.into())
    }

    /// The process exit status for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            CtlError::Usage(_) => EXIT_USAGE,
            CtlError::Failed(_) => EXIT_FAILURE,
        }
    }
}

/// Result of `petrelctl`'s functions.
pub type Result<T> = std::result::Result<T, CtlError>;

/// Runs `petrelctl` with `args` (without the program name), writing results to `out` and
/// errors to `err`. Returns the exit status.
pub fn run(
    args: impl IntoIterator<Item = OsString>,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> i32 {
    match try_run(args.into_iter().collect(), out) {
        Ok(()) => EXIT_OK,
        Err(e) => {
            let _ = writeln!(err, "petrelctl: {e}");
            if matches!(e, CtlError::Usage(_)) {
                let _ = writeln!(err, "Try 'petrelctl --help' for more information.");
            }
            e.exit_code()
        }
    }
}

fn try_run(args: Vec<OsString>, out: &mut dyn Write) -> Result<()> {
    let text = match args::parse(args)? {
        Parsed::Help => args::usage(),
        Parsed::Version => format!("petrelctl {}\n", env!("CARGO_PKG_VERSION")),
        Parsed::Run(invocation) => {
            let socket = invocation.target.socket();
            match &invocation.target {
                Target::Vmm(_) => {
                    let command = vmm::parse(&invocation.words)?;
                    let api = Api::new(socket, invocation.timeout);
                    let outcome = vmm::execute(&api, &command)?;
                    outcome.render(invocation.output)
                }
                Target::Daemon(_) => {
                    let command = daemon::parse(&invocation.words)?;
                    let api = Api::new(socket, command.request_timeout(invocation.timeout));
                    let outcome = daemon::execute(&api, &command)?;
                    outcome.render(invocation.output)
                }
            }
        }
    };
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(|e| CtlError::failed(format!("write output: {e}")))
}

/// What a command produced: the server's JSON (if any) and the line(s) for people.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// The server's response body, printed (pretty) with `-o json`.
    pub json: Option<serde_json::Value>,
    /// What people read with `-o text` (ends in a newline unless empty).
    pub text: String,
}

impl Outcome {
    /// The output for `format`: pretty JSON (nothing when the server sent no body) or text.
    pub fn render(&self, format: OutputFormat) -> String {
        match (format, &self.json) {
            (OutputFormat::Json, Some(value)) => {
                let mut s =
                    serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string());
                s.push('\n');
                s
            }
            (OutputFormat::Json, None) => String::new(),
            (OutputFormat::Text, _) => self.text.clone(),
        }
    }
}
