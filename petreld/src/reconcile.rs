//! Start-up reconciliation: what the database says against what runs. Live petrel processes
//! (same pid and start time, answering `vmm.ping`) are re-attached and their VMs brought to
//! the desired state; vanished ones are marked failed with the reason and restarted per
//! policy; interrupted starts, stops and deletes are finished.

use std::sync::Arc;
use std::time::Duration;

use petrel_http::Client;

use super::launcher::{self, VmDir};
use super::model::{DesiredState, ObservedState, VmRecord};
use super::process::{self, ProcessId};
use super::{ApiResult, Daemon};

/// What reconciliation did, for the log.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Summary {
    /// VMs whose petrel was re-attached.
    pub attached: usize,
    /// VMs marked failed because their petrel vanished.
    pub failed: usize,
    /// VMs being started again (policy or interrupted start).
    pub restarting: usize,
    /// Deletes finished.
    pub deleted: usize,
}

/// Reconciles every VM. Runs before the API serves; restarts run on their own threads.
pub fn reconcile(daemon: &Arc<Daemon>) -> ApiResult<Summary> {
    let mut summary = Summary::default();
    drop_unfinished_snapshots(daemon)?;
    // Not `for vm in daemon.store()…`: the guard would live through the loop.
    let vms = daemon.store().all_vms()?;
    for vm in vms {
        let Some(claim) = daemon.try_claim(&vm.id) else {
            continue;
        };
        if vm.desired_state == DesiredState::Deleted {
            match daemon.finish_delete(&vm.id) {
                Ok(()) => summary.deleted += 1,
                Err(e) => log::error!("reconcile: VM {}: delete: {}", vm.id, e.message),
            }
            continue;
        }
        let dir = VmDir::new(&daemon.config.state_dir, &vm.id);
        let recorded = vm
            .pid
            .zip(vm.pid_start)
            .map(|(pid, start)| ProcessId { pid, start })
            .filter(ProcessId::alive);
        // A petrel started just before petreld died, before its pid was recorded.
        let live = recorded.or_else(|| process::find_by_api_socket(&dir.socket()));
        if let Some(done) = finish_operation(daemon, &vm, live)? {
            summary.attached += usize::from(done);
            continue;
        }
        // One VM's failure (e.g. a write on a full state disk) must not leave the others
        // unmanaged: it is logged and the next VM is reconciled.
        let outcome = match live {
            Some(p) => match reattach(daemon, &vm, p, &dir) {
                Ok(outcome) => outcome,
                Err(e) => {
                    log::error!("reconcile: VM {}: {}", vm.id, e.message);
                    continue;
                }
            },
            None => Outcome::Vanished(None),
        };
        drop(claim);
        match outcome {
            Outcome::Attached => summary.attached += 1,
            Outcome::Restart(vm, failed) => {
                summary.restarting += 1;
                daemon.maybe_restart(*vm, failed);
            }
            Outcome::Vanished(why) => match vanished(daemon, &vm, why) {
                Ok((failed, restarting)) => {
                    summary.failed += usize::from(failed);
                    summary.restarting += usize::from(restarting);
                }
                Err(e) => log::error!("reconcile: VM {}: {}", vm.id, e.message),
            },
            Outcome::Done => {}
        }
    }
    Ok(summary)
}

enum Outcome {
    /// Re-attached, in its desired state.
    Attached,
    /// The guest had stopped (true: by failure); restart per policy.
    Restart(Box<VmRecord>, bool),
    /// No usable process (why, when one was found and killed).
    Vanished(Option<String>),
    /// Nothing more to do.
    Done,
}

