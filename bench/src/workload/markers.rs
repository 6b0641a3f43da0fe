//! The `BENCH: begin` / `BENCH: end n=…` markers the test guest's benchmark actions print,
//! read from one boot's output: the checks every device workload makes before trusting a run,
//! and the loop's duration from when the markers arrived.

use std::time::Duration;

use crate::child::Measured;

const BEGIN: &[u8] = b"BENCH: begin\n";
const END: &[u8] = b"BENCH: end n=";
const POWEROFF: &[u8] = b"PETREL-GUEST: poweroff";

/// Where `needle` first occurs in `hay`.
pub(super) fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The decimal number at the start of `s`.
pub(super) fn number(s: &[u8]) -> u64 {
    s.iter()
        .take_while(|b| b.is_ascii_digit())
        .fold(0u64, |v, &b| {
            v.saturating_mul(10).saturating_add(u64::from(b - b'0'))
        })
}

/// A run whose markers are all there.
pub(super) struct Markers<'a> {
    begin: usize,
    end: usize,
    /// The `n=` the guest reported.
    pub n: u64,
    /// The output after `BENCH: end n=` (for further `key=value` fields).
    pub rest: &'a [u8],
}

/// Checks a boot's output: no error line (`BENCH: error` or one of `errors`), not
/// interrupted or timed out, exit 0, both markers and the poweroff line present.
pub(super) fn read<'a>(m: &'a Measured, errors: &[&[u8]]) -> Result<Markers<'a>, String> {
    let out = &m.stdout;
    let error = std::iter::once(&b"BENCH: error"[..])
        .chain(errors.iter().copied())
        .find_map(|tag| find(out, tag));
    if let Some(i) = error {
        let line = out[i..].split(|&b| b == b'\n').next().unwrap_or_default();
        return Err(String::from_utf8_lossy(line).into_owned());
    }
    if m.interrupted {
        return Err("interrupted".into());
    }
    if m.timed_out {
        return Err("timed out (killed)".into());
    }
    if !m.status.success() {
        return Err(format!("VMM ended with {}", m.status));
    }
    let begin = find(out, BEGIN).ok_or("no `BENCH: begin`")?;
    let end = find(out, END).ok_or("no `BENCH: end`")?;
    if find(out, POWEROFF).is_none() {
        return Err("guest did not power off".into());
    }
    let rest = &out[end + END.len()..];
    Ok(Markers {
        begin,
        end,
        n: number(rest),
        rest,
    })
}

impl Markers<'_> {
    /// The loop's duration: from the arrival of the begin line's end to the end marker.
    pub(super) fn duration(&self, m: &Measured) -> Result<Duration, String> {
        let t0 = m
            .arrival(self.begin + BEGIN.len() - 1)
            .ok_or("begin marker not timed")?;
        let t1 = m.arrival(self.end).ok_or("end marker not timed")?;
        t1.checked_sub(t0)
            .filter(|d| !d.is_zero())
            .ok_or_else(|| "markers out of order".to_string())
    }
}
