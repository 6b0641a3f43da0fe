//! A file with a size cap, for what petrel writes without bound: its log (`--log-file`) and
//! the guest's serial output (mode `File`, which the guest controls). Files are created 0600:
//! they may hold what the guest printed.
//!
//! Past the cap the file's content is copied to `<file>.1` (replacing the previous one) and
//! the file starts again empty, so the two take at most twice the cap. Rotating opens files,
//! which the seccomp filters of the vCPU and API threads forbid (the process would be
//! killed): a write there past the cap goes on in place up to twice the cap, then is dropped
//! (and counted) until a thread that may open files rotates. Rotation uses only
//! `openat`/`read`/`write` (no `rename`, no `copy_file_range`), which the main thread's
//! filter allows.

use std::cell::Cell;
use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

thread_local! {
    /// Whether this thread's seccomp filter forbids opening files.
    static NO_OPEN: Cell<bool> = const { Cell::new(false) };
}

/// Marks the calling thread as one that must not open files (its seccomp filter kills the
/// process for `openat`): files it writes past their cap are not rotated from it.
pub fn forbid_opening_on_this_thread() {
    NO_OPEN.with(|c| c.set(true));
}

fn may_open_files() -> bool {
    !NO_OPEN.with(Cell::get)
}

/// A size-capped, rotated file.
pub struct RotatingFile {
    path: PathBuf,
    file: File,
    written: u64,
    max: u64,
    /// Bytes dropped since the last rotation (written past twice the cap on a thread that
    /// could not rotate).
    dropped: u64,
}

impl RotatingFile {
    /// Opens `path` to append (created 0600 if missing); rotates past `max` bytes.
    pub fn append(path: &Path, max: u64) -> std::io::Result<RotatingFile> {
        let file = Self::open_file(path, false)?;
        let written = file.metadata()?.len();
        Ok(RotatingFile {
            path: path.to_path_buf(),
            file,
            written,
            max,
            dropped: 0,
        })
    }

    /// Creates (truncates) `path`, 0600 if new; rotates past `max` bytes.
    pub fn create(path: &Path, max: u64) -> std::io::Result<RotatingFile> {
        Ok(RotatingFile {
            path: path.to_path_buf(),
            file: Self::open_file(path, true)?,
            written: 0,
            max,
            dropped: 0,
        })
    }

    fn open_file(path: &Path, truncate: bool) -> std::io::Result<File> {
        let mut opts = File::options();
        if truncate {
            opts.write(true).truncate(true);
        } else {
            opts.append(true);
        }
        opts.create(true).mode(0o600).open(path)
    }

    /// The previous file's name.
    pub fn rotated_path(path: &Path) -> PathBuf {
        let mut name = path.as_os_str().to_owned();
        name.push(".1");
        PathBuf::from(name)
    }

    /// Appends `bytes` whole, rotating first when they would pass the cap.
    pub fn write_line(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        let len = bytes.len() as u64;
        if self.written > 0 && self.written + len > self.max {
            if may_open_files() {
                self.rotate()?;
            } else if self.written + len > 2 * self.max {
                self.dropped += len;
                return Ok(());
            }
        }
        self.file.write_all(bytes)?;
        self.written += len;
        Ok(())
    }

    /// Copies the file to `<file>.1` and empties it.
    fn rotate(&mut self) -> std::io::Result<()> {
        let mut current = File::open(&self.path)?;
        let mut previous = File::options()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(Self::rotated_path(&self.path))?;
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let n = current.read(&mut buf)?;
            if n == 0 {
                break;
            }
            previous.write_all(&buf[..n])?;
        }
        self.file = Self::open_file(&self.path, true)?;
        self.written = 0;
        if self.dropped > 0 {
            let note = format!(
                "[petrel: {} bytes dropped past twice the size cap]\n",
                self.dropped
            );
            self.dropped = 0;
            self.file.write_all(note.as_bytes())?;
            self.written += note.len() as u64;
        }
        Ok(())
    }
}

impl Write for RotatingFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.write_line(buf)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

/// A byte cap from the environment variable `var` (a positive number), else `default`.
pub fn cap_from_env(var: &str, default: u64) -> u64 {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|&n| n > 0)
        .unwrap_or(default)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_rotates_at_its_cap_and_keeps_one_old_file() {
        let dir = std::env::temp_dir().join(format!("petrel-logrot-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("petrel.log");
        let mut log = RotatingFile::append(&path, 100).unwrap();
        let line = [b'x'; 30];
        for _ in 0..20 {
            log.write_line(&line).unwrap();
        }
        let size = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len());
        let old = RotatingFile::rotated_path(&path);
        assert!(size(&path) <= 100, "{}", size(&path));
        assert!(size(&old) <= 100);
        assert!(size(&path) + size(&old) >= 120);
        let entries = std::fs::read_dir(&dir).unwrap().count();
        assert_eq!(entries, 2, "one file and one rotated file");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // `create` starts afresh; `append` continues.
        drop(log);
        let mut again = RotatingFile::append(&path, 100).unwrap();
        let before = size(&path);
        again.write_all(b"yy").unwrap();
        assert_eq!(size(&path), before + 2);
        drop(RotatingFile::create(&path, 100).unwrap());
        assert_eq!(size(&path), 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_thread_that_may_not_open_files_caps_at_twice_and_drops() {
        let dir = std::env::temp_dir().join(format!("petrel-logcap-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("serial.log");
        let mut f = RotatingFile::create(&path, 100).unwrap();
        let size = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len());
        let mut f = std::thread::spawn(move || {
            forbid_opening_on_this_thread();
            for _ in 0..100 {
                f.write_all(b"0123456789").unwrap();
            }
            f
        })
        .join()
        .unwrap();
        assert_eq!(size(&path), 200);
        assert!(!RotatingFile::rotated_path(&path).exists());
        // The next write from a thread that may open files rotates and notes the loss.
        f.write_all(b"x").unwrap();
        assert_eq!(size(&RotatingFile::rotated_path(&path)), 200);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            text,
            "[petrel: 800 bytes dropped past twice the size cap]\nx"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
