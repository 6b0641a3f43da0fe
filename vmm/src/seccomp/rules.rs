//! The allow-lists: which syscalls (and, where practical, which arguments) each kind of
//! thread may use, in groups that say why they are needed.
//!
//! Found by running petrel under `strace -f` with the test guests driving every device
//! (virtio-blk, -net on a tap, -vsock both ways, -rng, -balloon, serial input from stdin,
//! `action=reset-once` reboots, SIGTERM, triple faults), and by reading the code paths that
//! only run on request (the API server, balloon statistics, rate-limit timers, hotplug of
//! devices into the VM config). A thread created by a thread that already has a filter
//! inherits it, and every filter of a thread must allow a syscall: that is why the `Vmm`
//! list (the main thread, which spawns the vCPU threads at every boot and may spawn the API
//! thread) is the union of every list, and the vCPU and API lists narrow it down.

use super::{Backend, ThreadKind};

/// A condition on one syscall argument (the low 32 bits unless said otherwise).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Cond {
    /// `arg[index] == value`.
    Eq(u8, u64),
    /// `arg[index] & mask == value`.
    MaskedEq(u8, u64, u64),
}

/// When a syscall is allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum When {
    /// Whatever its arguments.
    Always,
    /// When every condition of at least one of these rules holds.
    AnyOf(Vec<Vec<Cond>>),
}

/// One allowed syscall.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Allow {
    /// The syscall number (x86_64).
    pub nr: i64,
    /// When it is allowed.
    pub when: When,
}

fn always(nrs: &[libc::c_long]) -> Vec<Allow> {
    nrs.iter()
        .map(|&nr| Allow {
            nr,
            when: When::Always,
        })
        .collect()
}

/// `nr` when argument `arg` is one of `values`.
fn arg_in(nr: libc::c_long, arg: u8, values: &[u64]) -> Allow {
    Allow {
        nr,
        when: When::AnyOf(values.iter().map(|&v| vec![Cond::Eq(arg, v)]).collect()),
    }
}

/// `ioctl` with one of these request numbers.
fn ioctls(requests: &[u64]) -> Allow {
    arg_in(libc::SYS_ioctl, 1, requests)
}

/// KVM ioctl request numbers (`linux/kvm.h`; type 0xAE). The sizes are those of the kernel
/// structures, which are ABI: a unit test checks the numbers against what strace decoded.
pub(super) mod kvm {
    const KVMIO: u64 = 0xae;

    const fn ioc(dir: u64, nr: u64, size: u64) -> u64 {
        (dir << 30) | (size << 16) | (KVMIO << 8) | nr
    }
    const fn io(nr: u64) -> u64 {
        ioc(0, nr, 0)
    }
    const fn iow(nr: u64, size: u64) -> u64 {
        ioc(1, nr, size)
    }
    const fn ior(nr: u64, size: u64) -> u64 {
        ioc(2, nr, size)
    }
    const fn iowr(nr: u64, size: u64) -> u64 {
        ioc(3, nr, size)
    }

