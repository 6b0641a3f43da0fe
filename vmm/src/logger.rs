//! petrel's logger: one line per record — time since process start, the VM id when one was
//! given (`--id`), level, message — to standard error or to `--log-file`.
//!
//! The level comes from `--log-level` or `PETREL_LOG` (error, warn, info, debug, trace, off);
//! info by default. The logger is installed first thing with the environment's level, and
//! reconfigured once the command line is parsed.
//!
//! A `--log-file` is bounded: past `PETREL_LOG_MAX_BYTES` (default 8 MiB) it is renamed to
//! `<file>.1` (replacing the previous one) and a new file is started, so a VM's logs never
//! take more than twice that.

use std::io::Write;
use std::path::Path;
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use log::{Level, LevelFilter, Log, Metadata, Record};

use crate::rotating_file::RotatingFile;

static START: OnceLock<Instant> = OnceLock::new();

/// The instant the process started (the first call fixes it; `main` calls it first).
pub fn start_time() -> Instant {
    *START.get_or_init(Instant::now)
}

/// The default size at which a log file is rotated.
pub const DEFAULT_LOG_MAX_BYTES: u64 = 8 << 20;

/// Where records go and how they are tagged.
#[derive(Default)]
struct Sink {
    /// `--log-file`, else standard error.
    file: Option<RotatingFile>,
    /// `--id`: the VM's name, in every line.
    id: Option<String>,
    /// Each line names the source file and line it comes from (Firecracker's
    /// `--show-log-origin`).
    origin: bool,
}

struct Logger {
    sink: Mutex<Sink>,
}

impl Log for Logger {
    fn enabled(&self, _: &Metadata) -> bool {
        true
    }

    fn log(&self, record: &Record) {
        let t = start_time().elapsed();
        let level = match record.level() {
            Level::Error => "ERROR",
            Level::Warn => "WARN",
            Level::Info => "INFO",
            Level::Debug => "DEBUG",
            Level::Trace => "TRACE",
        };
        let mut sink = self.sink.lock().unwrap_or_else(|e| e.into_inner());
        let id = sink
            .id
            .as_deref()
            .map(|id| format!(" [{id}]"))
            .unwrap_or_default();
        let origin = match (sink.origin, record.file(), record.line()) {
            (true, Some(file), Some(line)) => format!(" {file}:{line}"),
            _ => String::new(),
        };
        let line = format!(
            "petrel {:>4}.{:06}{id} {level}{origin} {}\n",
            t.as_secs(),
            t.subsec_micros(),
            record.args()
        );
        // Logging must never take the VMM down: write errors are ignored.
        match sink.file.as_mut() {
            Some(f) => {
                let _ = f.write_line(line.as_bytes());
            }
            None => {
                let _ = std::io::stderr().lock().write_all(line.as_bytes());
            }
        }
    }

    fn flush(&self) {}
}

static LOGGER: OnceLock<Logger> = OnceLock::new();

/// Parses a level name.
pub fn parse_level(s: &str) -> Option<LevelFilter> {
    Some(match s {
        "error" => LevelFilter::Error,
        "warn" => LevelFilter::Warn,
        "info" => LevelFilter::Info,
        "debug" => LevelFilter::Debug,
        "trace" => LevelFilter::Trace,
        "off" => LevelFilter::Off,
        _ => return None,
    })
}

/// Installs the logger with the level from `PETREL_LOG` (info when unset or unknown).
pub fn init() {
    start_time();
    let level = std::env::var("PETREL_LOG")
        .ok()
        .and_then(|l| parse_level(&l))
        .unwrap_or(LevelFilter::Info);
    let logger = LOGGER.get_or_init(|| Logger {
        sink: Mutex::new(Sink::default()),
    });
    if log::set_logger(logger).is_ok() {
        log::set_max_level(level);
    }
}

/// Applies the command line's logging options.
pub fn configure(
    level: Option<LevelFilter>,
    file: Option<&Path>,
    id: Option<&str>,
) -> std::io::Result<()> {
    if let Some(level) = level {
        log::set_max_level(level);
    }
    let Some(logger) = LOGGER.get() else {
        return Ok(());
    };
    let max = crate::rotating_file::cap_from_env("PETREL_LOG_MAX_BYTES", DEFAULT_LOG_MAX_BYTES);
    let file = match file {
        Some(path) => Some(RotatingFile::append(path, max)?),
        None => None,
    };
    let mut sink = logger.sink.lock().unwrap_or_else(|e| e.into_inner());
    if file.is_some() {
        sink.file = file;
    }
    sink.id = id.map(str::to_owned);
    Ok(())
}

/// Whether each line names its source file and line.
pub fn show_origin(on: bool) {
    if let Some(logger) = LOGGER.get() {
        logger.sink.lock().unwrap_or_else(|e| e.into_inner()).origin = on;
    }
}
