//! Inside the new namespaces (the forked child, PID 1 of its PID namespace): builds the jail's
//! file tree, moves into it with pivot_root, drops to the VM's uid/gid, sets the limits and
//! execs petrel. Nothing here returns on success.
//!
//! Mount points are created under the jail root one component at a time with `O_NOFOLLOW`
//! and mounted through `/proc/self/fd/N`, so a symbolic link left in the (uid-owned) root by
//! an earlier run cannot send a mount or a chown to a host path.

use std::ffi::OsString;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Component, Path, PathBuf};
use std::process::Command;

use rustix::fs::{self as rfs, FileType, Mode, OFlags};
use rustix::io::Errno;
use rustix::mount::{self, MountFlags, MountPropagationFlags, UnmountFlags};
use rustix::process::{Resource, Rlimit};
use rustix::thread::UnshareFlags;

use crate::cli::Args;

/// Device nodes made in the jail's `/dev` (a tmpfs of the namespace): host path, whether the
/// VM's uid owns it (else it is world-readable/writable like on the host).
const ALWAYS_DEVICES: &[&str] = &["/dev/null", "/dev/urandom"];
/// The hypervisor devices; those that exist on the host are made.
const HYPERVISOR_DEVICES: &[&str] = &["/dev/kvm", "/dev/mshv"];
/// The tap device (with `--tun`).
pub const TUN: &str = "/dev/net/tun";
/// Environment variables petrel is given (everything else is dropped). The seccomp selftest
/// switch only acts in debug builds of petrel (the tests' forbidden-open probe).
const KEPT_ENV: &[&str] = &[
    "PETREL_LOG",
    "PETREL_SECCOMP_SELFTEST",
    "RUST_BACKTRACE",
    "RUST_LOG",
];

/// A step that failed, with what it was doing.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {source}")]
pub struct JailError {
    what: String,
    #[source]
    source: io::Error,
}

fn ctx<T, E: Into<io::Error>>(
    r: Result<T, E>,
    what: impl FnOnce() -> String,
) -> Result<T, JailError> {
    r.map_err(|e| JailError {
        what: what(),
        source: e.into(),
    })
}

/// `/proc/self/fd/N`: the exact inode `fd` refers to, as a path mount(2) accepts.
fn fd_path(fd: &OwnedFd) -> PathBuf {
    use std::os::fd::AsRawFd;
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

/// Opens (creating what is missing) `rel` under `root` without following any symbolic link;
/// the last component is a directory or, with `file`, a regular file. Returns an `O_PATH`
/// descriptor of it.
pub fn make_point(root: &OwnedFd, rel: &Path, file: bool) -> io::Result<OwnedFd> {
    let parts: Vec<&std::ffi::OsStr> = rel
        .components()
        .filter_map(|c| match c {
            Component::Normal(s) => Some(Ok(s)),
            Component::RootDir | Component::CurDir => None,
            _ => Some(Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{}: '..' in a jail path", rel.display()),
            ))),
        })
        .collect::<io::Result<_>>()?;
    let dir_flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let mut cur = rfs::openat(root, ".", dir_flags, Mode::empty())?;
    for (i, part) in parts.iter().enumerate() {
        let last = i + 1 == parts.len();
        if last && file {
            match rfs::mknodat(&cur, *part, FileType::RegularFile, Mode::from(0o600), 0) {
                Ok(()) | Err(Errno::EXIST) => {}
                Err(e) => return Err(e.into()),
            }
            let fd = rfs::openat(
                &cur,
                *part,
                OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )?;
            let st = rfs::fstat(&fd)?;
            if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!(
                        "{}: exists in the jail and is not a regular file",
                        rel.display()
                    ),
                ));
            }
            return Ok(fd);
        }
        match rfs::mkdirat(&cur, *part, Mode::from(0o755)) {
            Ok(()) | Err(Errno::EXIST) => {}
            Err(e) => return Err(e.into()),
        }
        cur = rfs::openat(&cur, *part, dir_flags, Mode::empty()).map_err(|e| {
            io::Error::new(
                io::Error::from(e).kind(),
                format!(
                    "{}: {:?} is not a directory in the jail (or is a symbolic link)",
                    rel.display(),
                    part
                ),
            )
        })?;
    }
    Ok(cur)
}

/// Bind-mounts host `src` at `rel` in the jail, read-only with `readonly`; never with setuid
/// or device files.
fn bind(root: &OwnedFd, src: &Path, rel: &Path, readonly: bool) -> Result<(), JailError> {
    let is_file = !src.is_dir();
    let what = || format!("bind {} at {}", src.display(), rel.display());
    let point = ctx(make_point(root, rel, is_file), what)?;
    ctx(mount::mount_bind(src, fd_path(&point)), what)?;
    drop(point);
    // The descriptor above is the covered inode: open the path again for the new mount.
    let mounted = ctx(make_point(root, rel, is_file), what)?;
    let mut flags = MountFlags::BIND | MountFlags::NOSUID | MountFlags::NODEV;
    if readonly {
        flags |= MountFlags::RDONLY;
    }
    ctx(mount::mount_remount(fd_path(&mounted), flags, ""), what)
}

