//! `cpu-config` (Firecracker's custom CPU template) in petrel's Firecracker dialect, and on the
//! real Firecracker where its binary is present: the test guest (`action=cpuid`) reads CPUID
//! leaf 1 and the PAT MSR; a template that clears ECX bit 21 (x2APIC) and makes PAT entry
//! 0 write-through changes exactly those, on both VMMs. (Under PVM the guest's CPUID keeps the
//! bits of features it cannot be kept from using, e.g. SSE3, whatever the table says: the
//! test changes one PVM lets the table decide.) Templates petrel cannot apply are
//! refused with a 400 naming the section.

mod fc_support;

use std::time::Duration;

use fc_support::{assert_fault, ScratchDir, Vmm, Which};
use petrel_http::Method::Put;
use petrel_tests::{require_kvm, GuestKind};
use serde_json::{json, Value};

/// PAT with entry 0 write-through (4) instead of write-back (6).
const PAT: u64 = 0x0007_0406_0007_0404;

/// (leaf 1 ECX, PAT) the guest printed, booted through the API with `cpu_config`.
fn boot(which: Which, name: &str, cpu_config: Option<Value>) -> (u32, u64) {
    let dir = ScratchDir::new(name);
    let kernel = petrel_tests::guest_image(GuestKind::Pvh);
    let mut vmm = Vmm::spawn(which, &dir.0, &[]);
    assert!(
        vmm.wait_api(Duration::from_secs(10)),
        "no API\n{}",
        vmm.dump()
    );
    let mut calls = vec![
        (
            "/boot-source",
            json!({"kernel_image_path": kernel, "boot_args": "action=cpuid"}),
        ),
        (
            "/machine-config",
            json!({"vcpu_count": 1, "mem_size_mib": 64}),
        ),
    ];
    if let Some(c) = cpu_config {
        calls.push(("/cpu-config", c));
    }
    calls.push(("/actions", json!({"action_type": "InstanceStart"})));
    for (path, body) in calls {
        let r = vmm.call(Put, path, Some(&body.to_string()));
        assert_eq!(
            r.status,
            204,
            "{which:?} {path}: {}",
            String::from_utf8_lossy(&r.body)
        );
    }
    // The whole line: the output is read while the guest writes it.
    vmm.wait_for(Duration::from_secs(60), |o| {
        o.split_inclusive('\n')
            .any(|l| l.trim_start().starts_with("MSR 0x277=") && l.ends_with('\n'))
    });
    let out = vmm.stdout();
    let ecx = out
        .lines()
        .find_map(|l| l.strip_prefix("CPUID 0x1 "))
        .and_then(|l| l.split_whitespace().find_map(|w| w.strip_prefix("ecx=0x")))
        .and_then(|h| u32::from_str_radix(h.trim(), 16).ok());
    let msr = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("MSR 0x277=0x"))
        .and_then(|h| u64::from_str_radix(h.trim(), 16).ok());
    match (ecx, msr) {
        (Some(ecx), Some(msr)) => (ecx, msr),
        _ => panic!("{which:?} {name}: no CPUID/MSR lines\n{}", vmm.dump()),
    }
}

fn template() -> Value {
    json!({
        "cpuid_modifiers": [{"leaf": "0x1", "subleaf": "0x0", "flags": 0, "modifiers": [
            {"register": "ecx", "bitmap": format!("0b{}0{}", "x".repeat(10), "x".repeat(21))}
        ]}],
        "msr_modifiers": [{"addr": "0x277", "bitmap": format!("0b{PAT:064b}")}]
    })
}

#[test]
fn a_cpu_template_changes_cpuid_and_msrs_as_on_firecracker() {
    require_kvm!();
    let mut vmms = vec![Which::Petrel];
    match fc_support::firecracker_bin() {
        Some(_) => vmms.push(Which::Firecracker),
        None => petrel_tests::skip("the Firecracker binary is absent: petrel checked alone"),
    }
    for which in vmms {
        let tag = which as u8;
        let (ecx0, msr0) = boot(which, &format!("cpu-base-{tag}"), None);
        let (ecx1, msr1) = boot(which, &format!("cpu-tmpl-{tag}"), Some(template()));
        println!("{which:?}: ecx {ecx0:#x} → {ecx1:#x}, PAT {msr0:#x} → {msr1:#x}");
        assert_eq!(ecx0 >> 21 & 1, 1, "{which:?}: no x2APIC bit to clear");
        assert_eq!(ecx1, ecx0 & !(1 << 21), "{which:?}: ECX");
        assert_eq!(msr1, PAT, "{which:?}: PAT");
    }
}

#[test]
fn cpu_templates_petrel_cannot_apply_are_refused_by_name() {
    let dir = ScratchDir::new("cpu-bad");
    let mut vmm = Vmm::spawn(Which::Petrel, &dir.0, &[]);
    assert!(
        vmm.wait_api(Duration::from_secs(10)),
        "no API\n{}",
        vmm.dump()
    );
    for (body, word) in [
        (json!({"kvm_capabilities": ["!56"]}), "kvm_capabilities"),
        (
            json!({"reg_modifiers": [{"addr": "0x1", "bitmap": "0b1"}]}),
            "aarch64",
        ),
        (
            json!({"cpuid_modifiers": [{"leaf": 1, "subleaf": 0, "flags": 0,
                   "modifiers": [{"register": "eax", "bitmap": "1"}]}]}),
            "0b",
        ),
    ] {
        let r = vmm.call(Put, "/cpu-config", Some(&body.to_string()));
        assert_fault(&r, &body.to_string());
        let msg = r.json_body::<Value>().unwrap()["fault_message"].to_string();
        assert!(msg.contains(word), "{body}: {msg}");
    }
    let r = vmm.call(Put, "/cpu-config", Some(&template().to_string()));
    assert_eq!(r.status, 204, "{}", String::from_utf8_lossy(&r.body));
    // A leaf the guest's CPUID does not have: refused at InstanceStart, naming it.
    let kernel = petrel_tests::guest_image(GuestKind::Pvh);
    let body = json!({"cpuid_modifiers": [{"leaf": "0x4fffffff", "subleaf": "0x0", "flags": 0,
        "modifiers": [{"register": "eax", "bitmap": "0b1"}]}]});
    assert_eq!(
        vmm.call(Put, "/cpu-config", Some(&body.to_string())).status,
        204
    );
    let b = json!({"kernel_image_path": kernel, "boot_args": "action=cpuid"});
    assert_eq!(
        vmm.call(Put, "/boot-source", Some(&b.to_string())).status,
        204
    );
    let r = vmm.call(
        Put,
        "/actions",
        Some(&json!({"action_type": "InstanceStart"}).to_string()),
    );
    assert_fault(&r, "InstanceStart with a leaf that is not there");
    let msg = r.json_body::<Value>().unwrap()["fault_message"].to_string();
    assert!(msg.contains("0x4fffffff"), "{msg}");
}