/// A live process for `vm`: re-attach it if it answers, and bring the VM where it should be.
fn reattach(daemon: &Arc<Daemon>, vm: &VmRecord, p: ProcessId, dir: &VmDir) -> ApiResult<Outcome> {
    let socket = dir.socket();
    let quick = Client::new(&socket).with_timeout(Duration::from_secs(2));
    let answers = quick
        .get(api::request::Endpoint::VmmPing.path())
        .is_ok_and(|r| r.status == 200);
    if !answers {
        launcher::kill(p);
        let why = format!(
            "petrel (pid {}) did not answer vmm.ping after petreld restarted; killed",
            p.pid
        );
        return Ok(Outcome::Vanished(Some(why)));
    }
    if daemon.attach(&vm.id, p, socket.clone()).is_err() {
        return Ok(Outcome::Vanished(None));
    }
    let socket_text = socket.to_string_lossy().into_owned();
    daemon.store().modify_vm(&vm.id, |v| {
        v.pid = Some(p.pid);
        v.pid_start = Some(p.start);
        v.api_socket = Some(socket_text);
    })?;
    let client = launcher::client(&socket);
    if vm.desired_state == DesiredState::Stopped {
        // A stop was under way (or the VM should not run): finish it.
        let reason = launcher::stop(&client, p, Duration::ZERO);
        daemon.detach(&vm.id);
        daemon.store().modify_vm(&vm.id, |v| {
            v.state = ObservedState::Stopped;
            v.exit_reason = Some(format!("{reason} (finished after a petreld restart)"));
            v.pid = None;
            v.pid_start = None;
        })?;
        return Ok(Outcome::Done);
    }
    match launcher::vm_state(&client).ok().flatten().as_deref() {
        Some("Running") => {
            set_state(daemon, vm, ObservedState::Running)?;
        }
        // Paused by a snapshot that petreld's restart cut short: resumed.
        Some("Paused") if vm.desired_state == DesiredState::Running => {
            launcher::call(&client, api::request::Endpoint::VmResume, None)
                .map_err(|m| super::ApiError::new(502, m))?;
            set_state(daemon, vm, ObservedState::Running)?;
        }
        Some("Paused") => {
            set_state(daemon, vm, ObservedState::Paused)?;
        }
        Some("Shutdown") if vm.state != ObservedState::Starting => {
            return Ok(match daemon.handle_guest_stopped(&vm.id) {
                Some((vm, failed)) => Outcome::Restart(Box::new(vm), failed),
                None => Outcome::Done,
            });
        }
        // No VM yet, Created, or a start cut short: continue the start.
        _ => {
            let vm = daemon.launch(vm)?;
            if vm.state == ObservedState::Failed {
                return Ok(Outcome::Done);
            }
        }
    }
    Ok(Outcome::Attached)
}

fn set_state(daemon: &Daemon, vm: &VmRecord, state: ObservedState) -> ApiResult<()> {
    daemon.store().modify_vm(&vm.id, |v| v.state = state)?;
    Ok(())
}

/// `vm` has no live petrel. Returns (marked failed, restarting).
fn vanished(daemon: &Arc<Daemon>, vm: &VmRecord, why: Option<String>) -> ApiResult<(bool, bool)> {
    let should_run = matches!(
        vm.desired_state,
        DesiredState::Running | DesiredState::Paused
    );
    let was_up = matches!(
        vm.state,
        ObservedState::Running | ObservedState::Paused | ObservedState::Stopping
    );
    if vm.state == ObservedState::Starting && should_run {
        // The start was cut short by petreld's restart: the caller still wants it running.
        daemon.store().modify_vm(&vm.id, |v| {
            v.state = ObservedState::Failed;
            v.exit_reason =
                Some(why.unwrap_or_else(|| "start interrupted by a petreld restart".into()));
            v.pid = None;
            v.pid_start = None;
        })?;
        daemon.spawn_restart(&vm.id, Duration::ZERO, false);
        return Ok((false, true));
    }
    if should_run && was_up {
        let reason = why.unwrap_or_else(|| match vm.pid {
            Some(pid) => format!("petrel (pid {pid}) vanished while petreld was not running"),
            None => "petrel vanished while petreld was not running".into(),
        });
        log::warn!("VM {} ({}): {reason}", vm.name, vm.id);
        let vm = daemon.store().modify_vm(&vm.id, |v| {
            v.state = ObservedState::Failed;
            v.exit_reason = Some(reason);
            v.pid = None;
            v.pid_start = None;
        })?;
        let restarting = vm.restart != super::model::RestartPolicy::Never;
        daemon.maybe_restart(vm, true);
        return Ok((true, restarting));
    }
    if !should_run
        && (was_up || matches!(vm.state, ObservedState::Starting | ObservedState::Stopping))
    {
        daemon.store().modify_vm(&vm.id, |v| {
            v.state = ObservedState::Stopped;
            v.pid = None;
            v.pid_start = None;
        })?;
    }
    Ok((false, false))
}

