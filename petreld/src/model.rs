//! petreld's data model: what is stored per VM and per template, the wire shapes of requests
//! and list pages, and the validation of names and labels.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use api::petreld::{
    merge_patch, DesiredState, HypervisorRequest, ObservedState, RestartPolicy, OBSERVED_STATES,
};
use api::VmConfig;

use super::net::{ManagedNet, NetRequest};

/// One VM as stored and as `GET /v1/vms/{id}` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VmRecord {
    /// Stable id (16 hex digits).
    pub id: String,
    /// Unique name.
    pub name: String,
    /// Labels (`key=value`).
    pub labels: BTreeMap<String, String>,
    /// What was asked.
    pub desired_state: DesiredState,
    /// What was seen.
    pub state: ObservedState,
    /// The VM's configuration as given (serial Tty is sent to petrel as a file in the VM's
    /// directory).
    pub config: VmConfig,
    /// The template it was made from, if any.
    pub template: Option<String>,
    /// The hypervisor asked for.
    pub hypervisor_requested: HypervisorRequest,
    /// The hypervisor chosen when the VM was created (`kvm` or `mshv`).
    pub hypervisor: String,
    /// Restart policy.
    pub restart: RestartPolicy,
    /// Times petreld restarted it by itself.
    pub restart_count: u32,
    /// The petrel process, while there is one.
    pub pid: Option<u32>,
    /// Start time of `pid` in clock ticks since boot (tells a reused pid apart).
    #[serde(skip)]
    pub pid_start: Option<u64>,
    /// petrel's API socket.
    pub api_socket: Option<String>,
    /// Why the VM last stopped or failed.
    pub exit_reason: Option<String>,
    /// The network interfaces petreld makes taps for (given to petrel as fds).
    #[serde(default)]
    pub net: Vec<ManagedNet>,
    /// Creation time, RFC 3339 UTC.
    pub created_at: String,
    /// Last change, RFC 3339 UTC.
    pub updated_at: String,
    /// Description, tags and the template version it came from.
    #[serde(flatten, default)]
    pub meta: VmMeta,
}

/// What a VM is beside its configuration: free text and tags for people and tools, and
/// which version of its template it was made from (filterable in `GET /v1/vms`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmMeta {
    /// Free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Free-form tags.
    #[serde(default)]
    pub tags: Vec<String>,
    /// The version of `template` it was made from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template_version: Option<u32>,
}

/// Longest description of a VM or template.
pub const MAX_DESCRIPTION: usize = 1024;
/// Most tags on one VM.
pub const MAX_TAGS: usize = 32;

/// Checks a description and tags: at most [`MAX_DESCRIPTION`] bytes; at most [`MAX_TAGS`]
/// tags of 1 to 63 letters, digits, `.`, `_`, `-`, none twice.
pub fn validate_meta(description: Option<&str>, tags: &[String]) -> Result<(), String> {
    if description.is_some_and(|d| d.len() > MAX_DESCRIPTION) {
        return Err(format!("description: longer than {MAX_DESCRIPTION} bytes"));
    }
    if tags.len() > MAX_TAGS {
        return Err(format!("tags: {} tags (at most {MAX_TAGS})", tags.len()));
    }
    for (i, t) in tags.iter().enumerate() {
        let ok = (1..=63).contains(&t.len())
            && t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if !ok {
            return Err(format!(
                "tags: {t:?} is not 1 to 63 letters, digits, '.', '_' or '-'"
            ));
        }
        if tags[..i].contains(t) {
            return Err(format!("tags: {t:?} is given twice"));
        }
    }
    Ok(())
}

/// `POST /v1/vms`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateVm {
    /// Unique name.
    pub name: String,
    /// Labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// A full configuration (or `template`).
    #[serde(default)]
    pub config: Option<serde_json::Value>,
    /// A template's name (or `config`).
    #[serde(default)]
    pub template: Option<String>,
    /// A JSON merge patch (RFC 7386) applied to the template's configuration.
    #[serde(default)]
    pub overrides: Option<serde_json::Value>,
    /// Restart policy (default never).
    #[serde(default)]
    pub restart: RestartPolicy,
    /// Hypervisor (default auto).
    #[serde(default)]
    pub hypervisor: HypervisorRequest,
    /// Start it at once (default true).
    #[serde(default = "yes")]
    pub start: bool,
    /// Network interfaces petreld creates taps for.
    #[serde(default)]
    pub net: Vec<NetRequest>,
    /// Make the VM from another VM's snapshot (instead of `config` or `template`): its
    /// configuration, and its memory and devices as they were; it starts at once.
    #[serde(default)]
    pub snapshot: Option<crate::snapshots::SnapshotRef>,
    /// The template's version to use (default: its latest).
    #[serde(default)]
    pub template_version: Option<u32>,
    /// Free text.
    #[serde(default)]
    pub description: Option<String>,
    /// Free-form tags.
    #[serde(default)]
    pub tags: Vec<String>,
}

fn yes() -> bool {
    true
}

/// A named VM configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Template {
    /// Unique name.
    pub name: String,
    /// Free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The configuration.
    pub config: VmConfig,
    /// Creation time, RFC 3339 UTC (set by petreld).
    #[serde(default)]
    pub created_at: String,
    /// Its version, from 1 (set by petreld; `GET /v1/templates/{name}` shows the latest).
    #[serde(default)]
    pub version: u32,
}

