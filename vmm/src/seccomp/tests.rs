//! Unit tests of the filters: parsing, compilation, the lists' invariants, and each filter
//! installed in a forked child (no KVM needed).

use super::*;

#[test]
fn modes_parse_and_print() {
    for (s, m) in [
        ("true", SeccompMode::Enforce),
        ("false", SeccompMode::Off),
        ("log", SeccompMode::Log),
    ] {
        assert_eq!(s.parse::<SeccompMode>(), Ok(m));
        assert_eq!(m.to_string(), s);
    }
    assert_eq!(SeccompMode::default(), SeccompMode::Enforce);
    for bad in ["", "yes", "on", "True", "kill"] {
        let e = bad.parse::<SeccompMode>().unwrap_err();
        assert!(e.starts_with("--seccomp: "), "{e}");
        assert!(e.contains(&format!("'{bad}'")), "{e}");
        assert!(e.contains("true, false or log"), "{e}");
    }
}

#[test]
fn every_filter_compiles_in_both_modes() {
    for (kind, backend) in ThreadKind::ALL
        .into_iter()
        .flat_map(|k| [(k, Backend::Kvm), (k, Backend::Mshv)])
    {
        assert!(programs(kind, SeccompMode::Off, backend)
            .unwrap()
            .is_empty());
        for mode in [SeccompMode::Enforce, SeccompMode::Log] {
            let progs = programs(kind, mode, backend).unwrap();
            let mut errnos: Vec<_> = rules::refused(kind).iter().map(|r| r.errno).collect();
            errnos.sort();
            errnos.dedup();
            assert_eq!(progs.len(), 1 + errnos.len());
            for prog in progs {
                assert!(
                    !prog.is_empty() && prog.len() < 4096,
                    "{kind}: {}",
                    prog.len()
                );
            }
        }
    }
}

#[test]
fn kvm_ioctl_numbers_match_what_strace_decoded() {
    use rules::kvm;
    for (got, want) in [
        (kvm::CHECK_EXTENSION, 0xae03),
        (kvm::CREATE_IRQCHIP, 0xae60),
        (kvm::CREATE_VCPU, 0xae41),
        (kvm::CREATE_VM, 0xae01),
        (kvm::GET_LAPIC, 0x8400_ae8e),
        (kvm::GET_REGS, 0x8090_ae81),
        (kvm::GET_SREGS, 0x8138_ae83),
        (kvm::GET_SUPPORTED_CPUID, 0xc008_ae05),
        (kvm::GET_VCPU_MMAP_SIZE, 0xae04),
        (kvm::IRQFD, 0x4020_ae76),
        (kvm::IOEVENTFD, 0x4040_ae79),
        (kvm::RUN, 0xae80),
        (kvm::SET_CPUID2, 0x4008_ae90),
        (kvm::SET_FPU, 0x41a0_ae8d),
        (kvm::SET_LAPIC, 0x4400_ae8f),
        (kvm::SET_MSRS, 0x4008_ae89),
        (kvm::SET_REGS, 0x4090_ae82),
        (kvm::SET_SREGS, 0x4138_ae84),
        (kvm::SET_TSS_ADDR, 0xae47),
        (kvm::SET_USER_MEMORY_REGION, 0x4020_ae46),
    ] {
        assert_eq!(got, want, "{got:#x} != {want:#x}");
    }
}

/// Whether `kind` allows syscall `nr` with these low-32-bit arguments.
fn allows(kind: ThreadKind, nr: i64, args: &[u64]) -> bool {
    let holds = |c: &Cond| match *c {
        Cond::Eq(i, v) => args.get(usize::from(i)).map(|a| a & 0xffff_ffff) == Some(v),
        Cond::MaskedEq(i, m, v) => args.get(usize::from(i)).map(|a| a & m & 0xffff_ffff) == Some(v),
    };
    match merged(kind, Backend::Kvm).get(&nr) {
        None => false,
        Some(None) => true,
        Some(Some(rules)) => rules.iter().any(|r| r.iter().all(holds)),
    }
}

#[test]
fn the_main_thread_filter_contains_the_others() {
    // vCPU and API threads inherit the main thread's filter: whatever they may do, it must
    // allow too.
    for backend in [Backend::Kvm, Backend::Mshv] {
        main_thread_contains_the_others(backend);
    }
}

