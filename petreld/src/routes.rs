//! The HTTP API: routing, query parsing and JSON bodies (`docs/api/petreld.yaml`). Errors are
//! `{"error": message}` with a 4xx for the caller's mistakes (the database is unchanged) and
//! a 5xx for petreld's or a petrel's failures. Requests on the TCP listener must first pass
//! [`authorize`].

use std::io::{Read, Seek, SeekFrom};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use petrel_http::{Method, Request, Response};

use super::config::{BearerToken, FEATURE_GATES};
use super::launcher::{self, VmDir};
use super::model::{CreateVm, ListQuery, SortKey, DEFAULT_LIMIT, MAX_LIMIT};
use super::network::CreateNetwork;
use super::storage::{check_volume_path, Convert, CreatePool, CreateVolume, Resize};
use super::store::{decode_cursor, sort_name};
use super::{metrics, ApiError, ApiResult, Daemon};

/// Every route: path pattern (`{x}` is one segment) and its methods. The OpenAPI document
/// lists exactly these.
pub const ROUTES: &[(&str, &[Method])] = &[
    ("/v1/ping", &[Method::Get]),
    ("/v1/vms", &[Method::Get, Method::Post]),
    ("/v1/vms/{id}", &[Method::Get, Method::Delete]),
    ("/v1/vms/{id}/start", &[Method::Post]),
    ("/v1/vms/{id}/stop", &[Method::Post]),
    ("/v1/vms/{id}/kill", &[Method::Post]),
    ("/v1/vms/{id}/pause", &[Method::Post]),
    ("/v1/vms/{id}/resume", &[Method::Post]),
    ("/v1/vms/{id}/reboot", &[Method::Post]),
    ("/v1/vms/{id}/console", &[Method::Get]),
    ("/v1/vms/{id}/snapshots", &[Method::Get, Method::Post]),
    (
        "/v1/vms/{id}/snapshots/{name}",
        &[Method::Get, Method::Delete],
    ),
    ("/v1/vms/{id}/revert", &[Method::Post]),
    ("/v1/vms/{id}/migrate", &[Method::Post]),
    ("/v1/migrations/incoming", &[Method::Post]),
    ("/v1/templates", &[Method::Get, Method::Post]),
    ("/v1/templates/{name}", &[Method::Get, Method::Delete]),
    (
        "/v1/templates/{name}/versions",
        &[Method::Get, Method::Post],
    ),
    ("/v1/templates/{name}/versions/{version}", &[Method::Get]),
    ("/v1/networks", &[Method::Get, Method::Post]),
    ("/v1/networks/{name}", &[Method::Get, Method::Delete]),
    ("/v1/pools", &[Method::Get, Method::Post]),
    ("/v1/pools/{name}", &[Method::Get, Method::Delete]),
    ("/v1/volumes", &[Method::Get, Method::Post]),
    ("/v1/volumes/{pool}/{name}", &[Method::Get, Method::Delete]),
    ("/v1/volumes/{pool}/{name}/resize", &[Method::Post]),
    ("/v1/volumes/{pool}/{name}/convert", &[Method::Post]),
    ("/v1/host", &[Method::Get]),
    ("/v1/feature-gates", &[Method::Get]),
    ("/v1/feature-gates/{name}", &[Method::Get]),
    ("/v1/events", &[Method::Get]),
    ("/metrics", &[Method::Get]),
];

/// Largest console answer: the last bytes of the serial log.
const MAX_CONSOLE: u64 = 1 << 20;

/// The route pattern `path` matches and the values of its `{…}` segments.
fn route(path: &str) -> Option<(&'static str, &'static [Method], Vec<String>)> {
    let segs: Vec<&str> = path.trim_end_matches('/').split('/').collect();
    ROUTES.iter().find_map(|(pattern, methods)| {
        let pat: Vec<&str> = pattern.split('/').collect();
        if pat.len() != segs.len() {
            return None;
        }
        let mut params = Vec::new();
        for (p, s) in pat.iter().zip(&segs) {
            if p.starts_with('{') {
                if s.is_empty() {
                    return None;
                }
                params.push(percent_decode(s));
            } else if p != s {
                return None;
            }
        }
        Some((*pattern, *methods, params))
    })
}

