//! A small logger to standard error: time since process start, level, message.
//! The level comes from `PETREL_LOG` (error, warn, info, debug, trace); info by default.

use std::io::Write;
use std::sync::OnceLock;
use std::time::Instant;

use log::{Level, LevelFilter, Log, Metadata, Record};

static START: OnceLock<Instant> = OnceLock::new();

/// The instant the process started (the first call fixes it; `main` calls it first).
pub fn start_time() -> Instant {
    *START.get_or_init(Instant::now)
}

struct StderrLogger;

impl Log for StderrLogger {
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
        let line = format!(
            "petrel {:>4}.{:06} {level} {}\n",
            t.as_secs(),
            t.subsec_micros(),
            record.args()
        );
        // Logging must never take the VMM down: a closed stderr is ignored.
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    fn flush(&self) {}
}

static LOGGER: StderrLogger = StderrLogger;

/// Installs the logger with the level from `PETREL_LOG`.
pub fn init() {
    start_time();
    let level = match std::env::var("PETREL_LOG").as_deref() {
        Ok("error") => LevelFilter::Error,
        Ok("warn") => LevelFilter::Warn,
        Ok("debug") => LevelFilter::Debug,
        Ok("trace") => LevelFilter::Trace,
        Ok("off") => LevelFilter::Off,
        _ => LevelFilter::Info,
    };
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(level);
    }
}
