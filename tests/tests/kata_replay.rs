//! Kata Containers' Cloud Hypervisor driver (the Go `clh` driver; runtime-rs calls the same
//! API) replayed against petrel booting the test guest, call for call as recorded from its
//! source (issue 13): launch with `--api-socket` and `-v`, poll `vmm.ping` every 10 ms,
//! `vm.create` with the full body Kata sends, `vm.info` (Created), one `vm.add-net` per NIC
//! on one kept-alive connection each carrying its tap fd with SCM_RIGHTS, `vm.boot`,
//! `vm.info` (Running), the `vcpuN` threads Kata moves into the sandbox cgroup, `vm.resize`
//! to the boot vCPU count, the agent's hybrid-vsock `CONNECT 1024`, then `vmm.ping`,
//! `vmm.shutdown` and the process gone within 3 s.
//!
//! Kata's body as it comes with virtio-fs (`fs`, `memory.shared: true`) is refused naming
//! `fs` (petrel has no vhost-user yet); the replay then goes on with the body Kata sends with
//! `shared_fs = "none"`. One addition to Kata's body: `platform.virtio_mmio_cmdline`, since
//! the freestanding test guest finds its virtio-mmio devices on the command line only (a
//! Linux guest reads them from the ACPI DSDT).

mod ch_support;

use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use ch_support::{vcpu_threads, ScratchDir, VmmProcess, Which};
use petrel_http::{parse_response, Client, Method, Response};
use petrel_tests::host_net::TapFd;
use petrel_tests::{guest_image, petrel_bin, require_kvm, GuestKind};
use serde_json::{json, Value};

const BOOT_VCPUS: u32 = 2;
const MAX_VCPUS: u32 = 4;
const MEMORY: u64 = 64 << 20;

/// `vm.create`'s body as Kata's Go driver builds it (chclient.New* constructors fill the
/// OpenAPI defaults), for a VM with a read-only root image, debug console on the serial
/// port, and virtio-fs when `with_fs`.
fn kata_vm_config(
    kernel: &Path,
    root: &Path,
    vsock: &Path,
    fs_sock: &Path,
    with_fs: bool,
) -> Value {
    let mut cfg = json!({
        "cpus": {
            "boot_vcpus": BOOT_VCPUS, "max_vcpus": MAX_VCPUS, "kvm_hyperv": false,
            "nested": true,
            "topology": {"threads_per_core": 1, "cores_per_die": MAX_VCPUS,
                         "dies_per_package": 1, "packages": 1},
        },
        "memory": {
            "size": MEMORY, "mergeable": false, "hotplug_method": "Acpi",
            "shared": with_fs, "hugepages": false, "prefault": false, "thp": true,
            "hotplug_size": 2u64 << 30,
        },
        "payload": {"kernel": kernel, "cmdline": "action=vsock-listen"},
        "disks": [{
            "path": root, "readonly": true, "direct": false, "iommu": false,
            "num_queues": 1, "queue_size": 128, "vhost_user": false,
            "backing_files": false, "sparse": true, "image_type": "Raw",
        }],
        "rng": {"src": "/dev/urandom", "iommu": false},
        "serial": {"mode": "Tty", "iommu": false},
        "console": {"mode": "Off", "iommu": false},
        "vsock": {"cid": 3, "socket": vsock, "iommu": false},
        "platform": {"num_pci_segments": 2, "tdx": false, "sev_snp": false,
                     "virtio_mmio_cmdline": true},
        "iommu": false, "watchdog": false, "pvpanic": false, "landlock_enable": false,
    });
    if with_fs {
        cfg["fs"] = json!([{"tag": "kataShared", "socket": fs_sock, "num_queues": 1,
                            "queue_size": 1024, "pci_segment": 1}]);
    }
    cfg
}

/// `vm.add-net`'s body as Kata sends it (chclient.NewNetConfig plus the MAC).
fn kata_net(mac: &str) -> Value {
    json!({
        "ip": "192.168.249.1", "mask": "255.255.255.0", "mac": mac, "iommu": false,
        "num_queues": 2, "queue_size": 256, "vhost_user": false, "vhost_mode": "Client",
        "offload_tso": true, "offload_ufo": true, "offload_csum": true,
    })
}

/// Sends `bytes` on `s` with `fd` attached (SCM_RIGHTS), as Go's `WriteMsgUnix` does.
fn send_with_fd(s: &UnixStream, bytes: &[u8], fd: BorrowedFd<'_>) {
    let raw = fd.as_raw_fd();
    let mut iov = libc::iovec {
        iov_base: bytes.as_ptr() as *mut libc::c_void,
        iov_len: bytes.len(),
    };
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<i32>() as u32) } as usize;
    let mut control = vec![0u8; space];
    // SAFETY: msghdr is plain data; all-zero is valid before the fields are set.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space;
    // SAFETY: msg_control points at `space` bytes, room for one header with one int, so
    // CMSG_FIRSTHDR is non-null and CMSG_DATA has 4 writable bytes.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<i32>() as u32) as usize;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<i32>(), raw);
    }
    // SAFETY: msg and everything it points to (iov, bytes, control) live across the call.
    let n = unsafe { libc::sendmsg(s.as_raw_fd(), &msg, 0) };
    assert_eq!(
        n,
        bytes.len() as isize,
        "sendmsg: {}",
        std::io::Error::last_os_error()
    );
}

