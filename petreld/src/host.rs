//! What the host offers: CPUs and memory (from the kernel), hypervisors (from `petrel
//! --capabilities`, so petreld needs no hypervisor code), the hypervisor a VM gets, and
//! admission against the overcommit ratios.

use std::path::Path;
use std::process::Command;

use serde::Serialize;
use serde_json::Value;

use super::model::HypervisorRequest;

/// The host as petreld sees it.
#[derive(Debug, Clone, Serialize)]
pub struct Host {
    /// Online CPUs.
    pub cpus: u64,
    /// Physical memory in bytes.
    pub memory_bytes: u64,
    /// petrel's `--capabilities` report (hypervisors, auto choice, boot protocols), or
    /// `{"error": …}` when petrel could not be run.
    pub capabilities: Value,
}

/// Online CPUs.
fn cpus() -> u64 {
    std::thread::available_parallelism().map_or(1, |n| n.get() as u64)
}

/// `MemTotal` from /proc/meminfo, in bytes.
fn memory() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
            let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kib * 1024)
        })
        .unwrap_or(0)
}

/// Probes the host, running `petrel --capabilities` (with the mshv gate when on).
pub fn probe(petrel: &Path, mshv_gate: bool) -> Host {
    let mut cmd = Command::new(petrel);
    cmd.arg("--capabilities");
    if mshv_gate {
        cmd.arg("--feature-gates").arg("mshv");
    }
    let capabilities = match cmd.output() {
        Ok(out) if out.status.success() => serde_json::from_slice(&out.stdout).unwrap_or_else(
            |e| serde_json::json!({"error": format!("petrel --capabilities: bad JSON: {e}")}),
        ),
        Ok(out) => serde_json::json!({"error": format!(
            "petrel --capabilities: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )}),
        Err(e) => serde_json::json!({"error": format!("run {}: {e}", petrel.display())}),
    };
    Host {
        cpus: cpus(),
        memory_bytes: memory(),
        capabilities,
    }
}

impl Host {
    /// Why hypervisor `name` cannot be used, or `None` when it can.
    fn problem(&self, name: &str, mshv_gate: bool) -> Option<String> {
        if let Some(e) = self.capabilities.get("error").and_then(Value::as_str) {
            return Some(e.to_string());
        }
        let hv = &self.capabilities["hypervisors"][name];
        let status = hv["status"].as_str().unwrap_or("unknown");
        let device = hv["device"].as_str().unwrap_or(name);
        if status != "available" {
            return Some(format!("{device} is {status}"));
        }
        if hv["built_in"] == Value::Bool(false) {
            return Some(format!("petrel was built without the {name} backend"));
        }
        if name == "mshv" && !mshv_gate {
            return Some("the mshv feature gate is off".into());
        }
        None
    }

    /// Whether hypervisor `name` can run VMs here.
    pub fn available(&self, name: &str, mshv_gate: bool) -> bool {
        self.problem(name, mshv_gate).is_none()
    }

    /// The hypervisor a VM asking for `req` gets, with the reason; an error (422) names what
    /// is missing.
    pub fn select(
        &self,
        req: HypervisorRequest,
        mshv_gate: bool,
    ) -> Result<(String, String), String> {
        let pick = |name: &str, why: &str| match self.problem(name, mshv_gate) {
            None => Ok((name.to_string(), why.to_string())),
            Some(p) => Err(format!("hypervisor {name} is not available: {p}")),
        };
        match req {
            HypervisorRequest::Kvm => pick("kvm", "requested"),
            HypervisorRequest::Mshv => pick("mshv", "requested"),
            HypervisorRequest::Auto => {
                if mshv_gate && self.available("mshv", mshv_gate) {
                    return Ok((
                        "mshv".into(),
                        "auto: /dev/mshv exists and the mshv gate is on".into(),
                    ));
                }
                let why = if mshv_gate {
                    "auto: mshv unavailable, KVM"
                } else {
                    "auto: KVM (mshv gate off)"
                };
                pick("kvm", why).map_err(|e| format!("no hypervisor for auto: {e}"))
            }
        }
    }
}

/// What VMs that should run already use.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Allocation {
    /// Guest memory, bytes.
    pub memory_bytes: u64,
    /// vCPUs.
    pub vcpus: u64,
}

/// Admission limits from the host and the overcommit ratios.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Guest memory petreld admits, bytes.
    pub memory_bytes: u64,
    /// vCPUs petreld admits.
    pub vcpus: u64,
}

impl Limits {
    /// The limits of `host` with these ratios.
    pub fn new(host: &Host, memory_overcommit: f64, cpu_overcommit: f64) -> Limits {
        Limits {
            memory_bytes: (host.memory_bytes as f64 * memory_overcommit) as u64,
            vcpus: (host.cpus as f64 * cpu_overcommit) as u64,
        }
    }

    /// Checks that a VM of `memory` bytes and `vcpus` fits next to `used` (`used` is zero to
    /// check the VM alone). The error names the numbers.
    pub fn admit(&self, used: Allocation, memory: u64, vcpus: u64) -> Result<(), String> {
        const MIB: u64 = 1 << 20;
        if used.memory_bytes.saturating_add(memory) > self.memory_bytes {
            return Err(format!(
                "memory.size: {} MiB does not fit: {} MiB of {} MiB admitted on this host \
                 (host memory times memory_overcommit) are in use",
                memory / MIB,
                used.memory_bytes / MIB,
                self.memory_bytes / MIB
            ));
        }
        if used.vcpus.saturating_add(vcpus) > self.vcpus {
            return Err(format!(
                "cpus.boot_vcpus: {vcpus} vCPUs do not fit: {} of {} admitted on this host \
                 (host CPUs times cpu_overcommit) are in use",
                used.vcpus, self.vcpus
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn host(kvm: &str, mshv: &str) -> Host {
        Host {
            cpus: 2,
            memory_bytes: 1 << 30,
            capabilities: json!({"hypervisors": {
                "kvm": {"device": "/dev/kvm", "status": kvm, "built_in": true},
                "mshv": {"device": "/dev/mshv", "status": mshv, "built_in": true},
            }}),
        }
    }

    #[test]
    fn selection() {
        let h = host("available", "missing");
        assert_eq!(h.select(HypervisorRequest::Auto, true).unwrap().0, "kvm");
        let e = h.select(HypervisorRequest::Mshv, true).unwrap_err();
        assert!(e.contains("/dev/mshv is missing"), "{e}");
        let h = host("available", "available");
        assert_eq!(h.select(HypervisorRequest::Auto, true).unwrap().0, "mshv");
        assert_eq!(h.select(HypervisorRequest::Auto, false).unwrap().0, "kvm");
        assert!(h.select(HypervisorRequest::Mshv, false).is_err());
        let h = host("missing", "missing");
        assert!(h.select(HypervisorRequest::Auto, false).is_err());
    }

    #[test]
    fn admission() {
        let l = Limits::new(&host("available", "missing"), 1.5, 4.0);
        assert_eq!(l.vcpus, 8);
        assert!(l.admit(Allocation::default(), 1 << 30, 1).is_ok());
        let used = Allocation {
            memory_bytes: 1 << 30,
            vcpus: 7,
        };
        let e = l.admit(used, 1 << 30, 1).unwrap_err();
        assert!(e.contains("memory.size"), "{e}");
        let e = l.admit(used, 1 << 20, 2).unwrap_err();
        assert!(e.contains("boot_vcpus"), "{e}");
    }
}
