//! What the real-Linux scenarios (`tests/tests/linux_*.rs`) share: the guest kit's initramfs
//! with test hooks appended, the report hook every scenario's guest runs, and readers of what
//! the guest printed.
//!
//! Hooks: the kit's `/init` sources every `/etc/petrel.d/*.sh` before it powers off. A test
//! appends a second, uncompressed cpio archive holding its hooks to the kit's gzip-compressed
//! one (Linux unpacks concatenated archives, the later file winning).
//!
//! The report hook ([`REPORT_HOOK`]) prints one `PETREL-R: key=value` line per fact the
//! scenarios check: CPUs, memory, the clock and the CMOS RTC, and how the virtio devices were
//! found. [`Report`] reads them back.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::linux_kit::LinuxKit;

/// Environment variable whose words are appended to every scenario's kernel command line.
/// `resources/run-linux-tests.sh` sets it to `noxsave` inside the nested KVM: QEMU's TCG
/// emulation of SVM does not make L2's XSETBV exit to L1, so L1's KVM never learns the
/// guest's XCR0 (the guest logs `XSAVE consistency problem: size 2696 != kernel_size 576`:
/// CPUID 0xD's size was never updated) and reloads its own idea of it (x87 only) at every
/// VM entry, under the guest's XSAVE-managed FPU state. With `noxsave` the guest keeps its
/// FPU state with FXSAVE, which XCR0 does not affect. On hardware nothing is appended.
pub const EXTRA_CMDLINE_ENV: &str = "PETREL_L2_EXTRA_CMDLINE";

/// `base` plus the words of [`EXTRA_CMDLINE_ENV`], if set.
pub fn kernel_cmdline(base: &str) -> String {
    match std::env::var(EXTRA_CMDLINE_ENV) {
        Ok(extra) if !extra.trim().is_empty() => format!("{base} {}", extra.trim()),
        _ => base.to_string(),
    }
}

