//! Snapshot and restore of a real Linux guest: a shell loop prints `PETREL-COUNT <n>` and
//! appends `n` to a file in the guest's RAM-backed root every 0.2 s; the VM is paused,
//! snapshotted, its petrel killed, and a new petrel restores and resumes it. The count goes on
//! from where it was (the next value or the one after: a line may be cut by the pause), the
//! file holds every value from 1 without a gap or a repeat, written before and after the
//! snapshot, and the guest answers a command on its console.
//!
//! Skips visibly like the other full boots (no `/dev/kvm`, no kit, guest ring 0 emulated).

use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use petrel_http::{Client, Method};
use petrel_tests::linux_guest::{initramfs_with_hooks, serial_tail, Scratch};
use petrel_tests::{linux_kit_or_skip, ring0_native, Petrel};
use serde_json::{json, Value};

const TEST: &str = "linux_snapshot_restore";
/// Longest wait for one guest step (a boot under nested TCG on a busy machine included).
const STEP: Duration = Duration::from_secs(150);

/// The guest side: a counter on the console and in a file, and a command loop.
const COUNT_HOOK: &str = r#"
stty -echo 2>/dev/null
(n=0; while :; do n=$((n+1)); echo "$n" >>/tmp/counter; echo "PETREL-COUNT $n"; sleep 0.2; done) &
echo "PETREL-AGENT: ready"
while read -r cmd; do
    case "$cmd" in
    file)
        echo "PETREL-FILE $(awk 'NR == 1 {f = $1} NR != $1 {bad++} {l = $1} END {print NR, f, l, bad + 0}' /tmp/counter)"
        ;;
    *) echo "PETREL-AGENT: unknown command" ;;
    esac
done
"#;

/// The values of the whole `PETREL-COUNT` lines in `out`.
fn counts(out: &str) -> Vec<u64> {
    out.split_inclusive('\n')
        .filter(|l| l.ends_with('\n'))
        .filter_map(|l| l.trim_end().strip_prefix("PETREL-COUNT "))
        .filter_map(|n| n.trim().parse().ok())
        .collect()
}

/// The fields of the last whole `PETREL-FILE` line: lines, first, last, out of place (one
/// pass over the file: the loop appends meanwhile).
fn file_report(out: &str) -> Option<[u64; 4]> {
    let line = out
        .split_inclusive('\n')
        .filter(|l| l.ends_with('\n'))
        .filter_map(|l| l.trim_end().strip_prefix("PETREL-FILE "))
        .next_back()?;
    let v: Vec<u64> = line
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    v.try_into().ok()
}

fn fail(p: &Petrel, what: &str) -> ! {
    panic!(
        "{TEST}: {what}\n--- last 60 serial lines ---\n{}\n--- stderr ---\n{}",
        serial_tail(&p.stdout(), 60),
        p.stderr()
    );
}

