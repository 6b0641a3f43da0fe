//! seccomp filters, one per kind of thread (the main thread with the event loop and devices,
//! each vCPU, the API server), built with seccompiler and installed by each thread on itself
//! (no TSYNC). `--seccomp true` (the default) ends the process with SIGSYS on any syscall
//! outside the thread's allow-list, `--seccomp log` lets it through and has the kernel log
//! it (audit / `dmesg`), `--seccomp false` installs nothing.
//!
//! Filters stack: a thread inherits the filters of the thread that created it, and a syscall
//! must pass all of them. The main thread's filter is therefore a superset of the others (see
//! [`rules`]); install it before spawning the vCPU threads, and install the vCPU filter in a
//! vCPU thread after `Vcpu::prepare_thread` (which installs the kick signal handler).
//!
//! The lists cover both backends on x86_64 ([`Backend`]): the hypervisor ioctls differ, the
//! rest is the same.

mod rules;

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use seccompiler::{
    BackendError, BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition,
    SeccompFilter, SeccompRule, TargetArch,
};

use rules::{Cond, When};

/// The environment variable that makes a thread of a debug build make one forbidden syscall
/// right after its filter is installed: `vmm`, `vcpu` or `api`; or, with `fork`, makes the
/// main thread try to create a process with `clone3`, with `open` to open `/etc/hostname`,
/// and log the outcome (see [`selftest_if_requested`]).
pub const SELFTEST_ENV: &str = "PETREL_SECCOMP_SELFTEST";

/// The syscall the self-test makes: harmless, and on no allow-list (debug builds only).
#[cfg(any(debug_assertions, test))]
const SELFTEST_SYSCALL: libc::c_long = libc::SYS_getpgid;

/// `--seccomp true|false|log`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SeccompMode {
    /// `true`: a syscall outside the allow-list kills the process (SIGSYS).
    #[default]
    Enforce,
    /// `log`: a syscall outside the allow-list is allowed and logged by the kernel.
    Log,
    /// `false`: no filter.
    Off,
}

impl FromStr for SeccompMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "true" => Ok(SeccompMode::Enforce),
            "false" => Ok(SeccompMode::Off),
            "log" => Ok(SeccompMode::Log),
            _ => Err(format!(
                "--seccomp: '{s}' is not a seccomp mode (expected true, false or log)"
            )),
        }
    }
}

impl fmt::Display for SeccompMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SeccompMode::Enforce => "true",
            SeccompMode::Log => "log",
            SeccompMode::Off => "false",
        })
    }
}

/// The hypervisor backend whose ioctls the filters allow.
pub type Backend = hypervisor::Kind;

/// The kinds of thread, each with its own filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ThreadKind {
    /// The main thread: the event loop with every device, VM and vCPU creation.
    Vmm,
    /// A vCPU thread.
    Vcpu,
    /// The API server thread.
    Api,
}

impl ThreadKind {
    /// Every kind.
    pub const ALL: [ThreadKind; 3] = [ThreadKind::Vmm, ThreadKind::Vcpu, ThreadKind::Api];

    /// `vmm`, `vcpu` or `api` (also the values of [`SELFTEST_ENV`]).
    pub fn name(self) -> &'static str {
        match self {
            ThreadKind::Vmm => "vmm",
            ThreadKind::Vcpu => "vcpu",
            ThreadKind::Api => "api",
        }
    }
}

impl fmt::Display for ThreadKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a filter could not be built or installed.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// The filter could not be compiled to BPF.
    #[error("building the seccomp filter of the {kind} thread: {source}")]
    Build {
        /// Which filter.
        kind: ThreadKind,
        /// Why.
        #[source]
        source: BackendError,
    },
    /// The kernel refused the filter (or `no_new_privs`).
    #[error("installing the seccomp filter on the {kind} thread: {source}")]
    Install {
        /// Which filter.
        kind: ThreadKind,
        /// Why.
        #[source]
        source: seccompiler::Error,
    },
}

fn condition(c: Cond) -> Result<SeccompCondition, BackendError> {
    match c {
        Cond::Eq(arg, v) => {
            SeccompCondition::new(arg, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, v)
        }
        Cond::MaskedEq(arg, mask, v) => SeccompCondition::new(
            arg,
            SeccompCmpArgLen::Dword,
            SeccompCmpOp::MaskedEq(mask),
            v,
        ),
    }
}

/// The allow-list of `kind` with repeated syscalls merged: `None` means "whatever the
/// arguments", `Some(rules)` "when one of the rules holds".
fn merged(kind: ThreadKind, backend: Backend) -> BTreeMap<i64, Option<Vec<Vec<Cond>>>> {
    let mut map: BTreeMap<i64, Option<Vec<Vec<Cond>>>> = BTreeMap::new();
    for allow in rules::allowed(kind, hypervisor::kick_signal(), backend) {
        let entry = map.entry(allow.nr).or_insert_with(|| Some(Vec::new()));
        match (entry.as_mut(), allow.when) {
            (_, When::Always) => *entry = None,
            (Some(rules), When::AnyOf(more)) => rules.extend(more),
            (None, When::AnyOf(_)) => {}
        }
    }
    map
}

