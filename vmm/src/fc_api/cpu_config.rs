//! `PUT /cpu-config` and the config file's `cpu-config`: Firecracker's custom CPU template
//! (x86_64: `cpuid_modifiers` and `msr_modifiers`, each register given as a bitmap string
//! `0b…` of `0`, `1` and `x` — x keeps the bit) as petrel's [`CpuTemplate`], applied to every
//! vCPU at boot. `kvm_capabilities` (petrel does not toggle KVM capabilities) and the aarch64
//! sections are refused with a 400 naming them.

use api::cpu_template::{CpuTemplate, CpuidChange, CpuidRegister, MsrChange};
use serde::Deserialize;
use serde_json::Value;

use super::FcResult;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Body {
    #[serde(default)]
    kvm_capabilities: Vec<Value>,
    #[serde(default)]
    cpuid_modifiers: Vec<LeafModifier>,
    #[serde(default)]
    msr_modifiers: Vec<MsrModifier>,
    #[serde(default)]
    vcpu_features: Vec<Value>,
    #[serde(default)]
    reg_modifiers: Vec<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LeafModifier {
    leaf: Value,
    subleaf: Value,
    #[serde(default)]
    flags: u32,
    modifiers: Vec<RegisterModifier>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RegisterModifier {
    register: String,
    bitmap: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MsrModifier {
    addr: Value,
    bitmap: String,
}

fn err(why: impl std::fmt::Display) -> String {
    format!("Cpu config error: {why}")
}

/// A number given as JSON number, `"0x…"` or decimal string.
fn number(v: &Value, what: &str) -> FcResult<u64> {
    let n = match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
            Some(hex) => u64::from_str_radix(hex, 16).ok(),
            None => s.parse().ok(),
        },
        _ => None,
    };
    n.ok_or_else(|| err(format!("{what}: {v} is not a number")))
}

fn u32_of(v: &Value, what: &str) -> FcResult<u32> {
    u32::try_from(number(v, what)?).map_err(|_| err(format!("{what}: {v} does not fit 32 bits")))
}

/// `0b…` of at most `width` `0`/`1`/`x` (the last is bit 0; missing high bits are `x`) as
/// (mask, value).
fn bitmap(s: &str, width: u32, what: &str) -> FcResult<(u64, u64)> {
    let Some(bits) = s.strip_prefix("0b") else {
        return Err(err(format!("{what}: bitmap '{s}' does not start with 0b")));
    };
    if bits.is_empty() || bits.len() > width as usize {
        return Err(err(format!(
            "{what}: bitmap '{s}' has {} bits, 1 to {width} expected",
            bits.len()
        )));
    }
    let (mut mask, mut value) = (0u64, 0u64);
    for (i, c) in bits.chars().rev().enumerate() {
        match c {
            '0' => mask |= 1 << i,
            '1' => {
                mask |= 1 << i;
                value |= 1 << i;
            }
            'x' | 'X' => {}
            _ => return Err(err(format!("{what}: bitmap '{s}': '{c}' is not 0, 1 or x"))),
        }
    }
    Ok((mask, value))
}

fn register(name: &str) -> FcResult<CpuidRegister> {
    match name.to_ascii_lowercase().as_str() {
        "eax" => Ok(CpuidRegister::Eax),
        "ebx" => Ok(CpuidRegister::Ebx),
        "ecx" => Ok(CpuidRegister::Ecx),
        "edx" => Ok(CpuidRegister::Edx),
        _ => Err(err(format!(
            "register '{name}' is not a CPUID register (eax, ebx, ecx, edx)"
        ))),
    }
}

/// Parses and checks a custom CPU template.
pub fn parse(v: &Value) -> FcResult<CpuTemplate> {
    let body: Body = serde_json::from_value(v.clone()).map_err(|e| {
        format!("An error occurred when deserializing the json body of a request: {e}.")
    })?;
    if !body.kvm_capabilities.is_empty() {
        return Err(err(
            "kvm_capabilities are not supported by petrel (it does not change KVM \
             capabilities); cpuid_modifiers and msr_modifiers are",
        ));
    }
    if !body.vcpu_features.is_empty() || !body.reg_modifiers.is_empty() {
        return Err(err(
            "vcpu_features and reg_modifiers are aarch64 templates; this is an x86_64 host",
        ));
    }
    let mut t = CpuTemplate::default();
    for m in &body.cpuid_modifiers {
        let leaf = u32_of(&m.leaf, "leaf")?;
        let subleaf = u32_of(&m.subleaf, "subleaf")?;
        if m.flags > 1 {
            return Err(err(format!("leaf {leaf:#x}: flags {} (0 or 1)", m.flags)));
        }
        for r in &m.modifiers {
            let what = format!("leaf {leaf:#x} subleaf {subleaf:#x} {}", r.register);
            let (mask, value) = bitmap(&r.bitmap, 32, &what)?;
            t.cpuid.push(CpuidChange {
                leaf,
                subleaf,
                register: register(&r.register)?,
                mask: mask as u32,
                value: value as u32,
            });
        }
    }
    for m in &body.msr_modifiers {
        let index = u32_of(&m.addr, "addr")?;
        let (mask, value) = bitmap(&m.bitmap, 64, &format!("MSR {index:#x}"))?;
        t.msrs.push(MsrChange { index, mask, value });
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn firecracker_templates_parse_and_what_petrel_cannot_do_is_named() {
        let t = parse(&json!({
            "cpuid_modifiers": [{"leaf": "0x1", "subleaf": "0x0", "flags": 0, "modifiers": [
                {"register": "ecx", "bitmap": format!("0bx0{}1", "x".repeat(29))}
            ]}],
            "msr_modifiers": [{"addr": "0x10a", "bitmap": "0b1x0"}]
        }))
        .unwrap();
        assert_eq!(t.cpuid.len(), 1);
        assert_eq!(t.cpuid[0].leaf, 1);
        assert_eq!(t.cpuid[0].mask, 0x4000_0001);
        assert_eq!(t.cpuid[0].value, 1);
        assert_eq!(
            (t.msrs[0].index, t.msrs[0].mask, t.msrs[0].value),
            (0x10a, 0b101, 0b100)
        );
        let refused = |v: Value, word: &str| {
            let e = parse(&v).unwrap_err();
            assert!(e.contains(word), "{e}");
        };
        refused(json!({"kvm_capabilities": ["!56"]}), "kvm_capabilities");
        refused(
            json!({"vcpu_features": [{"index": 0, "bitmap": "0b1"}]}),
            "aarch64",
        );
        refused(
            json!({"cpuid_modifiers": [{"leaf": 1, "subleaf": 0, "flags": 0,
                   "modifiers": [{"register": "esi", "bitmap": "0b1"}]}]}),
            "esi",
        );
        refused(
            json!({"cpuid_modifiers": [{"leaf": 1, "subleaf": 0, "flags": 0,
                   "modifiers": [{"register": "eax", "bitmap": "0b2"}]}]}),
            "'2'",
        );
        refused(
            json!({"msr_modifiers": [{"addr": "0x10a", "bitmap": format!("0b{}", "1".repeat(65))}]}),
            "65 bits",
        );
        refused(
            json!({"cpuid_modifiers": [{"leaf": "zz", "subleaf": 0, "modifiers": []}]}),
            "leaf",
        );
        refused(json!({"bogus": 1}), "bogus");
    }
}
