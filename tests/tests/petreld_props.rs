//! A property test of petreld's API against its OpenAPI document (docs/api/petreld.yaml):
//! many generated requests — bodies for `POST /v1/vms` and `POST /v1/templates` built from
//! the document's schemas, valid and mutated (a required field dropped, an unknown field
//! added, a value of the wrong type, a bad enum, huge and negative numbers, long strings,
//! non-object and malformed JSON, another content type), random query strings on
//! `GET /v1/vms`, random ids and query parameters on the VM paths — and for every answer:
//! its status is one the document lists for the operation, a request that is a client
//! mistake never gets a 5xx, a 4xx carries `{"error": message}`, a 2xx JSON body matches the
//! documented schema (required fields, types, enums), and petreld still answers
//! `GET /v1/ping`.
//!
//! Seeded xorshift: `PETRELD_PROPS_SEED` (printed) reproduces a run, `PETRELD_PROPS_CASES`
//! sets the count (default 400); the run also stops after 90 s. Needs the binaries built
//! first (`cargo build -p petreld -p vmm`), as `petreld.rs`.

#[path = "petreld_support/openapi.rs"]
mod openapi;
mod petreld_support;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use openapi::{parse_yaml, Doc};
use petrel_http::Method;
use petrel_tests::require_kvm;
use petreld_support::{guest_config, Petreld};
use serde_json::{json, Map, Value};

/// xorshift64*: small, seeded, reproducible.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
    fn text(&mut self, max: usize) -> String {
        const CH: &[u8] = b"abcXYZ019._-/ %&=?#\\\"'{}:;\t\x01";
        (0..self.below(max + 1))
            .map(|_| *self.pick(CH) as char)
            .collect()
    }
}

/// One answer, read from a fresh connection (`Connection: close`).
struct Answer {
    status: u16,
    content_type: String,
    body: Vec<u8>,
}

fn send(sock: &Path, method: &str, path: &str, ctype: &str, body: &[u8]) -> Answer {
    let mut s = UnixStream::connect(sock).unwrap_or_else(|e| panic!("connect: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    if !body.is_empty() || method == "POST" {
        req += &format!(
            "Content-Type: {ctype}\r\nContent-Length: {}\r\n",
            body.len()
        );
    }
    req += "\r\n";
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    s.write_all(&bytes).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out)
        .unwrap_or_else(|e| panic!("{method} {path}: reading the answer: {e}"));
    let end = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("{method} {path}: no header end in {out:?}"));
    let head = String::from_utf8_lossy(&out[..end]).to_string();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line: {head}"));
    let content_type = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-type")
                .then(|| v.trim().to_string())
        })
        .unwrap_or_default();
    Answer {
        status,
        content_type,
        body: out[end + 4..].to_vec(),
    }
}

/// A JSON value of some other type than `like`.
fn wrong_type(r: &mut Rng, like: &Value) -> Value {
    loop {
        let v = match r.below(7) {
            0 => Value::Null,
            1 => json!(true),
            2 => json!(-7),
            3 => json!(1.5e300),
            4 => json!("str"),
            5 => json!([1, "two"]),
            _ => json!({"k": 1}),
        };
        let same = std::mem::discriminant(&v) == std::mem::discriminant(like);
        if !same {
            return v;
        }
    }
}

/// A huge or odd number.
fn odd_number(r: &mut Rng) -> Value {
    r.pick(&[
        json!(u64::MAX),
        json!(i64::MIN),
        json!(-1),
        json!(0),
        json!(1u64 << 53),
        json!(1e308),
        json!(0.5),
    ])
    .clone()
}

/// A value for `schema` that the document allows (for `config`, the test guest's).
fn valid(r: &mut Rng, doc: &Doc, field: &str, schema: &Value, names: &[&str]) -> Value {
    let s = doc.resolve(schema);
    if let Some(e) = s["enum"].as_array() {
        return r.pick(e).clone();
    }
    match (field, s["type"].as_str()) {
        ("config", _) => guest_config("action=halt"),
        ("overrides", _) => json!({"memory": {"size": 32u64 << 20}}),
        ("name" | "template", _) => json!(r.pick(names)),
        ("labels", _) => json!({"app": "props", "k": r.text(8).replace(['=', ','], "")}),
        (_, Some("boolean")) => json!(r.chance(50)),
        (_, Some("integer")) => json!(r.below(100)),
        (_, Some("string")) => json!(r.text(12)),
        (_, Some("array")) => Value::Array(
            (0..r.below(3))
                .map(|_| valid(r, doc, "", &s["items"], names))
                .collect(),
        ),
        (_, Some("object")) => {
            let mut m = Map::new();
            for (k, ps) in s["properties"].as_object().into_iter().flatten() {
                if r.chance(50) {
                    m.insert(k.clone(), valid(r, doc, k, ps, names));
                }
            }
            Value::Object(m)
        }
        _ => Value::Null,
    }
}

