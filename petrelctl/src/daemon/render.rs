//! petreld's answers for people: VM and template tables, one VM or template as aligned
//! fields, the host and the feature gates. Lenient like [`crate::output`]: a missing
//! field is shown as `-`, never an error.

use serde_json::Value;

use crate::output::{bytes, table, Fields};

pub use crate::output::scalar;

/// A field as text, `-` when absent or null.
fn field(v: &Value, pointer: &str) -> String {
    match v.pointer(pointer) {
        None | Some(Value::Null) => "-".to_string(),
        Some(x) => scalar(x),
    }
}

/// A byte count field as `512 MiB`, `-` when absent.
fn size(v: &Value, pointer: &str) -> String {
    v.pointer(pointer)
        .and_then(Value::as_u64)
        .map_or_else(|| "-".to_string(), bytes)
}

/// Seconds since the epoch of an RFC 3339 UTC time `YYYY-MM-DDTHH:MM:SSZ`.
pub fn parse_rfc3339(s: &str) -> Option<u64> {
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' {
        return None;
    }
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hh, mm, ss) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return None;
    }
    // Days from civil (Howard Hinnant's algorithm), the inverse of the daemon's rfc3339.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(days * 86_400 + hh * 3600 + mm * 60 + ss).ok()
}

/// `45s`, `12m`, `3h`, `5d` since `created` (`-` when unreadable).
pub fn age(created: &str, now: u64) -> String {
    let Some(t) = parse_rfc3339(created) else {
        return "-".to_string();
    };
    let s = now.saturating_sub(t);
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86_400 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn items(v: &Value) -> &[Value] {
    v.get("items")
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

/// `VM web (3f2a…): running`.
pub fn vm_summary(vm: &Value, what: &str) -> String {
    format!(
        "VM {} ({}) {what}: {}",
        field(vm, "/name"),
        field(vm, "/id"),
        field(vm, "/state")
    )
}

/// `vm list`: ID, NAME, STATE, CPUS, MEMORY, HYPERVISOR, AGE; a note when there are more.
pub fn vm_table(page: &Value) -> String {
    let now = now();
    let rows: Vec<Vec<String>> = items(page)
        .iter()
        .map(|vm| {
            vec![
                field(vm, "/id"),
                field(vm, "/name"),
                field(vm, "/state"),
                field(vm, "/config/cpus/boot_vcpus"),
                size(vm, "/config/memory/size"),
                field(vm, "/hypervisor"),
                age(
                    vm.get("created_at").and_then(Value::as_str).unwrap_or(""),
                    now,
                ),
            ]
        })
        .collect();
    let mut out = if rows.is_empty() {
        "no VMs\n".to_string()
    } else {
        table(
            &["ID", "NAME", "STATE", "CPUS", "MEMORY", "HYPERVISOR", "AGE"],
            &rows,
        )
    };
    if page.get("continue").is_some_and(Value::is_string) {
        out.push_str("(more VMs: use --all, or a larger --limit)\n");
    }
    out
}

/// `vm get`: one VM.
pub fn vm(vm: &Value) -> String {
    let mut f = Fields::new();
    f.push("id", field(vm, "/id"));
    f.push("name", field(vm, "/name"));
    let state = field(vm, "/state");
    let desired = field(vm, "/desired_state");
    if desired != state && desired != "-" {
        f.push("state", format!("{state} (desired {desired})"));
    } else {
        f.push("state", state);
    }
    let hv = field(vm, "/hypervisor");
    let requested = field(vm, "/hypervisor_requested");
    f.push("hypervisor", format!("{hv} (requested {requested})"));
    f.push("vcpus", field(vm, "/config/cpus/boot_vcpus"));
    f.push("memory", size(vm, "/config/memory/size"));
    f.push_opt("kernel", vm.pointer("/config/payload/kernel").map(scalar));
    f.push_opt("cmdline", vm.pointer("/config/payload/cmdline").map(scalar));
    f.push_opt(
        "template",
        vm.get("template").filter(|t| !t.is_null()).map(scalar),
    );
    if let Some(labels) = vm.get("labels").and_then(Value::as_object) {
        if !labels.is_empty() {
            let list: Vec<String> = labels
                .iter()
                .map(|(k, v)| format!("{k}={}", scalar(v)))
                .collect();
            f.push("labels", list.join(","));
        }
    }
    f.push(
        "restart",
        format!(
            "{} (restarted {} times)",
            field(vm, "/restart"),
            field(vm, "/restart_count")
        ),
    );
    f.push("pid", field(vm, "/pid"));
    f.push("api socket", field(vm, "/api_socket"));
    f.push_opt(
        "exit reason",
        vm.get("exit_reason").filter(|t| !t.is_null()).map(scalar),
    );
    f.push("created", field(vm, "/created_at"));
    f.push("updated", field(vm, "/updated_at"));
    f.render()
}

/// `template list`: NAME, CPUS, MEMORY, KERNEL, AGE.
pub fn template_table(v: &Value) -> String {
    let now = now();
    let rows: Vec<Vec<String>> = items(v)
        .iter()
        .map(|t| {
            vec![
                field(t, "/name"),
                field(t, "/config/cpus/boot_vcpus"),
                size(t, "/config/memory/size"),
                field(t, "/config/payload/kernel"),
                age(
                    t.get("created_at").and_then(Value::as_str).unwrap_or(""),
                    now,
                ),
            ]
        })
        .collect();
    if rows.is_empty() {
        return "no templates\n".to_string();
    }
    table(&["NAME", "CPUS", "MEMORY", "KERNEL", "AGE"], &rows)
}

/// `snapshot list`: a VM's snapshots.
pub fn snapshot_table(v: &Value) -> String {
    let now = now();
    let rows: Vec<Vec<String>> = items(v)
        .iter()
        .map(|s| {
            vec![
                field(s, "/name"),
                field(s, "/state"),
                size(s, "/size_bytes"),
                age(
                    s.get("created_at").and_then(Value::as_str).unwrap_or(""),
                    now,
                ),
            ]
        })
        .collect();
    if rows.is_empty() {
        return "no snapshots\n".to_string();
    }
    table(&["NAME", "STATE", "SIZE", "AGE"], &rows)
}

/// `vm snapshot` and `snapshot get`: one snapshot on a line.
pub fn snapshot(s: &Value) -> String {
    format!(
        "snapshot {} of VM {}: {}, {}\n",
        field(s, "/name"),
        field(s, "/vm_id"),
        field(s, "/state"),
        size(s, "/size_bytes")
    )
}

/// `template get`: one template.
pub fn template(t: &Value) -> String {
    let mut f = Fields::new();
    f.push("name", field(t, "/name"));
    f.push_opt("version", t.get("version").map(scalar));
    f.push_opt("description", t.get("description").map(scalar));
    f.push("vcpus", field(t, "/config/cpus/boot_vcpus"));
    f.push("memory", size(t, "/config/memory/size"));
    f.push_opt("kernel", t.pointer("/config/payload/kernel").map(scalar));
    f.push_opt("cmdline", t.pointer("/config/payload/cmdline").map(scalar));
    f.push("created", field(t, "/created_at"));
    f.render()
}

/// `host`: hypervisors, auto selection, CPUs, memory, admission.
pub fn host(v: &Value) -> String {
    let mut f = Fields::new();
    let yes_no = |p: &str| match v.pointer(p).and_then(Value::as_bool) {
        Some(true) => "available".to_string(),
        Some(false) => "not available".to_string(),
        None => "-".to_string(),
    };
    f.push("kvm", yes_no("/kvm"));
    f.push("mshv", yes_no("/mshv"));
    f.push(
        "auto",
        format!(
            "{} ({})",
            field(v, "/auto/hypervisor"),
            field(v, "/auto/reason")
        ),
    );
    f.push("cpus", field(v, "/cpus"));
    f.push("memory", size(v, "/memory_bytes"));
    let pair = |p: &str| {
        format!(
            "{} vCPUs, {}",
            field(v, &format!("{p}/vcpus")),
            size(v, &format!("{p}/memory_bytes"))
        )
    };
    f.push("admitted", pair("/admitted"));
    f.push("allocated", pair("/allocated"));
    f.push(
        "overcommit",
        format!(
            "memory {}, cpu {}",
            field(v, "/overcommit/memory"),
            field(v, "/overcommit/cpu")
        ),
    );
    f.push("petrel", field(v, "/petrel"));
    f.render()
}

/// `gates`: NAME, STAGE, DEFAULT, ENABLED, DESCRIPTION.
pub fn gates(v: &Value) -> String {
    let rows: Vec<Vec<String>> = items(v)
        .iter()
        .map(|g| {
            ["/name", "/stage", "/default", "/enabled", "/description"]
                .iter()
                .map(|p| field(g, p))
                .collect()
        })
        .collect();
    if rows.is_empty() {
        return "no feature gates\n".to_string();
    }
    table(
        &["NAME", "STAGE", "DEFAULT", "ENABLED", "DESCRIPTION"],
        &rows,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn time_and_age() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339("2024-02-29T23:59:59Z"), Some(1_709_251_199));
        assert_eq!(parse_rfc3339("yesterday"), None);
        assert_eq!(age("1970-01-01T00:00:00Z", 59), "59s");
        assert_eq!(age("1970-01-01T00:00:00Z", 7200), "2h");
        assert_eq!(age("1970-01-01T00:00:00Z", 3 * 86_400), "3d");
        assert_eq!(age("", 5), "-");
    }

    #[test]
    fn vm_rows() {
        let page = json!({"items": [{"id": "00ab", "name": "web", "state": "running",
            "hypervisor": "kvm", "created_at": "1970-01-01T00:00:00Z",
            "config": {"cpus": {"boot_vcpus": 1}, "memory": {"size": 67108864}}}],
            "continue": "t"});
        let text = vm_table(&page);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("ID    NAME  STATE    CPUS  MEMORY  HYPERVISOR  AGE"));
        assert!(lines[1].starts_with("00ab  web   running  1     64 MiB  kvm"));
        assert!(lines[2].contains("--all"));
        assert_eq!(vm_table(&json!({"items": []})), "no VMs\n");
    }
}
