//! `petrelctl pool …` and `petrelctl volume …`: petreld's storage pools and volumes. Each
//! command is one request; the answers are shown as tables or fields.

use std::ffi::OsString;

use serde_json::{json, Value};

use petrel_http::Method;

use super::super::transport::Api;
use super::super::{CtlError, Outcome, Result};
use super::run::encode;
use super::Words;
use crate::output::{bytes, table, Fields};

/// Usage and help lines (part of `--help`).
pub const HELP: &[(&str, &str)] = &[
    ("pool list|get NAME|delete NAME", "storage pools"),
    (
        "pool create NAME PATH",
        "a directory pool (under petreld's storage_roots)",
    ),
    (
        "volume list [--pool P]|get P/NAME|delete P/NAME",
        "volumes (delete: not while a VM uses it)",
    ),
    (
        "volume create P/NAME --size S [--format raw|qcow2]",
        "a sparse volume (qemu-img)",
    ),
    (
        "volume create P/NAME --import FILE --sha256 HEX",
        "import a kernel, initramfs or disk image (checked)",
    ),
    (
        "volume clone BASE_P/BASE P/NAME [--size S]",
        "a thin clone (qcow2 over BASE)",
    ),
    (
        "volume resize P/NAME SIZE | convert P/NAME raw|qcow2",
        "grow; rewrite in another format",
    ),
];

/// What a storage command shows.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum Shows {
    /// A pool list.
    Pools,
    /// One pool.
    Pool,
    /// A volume list.
    Volumes,
    /// One volume.
    Volume,
    /// Nothing (a delete).
    Gone,
}

/// One storage request.
#[derive(Debug, PartialEq, Eq)]
pub struct StorageCommand {
    /// `pool list`, `volume create`, …
    pub route: String,
    /// Method.
    pub method: Method,
    /// Path and query.
    pub path: String,
    /// JSON body.
    pub body: Option<String>,
    /// How to show the answer.
    pub shows: Shows,
    /// What a delete prints.
    pub done: String,
}

/// `P/NAME` as a path under `/v1/volumes`.
fn volume_path(cmd: &str, r: &str) -> Result<String> {
    match r.split_once('/') {
        Some((p, n)) if !p.is_empty() && !n.is_empty() => {
            Ok(format!("/v1/volumes/{}/{}", encode(p), encode(n)))
        }
        _ => Err(CtlError::usage(format!("{cmd}: {r:?} is not POOL/NAME"))),
    }
}

/// A size for the API: digits are bytes, anything else (`10G`) is left to petreld.
fn size_value(s: &str) -> Value {
    s.parse::<u64>()
        .map_or_else(|_| Value::String(s.to_string()), Value::from)
}