/// A request body for `schema`: valid-ish, or mutated. Returns the bytes and whether the
/// request is surely a client mistake.
fn body(r: &mut Rng, doc: &Doc, schema: &Value, names: &[&str]) -> (Vec<u8>, bool) {
    let s = doc.resolve(schema);
    let mut v = Map::new();
    let required: Vec<&str> = s["required"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let props = s["properties"].as_object().cloned().unwrap_or_default();
    for (k, ps) in &props {
        if required.contains(&k.as_str()) || r.chance(40) {
            v.insert(k.clone(), valid(r, doc, k, ps, names));
        }
    }
    // CreateVm: exactly one of config and template; start false unless rarely.
    if props.contains_key("template") && v.contains_key("template") {
        v.remove("config");
    } else if props.contains_key("start") {
        v.entry("config")
            .or_insert_with(|| guest_config("action=halt"));
        v.remove("overrides");
    }
    if props.contains_key("start") && !r.chance(3) {
        v.insert("start".into(), json!(false));
    }
    if props.contains_key("net") {
        v.remove("net"); // taps need root: 422 here, tested as a mutation below.
    }
    let keys: Vec<String> = props.keys().cloned().collect();
    let mistake = match r.below(12) {
        0..=2 => false,
        3 => {
            let f = r.pick(&required);
            v.remove(*f);
            true
        }
        4 => {
            v.insert(format!("x{}", r.text(6)), json!(1));
            true
        }
        5 | 6 => {
            let k = r.pick(&keys).clone();
            let old = v.get(&k).cloned().unwrap_or(json!("x"));
            let schema = doc.resolve(&props[&k]);
            let w = if schema["type"] == "object" && k != "labels" {
                // Object-typed free fields (config, overrides): break their inside.
                json!({"memory": {"size": wrong_type(r, &json!(1))}, "cpus": "x"})
            } else {
                wrong_type(r, &old)
            };
            v.insert(k, w);
            true
        }
        7 => {
            // Huge or odd sizes inside the config.
            if let Some(c) = v.get_mut("config") {
                let which = if r.chance(50) { "memory" } else { "cpus" };
                let key = if which == "memory" {
                    "size"
                } else {
                    "boot_vcpus"
                };
                c[which][key] = odd_number(r);
            } else {
                v.insert("description".into(), json!("x".repeat(200_000)));
            }
            true
        }
        8 => {
            // Bad enum strings, long names, bad names.
            let bad = r.pick(&["", "-x", "a b", "é", "../x", "a/b"]).to_string();
            match r.below(3) {
                0 if props.contains_key("restart") => {
                    v.insert("restart".into(), json!("sometimes"))
                }
                1 if props.contains_key("hypervisor") => {
                    v.insert("hypervisor".into(), json!("xen"))
                }
                _ => v.insert(
                    "name".into(),
                    json!(if r.chance(50) { "n".repeat(64) } else { bad }),
                ),
            };
            true
        }
        9 => {
            if props.contains_key("net") {
                let nets: Vec<Value> = (0..r.below(12))
                    .map(|_| json!({"id": r.text(4), "bogus": 1}))
                    .collect();
                v.insert("net".into(), Value::Array(nets));
            } else {
                v.insert("config".into(), json!({"payload": {}}));
            }
            true
        }
        10 => {
            let raw = r.pick(&[
                "[]",
                "null",
                "7",
                "\"s\"",
                "{",
                "{\"name\":",
                "",
                "{}}",
                "\u{0}",
                "{\"name\": \"a\", \"name\": \"b\"}",
            ]);
            return (raw.as_bytes().to_vec(), true);
        }
        _ => {
            let n = r.below(64);
            return ((0..n).map(|_| r.next() as u8).collect(), true);
        }
    };
    (serde_json::to_vec(&Value::Object(v)).unwrap(), mistake)
}

/// A query string for `GET /v1/vms` from its documented parameters, some values bad.
fn list_query(r: &mut Rng, doc: &Doc) -> (String, bool) {
    let params = doc.operation("/v1/vms", "get")["parameters"]
        .as_array()
        .unwrap()
        .clone();
    let mut parts = Vec::new();
    let mut mistake = false;
    for p in &params {
        if !r.chance(35) {
            continue;
        }
        let name = p["name"].as_str().unwrap();
        let s = doc.resolve(&p["schema"]);
        let good = match (s["enum"].as_array(), s["type"].as_str()) {
            (Some(e), _) => e[r.below(e.len())].as_str().unwrap().to_string(),
            (_, Some("integer")) => (1 + r.below(1000)).to_string(),
            _ if name == "label" => "app=props".into(),
            _ if name == "continue" => continue,
            _ => "x".into(),
        };
        let value = if r.chance(30) {
            let bad = match (s["type"].as_str(), name) {
                (Some("integer"), _) => r
                    .pick(&["0", "-1", "1001", "abc", "99999999999999999999999", ""])
                    .to_string(),
                (_, "label") => "novalue".into(),
                (_, "continue") => r.text(20).replace(['&', '#', ' '], "%"),
                (_, "name") => good.clone(),
                _ => "bogus".into(),
            };
            mistake |= !matches!(name, "name");
            bad
        } else {
            good
        };
        parts.push(format!("{name}={}", value.replace(' ', "%20")));
    }
    if r.chance(15) {
        parts.push(format!("unknown{}=1", r.below(9)));
    }
    if r.chance(10) {
        parts.push("limit=5&limit=7".into());
    }
    let q = if parts.is_empty() {
        String::new()
    } else {
        format!("?{}", parts.join("&"))
    };
    (q, mistake)
}

struct Checker<'a> {
    d: &'a Petreld,
    doc: &'a Doc,
    seed: u64,
    failures: Vec<String>,
    counts: std::collections::BTreeMap<(String, u16), usize>,
}

