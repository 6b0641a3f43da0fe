//! Builds the freestanding test guests of `tests/guests/` (C + GNU assembly) with the system
//! `gcc`, `ld` and `objcopy`, into `<target dir>/test-guests/`.
//!
//! Several test processes may build at once: each builds in its own temporary directory and
//! renames the result into place. A guest is rebuilt when a source is newer than it.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::SystemTime;

/// Which image of the test guest to build.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GuestKind {
    /// ELF64 with a `XEN_ELFNOTE_PHYS32_ENTRY` note, entered through PVH.
    Pvh,
    /// Linux boot protocol image, entered at its 64-bit entry.
    BzImage,
}

impl GuestKind {
    /// File name of the built image.
    pub fn file_name(self) -> &'static str {
        match self {
            GuestKind::Pvh => "petrel-guest.elf",
            GuestKind::BzImage => "petrel-guest.bzimage",
        }
    }

    fn entry_stub(self) -> &'static str {
        match self {
            GuestKind::Pvh => "pvh.S",
            GuestKind::BzImage => "bzimage.S",
        }
    }

    fn linker_script(self) -> &'static str {
        match self {
            GuestKind::Pvh => "pvh.ld",
            GuestKind::BzImage => "bzimage.ld",
        }
    }
}

/// C and assembly sources linked into both images (plus the kind's entry stub).
const COMMON_SOURCES: &[&str] = &[
    "core.c",
    "acpi.c",
    "smp.c",
    "virtio.c",
    "virtio_net.c",
    "virtio_mmds.c",
    "virtio_vsock.c",
    "pci.c",
    "bench.c",
    "ring3.c",
    "ring3.S",
    "common.S",
];

/// Flags for the freestanding x86_64 core.
const CFLAGS: &[&str] = &[
    "-m64",
    "-std=gnu11",
    "-ffreestanding",
    "-nostdlib",
    "-fno-pic",
    "-fno-pie",
    "-static",
    "-mno-red-zone",
    "-mgeneral-regs-only",
    "-fno-stack-protector",
    "-fno-asynchronous-unwind-tables",
    "-fcf-protection=none",
    "-O2",
    "-Wall",
    "-Wextra",
];

static BUILD_LOCK: Mutex<()> = Mutex::new(());
static TMP_SEQ: AtomicU64 = AtomicU64::new(0);

/// The workspace root (parent of this crate).
pub fn workspace_dir() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// `$CARGO_TARGET_DIR` (relative paths are taken from the workspace root), else
/// `<workspace>/target`.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) if !d.is_empty() => {
            let d = PathBuf::from(d);
            if d.is_absolute() {
                d
            } else {
                workspace_dir().join(d)
            }
        }
        _ => workspace_dir().join("target"),
    }
}

/// Directory holding the guest sources.
pub fn guest_sources_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("guests")
}

/// Builds (or reuses, when up to date) the test guest image and returns its path.
pub fn build_guest(kind: GuestKind) -> io::Result<PathBuf> {
    let out_dir = target_dir().join("test-guests");
    build_guest_into(kind, &out_dir)
}

/// [`build_guest`] for tests: the image's path as a string; panics when the build fails.
pub fn guest_image(kind: GuestKind) -> String {
    build_guest(kind)
        .unwrap_or_else(|e| panic!("building the {kind:?} test guest: {e}"))
        .to_string_lossy()
        .into_owned()
}

/// A per-process scratch file path `<target dir>/test-guests/<name>-<pid>` (the directory is
/// created; the file is not).
pub fn scratch_path(name: &str) -> PathBuf {
    let dir = target_dir().join("test-guests");
    if let Err(e) = fs::create_dir_all(&dir) {
        panic!("cannot create {}: {e}", dir.display());
    }
    dir.join(format!("{name}-{}", std::process::id()))
}

