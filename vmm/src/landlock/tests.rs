//! The rules a config yields, and the restriction applied in a forked child on this kernel.

use super::*;

#[test]
fn a_config_yields_its_files_and_directories() {
    let mut cfg = VmConfig::new("/k/vmlinux".into());
    cfg.payload.initramfs = Some("/k/initrd".into());
    cfg.disks = Some(
        serde_json::from_value(serde_json::json!([
            {"path": "/d/rw.img"},
            {"path": "/d/ro.img", "readonly": true},
        ]))
        .unwrap(),
    );
    cfg.vsock = Some(api::VsockConfig {
        cid: 3,
        socket: "/run/vm/vsock.sock".into(),
        id: None,
    });
    let r = rules(&cfg, None);
    let find = |p: &str| r.iter().find(|r| r.path == Path::new(p)).map(|r| r.access);
    assert_eq!(find("/k/vmlinux"), Some(READ_FILE));
    assert_eq!(find("/k/initrd"), Some(READ_FILE));
    assert_eq!(find("/d/rw.img"), Some(READ_FILE | WRITE_FILE | TRUNCATE));
    assert_eq!(find("/d/ro.img"), Some(READ_FILE));
    assert_eq!(find("/run/vm"), Some(MAKE_SOCK | REMOVE_FILE));
    assert_eq!(find("/proc/meminfo"), Some(READ_FILE));
    assert_eq!(find("/dev/net/tun"), None, "no tap, no /dev/net/tun");
}

/// Runs `body` in a forked child restricted to `rules`; returns its exit code.
fn in_restricted_child(rules: &[Rule], body: impl FnOnce() -> i32) -> i32 {
    // SAFETY: the child makes only syscalls (open, the Landlock calls) and leaves with _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", io::Error::last_os_error());
    if pid == 0 {
        let code = match restrict(rules) {
            Ok(true) => body(),
            Ok(false) => 98,
            Err(_) => 99,
        };
        // SAFETY: ends the forked child without running the parent's destructors.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: waits for our own child; `status` is a valid out pointer.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(libc::WIFEXITED(status), "status {status:#x}");
    libc::WEXITSTATUS(status)
}

/// 0: opened; EACCES and other errors by their errno.
fn open_code(path: &Path, write: bool) -> i32 {
    match File::options().read(!write).write(write).open(path) {
        Ok(_) => 0,
        Err(e) => e.raw_os_error().unwrap_or(1),
    }
}

#[test]
fn only_the_allowed_files_open_after_the_restriction() {
    if abi_version().is_none() {
        println!("SKIPPED: this kernel has no Landlock");
        return;
    }
    let dir = std::env::temp_dir().join(format!("petrel-landlock-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let allowed = dir.join("allowed.img");
    let other = dir.join("other.img");
    std::fs::write(&allowed, b"a").unwrap();
    std::fs::write(&other, b"b").unwrap();
    let rules = [Rule {
        path: allowed.clone(),
        access: READ_FILE,
    }];
    let (a, o) = (allowed.clone(), other.clone());
    assert_eq!(in_restricted_child(&rules, move || open_code(&a, false)), 0);
    assert_eq!(
        in_restricted_child(&rules, move || open_code(&o, false)),
        libc::EACCES,
        "a file outside the rules opened"
    );
    let a = allowed.clone();
    assert_eq!(
        in_restricted_child(&rules, move || open_code(&a, true)),
        libc::EACCES,
        "a read-only rule allowed writing"
    );
    assert_eq!(
        in_restricted_child(&rules, || open_code(Path::new("/etc/hostname"), false)),
        libc::EACCES
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
