//! Visible test skips. A test that cannot run here calls [`skip`] and returns: the reason is
//! printed on stderr and, when `PETREL_SKIP_LOG` names a file (`resources/run-tests.sh` sets
//! it), appended there as one line `<test name>\t<reason>`. The runner subtracts these from
//! cargo's pass count and lists them, so its summary line reads `N passed, N failed,
//! N skipped` with every skip and its reason.

use std::fmt::Display;
use std::fs::OpenOptions;
use std::io::Write;

/// Environment variable naming the file skip records are appended to.
pub const SKIP_LOG_ENV: &str = "PETREL_SKIP_LOG";

/// The current test's name: libtest names each test's thread after the test's path.
pub fn current_test() -> String {
    std::thread::current()
        .name()
        .unwrap_or("unnamed test")
        .to_string()
}

/// Records that the calling test is skipped and why; the caller then returns.
pub fn skip(reason: impl Display) {
    let test = current_test();
    let reason = reason.to_string().replace(['\n', '\t'], " ");
    eprintln!("{test}: SKIPPED: {reason}");
    let Some(path) = std::env::var_os(SKIP_LOG_ENV).filter(|p| !p.is_empty()) else {
        return;
    };
    // One write per record with O_APPEND: lines from parallel tests do not interleave.
    let line = format!("{test}\t{reason}\n");
    let written = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut f| f.write_all(line.as_bytes()));
    if let Err(e) = written {
        // The skip must not pass unseen: a test that cannot record it fails.
        panic!("cannot record the skip in {}: {e}", path.to_string_lossy());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skip_appends_a_record_naming_the_test() {
        let path = std::env::temp_dir().join(format!("test-skip-{}.log", std::process::id()));
        let _ = std::fs::remove_file(&path);
        // Only this test sets the variable in this process (the crate has one test).
        std::env::set_var(SKIP_LOG_ENV, &path);
        skip("no\tdevice\nhere");
        std::env::remove_var(SKIP_LOG_ENV);
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let _ = std::fs::remove_file(&path);
        assert_eq!(
            text,
            "tests::skip_appends_a_record_naming_the_test\tno device here\n"
        );
    }
}
