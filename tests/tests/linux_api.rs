//! petrel's API with a real Linux guest: `vm.create` → `vm.boot` → `vm.pause` (the guest's
//! clock-driven ticker stops printing) → `vm.resume` (it goes on) → `vm.counters` (the disk's
//! counters move when the guest reads it) → `vm.resize` with `desired_balloon` (the balloon
//! inflates: the guest's `MemTotal` and free memory drop, and so does petrel's RSS; then it
//! deflates) → `vm.reboot` (a second boot in the same process) → `vm.power-button` (the
//! guest's ACPI button driver reports the press, its init powers off) → state `Shutdown` →
//! `vmm.shutdown`, exit 0.
//!
//! The host drives the guest through its serial console (petrel's stdin): a hook reads one
//! command per line and answers with `PETREL-AGENT:` / `PETREL-MEM` lines; a background loop
//! prints `PETREL-TICK <uptime>` twice a second.
//!
//! Skips visibly like the other full boots (no `/dev/kvm`, no kit, guest ring 0 emulated).

use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use petrel_http::{Client, Method, Response};
use petrel_tests::linux_guest::{count_lines, initramfs_with_hooks, serial_tail, Scratch};
use petrel_tests::{linux_kit_or_skip, ring0_native, Petrel};
use serde_json::{json, Value};

const TEST: &str = "linux_api_lifecycle";
/// Longest wait for one guest step (a boot under nested TCG on a busy machine included).
const STEP: Duration = Duration::from_secs(150);
const MIB: u64 = 1 << 20;
const MEMORY_MIB: u64 = 512;
const BALLOON_MIB: u64 = 192;

/// The guest side: a ticker and a command loop on the console.
const AGENT_HOOK: &str = r#"
stty -echo 2>/dev/null
(while :; do echo "PETREL-TICK $(cut -d' ' -f1 /proc/uptime)"; sleep 0.5; done) &
tick=$!
echo "PETREL-AGENT: ready"
while read -r cmd; do
    case "$cmd" in
    mem)
        echo "PETREL-MEM $(sed -n 's/^MemTotal: *\([0-9]*\) kB/\1/p' /proc/meminfo) $(sed -n 's/^MemFree: *\([0-9]*\) kB/\1/p' /proc/meminfo)"
        ;;
    fill)
        head -c 209715200 /dev/zero >/tmp/fill && rm -f /tmp/fill && echo "PETREL-AGENT: filled"
        ;;
    disk)
        dd if=/dev/vda of=/dev/null bs=64k count=32 iflag=direct 2>/dev/null &&
            echo "PETREL-AGENT: disk read"
        ;;
    *) echo "PETREL-AGENT: unknown command" ;;
    esac
done
kill "$tick"
"#;

/// The `(MemTotal, MemFree)` of every complete `PETREL-MEM` line in `out`.
fn mem_lines(out: &str) -> Vec<(u64, u64)> {
    out.split_inclusive('\n')
        .filter(|l| l.ends_with('\n'))
        .filter_map(|l| l.trim_end().strip_prefix("PETREL-MEM "))
        .filter_map(|rest| {
            let mut w = rest.split_whitespace().map(str::parse::<u64>);
            Some((w.next()?.ok()?, w.next()?.ok()?))
        })
        .collect()
}

/// petrel with an API socket and its stdin piped to the guest's console.
struct ApiLinux {
    petrel: Petrel,
    client: Client,
    _dir: Scratch,
}

impl ApiLinux {
    fn fail(&self, what: &str) -> ! {
        panic!(
            "{TEST}: {what}\n--- last 60 serial lines ---\n{}\n--- stderr ---\n{}",
            serial_tail(&self.petrel.stdout(), 60),
            self.petrel.stderr()
        );
    }

    fn call(&self, method: Method, op: &str, body: Option<&Value>) -> Response {
        let bytes = body.map(|b| serde_json::to_vec(b).unwrap());
        match self
            .client
            .request(method, &format!("/api/v1/{op}"), bytes.as_deref())
        {
            Ok(r) => r,
            Err(e) => self.fail(&format!("{op}: {e:?}")),
        }
    }

    fn put(&self, op: &str, body: Option<&Value>) {
        let r = self.call(Method::Put, op, body);
        if !r.is_success() {
            self.fail(&format!("PUT {op}: {} {}", r.status, r.error_message()));
        }
    }

    fn get(&self, op: &str) -> Value {
        let r = self.call(Method::Get, op, None);
        match r.json_body() {
            Ok(v) if r.status == 200 => v,
            _ => self.fail(&format!("GET {op}: {} {}", r.status, r.error_message())),
        }
    }

