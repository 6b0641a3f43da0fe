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

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use log::{Level, LevelFilter, Log, Metadata, Record};

static START: OnceLock<Instant> = OnceLock::new();

/// The instant the process started (the first call fixes it; `main` calls it first).
pub fn start_time() -> Instant {
    *START.get_or_init(Instant::now)
}

/// The default size at which a log file is rotated.
pub const DEFAULT_LOG_MAX_BYTES: u64 = 8 << 20;

/// A log file with a size cap: past `max` bytes it becomes `<path>.1` and a new one starts.
pub struct LogFile {
    path: PathBuf,
    file: File,
    written: u64,
    max: u64,
}

impl LogFile {
    /// Opens (appends to) `path`, created 0600; it rotates past `max` bytes.
    pub fn open(path: &Path, max: u64) -> std::io::Result<LogFile> {
        let file = Self::open_file(path)?;
        let written = file.metadata()?.len();
        Ok(LogFile {
            path: path.to_path_buf(),
            file,
            written,
            max,
        })
    }

    fn open_file(path: &Path) -> std::io::Result<File> {
        File::options()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)
    }

    /// The previous file's name.
    pub fn rotated_path(path: &Path) -> PathBuf {
        let mut name = path.as_os_str().to_owned();
        name.push(".1");
        PathBuf::from(name)
    }

    /// Appends `line`, rotating first when it would pass the cap.
    pub fn write_line(&mut self, line: &[u8]) -> std::io::Result<()> {
        if self.written > 0 && self.written + line.len() as u64 > self.max {
            std::fs::rename(&self.path, Self::rotated_path(&self.path))?;
            self.file = Self::open_file(&self.path)?;
            self.written = 0;
        }
        self.file.write_all(line)?;
        self.written += line.len() as u64;
        Ok(())
    }
}

/// Where records go and how they are tagged.
#[derive(Default)]
struct Sink {
    /// `--log-file`, else standard error.
    file: Option<LogFile>,
    /// `--id`: the VM's name, in every line.
    id: Option<String>,
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
        let line = format!(
            "petrel {:>4}.{:06}{id} {level} {}\n",
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
    let max = std::env::var("PETREL_LOG_MAX_BYTES")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|&n| n > 0)
        .unwrap_or(DEFAULT_LOG_MAX_BYTES);
    let file = match file {
        Some(path) => Some(LogFile::open(path, max)?),
        None => None,
    };
    let mut sink = logger.sink.lock().unwrap_or_else(|e| e.into_inner());
    if file.is_some() {
        sink.file = file;
    }
    sink.id = id.map(str::to_owned);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_file_rotates_at_its_cap_and_keeps_one_old_file() {
        let dir = std::env::temp_dir().join(format!("petrel-logrot-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("petrel.log");
        let mut log = LogFile::open(&path, 100).unwrap();
        let line = [b'x'; 30];
        for _ in 0..20 {
            log.write_line(&line).unwrap();
        }
        let size = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len());
        assert!(size(&path) <= 100, "{}", size(&path));
        assert!(size(&LogFile::rotated_path(&path)) <= 100);
        assert!(size(&path) + size(&LogFile::rotated_path(&path)) >= 120);
        let entries = std::fs::read_dir(&dir).unwrap().count();
        assert_eq!(entries, 2, "one file and one rotated file");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
