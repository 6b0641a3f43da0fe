//! The jailer's own process: prepares the jail directory, joins the cgroups and the network
//! namespace, unshares the others, forks petrel's process (PID 1 of the new PID namespace),
//! learns whether its exec succeeded, writes the pid file, and waits for it unless
//! daemonized.

use std::fs;
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicI32, Ordering};

use rustix::fs::{Gid, Mode, OFlags, Uid};
use rustix::pipe::PipeFlags;
use rustix::process::{Pid, WaitOptions};
use rustix::thread::UnshareFlags;

use crate::cgroup;
use crate::cli::{Args, NetNs};
use crate::jail;

/// petrel's pid (host namespace), for the signal forwarder.
static CHILD: AtomicI32 = AtomicI32::new(0);

/// Closes every descriptor above stderr.
pub fn close_inherited_fds() {
    // SAFETY: close_range(2) takes integers only; the process has just started (single
    // thread, no descriptor above 2 owned by anything yet).
    let r = unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
    if r != 0 {
        // Old kernels: close them one by one.
        for fd in 3..1024 {
            // SAFETY: as above; EBADF for those not open is ignored.
            unsafe { libc::close(fd) };
        }
    }
}

extern "C" fn forward(sig: libc::c_int) {
    let pid = CHILD.load(Ordering::Relaxed);
    if pid > 0 {
        // SAFETY: kill(2) is async-signal-safe and takes integers.
        unsafe { libc::kill(pid, sig) };
    }
}

/// Whether `pid` is a live process.
fn alive(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Creates `<jail dir>` (root's, 0755) and `<jail dir>/root` (the VM uid's, 0700), or the
/// `--chroot-dir`; refuses a jail whose pid file names a live process.
fn prepare_dirs(args: &Args) -> Result<(), String> {
    if let Some(pid_file) = args.pid_file() {
        if let Ok(text) = fs::read_to_string(&pid_file) {
            if let Ok(pid) = text.trim().parse::<i32>() {
                if pid > 0 && alive(pid) {
                    return Err(format!(
                        "jail {} is in use by pid {pid} ({})",
                        args.id,
                        pid_file.display()
                    ));
                }
            }
        }
        let dir = args.jail_dir();
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(&dir)
            .map_err(|e| format!("create {}: {e}", dir.display()))?;
    }
    let root = args.root();
    match fs::symlink_metadata(&root) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err(format!("{} exists and is not a directory", root.display())),
        Err(_) => fs::DirBuilder::new()
            .mode(0o700)
            .create(&root)
            .map_err(|e| format!("create {}: {e}", root.display()))?,
    }
    rustix::fs::chown(
        &root,
        Some(Uid::from_raw(args.uid)),
        Some(Gid::from_raw(args.gid)),
    )
    .map_err(|e| format!("chown {}: {e}", root.display()))?;
    fs::set_permissions(&root, fs::Permissions::from_mode(0o700))
        .map_err(|e| format!("chmod {}: {e}", root.display()))?;
    Ok(())
}

/// Runs the jail; returns the jailer's exit code.
pub fn run(args: &Args) -> Result<i32, String> {
    if !rustix::process::geteuid().is_root() {
        return Err("petrel-jailer must run as root (it mounts, and changes uid)".into());
    }
    prepare_dirs(args)?;
    let libs = jail::libraries(&args.exec_file)
        .map_err(|e| format!("ldd {}: {e}", args.exec_file.display()))?;

    // The child unshares these itself: a mount namespace shared with the jailer would move
    // the jailer into the jail too at pivot_root.
    let mut flags = UnshareFlags::NEWNS | UnshareFlags::NEWIPC | UnshareFlags::NEWUTS;
    match &args.netns {
        NetNs::Host => {}
        NetNs::New => flags |= UnshareFlags::NEWNET,
        NetNs::Join(path) => {
            let fd = rustix::fs::open(path, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())
                .map_err(|e| format!("--netns {}: {e}", path.display()))?;
            rustix::thread::move_into_link_name_space(
                fd.as_fd(),
                Some(rustix::thread::LinkNameSpaceType::Network),
            )
            .map_err(|e| format!("--netns {}: setns: {e}", path.display()))?;
        }
    }

    let cg_root = Path::new(cgroup::ROOT);
    let cg_version = args
        .cgroup_version
        .unwrap_or_else(|| cgroup::detect(cg_root));
    let groups = cgroup::join(cg_root, cg_version, &args.id, &args.cgroups)?;
    let result = spawn(args, &libs, flags);
    if !(args.daemonize && matches!(result, Ok(0))) {
        cgroup::remove(cg_root, cg_version, &groups);
    }
    result
}

fn spawn(args: &Args, libs: &[std::path::PathBuf], flags: UnshareFlags) -> Result<i32, String> {
    // Only the children of the caller enter a new PID namespace: petrel is its PID 1.
    // SAFETY: no FILES flag, so no descriptor table is split; the jailer is single-threaded.
    unsafe { rustix::thread::unshare_unsafe(UnshareFlags::NEWPID) }
        .map_err(|e| format!("unshare: {e}"))?;
    let (rd, wr) = rustix::pipe::pipe_with(PipeFlags::CLOEXEC).map_err(|e| format!("pipe: {e}"))?;

    // SAFETY: the jailer is single-threaded, so the child may run any code after fork.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(format!("fork: {}", io::Error::last_os_error()));
    }
    if pid == 0 {
        drop(rd);
        if args.daemonize {
            let _ = rustix::process::setsid();
            if let Ok(null) = fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/null")
            {
                let _ = rustix::stdio::dup2_stdin(&null);
                let _ = rustix::stdio::dup2_stdout(&null);
                let _ = rustix::stdio::dup2_stderr(&null);
            }
        }
        let e = jail::enter(args, libs, flags);
        // The exec failed or never happened: tell the jailer why (the pipe closes on a
        // successful exec, with nothing written).
        let mut wr = fs::File::from(wr);
        let _ = wr.write_all(e.to_string().as_bytes());
        // SAFETY: _exit(2) ends this forked child without running the parent's atexit
        // handlers or destructors twice.
        unsafe { libc::_exit(1) };
    }
    drop(wr);
    CHILD.store(pid, Ordering::Relaxed);
    let mut msg = String::new();
    let _ = fs::File::from(rd).read_to_string(&mut msg);
    let child = Pid::from_raw(pid).ok_or("fork returned pid 0 in the parent")?;
    if !msg.is_empty() {
        let _ = rustix::process::waitpid(Some(child), WaitOptions::empty());
        return Err(format!("jail {}: {msg}", args.id));
    }
    let pid_file = args.pid_file();
    if let Some(f) = &pid_file {
        fs::write(f, format!("{pid}\n")).map_err(|e| format!("write {}: {e}", f.display()))?;
    }
    if args.daemonize {
        println!("{pid}");
        return Ok(0);
    }
    for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
        // SAFETY: `forward` only calls kill(2), which is async-signal-safe.
        unsafe { libc::signal(sig, forward as *const () as libc::sighandler_t) };
    }
    let status = loop {
        match rustix::process::waitpid(Some(child), WaitOptions::empty()) {
            Ok(Some((_, status))) => break status,
            Ok(None) => continue,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(format!("waitpid {pid}: {e}")),
        }
    };
    if let Some(f) = &pid_file {
        let _ = fs::remove_file(f);
    }
    Ok(match (status.exit_status(), status.terminating_signal()) {
        (Some(code), _) => code,
        (None, Some(sig)) => 128 + sig,
        _ => 1,
    })
}
