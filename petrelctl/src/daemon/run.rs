//! Running petreld commands: building request bodies and queries, sending them, and pairing
//! the server's JSON with the text for people.

use std::io::Read;
use std::path::Path;

use serde_json::{json, Map, Value};

use api::petreld::merge_patch;
use petrel_http::Method;

use super::super::transport::Api;
use super::super::{CtlError, Outcome, Result};
use super::{render, Command, CreateSpec, ListSpec};

/// `%XX` for everything but unreserved characters (RFC 3986).
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Sends `method path` with an optional JSON body; the server's JSON answer, if any.
fn call(
    api: &Api,
    route: &str,
    method: Method,
    path: &str,
    body: Option<&Value>,
) -> Result<Option<Value>> {
    let body = body.map(Value::to_string);
    api.call(route, method, path, body.as_deref().map(str::as_bytes), &[])?
        .json(route)
}

/// The JSON answer, which must be there.
fn need(route: &str, reply: Option<Value>) -> Result<Value> {
    reply.ok_or_else(|| CtlError::failed(format!("{route}: empty response")))
}

/// Runs `command` against petreld's `api`.
pub fn execute(api: &Api, command: &Command) -> Result<Outcome> {
    let (json, text) = match command {
        Command::Network(c) => return super::network::execute(api, c),
        Command::TemplateVersions(c) => return super::template_versions::execute(api, c),
        Command::VmCreate(spec) => {
            let body = create_request(spec)?;
            let vm = need(
                "vm create",
                call(api, "vm create", Method::Post, "/v1/vms", Some(&body))?,
            )?;
            let text = format!("{}\n", render::vm_summary(&vm, "created"));
            (vm, text)
        }
        Command::VmList(spec) => {
            let page = list(api, spec)?;
            let text = render::vm_table(&page);
            (page, text)
        }
        Command::VmGet(vm) => {
            let route = "vm get";
            let v = need(
                route,
                call(api, route, Method::Get, &vm_path(vm, ""), None)?,
            )?;
            let text = render::vm(&v);
            (v, text)
        }
        Command::VmAction {
            action,
            vm,
            timeout,
        } => {
            let route = format!("vm {}", action.word);
            let mut path = vm_path(vm, action.word);
            if let Some(t) = timeout {
                path.push_str(&format!("?timeout={t}"));
            }
            let v = need(&route, call(api, &route, Method::Post, &path, None)?)?;
            let text = format!("{}\n", render::vm_summary(&v, action.word));
            (v, text)
        }
        Command::VmDelete(vm) => {
            call(api, "vm delete", Method::Delete, &vm_path(vm, ""), None)?;
            return Ok(Outcome {
                json: None,
                text: format!("VM {vm} deleted\n"),
            });
        }
        Command::VmConsole { vm, tail } => {
            let mut path = vm_path(vm, "console");
            if let Some(n) = tail {
                path.push_str(&format!("?tail={n}"));
            }
            let route = "vm console";
            let reply = api.call(route, Method::Get, &path, None, &[])?;
            let text = String::from_utf8_lossy(&reply.body).into_owned();
            // Not JSON on the wire: scripts get the log as one JSON string.
            (Value::String(text.clone()), text)
        }
        Command::TemplateCreate { file, name } => {
            let body = template_request(file, name.as_deref())?;
            let route = "template create";
            let t = need(
                route,
                call(api, route, Method::Post, "/v1/templates", Some(&body))?,
            )?;
            let text = format!(
                "template {} created\n",
                t.get("name").map(render::scalar).unwrap_or_default()
            );
            (t, text)
        }
        Command::TemplateList => {
            let route = "template list";
            let v = need(route, call(api, route, Method::Get, "/v1/templates", None)?)?;
            let text = render::template_table(&v);
            (v, text)
        }
        Command::TemplateGet(name) => {
            let route = "template get";
            let path = format!("/v1/templates/{}", encode(name));
            let v = need(route, call(api, route, Method::Get, &path, None)?)?;
            let text = render::template(&v);
            (v, text)
        }
        Command::TemplateDelete(name) => {
            let path = format!("/v1/templates/{}", encode(name));
            call(api, "template delete", Method::Delete, &path, None)?;
            return Ok(Outcome {
                json: None,
                text: format!("template {name} deleted\n"),
            });
        }
        Command::VmSnapshot { vm, name } => {
            let route = "vm snapshot";
            let body = match name {
                Some(n) => json!({ "name": n }),
                None => json!({}),
            };
            let path = vm_path(vm, "snapshots");
            let s = need(route, call(api, route, Method::Post, &path, Some(&body))?)?;
            let text = render::snapshot(&s);
            (s, text)
        }
        Command::VmRestore { vm, snapshot } => {
            let route = "vm restore";
            let body = json!({ "snapshot": snapshot });
            let path = vm_path(vm, "revert");
            let v = need(route, call(api, route, Method::Post, &path, Some(&body))?)?;
            let text = format!(
                "{}\n",
                render::vm_summary(&v, &format!("restored from {snapshot}"))
            );
            (v, text)
        }
        Command::VmMigrate { vm, to } => {
            let route = "vm migrate";
            let body = json!({ "to": to });
            let path = vm_path(vm, "migrate");
            let v = need(route, call(api, route, Method::Post, &path, Some(&body))?)?;
            let text = format!("{}\n", render::vm_summary(&v, "moved"));
            (v, text)
        }
        Command::SnapshotList(vm) => {
            let route = "snapshot list";
            let path = vm_path(vm, "snapshots");
            let v = need(route, call(api, route, Method::Get, &path, None)?)?;
            let text = render::snapshot_table(&v);
            (v, text)
        }
        Command::SnapshotGet { vm, name } => {
            let route = "snapshot get";
            let path = vm_path(vm, &format!("snapshots/{}", encode(name)));
            let v = need(route, call(api, route, Method::Get, &path, None)?)?;
            let text = render::snapshot(&v);
            (v, text)
        }
        Command::SnapshotDelete { vm, name } => {
            let path = vm_path(vm, &format!("snapshots/{}", encode(name)));
            call(api, "snapshot delete", Method::Delete, &path, None)?;
            return Ok(Outcome {
                json: None,
                text: format!("snapshot {name} of VM {vm} deleted\n"),
            });
        }
        Command::Host => {
            let v = need("host", call(api, "host", Method::Get, "/v1/host", None)?)?;
            let text = render::host(&v);
            (v, text)
        }
        Command::Storage(c) => return super::storage::execute(api, c),
        Command::Gates => {
            let route = "gates";
            let v = need(
                route,
                call(api, route, Method::Get, "/v1/feature-gates", None)?,
            )?;
            let text = render::gates(&v);
            (v, text)
        }
    };
    Ok(Outcome {
        json: Some(json),
        text,
    })
}

