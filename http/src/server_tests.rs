//! Server and client together over temporary sockets.

use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::response::parse_response;
use super::*;

/// A socket path unique to this test process and call.
fn temp_socket(name: &str) -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!(
        "petrel-http-{}-{n}-{name}.sock",
        std::process::id()
    ))
}

/// Answers `/missing` with 404, `/fd` by reading every received fd to its end, anything
/// else by echoing method, path and body.
fn echo(mut req: Request) -> Response {
    match req.path() {
        "/missing" => Response::error(404, "no such thing"),
        "/empty" => Response::no_content(),
        "/fd" => {
            let mut text = String::new();
            for fd in req.take_fds() {
                let mut file = std::fs::File::from(fd);
                file.read_to_string(&mut text).unwrap();
            }
            Response::text(200, text)
        }
        _ => Response::json(
            200,
            &serde_json::json!({
                "method": req.method.as_str(),
                "path": req.path(),
                "body": String::from_utf8_lossy(&req.body),
                "fds": req.fds.len(),
            }),
        ),
    }
}

fn quick_config() -> ServerConfig {
    ServerConfig {
        read_timeout: Duration::from_millis(300),
        idle_timeout: Duration::from_millis(300),
        ..ServerConfig::default()
    }
}

fn start(name: &str, config: ServerConfig) -> (Server, Client) {
    let path = temp_socket(name);
    let server = Server::bind(&path, config, echo).unwrap();
    let client = Client::new(&path).with_timeout(Duration::from_secs(10));
    (server, client)
}

/// Sends `bytes` on `stream` and reads responses until `count` were parsed; returns them.
fn raw(stream: &mut UnixStream, bytes: &[u8], count: usize) -> Vec<Response> {
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(bytes).unwrap();
    let mut buf = Vec::new();
    let mut out = Vec::new();
    let mut chunk = [0u8; 4096];
    while out.len() < count {
        while let Some(p) = parse_response(&buf, false, false, 1 << 20).unwrap() {
            buf.drain(..p.len);
            out.push(p.response);
            if out.len() == count {
                return out;
            }
        }
        let n = stream.read(&mut chunk).unwrap();
        assert!(n > 0, "closed after {} responses", out.len());
        buf.extend_from_slice(&chunk[..n]);
    }
    out
}

/// Whether the server closed `stream` (EOF) within 10 s.
fn closed_by_server(stream: &mut UnixStream) -> bool {
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).is_ok()
}