/// Checks `Authorization: Bearer <token>` (scheme case-insensitive): `None` when it carries
/// `token`, else the 401 to answer with (a `WWW-Authenticate` challenge, the token never
/// echoed nor logged).
pub fn authorize(req: &Request, token: &BearerToken) -> Option<Response> {
    let presented = req.header("authorization").and_then(|v| {
        let (scheme, credentials) = v.trim().split_once(' ')?;
        scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| credentials.trim())
    });
    let (message, challenge) = match presented {
        Some(t) if token.matches(t.as_bytes()) => return None,
        Some(_) => (
            "invalid bearer token",
            r#"Bearer realm="petreld", error="invalid_token""#,
        ),
        None => (
            "this listener needs an Authorization: Bearer token",
            r#"Bearer realm="petreld""#,
        ),
    };
    log::debug!("tcp: {} {}: 401 {message}", req.method, req.path());
    Some(Response::error(401, message).with_header("WWW-Authenticate", challenge))
}

/// Answers one request.
pub fn handle(daemon: &Arc<Daemon>, req: Request) -> Response {
    let Some((pattern, methods, params)) = route(req.path()) else {
        return Response::error(404, &format!("no route {}", req.path()));
    };
    let method = if req.method == Method::Head {
        Method::Get
    } else {
        req.method
    };
    if !methods.contains(&method) {
        let allow: Vec<&str> = methods.iter().map(|m| m.as_str()).collect();
        return Response::error(405, &format!("{pattern} allows {}", allow.join(", ")))
            .with_header("Allow", allow.join(", "));
    }
    let p = |i: usize| params.get(i).map(String::as_str).unwrap_or_default();
    let result = match (pattern, method) {
        ("/v1/ping", _) => Ok(Response::json(
            200,
            &json!({"version": env!("CARGO_PKG_VERSION"), "pid": std::process::id()}),
        )),
        ("/v1/vms", Method::Get) => list_vms(daemon, &req),
        ("/v1/vms", _) => body::<CreateVm>(&req)
            .and_then(|c| daemon.create_vm(c))
            .map(|vm| Response::json(201, &vm)),
        ("/v1/vms/{id}", Method::Get) => daemon.get_vm(p(0)).map(|vm| Response::json(200, &vm)),
        ("/v1/vms/{id}", _) => daemon.delete_vm(p(0)).map(|()| Response::no_content()),
        ("/v1/vms/{id}/start", _) => daemon.start_vm(p(0)).map(|vm| Response::json(200, &vm)),
        ("/v1/vms/{id}/stop", _) => stop_timeout(daemon, &req)
            .and_then(|t| daemon.stop_vm(p(0), Some(t)))
            .map(|vm| Response::json(200, &vm)),
        ("/v1/vms/{id}/kill", _) => daemon
            .stop_vm(p(0), None)
            .map(|vm| Response::json(200, &vm)),
        ("/v1/vms/{id}/pause", _) => action(daemon, p(0), "pause"),
        ("/v1/vms/{id}/resume", _) => action(daemon, p(0), "resume"),
        ("/v1/vms/{id}/reboot", _) => action(daemon, p(0), "reboot"),
        ("/v1/vms/{id}/console", _) => console(daemon, &req, p(0)),
        ("/v1/vms/{id}/snapshots", Method::Get) => daemon
            .list_snapshots(p(0))
            .map(|s| Response::json(200, &json!({ "items": s }))),
        ("/v1/vms/{id}/snapshots", _) => optional_body(&req)
            .and_then(|c| daemon.create_snapshot(p(0), c))
            .map(|s| Response::json(201, &s)),
        ("/v1/vms/{id}/snapshots/{name}", Method::Get) => daemon
            .get_snapshot(p(0), p(1))
            .map(|s| Response::json(200, &s)),
        ("/v1/vms/{id}/snapshots/{name}", _) => daemon
            .delete_snapshot(p(0), p(1))
            .map(|()| Response::no_content()),
        ("/v1/vms/{id}/revert", _) => body(&req)
            .and_then(|r| daemon.revert_vm(p(0), r))
            .map(|vm| Response::json(200, &vm)),
        ("/v1/vms/{id}/migrate", _) => body(&req)
            .and_then(|r| daemon.migrate_vm(p(0), r))
            .map(|vm| Response::json(200, &vm)),
        ("/v1/migrations/incoming", _) => body(&req)
            .and_then(|r| daemon.incoming_vm(r))
            .map(|(url, vm)| Response::json(201, &json!({"receiver_url": url, "vm": vm}))),
        ("/v1/templates", Method::Get) => daemon
            .store()
            .list_templates()
            .map(|t| Response::json(200, &json!({ "items": t })))
            .map_err(Into::into),
        ("/v1/templates", _) => body(&req)
            .and_then(|t| daemon.create_template(t))
            .map(|t| Response::json(201, &t)),
        ("/v1/templates/{name}/versions", Method::Get) => daemon
            .template_versions(p(0))
            .map(|v| Response::json(200, &json!({ "items": v }))),
        ("/v1/templates/{name}/versions", _) => body(&req)
            .and_then(|t| daemon.add_template_version(p(0), t))
            .map(|t| Response::json(201, &t)),
        ("/v1/templates/{name}/versions/{version}", _) => daemon
            .template_version(p(0), p(1))
            .map(|t| Response::json(200, &t)),
        ("/v1/templates/{name}", Method::Get) => daemon
            .store()
            .get_template(p(0))
            .map_err(ApiError::from)
            .and_then(|t| t.ok_or_else(|| no_template(p(0))))
            .map(|t| Response::json(200, &t)),
        ("/v1/templates/{name}", _) => match daemon.store().delete_template(p(0)) {
            Ok(true) => Ok(Response::no_content()),
            Ok(false) => Err(no_template(p(0))),
            Err(e) => Err(e.into()),
        },
        ("/v1/networks", Method::Get) => daemon.list_networks().map(|v| Response::json(200, &v)),
        ("/v1/networks", _) => body::<CreateNetwork>(&req)
            .and_then(|c| daemon.create_network(c))
            .map(|n| Response::json(201, &n)),
        ("/v1/networks/{name}", Method::Get) => {
            daemon.get_network(p(0)).map(|v| Response::json(200, &v))
        }
        ("/v1/networks/{name}", _) => daemon.delete_network(p(0)).map(|()| Response::no_content()),
        ("/v1/pools", Method::Get) => daemon.list_pools().map(|v| Response::json(200, &v)),
        ("/v1/pools", _) => body::<CreatePool>(&req)
            .and_then(|c| daemon.create_pool(c))
            .map(|v| Response::json(201, &v)),
        ("/v1/pools/{name}", Method::Get) => daemon.get_pool(p(0)).map(|v| Response::json(200, &v)),
        ("/v1/pools/{name}", _) => daemon.delete_pool(p(0)).map(|()| Response::no_content()),
        ("/v1/volumes", Method::Get) => query(&req, &["pool"])
            .and_then(|q| {
                let pool = q.iter().find(|(k, _)| k == "pool").map(|(_, v)| v.as_str());
                daemon.list_volumes(pool)
            })
            .map(|v| Response::json(200, &v)),
        ("/v1/volumes", _) => body::<CreateVolume>(&req)
            .and_then(|c| daemon.create_volume(c))
            .map(|v| Response::json(201, &v)),
        ("/v1/volumes/{pool}/{name}", m) => check_volume_path(p(0), p(1)).and_then(|()| {
            if m == Method::Get {
                daemon
                    .get_volume(p(0), p(1))
                    .map(|v| Response::json(200, &v))
            } else {
                daemon
                    .delete_volume(p(0), p(1))
                    .map(|()| Response::no_content())
            }
        }),
        ("/v1/volumes/{pool}/{name}/resize", _) => check_volume_path(p(0), p(1))
            .and_then(|()| body::<Resize>(&req))
            .and_then(|r| daemon.resize_volume(p(0), p(1), r))
            .map(|v| Response::json(200, &v)),
        ("/v1/volumes/{pool}/{name}/convert", _) => check_volume_path(p(0), p(1))
            .and_then(|()| body::<Convert>(&req))
            .and_then(|c| daemon.convert_volume(p(0), p(1), c))
            .map(|v| Response::json(200, &v)),
        ("/v1/host", _) => host(daemon),
        ("/v1/feature-gates", _) => Ok(Response::json(200, &json!({ "items": gates(daemon) }))),
        ("/v1/feature-gates/{name}", _) => gates(daemon)
            .into_iter()
            .find(|g| g["name"] == p(0))
            .map(|g| Response::json(200, &g))
            .ok_or_else(|| {
                let known: Vec<&str> = FEATURE_GATES.iter().map(|g| g.0).collect();
                ApiError::new(
                    404,
                    format!(
                        "unknown feature gate {:?} (known: {})",
                        p(0),
                        known.join(", ")
                    ),
                )
            }),
        ("/v1/events", _) => {
            let d = Arc::clone(daemon);
            Ok(
                Response::stream(200, "text/event-stream", move |s| d.events.subscribe(s))
                    .with_header("Cache-Control", "no-cache"),
            )
        }
        ("/metrics", _) => Ok(Response::with_body(
            200,
            "text/plain; version=0.0.4",
            metrics::render(daemon),
        )),
        _ => Err(ApiError::new(404, "no route")),
    };
    result.unwrap_or_else(|e| Response::error(e.status, &e.message))
}