impl Checker<'_> {
    /// Sends one request and checks the answer against the operation `(template, method)`.
    fn run(
        &mut self,
        template: &str,
        method: &str,
        path: &str,
        ctype: &str,
        body: &[u8],
        mistake: bool,
    ) -> Answer {
        let a = send(
            &self.d.dir.join("petreld.sock"),
            &method.to_uppercase(),
            path,
            ctype,
            body,
        );
        *self
            .counts
            .entry((format!("{} {template}", method.to_uppercase()), a.status))
            .or_default() += 1;
        let shown = String::from_utf8_lossy(&body[..body.len().min(300)]).to_string();
        let answer = String::from_utf8_lossy(&a.body[..a.body.len().min(300)]).to_string();
        let what = format!(
            "{} {path} body={shown:?} -> {} {answer}",
            method.to_uppercase(),
            a.status
        );
        let listed = self.doc.statuses(template, method);
        if !listed.contains(&a.status) {
            self.failures
                .push(format!("status not documented ({listed:?}): {what}"));
        }
        if mistake && a.status >= 500 {
            self.failures
                .push(format!("5xx for a client mistake: {what}"));
        }
        if a.content_type.starts_with("application/json")
            || (200..300).contains(&a.status) && !a.body.is_empty()
        {
            match serde_json::from_slice::<Value>(&a.body) {
                Ok(v) => {
                    if let Some(schema) = self.doc.response_schema(template, method, a.status) {
                        if let Err(e) = self.doc.check(schema, &v, "body") {
                            self.failures
                                .push(format!("answer does not match its schema ({e}): {what}"));
                        }
                    }
                }
                Err(e) if a.content_type.starts_with("application/json") => {
                    self.failures
                        .push(format!("answer is not JSON ({e}): {what}"));
                }
                Err(_) => {}
            }
        }
        if a.status >= 400
            && self
                .doc
                .response_schema(template, method, a.status)
                .is_none()
        {
            // Undocumented error bodies still follow the {"error"} convention.
            let v: Value = serde_json::from_slice(&a.body).unwrap_or(Value::Null);
            if !v["error"].is_string() {
                self.failures
                    .push(format!("error without {{\"error\"}}: {what}"));
            }
        }
        a
    }
}

