//! A full Linux boot under `petrel` that drives every virtio device the way a stock guest
//! does: the Debian cloud kernel from the guest kit with `petrel.test=virtio`, whose init
//! (`resources/init`) loads the virtio modules, mounts the kit's ext4 image from virtio-blk,
//! writes, syncs, unmounts and reads back, pings the host over a tap, reads `/dev/hwrng`
//! (virtio-rng), and talks over vsock in both directions (guest → host Unix socket
//! `<socket>_5001`, host → guest port 5000 through `CONNECT 5000`), then powers off.
//! After petrel exits the host reads the files the guest wrote with `debugfs` and checks the
//! file system with `e2fsck -fn`.
//!
//! Skips (prints why on stderr and passes) like the other full boots: without `/dev/kvm`,
//! without the kit, or when guest ring 0 is emulated (PVM hosts); also without
//! `/dev/net/tun` or when a tap cannot be created (needs CAP_NET_ADMIN).

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use petrel_tests::{linux_kit_or_skip, ring0_native, run_petrel, Run};

const TEST: &str = "linux_virtio_devices";
const TIMEOUT: Duration = Duration::from_secs(180);
/// Host vsock port the guest connects to, and guest port the host connects to.
const HOST_PORT: u32 = 5001;
const GUEST_PORT: u32 = 5000;
const GUEST_CID: u32 = 3;
const GUEST_HELLO: &str = "hello from guest";
const HOST_REPLY: &str = "hello from host";
const HOST_PING: &str = "ping from host";

/// A tap device with the host end of the guest's subnet; deleted on drop.
struct Tap {
    name: String,
}

/// Runs `ip ARGS`; the error names the command and its stderr.
fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Tap {
    /// Creates tap `name` with `host_cidr` and brings it up.
    fn create(name: &str, host_cidr: &str) -> Result<Tap, String> {
        ip(&["tuntap", "add", "dev", name, "mode", "tap"])?;
        let tap = Tap {
            name: name.to_string(),
        };
        ip(&["addr", "add", host_cidr, "dev", name])?;
        ip(&["link", "set", name, "up"])?;
        Ok(tap)
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        if let Err(e) = ip(&["link", "del", &self.name]) {
            eprintln!("{TEST}: cannot delete tap {}: {e}", self.name);
        }
    }
}

/// A scratch directory (short path: it holds Unix sockets), removed on drop.
struct ScratchDir(PathBuf);

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn read_line(r: &mut impl BufRead) -> Result<String, String> {
    let mut line = String::new();
    match r.read_line(&mut line) {
        Ok(0) => Err("end of stream".to_string()),
        Ok(_) => Ok(line.trim_end_matches(['\n', '\r']).to_string()),
        Err(e) => Err(format!("read: {e}")),
    }
}

/// The host side of the vsock exchange: answers the guest's connection to `<sock>_5001`,
/// then connects to the guest's listener through `CONNECT 5000`. Gives up when `stop` is set
/// (petrel exited) before the guest connected. Returns what happened, for the report.
fn vsock_host(sock: PathBuf, stop: Arc<AtomicBool>) -> Result<String, String> {
    let listen_path = PathBuf::from(format!("{}_{HOST_PORT}", sock.display()));
    let listener = UnixListener::bind(&listen_path)
        .map_err(|e| format!("bind {}: {e}", listen_path.display()))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| format!("set_nonblocking: {e}"))?;
    let stream = loop {
        match listener.accept() {
            Ok((s, _)) => break s,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if stop.load(Ordering::SeqCst) {
                    return Err(format!(
                        "the guest never connected to {}",
                        listen_path.display()
                    ));
                }
                thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(format!("accept: {e}")),
        }
    };
    let io_timeout = Some(Duration::from_secs(20));
    let setup = |s: &UnixStream| -> Result<(), String> {
        s.set_nonblocking(false)
            .and_then(|()| s.set_read_timeout(io_timeout))
            .and_then(|()| s.set_write_timeout(io_timeout))
            .map_err(|e| format!("socket setup: {e}"))
    };
    setup(&stream)?;
    let mut reader = BufReader::new(stream.try_clone().map_err(|e| e.to_string())?);
    let got = read_line(&mut reader).map_err(|e| format!("guest line on port {HOST_PORT}: {e}"))?;
    if got != GUEST_HELLO {
        return Err(format!(
            "guest sent {got:?} on port {HOST_PORT}, want {GUEST_HELLO:?}"
        ));
    }
    (&stream)
        .write_all(format!("{HOST_REPLY}\n").as_bytes())
        .map_err(|e| format!("reply on port {HOST_PORT}: {e}"))?;

    // Host-initiated: CONNECT to the guest's listener (started before its connection to us).
    let conn =
        UnixStream::connect(&sock).map_err(|e| format!("connect {}: {e}", sock.display()))?;
    setup(&conn)?;
    (&conn)
        .write_all(format!("CONNECT {GUEST_PORT}\n").as_bytes())
        .map_err(|e| format!("CONNECT: {e}"))?;
    let mut reader = BufReader::new(conn.try_clone().map_err(|e| e.to_string())?);
    let ack = read_line(&mut reader).map_err(|e| format!("CONNECT {GUEST_PORT} answer: {e}"))?;
    if !ack.starts_with("OK ") {
        return Err(format!(
            "CONNECT {GUEST_PORT} answered {ack:?}, want `OK <port>`"
        ));
    }
    (&conn)
        .write_all(format!("{HOST_PING}\n").as_bytes())
        .map_err(|e| format!("write to guest port {GUEST_PORT}: {e}"))?;
    let reply = read_line(&mut reader).map_err(|e| format!("guest reply: {e}"))?;
    let want = format!("reply: {HOST_PING}");
    if reply != want {
        return Err(format!(
            "guest port {GUEST_PORT} replied {reply:?}, want {want:?}"
        ));
    }
    Ok(format!(
        "guest said {got:?}; CONNECT {GUEST_PORT} → {ack:?}, reply {reply:?}"
    ))
}

