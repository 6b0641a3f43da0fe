//! A full Linux boot under `petrel` that drives every virtio device the way a stock guest
//! does: the Debian cloud kernel from the guest kit with `petrel.test=virtio`, whose init
//! (`resources/init`) loads the virtio modules, mounts the kit's ext4 image from virtio-blk,
//! writes, syncs, unmounts and reads back, pings the host over a tap, reads `/dev/hwrng`
//! (virtio-rng), and talks over vsock in both directions (guest → host Unix socket
//! `<socket>_5001`, host → guest port 5000 through `CONNECT 5000`), then powers off.
//! After petrel exits the host reads the files the guest wrote with `debugfs` and checks the
//! file system with `e2fsck -fn`.
//!
//! A hook ([`EXTRA_HOOK`]) then checks what init's virtio step does not: a second disk given
//! `readonly=on` is read-only to the kernel and refuses a write; `fstrim` on the ext4 disk
//! discards (the host sees the image's allocated blocks drop); and 4 MiB go over TCP each way
//! between busybox `nc` in the guest and the test on the host (the tap's address), compared
//! by MD5 on both ends.
//!
//! Skips (prints why on stderr and passes) like the other full boots: without `/dev/kvm`,
//! without the kit, or when guest ring 0 is emulated (PVM hosts); also without
//! `/dev/net/tun` or when a tap cannot be created (needs CAP_NET_ADMIN).

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use petrel_tests::linux_guest::{initramfs_with_hooks, Report, REPORT_HOOK};
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

/// TCP ports: the guest sends to the host's `TCP_TO_HOST`, the host to the guest's
/// `TCP_TO_GUEST`.
const TCP_TO_HOST: u16 = 5100;
const TCP_TO_GUEST: u16 = 5101;
/// Bytes sent each way.
const TCP_BYTES: usize = 4 << 20;