fn no_template(name: &str) -> ApiError {
    ApiError::new(404, format!("no template {name:?}"))
}

/// The JSON body as `T`; 400 naming the problem (415 for another content type).
fn body<T: serde::de::DeserializeOwned>(req: &Request) -> ApiResult<T> {
    if let Some(ct) = req.header("content-type") {
        if !ct
            .trim_start()
            .to_ascii_lowercase()
            .starts_with("application/json")
        {
            return Err(ApiError::new(
                415,
                format!("Content-Type {ct}: send application/json"),
            ));
        }
    }
    if req.body.is_empty() {
        return Err(ApiError::new(400, "a JSON body is required"));
    }
    req.json()
        .map_err(|e| ApiError::new(400, format!("malformed JSON body: {e}")))
}

/// A JSON body that may be left out (its type's default then).
fn optional_body<T: serde::de::DeserializeOwned + Default>(req: &Request) -> ApiResult<T> {
    if req.body.is_empty() {
        Ok(T::default())
    } else {
        body(req)
    }
}

fn action(daemon: &Arc<Daemon>, id: &str, what: &str) -> ApiResult<Response> {
    daemon
        .vm_action(id, what)
        .map(|vm| Response::json(200, &vm))
}

/// Decoded query pairs; an unknown parameter is a 400.
fn query(req: &Request, known: &[&str]) -> ApiResult<Vec<(String, String)>> {
    let mut out = Vec::new();
    for pair in req
        .query()
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let (k, v) = (percent_decode(k), percent_decode(v));
        if !known.contains(&k.as_str()) {
            return Err(ApiError::new(
                400,
                format!(
                    "unknown query parameter {k:?} (known: {})",
                    known.join(", ")
                ),
            ));
        }
        out.push((k, v));
    }
    Ok(out)
}

