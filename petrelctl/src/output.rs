//! Rendering server JSON for people: aligned `key: value` lines and column tables. Everything
//! here reads `serde_json::Value` leniently: a missing or oddly typed field is skipped or shown
//! as JSON, never an error, so a newer server still prints.

use serde_json::Value;

/// Aligned `key: value` lines.
#[derive(Debug, Default)]
pub struct Fields(Vec<(String, String)>);

impl Fields {
    /// No lines yet.
    pub fn new() -> Fields {
        Fields::default()
    }

    /// Adds a line.
    pub fn push(&mut self, key: &str, value: impl Into<String>) {
        self.0.push((key.to_string(), value.into()));
    }

    /// Adds a line when `value` is present.
    pub fn push_opt(&mut self, key: &str, value: Option<String>) {
        if let Some(v) = value {
            self.push(key, v);
        }
    }

    /// The lines, values aligned one column after the longest key.
    pub fn render(&self) -> String {
        let width = self.0.iter().map(|(k, _)| k.len() + 1).max().unwrap_or(0);
        let mut out = String::new();
        for (k, v) in &self.0 {
            let key = format!("{k}:");
            let line = format!("{key:width$} {v}");
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// A table with a header row; columns are left-aligned and separated by two spaces.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, (cell, w)) in row.iter().zip(&widths).enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            line.push_str(cell);
            let pad = w.saturating_sub(cell.chars().count());
            line.extend(std::iter::repeat_n(' ', pad));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `512 MiB`, `1.5 GiB`, `4096 bytes`.
pub fn bytes(n: u64) -> String {
    const UNITS: [(u64, &str); 4] = [
        (1 << 40, "TiB"),
        (1 << 30, "GiB"),
        (1 << 20, "MiB"),
        (1 << 10, "KiB"),
    ];
    for (size, unit) in UNITS {
        if n >= size {
            return if n.is_multiple_of(size) {
                format!("{} {unit}", n / size)
            } else {
                format!("{:.1} {unit}", n as f64 / size as f64)
            };
        }
    }
    format!("{n} bytes")
}

/// A scalar as people read it: strings without quotes, anything else as JSON.
pub fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// `vmm.ping`: version, pid, hypervisor, features.
pub fn ping(v: &Value) -> String {
    let mut f = Fields::new();
    f.push_opt("version", v.get("version").map(scalar));
    f.push_opt("build", v.get("build_version").map(scalar));
    f.push_opt("pid", v.get("pid").map(scalar));
    f.push_opt("hypervisor", v.get("hypervisor").map(scalar));
    if let Some(features) = v.get("features").and_then(Value::as_array) {
        let list: Vec<String> = features.iter().map(scalar).collect();
        f.push(
            "features",
            if list.is_empty() {
                "-".to_string()
            } else {
                list.join(", ")
            },
        );
    }
    f.render()
}

/// `vm.info`: the state, then the configuration one device per line.
pub fn info(v: &Value) -> String {
    let mut f = Fields::new();
    f.push_opt("state", v.get("state").map(scalar));
    let config = v.get("config").unwrap_or(&Value::Null);
    if let Some(n) = config.pointer("/cpus/boot_vcpus") {
        f.push("vcpus", scalar(n));
    }
    let size = config.pointer("/memory/size").and_then(Value::as_u64);
    let actual = v.get("memory_actual_size").and_then(Value::as_u64);
    let memory = match (size, actual) {
        (Some(s), Some(a)) if a != s => Some(format!("{} (actual {})", bytes(s), bytes(a))),
        (Some(s), _) => Some(bytes(s)),
        (None, Some(a)) => Some(format!("actual {}", bytes(a))),
        (None, None) => None,
    };
    f.push_opt("memory", memory);
    for key in ["kernel", "initramfs", "cmdline"] {
        f.push_opt(
            key,
            config.get("payload").and_then(|p| p.get(key)).map(scalar),
        );
    }
    if let Some(serial) = config.get("serial") {
        let mode = serial.get("mode").map(scalar).unwrap_or_default();
        match serial.get("file").map(scalar) {
            Some(file) => f.push("serial", format!("{mode} {file}")),
            None => f.push("serial", mode),
        }
    }
    for disk in list(config.get("disks")) {
        let mut flags = Vec::new();
        if disk.get("readonly").and_then(Value::as_bool) == Some(true) {
            flags.push("readonly".to_string());
        }
        if disk.get("direct").and_then(Value::as_bool) == Some(true) {
            flags.push("direct".to_string());
        }
        described(&mut f, "disk", disk, "path", flags);
    }
    for net in list(config.get("net")) {
        let mut flags = Vec::new();
        if let Some(mac) = net.get("mac") {
            flags.push(format!("mac {}", scalar(mac)));
        }
        let main = match (net.get("tap"), net.get("fds")) {
            (Some(tap), _) => format!("tap {}", scalar(tap)),
            (None, Some(fds)) => format!("fds {fds}"),
            (None, None) => "-".to_string(),
        };
        let mut line = main;
        append_details(&mut line, net, flags);
        f.push("net", line);
    }
    if let Some(rng) = config.get("rng") {
        f.push("rng", rng.get("src").map(scalar).unwrap_or_default());
    }
    if let Some(vsock) = config.get("vsock") {
        let mut line = format!(
            "cid {} socket {}",
            vsock.get("cid").map(scalar).unwrap_or_default(),
            vsock.get("socket").map(scalar).unwrap_or_default()
        );
        append_details(&mut line, vsock, Vec::new());
        f.push("vsock", line);
    }
    if let Some(balloon) = config.get("balloon") {
        let size = balloon.get("size").and_then(Value::as_u64).unwrap_or(0);
        let mut line = bytes(size);
        if balloon.get("deflate_on_oom").and_then(Value::as_bool) == Some(true) {
            line.push_str(" (deflate_on_oom)");
        }
        f.push("balloon", line);
    }
    f.render()
}

/// The elements of an optional JSON array.
fn list(v: Option<&Value>) -> &[Value] {
    v.and_then(Value::as_array).map_or(&[], Vec::as_slice)
}

/// `key: <main field> (id X, flags…)`.
fn described(f: &mut Fields, key: &str, v: &Value, main: &str, flags: Vec<String>) {
    let mut line = v.get(main).map(scalar).unwrap_or_else(|| "-".to_string());
    append_details(&mut line, v, flags);
    f.push(key, line);
}

/// Appends ` (id X, flag, …)` when there is anything to say.
fn append_details(line: &mut String, v: &Value, flags: Vec<String>) {
    let mut details: Vec<String> = v
        .get("id")
        .map(|id| format!("id {}", scalar(id)))
        .into_iter()
        .collect();
    details.extend(flags);
    if !details.is_empty() {
        line.push_str(&format!(" ({})", details.join(", ")));
    }
}

/// `vm.counters`: one row per counter, grouped by device (device named on its first row).
pub fn counters(v: &Value) -> String {
    let Some(devices) = v.as_object() else {
        return format!("{v}\n");
    };
    let mut names: Vec<&String> = devices.keys().collect();
    names.sort();
    let mut rows = Vec::new();
    for name in names {
        let mut first = true;
        let mut push = |counter: String, value: String| {
            let device = if first { name.clone() } else { String::new() };
            first = false;
            rows.push(vec![device, counter, value]);
        };
        match devices[name].as_object() {
            Some(counters) => {
                let mut keys: Vec<&String> = counters.keys().collect();
                keys.sort();
                for key in keys {
                    push(key.clone(), scalar(&counters[key]));
                }
            }
            None => push("-".to_string(), scalar(&devices[name])),
        }
    }
    if rows.is_empty() {
        return "no counters\n".to_string();
    }
    table(&["DEVICE", "COUNTER", "VALUE"], &rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn sizes() {
        assert_eq!(bytes(0), "0 bytes");
        assert_eq!(bytes(1000), "1000 bytes");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(512 << 20), "512 MiB");
        assert_eq!(bytes(3 << 29), "1.5 GiB");
        assert_eq!(bytes(2 << 40), "2 TiB");
    }

    #[test]
    fn counters_grouped_by_device() {
        let v = json!({"_net0": {"tx_bytes": 5, "rx_bytes": 10}, "_disk0": {"read_ops": 1}});
        assert_eq!(
            counters(&v),
            "DEVICE  COUNTER   VALUE\n_disk0  read_ops  1\n_net0   rx_bytes  10\n        tx_bytes  5\n"
        );
        assert_eq!(counters(&json!({})), "no counters\n");
    }

    #[test]
    fn info_lines() {
        let v = json!({
            "state": "Running",
            "memory_actual_size": 256u64 << 20,
            "config": {
                "cpus": {"boot_vcpus": 2},
                "memory": {"size": 512u64 << 20},
                "payload": {"kernel": "/k", "cmdline": "console=ttyS0"},
                "disks": [{"path": "/d.img", "readonly": true, "id": "_disk0"}],
                "balloon": {"size": 268435456, "deflate_on_oom": true}
            }
        });
        let text = info(&v);
        assert!(text.starts_with("state:   Running\nvcpus:   2\n"), "{text}");
        assert!(
            text.contains("memory:  512 MiB (actual 256 MiB)\n"),
            "{text}"
        );
        assert!(
            text.contains("disk:    /d.img (id _disk0, readonly)\n"),
            "{text}"
        );
        assert!(
            text.contains("balloon: 256 MiB (deflate_on_oom)\n"),
            "{text}"
        );
    }
}
