//! A minimal HTTP/1.1 client over a Unix stream socket, enough to time the API calls of
//! petrel, Cloud Hypervisor and Firecracker the same way: one request at a time on a kept-alive
//! connection (reconnecting when the server closes it), `Content-Length` bodies only.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Largest response accepted (headers and body).
const MAX_RESPONSE: usize = 1 << 20;

/// One parsed response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Body bytes.
    pub body: Vec<u8>,
    /// The server closes the connection after it (`Connection: close` or HTTP/1.0).
    pub close: bool,
}

/// A connection to an API socket.
pub struct Conn {
    path: PathBuf,
    stream: Option<UnixStream>,
    buf: Vec<u8>,
    timeout: Duration,
}

impl Conn {
    /// Connects to `path`; each read and write may block for at most `timeout`.
    pub fn connect(path: &Path, timeout: Duration) -> io::Result<Conn> {
        let mut c = Conn {
            path: path.to_path_buf(),
            stream: None,
            buf: Vec::new(),
            timeout,
        };
        c.stream = Some(c.open()?);
        Ok(c)
    }

    fn open(&self) -> io::Result<UnixStream> {
        let s = UnixStream::connect(&self.path)?;
        s.set_read_timeout(Some(self.timeout))?;
        s.set_write_timeout(Some(self.timeout))?;
        Ok(s)
    }

    /// Sends `method path` with an optional JSON body and reads the response.
    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> io::Result<Response> {
        let mut stream = match self.stream.take() {
            Some(s) => s,
            None => self.open()?,
        };
        self.buf.clear();
        stream.write_all(&encode_request(method, path, body))?;
        let mut chunk = [0u8; 16 * 1024];
        loop {
            match parse_response(&self.buf).map_err(io::Error::other)? {
                Some((r, _used)) => {
                    if !r.close {
                        self.stream = Some(stream);
                    }
                    return Ok(r);
                }
                None if self.buf.len() > MAX_RESPONSE => {
                    return Err(io::Error::other("response too large"))
                }
                None => {}
            }
            let n = stream.read(&mut chunk)?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed before a whole response",
                ));
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

/// The bytes of a request (host `localhost`, JSON body when given).
pub fn encode_request(method: &str, path: &str, body: Option<&[u8]>) -> Vec<u8> {
    let mut out =
        format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\n");
    match body {
        Some(b) => {
            out.push_str("Content-Type: application/json\r\n");
            out.push_str(&format!("Content-Length: {}\r\n\r\n", b.len()));
            let mut v = out.into_bytes();
            v.extend_from_slice(b);
            v
        }
        None => {
            out.push_str("\r\n");
            out.into_bytes()
        }
    }
}

/// Parses a response at the start of `buf`: `Ok(None)` while incomplete, else the response
/// and how many bytes it took.
pub fn parse_response(buf: &[u8]) -> Result<Option<(Response, usize)>, String> {
    let Some(head_end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Ok(None);
    };
    let head = std::str::from_utf8(&buf[..head_end]).map_err(|_| "response head is not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err(format!("bad status line {status_line:?}"));
    }
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let mut length = 0usize;
    let mut close = version == "HTTP/1.0";
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            return Err(format!("bad header {line:?}"));
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = value
                .parse()
                .map_err(|_| format!("bad Content-Length {value:?}"))?;
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(format!("Transfer-Encoding {value:?} not supported"));
        } else if name.eq_ignore_ascii_case("connection") {
            close = value
                .split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("close"));
        }
    }
    let body_start = head_end + 4;
    if length > MAX_RESPONSE {
        return Err(format!("Content-Length {length} too large"));
    }
    if buf.len() < body_start + length {
        return Ok(None);
    }
    let body = buf[body_start..body_start + length].to_vec();
    Ok(Some((
        Response {
            status,
            body,
            close,
        },
        body_start + length,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_whole_and_partial_responses() {
        let r =
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}rest";
        assert_eq!(parse_response(&r[..20]).unwrap(), None);
        assert_eq!(parse_response(&r[..r.len() - 5]).unwrap(), None);
        let (resp, used) = parse_response(r).unwrap().unwrap();
        assert_eq!(
            (resp.status, resp.body.as_slice(), resp.close),
            (200, &b"{}"[..], false)
        );
        assert_eq!(used, r.len() - 4);
        let (resp, _) = parse_response(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!((resp.status, resp.close), (204, true));
        let (resp, _) = parse_response(b"HTTP/1.0 404 Not Found\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(resp.close && resp.body.is_empty());
    }

    #[test]
    fn rejects_what_it_cannot_read() {
        assert!(parse_response(b"SSH-2.0\r\n\r\n").is_err());
        assert!(parse_response(b"HTTP/1.1 abc\r\n\r\n").is_err());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n").is_err());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n").is_err());
    }

    #[test]
    fn encodes_requests() {
        let r = encode_request("GET", "/api/v1/vmm.ping", None);
        assert_eq!(
            r,
            b"GET /api/v1/vmm.ping HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\n\r\n"
        );
        let r = String::from_utf8(encode_request("PUT", "/x", Some(b"{}"))).unwrap();
        assert!(r.ends_with("Content-Length: 2\r\n\r\n{}"), "{r}");
    }

    #[test]
    fn talks_to_a_server() {
        use std::os::unix::net::UnixListener;
        let dir = std::env::temp_dir().join(format!("pb-http-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let sock = dir.join("s");
        let l = UnixListener::bind(&sock).unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut buf = [0u8; 4096];
            for _ in 0..2 {
                let _ = s.read(&mut buf).unwrap();
                s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\npong")
                    .unwrap();
            }
        });
        let mut c = Conn::connect(&sock, Duration::from_secs(5)).unwrap();
        for _ in 0..2 {
            let r = c.request("GET", "/ping", None).unwrap();
            assert_eq!((r.status, r.body.as_slice()), (200, &b"pong"[..]));
        }
        server.join().unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