    // sizeof: kvm_regs 144, kvm_sregs 312, kvm_fpu 416, kvm_lapic_state 1024, kvm_msrs 8,
    // kvm_cpuid2 8, kvm_msr_list 4, kvm_mp_state 4, kvm_irqfd 32, kvm_ioeventfd 64,
    // kvm_userspace_memory_region 32, kvm_irq_level 8, kvm_irq_routing 8, kvm_msi 32,
    // kvm_enable_cap 104.
    pub const GET_API_VERSION: u64 = io(0x00);
    pub const CREATE_VM: u64 = io(0x01);
    pub const GET_MSR_INDEX_LIST: u64 = iowr(0x02, 4);
    pub const CHECK_EXTENSION: u64 = io(0x03);
    pub const GET_VCPU_MMAP_SIZE: u64 = io(0x04);
    pub const GET_SUPPORTED_CPUID: u64 = iowr(0x05, 8);
    pub const CREATE_VCPU: u64 = io(0x41);
    pub const SET_USER_MEMORY_REGION: u64 = iow(0x46, 32);
    pub const SET_TSS_ADDR: u64 = io(0x47);
    pub const CREATE_IRQCHIP: u64 = io(0x60);
    pub const IRQ_LINE: u64 = iow(0x61, 8);
    pub const SET_GSI_ROUTING: u64 = iow(0x6a, 8);
    pub const IRQFD: u64 = iow(0x76, 32);
    pub const IOEVENTFD: u64 = iow(0x79, 64);
    pub const RUN: u64 = io(0x80);
    pub const GET_REGS: u64 = ior(0x81, 144);
    pub const SET_REGS: u64 = iow(0x82, 144);
    pub const GET_SREGS: u64 = ior(0x83, 312);
    pub const SET_SREGS: u64 = iow(0x84, 312);
    pub const GET_MSRS: u64 = iowr(0x88, 8);
    pub const SET_MSRS: u64 = iow(0x89, 8);
    pub const GET_FPU: u64 = ior(0x8c, 416);
    pub const SET_FPU: u64 = iow(0x8d, 416);
    pub const GET_LAPIC: u64 = ior(0x8e, 1024);
    pub const SET_LAPIC: u64 = iow(0x8f, 1024);
    pub const SET_CPUID2: u64 = iow(0x90, 8);
    pub const GET_CPUID2: u64 = iowr(0x91, 8);
    pub const GET_MP_STATE: u64 = ior(0x98, 4);
    pub const SET_MP_STATE: u64 = iow(0x99, 4);
    pub const ENABLE_CAP: u64 = iow(0xa3, 104);
    pub const SIGNAL_MSI: u64 = iow(0xa5, 32);
    // Snapshots. sizeof: kvm_vcpu_events 64, kvm_xsave 4096, kvm_xcrs 392, kvm_irqchip 520,
    // kvm_clock_data 48.
    pub const GET_VCPU_EVENTS: u64 = ior(0x9f, 64);
    pub const SET_VCPU_EVENTS: u64 = iow(0xa0, 64);
    pub const GET_XSAVE: u64 = ior(0xa4, 4096);
    pub const SET_XSAVE: u64 = iow(0xa5, 4096);
    pub const GET_XCRS: u64 = ior(0xa6, 392);
    pub const SET_XCRS: u64 = iow(0xa7, 392);
    pub const GET_IRQCHIP: u64 = iowr(0x62, 520);
    pub const SET_IRQCHIP: u64 = ior(0x63, 520);
    pub const SET_CLOCK: u64 = iow(0x7b, 48);
    pub const GET_CLOCK: u64 = ior(0x7c, 48);
    // Migration: sizeof kvm_dirty_log 16.
    pub const GET_DIRTY_LOG: u64 = iow(0x42, 16);
}

const FIONBIO: u64 = libc::FIONBIO;
const FIOCLEX: u64 = libc::FIOCLEX;
const TCGETS: u64 = libc::TCGETS;
/// A block device's logical sector size (imago probes it for `O_DIRECT` alignment).
const BLKSSZGET: u64 = libc::BLKSSZGET;
/// A block device's size in bytes (imago, for a qcow2 image on a block device):
/// `_IOR(0x12, 114, u64)`.
const BLKGETSIZE64: u64 = 0x8008_1272;
const SIOCGIFFLAGS: u64 = libc::SIOCGIFFLAGS;
const SIOCSIFFLAGS: u64 = libc::SIOCSIFFLAGS;

fn c(v: libc::c_int) -> u64 {
    // Only ever called with the non-negative constants below.
    v as u64
}

