//! Exit cost: the test guest makes N writes to an I/O port (`exits=N exitport=P`), each a VM
//! exit that the VMM handles in user space, and the time per exit is derived from three boots
//! per run: N writes to port 0x80 (a debug/logging device in petrel and Cloud Hypervisor), N
//! writes to a port no VMM claims ([`UNCLAIMED_PORT`]), and a baseline with none. A run where
//! either loop took less time than the baseline fails (noise larger than the signal is not a
//! measurement).
//!
//! Timing is taken on the VMM's stdout (the guest's serial console): from the arrival of the
//! end of the guest's `CPUS: up=…` line, its last line before the loop, to the arrival of
//! its `EXITS: done n=N` line. `(loop(N) - loop(0)) / N` is the time per exit; the baseline
//! removes what the two markers themselves cost. petrel runs with `PETREL_LOG=warn` so that
//! its debug-port log (info level for the first 64 writes) does not dominate.
//!
//! The loop runs in guest ring 0, which PVM hosts emulate: there the number includes the
//! emulation of `out` and of the loop instructions, not only the exit to the VMM.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{Metric, RunContext, RunRecord, Workload};
use crate::child::{self, Measured};
use crate::live::find;
use crate::peers::{GuestSpec, Vmm, VmmKind, POWEROFF_MARKER};

const START: &[u8] = b"CPUS: up=";
const DONE: &[u8] = b"EXITS: done n=";

/// A port that none of the VMMs under test claims (the PC game port, absent everywhere): its
/// writes reach each VMM's "no device here" path.
pub const UNCLAIMED_PORT: u16 = 0x200;

const METRICS: &[Metric] = &[
    Metric {
        key: "exit_us",
        label: "time per port-0x80 exit",
        unit: "us",
    },
    Metric {
        key: "unclaimed_exit_us",
        label: "time per unclaimed-port exit",
        unit: "us",
    },
    Metric {
        key: "kexits_per_s",
        label: "exits per second",
        unit: "k/s",
    },
    Metric {
        key: "loop_ms",
        label: "loop of N exits",
        unit: "ms",
    },
];

/// The workload: two boots per run (N exits, then none).
#[derive(Debug, Clone)]
pub struct ExitCost {
    /// The PVH test guest image.
    pub kernel: PathBuf,
    /// Port writes in the measured boot.
    pub exits: u64,
    /// Guest memory in MiB.
    pub memory_mib: u32,
}

impl ExitCost {
    /// The workload on `kernel` (1 vCPU, 128 MiB): 100,000 exits, 20,000 with `quick`.
    pub fn new(kernel: PathBuf, quick: bool) -> ExitCost {
        ExitCost {
            kernel,
            exits: if quick { 20_000 } else { 100_000 },
            memory_mib: 128,
        }
    }

    fn guest(&self, exits: u64, port: u16) -> GuestSpec {
        GuestSpec {
            kernel: self.kernel.clone(),
            cpus: 1,
            memory_mib: self.memory_mib,
            cmdline: format!("action=poweroff exits={exits} exitport={port}"),
        }
    }

    /// Boots once with `exits` writes to `port`; returns the loop's duration.
    fn boot(
        &self,
        vmm: &Vmm,
        (exits, port): (u64, u16),
        ctx: &RunContext,
        log: &Path,
    ) -> Result<Duration, String> {
        let mut cmd = vmm
            .command(&self.guest(exits, port), &ctx.scratch)
            .map_err(|e| format!("cannot run {}: {e}", vmm.name()))?;
        if vmm.kind == VmmKind::Petrel {
            cmd.env("PETREL_LOG", "warn");
        }
        cmd.stderr(File::create(log).map_err(|e| format!("{}: {e}", log.display()))?);
        let m = child::run_measured(cmd, ctx.timeout)
            .map_err(|e| format!("cannot run {}: {e}", vmm.name()))?;
        let r = loop_time(&m, exits, POWEROFF_MARKER);
        if r.is_err() {
            let _ = fs::write(log.with_extension("serial"), &m.stdout);
        }
        r.map_err(|e| format!("exits={exits} exitport={port}: {e}"))
    }
}