/// `/v1/vms/{vm}` or `/v1/vms/{vm}/{action}`.
fn vm_path(vm: &str, action: &str) -> String {
    if action.is_empty() {
        format!("/v1/vms/{}", encode(vm))
    } else {
        format!("/v1/vms/{}/{action}", encode(vm))
    }
}

/// The query of `vm list` (without `continue`).
pub fn list_query(spec: &ListSpec) -> Vec<(&'static str, String)> {
    let mut q = Vec::new();
    let mut push = |k: &'static str, v: &Option<String>| {
        if let Some(v) = v {
            q.push((k, v.clone()));
        }
    };
    push("state", &spec.state);
    push("name", &spec.name);
    push("hypervisor", &spec.hypervisor);
    push("sort", &spec.sort);
    push("limit", &spec.limit.map(|n| n.to_string()));
    for l in &spec.labels {
        q.push(("label", l.clone()));
    }
    for t in &spec.tags {
        q.push(("tag", t.clone()));
    }
    if let Some(t) = &spec.template {
        q.push(("template", t.clone()));
    }
    if let Some(d) = &spec.description {
        q.push(("description", d.clone()));
    }
    q
}

/// One page, or with `--all` every page joined (`{"items": [...]}` without `continue`).
fn list(api: &Api, spec: &ListSpec) -> Result<Value> {
    let route = "vm list";
    let base = list_query(spec);
    let mut items = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let mut q = base.clone();
        if let Some(t) = &token {
            q.push(("continue", t.clone()));
        }
        let query: Vec<String> = q
            .iter()
            .map(|(k, v)| format!("{k}={}", encode(v)))
            .collect();
        let path = if query.is_empty() {
            "/v1/vms".to_string()
        } else {
            format!("/v1/vms?{}", query.join("&"))
        };
        let page = need(route, call(api, route, Method::Get, &path, None)?)?;
        if !spec.all {
            return Ok(page);
        }
        let next = page
            .get("continue")
            .and_then(Value::as_str)
            .map(str::to_string);
        match page.get("items") {
            Some(Value::Array(list)) => items.extend(list.iter().cloned()),
            _ => return Err(CtlError::failed(format!("{route}: response has no items"))),
        }
        match next {
            // A token equal to the last one would never end.
            Some(t) if token.as_deref() != Some(t.as_str()) => token = Some(t),
            _ => return Ok(json!({ "items": items })),
        }
    }
}