/// What Rust's standard library and glibc need on any thread, whatever it does: allocation,
/// locks, signal return and the alternate signal stack, clocks and sleeps, thread exit, the
/// random keys of `HashMap`, writing log lines to stderr (or the log file), closing dropped
/// descriptors (debug builds check each with `fcntl(F_GETFD)` first), and `abort()` (a
/// release build panics with `panic = "abort"`: `tgkill(SIGABRT)` must go through so the
/// process dies with SIGABRT, not SIGSYS).
fn runtime() -> Vec<Allow> {
    let mut v = always(&[
        // Memory: the allocator, thread stacks and guard pages, the signal stack.
        libc::SYS_mmap,
        libc::SYS_munmap,
        libc::SYS_mremap,
        libc::SYS_mprotect,
        libc::SYS_madvise,
        libc::SYS_brk,
        // Locks, condition variables, channels, thread joins.
        libc::SYS_futex,
        libc::SYS_sched_yield,
        // Signals: return from a handler (the vCPU kick), masks, the signal stack at exit.
        libc::SYS_rt_sigreturn,
        libc::SYS_rt_sigprocmask,
        libc::SYS_sigaltstack,
        // Clocks (normally the vDSO, but it may fall back to the syscall) and sleeps.
        libc::SYS_clock_gettime,
        libc::SYS_gettimeofday,
        libc::SYS_clock_nanosleep,
        libc::SYS_nanosleep,
        // Identity (thread names in logs, pthread_kill).
        libc::SYS_getpid,
        libc::SYS_gettid,
        // HashMap keys (once per thread), virtio-rng.
        libc::SYS_getrandom,
        // Log lines, serial output, eventfd signalling.
        libc::SYS_write,
        libc::SYS_writev,
        // Dropped descriptors.
        libc::SYS_close,
        // Thread and process exit.
        libc::SYS_exit,
        libc::SYS_exit_group,
    ]);
    v.push(arg_in(libc::SYS_fcntl, 1, &[c(libc::F_GETFD)]));
    v.push(arg_in(libc::SYS_tgkill, 2, &[c(libc::SIGABRT)]));
    v
}

/// A vCPU thread: runs the guest and handles its port I/O and MMIO in place, which writes
/// eventfds (irqfds, device kicks, the exit and reset events) and serial output (covered by
/// `runtime`). The virtio-mmio transport activates and resets devices on this thread: the
/// tap's offloads follow the driver's features (`TUNSETOFFLOAD`), and the balloon arms or
/// disarms its statistics timer (`timerfd_settime`). `KVM_GET_REGS`/`KVM_GET_SREGS` read
/// the instruction pointer for failure reports. With MSHV: running the VP, its registers and
/// state, guest memory access for the instruction emulator, and MSI routes (the emulated
/// IOAPIC is programmed from the vCPU that writes it).
fn vcpu(backend: Backend) -> Vec<Allow> {
    let mut requests = vec![libc::TUNSETOFFLOAD];
    match backend {
        Backend::Kvm => requests.extend([
            kvm::RUN,
            kvm::GET_REGS,
            kvm::GET_SREGS,
            // vm.snapshot: a parked vCPU thread saves its own vCPU.
            kvm::GET_XSAVE,
            kvm::GET_XCRS,
            kvm::GET_LAPIC,
            kvm::GET_VCPU_EVENTS,
            kvm::GET_MP_STATE,
            kvm::GET_CPUID2,
            kvm::GET_MSRS,
            // PCI: a guest that moves a BAR (config space write) moves its ioeventfds; one
            // that programs an MSI-X vector sets its route.
            kvm::IOEVENTFD,
            kvm::SET_GSI_ROUTING,
        ]),
        Backend::Mshv => requests.extend(hypervisor::mshv::seccomp_ioctls().1),
    }
    vec![
        ioctls(&requests),
        Allow {
            nr: libc::SYS_timerfd_settime,
            when: When::Always,
        },
    ]
}

