//! The supervisor thread: `poll(2)` over the pidfd of every watched petrel (a death is noticed
//! at once, whether or not petrel is petreld's child) and, every poll interval, `vm.info` of
//! each running VM (a guest that powered itself off). Events for a VM that has an operation
//! in progress wait until it ends.

use std::collections::HashMap;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use petrel_http::Client;

use super::model::ObservedState;
use super::process::{self, ProcessId};
use super::{launcher, Daemon};

/// Starts the supervisor thread (it runs for the life of the process).
pub fn spawn(daemon: Arc<Daemon>) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("supervisor".into())
        .spawn(move || run(&daemon))
        .map(drop)
}

fn run(daemon: &Arc<Daemon>) {
    let interval = Duration::from_millis(daemon.config.poll_interval_ms);
    let mut next_tick = Instant::now() + interval;
    // Exits seen, waiting for their VM to be free: id → (process, how it ended).
    let mut pending: HashMap<String, (ProcessId, Option<String>)> = HashMap::new();
    loop {
        let watched = daemon.runtimes();
        let mut pfds = vec![libc::pollfd {
            fd: daemon.wake_rx.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        pfds.extend(watched.iter().map(|(_, rt)| libc::pollfd {
            fd: rt.pidfd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }));
        let wait = if pending.is_empty() {
            next_tick.saturating_duration_since(Instant::now())
        } else {
            Duration::from_millis(50).min(next_tick.saturating_duration_since(Instant::now()))
        };
        // SAFETY: `pfds` is a live array of `pfds.len()` pollfds; the fds stay open while
        // `watched` holds their Arcs.
        let rc = unsafe {
            libc::poll(
                pfds.as_mut_ptr(),
                pfds.len() as libc::nfds_t,
                wait.as_millis().min(i32::MAX as u128) as i32,
            )
        };
        if rc < 0 && std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            log::error!("supervisor: poll: {}", std::io::Error::last_os_error());
            std::thread::sleep(Duration::from_millis(100));
        }
        if pfds[0].revents != 0 {
            let mut buf = [0u8; 256];
            while matches!((&daemon.wake_rx).read(&mut buf), Ok(n) if n > 0) {}
        }
        for ((id, rt), pfd) in watched.iter().zip(&pfds[1..]) {
            if pfd.revents != 0 {
                // Reap now (if it is our child) so that the status is not lost.
                let how = process::reap(rt.process.pid);
                pending.insert(id.clone(), (rt.process, how));
            }
        }
        pending.retain(|id, (proc, how)| {
            let Some(claim) = daemon.try_claim(id) else {
                return true;
            };
            let restart = daemon.handle_exit(id, *proc, how.take());
            drop(claim);
            if let Some(vm) = restart {
                daemon.maybe_restart(vm, true);
            }
            false
        });
        if Instant::now() >= next_tick {
            poll_states(daemon, &pending);
            next_tick = Instant::now() + interval;
        }
    }
}

/// Asks each running VM's petrel for its state; a guest that powered off is stopped (and
/// restarted with policy `always`), one that crashed is failed (and restarted with
/// `on-failure` or `always`).
fn poll_states(daemon: &Arc<Daemon>, pending: &HashMap<String, (ProcessId, Option<String>)>) {
    for (id, rt) in daemon.runtimes() {
        if pending.contains_key(&id) {
            continue;
        }
        let Some(claim) = daemon.try_claim(&id) else {
            continue;
        };
        let running = daemon
            .store()
            .get_vm(&id)
            .ok()
            .flatten()
            .is_some_and(|vm| vm.state == ObservedState::Running);
        if !running {
            continue;
        }
        let client = Client::new(&rt.socket).with_timeout(Duration::from_secs(2));
        let restart = match launcher::vm_state(&client) {
            Ok(Some(state)) if state == "Shutdown" => daemon.handle_guest_stopped(&id),
            _ => None,
        };
        drop(claim);
        if let Some((vm, failed)) = restart {
            daemon.maybe_restart(vm, failed);
        }
    }
}