/// Reads `file` (`-`: standard input) as JSON.
pub fn read_json(file: &Path) -> Result<Value> {
    let name = file.display();
    let mut text = String::new();
    let read = if file == Path::new("-") {
        std::io::stdin().read_to_string(&mut text).map(|_| ())
    } else {
        std::fs::File::open(file).and_then(|mut f| f.read_to_string(&mut text).map(|_| ()))
    };
    read.map_err(|e| CtlError::failed(format!("cannot read {name}: {e}")))?;
    let value: Value =
        serde_json::from_str(&text).map_err(|e| CtlError::failed(format!("{name}: {e}")))?;
    if !value.is_object() {
        return Err(CtlError::failed(format!("{name}: expected a JSON object")));
    }
    Ok(value)
}

/// `a.b.c` and a value → `{"a": {"b": {"c": value}}}`; the value is JSON when it parses,
/// else a string.
fn set_patch(key: &str, value: &str) -> Value {
    let mut v = serde_json::from_str(value).unwrap_or_else(|_| Value::String(value.to_string()));
    for part in key.rsplit('.') {
        let mut m = Map::new();
        m.insert(part.to_string(), v);
        v = Value::Object(m);
    }
    v
}

/// The `POST /v1/vms` body: FILE (a full request when it has `config` or `template`, else a
/// VmConfig) with the flags applied.
pub fn create_request(spec: &CreateSpec) -> Result<Value> {
    let mut body = match &spec.file {
        Some(file) => {
            let v = read_json(file)?;
            if v.get("config").is_some() || v.get("template").is_some() {
                v
            } else {
                if spec.template.is_some() {
                    return Err(CtlError::usage(format!(
                        "vm create: {} is a VmConfig; --template needs no FILE",
                        file.display()
                    )));
                }
                json!({ "config": v })
            }
        }
        None => json!({}),
    };
    let Some(obj) = body.as_object_mut() else {
        return Err(CtlError::failed("vm create: request is not an object"));
    };
    if let Some(name) = &spec.name {
        obj.insert("name".into(), json!(name));
    }
    if let Some(t) = &spec.template {
        obj.insert("template".into(), json!(t));
    }
    if let Some(v) = spec.template_version {
        obj.insert("template_version".into(), json!(v));
    }
    if let Some(d) = &spec.description {
        obj.insert("description".into(), json!(d));
    }
    if !spec.tags.is_empty() {
        obj.insert("tags".into(), json!(spec.tags));
    }
    if !spec.labels.is_empty() {
        let labels = obj.entry("labels").or_insert_with(|| json!({}));
        let Some(labels) = labels.as_object_mut() else {
            return Err(CtlError::failed("vm create: labels is not an object"));
        };
        for (k, v) in &spec.labels {
            labels.insert(k.clone(), json!(v));
        }
    }
    if let Some(r) = spec.restart {
        obj.insert("restart".into(), json!(r.as_str()));
    }
    if let Some(h) = spec.hypervisor {
        obj.insert("hypervisor".into(), json!(h.as_str()));
    }
    if spec.no_start {
        obj.insert("start".into(), json!(false));
    }
    if !spec.nets.is_empty() {
        let list = obj.entry("net").or_insert_with(|| json!([]));
        let Some(list) = list.as_array_mut() else {
            return Err(CtlError::failed("vm create: net is not an array"));
        };
        for n in &spec.nets {
            list.push(super::network::net_spec(n)?);
        }
    }
    if !spec.sets.is_empty() {
        // Into the template's overrides, or straight into the given config.
        let field = if obj.contains_key("config") {
            "config"
        } else {
            "overrides"
        };
        let target = obj.entry(field).or_insert_with(|| json!({}));
        for (k, v) in &spec.sets {
            merge_patch(target, &set_patch(k, v));
        }
    }
    if !obj.get("name").is_some_and(Value::is_string) {
        return Err(CtlError::usage(
            "vm create: --name is required (or a name in FILE)",
        ));
    }
    Ok(body)
}

