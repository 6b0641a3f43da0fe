//! Connection slots under hostile clients: idle clients cannot starve the others, clients
//! that have not authenticated cannot take the authenticated ones' slots, and a refused
//! connection always reads its 503 (no reset), over Unix sockets and loopback TCP.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::response::parse_response;
use super::*;

fn temp_socket(name: &str) -> std::path::PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!(
        "petrel-slots-{}-{n}-{name}.sock",
        std::process::id()
    ))
}

/// Answers 200 to everyone; authenticates requests carrying `X-Token: ok`.
struct TokenHandler;

impl Handler for TokenHandler {
    fn handle(&mut self, _request: Request) -> Response {
        Response::no_content()
    }

    fn authenticates(&self, request: &Request) -> bool {
        request.header("x-token") == Some("ok")
    }
}

/// Everything `s` sends until it closes; a reset is a failure.
fn read_all<S: Read>(s: &mut S) -> Vec<u8> {
    let mut got = Vec::new();
    if let Err(e) = s.read_to_end(&mut got) {
        panic!(
            "{e} after {:?}: the connection must close cleanly",
            String::from_utf8_lossy(&got)
        );
    }
    got
}

fn status(bytes: &[u8]) -> u16 {
    parse_response(bytes, false, true, 1 << 20)
        .unwrap()
        .unwrap_or_else(|| panic!("no response in {:?}", String::from_utf8_lossy(bytes)))
        .response
        .status
}

/// 40 clients that connect and send nothing, against 16 slots: a client with a request is
/// still answered at once (the longest idle connections make room), and the idle ones are
/// closed without a reset.
#[test]
fn idle_clients_make_room_for_clients_with_requests() {
    let path = temp_socket("idle");
    let server = Server::bind(&path, ServerConfig::default(), TokenHandler).unwrap();
    let idle: Vec<UnixStream> = (0..40)
        .map(|_| UnixStream::connect(&path).unwrap())
        .collect();
    // Longer than the 100 ms after which an idle connection may be closed to make room.
    std::thread::sleep(Duration::from_millis(400));
    let client = Client::new(&path).with_timeout(Duration::from_secs(2));
    for _ in 0..20 {
        assert_eq!(client.get("/").unwrap().status, 204);
    }
    for mut s in idle {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let got = read_all(&mut s);
        assert!(got.is_empty() || status(&got) == 503);
    }
    server.shutdown();
}

/// A refused connection that already sent its request reads the whole 503 and then an
/// orderly close (on TCP, closing with its unread request would reset the connection and
/// lose the 503).
#[test]
fn a_refused_connection_reads_its_503_over_tcp() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let config = ServerConfig {
        max_unauthenticated: 2,
        ..ServerConfig::default()
    };
    let server = Server::start(listener, config, TokenHandler).unwrap();
    // Two clients in the middle of a request hold both unauthenticated slots.
    let mut busy: Vec<TcpStream> = (0..2).map(|_| TcpStream::connect(addr).unwrap()).collect();
    for s in &mut busy {
        s.write_all(b"GET / HTTP/1.1\r\n").unwrap();
    }
    std::thread::sleep(Duration::from_millis(100));
    for i in 0..20 {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello")
            .unwrap();
        let got = read_all(&mut s);
        assert_eq!(status(&got), 503, "refused client {i}");
    }
    server.shutdown();
}

/// Connections that never authenticate fill only their own slots: authenticated keep-alive
/// connections keep being served while unauthenticated clients crowd the server, and a
/// new client that authenticates gets in as soon as an idle unauthenticated one is closed.
#[test]
fn unauthenticated_clients_cannot_take_authenticated_slots() {
    let path = temp_socket("auth");
    let config = ServerConfig {
        max_connections: 2,
        max_unauthenticated: 2,
        ..ServerConfig::default()
    };
    let server = Server::bind(&path, config, TokenHandler).unwrap();
    let get = |s: &mut UnixStream, token: &str| {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(s, "GET / HTTP/1.1\r\nX-Token: {token}\r\n\r\n").unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 1024];
        loop {
            if let Some(p) = parse_response(&buf, false, false, 1 << 20).unwrap() {
                return p.response.status;
            }
            let n = s.read(&mut chunk).unwrap();
            assert!(n > 0, "closed");
            buf.extend_from_slice(&chunk[..n]);
        }
    };
    let mut authed: Vec<UnixStream> = (0..2)
        .map(|_| UnixStream::connect(&path).unwrap())
        .collect();
    for s in &mut authed {
        assert_eq!(get(s, "ok"), 204);
    }
    // Unauthenticated clients that keep sending requests without the token, and idle ones.
    let mut noisy: Vec<UnixStream> = (0..2)
        .map(|_| UnixStream::connect(&path).unwrap())
        .collect();
    for s in &mut noisy {
        assert_eq!(get(s, "bad"), 204);
    }
    let _idle: Vec<UnixStream> = (0..10)
        .map(|_| UnixStream::connect(&path).unwrap())
        .collect();
    let t0 = Instant::now();
    for _ in 0..5 {
        for s in &mut authed {
            assert_eq!(get(s, "ok"), 204);
        }
    }
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    // Idle connections are closed to make room once idle for a moment (100 ms).
    std::thread::sleep(Duration::from_millis(400));
    let mut fresh = UnixStream::connect(&path).unwrap();
    assert_eq!(get(&mut fresh, "ok"), 204);
    server.shutdown();
}