fn bad(m: String) -> ApiError {
    ApiError::new(400, m)
}

fn list_vms(daemon: &Arc<Daemon>, req: &Request) -> ApiResult<Response> {
    let pairs = query(
        req,
        &[
            "state",
            "name",
            "label",
            "tag",
            "template",
            "description",
            "hypervisor",
            "sort",
            "limit",
            "continue",
        ],
    )?;
    let mut q = ListQuery {
        state: None,
        name: None,
        labels: Vec::new(),
        hypervisor: None,
        tags: Vec::new(),
        template: None,
        description: None,
        sort: SortKey::Created,
        descending: false,
        limit: DEFAULT_LIMIT,
        after: None,
    };
    let mut token = None;
    for (k, v) in pairs {
        match k.as_str() {
            "state" => q.state = Some(v.parse().map_err(|e| bad(format!("state: {e}")))?),
            "name" => q.name = Some(v),
            "hypervisor" => q.hypervisor = Some(v),
            "tag" => q.tags.push(v),
            "template" => q.template = Some(v),
            "description" => q.description = Some(v),
            "label" => {
                let (lk, lv) = v
                    .split_once('=')
                    .ok_or_else(|| bad(format!("label: {v:?} is not key=value")))?;
                let one = [(lk.to_string(), lv.to_string())].into_iter().collect();
                super::model::validate_labels(&one).map_err(bad)?;
                q.labels.push((lk.to_string(), lv.to_string()));
            }
            "sort" => {
                let (desc, field) = match v.strip_prefix('-') {
                    Some(f) => (true, f),
                    None => (false, v.as_str()),
                };
                q.descending = desc;
                q.sort = match field {
                    "name" => SortKey::Name,
                    "created" => SortKey::Created,
                    _ => {
                        return Err(bad(format!(
                            "sort: {v:?} (expected name, created, -name or -created)"
                        )))
                    }
                };
            }
            "limit" => {
                q.limit = v
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=MAX_LIMIT).contains(n))
                    .ok_or_else(|| bad(format!("limit: {v:?} is not 1 to {MAX_LIMIT}")))?;
            }
            _ => token = Some(v),
        }
    }
    if let Some(t) = token {
        let c =
            decode_cursor(&t).ok_or_else(|| bad("continue: not a token from this API".into()))?;
        if c.sort != sort_name(&q) {
            return Err(bad(format!(
                "continue: token is for sort={}, not sort={}",
                c.sort,
                sort_name(&q)
            )));
        }
        q.after = Some(c);
    }
    let page = daemon.store().list_vms(&q)?;
    Ok(Response::json(200, &page))
}