/// The shared libraries and loader `exec` needs, as `ldd` lists them (none for a static
/// binary). `ldd` runs the host's loader on the file, which the operator chose.
pub fn libraries(exec: &Path) -> io::Result<Vec<PathBuf>> {
    let out = Command::new("ldd").arg(exec).env_clear().output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        // "not a dynamic executable": nothing to add.
        return Ok(Vec::new());
    }
    let mut libs = Vec::new();
    for line in text.lines() {
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)" or "/lib64/ld-linux….so.2 (0x…)"
        let path = match line.split_once("=>") {
            Some((_, rhs)) => rhs.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(p) = path.filter(|p| p.starts_with('/')) {
            libs.push(PathBuf::from(p));
        }
    }
    Ok(libs)
}

/// Makes device `host` (same type and numbers) at the same path under `dev_root`, owned by
/// `owner` with mode `mode`.
fn device(
    root: &OwnedFd,
    host: &str,
    owner: Option<(u32, u32)>,
    mode: u32,
) -> Result<(), JailError> {
    let what = || format!("device {host}");
    let st = ctx(rfs::stat(host), what)?;
    let rel = Path::new(host);
    let parent = ctx(
        make_point(root, rel.parent().unwrap_or(Path::new("/")), false),
        what,
    )?;
    let name = rel.file_name().unwrap_or_default();
    let kind = FileType::from_raw_mode(st.st_mode);
    match rfs::mknodat(&parent, name, kind, Mode::from(mode), st.st_rdev) {
        Ok(()) | Err(Errno::EXIST) => {}
        Err(e) => {
            return Err(JailError {
                what: what(),
                source: e.into(),
            })
        }
    }
    let fd = ctx(
        rfs::openat(
            &parent,
            name,
            OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        ),
        what,
    )?;
    // O_PATH descriptors refuse fchmod/fchown: go through the magic link.
    ctx(rfs::chmod(fd_path(&fd), Mode::from(mode)), what)?;
    if let Some((uid, gid)) = owner {
        ctx(
            rfs::chown(
                fd_path(&fd),
                Some(rfs::Uid::from_raw(uid)),
                Some(rfs::Gid::from_raw(gid)),
            ),
            what,
        )?;
    }
    Ok(())
}