/// How `GET /v1/vms` sorts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortKey {
    /// By name.
    Name,
    /// By creation time (then id).
    Created,
}

/// Filters, order and page of `GET /v1/vms`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListQuery {
    /// Observed state.
    pub state: Option<ObservedState>,
    /// Exact name.
    pub name: Option<String>,
    /// Every `key=value` must match.
    pub labels: Vec<(String, String)>,
    /// Chosen hypervisor.
    pub hypervisor: Option<String>,
    /// Every tag must be on the VM.
    pub tags: Vec<String>,
    /// Made from this template.
    pub template: Option<String>,
    /// Its description contains this text.
    pub description: Option<String>,
    /// Sort key.
    pub sort: SortKey,
    /// Descending.
    pub descending: bool,
    /// Page size.
    pub limit: usize,
    /// Continue after this position (from the previous page's token).
    pub after: Option<Cursor>,
}

/// A position in a sorted listing: the last item's sort key and id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    /// Sort field (`name` or `created`) and direction, e.g. `-name`.
    pub sort: String,
    /// The last item's key.
    pub key: String,
    /// The last item's id.
    pub id: String,
}

/// Default page size.
pub const DEFAULT_LIMIT: usize = 100;
/// Largest page size.
pub const MAX_LIMIT: usize = 1000;

/// One page of `GET /v1/vms`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VmPage {
    /// The VMs.
    pub items: Vec<VmRecord>,
    /// Pass as `continue` for the next page; absent on the last one.
    #[serde(rename = "continue", skip_serializing_if = "Option::is_none", default)]
    pub next: Option<String>,
}

/// Checks a VM or template name: 1-63 of `[A-Za-z0-9._-]`, starting with a letter or digit.
pub fn validate_name(field: &str, name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{field}: {name:?} must be 1-63 letters, digits, '.', '_' or '-', starting with a \
             letter or digit"
        ))
    }
}

/// Whether `s` has the shape of a VM id ([`crate::new_id`]: 16 lowercase hex digits).
pub fn looks_like_id(s: &str) -> bool {
    s.len() == 16 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Checks a VM's name: a name, and not one that looks like an id (VM paths take either, so
/// a name shaped like an id could shadow another VM or be shadowed by it).
pub fn validate_vm_name(name: &str) -> Result<(), String> {
    validate_name("name", name)?;
    if looks_like_id(name) {
        return Err(format!(
            "name: {name:?} looks like a VM id (16 hex digits); VM paths take an id or a name, \
             so a name must not have that shape"
        ));
    }
    Ok(())
}

/// Checks labels: keys like names (plus '/'), values up to 255 printable characters, at most 64.
pub fn validate_labels(labels: &BTreeMap<String, String>) -> Result<(), String> {
    if labels.len() > 64 {
        return Err("labels: more than 64".into());
    }
    for (k, v) in labels {
        let key_ok = !k.is_empty()
            && k.len() <= 63
            && k.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'/'));
        if !key_ok {
            return Err(format!(
                "labels: key {k:?} must be 1-63 letters, digits, '.', '_', '-' or '/'"
            ));
        }
        if v.len() > 255 || v.chars().any(char::is_control) {
            return Err(format!(
                "labels.{k}: value must be at most 255 characters without controls"
            ));
        }
    }
    Ok(())
}

/// Seconds since the epoch as RFC 3339 UTC (`2024-01-02T03:04:05Z`).
pub fn rfc3339(secs: u64) -> String {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Now as RFC 3339 UTC.
pub fn now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    rfc3339(secs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn names_and_labels() {
        assert!(validate_name("name", "web-1.a_b").is_ok());
        assert!(validate_vm_name("web-1.a_b").is_ok());
        assert!(validate_vm_name("0123456789abcdef").is_err());
        assert!(validate_vm_name("0123456789abcdefg").is_ok());
        assert!(validate_vm_name("0123456789ABCDEF").is_ok());
        for bad in ["", "-x", "a b", "é", &"x".repeat(64)] {
            assert!(validate_name("name", bad).is_err(), "{bad:?}");
        }
        let mut l = BTreeMap::new();
        l.insert("app/tier".to_string(), "web".to_string());
        assert!(validate_labels(&l).is_ok());
        l.insert("bad key".to_string(), String::new());
        assert!(validate_labels(&l).is_err());
    }

    #[test]
    fn merge_patch_rfc7386() {
        let mut t = json!({"a": {"b": 1, "c": 2}, "d": 3});
        merge_patch(&mut t, &json!({"a": {"b": null, "e": 4}, "d": [1]}));
        assert_eq!(t, json!({"a": {"c": 2, "e": 4}, "d": [1]}));
    }

    #[test]
    fn enums_and_time() {
        assert_eq!(
            "on-failure".parse::<RestartPolicy>(),
            Ok(RestartPolicy::OnFailure)
        );
        assert!("sometimes"
            .parse::<RestartPolicy>()
            .unwrap_err()
            .contains("always"));
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_709_251_199), "2024-02-29T23:59:59Z");
    }
}