/// The loop's duration from one boot's output, or why the boot does not count.
fn loop_time(m: &Measured, want: u64, marker: &str) -> Result<Duration, String> {
    if m.interrupted {
        return Err("interrupted".into());
    }
    if m.timed_out {
        return Err("timed out (killed)".into());
    }
    if !m.status.success() {
        return Err(format!("VMM ended with {}", m.status));
    }
    let out = &m.stdout;
    let start = find(out, START).ok_or("no `CPUS: up=` line")?;
    let start_end = start
        + out[start..]
            .iter()
            .position(|&b| b == b'\n')
            .ok_or("`CPUS: up=` line not ended")?;
    let done = find(out, DONE).ok_or("no `EXITS: done` line")?;
    let n = parse_decimal(&out[done + DONE.len()..]);
    if n != Some(want) {
        return Err(format!("guest reported {n:?} exits, expected {want}"));
    }
    if find(out, marker.as_bytes()).is_none() {
        return Err(format!("guest never printed {marker:?}"));
    }
    let t0 = m.arrival(start_end).ok_or("start marker not timed")?;
    let t1 = m.arrival(done).ok_or("end marker not timed")?;
    t1.checked_sub(t0)
        .ok_or_else(|| "markers out of order".into())
}

/// The decimal number at the start of `s`.
fn parse_decimal(s: &[u8]) -> Option<u64> {
    let digits: Vec<u8> = s.iter().copied().take_while(u8::is_ascii_digit).collect();
    std::str::from_utf8(&digits).ok()?.parse().ok()
}

/// Time per exit in µs from the loop of `n` exits and the baseline loop of none; an error
/// when there were no exits or the loop was not slower than the baseline (the run then does
/// not count: clamping it to 0 would average noise in as a measurement).
fn per_exit_us(with: Duration, baseline: Duration, n: u64) -> Result<f64, String> {
    if n == 0 {
        return Err("no exits".into());
    }
    let d = with.as_secs_f64() - baseline.as_secs_f64();
    if d <= 0.0 {
        return Err(format!(
            "the loop of {n} exits ({with:?}) was not slower than the baseline ({baseline:?})"
        ));
    }
    Ok(d * 1e6 / n as f64)
}