/// Reads one response from `s` (kept open for the next request).
fn read_response(s: &mut UnixStream) -> Response {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(p) = parse_response(&buf, false, false, 1 << 20).unwrap() {
            assert_eq!(p.len, buf.len(), "bytes after the response");
            assert!(p.reusable, "the connection must stay open (keep-alive)");
            return p.response;
        }
        let n = s.read(&mut chunk).unwrap();
        assert!(n > 0, "connection closed mid-response: {buf:?}");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Times one call; Kata gives each 1 s (its API timeout).
struct Calls {
    slowest: (Duration, String),
}

impl Calls {
    fn timed<T>(&mut self, what: &str, f: impl FnOnce() -> T) -> T {
        let t = Instant::now();
        let r = f();
        let d = t.elapsed();
        eprintln!("kata replay: {what}: {d:?}");
        if d > self.slowest.0 {
            self.slowest = (d, what.to_string());
        }
        r
    }
}

#[test]
fn kata_clh_driver_sequence() {
    require_kvm!();
    let dir = ScratchDir::new("kata");
    let kernel = guest_image(GuestKind::Pvh);
    let root = dir.0.join("rootfs.img");
    std::fs::write(&root, vec![0u8; 1 << 20]).unwrap();
    let vsock = dir.0.join("kata.hvsock");
    let fs_sock = dir.0.join("vhost-fs.sock");
    let mut calls = Calls {
        slowest: (Duration::ZERO, String::new()),
    };

    // Launch as the driver does and poll vmm.ping every 10 ms.
    let mut vmm = VmmProcess::start(Which::Petrel, &petrel_bin(), &dir.0, &["-v"]);
    let client = Client::new(&vmm.socket).with_timeout(Duration::from_secs(10));
    let deadline = Instant::now() + Duration::from_secs(20);
    let ping = loop {
        match calls.timed("vmm.ping", || client.get("/api/v1/vmm.ping")) {
            Ok(r) if r.status == 200 => break r.json_body::<Value>().unwrap(),
            _ if Instant::now() > deadline => panic!("vmm.ping never answered\n{}", vmm.logs()),
            _ => std::thread::sleep(Duration::from_millis(10)),
        }
    };
    assert!(
        ping["features"].is_array(),
        "runtime-rs reads `features`: {ping}"
    );

    // The body with virtio-fs: refused naming fs.
    let with_fs = kata_vm_config(Path::new(&kernel), &root, &vsock, &fs_sock, true);
    let r = calls.timed("vm.create (fs)", || {
        client.request(
            Method::Put,
            "/api/v1/vm.create",
            Some(with_fs.to_string().as_bytes()),
        )
    });
    let r = r.unwrap();
    assert_eq!(r.status, 400, "{}", r.error_message());
    let msg = r.error_message();
    assert!(
        msg.contains("fs: not supported") && msg.contains("vhost-user"),
        "{msg}"
    );
    let messages: Vec<String> = r.json_body().expect("errors are a JSON array of messages");
    assert!(!messages.is_empty());

    // shared_fs = "none".
    let body = kata_vm_config(Path::new(&kernel), &root, &vsock, &fs_sock, false);
    let r = calls
        .timed("vm.create", || {
            client.request(
                Method::Put,
                "/api/v1/vm.create",
                Some(body.to_string().as_bytes()),
            )
        })
        .unwrap();
    assert_eq!(
        r.status,
        204,
        "vm.create: {}\n{}",
        r.error_message(),
        vmm.logs()
    );

    let info: Value = calls
        .timed("vm.info", || client.get("/api/v1/vm.info"))
        .unwrap()
        .json_body()
        .unwrap();
    assert_eq!(info["state"], "Created", "{info}");
    assert_eq!(info["memory_actual_size"], MEMORY, "{info}");
    let cpus = &info["config"]["cpus"];
    assert_eq!(
        (cpus["boot_vcpus"].as_u64(), cpus["max_vcpus"].as_u64()),
        (Some(2), Some(4))
    );
    assert_eq!(cpus["topology"]["cores_per_die"], MAX_VCPUS, "{info}");
    assert_eq!(
        info["config"]["memory"]["hotplug_size"],
        2u64 << 30,
        "{info}"
    );

    // Two NICs, one kept-alive connection, one tap fd each.
    let taps: Vec<TapFd> = (0..2)
        .map(|i| {
            let name = format!("pkata{}n{i}", std::process::id() % 10000);
            TapFd::open(&name).unwrap_or_else(|e| panic!("tap {name} (root, /dev/net/tun): {e}"))
        })
        .collect();
    let mut conn = UnixStream::connect(&vmm.socket).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    for (i, tap) in taps.iter().enumerate() {
        let net = kata_net(&format!("52:54:00:4b:41:0{i}")).to_string();
        let head = format!(
            "PUT /api/v1/vm.add-net HTTP/1.1\r\nHost: localhost\r\nUser-Agent: OpenAPI-Generator/1.0.0/go\r\nContent-Length: {}\r\nAccept: application/json\r\nContent-Type: application/json\r\n\r\n",
            net.len()
        );
        let r = calls.timed("vm.add-net", || {
            send_with_fd(&conn, format!("{head}{net}").as_bytes(), tap.as_fd());
            read_response(&mut conn)
        });
        assert_eq!(r.status, 204, "vm.add-net {i}: {}", r.error_message());
    }
    let info: Value = client.get("/api/v1/vm.info").unwrap().json_body().unwrap();
    let nets = info["config"]["net"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(nets.len(), 2, "{info}");
    assert_eq!(nets[1]["mac"], "52:54:00:4b:41:01", "{info}");

    let r = calls.timed("vm.boot", || {
        client.request(Method::Put, "/api/v1/vm.boot", None)
    });
    assert_eq!(r.unwrap().status, 204, "{}", vmm.logs());
    let info: Value = client.get("/api/v1/vm.info").unwrap().json_body().unwrap();
    assert_eq!(info["state"], "Running", "{info}");
    let want: Vec<String> = (0..BOOT_VCPUS).map(|i| format!("vcpu{i}")).collect();
    assert_eq!(vcpu_threads(vmm.pid()), want, "threads named vcpuN");

    // Container creation resizes to the vCPU count it wants: the boot count works, more is
    // refused clearly (no CPU hotplug yet).
    let resize = |n: u32| {
        let b = json!({"desired_vcpus": n}).to_string();
        client
            .request(Method::Put, "/api/v1/vm.resize", Some(b.as_bytes()))
            .unwrap()
    };
    let r = calls.timed("vm.resize", || resize(BOOT_VCPUS));
    assert_eq!(r.status, 204, "{}", r.error_message());
    let r = resize(BOOT_VCPUS + 1);
    assert_eq!(r.status, 400);
    assert!(
        r.error_message().contains("desired_vcpus"),
        "{}",
        r.error_message()
    );

    // The agent's hybrid vsock: CONNECT 1024, a line starting with OK within 10 s.
    let listening = Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(dir.0.join("stdout"))
        .unwrap_or_default()
        .contains("VIRTIO: vsock listening port=1024")
    {
        assert!(
            Instant::now() < listening,
            "guest never listened\n{}",
            vmm.logs()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut agent = UnixStream::connect(&vsock).unwrap();
    agent
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    agent.write_all(b"CONNECT 1024\n").unwrap();
    let mut got = Vec::new();
    let mut byte = [0u8; 1];
    while !got.ends_with(b"\n") {
        match agent.read(&mut byte) {
            Ok(1) => got.push(byte[0]),
            other => panic!("no OK line: {other:?} after {got:?}\n{}", vmm.logs()),
        }
    }
    let ok = String::from_utf8_lossy(&got).into_owned();
    assert!(ok.starts_with("OK "), "{ok:?}");
    // Then the guest's side talks: its hello, our reply, its close.
    let mut hello = Vec::new();
    while !hello.ends_with(b"\n") {
        match agent.read(&mut byte) {
            Ok(1) => hello.push(byte[0]),
            other => panic!("no hello: {other:?} after {hello:?}\n{}", vmm.logs()),
        }
    }
    assert_eq!(hello, b"hello from petrel guest\n");
    agent
        .write_all(b"hello from the kata agent's host\n")
        .unwrap();
    let closed = Instant::now() + Duration::from_secs(20);
    while !std::fs::read_to_string(dir.0.join("stdout"))
        .unwrap_or_default()
        .contains("VIRTIO: vsock reply hello from the kata agent's host")
    {
        assert!(
            Instant::now() < closed,
            "guest never got the reply\n{}",
            vmm.logs()
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    // Stop: ping, shutdown, gone within 3 s.
    assert_eq!(client.get("/api/v1/vmm.ping").unwrap().status, 200);
    let r = calls.timed("vmm.shutdown", || {
        client.request(Method::Put, "/api/v1/vmm.shutdown", None)
    });
    assert_eq!(r.unwrap().status, 200);
    let exit = vmm.wait_exit(Duration::from_secs(3));
    assert_eq!(exit, Some(Some(0)), "not gone within 3 s\n{}", vmm.logs());
    eprintln!(
        "kata replay: slowest call {} took {:?} (Kata's API timeout is 1 s)",
        calls.slowest.1, calls.slowest.0
    );
}
