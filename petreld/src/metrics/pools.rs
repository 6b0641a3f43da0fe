//! The storage pools' series: each pool's file system size and free bytes, and what its
//! volumes may grow to (capacity) and use now (allocation) — the same figures as
//! `GET /v1/pools`.

use std::fmt::Write;

use super::{escape, header};
use crate::Daemon;

/// Appends the pool series to `out`.
pub fn render(out: &mut String, daemon: &Daemon) {
    let Ok(list) = daemon.list_pools() else {
        return;
    };
    let pools = list["items"].as_array().cloned().unwrap_or_default();
    header(
        out,
        "petreld_pool_bytes",
        "gauge",
        "Storage pools: file system size and free bytes, volumes' capacity and allocation.",
    );
    for p in &pools {
        let name = escape(p["name"].as_str().unwrap_or_default());
        for kind in ["size", "free", "capacity", "allocation"] {
            if let Some(v) = p[kind].as_u64() {
                let _ = writeln!(
                    out,
                    "petreld_pool_bytes{{pool=\"{name}\",kind=\"{kind}\"}} {v}"
                );
            }
        }
    }
    header(
        out,
        "petreld_pool_volumes",
        "gauge",
        "Volumes in each storage pool.",
    );
    for p in &pools {
        let name = escape(p["name"].as_str().unwrap_or_default());
        let n = p["volumes"].as_u64().unwrap_or(0);
        let _ = writeln!(out, "petreld_pool_volumes{{pool=\"{name}\"}} {n}");
    }
}