/// `debugfs -R CMD image` stdout (debugfs reports errors on stderr, status 0).
fn debugfs(image: &Path, cmd: &str) -> String {
    let out = Command::new("debugfs")
        .args(["-R", cmd])
        .arg(image)
        .output()
        .unwrap_or_else(|e| panic!("cannot run debugfs (e2fsprogs): {e}"));
    assert!(out.status.success(), "debugfs -R '{cmd}' failed: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn md5sum(path: &Path) -> String {
    let out = Command::new("md5sum").arg(path).output().unwrap();
    assert!(out.status.success(), "md5sum {}: {out:?}", path.display());
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// Serial lines without the `\r` of the serial line discipline.
fn lines(out: &str) -> Vec<&str> {
    out.lines().map(|l| l.trim_end_matches('\r')).collect()
}

/// What the guest must print, in order of the steps (checked as whole lines or prefixes).
fn missing_lines(out: &[&str]) -> Vec<String> {
    let want_exact = [
        "PETREL-VIRTIO: root mounted",
        "PETREL-VIRTIO: disk read back ok",
        "PETREL-VIRTIO: ping ok",
        &format!("PETREL-VIRTIO: vsock ok {HOST_REPLY}"),
        &format!("PETREL-VIRTIO: vsock listen ok {HOST_PING}"),
        "PETREL-VIRTIO-OK",
        "PETREL-INIT-OK",
    ]
    .map(|s| s.to_string());
    let mut missing: Vec<String> = want_exact
        .iter()
        .filter(|w| !out.iter().any(|l| l.trim_end() == w.as_str()))
        .map(|w| format!("`{w}`"))
        .collect();
    let hwrng_ok = out.iter().any(|l| {
        l.strip_prefix("PETREL-VIRTIO: hwrng ok ")
            .is_some_and(|hex| hex.trim_end().len() == 32)
    });
    if !hwrng_ok {
        missing.push("`PETREL-VIRTIO: hwrng ok <16 bytes in hex>`".to_string());
    }
    missing
}

fn tail(out: &[&str], n: usize) -> String {
    out[out.len().saturating_sub(n)..].join("\n")
}

#[test]
fn linux_virtio_devices() {
    let Some(kit) = linux_kit_or_skip(TEST) else {
        return;
    };
    if !ring0_native(TEST) {
        return;
    }
    if !Path::new("/dev/net/tun").exists() {
        petrel_tests::skip("/dev/net/tun is missing (no tap devices)");
        return;
    }

    let pid = std::process::id();
    let dir = ScratchDir(std::env::temp_dir().join(format!("petrel-lv-{pid}")));
    fs::create_dir_all(&dir.0).unwrap();
    let disk = dir.0.join("root.ext4");
    fs::copy(&kit.rootfs, &disk).unwrap();
    let sock = dir.0.join("v.sock");

    // A /24 per test process, so that parallel runs do not share a route.
    let subnet = format!("10.{}.{}", 64 + (pid >> 8) % 64, pid % 256);
    let tap_name = format!("ptv{pid}");
    let _tap = match Tap::create(&tap_name, &format!("{subnet}.1/24")) {
        Ok(t) => t,
        Err(e) => {
            petrel_tests::skip(format!("cannot create tap {tap_name}: {e}"));
            return;
        }
    };

    let stop = Arc::new(AtomicBool::new(false));
    let host = {
        let (sock, stop) = (sock.clone(), stop.clone());
        thread::spawn(move || vsock_host(sock, stop))
    };
    // The listener must exist before the guest connects; bind happens at thread start.
    let bound = PathBuf::from(format!("{}_{HOST_PORT}", sock.display()));
    let deadline = Instant::now() + Duration::from_secs(5);
    while !bound.exists() && !host.is_finished() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(5));
    }

    let token = format!(
        "{pid}-{}",
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    );
    let cmdline = format!(
        "console=ttyS0 panic=-1 petrel.test=virtio petrel.ip={subnet}.2/24 \
         petrel.host={subnet}.1 petrel.token={token} petrel.vsock_port={HOST_PORT} \
         petrel.vsock_listen={GUEST_PORT}"
    );
    let disk_arg = format!("path={}", disk.display());
    let net_arg = format!("tap={tap_name}");
    let vsock_arg = format!("cid={GUEST_CID},socket={}", sock.display());
    let args = [
        "--kernel",
        kit.vmlinux.to_str().unwrap(),
        "--initramfs",
        kit.initramfs.to_str().unwrap(),
        "--cpus",
        "2",
        "--memory",
        "512M",
        "--disk",
        &disk_arg,
        "--net",
        &net_arg,
        "--rng",
        "--vsock",
        &vsock_arg,
        "--cmdline",
        &cmdline,
        "--serial",
        "stdout",
        "--no-reboot",
    ];
    let run: Run = run_petrel(&args, TIMEOUT);
    stop.store(true, Ordering::SeqCst);
    let vsock_result = host
        .join()
        .unwrap_or_else(|_| Err("the vsock host thread panicked".to_string()));

    let out = lines(&run.stdout);
    let mut problems: Vec<String> = Vec::new();
    let failures: Vec<&str> = out
        .iter()
        .copied()
        .filter(|l| l.starts_with("PETREL-VIRTIO") && l.contains("failed"))
        .collect();
    if !failures.is_empty() {
        problems.push(format!("guest reported: {failures:?}"));
    }
    let missing = missing_lines(&out);
    if !missing.is_empty() {
        problems.push(format!("missing {}", missing.join(", ")));
    }
    match &vsock_result {
        Ok(what) => eprintln!("{TEST}: vsock host side: {what}"),
        Err(e) => problems.push(format!("vsock host side: {e}")),
    }
    if run.timed_out {
        problems.push(format!("petrel did not exit within {TIMEOUT:?}"));
    } else if !run.success() {
        problems.push(format!("petrel exit status {:?}, want 0", run.status));
    }

    // What the guest wrote, read on the host after petrel exited.
    let text = debugfs(&disk, "cat /petrel-virtio.txt");
    let want_text = format!("PETREL-VIRTIO-DISK {token}\n");
    if text != want_text {
        problems.push(format!(
            "/petrel-virtio.txt in the image holds {text:?}, want {want_text:?}"
        ));
    }
    let guest_md5 = out.iter().find_map(|l| {
        l.strip_prefix("PETREL-VIRTIO: disk written md5=")
            .map(|s| s.trim().to_string())
    });
    let dumped = dir.0.join("petrel-virtio.bin");
    debugfs(
        &disk,
        &format!("dump /petrel-virtio.bin {}", dumped.display()),
    );
    let host_md5 = if dumped.is_file() {
        md5sum(&dumped)
    } else {
        "<not in the image>".to_string()
    };
    if guest_md5.as_deref() != Some(host_md5.as_str()) {
        problems.push(format!(
            "/petrel-virtio.bin md5 on the host {host_md5}, guest wrote {guest_md5:?}"
        ));
    }
    let fsck = Command::new("e2fsck")
        .args(["-fn"])
        .arg(&disk)
        .output()
        .unwrap_or_else(|e| panic!("cannot run e2fsck: {e}"));
    if !fsck.status.success() {
        problems.push(format!(
            "e2fsck -fn: {:?}: {}",
            fsck.status,
            String::from_utf8_lossy(&fsck.stdout)
        ));
    }

    if !problems.is_empty() {
        eprintln!(
            "{TEST}: status {:?}, timed_out {}, elapsed {:.1?}\n--- last 60 lines of stdout ---\n{}\n\
             --- stderr ---\n{}",
            run.status,
            run.timed_out,
            run.elapsed,
            tail(&out, 60),
            run.stderr
        );
    }
    assert!(problems.is_empty(), "{TEST}: {}", problems.join("; "));
    eprintln!("{TEST}: all virtio steps passed in {:.1?}", run.elapsed);
}