/// The API server thread: one `poll(2)` loop accepting connections on the Unix socket,
/// reading requests (with file descriptors passed as SCM_RIGHTS), writing responses,
/// shutting down and closing connections; non-blocking mode through `FIONBIO`/`fcntl`.
/// A request is forwarded to the event loop (a channel and an eventfd write, in
/// `runtime`). A handler may look at a passed descriptor (`fstat`, `lseek`, `read`).
fn api() -> Vec<Allow> {
    let mut v = always(&[
        libc::SYS_poll,
        libc::SYS_ppoll,
        libc::SYS_accept4,
        libc::SYS_recvmsg,
        libc::SYS_sendmsg,
        libc::SYS_recvfrom,
        libc::SYS_sendto,
        libc::SYS_shutdown,
        libc::SYS_getsockopt,
        libc::SYS_read,
        libc::SYS_readv,
        libc::SYS_lseek,
        libc::SYS_statx,
        libc::SYS_fstat,
        libc::SYS_newfstatat,
    ]);
    v.push(ioctls(&[FIONBIO, FIOCLEX]));
    v.push(arg_in(
        libc::SYS_fcntl,
        1,
        &[
            c(libc::F_GETFD),
            c(libc::F_SETFD),
            c(libc::F_GETFL),
            c(libc::F_SETFL),
            c(libc::F_DUPFD_CLOEXEC),
        ],
    ));
    v
}