/// Snapshots still `creating` were cut short by petreld's end: their files and records go.
fn drop_unfinished_snapshots(daemon: &Daemon) -> ApiResult<()> {
    let all = daemon.store().list_snapshots(None)?;
    for s in all.into_iter().filter(|s| s.state != "ready") {
        let dir = VmDir::new(&daemon.config.state_dir, &s.vm_id);
        let _ = std::fs::remove_dir_all(super::snapshots::snapshot_dir(&dir, &s.name));
        daemon.store().delete_snapshot(&s.vm_id, &s.name)?;
        log::warn!(
            "reconcile: VM {}: snapshot {} was cut short by petreld's restart; removed",
            s.vm_id,
            s.name
        );
    }
    Ok(())
}

/// Finishes what petreld was doing to claimed `vm` when it ended (`live`: its petrel, if one
/// runs): a VM being received, a migration out, a revert. `None` when there was nothing
/// (the VM is reconciled as usual), else whether its petrel is watched again.
fn finish_operation(
    daemon: &Arc<Daemon>,
    vm: &VmRecord,
    live: Option<ProcessId>,
) -> ApiResult<Option<bool>> {
    if vm.state == ObservedState::Incoming {
        // The source sees the receiving petrel go and keeps the VM.
        let dir = VmDir::new(&daemon.config.state_dir, &vm.id);
        let running = live.is_some_and(|_| {
            let quick = Client::new(dir.socket()).with_timeout(Duration::from_secs(2));
            matches!(
                launcher::vm_state(&quick).ok().flatten().as_deref(),
                Some("Running" | "Paused")
            )
        });
        if let (true, Some(p)) = (running, live) {
            if daemon.attach(&vm.id, p, dir.socket()).is_ok() {
                set_state(daemon, vm, ObservedState::Running)?;
                return Ok(Some(true));
            }
        }
        log::warn!(
            "reconcile: VM {}: its migration here was cut short; forgotten",
            vm.id
        );
        daemon.forget_incoming(&vm.id, live);
        return Ok(Some(false));
    }
    if vm.state == ObservedState::Migrated {
        return Ok(Some(false));
    }
    let Some(op) = daemon.store().operation(&vm.id)? else {
        return Ok(None);
    };
    match op.kind.as_str() {
        "revert" => {
            if let Some(p) = live {
                launcher::kill(p);
            }
            let vm = daemon.finish_revert(vm, std::path::Path::new(&op.arg))?;
            if vm.state == ObservedState::Failed {
                return Ok(Some(false));
            }
            Ok(Some(true))
        }
        "migrate" => {
            let to = std::path::PathBuf::from(&op.arg);
            let dir = VmDir::new(&daemon.config.state_dir, &vm.id);
            // The petrel may still be sending (its API waits meanwhile): it either exits
            // (sent) or answers again (the send failed and it runs on).
            log::info!(
                "reconcile: VM {}: a migration to {} was under way (petrel {})",
                vm.id,
                op.arg,
                if live.is_some() { "alive" } else { "gone" }
            );
            let deadline = std::time::Instant::now() + Duration::from_secs(120);
            let answered = live.filter(|p| loop {
                if !p.alive() {
                    break false;
                }
                let quick = Client::new(dir.socket()).with_timeout(Duration::from_secs(2));
                if quick
                    .get(api::request::Endpoint::VmmPing.path())
                    .is_ok_and(|r| r.status == 200)
                {
                    break true;
                }
                if std::time::Instant::now() > deadline {
                    break true;
                }
                std::thread::sleep(Duration::from_millis(100));
            });
            log::info!(
                "reconcile: VM {}: its petrel {}",
                vm.id,
                if answered.is_some() {
                    "answers: the VM stays here"
                } else {
                    "is gone"
                }
            );
            match answered {
                Some(p) => {
                    daemon.store().end_operation(&vm.id)?;
                    let before = daemon.store().modify_vm(&vm.id, |v| {
                        v.state = ObservedState::Running;
                    })?;
                    reattach(daemon, &before, p, &dir)?;
                    Ok(Some(true))
                }
                None => {
                    daemon.finish_migration(vm, &to, live)?;
                    Ok(Some(false))
                }
            }
        }
        other => {
            log::warn!("reconcile: VM {}: unknown operation {other}", vm.id);
            daemon.store().end_operation(&vm.id)?;
            Ok(None)
        }
    }
}
