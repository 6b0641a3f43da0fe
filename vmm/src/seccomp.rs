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
//! The lists cover the KVM backend on x86_64.

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
/// right after its filter is installed: `vmm`, `vcpu` or `api` (see
/// [`selftest_if_requested`]).
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
fn merged(kind: ThreadKind) -> BTreeMap<i64, Option<Vec<Vec<Cond>>>> {
    let mut map: BTreeMap<i64, Option<Vec<Vec<Cond>>>> = BTreeMap::new();
    for allow in rules::allowed(kind, hypervisor::kick_signal()) {
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
pub fn programs(kind: ThreadKind, mode: SeccompMode) -> Result<Vec<BpfProgram>, SeccompError> {
    let mismatch = match mode {
        SeccompMode::Enforce => SeccompAction::KillProcess,
        SeccompMode::Log => SeccompAction::Log,
        SeccompMode::Off => return Ok(Vec::new()),
    };
    let build = |source| SeccompError::Build { kind, source };
    let mut out = Vec::new();
    let refused = rules::refused(kind);
    if !refused.is_empty() {
        let rules = refused.iter().map(|&nr| (nr, Vec::new())).collect();
        let errno = SeccompAction::Errno(libc::EACCES as u32);
        let filter = SeccompFilter::new(rules, SeccompAction::Allow, errno, TargetArch::x86_64)
            .map_err(build)?;
        out.push(BpfProgram::try_from(filter).map_err(build)?);
    }
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for (nr, conds) in merged(kind) {
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
    // The refused syscalls pass this filter so that the refusal filter's EACCES, which
    // outranks ALLOW but not KILL, is the answer.
    for &nr in refused {
        rules.insert(nr, Vec::new());
    }
    let filter = SeccompFilter::new(rules, mismatch, SeccompAction::Allow, TargetArch::x86_64)
        .map_err(build)?;
    out.push(BpfProgram::try_from(filter).map_err(build)?);
    Ok(out)
}

/// Installs the filters of `kind` on the calling thread (only; threads it creates afterwards
/// inherit them). Does nothing with [`SeccompMode::Off`].
pub fn apply(kind: ThreadKind, mode: SeccompMode) -> Result<(), SeccompError> {
    for prog in programs(kind, mode)? {
        seccompiler::apply_filter(&prog)
            .map_err(|source| SeccompError::Install { kind, source })?;
    }
    if mode != SeccompMode::Off {
        log::debug!("seccomp: {kind} thread filtered ({mode})");
    }
    if mode == SeccompMode::Enforce && rules::refused(kind).contains(&libc::SYS_openat) {
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
    #[cfg(not(debug_assertions))]
    let _ = kind;
}

#[cfg(test)]
mod tests;