/// The main thread: the event loop with every virtio device, the lifecycle (VM and vCPU
/// creation at every boot and reboot), and, with the API, building the VM and its devices
/// after start.
fn vmm(kick_signal: libc::c_int, backend: Backend) -> Vec<Allow> {
    let mut v = always(&[
        // Files: the kernel and initramfs (loaded again at every boot), disk images (raw
        // reads and writes, flush, discard and write-zeroes; an advisory lock so two VMs
        // cannot share a writable image), /dev/kvm, /dev/net/tun, the log file,
        // /proc/meminfo; vsock and API sockets removed when stale.
        libc::SYS_openat,
        libc::SYS_flock,
        libc::SYS_read,
        libc::SYS_readv,
        libc::SYS_pread64,
        libc::SYS_preadv,
        libc::SYS_pwrite64,
        libc::SYS_pwritev,
        libc::SYS_lseek,
        libc::SYS_statx,
        libc::SYS_fstat,
        libc::SYS_newfstatat,
        libc::SYS_fsync,
        libc::SYS_fdatasync,
        libc::SYS_fallocate,
        // qcow2 (imago): the file system's block size, for discard and zeroing alignment.
        libc::SYS_fstatfs,
        libc::SYS_unlink,
        libc::SYS_unlinkat,
        // vm.snapshot: its directory, sparse memory files, the header renamed into place.
        libc::SYS_mkdir,
        libc::SYS_mkdirat,
        libc::SYS_ftruncate,
        libc::SYS_rename,
        libc::SYS_renameat,
        libc::SYS_renameat2,
        // Descriptors of the event loop: eventfds (irqfds, ioeventfds, lifecycle events),
        // timerfds (rate limiters, balloon statistics), the SIGTERM/SIGINT signalfd, epoll.
        libc::SYS_fcntl,
        libc::SYS_dup,
        libc::SYS_dup3,
        libc::SYS_pipe2,
        libc::SYS_eventfd2,
        libc::SYS_timerfd_create,
        libc::SYS_timerfd_settime,
        libc::SYS_timerfd_gettime,
        libc::SYS_signalfd4,
        libc::SYS_epoll_create1,
        libc::SYS_epoll_ctl,
        libc::SYS_epoll_wait,
        libc::SYS_epoll_pwait,
        libc::SYS_poll,
        libc::SYS_ppoll,
        // Unix sockets: hybrid vsock (listen for host connections, connect to
        // `<socket>_<port>`), the API socket and its fd passing.
        libc::SYS_socketpair,
        libc::SYS_bind,
        libc::SYS_listen,
        libc::SYS_accept4,
        libc::SYS_connect,
        libc::SYS_sendmsg,
        libc::SYS_recvmsg,
        libc::SYS_sendto,
        libc::SYS_recvfrom,
        libc::SYS_shutdown,
        libc::SYS_getsockopt,
        libc::SYS_setsockopt,
        libc::SYS_getsockname,
        libc::SYS_getpeername,
        // Signal handling: SIGTERM/SIGINT blocked for the signalfd, the vCPU kick handler
        // (installed by the first vCPU thread while it still has only this filter).
        libc::SYS_rt_sigaction,
        // vCPU threads, at every boot (clone3 is refused with ENOSYS, see `refused`), and
        // what a new thread does before it installs its own filter (glibc's rseq and robust
        // list, Rust's stack size and guard page queries).
        libc::SYS_set_robust_list,
        libc::SYS_rseq,
        libc::SYS_sched_getaffinity,
        // Landlock at the first boot of a VM created through the API (see
        // `landlock::Deferred`): a restriction can only narrow what the thread may open.
        libc::SYS_landlock_create_ruleset,
        libc::SYS_landlock_add_rule,
        libc::SYS_landlock_restrict_self,
    ]);
    // clone(2) only for threads (glibc falls back to it because clone3 is refused).
    v.push(Allow {
        nr: libc::SYS_clone,
        when: When::AnyOf(vec![vec![Cond::MaskedEq(
            0,
            c(libc::CLONE_THREAD),
            c(libc::CLONE_THREAD),
        )]]),
    });
    // Naming threads; a thread that installs its own filter sets no_new_privs first.
    v.push(arg_in(
        libc::SYS_prctl,
        0,
        &[c(libc::PR_SET_NAME), c(libc::PR_SET_NO_NEW_PRIVS)],
    ));
    // Installing another (stricter) filter: filters only ever add restrictions.
    v.push(arg_in(
        libc::SYS_seccomp,
        0,
        &[u64::from(libc::SECCOMP_SET_MODE_FILTER)],
    ));
    // Stopping vCPUs: the kick signal to a vCPU thread.
    v.push(arg_in(libc::SYS_tgkill, 2, &[c(kick_signal)]));
    // Sockets: AF_UNIX only (hybrid vsock, the API socket, and the interface ioctls that
    // bring a tap up, which work on a socket of any family): no internet socket, so a
    // compromised main thread cannot reach the network.
    v.push(arg_in(libc::SYS_socket, 0, &[c(libc::AF_UNIX)]));
    v.push(ioctls(&hypervisor_ioctls(backend)));
    v.push(ioctls(&[
        // Taps: open by name or adopt a passed descriptor, vnet header size, bring it up.
        libc::TUNSETIFF,
        libc::TUNGETIFF,
        libc::TUNSETVNETHDRSZ,
        SIOCGIFFLAGS,
        SIOCSIFFLAGS,
        // Non-blocking and close-on-exec sockets; "is this a terminal".
        FIONBIO,
        FIOCLEX,
        TCGETS,
        // qcow2 images (imago): sector size for O_DIRECT, size of a block device.
        BLKSSZGET,
        BLKGETSIZE64,
    ]));
    v
}

/// The hypervisor ioctls of the main thread: probing, VM and vCPU creation, memory,
/// interrupts, eventfds, and each vCPU's boot state.
fn hypervisor_ioctls(backend: Backend) -> Vec<u64> {
    match backend {
        Backend::Kvm => kvm_vm_ioctls(),
        Backend::Mshv => hypervisor::mshv::seccomp_ioctls().0,
    }
}