    fn state(&self) -> String {
        self.get("vm.info")["state"]
            .as_str()
            .unwrap_or("?")
            .to_string()
    }

    fn send(&mut self, line: &str) {
        if let Err(e) = self.petrel.write_stdin(format!("{line}\n").as_bytes()) {
            self.fail(&format!("cannot write `{line}` to the guest console: {e}"));
        }
    }

    /// Waits until the serial output holds `n` lines starting with `prefix`.
    fn wait_lines(&mut self, prefix: &str, n: usize, timeout: Duration) {
        if !self
            .petrel
            .wait_for_stdout(timeout, |o| count_lines(o, prefix) >= n)
        {
            self.fail(&format!("waited {timeout:?} for {n} `{prefix}` lines"));
        }
    }

    /// The guest's `(MemTotal, MemFree)` in KiB, asked now.
    fn mem(&mut self) -> (u64, u64) {
        let n = mem_lines(&self.petrel.stdout()).len();
        self.send("mem");
        // Only whole lines count: the last one may still be arriving.
        if !self
            .petrel
            .wait_for_stdout(Duration::from_secs(30), |o| mem_lines(o).len() > n)
        {
            self.fail("no answer to `mem` within 30 s");
        }
        mem_lines(&self.petrel.stdout())
            .pop()
            .unwrap_or_else(|| self.fail("unreadable PETREL-MEM line"))
    }

    /// petrel's resident set in KiB.
    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.petrel.pid()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| self.fail("no VmRSS for petrel"))
    }

    /// Asks for the memory every second until `pred(MemTotal, MemFree)`; returns the last.
    fn wait_mem(&mut self, what: &str, pred: impl Fn(u64, u64) -> bool) -> (u64, u64) {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let (total, free) = self.mem();
            if pred(total, free) {
                return (total, free);
            }
            if Instant::now() > deadline {
                self.fail(&format!("{what}: MemTotal {total} KiB, MemFree {free} KiB"));
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    }

    /// The disk's counter `name` from `vm.counters`.
    fn disk_counter(&self, name: &str) -> u64 {
        let counters = self.get("vm.counters");
        let found = counters
            .as_object()
            .and_then(|m| m.values().find_map(|dev| dev.get(name)?.as_u64()));
        found.unwrap_or_else(|| self.fail(&format!("no `{name}` in vm.counters: {counters}")))
    }

    fn ticks(&self) -> usize {
        count_lines(&self.petrel.stdout(), "PETREL-TICK ")
    }
}