/// The checks after init's virtio step (sourced by init: `$host` is the host's address).
const EXTRA_HOOK: &str = r#"
x() { echo "PETREL-X: $*"; }
ro=""
for b in /sys/block/vd*; do [ "$(cat "$b/size")" = 2048 ] && ro=/dev/${b##*/}; done
if [ -z "$ro" ]; then
    x "ro none"
else
    x "ro $ro getro=$(blockdev --getro "$ro" 2>&1) sysfs=$(cat /sys/block/${ro#/dev/}/ro)"
    if dd if=/dev/zero of="$ro" bs=4096 count=1 conv=fsync 2>/dev/null; then
        x "ro write accepted"
    else
        x "ro write refused"
    fi
fi
if mount -t ext4 /dev/vda /mnt/root; then
    head -c 8388608 /dev/urandom >/mnt/root/trim.bin && sync && rm /mnt/root/trim.bin && sync
    x "discard_max=$(cat /sys/block/vda/queue/discard_max_bytes) fstrim=$(fstrim -v /mnt/root 2>&1)"
    umount /mnt/root
else
    x "fstrim: cannot mount /dev/vda"
fi
head -c 4194304 /dev/urandom >/tmp/out.bin
x "tcp out md5=$(md5sum /tmp/out.bin | cut -d' ' -f1)"
if timeout 60 nc "$host" 5100 </tmp/out.bin >/dev/null; then x "tcp sent"; else x "tcp send failed"; fi
timeout 60 nc -l -p 5101 >/tmp/in.bin </dev/null &
x "tcp listening"
wait $!
x "tcp in md5=$(md5sum /tmp/in.bin | cut -d' ' -f1) bytes=$(wc -c </tmp/in.bin)"
"#;

/// The host end of the TCP transfers: receives the guest's bytes on `host_ip:TCP_TO_HOST`,
/// then sends `TCP_BYTES` to `guest_ip:TCP_TO_GUEST` (retrying while the guest's `nc -l`
/// starts). Returns (MD5 received, MD5 sent).
fn tcp_host(
    listener: TcpListener,
    guest_ip: String,
    stop: Arc<AtomicBool>,
) -> Result<(String, String), String> {
    listener
        .set_nonblocking(true)
        .map_err(|e| format!("set_nonblocking: {e}"))?;
    let mut conn = loop {
        match listener.accept() {
            Ok((c, _)) => break c,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if stop.load(Ordering::SeqCst) {
                    return Err(format!("the guest never connected to port {TCP_TO_HOST}"));
                }
                thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(format!("accept: {e}")),
        }
    };
    conn.set_nonblocking(false)
        .and_then(|()| conn.set_read_timeout(Some(Duration::from_secs(60))))
        .map_err(|e| format!("socket setup: {e}"))?;
    let mut got = Vec::new();
    conn.read_to_end(&mut got)
        .map_err(|e| format!("reading the guest's bytes: {e} (after {} bytes)", got.len()))?;
    drop(conn);
    let received = md5_of(&got);

    // Deterministic bytes that do not compress to nothing.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let data: Vec<u8> = (0..TCP_BYTES)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let addr = format!("{guest_ip}:{TCP_TO_GUEST}");
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut out = loop {
        match TcpStream::connect(&addr) {
            Ok(s) => break s,
            Err(e) if Instant::now() > deadline || stop.load(Ordering::SeqCst) => {
                return Err(format!("connect {addr}: {e}"))
            }
            Err(_) => thread::sleep(Duration::from_millis(100)),
        }
    };
    out.set_write_timeout(Some(Duration::from_secs(60)))
        .map_err(|e| format!("socket setup: {e}"))?;
    out.write_all(&data)
        .and_then(|()| out.shutdown(Shutdown::Write))
        .map_err(|e| format!("sending to {addr}: {e}"))?;
    // Wait for the guest to close its end (all bytes read).
    let mut rest = Vec::new();
    let _ = out.read_to_end(&mut rest);
    Ok((received, md5_of(&data)))
}

/// MD5 of `data` in hex (through `md5sum`, as the guest computes it).
fn md5_of(data: &[u8]) -> String {
    let mut child = Command::new("md5sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run md5sum: {e}"));
    let mut stdin = child.stdin.take().unwrap();
    let bytes = data.to_vec();
    let writer = thread::spawn(move || stdin.write_all(&bytes));
    let out = child.wait_with_output().unwrap();
    let _ = writer.join();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// The problems in the `PETREL-X:` lines and the host's view of the TCP transfers.
fn extra_problems(
    out: &[&str],
    tcp: &Result<(String, String), String>,
    trimmed: (u64, u64),
) -> Vec<String> {
    let x: Vec<&str> = out
        .iter()
        .filter_map(|l| l.strip_prefix("PETREL-X: "))
        .collect();
    let has = |p: &str| x.iter().any(|l| l.starts_with(p));
    let mut problems = Vec::new();
    match x.iter().find(|l| l.starts_with("ro ")) {
        Some(l) if l.ends_with("getro=1 sysfs=1") => {}
        other => problems.push(format!("read-only disk: {other:?}, want getro=1 sysfs=1")),
    }
    if !has("ro write refused") {
        problems.push("the read-only disk did not refuse a write".to_string());
    }
    match x.iter().find(|l| l.starts_with("discard_max=")) {
        Some(l) if !l.starts_with("discard_max=0 ") && l.contains("bytes trimmed") => {}
        other => problems.push(format!("fstrim: {other:?}")),
    }
    let (before, after) = trimmed;
    if after + (8 << 20) > before {
        problems.push(format!(
            "the image's allocated bytes went {before} → {after}: fstrim discarded less than 8 MiB"
        ));
    }
    let md5 = |p: &str| {
        x.iter()
            .find_map(|l| l.strip_prefix(p))
            .map(|v| v.split_whitespace().next().unwrap_or("").to_string())
    };
    match tcp {
        Ok((received, sent)) => {
            if md5("tcp out md5=").as_deref() != Some(received.as_str()) {
                problems.push(format!(
                    "guest → host: guest sent md5 {:?}, host received {received}",
                    md5("tcp out md5=")
                ));
            }
            let want = format!("{sent} bytes={TCP_BYTES}");
            let got = x.iter().find_map(|l| l.strip_prefix("tcp in md5="));
            if got != Some(want.as_str()) {
                problems.push(format!("host → guest: guest got {got:?}, host sent {want}"));
            }
        }
        Err(e) => problems.push(format!("TCP host side: {e}")),
    }
    problems
}

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
    virtio_scenario(TEST, Transport::Mmio);
}