/// petrel with an API socket at `socket` and its stdin piped to the guest's console.
fn start(socket: &Path) -> (Petrel, Client) {
    let petrel = Petrel::spawn_with_stdin(&["--api-socket", socket.to_str().unwrap()]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while UnixStream::connect(socket).is_err() {
        if Instant::now() > deadline {
            fail(&petrel, "the API socket never accepted");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let client = Client::new(socket).with_timeout(Duration::from_secs(120));
    (petrel, client)
}

fn put(p: &Petrel, c: &Client, op: &str, body: Option<&Value>) {
    let bytes = body.map(|b| serde_json::to_vec(b).unwrap());
    match c.request(Method::Put, &format!("/api/v1/{op}"), bytes.as_deref()) {
        Ok(r) if r.is_success() => {}
        // petrel's API gives up waiting after 60 s, the operation goes on: under nested
        // emulation a debug build's snapshot or restore can take longer. The next request
        // is answered once it is done.
        Ok(r) if r.status == 504 => {
            eprintln!("{TEST}: {op} still running after 60 s; waiting for it");
            let deadline = Instant::now() + Duration::from_secs(900);
            loop {
                match c.request(Method::Get, "/api/v1/vm.info", None) {
                    Ok(r) if r.status == 200 => break,
                    _ if Instant::now() > deadline => fail(p, &format!("{op} never ended")),
                    _ => std::thread::sleep(Duration::from_secs(1)),
                }
            }
        }
        Ok(r) => fail(p, &format!("PUT {op}: {} {}", r.status, r.error_message())),
        Err(e) => fail(p, &format!("PUT {op}: {e:?}")),
    }
}

#[test]
fn linux_snapshot_restore() {
    let Some(kit) = linux_kit_or_skip(TEST) else {
        return;
    };
    if !ring0_native(TEST) {
        return;
    }
    let dir = Scratch::new(TEST);
    let initramfs = initramfs_with_hooks(kit, &dir.0, &[("40-count.sh", COUNT_HOOK)])
        .unwrap_or_else(|e| panic!("{TEST}: cannot write the initramfs: {e}"));
    let socket = dir.join("src.sock");
    let (mut src, client) = start(&socket);
    let t0 = Instant::now();
    let config = json!({
        "payload": {
            "kernel": kit.vmlinux,
            "initramfs": initramfs,
            "cmdline": petrel_tests::linux_guest::kernel_cmdline("console=ttyS0 panic=-1"),
        },
        "cpus": {"boot_vcpus": 2},
        "memory": {"size": 256u64 << 20},
        "serial": {"mode": "Tty"},
    });
    put(&src, &client, "vm.create", Some(&config));
    put(&src, &client, "vm.boot", None);
    if !src.wait_for_stdout(STEP, |o| counts(o).len() >= 5) {
        fail(&src, "the guest never counted to 5");
    }
    eprintln!("{TEST}: booted and counting in {:.1?}", t0.elapsed());

    put(&src, &client, "vm.pause", None);
    std::thread::sleep(Duration::from_millis(300));
    let before = *counts(&src.stdout()).last().unwrap();
    let snap = dir.join("snap");
    let t = Instant::now();
    put(
        &src,
        &client,
        "vm.snapshot",
        Some(&json!({"destination_url": format!("file://{}", snap.display())})),
    );
    eprintln!("{TEST}: snapshot at count {before} in {:.1?}", t.elapsed());
    drop(client);
    drop(src);

    let socket = dir.join("dst.sock");
    let (mut dst, client) = start(&socket);
    let t = Instant::now();
    put(
        &dst,
        &client,
        "vm.restore",
        Some(&json!({"source_url": format!("file://{}", snap.display())})),
    );
    put(&dst, &client, "vm.resume", None);
    if !dst.wait_for_stdout(Duration::from_secs(60), |o| counts(o).len() >= 3) {
        fail(&dst, "the restored guest does not count");
    }
    eprintln!("{TEST}: restored and counting again in {:.1?}", t.elapsed());
    let after = counts(&dst.stdout());
    if !(after[0] == before + 1 || after[0] == before + 2) {
        fail(
            &dst,
            &format!(
                "the count was {before} at the snapshot, the restored guest went on at {}",
                after[0]
            ),
        );
    }
    if !after.windows(2).all(|w| w[1] == w[0] + 1) {
        fail(
            &dst,
            &format!("the count skips after the restore: {after:?}"),
        );
    }
    if let Err(e) = dst.write_stdin(b"file\n") {
        fail(&dst, &format!("cannot write to the guest console: {e}"));
    }
    if !dst.wait_for_stdout(Duration::from_secs(30), |o| file_report(o).is_some()) {
        fail(&dst, "no answer to `file`");
    }
    let [lines, first, last, misplaced] = file_report(&dst.stdout()).unwrap();
    if first != 1 || misplaced != 0 || lines != last || last <= before {
        fail(
            &dst,
            &format!(
                "/tmp/counter: {lines} lines, first {first}, last {last}, {misplaced} out of \
                 place (count {before} at the snapshot)"
            ),
        );
    }
    eprintln!("{TEST}: the file holds 1..{last} in order, written before and after the snapshot");
    put(&dst, &client, "vm.shutdown", None);
}