#[test]
fn linux_api_lifecycle() {
    let Some(kit) = linux_kit_or_skip(TEST) else {
        return;
    };
    if !ring0_native(TEST) {
        return;
    }
    let dir = Scratch::new(TEST);
    let initramfs = initramfs_with_hooks(kit, &dir.0, &[("40-agent.sh", AGENT_HOOK)])
        .unwrap_or_else(|e| panic!("{TEST}: cannot write the initramfs: {e}"));
    let disk = dir.join("data.img");
    std::fs::write(&disk, vec![0x5au8; 4 << 20]).unwrap();
    let socket = dir.join("api.sock");
    let petrel = Petrel::spawn_with_stdin(&["--api-socket", socket.to_str().unwrap()]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while UnixStream::connect(&socket).is_err() {
        assert!(
            Instant::now() < deadline,
            "{TEST}: the API socket never accepted\n{}",
            petrel.stderr()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let client = Client::new(&socket).with_timeout(Duration::from_secs(60));
    let mut vm = ApiLinux {
        petrel,
        client,
        _dir: dir,
    };

    let t0 = Instant::now();
    let config = json!({
        "payload": {
            "kernel": kit.vmlinux,
            "initramfs": initramfs,
            "cmdline": petrel_tests::linux_guest::kernel_cmdline("console=ttyS0 panic=-1"),
        },
        "cpus": {"boot_vcpus": 2},
        "memory": {"size": MEMORY_MIB * MIB},
        "serial": {"mode": "Tty"},
        "disks": [{"path": disk}],
        "balloon": {"size": 0},
    });
    vm.put("vm.create", Some(&config));
    assert_eq!(vm.state(), "Created");
    vm.put("vm.boot", None);
    vm.wait_lines("PETREL-AGENT: ready", 1, STEP);
    vm.wait_lines("PETREL-TICK ", 2, Duration::from_secs(30));
    eprintln!("{TEST}: booted to the agent in {:.1?}", t0.elapsed());

    // Pause: the ticker stops; resume: it goes on.
    vm.put("vm.pause", None);
    assert_eq!(vm.state(), "Paused");
    // A tick may have been on its way out of the guest when the vCPUs stopped.
    std::thread::sleep(Duration::from_millis(500));
    let paused_at = vm.ticks();
    std::thread::sleep(Duration::from_secs(3));
    let after_pause = vm.ticks();
    if after_pause != paused_at {
        vm.fail(&format!(
            "{} ticks while paused (had {paused_at})",
            after_pause - paused_at
        ));
    }
    vm.put("vm.resume", None);
    assert_eq!(vm.state(), "Running");
    vm.wait_lines("PETREL-TICK ", paused_at + 2, Duration::from_secs(30));
    eprintln!("{TEST}: pause held the ticker at {paused_at} for 3 s; resumed");

    // Counters move with the guest's disk reads.
    let before = vm.disk_counter("read_bytes");
    vm.send("disk");
    vm.wait_lines("PETREL-AGENT: disk read", 1, Duration::from_secs(60));
    let after = vm.disk_counter("read_bytes");
    if after < before + 2 * MIB {
        vm.fail(&format!(
            "read_bytes went from {before} to {after} for a 2 MiB direct read"
        ));
    }
    eprintln!("{TEST}: disk read_bytes {before} → {after}");

    // Balloon: touch memory first (so that petrel's RSS holds it), then inflate and deflate.
    vm.send("fill");
    vm.wait_lines("PETREL-AGENT: filled", 1, Duration::from_secs(120));
    let (total0, free0) = vm.mem();
    let rss0 = vm.rss_kib();
    let balloon_kib = BALLOON_MIB * 1024;
    vm.put(
        "vm.resize",
        Some(&json!({"desired_balloon": BALLOON_MIB * MIB})),
    );
    // The guest inflates in steps (slowly under nested TCG): wait until it has acked it all.
    let want = (MEMORY_MIB - BALLOON_MIB) * MIB;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let actual = vm.get("vm.info")["memory_actual_size"].as_u64();
        if actual == Some(want) {
            break;
        }
        if Instant::now() > deadline {
            vm.fail(&format!(
                "vm.info memory_actual_size {actual:?}, want {want} 120 s after vm.resize"
            ));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let (total1, free1) = vm.wait_mem("inflating", |total, _| {
        total + balloon_kib * 9 / 10 <= total0
    });
    let rss1 = vm.rss_kib();
    if free1 + balloon_kib / 2 > free0 {
        vm.fail(&format!(
            "MemFree {free0} → {free1} KiB: the balloon took no free memory"
        ));
    }
    if rss1 + balloon_kib / 3 > rss0 {
        vm.fail(&format!(
            "petrel's RSS {rss0} → {rss1} KiB after a {BALLOON_MIB} MiB balloon"
        ));
    }
    vm.put("vm.resize", Some(&json!({"desired_balloon": 0})));
    let (total2, _) = vm.wait_mem("deflating", |total, _| total + 1024 >= total0);
    eprintln!(
        "{TEST}: balloon {BALLOON_MIB} MiB: MemTotal {total0} → {total1} → {total2} KiB, \
         MemFree {free0} → {free1} KiB, RSS {rss0} → {rss1} KiB"
    );

    // vm.reboot: a second boot in the same process.
    vm.put("vm.reboot", None);
    vm.wait_lines("PETREL-AGENT: ready", 2, STEP);
    let banners = vm.petrel.stdout().matches("Linux version ").count();
    if banners != 2 {
        vm.fail(&format!(
            "{banners} `Linux version` banners after vm.reboot"
        ));
    }
    assert_eq!(vm.state(), "Running");
    eprintln!("{TEST}: vm.reboot booted the guest again");

    // The power button: the guest's button driver reports it, its init powers off.
    vm.put("vm.power-button", None);
    let deadline = Instant::now() + Duration::from_secs(60);
    while vm.state() != "Shutdown" {
        if Instant::now() > deadline {
            vm.fail("not Shutdown 60 s after vm.power-button");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    if !vm
        .petrel
        .stdout()
        .contains("PETREL-INIT: power button pressed, powering off")
    {
        vm.fail("Shutdown without the guest seeing the power button");
    }
    if vm.petrel.stdout().contains("PETREL-INIT-OK") {
        vm.fail("init ran to its end: the guest powered off by itself, not on the button");
    }
    vm.put("vmm.shutdown", None);
    let run = vm.petrel.wait(Duration::from_secs(20));
    assert!(
        run.success(),
        "{TEST}: vmm.shutdown: petrel exit {:?}\n{}",
        run.status,
        run.stderr
    );
    eprintln!(
        "{TEST}: power button → Shutdown → exit 0; whole run {:.1?}",
        t0.elapsed()
    );
}