impl Workload for ExitCost {
    fn name(&self) -> &'static str {
        "exit-cost"
    }

    fn description(&self) -> &'static str {
        "time per VM exit: N guest writes to port 0x80 and N to an unclaimed port (0x200), loops in guest ring 0, each minus a baseline boot with none"
    }

    fn metrics(&self) -> &'static [Metric] {
        METRICS
    }

    fn parameters(&self) -> serde_json::Value {
        serde_json::json!({
            "kernel": self.kernel,
            "boot": "PVH",
            "cpus": 1,
            "memory_mib": self.memory_mib,
            "exits": self.exits,
            "guest_cmdlines": [
                format!("action=poweroff exits={} exitport=128", self.exits),
                format!("action=poweroff exits={} exitport={UNCLAIMED_PORT}", self.exits),
                "action=poweroff exits=0 exitport=128",
            ],
            "unclaimed_port": UNCLAIMED_PORT,
            "guest_ring": 0,
            "petrel_env": {"PETREL_LOG": "warn"},
            "timing": "host wall clock from the end of the guest's `CPUS: up=` line to its `EXITS: done` line; (N-exit loop - 0-exit loop) / N",
        })
    }

    fn command_line(&self, vmm: &Vmm, scratch: &Path) -> Option<Vec<String>> {
        let mut line = vmm
            .command_line(&self.guest(self.exits, 0x80), scratch)
            .ok()?;
        if vmm.kind == VmmKind::Petrel {
            line.insert(0, "PETREL_LOG=warn".into());
        }
        Some(line)
    }

    fn run_once(&self, vmm: &Vmm, ctx: &RunContext) -> RunRecord {
        let round = ctx.round;
        let logs = ctx.scratch.join("logs");
        if let Err(e) = fs::create_dir_all(&logs) {
            return RunRecord::failed(round, format!("{}: {e}", logs.display()));
        }
        let mut durations = Vec::new();
        for (exits, port) in [(self.exits, 0x80), (self.exits, UNCLAIMED_PORT), (0, 0x80)] {
            let log = logs.join(format!(
                "{}-{}-{round}-{exits}-{port:#x}.log",
                self.name(),
                vmm.name()
            ));
            match self.boot(vmm, (exits, port), ctx, &log) {
                Ok(d) => {
                    let _ = fs::remove_file(&log);
                    durations.push(d);
                }
                Err(e) => {
                    let mut r = RunRecord::failed(round, e);
                    r.log = Some(log);
                    return r;
                }
            }
        }
        let (debug_port, unclaimed, baseline) = (durations[0], durations[1], durations[2]);
        let us = per_exit_us(debug_port, baseline, self.exits);
        let unclaimed_us = per_exit_us(unclaimed, baseline, self.exits);
        let error = match (&us, &unclaimed_us) {
            (Err(e), _) => Some(format!("port 0x80: {e}")),
            (_, Err(e)) => Some(format!("port {UNCLAIMED_PORT:#x}: {e}")),
            _ => None,
        };
        let us = us.ok();
        RunRecord {
            round,
            ok: error.is_none(),
            exit: Some("exit 0".into()),
            error,
            values: [
                ("exit_us", us),
                ("unclaimed_exit_us", unclaimed_us.ok()),
                ("kexits_per_s", us.map(|u| 1e3 / u)),
                ("loop_ms", Some(debug_port.as_secs_f64() * 1e3)),
            ]
            .into_iter()
            .collect(),
            log: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn measured(out: &str) -> Measured {
        // One byte per millisecond.
        let chunks = (1..=out.len())
            .map(|i| (Duration::from_millis(i as u64), i))
            .collect();
        Measured {
            first_byte: Some(Duration::from_millis(1)),
            exit: Duration::from_secs(1),
            status: child::Exit::Code(0),
            max_rss_kib: 1,
            stdout: out.as_bytes().to_vec(),
            chunks,
            timed_out: false,
            interrupted: false,
        }
    }

    const OUT: &str = "CPU 0 up\nCPUS: up=1 of 1\nEXITS: done n=5\nPETREL-GUEST: poweroff\n";

    #[test]
    fn times_the_loop_between_markers() {
        // "CPUS: up=1 of 1\n" ends at byte 24 (arrives at 25 ms); "EXITS" starts at byte 25.
        let d = loop_time(&measured(OUT), 5, "PETREL-GUEST: poweroff").unwrap();
        assert_eq!(d, Duration::from_millis(1));
        let e = loop_time(&measured(OUT), 6, "PETREL-GUEST: poweroff").unwrap_err();
        assert!(e.contains("Some(5)"), "{e}");
        let e = loop_time(&measured(OUT), 5, "PETREL-GUEST: reset").unwrap_err();
        assert!(e.contains("reset"), "{e}");
        assert!(loop_time(&measured("CPUS: up=1 of 1\n"), 5, "x").is_err());
        let mut m = measured(OUT);
        m.status = child::Exit::Signal(9);
        assert!(loop_time(&m, 5, "PETREL-GUEST: poweroff")
            .unwrap_err()
            .contains("signal 9"));
    }

    #[test]
    fn per_exit_subtracts_the_baseline() {
        let us = per_exit_us(
            Duration::from_millis(1010),
            Duration::from_millis(10),
            100_000,
        );
        assert!((us.unwrap() - 10.0).abs() < 1e-9);
        assert!(per_exit_us(Duration::ZERO, Duration::ZERO, 0).is_err());
        // A loop faster than the baseline is a failed run, not 0 µs.
        let e = per_exit_us(Duration::ZERO, Duration::from_millis(1), 1).unwrap_err();
        assert!(e.contains("not slower"), "{e}");
        assert!(per_exit_us(Duration::from_millis(5), Duration::from_millis(5), 1).is_err());
        assert_eq!(parse_decimal(b"100000\n"), Some(100_000));
        assert_eq!(parse_decimal(b"x"), None);
    }
}