fn main_thread_contains_the_others(backend: Backend) {
    let vmm = merged(ThreadKind::Vmm, backend);
    for kind in [ThreadKind::Vcpu, ThreadKind::Api] {
        for (nr, conds) in merged(kind, backend) {
            let outer = vmm.get(&nr);
            let ok = match (outer, &conds) {
                (Some(None), _) => true,
                (Some(Some(outer)), Some(inner)) => inner.iter().all(|r| outer.contains(r)),
                _ => false,
            };
            assert!(
                ok,
                "{backend}: syscall {nr} of the {kind} list is not (as widely) in the vmm list"
            );
        }
    }
}

#[test]
fn dangerous_and_selftest_syscalls_are_on_no_list() {
    for kind in ThreadKind::ALL {
        for nr in [
            SELFTEST_SYSCALL,
            libc::SYS_execve,
            libc::SYS_execveat,
            libc::SYS_fork,
            libc::SYS_vfork,
            libc::SYS_ptrace,
            libc::SYS_kill,
            libc::SYS_mount,
            libc::SYS_setuid,
            libc::SYS_process_vm_writev,
        ] {
            assert!(!allows(kind, nr, &[0; 6]), "{kind} allows {nr}");
        }
        // Raw and IPv6 sockets, and clone without CLONE_THREAD (a fork).
        let inet6 = libc::AF_INET6 as u64;
        assert!(!allows(
            kind,
            libc::SYS_socket,
            &[inet6, libc::SOCK_RAW as u64, 0]
        ));
        let raw = libc::SOCK_RAW as u64;
        assert!(!allows(
            kind,
            libc::SYS_socket,
            &[libc::AF_INET as u64, raw, 0]
        ));
        let sigchld = libc::SIGCHLD as u64;
        assert!(!allows(kind, libc::SYS_clone, &[sigchld, 0, 0, 0, 0]));
    }
    let tun = libc::TUNSETIFF;
    let dgram = (libc::SOCK_DGRAM | libc::SOCK_CLOEXEC) as u64;
    // No internet socket of any kind (the tap is brought up through a Unix socket).
    assert!(!allows(
        ThreadKind::Vmm,
        libc::SYS_socket,
        &[libc::AF_INET as u64, dgram, 0]
    ));
    let stream = (libc::SOCK_STREAM | libc::SOCK_CLOEXEC) as u64;
    assert!(!allows(
        ThreadKind::Vmm,
        libc::SYS_socket,
        &[libc::AF_INET as u64, stream, 0]
    ));
    assert!(allows(
        ThreadKind::Vmm,
        libc::SYS_socket,
        &[libc::AF_UNIX as u64, dgram, 0]
    ));
    assert!(allows(ThreadKind::Vmm, libc::SYS_ioctl, &[3, tun]));
    let thread = (libc::CLONE_VM | libc::CLONE_THREAD | libc::CLONE_SIGHAND) as u64;
    assert!(allows(
        ThreadKind::Vmm,
        libc::SYS_clone,
        &[thread, 0, 0, 0, 0]
    ));
}

#[test]
fn vcpu_threads_get_only_what_running_a_guest_needs() {
    let v = ThreadKind::Vcpu;
    for nr in [
        libc::SYS_openat,
        libc::SYS_socket,
        libc::SYS_clone3,
        libc::SYS_read,
        libc::SYS_connect,
        libc::SYS_rt_sigaction,
    ] {
        assert!(!allows(v, nr, &[0; 6]), "vcpu allows {nr}");
    }
    assert!(allows(v, libc::SYS_ioctl, &[5, rules::kvm::RUN]));
    assert!(allows(v, libc::SYS_ioctl, &[5, libc::TUNSETOFFLOAD]));
    assert!(!allows(v, libc::SYS_ioctl, &[5, rules::kvm::CREATE_VCPU]));
    assert!(!allows(v, libc::SYS_ioctl, &[5, libc::TUNSETIFF]));
    assert!(allows(v, libc::SYS_write, &[1, 0, 1]));
    let kick = hypervisor::kick_signal() as u64;
    assert!(!allows(v, libc::SYS_tgkill, &[1, 2, kick]));
    assert!(allows(ThreadKind::Vmm, libc::SYS_tgkill, &[1, 2, kick]));
}

/// Runs `body` in a forked child with `kind`'s filter in `mode` installed; returns the
/// child's wait status. The program is built before the fork: the child only makes syscalls.
fn in_filtered_child(kind: ThreadKind, mode: SeccompMode, body: fn() -> i32) -> i32 {
    let progs = programs(kind, mode, Backend::Kvm).unwrap();
    // SAFETY: the child calls only async-signal-safe functions (setrlimit, prctl, seccomp,
    // the syscalls of `body`) and leaves with _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    if pid == 0 {
        let none = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: setrlimit reads a valid rlimit: no core file for an expected SIGSYS.
        unsafe { libc::setrlimit(libc::RLIMIT_CORE, &none) };
        let code = match progs.iter().try_for_each(|p| seccompiler::apply_filter(p)) {
            Ok(()) => body(),
            Err(_) => 99,
        };
        // SAFETY: ends the forked child without running the parent's destructors.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: waits for our own child; `status` is a valid out pointer.
    let r = unsafe { libc::waitpid(pid, &mut status, 0) };
    assert_eq!(r, pid);
    status
}

