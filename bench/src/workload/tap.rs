//! Tap devices for the net workload: created with `ip tuntap add` and brought up for one
//! boot, deleted when dropped (also after a failed or interrupted run).

use std::fs;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

/// A tap created for one boot (`ip tuntap add`, up) and deleted on drop.
pub struct Tap {
    /// Interface name.
    pub name: String,
}

static TAP_SEQ: AtomicU32 = AtomicU32::new(0);

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
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
    /// Creates `pbn<pid>-<seq>` and brings it up.
    pub fn create() -> Result<Tap, String> {
        let seq = TAP_SEQ.fetch_add(1, Ordering::Relaxed);
        let name = format!("pbn{}-{}", std::process::id() % 100_000, seq % 10_000);
        ip(&["tuntap", "add", "dev", &name, "mode", "tap"])?;
        let tap = Tap { name };
        ip(&["link", "set", &tap.name, "up"])?;
        Ok(tap)
    }

    /// Frames the host received from the VMM through the tap.
    pub fn rx_packets(&self) -> Result<u64, String> {
        let p = format!("/sys/class/net/{}/statistics/rx_packets", self.name);
        let text = fs::read_to_string(&p).map_err(|e| format!("{p}: {e}"))?;
        text.trim().parse().map_err(|_| format!("{p}: {text:?}"))
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        let _ = ip(&["link", "del", &self.name]);
    }
}

/// Whether this host lets the harness create a tap (root or CAP_NET_ADMIN, and `ip`).
pub fn tap_available() -> Result<(), String> {
    Tap::create().map(drop)
}