/// The `POST /v1/templates` body: FILE as a template (it has `config`) or a VmConfig named
/// by `--name`; `--name` also renames a template.
pub fn template_request(file: &Path, name: Option<&str>) -> Result<Value> {
    let v = read_json(file)?;
    let mut body = if v.get("config").is_some() {
        v
    } else {
        json!({ "config": v })
    };
    if let (Some(n), Some(obj)) = (name, body.as_object_mut()) {
        obj.insert("name".into(), json!(n));
    }
    if !body.get("name").is_some_and(Value::is_string) {
        return Err(CtlError::usage(
            "template create: --name is required (or a name in FILE)",
        ));
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use api::petreld::RestartPolicy;

    #[test]
    fn encodes_and_patches() {
        assert_eq!(encode("a b/c=d"), "a%20b%2Fc%3Dd");
        assert_eq!(encode("vm-1.x_y"), "vm-1.x_y");
        assert_eq!(
            set_patch("memory.size", "134217728"),
            json!({"memory": {"size": 134217728}})
        );
        assert_eq!(
            set_patch("payload.cmdline", "action=halt"),
            json!({"payload": {"cmdline": "action=halt"}})
        );
    }

    #[test]
    fn create_bodies() {
        let spec = CreateSpec {
            name: Some("web".into()),
            template: Some("small".into()),
            sets: vec![("cpus.boot_vcpus".into(), "2".into())],
            labels: vec![("app".into(), "x".into())],
            restart: Some(RestartPolicy::Always),
            ..CreateSpec::default()
        };
        assert_eq!(
            create_request(&spec).unwrap(),
            json!({"name": "web", "template": "small", "labels": {"app": "x"},
                   "restart": "always", "overrides": {"cpus": {"boot_vcpus": 2}}})
        );
        let dir = std::env::temp_dir().join(format!("ctl-create-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("config.json");
        std::fs::write(&file, r#"{"memory": {"size": 1}}"#).unwrap();
        let spec = CreateSpec {
            file: Some(file.clone()),
            name: Some("a".into()),
            sets: vec![("memory.size".into(), "2".into())],
            ..CreateSpec::default()
        };
        assert_eq!(
            create_request(&spec).unwrap(),
            json!({"name": "a", "config": {"memory": {"size": 2}}})
        );
        let no_name = CreateSpec {
            file: Some(file.clone()),
            ..CreateSpec::default()
        };
        assert_eq!(create_request(&no_name).unwrap_err().exit_code(), 2);
        std::fs::write(&file, r#"{"name": "b", "template": "t"}"#).unwrap();
        let spec = CreateSpec {
            file: Some(file),
            sets: vec![("memory.size".into(), "2".into())],
            ..CreateSpec::default()
        };
        assert_eq!(
            create_request(&spec).unwrap(),
            json!({"name": "b", "template": "t", "overrides": {"memory": {"size": 2}}})
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