/// Removes every capability this kernel knows from the bounding set.
fn drop_bounding_set() -> io::Result<()> {
    for bit in 0..64 {
        let cap = rustix::thread::CapabilitySet::from_bits_retain(1u64 << bit);
        match rustix::thread::remove_capability_from_bounding_set(cap) {
            Ok(()) => {}
            // Past the last capability of this kernel.
            Err(Errno::INVAL) => break,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Builds the tree and execs petrel. Only returns on failure.
pub fn enter(args: &Args, libs: &[PathBuf], flags: UnshareFlags) -> JailError {
    match build_and_exec(args, libs, flags) {
        Ok(never) => match never {},
        Err(e) => e,
    }
}

fn build_and_exec(
    args: &Args,
    libs: &[PathBuf],
    flags: UnshareFlags,
) -> Result<std::convert::Infallible, JailError> {
    let root_path = args.root();
    // SAFETY: no FILES flag, so no descriptor table is split; this forked child is
    // single-threaded.
    ctx(unsafe { rustix::thread::unshare_unsafe(flags) }, || {
        format!("unshare {flags:?}")
    })?;
    // Nothing mounted from here on reaches the host's namespace.
    ctx(
        mount::mount_change(
            "/",
            MountPropagationFlags::REC | MountPropagationFlags::PRIVATE,
        ),
        || "make / private".into(),
    )?;
    // pivot_root needs the new root to be a mount point.
    ctx(mount::mount_bind(&root_path, &root_path), || {
        format!("bind {} onto itself", root_path.display())
    })?;
    ctx(
        mount::mount_remount(
            &root_path,
            MountFlags::BIND | MountFlags::NOSUID | MountFlags::NODEV,
            "",
        ),
        || "remount the jail root nosuid,nodev".into(),
    )?;
    let root = ctx(
        rfs::open(
            &root_path,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        ),
        || format!("open {}", root_path.display()),
    )?;

    bind(&root, &args.exec_file, &args.exec_in_jail(), true)?;
    for lib in libs {
        bind(&root, lib, lib, true)?;
    }
    for b in &args.binds {
        bind(&root, &b.src, &b.dest, b.readonly)?;
    }

    // /run: the VM's own directory for its API socket and the like.
    let run = ctx(make_point(&root, Path::new("/run"), false), || {
        "make /run".into()
    })?;
    ctx(
        rfs::chown(
            fd_path(&run),
            Some(rfs::Uid::from_raw(args.uid)),
            Some(rfs::Gid::from_raw(args.gid)),
        ),
        || "chown /run".into(),
    )?;
    ctx(rfs::chmod(fd_path(&run), Mode::from(0o700)), || {
        "chmod /run".into()
    })?;
    drop(run);

    // /dev: a tmpfs of this namespace only (gone with it), holding just the needed nodes.
    let dev = ctx(make_point(&root, Path::new("/dev"), false), || {
        "make /dev".into()
    })?;
    ctx(
        mount::mount(
            "tmpfs",
            fd_path(&dev),
            "tmpfs",
            MountFlags::NOSUID | MountFlags::NOEXEC,
            Some(c"mode=0755,size=64k"),
        ),
        || "mount the jail's /dev".into(),
    )?;
    drop(dev);
    let owner = Some((args.uid, args.gid));
    for d in ALWAYS_DEVICES {
        device(&root, d, None, 0o666)?;
    }
    for d in HYPERVISOR_DEVICES.iter().filter(|d| Path::new(d).exists()) {
        device(&root, d, owner, 0o600)?;
    }
    if args.tun {
        device(&root, TUN, owner, 0o600)?;
    }

    // /proc of the new PID namespace (petrel reads /proc/self and /proc/meminfo).
    let proc_dir = ctx(make_point(&root, Path::new("/proc"), false), || {
        "make /proc".into()
    })?;
    ctx(
        mount::mount(
            "proc",
            fd_path(&proc_dir),
            "proc",
            MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
            None,
        ),
        || "mount the jail's /proc".into(),
    )?;
    drop(proc_dir);
    drop(root);

    // Into the jail: the old root is stacked under the new one, then detached.
    ctx(rustix::process::chdir(&root_path), || {
        "chdir to the jail".into()
    })?;
    ctx(rustix::process::pivot_root(".", "."), || {
        "pivot_root".into()
    })?;
    ctx(mount::unmount(".", UnmountFlags::DETACH), || {
        "detach the host's root".into()
    })?;
    ctx(rustix::process::chdir("/"), || "chdir /".into())?;
    ctx(rustix::system::sethostname(args.id.as_bytes()), || {
        "sethostname".into()
    })?;

    let limit = |n: u64| Rlimit {
        current: Some(n),
        maximum: Some(n),
    };
    ctx(
        rustix::process::setrlimit(Resource::Nofile, limit(args.nofile)),
        || format!("RLIMIT_NOFILE {}", args.nofile),
    )?;
    ctx(
        rustix::process::setrlimit(Resource::Core, limit(args.core)),
        || "RLIMIT_CORE".into(),
    )?;
    if let Some(n) = args.fsize {
        ctx(
            rustix::process::setrlimit(Resource::Fsize, limit(n)),
            || format!("RLIMIT_FSIZE {n}"),
        )?;
    }

    // No capability can come back: the bounding set is emptied (while CAP_SETPCAP is still
    // held), then the uid change clears the others, and for a jail kept at uid 0
    // (`--allow-root`) they are cleared explicitly below.
    ctx(drop_bounding_set(), || {
        "empty the capability bounding set".into()
    })?;
    // The VM's uid and gid: no supplementary groups.
    let gid = rfs::Gid::from_raw(args.gid);
    let uid = rfs::Uid::from_raw(args.uid);
    ctx(rustix::thread::set_thread_groups(&[]), || {
        "setgroups".into()
    })?;
    ctx(rustix::thread::set_thread_res_gid(gid, gid, gid), || {
        format!("setresgid {}", args.gid)
    })?;
    ctx(rustix::thread::set_thread_res_uid(uid, uid, uid), || {
        format!("setresuid {}", args.uid)
    })?;
    let none = rustix::thread::CapabilitySet::empty();
    ctx(
        rustix::thread::set_capabilities(
            None,
            rustix::thread::CapabilitySets {
                effective: none,
                permitted: none,
                inheritable: none,
            },
        ),
        || "drop the capabilities".into(),
    )?;
    ctx(rustix::thread::clear_ambient_capability_set(), || {
        "clear the ambient capabilities".into()
    })?;
    ctx(rustix::thread::set_no_new_privs(true), || {
        "no_new_privs".into()
    })?;
    if !args.daemonize {
        // petrel dies with the jailer that waits for it (set after the uid change, which
        // clears it).
        ctx(
            rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL)),
            || "PR_SET_PDEATHSIG".into(),
        )?;
    }

    let exec = args.exec_in_jail();
    let env: Vec<(OsString, OsString)> = std::env::vars_os()
        .filter(|(k, _)| KEPT_ENV.iter().any(|n| k.as_bytes() == n.as_bytes()))
        .collect();
    let err = Command::new(&exec)
        .args(&args.petrel_args)
        .env_clear()
        .env("PATH", "/")
        .envs(env)
        .exec();
    Err(JailError {
        what: format!("exec {} in the jail", exec.display()),
        source: err,
    })
}