/// Prints the facts the scenarios check, as `PETREL-R: key=value` lines:
/// `nproc`, `memtotal_kib`, `memfree_kib`, `date` (seconds since the epoch), `rtc0`
/// (`yes`/`no`), `rtc_name`, `rtc_epoch` (`/sys/class/rtc/rtc0/since_epoch`), `hwclock`
/// (`hwclock -r -u`'s first line), `virtio_devices` (virtio devices bound to a driver),
/// `virtio_acpi` (platform devices named after the DSDT's `LNRO0005`), `cmdline_virtio`
/// (`yes` when the command line holds `virtio_mmio.device=`), `pci_virtio` (virtio PCI
/// functions bound to a driver), `pci_msix` (`PCI-MSI*` lines in `/proc/interrupts`),
/// `pci_host` (vendor:device of 0000:00:00.0).
pub const REPORT_HOOK: &str = r#"
r() { echo "PETREL-R: $1=$2"; }
r nproc "$(nproc)"
r memtotal_kib "$(sed -n 's/^MemTotal: *\([0-9]*\) kB/\1/p' /proc/meminfo)"
r memfree_kib "$(sed -n 's/^MemFree: *\([0-9]*\) kB/\1/p' /proc/meminfo)"
r date "$(date +%s)"
if [ -c /dev/rtc0 ]; then r rtc0 yes; else r rtc0 no; fi
r rtc_name "$(cat /sys/class/rtc/rtc0/name 2>/dev/null)"
r rtc_epoch "$(cat /sys/class/rtc/rtc0/since_epoch 2>/dev/null)"
r hwclock "$(hwclock -r -u 2>&1 | head -n 1)"
n=0
for d in /sys/bus/virtio/devices/*; do [ -e "$d/driver" ] && n=$((n + 1)); done
r virtio_devices "$n"
r virtio_acpi "$(ls /sys/bus/platform/devices 2>/dev/null | grep -c '^LNRO0005:')"
case " $(cat /proc/cmdline) " in *" virtio_mmio.device="*) r cmdline_virtio yes ;; *) r cmdline_virtio no ;; esac
n=0
for d in /sys/bus/pci/devices/*; do
    [ "$(cat "$d/vendor" 2>/dev/null)" = 0x1af4 ] && [ -e "$d/driver" ] && n=$((n + 1))
done
r pci_virtio "$n"
r pci_msix "$(grep -c 'PCI-MSI' /proc/interrupts)"
r pci_host "$(cat /sys/bus/pci/devices/0000:00:00.0/vendor 2>/dev/null):$(cat /sys/bus/pci/devices/0000:00:00.0/device 2>/dev/null)"
"#;

/// A scratch directory under the system temporary directory (short: it may hold Unix
/// sockets), emptied when created and removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    /// `<tmp>/petrel-<name>-<pid>`.
    pub fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("petrel-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        if let Err(e) = fs::create_dir_all(&dir) {
            panic!("cannot create {}: {e}", dir.display());
        }
        Scratch(dir)
    }

    /// `<dir>/<name>`.
    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Writes an uncompressed cpio archive (`newc`) of regular files `(path, mode, content)`;
/// paths are relative to the root (no leading `/`) and their directories must exist in the
/// archive it is appended to.
pub fn cpio_newc(files: &[(&str, u32, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut entry = |ino: usize, name: &str, mode: u32, data: &[u8]| {
        let header = format!(
            "070701{ino:08x}{mode:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            0,
            0,
            1,
            0,
            data.len(),
            0,
            0,
            0,
            0,
            name.len() + 1,
            0
        );
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        while out.len() % 4 != 0 {
            out.push(0);
        }
        out.extend_from_slice(data);
        while out.len() % 4 != 0 {
            out.push(0);
        }
    };
    for (i, (name, mode, data)) in files.iter().enumerate() {
        entry(i + 1, name, 0o100_000 | mode, data);
    }
    entry(0, "TRAILER!!!", 0, &[]);
    out
}

/// Writes `<dir>/initramfs.img`: the kit's initramfs followed by a cpio archive of `hooks`
/// (`(file name, shell script)`, installed as `/etc/petrel.d/<file name>`, sourced by `/init`
/// in name order). Returns its path.
pub fn initramfs_with_hooks(
    kit: &LinuxKit,
    dir: &Path,
    hooks: &[(&str, &str)],
) -> io::Result<PathBuf> {
    let mut image = fs::read(&kit.initramfs)?;
    // The next archive must start 4-byte aligned; Linux skips the zero padding.
    while image.len() % 4 != 0 {
        image.push(0);
    }
    let paths: Vec<String> = hooks
        .iter()
        .map(|(name, _)| format!("etc/petrel.d/{name}"))
        .collect();
    let files: Vec<(&str, u32, &[u8])> = hooks
        .iter()
        .zip(&paths)
        .map(|((_, script), path)| (path.as_str(), 0o755, script.as_bytes()))
        .collect();
    image.extend_from_slice(&cpio_newc(&files));
    let out = dir.join("initramfs.img");
    fs::write(&out, image)?;
    Ok(out)
}

/// Serial lines without the `\r` of the serial line discipline.
pub fn serial_lines(out: &str) -> Vec<&str> {
    out.lines().map(|l| l.trim_end_matches('\r')).collect()
}

/// The last `n` serial lines, for failure messages.
pub fn serial_tail(out: &str, n: usize) -> String {
    let lines = serial_lines(out);
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// How many lines start with `prefix`.
pub fn count_lines(out: &str, prefix: &str) -> usize {
    serial_lines(out)
        .iter()
        .filter(|l| l.starts_with(prefix))
        .count()
}

/// The `PETREL-R: key=value` lines of one guest boot (the last value of each key).
#[derive(Debug, Default, Clone)]
pub struct Report(HashMap<String, String>);

impl Report {
    /// Reads the report lines in `out`.
    pub fn parse(out: &str) -> Report {
        let mut map = HashMap::new();
        for line in serial_lines(out) {
            if let Some((k, v)) = line
                .strip_prefix("PETREL-R: ")
                .and_then(|kv| kv.split_once('='))
            {
                map.insert(k.to_string(), v.trim().to_string());
            }
        }
        Report(map)
    }

    /// The value of `key`, or an error naming it.
    pub fn get(&self, key: &str) -> Result<&str, String> {
        self.0
            .get(key)
            .map(String::as_str)
            .ok_or_else(|| format!("the guest did not report `{key}`"))
    }

    /// The value of `key` as an integer.
    pub fn int(&self, key: &str) -> Result<i64, String> {
        let v = self.get(key)?;
        v.parse()
            .map_err(|_| format!("the guest reported `{key}={v}`, not an integer"))
    }
}

/// Seconds since the epoch on the host.
pub fn host_epoch() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Seconds since the epoch of busybox `hwclock -r -u`'s line
/// (`Mon Dec  7 20:22:01 2026  0.000000 seconds`), read as UTC.
pub fn parse_hwclock(line: &str) -> Option<i64> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let [_, month, day, hms, year, ..] = words.as_slice() else {
        return None;
    };
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let month = MONTHS.iter().position(|m| m == month)? as i64 + 1;
    let day: i64 = day.parse().ok()?;
    let year: i64 = year.parse().ok()?;
    let mut hms = hms.split(':').map(|p| p.parse::<i64>().ok());
    let (h, m, s) = (hms.next()??, hms.next()??, hms.next()??);
    // Days from the civil date (proleptic Gregorian).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + h * 3600 + m * 60 + s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hwclock_lines() {
        assert_eq!(
            parse_hwclock("Thu Feb 29 23:59:58 2024  0.000000 seconds"),
            Some(1_709_251_198)
        );
        assert_eq!(parse_hwclock("Thu Jan  1 00:00:00 1970"), Some(0));
        assert_eq!(parse_hwclock("hwclock: can't open '/dev/misc/rtc'"), None);
    }

    #[test]
    fn cpio_layout() {
        let a = cpio_newc(&[("etc/x.sh", 0o755, b"echo hi\n")]);
        assert!(a.starts_with(b"070701"));
        assert_eq!(a.len() % 4, 0);
        let text = String::from_utf8_lossy(&a);
        assert!(text.contains("etc/x.sh\0"));
        assert!(text.contains("echo hi\n"));
        assert!(text.contains("TRAILER!!!\0"));
    }

    #[test]
    fn report_lines() {
        let r = Report::parse("x\r\nPETREL-R: nproc=4\r\nPETREL-R: hwclock=a=b\r\n");
        assert_eq!(r.int("nproc"), Ok(4));
        assert_eq!(r.get("hwclock"), Ok("a=b"));
        assert!(r.get("date").is_err());
    }
}