/// The same scenario with every device on virtio-pci (`--transport pci`): found by the
/// kernel's PCI scan (ECAM from the MCFG, the root bridge from the DSDT), BARs as petrel
/// placed them, MSI-X interrupts.
#[test]
fn linux_virtio_devices_on_pci() {
    virtio_scenario("linux_virtio_devices_on_pci", Transport::Pci);
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Transport {
    Mmio,
    Pci,
}

fn virtio_scenario(test: &str, transport: Transport) {
    let pci = transport == Transport::Pci;
    let Some(kit) = linux_kit_or_skip(test) else {
        return;
    };
    if !ring0_native(test) {
        return;
    }
    if !Path::new("/dev/net/tun").exists() {
        petrel_tests::skip("/dev/net/tun is missing (no tap devices)");
        return;
    }

    let pid = std::process::id();
    let tag = if pci { "p" } else { "v" };
    let dir = ScratchDir(std::env::temp_dir().join(format!("petrel-l{tag}-{pid}")));
    fs::create_dir_all(&dir.0).unwrap();
    let disk = dir.0.join("root.ext4");
    // Written out in full (not a sparse copy), so that fstrim's discards show as freed blocks.
    fs::write(&disk, fs::read(&kit.rootfs).unwrap()).unwrap();
    let ro_disk = dir.0.join("ro.img");
    let ro_content = vec![0xa5u8; 1 << 20];
    fs::write(&ro_disk, &ro_content).unwrap();
    let initramfs = initramfs_with_hooks(
        kit,
        &dir.0,
        &[("50-report.sh", REPORT_HOOK), ("60-extra.sh", EXTRA_HOOK)],
    )
    .unwrap();
    let sock = dir.0.join("v.sock");

    // A /24 per test process, so that parallel runs do not share a route.
    let net = if pci { 128 } else { 64 };
    let subnet = format!("10.{}.{}", net + (pid >> 8) % 64, pid % 256);
    let tap_name = format!("pt{tag}{pid}");
    let _tap = match Tap::create(&tap_name, &format!("{subnet}.1/24")) {
        Ok(t) => t,
        Err(e) => {
            petrel_tests::skip(format!("cannot create tap {tap_name}: {e}"));
            return;
        }
    };

    let stop = Arc::new(AtomicBool::new(false));
    let tcp_listener = TcpListener::bind(format!("{subnet}.1:{TCP_TO_HOST}"))
        .unwrap_or_else(|e| panic!("{test}: cannot listen on {subnet}.1:{TCP_TO_HOST}: {e}"));
    let tcp = {
        let (guest_ip, stop) = (format!("{subnet}.2"), stop.clone());
        thread::spawn(move || tcp_host(tcp_listener, guest_ip, stop))
    };
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
    let cmdline = petrel_tests::linux_guest::kernel_cmdline(&format!(
        "console=ttyS0 panic=-1 petrel.test=virtio petrel.ip={subnet}.2/24 \
         petrel.host={subnet}.1 petrel.token={token} petrel.vsock_port={HOST_PORT} \
         petrel.vsock_listen={GUEST_PORT}"
    ));
    let disk_arg = format!("path={}", disk.display());
    let ro_arg = format!("path={},readonly=on", ro_disk.display());
    let allocated = |p: &Path| fs::metadata(p).map_or(0, |m| m.blocks() * 512);
    let allocated_before = allocated(&disk);
    let net_arg = format!("tap={tap_name}");
    let vsock_arg = format!("cid={GUEST_CID},socket={}", sock.display());
    let mut args = vec![
        "--kernel",
        kit.vmlinux.to_str().unwrap(),
        "--initramfs",
        initramfs.to_str().unwrap(),
        "--cpus",
        "2",
        "--memory",
        "512M",
        "--disk",
        &disk_arg,
        "--disk",
        &ro_arg,
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
    if pci {
        args.extend(["--transport", "pci"]);
    }
    let run: Run = run_petrel(&args, TIMEOUT);
    stop.store(true, Ordering::SeqCst);
    let vsock_result = host
        .join()
        .unwrap_or_else(|_| Err("the vsock host thread panicked".to_string()));

    let tcp_result = tcp
        .join()
        .unwrap_or_else(|_| Err("the TCP host thread panicked".to_string()));
    let allocated_after = allocated(&disk);

    let out = lines(&run.stdout);
    let mut problems: Vec<String> = Vec::new();
    problems.extend(extra_problems(
        &out,
        &tcp_result,
        (allocated_before, allocated_after),
    ));
    if fs::read(&ro_disk).ok().as_ref() != Some(&ro_content) {
        problems.push("the read-only disk's image changed".to_string());
    }
    // All five devices found through the DSDT (two disks, net, rng, vsock), or on PCI with
    // MSI-X interrupts.
    let report = Report::parse(&run.stdout);
    let (want_acpi, want_pci) = if pci { (0, 5) } else { (5, 0) };
    if report.get("cmdline_virtio") != Ok("no")
        || report.int("virtio_acpi") != Ok(want_acpi)
        || report.int("pci_virtio") != Ok(want_pci)
    {
        problems.push(format!(
            "virtio discovery: cmdline_virtio {:?}, LNRO0005 devices {:?}, virtio PCI functions \
             {:?} (want no, {want_acpi}, {want_pci})",
            report.get("cmdline_virtio"),
            report.int("virtio_acpi"),
            report.int("pci_virtio"),
        ));
    }
    if pci && !report.int("pci_msix").is_ok_and(|n| n >= 5) {
        problems.push(format!(
            "MSI-X interrupts in /proc/interrupts: {:?} (want one or more per device)",
            report.int("pci_msix")
        ));
    }
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
        Ok(what) => eprintln!("{test}: vsock host side: {what}"),
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
            "{test}: status {:?}, timed_out {}, elapsed {:.1?}\n--- last 60 lines of stdout ---\n{}\n\
             --- stderr ---\n{}",
            run.status,
            run.timed_out,
            run.elapsed,
            tail(&out, 60),
            run.stderr
        );
    }
    assert!(problems.is_empty(), "{test}: {}", problems.join("; "));
    for l in out.iter().filter(|l| l.starts_with("PETREL-X: ")) {
        eprintln!("{test}: {l}");
    }
    eprintln!("{test}: image allocation {allocated_before} → {allocated_after} bytes after fstrim");
    eprintln!("{test}: all virtio steps passed in {:.1?}", run.elapsed);
}