/// The BPF programs for `kind` in `mode`, in the order to install them (none when `mode` is
/// [`SeccompMode::Off`]): the refusals of [`rules::refused`] (if any), then the allow-list.
/// Stacked filters all run and the strictest answer wins (KILL over ERRNO over LOG over
/// ALLOW).
pub fn programs(
    kind: ThreadKind,
    mode: SeccompMode,
    backend: Backend,
) -> Result<Vec<BpfProgram>, SeccompError> {
    let mismatch = match mode {
        SeccompMode::Enforce => SeccompAction::KillProcess,
        SeccompMode::Log => SeccompAction::Log,
        SeccompMode::Off => return Ok(Vec::new()),
    };
    let build = |source| SeccompError::Build { kind, source };
    let mut out = Vec::new();
    let refused = rules::refused(kind);
    // One filter per error number (a filter has a single action for its matches).
    let mut by_errno: BTreeMap<libc::c_int, BTreeMap<i64, Vec<SeccompRule>>> = BTreeMap::new();
    for r in refused {
        by_errno
            .entry(r.errno)
            .or_default()
            .insert(r.nr, Vec::new());
    }
    for (errno, rules) in by_errno {
        let errno = SeccompAction::Errno(errno.unsigned_abs());
        let filter = SeccompFilter::new(rules, SeccompAction::Allow, errno, TargetArch::x86_64)
            .map_err(build)?;
        out.push(BpfProgram::try_from(filter).map_err(build)?);
    }
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for (nr, conds) in merged(kind, backend) {
        let chain = match conds {
            None => Vec::new(),
            Some(list) => list
                .into_iter()
                .map(|conds| {
                    let conds = conds
                        .into_iter()
                        .map(condition)
                        .collect::<Result<Vec<_>, _>>()?;
                    SeccompRule::new(conds)
                })
                .collect::<Result<Vec<_>, _>>()
                .map_err(build)?,
        };
        rules.insert(nr, chain);
    }
    // The refused syscalls pass this filter so that the refusal filter's error, which
    // outranks ALLOW but not KILL, is the answer.
    for r in refused {
        rules.insert(r.nr, Vec::new());
    }
    let filter = SeccompFilter::new(rules, mismatch, SeccompAction::Allow, TargetArch::x86_64)
        .map_err(build)?;
    out.push(BpfProgram::try_from(filter).map_err(build)?);
    Ok(out)
}

/// Installs the filters of `kind` for `backend` on the calling thread (only; threads it
/// creates afterwards inherit them). Does nothing with [`SeccompMode::Off`].
pub fn apply(kind: ThreadKind, mode: SeccompMode, backend: Backend) -> Result<(), SeccompError> {
    for prog in programs(kind, mode, backend)? {
        seccompiler::apply_filter(&prog)
            .map_err(|source| SeccompError::Install { kind, source })?;
    }
    if mode != SeccompMode::Off {
        log::debug!("seccomp: {kind} thread filtered ({mode})");
    }
    if mode == SeccompMode::Enforce
        && rules::refused(kind)
            .iter()
            .any(|r| r.nr == libc::SYS_openat)
    {
        crate::rotating_file::forbid_opening_on_this_thread();
    }
    Ok(())
}

/// In debug builds, when [`SELFTEST_ENV`] names `kind`, makes one syscall that no filter
/// allows (`getpgid`): under `--seccomp true` the process dies with SIGSYS; under `log` it
/// goes on, and says so on the log. Call right after [`apply`]. Does nothing in release
/// builds.
pub fn selftest_if_requested(kind: ThreadKind) {
    #[cfg(debug_assertions)]
    if std::env::var(SELFTEST_ENV).is_ok_and(|v| v == kind.name()) {
        log::warn!("seccomp selftest: the {kind} thread makes a forbidden syscall (getpgid)");
        // SAFETY: getpgid(0) takes no pointers and only returns the process group id.
        let rc = unsafe { libc::syscall(SELFTEST_SYSCALL, 0) };
        log::warn!("seccomp selftest: the {kind} thread survived (getpgid returned {rc})");
    }
    #[cfg(debug_assertions)]
    if kind == ThreadKind::Vmm && std::env::var(SELFTEST_ENV).is_ok_and(|v| v == "open") {
        let r = std::fs::File::open("/etc/hostname");
        log::warn!(
            "seccomp selftest: the vmm thread opening /etc/hostname: {}",
            match r {
                Ok(_) => "opened".to_string(),
                Err(e) => e.to_string(),
            }
        );
    }
    #[cfg(debug_assertions)]
    if kind == ThreadKind::Vmm && std::env::var(SELFTEST_ENV).is_ok_and(|v| v == "fork") {
        log::warn!("seccomp selftest: the vmm thread tries to fork with clone3");
        log::warn!("seccomp selftest: clone3 {}", try_clone3_fork());
    }
    #[cfg(not(debug_assertions))]
    let _ = kind;
}

/// Tries to create a process with a raw `clone3` (flags 0, exit signal SIGCHLD) and says
/// what happened (the child, if any, exits at once). Debug builds only.
#[cfg(debug_assertions)]
fn try_clone3_fork() -> String {
    // struct clone_args, version 0 (64 bytes): flags, pidfd, child_tid, parent_tid,
    // exit_signal, stack, stack_size, tls.
    let args: [u64; 8] = [0, 0, 0, 0, libc::SIGCHLD as u64, 0, 0, 0];
    // SAFETY: clone3 reads `args` (valid for 64 bytes); a child only calls _exit.
    let rc = unsafe { libc::syscall(libc::SYS_clone3, args.as_ptr(), 64usize) };
    match rc {
        0 => {
            // SAFETY: ends the child process at once, running nothing of the parent's.
            unsafe { libc::_exit(0) }
        }
        pid if pid > 0 => {
            let mut status = 0;
            // SAFETY: reaps our own child; `status` is a valid out pointer.
            unsafe { libc::waitpid(pid as libc::pid_t, &mut status, 0) };
            format!("created process {pid}")
        }
        _ => match std::io::Error::last_os_error().raw_os_error() {
            Some(libc::ENOSYS) => "refused (ENOSYS)".to_string(),
            e => format!("failed (errno {e:?})"),
        },
    }
}

#[cfg(test)]
mod tests;
