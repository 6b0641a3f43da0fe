//! petreld's monitoring with the real tools: the shipped Prometheus configuration and alerting
//! rules (resources/monitoring/) pass `promtool check` and the rules' own unit tests
//! (`promtool test rules`), a real Prometheus server scrapes a petreld running a VM over its
//! TCP listener with the bearer token and answers queries with the VM's series, and every
//! series the Grafana dashboard queries is one petreld serves.
//!
//! Prometheus comes from Debian (`prometheus`; resources/run-tests.sh installs it); without
//! it the tests skip and say so.

mod petreld_support;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use petrel_http::{parse_response, Method, Response};
use petreld_support::Petreld;
use serde_json::{json, Value};

const TOKEN: &str = "monitoring-test-token-0123456789";

fn monitoring_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../resources/monitoring")
}

/// The tool's path, or `None` after recording a skip.
fn tool(name: &str) -> Option<PathBuf> {
    for dir in ["/usr/bin", "/usr/local/bin"] {
        let p = Path::new(dir).join(name);
        if p.is_file() {
            return Some(p);
        }
    }
    petrel_tests::skip(format!(
        "{name} is not installed (Debian package prometheus; resources/run-tests.sh installs it)"
    ));
    None
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("petrel-mon-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn free_port() -> SocketAddr {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap()
}

/// The shipped configuration with the token file and target replaced, beside its rules.
fn write_config(dir: &Path, token: &Path, target: SocketAddr, interval: &str) -> PathBuf {
    let text = std::fs::read_to_string(monitoring_dir().join("prometheus.yml")).unwrap();
    assert!(text.contains("/etc/petrel/token") && text.contains("127.0.0.1:9410"));
    let text = text
        .replace("/etc/petrel/token", &token.to_string_lossy())
        .replace("127.0.0.1:9410", &target.to_string())
        .replace(
            "scrape_interval: 15s",
            &format!("scrape_interval: {interval}"),
        );
    for f in ["petrel-alerts.yml", "petrel-alerts.test.yml"] {
        std::fs::copy(monitoring_dir().join(f), dir.join(f)).unwrap();
    }
    let path = dir.join("prometheus.yml");
    std::fs::write(&path, text).unwrap();
    path
}

fn write_token(dir: &Path) -> PathBuf {
    let p = dir.join("token");
    std::fs::write(&p, format!("{TOKEN}\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    p
}

fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn shipped_prometheus_config_and_alert_rules_pass_promtool() {
    let Some(promtool) = tool("promtool") else {
        return;
    };
    let dir = scratch("promtool");
    let token = write_token(&dir);
    let config = write_config(&dir, &token, "127.0.0.1:9410".parse().unwrap(), "15s");
    let (ok, out) = run(Command::new(&promtool)
        .args(["check", "config"])
        .arg(&config));
    assert!(ok && out.contains("SUCCESS"), "{out}");
    let (ok, out) = run(Command::new(&promtool)
        .args(["check", "rules"])
        .arg(dir.join("petrel-alerts.yml")));
    assert!(ok && out.contains("6 rules found"), "{out}");
    // The rules' unit tests: every alert fires on the series it is for, not on the others.
    let (ok, out) = run(Command::new(&promtool).current_dir(&dir).args([
        "test",
        "rules",
        "petrel-alerts.test.yml",
    ]));
    assert!(ok && out.contains("SUCCESS"), "{out}");
    // And they can fail: a crash-looping threshold the series never reach is caught.
    let rules = std::fs::read_to_string(dir.join("petrel-alerts.yml")).unwrap();
    std::fs::write(
        dir.join("petrel-alerts.yml"),
        rules.replace("[15m]) >= 3", "[15m]) >= 30"),
    )
    .unwrap();
    let (ok, out) = run(Command::new(&promtool).current_dir(&dir).args([
        "test",
        "rules",
        "petrel-alerts.test.yml",
    ]));
    assert!(!ok && out.contains("PetrelVmCrashLooping"), "{out}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// GET `path` from `addr`, one request per connection. HTTP/1.0, so that Prometheus sends a
/// body that ends with the connection rather than a chunked one.
fn get(addr: SocketAddr, path: &str, auth: bool) -> std::io::Result<Response> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let auth = if auth {
        format!("Authorization: Bearer {TOKEN}\r\n")
    } else {
        String::new()
    };
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n{auth}\r\n")?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    parse_response(&buf, false, true, 8 << 20)
        .map_err(|e| std::io::Error::other(format!("{e:?}")))?
        .map(|p| p.response)
        .ok_or_else(|| std::io::Error::other("incomplete response"))
}

/// A Prometheus server, killed when dropped.
struct Prometheus(Child);

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Asks Prometheus for `query` until it returns a non-empty vector; its samples.
fn query(prom: SocketAddr, q: &str, log: &Path) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(90);
    let path = format!(
        "/api/v1/query?query={}",
        q.replace('{', "%7B")
            .replace('}', "%7D")
            .replace('"', "%22")
            .replace('=', "%3D")
    );
    loop {
        if let Ok(r) = get(prom, &path, false) {
            if r.status == 200 {
                let v: Value = serde_json::from_slice(&r.body).unwrap();
                let result = v["data"]["result"].as_array().cloned().unwrap_or_default();
                if !result.is_empty() {
                    return result;
                }
            }
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus never had {q}:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn value(sample: &Value) -> f64 {
    sample["value"][1].as_str().unwrap().parse().unwrap()
}

#[test]
fn a_real_prometheus_scrapes_petreld_and_the_dashboard_queries_its_series() {
    let Some(prometheus) = tool("prometheus") else {
        return;
    };
    let dir = scratch("scrape");
    let token = write_token(&dir);
    let api = free_port();
    let d = Petreld::with_config(
        "monitoring",
        json!({"tcp": {"listen": api.to_string(), "token_file": token}}),
    );
    d.create("watched", "action=halt", json!({}));
    let pool_dir = d.dir.join("state/pools/mon");
    d.ok(
        Method::Post,
        "/v1/pools",
        Some(&json!({"name": "mon", "path": pool_dir})),
        201,
    );
    d.wait_vm("watched", "running", |v| v["state"] == "running");
    let vm = d.vm("watched");
    let vcpus = vm["config"]["cpus"]["boot_vcpus"].as_f64().unwrap();

    // What petreld serves, read directly over TCP with the token.
    let metrics = get(api, "/metrics", true).unwrap();
    assert_eq!(metrics.status, 200, "{metrics:?}");
    let text = String::from_utf8_lossy(&metrics.body).to_string();
    assert!(get(api, "/metrics", false).unwrap().status == 401);

    // Every series the dashboard queries exists in it.
    let dash: Value = serde_json::from_slice(
        &std::fs::read(monitoring_dir().join("grafana-dashboard.json")).unwrap(),
    )
    .unwrap();
    let mut names = Vec::new();
    for panel in dash["panels"].as_array().unwrap() {
        for t in panel["targets"].as_array().unwrap() {
            let expr = t["expr"].as_str().unwrap();
            for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if word.starts_with("petreld_") && !names.contains(&word.to_string()) {
                    names.push(word.to_string());
                }
            }
        }
    }
    assert!(names.len() >= 10, "{names:?}");
    for n in &names {
        assert!(
            text.lines().any(|l| l.starts_with(&format!("{n}{{"))
                || l.starts_with(&format!("{n} "))
                // Per-network series have no sample without a network (this test makes
                // none: networks need a namespace of their own, petreld_networks.rs).
                || (n.starts_with("petreld_network_") && l == format!("# TYPE {n} gauge"))),
            "the dashboard queries {n}, which petreld does not serve:\n{text}"
        );
    }

    // A real Prometheus scraping it every second.
    let web = free_port();
    let config = write_config(&dir, &token, api, "1s");
    let log = dir.join("prometheus.log");
    let _prom = Prometheus(
        Command::new(&prometheus)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={web}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let up = query(web, "up{job=\"petreld\"}", &log);
    assert_eq!(value(&up[0]), 1.0, "{up:?}");
    let v = query(web, "petreld_vm_vcpus{name=\"watched\"}", &log);
    assert_eq!(value(&v[0]), vcpus, "{v:?}");
    let v = query(web, "petreld_vm_up{name=\"watched\"}", &log);
    assert_eq!(value(&v[0]), 1.0, "{v:?}");
    let v = query(
        web,
        "petreld_vm_resident_memory_bytes{name=\"watched\"}",
        &log,
    );
    assert!(value(&v[0]) > 1e6, "{v:?}");
    let v = query(web, "petreld_pool_bytes{pool=\"mon\",kind=\"size\"}", &log);
    assert!(value(&v[0]) > 0.0, "{v:?}");
    let v = query(web, "petreld_host_cpus", &log);
    let cpus = std::thread::available_parallelism().unwrap().get() as f64;
    assert_eq!(value(&v[0]), cpus, "{v:?}");
    // The rules loaded and evaluate (nothing should be firing for a healthy VM).
    let rules = get(web, "/api/v1/rules", false).unwrap();
    let rules: Value = serde_json::from_slice(&rules.body).unwrap();
    let loaded = rules["data"]["groups"][0]["rules"].as_array().unwrap();
    assert_eq!(loaded.len(), 6, "{rules:#}");
    assert!(
        loaded
            .iter()
            .filter(|r| r["name"] == "PetrelVmUnreachable" || r["name"] == "PetreldDown")
            .all(|r| r["state"] == "inactive"),
        "{rules:#}"
    );
    d.call(Method::Delete, "/v1/vms/watched", None);
    drop(d);
    let _ = std::fs::remove_dir_all(&dir);
}
