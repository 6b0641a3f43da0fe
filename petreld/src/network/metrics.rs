//! The networks' Prometheus series: leases in each dnsmasq's leases file that have not
//! expired, whether each network's dnsmasq runs, and how often petreld restarted it.

use std::fmt::Write;

use super::dnsmasq::{self, Paths};
use crate::Daemon;

/// Appends the network series to `out`.
pub fn render(out: &mut String, daemon: &Daemon) {
    let nets = daemon.store().all_networks().unwrap_or_default();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut leases = String::new();
    let mut up = String::new();
    let mut restarts = String::new();
    for n in nets.iter().filter(|n| n.kind.managed()) {
        let kind = serde_json::to_value(n.kind).unwrap_or_default();
        let labels = format!(
            "network=\"{}\",type=\"{}\"",
            n.name,
            kind.as_str().unwrap_or("")
        );
        let paths = Paths::new(&daemon.config.state_dir, &n.name);
        let live = dnsmasq::leases(&paths)
            .iter()
            .filter(|l| l.expires == 0 || l.expires > now)
            .count();
        let server = daemon.networks.server(&n.name);
        let running = server.is_some_and(|s| s.process.alive());
        let _ = writeln!(leases, "petreld_network_leases{{{labels}}} {live}");
        let _ = writeln!(
            up,
            "petreld_network_dnsmasq_up{{{labels}}} {}",
            u8::from(running)
        );
        let _ = writeln!(
            restarts,
            "petreld_network_dnsmasq_restarts_total{{{labels}}} {}",
            server.map_or(0, |s| s.restarts)
        );
    }
    for (name, kind, help, body) in [
        (
            "petreld_network_leases",
            "gauge",
            "DHCP leases of the network's dnsmasq that have not expired.",
            leases,
        ),
        (
            "petreld_network_dnsmasq_up",
            "gauge",
            "1 when the network's dnsmasq runs.",
            up,
        ),
        (
            "petreld_network_dnsmasq_restarts_total",
            "counter",
            "Times petreld restarted the network's dnsmasq after it died.",
            restarts,
        ),
    ] {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        out.push_str(&body);
    }
}