#[test]
fn get_and_put_with_body() {
    let (_server, client) = start("getput", ServerConfig::default());
    let r = client.get("/api/v1/vmm.ping").unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let v: serde_json::Value = r.json_body().unwrap();
    assert_eq!(
        (v["method"].as_str(), v["path"].as_str()),
        (Some("GET"), Some("/api/v1/vmm.ping"))
    );
    let r = client
        .request(Method::Put, "/api/v1/vm.create", Some(br#"{"cpus":1}"#))
        .unwrap();
    let v: serde_json::Value = r.json_body().unwrap();
    assert_eq!(
        (v["method"].as_str(), v["body"].as_str()),
        (Some("PUT"), Some(r#"{"cpus":1}"#))
    );
    let r = client.request(Method::Put, "/empty", None).unwrap();
    assert_eq!(
        (r.status, r.reason.as_str(), r.body.len()),
        (204, "No Content", 0)
    );
    let r = client.request(Method::Head, "/x", None).unwrap();
    assert_eq!((r.status, r.body.len()), (200, 0));
    assert!(matches!(client.get("relative"), Err(Error::Path(_))));
}

#[test]
fn handler_404() {
    let (_server, client) = start("404", ServerConfig::default());
    let r = client.get("/missing").unwrap();
    assert_eq!((r.status, r.reason.as_str()), (404, "Not Found"));
    assert_eq!(r.error_message(), "no such thing");
    // The connection still serves the next request.
    assert_eq!(client.get("/").unwrap().status, 200);
}

#[test]
fn keep_alive_and_pipelining() {
    let (server, _client) = start("keepalive", ServerConfig::default());
    let mut s = UnixStream::connect(server.path().unwrap()).unwrap();
    let a = raw(&mut s, b"GET /one HTTP/1.1\r\n\r\n", 1);
    let b = raw(
        &mut s,
        b"PUT /two HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi",
        1,
    );
    assert_eq!(
        a[0].json_body::<serde_json::Value>().unwrap()["path"],
        "/one"
    );
    assert_eq!(b[0].json_body::<serde_json::Value>().unwrap()["body"], "hi");
    // Two requests in one write, the second asking to close.
    let both = raw(
        &mut s,
        b"GET /3 HTTP/1.1\r\n\r\nGET /4 HTTP/1.1\r\nConnection: close\r\n\r\n",
        2,
    );
    assert_eq!(
        both[1].json_body::<serde_json::Value>().unwrap()["path"],
        "/4"
    );
    assert_eq!(both[1].header("connection"), Some("close"));
    assert!(closed_by_server(&mut s));
}

#[test]
fn http10_closes_after_the_response() {
    let (server, _client) = start("http10", ServerConfig::default());
    let mut s = UnixStream::connect(server.path().unwrap()).unwrap();
    let r = raw(&mut s, b"GET /old HTTP/1.0\r\n\r\n", 1);
    assert_eq!(r[0].status, 200);
    assert!(closed_by_server(&mut s));
}

#[test]
fn oversized_body_is_413() {
    let (_server, client) = start("413", ServerConfig::default());
    let body = vec![b'x'; 2 * 1024 * 1024];
    let r = client.request(Method::Put, "/big", Some(&body)).unwrap();
    assert_eq!(r.status, 413);
    assert!(
        r.error_message().contains("exceeds"),
        "{}",
        r.error_message()
    );
    // Exactly the limit is fine.
    let body = vec![b'x'; 1024 * 1024];
    assert_eq!(
        client
            .request(Method::Put, "/big", Some(&body))
            .unwrap()
            .status,
        200
    );
}

#[test]
fn malformed_request_is_400_and_closed() {
    let (server, _client) = start("400", ServerConfig::default());
    let mut s = UnixStream::connect(server.path().unwrap()).unwrap();
    let r = raw(&mut s, b"GET / HTTP/1.1\r\nbad header\r\n\r\n", 1);
    assert_eq!(r[0].status, 400);
    assert_eq!(r[0].header("connection"), Some("close"));
    assert!(!r[0].error_message().is_empty());
    assert!(closed_by_server(&mut s));
    let mut s = UnixStream::connect(server.path().unwrap()).unwrap();
    let r = raw(
        &mut s,
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        1,
    );
    assert_eq!(r[0].status, 411);
}

#[test]
fn silent_client_times_out_while_others_are_served() {
    let (server, client) = start("timeout", quick_config());
    let started = Instant::now();
    let mut silent = UnixStream::connect(server.path().unwrap()).unwrap();
    let mut partial = UnixStream::connect(server.path().unwrap()).unwrap();
    partial
        .write_all(b"PUT / HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc")
        .unwrap();
    for _ in 0..5 {
        assert_eq!(client.get("/").unwrap().status, 200);
    }
    assert!(closed_by_server(&mut silent));
    assert!(started.elapsed() >= Duration::from_millis(300));
    let r = raw(&mut partial, b"", 1);
    assert_eq!(r[0].status, 408);
    // The client notices its idle connection was closed and reconnects.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(client.get("/").unwrap().status, 200);
}

#[test]
fn expect_continue() {
    let (server, _client) = start("continue", ServerConfig::default());
    let mut s = UnixStream::connect(server.path().unwrap()).unwrap();
    s.write_all(b"PUT /c HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n")
        .unwrap();
    let mut buf = [0u8; 25];
    s.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"HTTP/1.1 100 Continue\r\n\r\n");
    let r = raw(&mut s, b"ok", 1);
    assert_eq!(r[0].json_body::<serde_json::Value>().unwrap()["body"], "ok");
}

#[test]
fn connection_limit() {
    let config = ServerConfig {
        max_unauthenticated: 2,
        ..ServerConfig::default()
    };
    let (server, _client) = start("limit", config);
    let path = server.path().unwrap().to_path_buf();
    // Two connections in the middle of a request hold both slots (idle ones would not).
    let mut a = UnixStream::connect(&path).unwrap();
    let mut b = UnixStream::connect(&path).unwrap();
    a.write_all(b"GET / HTTP/1.1\r\n").unwrap();
    b.write_all(b"GET / HTTP/1.1\r\n").unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let mut c = UnixStream::connect(&path).unwrap();
    assert_eq!(raw(&mut c, b"", 1)[0].status, 503);
    assert_eq!(raw(&mut a, b"\r\n", 1)[0].status, 200);
}

#[test]
fn fd_passing_through_a_pipe() {
    let (_server, client) = start("fds", ServerConfig::default());
    let (reader, mut writer) = std::io::pipe().unwrap();
    writer.write_all(b"through the pipe").unwrap();
    drop(writer);
    let reader = OwnedFd::from(reader);
    let r = client
        .request_with_fds(Method::Put, "/fd", Some(b"{}"), &[reader.as_fd()])
        .unwrap();
    assert_eq!(r.body, b"through the pipe");
}

#[test]
fn unused_fds_are_closed() {
    let (_server, client) = start("fdclose", ServerConfig::default());
    let (mut reader, writer) = std::io::pipe().unwrap();
    let writer = OwnedFd::from(writer);
    let r = client
        .request_with_fds(Method::Put, "/", None, &[writer.as_fd()])
        .unwrap();
    assert_eq!(r.json_body::<serde_json::Value>().unwrap()["fds"], 1);
    drop(writer);
    // EOF only once the server's copy of the write end is closed too.
    let mut rest = Vec::new();
    reader.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
}

#[test]
fn too_many_fds_is_400() {
    let (server, client) = start("manyfds", ServerConfig::default());
    let pipes: Vec<_> = (0..MAX_FDS + 1)
        .map(|_| std::io::pipe().unwrap().0)
        .collect();
    let fds: Vec<_> = pipes.iter().map(|p| p.as_fd()).collect();
    assert!(matches!(
        client.request_with_fds(Method::Get, "/", None, &fds),
        Err(Error::TooManyFds(17))
    ));
    let mut s = UnixStream::connect(server.path().unwrap()).unwrap();
    fds::send(s.as_fd(), b"GET / HTTP/1.1\r\n\r\n", &fds).unwrap();
    let r = raw(&mut s, b"", 1);
    assert_eq!(r[0].status, 400);
    assert!(closed_by_server(&mut s));
}

#[test]
fn forwarder_answers_from_another_thread() {
    let (forwarder, rx) = Forwarder::new(|| {});
    let path = temp_socket("forward");
    let server = Server::bind(&path, ServerConfig::default(), forwarder).unwrap();
    let worker = std::thread::spawn(move || {
        for exchange in rx.iter().take(2) {
            let status = if exchange.request.path() == "/drop" {
                0
            } else {
                201
            };
            if status == 0 {
                drop(exchange);
            } else {
                let path = exchange.request.path().to_string();
                exchange.reply(Response::text(status, path));
            }
        }
    });
    let client = Client::new(&path);
    let r = client.request(Method::Post, "/made", Some(b"{}")).unwrap();
    assert_eq!((r.status, r.body.as_slice()), (201, &b"/made"[..]));
    assert_eq!(client.get("/drop").unwrap().status, 503);
    worker.join().unwrap();
    // The receiver is gone: 503 without waiting.
    assert_eq!(client.get("/late").unwrap().status, 503);
    server.shutdown();
}

#[test]
fn bind_replaces_stale_sockets_and_shutdown_removes_them() {
    let path = temp_socket("stale");
    drop(UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let server = Server::bind(&path, ServerConfig::default(), echo).unwrap();
    assert!(matches!(listen(&path), Err(Error::InUse(_))));
    server.shutdown();
    assert!(!path.exists());
    assert!(Client::new(&path).get("/").is_err());
    let file = temp_socket("regular");
    std::fs::write(&file, b"keep me").unwrap();
    assert!(matches!(listen(&file), Err(Error::NotASocket(_))));
    assert_eq!(std::fs::read(&file).unwrap(), b"keep me");
    std::fs::remove_file(&file).unwrap();
}

#[test]
fn adopted_listener_serves() {
    let path = temp_socket("adopt");
    let listener = UnixListener::bind(&path).unwrap();
    let listener = adopt_listener(OwnedFd::from(listener)).unwrap();
    let server = Server::start(listener, ServerConfig::default(), echo).unwrap();
    assert_eq!(server.path(), None);
    assert_eq!(Client::new(&path).get("/").unwrap().status, 200);
    drop(server);
    std::fs::remove_file(&path).unwrap();
    let (reader, _writer) = std::io::pipe().unwrap();
    assert!(matches!(
        adopt_listener(OwnedFd::from(reader)),
        Err(Error::NotAListener(_))
    ));
    let (a, _b) = UnixStream::pair().unwrap();
    assert!(matches!(
        adopt_listener(OwnedFd::from(a)),
        Err(Error::NotAListener(_))
    ));
}

#[test]
fn socket_specs() {
    assert_eq!("fd=3".parse::<SocketSpec>().unwrap(), SocketSpec::Fd(3));
    assert_eq!(
        "/run/x.sock".parse::<SocketSpec>().unwrap(),
        SocketSpec::Path("/run/x.sock".into())
    );
    assert_eq!(
        "path=/run/x.sock".parse::<SocketSpec>().unwrap(),
        SocketSpec::Path("/run/x.sock".into())
    );
    assert!("path=".parse::<SocketSpec>().is_err());
    for bad in ["fd=", "fd=-1", "fd=x", ""] {
        assert!(bad.parse::<SocketSpec>().is_err(), "{bad}");
    }
    assert!(matches!(
        SocketSpec::Fd(100_000).listen(),
        Err(Error::NotAListener(_))
    ));
}

#[test]
fn client_times_out_on_a_server_that_never_answers() {
    let path = temp_socket("mute");
    let _listener = UnixListener::bind(&path).unwrap();
    let client = Client::new(&path).with_timeout(Duration::from_millis(200));
    assert!(matches!(client.get("/"), Err(Error::Timeout)));
    std::fs::remove_file(&path).unwrap();
}

/// Reads responses from a TCP stream until `count` were parsed.
fn tcp_responses(stream: &mut std::net::TcpStream, count: usize) -> Vec<Response> {
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut buf = Vec::new();
    let mut out = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        while let Some(p) = parse_response(&buf, false, false, 1 << 20).unwrap() {
            buf.drain(..p.len);
            out.push(p.response);
            if out.len() == count {
                return out;
            }
        }
        let n = stream.read(&mut chunk).unwrap();
        assert!(n > 0, "closed after {} responses", out.len());
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[test]
fn tcp_listener_serves_keep_alive_and_streams() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = Server::start(listener, quick_config(), |req: Request| {
        if req.path() == "/stream" {
            return Response::stream(200, "text/plain", |s| {
                let _ = (&s).write_all(b"streamed");
            });
        }
        echo(req)
    })
    .unwrap();
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.write_all(b"GET /one HTTP/1.1\r\n\r\nPOST /two HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi")
        .unwrap();
    let r = tcp_responses(&mut s, 2);
    let v: serde_json::Value = r[1].json_body().unwrap();
    assert_eq!((r[0].status, v["path"].as_str()), (200, Some("/two")));
    assert_eq!(
        (v["body"].as_str(), v["fds"].as_u64()),
        (Some("hi"), Some(0))
    );
    // An idle connection is closed after the read timeout, as on a Unix socket.
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());

    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.write_all(b"GET /stream HTTP/1.1\r\n\r\n").unwrap();
    let mut all = String::new();
    s.read_to_string(&mut all).unwrap();
    assert!(all.starts_with("HTTP/1.1 200 OK\r\n"), "{all}");
    assert!(all.ends_with("\r\n\r\nstreamed"), "{all}");
    server.shutdown();
    assert!(std::net::TcpStream::connect(addr).is_err());
}

#[test]
fn listener_clone_and_address() {
    let l = Listener::bind_tcp("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = l.tcp_addr().unwrap();
    assert!(addr.ip().is_loopback() && addr.port() != 0);
    let servers: Vec<Server> = (0..2)
        .map(|_| Server::start(l.try_clone().unwrap(), ServerConfig::default(), echo).unwrap())
        .collect();
    drop(l);
    for _ in 0..4 {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.write_all(b"GET /x HTTP/1.1\r\nConnection: close\r\n\r\n")
            .unwrap();
        assert_eq!(tcp_responses(&mut s, 1)[0].status, 200);
    }
    drop(servers);
}

/// Cloud Hypervisor's dialect: the status code with an empty reason phrase (its `ch-remote`
/// parses everything after `HTTP/1.1 ` up to the CR as the number), and the transport's own
/// errors as a JSON array of messages; `error_message` reads both error shapes.
#[test]
fn cloud_hypervisor_dialect_status_line_and_error_bodies() {
    let config = ServerConfig {
        dialect: Dialect::CloudHypervisor,
        ..quick_config()
    };
    let (server, _client) = start("ch-dialect", config);
    let mut s = UnixStream::connect(server.path().unwrap()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /x HTTP/1.1\r\nHost: localhost\r\n\r\nGET /missing HTTP/1.1\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    let mut chunk = [0u8; 4096];
    while !text.contains("no such thing") {
        let n = s.read(&mut chunk).unwrap();
        assert!(n > 0, "closed early: {text:?}");
        text.push_str(std::str::from_utf8(&chunk[..n]).unwrap());
    }
    assert!(text.starts_with("HTTP/1.1 200 \r\n"), "{text:?}");
    assert!(
        text.contains("\r\nContent-Type: application/json\r\n"),
        "{text:?}"
    );
    assert!(text.contains("HTTP/1.1 404 \r\n"), "{text:?}");
    // A malformed request: the transport's 400 is a list of messages.
    let mut s = UnixStream::connect(server.path().unwrap()).unwrap();
    let r = raw(&mut s, b"GET /x HTTP/1.1\r\nBad Header\r\n\r\n", 1);
    assert_eq!((r[0].status, r[0].reason.as_str()), (400, ""));
    let list: Vec<String> = r[0].json_body().unwrap();
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(r[0].error_message(), list[0]);
    let chain = Response::error_list(500, &["Error from API", "The VM could not boot"]);
    assert_eq!(
        chain.error_message(),
        "Error from API: The VM could not boot"
    );
}

#[test]
fn a_failed_init_serves_nothing_and_fails_the_start() {
    // A thread that cannot install its seccomp filter must not serve: the start fails with
    // init's error and the socket file is gone.
    let path = temp_socket("init-fails");
    let r = Server::bind_with_init(&path, ServerConfig::default(), echo, || {
        Err(std::io::Error::other("no filter"))
    });
    match r {
        Err(Error::Setup(e)) => assert_eq!(e.to_string(), "no filter"),
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("the server started although init failed"),
    }
    assert!(!path.exists(), "the socket file was left behind");
    let fd_path = temp_socket("init-fails-fd");
    let listener = UnixListener::bind(&fd_path).unwrap();
    let r = Server::start_with_init(listener, ServerConfig::default(), echo, || {
        Err(std::io::Error::other("no filter"))
    });
    assert!(r.is_err());
    std::fs::remove_file(&fd_path).unwrap();
    // And a successful init runs on the server thread before it serves.
    let path = temp_socket("init-ok");
    let server = Server::bind_with_init(&path, ServerConfig::default(), echo, || {
        assert_eq!(std::thread::current().name(), Some("http-server"));
        Ok(())
    })
    .unwrap();
    let client = Client::new(&path).with_timeout(Duration::from_secs(10));
    assert_eq!(client.get("/x").unwrap().status, 200);
    server.shutdown();
}