/// Parses `pool …` / `volume …` (`group`, then the words after it).
pub fn parse(group: &str, rest: &[OsString]) -> Result<StorageCommand> {
    let Some((verb, rest)) = rest.split_first() else {
        return Err(CtlError::usage(format!("{group}: missing command")));
    };
    let verb = verb
        .to_str()
        .ok_or_else(|| CtlError::usage(format!("{group}: {verb:?} is not valid UTF-8")))?;
    let cmd = format!("{group} {verb}");
    let split = |valued: &[&'static str]| Words::split(cmd.clone(), rest, valued, &[]);
    let req = |method, path: String, body: Option<Value>, shows| StorageCommand {
        route: cmd.clone(),
        method,
        path,
        body: body.map(|b| b.to_string()),
        shows,
        done: String::new(),
    };
    let two = |w: &Words, what: &str| -> Result<(String, String)> {
        match w.positional.as_slice() {
            [a, b] => Ok((a.clone(), b.clone())),
            _ => Err(CtlError::usage(format!("{cmd}: expected {what}"))),
        }
    };
    Ok(match (group, verb) {
        ("pool", "list") => {
            split(&[])?.none()?;
            req(Method::Get, "/v1/pools".into(), None, Shows::Pools)
        }
        ("pool", "get") => {
            let name = split(&[])?.one("NAME")?;
            req(
                Method::Get,
                format!("/v1/pools/{}", encode(&name)),
                None,
                Shows::Pool,
            )
        }
        ("pool", "create") => {
            let (name, path) = two(&split(&[])?, "NAME PATH")?;
            let body = json!({"name": name, "path": path});
            req(Method::Post, "/v1/pools".into(), Some(body), Shows::Pool)
        }
        ("pool", "delete") => {
            let name = split(&[])?.one("NAME")?;
            let mut r = req(
                Method::Delete,
                format!("/v1/pools/{}", encode(&name)),
                None,
                Shows::Gone,
            );
            r.done = format!("pool {name} deleted\n");
            r
        }
        ("volume", "list") => {
            let w = split(&["--pool"])?;
            w.none()?;
            let path = match w.get("--pool") {
                Some(p) => format!("/v1/volumes?pool={}", encode(&p)),
                None => "/v1/volumes".into(),
            };
            req(Method::Get, path, None, Shows::Volumes)
        }
        ("volume", "get") => {
            let r = split(&[])?.one("POOL/NAME")?;
            req(Method::Get, volume_path(&cmd, &r)?, None, Shows::Volume)
        }
        ("volume", "delete") => {
            let r = split(&[])?.one("POOL/NAME")?;
            let mut c = req(Method::Delete, volume_path(&cmd, &r)?, None, Shows::Gone);
            c.done = format!("volume {r} deleted\n");
            c
        }
        ("volume", "create") => {
            let w = split(&["--size", "--format", "--import", "--sha256"])?;
            let r = w.one("POOL/NAME")?;
            volume_path(&cmd, &r)?;
            let (pool, name) = r.split_once('/').unwrap_or_default();
            let mut body = json!({"pool": pool, "name": name});
            match (w.get("--size"), w.get("--import"), w.get("--sha256")) {
                (Some(size), None, None) => body["capacity"] = size_value(&size),
                (None, Some(file), Some(sum)) => {
                    body["import"] = Value::String(file);
                    body["sha256"] = Value::String(sum);
                }
                _ => {
                    return Err(CtlError::usage(format!(
                        "{cmd}: give --size S, or --import FILE --sha256 HEX"
                    )))
                }
            }
            if let Some(f) = w.get("--format") {
                body["format"] = Value::String(f);
            }
            req(
                Method::Post,
                "/v1/volumes".into(),
                Some(body),
                Shows::Volume,
            )
        }
        ("volume", "clone") => {
            let w = split(&["--size"])?;
            let (base, r) = two(&w, "BASE_POOL/BASE POOL/NAME")?;
            volume_path(&cmd, &base)?;
            volume_path(&cmd, &r)?;
            let (pool, name) = r.split_once('/').unwrap_or_default();
            let mut body = json!({"pool": pool, "name": name, "clone_of": base});
            if let Some(s) = w.get("--size") {
                body["capacity"] = size_value(&s);
            }
            req(
                Method::Post,
                "/v1/volumes".into(),
                Some(body),
                Shows::Volume,
            )
        }
        ("volume", "resize") => {
            let (r, size) = two(&split(&[])?, "POOL/NAME SIZE")?;
            let path = format!("{}/resize", volume_path(&cmd, &r)?);
            let body = json!({"capacity": size_value(&size)});
            req(Method::Post, path, Some(body), Shows::Volume)
        }
        ("volume", "convert") => {
            let (r, format) = two(&split(&[])?, "POOL/NAME raw|qcow2")?;
            let path = format!("{}/convert", volume_path(&cmd, &r)?);
            let body = json!({"format": format});
            req(Method::Post, path, Some(body), Shows::Volume)
        }
        _ => return Err(CtlError::usage(format!("unknown command '{cmd}'"))),
    })
}

/// Sends `c` and renders the answer.
pub fn execute(api: &Api, c: &StorageCommand) -> Result<Outcome> {
    let reply = api.call(
        &c.route,
        c.method,
        &c.path,
        c.body.as_deref().map(str::as_bytes),
        &[],
    )?;
    let json = reply.json(&c.route)?;
    let Some(v) = json else {
        return Ok(Outcome {
            json: None,
            text: c.done.clone(),
        });
    };
    let text = match c.shows {
        Shows::Pools => pool_table(&v),
        Shows::Pool => pool(&v),
        Shows::Volumes => volume_table(&v),
        Shows::Volume => volume(&v),
        Shows::Gone => c.done.clone(),
    };
    Ok(Outcome {
        json: Some(v),
        text,
    })
}

fn text(v: &Value, key: &str) -> String {
    match v.get(key) {
        None | Some(Value::Null) => "-".into(),
        Some(Value::String(s)) => s.clone(),
        Some(x) => x.to_string(),
    }
}

fn size(v: &Value, key: &str) -> String {
    v.get(key)
        .and_then(Value::as_u64)
        .map_or_else(|| "-".into(), bytes)
}

fn used_by(v: &Value) -> String {
    let names: Vec<&str> = v
        .get("used_by")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if names.is_empty() {
        "-".into()
    } else {
        names.join(",")
    }
}

fn items(v: &Value) -> &[Value] {
    v.get("items")
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

fn pool_table(v: &Value) -> String {
    let rows: Vec<Vec<String>> = items(v)
        .iter()
        .map(|p| {
            vec![
                text(p, "name"),
                text(p, "path"),
                text(p, "volumes"),
                size(p, "capacity"),
                size(p, "allocation"),
                size(p, "free"),
            ]
        })
        .collect();
    if rows.is_empty() {
        return "no pools\n".into();
    }
    table(
        &["NAME", "PATH", "VOLUMES", "CAPACITY", "ALLOCATION", "FREE"],
        &rows,
    )
}

fn pool(p: &Value) -> String {
    let mut f = Fields::new();
    for key in ["name", "path", "volumes"] {
        f.push(key, text(p, key));
    }
    for key in ["capacity", "allocation", "free", "size"] {
        f.push(key, size(p, key));
    }
    f.push("created", text(p, "created_at"));
    f.render()
}

fn volume_table(v: &Value) -> String {
    let rows: Vec<Vec<String>> = items(v)
        .iter()
        .map(|x| {
            vec![
                format!("{}/{}", text(x, "pool"), text(x, "name")),
                text(x, "format"),
                size(x, "capacity"),
                size(x, "allocation"),
                text(x, "clone_of"),
                used_by(x),
            ]
        })
        .collect();
    if rows.is_empty() {
        return "no volumes\n".into();
    }
    table(
        &[
            "VOLUME",
            "FORMAT",
            "CAPACITY",
            "ALLOCATION",
            "CLONE OF",
            "USED BY",
        ],
        &rows,
    )
}

fn volume(x: &Value) -> String {
    let mut f = Fields::new();
    f.push("volume", format!("{}/{}", text(x, "pool"), text(x, "name")));
    f.push("path", text(x, "path"));
    f.push("format", text(x, "format"));
    f.push("capacity", size(x, "capacity"));
    f.push("allocation", size(x, "allocation"));
    f.push("clone of", text(x, "clone_of"));
    f.push("used by", used_by(x));
    f.push("created", text(x, "created_at"));
    f.render()
}