fn forbidden() -> i32 {
    // SAFETY: getpgid(0) takes no pointers.
    unsafe { libc::syscall(SELFTEST_SYSCALL, 0) };
    7
}

fn allowed_calls() -> i32 {
    // SAFETY: getpid takes no arguments; ioctl on fd -1 fails with EBADF without touching
    // the (null) argument.
    unsafe {
        libc::getpid();
        let r = libc::ioctl(-1, rules::kvm::RUN as _, 0);
        if r != -1 {
            return 1;
        }
    }
    0
}

fn forbidden_ioctl() -> i32 {
    // SAFETY: the filter stops the call before the kernel looks at fd -1 or the pointer.
    unsafe { libc::ioctl(-1, libc::TUNSETIFF as _, 0) };
    7
}

#[test]
fn a_forbidden_syscall_kills_with_sigsys_or_is_only_logged() {
    for kind in ThreadKind::ALL {
        let status = in_filtered_child(kind, SeccompMode::Enforce, forbidden);
        assert!(
            libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGSYS,
            "{kind}: status {status:#x}"
        );
        let status = in_filtered_child(kind, SeccompMode::Log, forbidden);
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 7,
            "{kind} log: status {status:#x}"
        );
    }
}

#[test]
fn ioctls_are_filtered_by_request() {
    let status = in_filtered_child(ThreadKind::Vcpu, SeccompMode::Enforce, allowed_calls);
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "status {status:#x}"
    );
    let status = in_filtered_child(ThreadKind::Vcpu, SeccompMode::Enforce, forbidden_ioctl);
    assert!(
        libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGSYS,
        "status {status:#x}"
    );
}

fn open_proc_file() -> i32 {
    let path = c"/proc/sys/vm/overcommit_memory";
    // SAFETY: `path` is a NUL-terminated string; the result is checked.
    let fd = unsafe { libc::openat(libc::AT_FDCWD, path.as_ptr(), libc::O_RDONLY) };
    if fd >= 0 {
        return 1;
    }
    // SAFETY: reads this thread's errno.
    match unsafe { *libc::__errno_location() } {
        libc::EACCES => 0,
        _ => 2,
    }
}

#[test]
fn vcpu_and_api_threads_are_refused_openat_without_dying() {
    for kind in [ThreadKind::Vcpu, ThreadKind::Api] {
        for mode in [SeccompMode::Enforce, SeccompMode::Log] {
            let status = in_filtered_child(kind, mode, open_proc_file);
            assert!(
                libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
                "{kind} {mode}: status {status:#x}"
            );
        }
    }
    let status = in_filtered_child(ThreadKind::Vmm, SeccompMode::Enforce, open_proc_file);
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 1,
        "{status:#x}"
    );
}

/// A fork through raw `clone3` (flags 0, exit signal SIGCHLD): 0 when refused with ENOSYS,
/// 1 when it created a process (the child leaves at once), 2 on any other error.
fn fork_with_clone3() -> i32 {
    // struct clone_args (version 0, 64 bytes): flags, pidfd, child_tid, parent_tid,
    // exit_signal, stack, stack_size, tls.
    let args: [u64; 8] = [0, 0, 0, 0, libc::SIGCHLD as u64, 0, 0, 0];
    // SAFETY: clone3 reads `args` (valid, 64 bytes); a child, if one is created, only calls
    // _exit.
    let rc = unsafe { libc::syscall(libc::SYS_clone3, args.as_ptr(), 64usize) };
    if rc == 0 {
        // SAFETY: ends the child process at once.
        unsafe { libc::_exit(0) };
    }
    if rc > 0 {
        return 1;
    }
    // SAFETY: reads this thread's errno.
    match unsafe { *libc::__errno_location() } {
        libc::ENOSYS => 0,
        _ => 2,
    }
}

extern "C" fn thread_body(arg: *mut libc::c_void) -> *mut libc::c_void {
    arg
}