/// Like [`build_guest`], into `out_dir`.
pub fn build_guest_into(kind: GuestKind, out_dir: &Path) -> io::Result<PathBuf> {
    let _guard = BUILD_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let src = guest_sources_dir();
    let out = out_dir.join(kind.file_name());
    if is_up_to_date(&out, &src)? {
        return Ok(out);
    }
    fs::create_dir_all(out_dir)?;
    let tmp = out_dir.join(format!(
        ".build-{}-{}-{}",
        kind.file_name(),
        std::process::id(),
        TMP_SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp)?;
    let result = build_in(kind, &src, &tmp).and_then(|image| fs::rename(image, &out));
    let _ = fs::remove_dir_all(&tmp);
    result.map(|()| out)
}

fn build_in(kind: GuestKind, src: &Path, tmp: &Path) -> io::Result<PathBuf> {
    let mut objects = Vec::new();
    for name in COMMON_SOURCES.iter().chain([kind.entry_stub()].iter()) {
        let obj = tmp.join(format!("{name}.o"));
        let mut cmd = Command::new("gcc");
        cmd.args(CFLAGS)
            .arg("-I")
            .arg(src)
            .arg("-c")
            .arg(src.join(name))
            .arg("-o")
            .arg(&obj);
        run_tool(cmd)?;
        objects.push(obj);
    }
    let elf = tmp.join(format!("{}.elf", kind.file_name()));
    let mut ld = Command::new("ld");
    ld.args([
        "-m",
        "elf_x86_64",
        "-nostdlib",
        "-static",
        "-z",
        "max-page-size=0x1000",
    ])
    .arg("-T")
    .arg(src.join(kind.linker_script()))
    .arg("-o")
    .arg(&elf)
    .args(&objects);
    run_tool(ld)?;
    match kind {
        GuestKind::Pvh => Ok(elf),
        GuestKind::BzImage => {
            let image = tmp.join(kind.file_name());
            let mut objcopy = Command::new("objcopy");
            objcopy.args(["-O", "binary"]).arg(&elf).arg(&image);
            run_tool(objcopy)?;
            Ok(image)
        }
    }
}

fn run_tool(mut cmd: Command) -> io::Result<()> {
    let output = cmd
        .output()
        .map_err(|e| io::Error::new(e.kind(), format!("cannot run {cmd:?}: {e}")))?;
    if output.status.success() {
        return Ok(());
    }
    Err(io::Error::other(format!(
        "{cmd:?} failed ({}):\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )))
}

/// True when `out` exists and is newer than every file in `src`.
fn is_up_to_date(out: &Path, src: &Path) -> io::Result<bool> {
    let built = match fs::metadata(out).and_then(|m| m.modified()) {
        Ok(t) => t,
        Err(_) => return Ok(false),
    };
    Ok(newest_source(src)? <= built)
}

fn newest_source(src: &Path) -> io::Result<SystemTime> {
    let mut newest = SystemTime::UNIX_EPOCH;
    for entry in fs::read_dir(src)? {
        let modified = entry?.metadata()?.modified()?;
        newest = newest.max(modified);
    }
    Ok(newest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = target_dir()
            .join("test-guests")
            .join(format!(".unit-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn pvh_image_has_xen_note_and_loads_at_1mib() {
        let dir = scratch("pvh");
        let path = build_guest_into(GuestKind::Pvh, &dir).unwrap();
        let data = fs::read(&path).unwrap();
        assert_eq!(&data[..4], b"\x7fELF");
        assert_eq!(data[4], 2, "ELF64");
        let entry = u64::from_le_bytes(data[24..32].try_into().unwrap());
        assert!(entry >= 0x100000, "entry {entry:#x}");
        // The "Xen" note with type 18 (XEN_ELFNOTE_PHYS32_ENTRY) is present.
        let needle = [4u8, 0, 0, 0, 4, 0, 0, 0, 18, 0, 0, 0, b'X', b'e', b'n', 0];
        let pos = data.windows(needle.len()).position(|w| w == needle);
        let pos = pos.expect("no PVH note");
        let phys = u32::from_le_bytes(data[pos + 16..pos + 20].try_into().unwrap());
        assert!(u64::from(phys) >= 0x100000);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bzimage_has_valid_setup_header() {
        let dir = scratch("bz");
        let path = build_guest_into(GuestKind::BzImage, &dir).unwrap();
        let data = fs::read(&path).unwrap();
        let u16_at = |o: usize| u16::from_le_bytes(data[o..o + 2].try_into().unwrap());
        let u32_at = |o: usize| u32::from_le_bytes(data[o..o + 4].try_into().unwrap());
        assert_eq!(u16_at(0x1fe), 0xaa55, "boot_flag");
        assert_eq!(&data[0x202..0x206], b"HdrS");
        assert!(u16_at(0x206) >= 0x20c, "version");
        assert_eq!(data[0x211] & 1, 1, "LOADED_HIGH");
        assert_eq!(u32_at(0x214), 0x100000, "code32_start");
        assert_eq!(u16_at(0x236) & 1, 1, "XLF_KERNEL_64");
        let setup = (usize::from(data[0x1f1]) + 1) * 512;
        let pm_size = data.len() - setup;
        assert_eq!(u32_at(0x1f4) as usize, pm_size.div_ceil(16), "syssize");
        assert!(u32_at(0x260) as usize >= pm_size, "init_size");
        // The 64-bit entry at 0x200 of the loaded part starts with `cli`.
        assert_eq!(data[setup + 0x200], 0xfa);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn second_build_reuses_the_image() {
        let dir = scratch("reuse");
        let first = build_guest_into(GuestKind::Pvh, &dir).unwrap();
        let t1 = fs::metadata(&first).unwrap().modified().unwrap();
        let second = build_guest_into(GuestKind::Pvh, &dir).unwrap();
        assert_eq!(first, second);
        assert_eq!(fs::metadata(&second).unwrap().modified().unwrap(), t1);
        fs::remove_dir_all(&dir).unwrap();
    }
}