#[test]
fn api_answers_match_the_openapi_document() {
    require_kvm!();
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/api/petreld.yaml");
    let doc = Doc(parse_yaml(&std::fs::read_to_string(file).unwrap()).unwrap());
    let seed = std::env::var("PETRELD_PROPS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    let cases: usize = std::env::var("PETRELD_PROPS_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(400);
    eprintln!("petreld_props: seed {seed} (PETRELD_PROPS_SEED={seed} to reproduce), {cases} cases");
    let mut r = Rng(seed);
    let d = Petreld::new("props");
    // One template and one VM exist, so names and ids hit as well as miss.
    d.ok(
        Method::Post,
        "/v1/templates",
        Some(&json!({"name": "tpl", "config": guest_config("action=halt")})),
        201,
    );
    d.create("vm0", "action=halt", json!({"start": false}));
    let names = ["vm0", "vm1", "vm2", "tpl", "tpl2", "nope"];
    let mut c = Checker {
        d: &d,
        doc: &doc,
        seed,
        failures: Vec::new(),
        counts: Default::default(),
    };
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut done = 0;
    while done < cases && Instant::now() < deadline {
        done += 1;
        match r.below(10) {
            0..=3 => {
                let (b, mistake) = body(&mut r, &doc, doc.schema("CreateVm"), &names);
                let ctype = if r.chance(5) {
                    "text/plain"
                } else {
                    "application/json"
                };
                let a = c.run("/v1/vms", "post", "/v1/vms", ctype, &b, mistake);
                if a.status == 201 {
                    let v: Value = serde_json::from_slice(&a.body).unwrap_or_default();
                    if v["state"] == "running" || r.chance(50) {
                        let id = v["id"].as_str().unwrap_or("none").to_string();
                        c.run(
                            "/v1/vms/{id}",
                            "delete",
                            &format!("/v1/vms/{id}"),
                            "",
                            b"",
                            false,
                        );
                    }
                }
            }
            4 | 5 => {
                let (b, mistake) = body(&mut r, &doc, doc.schema("Template"), &names);
                let a = c.run(
                    "/v1/templates",
                    "post",
                    "/v1/templates",
                    "application/json",
                    &b,
                    mistake,
                );
                if a.status == 201 && r.chance(50) {
                    let v: Value = serde_json::from_slice(&a.body).unwrap_or_default();
                    let n = v["name"].as_str().unwrap_or("none").to_string();
                    c.run(
                        "/v1/templates/{name}",
                        "delete",
                        &format!("/v1/templates/{n}"),
                        "",
                        b"",
                        false,
                    );
                }
            }
            6 | 7 => {
                let (q, mistake) = list_query(&mut r, &doc);
                c.run("/v1/vms", "get", &format!("/v1/vms{q}"), "", b"", mistake);
            }
            _ => {
                let id = match r.below(4) {
                    0 => r.pick(&names).to_string(),
                    1 => "%00%2e%2e".into(),
                    2 => "z".repeat(300),
                    _ => r.text(10).replace(
                        ['/', '?', '#', ' ', '%', '\t', '\x01', '\\', '"', '{', '}'],
                        "a",
                    ),
                };
                let id = if id.is_empty() { "a".into() } else { id };
                match r.below(4) {
                    0 => {
                        c.run(
                            "/v1/vms/{id}",
                            "get",
                            &format!("/v1/vms/{id}"),
                            "",
                            b"",
                            true,
                        );
                    }
                    1 => {
                        let t = r.pick(&[
                            "",
                            "?tail=0",
                            "?tail=5",
                            "?tail=-1",
                            "?tail=x",
                            "?tail=99999999999999999999",
                        ]);
                        c.run(
                            "/v1/vms/{id}/console",
                            "get",
                            &format!("/v1/vms/{id}/console{t}"),
                            "",
                            b"",
                            true,
                        );
                    }
                    2 => {
                        c.run(
                            "/v1/templates/{name}",
                            "get",
                            &format!("/v1/templates/{id}"),
                            "",
                            b"",
                            true,
                        );
                    }
                    _ => {
                        // Only unknown VMs here: stopping vm0 is not a mistake-free case.
                        let t = r.pick(&[
                            "?timeout=0",
                            "?timeout=-1",
                            "?timeout=x",
                            "?timeout=4000",
                            "",
                        ]);
                        let id = format!("no-{}", id.len());
                        c.run(
                            "/v1/vms/{id}/stop",
                            "post",
                            &format!("/v1/vms/{id}/stop{t}"),
                            "",
                            b"",
                            true,
                        );
                    }
                }
            }
        }
        if done % 25 == 0 {
            let a = c.run("/v1/ping", "get", "/v1/ping", "", b"", false);
            assert_eq!(
                a.status,
                200,
                "petreld stopped answering ping (seed {seed})\n{}",
                d.log()
            );
        }
    }
    let a = c.run("/v1/ping", "get", "/v1/ping", "", b"", false);
    assert_eq!(
        a.status, 200,
        "petreld stopped answering ping (seed {seed})"
    );
    eprintln!("petreld_props: {done} cases; answers by operation and status:");
    for ((op, status), n) in &c.counts {
        eprintln!("  {op:32} {status} x{n}");
    }
    let failures = std::mem::take(&mut c.failures);
    assert!(
        failures.is_empty(),
        "seed {}: {} failures:\n{}",
        c.seed,
        failures.len(),
        failures.join("\n")
    );
}
