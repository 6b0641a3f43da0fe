//! petreld's optional TCP listener: on 127.0.0.1 with an ephemeral port, every request needs
//! `Authorization: Bearer <token>` (401 with a `WWW-Authenticate` challenge otherwise), the
//! Unix socket keeps working without one, and a token file readable by others stops petreld
//! from starting. Loopback only.
//!
//! Needs the binaries built first (`cargo build -p petreld -p vmm`): petreld is found next to
//! petrel, or at `$PETRELD_BIN`.

mod petreld_support;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use petrel_http::{parse_response, Response};
use petreld_support::{petreld_bin, Petreld};
use serde_json::json;

const TOKEN: &str = "tcp-test-token-0123456789abcdef";

/// A loopback port nobody listens on right now (bound to port 0, then released).
fn free_loopback_port() -> SocketAddr {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    l.local_addr().unwrap()
}

/// A private directory for the token file (petreld's own scratch directory is recreated).
fn token_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("pd-tok-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn write_token(path: &Path, mode: u32) {
    std::fs::write(path, format!("{TOKEN}\n")).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// One request on a new TCP connection, with `auth` as the Authorization header if given.
fn tcp_get(addr: SocketAddr, path: &str, auth: Option<&str>) -> Response {
    assert!(addr.ip().is_loopback());
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let auth = auth
        .map(|a| format!("Authorization: {a}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).unwrap();
    parse_response(&buf, false, true, 1 << 20)
        .unwrap()
        .expect("a complete response")
        .response
}

fn assert_401(r: &Response, what: &str) {
    assert_eq!(r.status, 401, "{what}: {r:?}");
    let challenge = r.header("www-authenticate").unwrap_or("");
    assert!(challenge.starts_with("Bearer"), "{what}: {challenge:?}");
    assert!(!r.error_message().is_empty(), "{what}: {r:?}");
    let body = String::from_utf8_lossy(&r.body);
    assert!(!body.contains(TOKEN), "{what}: {body}");
}

#[test]
fn tcp_listener_needs_the_bearer_token() {
    let tokens = token_dir("ok");
    let token_file = tokens.join("token");
    write_token(&token_file, 0o600);
    let addr = free_loopback_port();
    let d = Petreld::with_config(
        "tcp",
        json!({"tcp": {"listen": addr.to_string(), "token_file": token_file}}),
    );

    let r = tcp_get(addr, "/v1/ping", Some(&format!("Bearer {TOKEN}")));
    assert_eq!(r.status, 200, "{r:?}\n{}", d.log());
    // The scheme is case-insensitive.
    let r = tcp_get(addr, "/v1/feature-gates", Some(&format!("bearer {TOKEN}")));
    assert_eq!(r.status, 200, "{r:?}");

    assert_401(&tcp_get(addr, "/v1/ping", None), "no token");
    assert_401(&tcp_get(addr, "/v1/vms", None), "no token, other route");
    assert_401(
        &tcp_get(addr, "/v1/nowhere", None),
        "no token, unknown route",
    );
    let wrong = format!("Bearer {}x", &TOKEN[..TOKEN.len() - 1]);
    assert_401(&tcp_get(addr, "/v1/ping", Some(&wrong)), "wrong token");
    let prefix = format!("Bearer {}", &TOKEN[..10]);
    assert_401(&tcp_get(addr, "/v1/ping", Some(&prefix)), "token prefix");
    let longer = format!("Bearer {TOKEN}0");
    assert_401(&tcp_get(addr, "/v1/ping", Some(&longer)), "longer token");
    let basic = format!("Basic {TOKEN}");
    assert_401(&tcp_get(addr, "/v1/ping", Some(&basic)), "other scheme");

    // The Unix socket needs no token.
    let r = d.client.get("/v1/ping").unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(d.client.get("/v1/vms").unwrap().status, 200);

    // The event stream works over TCP too.
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "GET /v1/events HTTP/1.1\r\nAuthorization: Bearer {TOKEN}\r\n\r\n"
    )
    .unwrap();
    let mut seen = Vec::new();
    let mut chunk = [0u8; 1024];
    while !String::from_utf8_lossy(&seen).contains(": subscribed") {
        let n = s.read(&mut chunk).unwrap();
        assert!(n > 0, "{}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8_lossy(&seen);
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(text.contains("text/event-stream"), "{text}");

    assert!(!d.log().contains(TOKEN), "the token was logged");
    drop(d);
    std::fs::remove_dir_all(&tokens).unwrap();
}

#[test]
fn token_file_readable_by_others_refuses_to_start() {
    let tokens = token_dir("bad");
    let token_file = tokens.join("token");
    write_token(&token_file, 0o644);
    let dir = tokens.join("d");
    std::fs::create_dir_all(&dir).unwrap();
    let addr = free_loopback_port();
    let config = json!({
        "poll_interval_ms": 200,
        "tcp": {"listen": addr.to_string(), "token_file": token_file},
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let socket = dir.join("petreld.sock");
    let mut child = Command::new(petreld_bin())
        .arg("--socket")
        .arg(&socket)
        .arg("--state-dir")
        .arg(dir.join("state"))
        .arg("--config")
        .arg(dir.join("config.json"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("petreld started with a token file of mode 0644");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(!status.success(), "{status}: {stderr}");
    assert!(
        stderr.contains(&*token_file.to_string_lossy()) && stderr.contains("0644"),
        "{stderr}"
    );
    assert!(!stderr.contains(TOKEN), "{stderr}");
    assert!(!socket.exists(), "the API socket was created");
    assert!(
        TcpStream::connect(addr).is_err(),
        "something listens on {addr}"
    );
    std::fs::remove_dir_all(&tokens).unwrap();
}