fn stop_timeout(daemon: &Daemon, req: &Request) -> ApiResult<Duration> {
    let mut t = daemon.config.stop_timeout_s;
    for (_, v) in query(req, &["timeout"])? {
        t = v
            .parse::<u64>()
            .ok()
            .filter(|&s| s <= 3600)
            .ok_or_else(|| bad(format!("timeout: {v:?} is not 0 to 3600 seconds")))?;
    }
    Ok(Duration::from_secs(t))
}

fn console(daemon: &Arc<Daemon>, req: &Request, id: &str) -> ApiResult<Response> {
    let mut tail = MAX_CONSOLE;
    for (_, v) in query(req, &["tail"])? {
        tail = v
            .parse::<u64>()
            .map_err(|_| bad(format!("tail: {v:?} is not a number of bytes")))?
            .min(MAX_CONSOLE);
    }
    let vm = daemon.get_vm(id)?;
    let dir = VmDir::new(&daemon.config.state_dir, &vm.id);
    let path = launcher::serial_file(&vm.config, &dir)
        .ok_or_else(|| ApiError::new(404, format!("VM {}: the serial port is off", vm.name)))?;
    let mut text = Vec::new();
    match std::fs::File::open(&path) {
        Ok(mut f) => {
            let len = f.metadata().map_or(0, |m| m.len());
            let read = f
                .seek(SeekFrom::Start(len.saturating_sub(tail)))
                .and_then(|_| f.take(tail).read_to_end(&mut text));
            read.map_err(|e| ApiError::new(500, format!("read {}: {e}", path.display())))?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(ApiError::new(500, format!("open {}: {e}", path.display()))),
    }
    Ok(Response::with_body(200, "text/plain; charset=utf-8", text))
}

fn gates(daemon: &Daemon) -> Vec<serde_json::Value> {
    FEATURE_GATES
        .iter()
        .map(|(name, stage, default, description)| {
            json!({
                "name": name,
                "stage": stage,
                "default": default,
                "enabled": daemon.config.gate(name),
                "description": description,
            })
        })
        .collect()
}

fn host(daemon: &Arc<Daemon>) -> ApiResult<Response> {
    let host = daemon.refresh_host();
    let gate = daemon.config.gate("mshv");
    let limits = daemon.limits(&host);
    let allocated = daemon.allocation(None)?;
    let auto = match host.select(super::model::HypervisorRequest::Auto, gate) {
        Ok((kind, reason)) => json!({"hypervisor": kind, "reason": reason}),
        Err(e) => json!({"hypervisor": null, "reason": e}),
    };
    Ok(Response::json(
        200,
        &json!({
            "cpus": host.cpus,
            "memory_bytes": host.memory_bytes,
            "kvm": host.available("kvm", gate),
            "mshv": host.available("mshv", gate),
            "auto": auto,
            "capabilities": host.capabilities,
            "petrel": daemon.config.petrel,
            "overcommit": {
                "memory": daemon.config.memory_overcommit,
                "cpu": daemon.config.cpu_overcommit,
            },
            "admitted": limits_json(limits.memory_bytes, limits.vcpus),
            "allocated": limits_json(allocated.memory_bytes, allocated.vcpus),
        }),
    ))
}

fn limits_json(memory: u64, vcpus: u64) -> serde_json::Value {
    json!({"memory_bytes": memory, "vcpus": vcpus})
}

/// Decodes `%XX` and `+`.
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |j: usize| b.get(j).and_then(|c| (*c as char).to_digit(16));
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => match (hex(i + 1), hex(i + 2)) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routing() {
        let (p, _, params) = route("/v1/vms/abc/stop").unwrap();
        assert_eq!(p, "/v1/vms/{id}/stop");
        assert_eq!(params, ["abc"]);
        assert_eq!(route("/v1/vms/").unwrap().0, "/v1/vms");
        assert!(route("/v1/vms/a/b/c").is_none());
        assert!(route("/v2/vms").is_none());
        assert_eq!(percent_decode("a%3Db+c%zz"), "a=b c%zz");
    }

    /// docs/api/petreld.yaml lists exactly the routes and methods served.
    #[test]
    fn openapi_document_matches_routes() {
        let doc = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/api/petreld.yaml"),
        )
        .unwrap();
        let mut documented: Vec<(String, String)> = Vec::new();
        let mut path = None;
        for line in doc.lines() {
            if let Some(p) = line.strip_prefix("  /").and_then(|l| l.strip_suffix(':')) {
                path = Some(format!("/{p}"));
            } else if !line.starts_with("  ") {
                path = None;
            } else if let (Some(p), Some(m)) = (&path, line.strip_prefix("    ")) {
                let m = m.trim_end_matches(':');
                if ["get", "post", "put", "delete", "patch"].contains(&m) {
                    documented.push((p.clone(), m.to_uppercase()));
                }
            }
        }
        let mut served: Vec<(String, String)> = ROUTES
            .iter()
            .flat_map(|(p, ms)| ms.iter().map(|m| (p.to_string(), m.as_str().to_string())))
            .collect();
        documented.sort();
        served.sort();
        assert_eq!(documented, served);
    }
}