/// Creates and joins a thread with pthread_create (glibc tries clone3, then clone): 0 when
/// the thread ran.
fn spawn_a_thread() -> i32 {
    let mut t: libc::pthread_t = 0;
    let token = 42usize as *mut libc::c_void;
    // SAFETY: `t` is a valid out pointer; the thread only returns its argument.
    let rc = unsafe { libc::pthread_create(&mut t, std::ptr::null(), thread_body, token) };
    if rc != 0 {
        return 10 + rc.min(100);
    }
    let mut out: *mut libc::c_void = std::ptr::null_mut();
    // SAFETY: joins the thread created above; `out` is a valid out pointer.
    let rc = unsafe { libc::pthread_join(t, &mut out) };
    if rc != 0 || out != token {
        return 3;
    }
    0
}

/// A fork through `clone` (what glibc's fork does).
fn fork_with_clone() -> i32 {
    // SAFETY: clone with only SIGCHLD and no stack is a fork; the child only calls _exit.
    let rc = unsafe { libc::syscall(libc::SYS_clone, libc::SIGCHLD as u64, 0, 0, 0, 0) };
    if rc == 0 {
        // SAFETY: ends the child process at once.
        unsafe { libc::_exit(0) };
    }
    7
}

#[test]
fn no_thread_may_fork_but_the_main_thread_still_creates_threads() {
    for kind in ThreadKind::ALL {
        for mode in [SeccompMode::Enforce, SeccompMode::Log] {
            let status = in_filtered_child(kind, mode, fork_with_clone3);
            assert!(
                libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
                "{kind} {mode}: clone3 was not refused with ENOSYS (status {status:#x})"
            );
        }
        let status = in_filtered_child(kind, SeccompMode::Enforce, fork_with_clone);
        assert!(
            libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGSYS,
            "{kind}: a fork through clone was not killed (status {status:#x})"
        );
    }
    let status = in_filtered_child(ThreadKind::Vmm, SeccompMode::Enforce, spawn_a_thread);
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "the main thread could not create a thread (status {status:#x})"
    );
}

/// Whether `kind`'s filter for `backend` allows ioctl `request`.
fn allows_ioctl(kind: ThreadKind, backend: Backend, request: u64) -> bool {
    let holds = |c: &Cond| match *c {
        Cond::Eq(1, v) => request & 0xffff_ffff == v,
        _ => false,
    };
    match merged(kind, backend).get(&libc::SYS_ioctl) {
        Some(Some(rules)) => rules.iter().any(|r| r.iter().all(holds)),
        _ => false,
    }
}

#[test]
fn each_backend_gets_its_own_hypervisor_ioctls() {
    let (mshv_vm, mshv_vcpu) = hypervisor::mshv::seccomp_ioctls();
    assert!(!mshv_vm.is_empty() && !mshv_vcpu.is_empty());
    for &r in &mshv_vcpu {
        assert!(allows_ioctl(ThreadKind::Vcpu, Backend::Mshv, r), "{r:#x}");
        assert!(allows_ioctl(ThreadKind::Vmm, Backend::Mshv, r), "{r:#x}");
    }
    for &r in &mshv_vm {
        assert!(allows_ioctl(ThreadKind::Vmm, Backend::Mshv, r), "{r:#x}");
    }
    // A vCPU thread gets none of the partition-building ioctls (creating partitions and
    // vCPUs, mapping memory), and no thread gets the other backend's ioctls.
    let building: Vec<u64> = mshv_vm
        .iter()
        .copied()
        .filter(|r| !mshv_vcpu.contains(r))
        .collect();
    assert!(building.len() >= 5, "{building:x?}");
    for r in building {
        assert!(!allows_ioctl(ThreadKind::Vcpu, Backend::Mshv, r), "{r:#x}");
    }
    assert!(!allows_ioctl(
        ThreadKind::Vcpu,
        Backend::Mshv,
        rules::kvm::RUN
    ));
    assert!(!allows_ioctl(
        ThreadKind::Vmm,
        Backend::Mshv,
        rules::kvm::CREATE_VM
    ));
    // MSHV_RUN_VP: _IOR(0xb8, 0x00, struct mshv_run_vp), 256 bytes.
    let run_vp = (2 << 30) | (256 << 16) | (0xb8 << 8);
    assert!(mshv_vcpu.contains(&run_vp), "{mshv_vcpu:x?}");
    assert!(!allows_ioctl(ThreadKind::Vcpu, Backend::Kvm, run_vp));
    assert!(allows_ioctl(
        ThreadKind::Vcpu,
        Backend::Kvm,
        rules::kvm::RUN
    ));
    assert!(!allows_ioctl(ThreadKind::Api, Backend::Mshv, run_vp));
}
