//! `GET /metrics`: Prometheus text format. Per VM (labels `id`, `name`, `hypervisor`): state,
//! vCPUs, memory, restarts, whether its petrel answers, its CPU time and memory ([`usage`]:
//! cgroup or process), and each device counter read from the VM's petrel (`vm.counters`:
//! disk and net I/O among them). Then the host's series ([`host`]). The Prometheus
//! configuration, alerting rules and Grafana dashboard built on them are in
//! `resources/monitoring/`.

mod host;
mod pools;
mod usage;

use std::fmt::Write;
use std::time::Duration;

use petrel_http::Client;

use super::model::{ObservedState, VmRecord, OBSERVED_STATES};
use super::Daemon;

/// A per-VM series: name, type, help, value.
type PerVm = (
    &'static str,
    &'static str,
    &'static str,
    fn(&VmRecord) -> u64,
);

/// Escapes a label value (`\`, `"` and newlines).
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn labels(vm: &VmRecord) -> String {
    format!(
        "id=\"{}\",name=\"{}\",hypervisor=\"{}\"",
        escape(&vm.id),
        escape(&vm.name),
        escape(&vm.hypervisor)
    )
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// The whole exposition.
pub fn render(daemon: &Daemon) -> String {
    let vms = daemon.store().all_vms().unwrap_or_default();
    let mut out = String::new();
    header(&mut out, "petreld_vms", "gauge", "VMs by observed state.");
    for s in OBSERVED_STATES {
        let n = vms.iter().filter(|v| v.state == s).count();
        let _ = writeln!(out, "petreld_vms{{state=\"{s}\"}} {n}");
    }
    header(
        &mut out,
        "petreld_vm_state",
        "gauge",
        "Observed state of each VM: 1 for the current state, 0 for the others.",
    );
    for vm in &vms {
        for s in OBSERVED_STATES {
            let v = u8::from(vm.state == s);
            let _ = writeln!(out, "petreld_vm_state{{{},state=\"{s}\"}} {v}", labels(vm));
        }
    }
    let simple: [PerVm; 3] = [
        ("petreld_vm_vcpus", "gauge", "vCPUs of the VM.", |v| {
            u64::from(v.config.cpus.boot_vcpus)
        }),
        (
            "petreld_vm_memory_bytes",
            "gauge",
            "Guest memory of the VM.",
            |v| v.config.memory.size,
        ),
        (
            "petreld_vm_restarts_total",
            "counter",
            "Times petreld restarted the VM by itself.",
            |v| u64::from(v.restart_count),
        ),
    ];
    for (name, kind, help, value) in simple {
        header(&mut out, name, kind, help);
        for vm in &vms {
            let _ = writeln!(out, "{name}{{{}}} {}", labels(vm), value(vm));
        }
    }
    let hierarchy = if daemon.config.cgroups {
        crate::cgroup::detect()
    } else {
        None
    };
    let live: Vec<(&VmRecord, crate::Runtime)> = vms
        .iter()
        .filter(|vm| matches!(vm.state, ObservedState::Running | ObservedState::Paused))
        .filter_map(|vm| Some((vm, daemon.runtime(&vm.id)?)))
        .collect();
    let usages: Vec<_> = live
        .iter()
        .filter_map(|(vm, rt)| {
            Some((
                *vm,
                usage::of_vm(hierarchy.as_ref(), &vm.id, rt.process.pid)?,
            ))
        })
        .collect();
    header(
        &mut out,
        "petreld_vm_cpu_seconds_total",
        "counter",
        "CPU time of the VM's petrel (its cgroup's, or the process's).",
    );
    for (vm, u) in &usages {
        let _ = writeln!(
            out,
            "petreld_vm_cpu_seconds_total{{{},source=\"{}\"}} {}",
            labels(vm),
            u.source,
            u.cpu_seconds
        );
    }
    header(
        &mut out,
        "petreld_vm_resident_memory_bytes",
        "gauge",
        "Memory charged to the VM's petrel (its cgroup's, or the process's RSS).",
    );
    for (vm, u) in &usages {
        let _ = writeln!(
            out,
            "petreld_vm_resident_memory_bytes{{{},source=\"{}\"}} {}",
            labels(vm),
            u.source,
            u.memory_bytes
        );
    }
    let mut counters = String::new();
    let mut up = String::new();
    for (vm, rt) in &live {
        let answered = device_counters(&mut counters, vm, rt);
        let _ = writeln!(up, "petreld_vm_up{{{}}} {}", labels(vm), u8::from(answered));
    }
    header(
        &mut out,
        "petreld_vm_up",
        "gauge",
        "1 when the running or paused VM's petrel answered vm.counters within 1 s, else 0.",
    );
    out.push_str(&up);
    header(
        &mut out,
        "petreld_vm_device_counter",
        "counter",
        "Device counters reported by the VM's petrel (vm.counters).",
    );
    out.push_str(&counters);
    let committed = daemon.allocation(None).unwrap_or_default();
    host::render(
        &mut out,
        &host::HostFacts {
            cpus: daemon.host().cpus,
            committed,
            overcommit: (
                daemon.config.memory_overcommit,
                daemon.config.cpu_overcommit,
            ),
        },
    );
    crate::network::metrics::render(&mut out, daemon);
    pools::render(&mut out, daemon);
    out
}

/// Appends `vm`'s device counters, asked of its petrel, to `out`; false when it did not
/// answer in time or answered nonsense.
fn device_counters(out: &mut String, vm: &VmRecord, rt: &crate::Runtime) -> bool {
    let client = Client::new(&rt.socket).with_timeout(Duration::from_secs(1));
    let Ok(r) = client.get(api::request::Endpoint::VmCounters.path()) else {
        return false;
    };
    let Ok(serde_json::Value::Object(devices)) = r.json_body::<serde_json::Value>() else {
        return false;
    };
    for (device, counters) in devices {
        let Some(counters) = counters.as_object() else {
            continue;
        };
        for (counter, value) in counters {
            if let Some(v) = value.as_u64() {
                let _ = writeln!(
                    out,
                    "petreld_vm_device_counter{{{},device=\"{}\",counter=\"{}\"}} {v}",
                    labels(vm),
                    escape(&device),
                    escape(counter)
                );
            }
        }
    }
    true
}
