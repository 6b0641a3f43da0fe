//! The Debian guest kit for real-Linux tests (`resources/build-guest-kit.sh`) and the ring-0
//! calibration that decides whether full Linux boots can run on this host.
//!
//! The kit is built at most once per test process, under a file lock shared with other test
//! processes; `PETREL_GUEST_KIT` selects its directory. Full boots need guest ring 0 to run
//! natively: on PVM hosts it is emulated (~0.5M loop iterations/s) and a full boot would take
//! far too long, so [`ring0_native`] times a loop in the freestanding PVH guest
//! (`action=calibrate`) and the full-boot tests skip when it is slow.

use std::cell::Cell;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::guest_build::{build_guest, workspace_dir, GuestKind};
use crate::process::{kvm_available, run_petrel_until};

/// The calibration loop must take less than this for ring 0 to count as native.
pub const NATIVE_RING0_LIMIT: Duration = Duration::from_millis(200);

/// Paths of a built guest kit.
#[derive(Debug, Clone)]
pub struct LinuxKit {
    /// The kit directory.
    pub dir: PathBuf,
    /// The Debian cloud kernel as shipped (Linux boot protocol).
    pub bzimage: PathBuf,
    /// The ELF kernel extracted from it (PVH entry).
    pub vmlinux: PathBuf,
    /// busybox, the virtio modules, `petrel-vsock` and `resources/init`.
    pub initramfs: PathBuf,
    /// A small ext4 image for the virtio-blk test (`/etc/petrel-rootfs` marker inside).
    pub rootfs: PathBuf,
}

/// `$PETREL_GUEST_KIT`, else `$HOME/.cache/petrel/guest-kit`.
pub fn linux_kit_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("PETREL_GUEST_KIT") {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    Path::new(&home).join(".cache/petrel/guest-kit")
}

/// Runs the kit builder (instant when the kit is already built) and checks its outputs;
/// the error is the builder's one-line reason.
pub fn build_linux_kit() -> Result<LinuxKit, String> {
    let dir = linux_kit_dir();
    let script = workspace_dir().join("resources/build-guest-kit.sh");
    // A lock beside the kit directory so that parallel test processes build it once
    // (the script also locks inside the directory; a different file avoids a deadlock).
    let lock_path = {
        let mut name = dir.file_name().unwrap_or_default().to_os_string();
        name.push(".test-lock");
        dir.with_file_name(name)
    };
    if let Some(parent) = lock_path.parent() {
        fs::create_dir_all(parent)
            .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
    }
    let lock = File::create(&lock_path)
        .map_err(|e| format!("cannot create {}: {e}", lock_path.display()))?;
    lock.lock()
        .map_err(|e| format!("cannot lock {}: {e}", lock_path.display()))?;

    eprintln!("building the guest kit with {}", script.display());
    let out = Command::new("bash")
        .arg(&script)
        .env("PETREL_GUEST_KIT", &dir)
        .output()
        .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
    drop(lock);
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let reason = stderr
            .lines()
            .rev()
            .find(|l| l.contains("error:"))
            .unwrap_or("the build script failed");
        return Err(reason.trim().to_string());
    }
    let kit = LinuxKit {
        bzimage: dir.join("bzImage"),
        vmlinux: dir.join("vmlinux"),
        initramfs: dir.join("initramfs.cpio.gz"),
        rootfs: dir.join("rootfs.ext4"),
        dir,
    };
    for p in [&kit.bzimage, &kit.vmlinux, &kit.initramfs, &kit.rootfs] {
        if !p.is_file() {
            return Err(format!("guest kit incomplete: {} missing", p.display()));
        }
    }
    Ok(kit)
}

/// The kit, built once per process, or `None` (after printing why on stderr) when the test
/// must skip: `/dev/kvm` is missing or the kit cannot be built.
pub fn linux_kit_or_skip(test: &str) -> Option<&'static LinuxKit> {
    if !kvm_available() {
        let _ = test;
        test_skip::skip("/dev/kvm is not available");
        return None;
    }
    static KIT: OnceLock<Result<LinuxKit, String>> = OnceLock::new();
    match KIT.get_or_init(build_linux_kit) {
        Ok(kit) => Some(kit),
        Err(reason) => {
            test_skip::skip(format!("guest kit unavailable: {reason}"));
            None
        }
    }
}

/// Time between `CALIBRATE: begin` and `CALIBRATE: end` of the PVH test guest's
/// `action=calibrate`, measured as output arrives; `None` when `end` never came within 10 s.
///
/// Panics when the calibration guest cannot be built or does not start.
pub fn calibrate_ring0() -> Option<Duration> {
    let guest = match build_guest(GuestKind::Pvh) {
        Ok(p) => p,
        Err(e) => panic!("cannot build the PVH calibration guest: {e}"),
    };
    let guest = guest.to_string_lossy().into_owned();
    let args = [
        "--kernel",
        guest.as_str(),
        "--cmdline",
        "action=calibrate",
        "--cpus",
        "1",
        "--memory",
        "64M",
        "--serial",
        "stdout",
        "--no-reboot",
    ];
    let begin: Cell<Option<Instant>> = Cell::new(None);
    let end: Cell<Option<Instant>> = Cell::new(None);
    let started = Instant::now();
    let run = run_petrel_until(&args, Duration::from_secs(10), |out| {
        if begin.get().is_none() && out.contains("CALIBRATE: begin") {
            begin.set(Some(Instant::now()));
        }
        if end.get().is_none() && out.contains("CALIBRATE: end") {
            end.set(Some(Instant::now()));
        }
        end.get().is_some()
    });
    assert!(
        run.stdout.contains("CALIBRATE: begin"),
        "the calibration guest did not start: {}",
        run.dump()
    );
    if !run.stdout.contains("CALIBRATE: end") {
        return None;
    }
    // The harness stops calling `done` once petrel has exited, so the last chunk may
    // not have been timestamped: then the exit time bounds the `end` time from above,
    // and a `begin` in that same last chunk means both came within one harness poll.
    let exited = started + run.elapsed;
    match begin.get() {
        Some(b) => Some(end.get().unwrap_or(exited).saturating_duration_since(b)),
        None => Some(Duration::ZERO),
    }
}

/// True when guest ring 0 runs natively (hardware virtualisation); measured once per
/// process. When false it has recorded a visible skip and the test should return.
pub fn ring0_native(test: &str) -> bool {
    static NATIVE: OnceLock<Option<Duration>> = OnceLock::new();
    let loop_time = *NATIVE.get_or_init(calibrate_ring0);
    match loop_time {
        Some(t) if t <= NATIVE_RING0_LIMIT => {
            eprintln!("{test}: calibration loop took {t:.1?}: ring 0 is native");
            true
        }
        _ => {
            let took = loop_time.map_or("did not finish within 10 s".to_string(), |t| {
                format!("took {t:.1?}")
            });
            eprintln!("{test}: calibration loop {took}");
            test_skip::skip(
                "guest ring 0 is emulated on this host (PVM); full Linux boots need hardware \
                 virtualisation (VT-x/AMD-V): resources/run-linux-tests.sh runs them under nested KVM",
            );
            false
        }
    }
}
