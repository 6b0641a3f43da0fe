//! Parses petrel's standard error: log lines (`petrel <secs> <LEVEL> <message>`) versus the
//! one-line errors of a failed run, and the debug-port (port 0x80) timing lines.

/// True for a log line: `<name> <seconds> TRACE|DEBUG|INFO|WARN ...` (ERROR-level log lines
/// count as errors).
pub fn is_log_line(line: &str) -> bool {
    let w: Vec<&str> = line.split_whitespace().take(3).collect();
    matches!(w.as_slice(), [_, t, lvl] if t.parse::<f64>().is_ok()
        && ["TRACE", "DEBUG", "INFO", "WARN"].contains(lvl))
}

/// The non-empty lines of `stderr` that are not log lines.
pub fn error_lines(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|l| !l.trim().is_empty() && !is_log_line(l))
        .collect()
}

/// One guest write to the debug port, as petrel logged it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DebugPortWrite {
    /// The byte written.
    pub value: u8,
    /// Milliseconds since petrel started.
    pub ms: f64,
}

/// Parses `... debug port: 0xNN at <number> ms`; `None` for any other line.
pub fn parse_debug_port_line(line: &str) -> Option<DebugPortWrite> {
    let rest = line.split_once("debug port: ")?.1;
    let (value, rest) = rest.split_once(" at ")?;
    let hex = value.strip_prefix("0x").filter(|h| h.len() == 2)?;
    let ms = rest.strip_suffix(" ms")?;
    let ms: f64 = ms
        .parse()
        .ok()
        .filter(|m: &f64| m.is_finite() && *m >= 0.0)?;
    Some(DebugPortWrite {
        value: u8::from_str_radix(hex, 16).ok()?,
        ms,
    })
}

/// Every line of `stderr` that mentions the debug port, parsed (`Err(line)` when a line
/// mentions it but does not have the `debug port: 0xNN at <ms> ms` shape). Summary lines
/// such as "more than N writes" are skipped.
pub fn debug_port_lines(stderr: &str) -> Vec<Result<DebugPortWrite, String>> {
    stderr
        .lines()
        .filter(|l| l.contains("debug port: ") && !l.contains("debug port: more than"))
        .map(|l| parse_debug_port_line(l).ok_or_else(|| l.to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_and_error_lines() {
        let err = "petrel    0.000191 INFO hypervisor: kvm\n\
                   petrel: error: vCPU 0: guest triple fault at rip 0x100f01\n\
                   \n\
                   petrel    1.5 WARN something\n";
        assert_eq!(
            error_lines(err),
            ["petrel: error: vCPU 0: guest triple fault at rip 0x100f01"]
        );
    }

    #[test]
    fn debug_port_line_shape() {
        let w = parse_debug_port_line("petrel 0.01 INFO debug port: 0x2a at 12.345 ms").unwrap();
        assert_eq!(w.value, 0x2a);
        assert!((w.ms - 12.345).abs() < 1e-9);
        for bad in [
            "debug port: 0x2a at ms",
            "debug port: 42 at 1.0 ms",
            "debug port: 0x2a at 1.0",
            "debug port: 0x2a at -1 ms",
        ] {
            assert!(parse_debug_port_line(bad).is_none(), "{bad}");
        }
        let lines = debug_port_lines(
            "x\npetrel 0 INFO debug port: 0x00 at 1 ms\npetrel 0 INFO debug port: junk\n\
             petrel 0 INFO debug port: more than 100 writes; further ones are logged at debug level\n",
        );
        assert_eq!(lines.len(), 2);
        assert!(lines[0].is_ok());
        assert!(lines[1].is_err());
    }
}