fn kvm_vm_ioctls() -> Vec<u64> {
    vec![
        // /dev/kvm: probing and VM creation.
        kvm::GET_API_VERSION,
        kvm::CHECK_EXTENSION,
        kvm::GET_VCPU_MMAP_SIZE,
        kvm::GET_SUPPORTED_CPUID,
        kvm::GET_MSR_INDEX_LIST,
        kvm::CREATE_VM,
        // The VM: memory, interrupt controller, irqfds, ioeventfds, vCPUs.
        kvm::SET_USER_MEMORY_REGION,
        kvm::SET_TSS_ADDR,
        kvm::CREATE_IRQCHIP,
        kvm::IRQ_LINE,
        kvm::SET_GSI_ROUTING,
        kvm::SIGNAL_MSI,
        kvm::IRQFD,
        kvm::IOEVENTFD,
        kvm::ENABLE_CAP,
        kvm::CREATE_VCPU,
        // A vCPU's boot state: CPUID, registers, MSRs, FPU, LAPIC (and reading them back).
        kvm::SET_CPUID2,
        kvm::GET_CPUID2,
        kvm::SET_REGS,
        kvm::SET_SREGS,
        kvm::SET_MSRS,
        kvm::GET_MSRS,
        kvm::SET_FPU,
        kvm::GET_FPU,
        kvm::SET_LAPIC,
        kvm::GET_LAPIC,
        kvm::GET_MP_STATE,
        kvm::SET_MP_STATE,
        // vm.snapshot (the interrupt controllers and clock) and vm.restore (and every vCPU's
        // saved state).
        kvm::GET_SREGS,
        kvm::GET_IRQCHIP,
        kvm::SET_IRQCHIP,
        kvm::GET_CLOCK,
        kvm::SET_CLOCK,
        kvm::SET_XSAVE,
        kvm::SET_XCRS,
        kvm::SET_VCPU_EVENTS,
        // vm.send-migration: which pages the guest wrote.
        kvm::GET_DIRTY_LOG,
    ]
}

/// A syscall that fails with an error number instead of being allowed or killing the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Refusal {
    /// The syscall number (x86_64).
    pub nr: libc::c_long,
    /// The error it fails with.
    pub errno: libc::c_int,
}

/// Syscalls that `kind` is refused with an error rather than killed for (separate filters
/// installed first, one per error number: the stricter answer of stacked filters wins, so
/// these fail gracefully). Threads a filtered thread creates inherit its refusals.
///
/// `clone3` (`ENOSYS`), on every thread: its flags live in a structure in memory, which a
/// seccomp filter cannot read, so allowing it would let a thread fork a process whatever the
/// `CLONE_THREAD` rule on `clone` says. glibc's `pthread_create` falls back to `clone` when
/// `clone3` answers `ENOSYS`, as on kernels older than 5.3.
///
/// `openat` (`EACCES`), on vCPU and API threads: glibc's malloc opens
/// `/proc/sys/vm/overcommit_memory` once per process, from whichever thread first shrinks a
/// per-thread arena (seen on the API thread as it freed a connection's buffers); when the open
/// fails it shrinks heaps with `MADV_DONTNEED`, which is what it does anyway unless overcommit
/// is disabled. The main thread may open files.
pub(super) fn refused(kind: ThreadKind) -> &'static [Refusal] {
    const CLONE3: Refusal = Refusal {
        nr: libc::SYS_clone3,
        errno: libc::ENOSYS,
    };
    const OPENAT: Refusal = Refusal {
        nr: libc::SYS_openat,
        errno: libc::EACCES,
    };
    match kind {
        ThreadKind::Vcpu | ThreadKind::Api => &[CLONE3, OPENAT],
        ThreadKind::Vmm => &[CLONE3],
    }
}

/// The allow-list of `kind` with `backend` (groups may repeat a syscall; the filter builder
/// merges them).
pub(super) fn allowed(kind: ThreadKind, kick_signal: libc::c_int, backend: Backend) -> Vec<Allow> {
    let mut v = runtime();
    match kind {
        ThreadKind::Vcpu => v.extend(vcpu(backend)),
        ThreadKind::Api => v.extend(api()),
        ThreadKind::Vmm => {
            v.extend(vmm(kick_signal, backend));
            v.extend(vcpu(backend));
            v.extend(api());
        }
    }
    v
}
