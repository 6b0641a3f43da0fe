//! The client: one request at a time over a Unix socket, optionally with file descriptors,
//! reusing an idle connection when the server kept it open.

use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::fds::{self, MAX_FDS};
use super::response::{parse_response, ParsedResponse};
use super::{Error, Method, Response, Result};

/// A client of one server socket. Safe to share between threads: each request takes the idle
/// connection if there is one, else connects anew.
#[derive(Debug)]
pub struct Client {
    path: PathBuf,
    timeout: Duration,
    max_body: usize,
    idle: Mutex<Option<UnixStream>>,
}

/// How one attempt on a connection failed.
struct Failure {
    error: Error,
    /// Nothing of a response arrived: on a reused connection the server may have closed it
    /// while idle, and the request can be sent again on a new one.
    nothing_received: bool,
}

impl Client {
    /// A client of the server at `path` (nothing is connected until the first request).
    /// Timeout 30 s per request; responses up to 16 MiB.
    pub fn new(path: impl AsRef<Path>) -> Client {
        Client {
            path: path.as_ref().to_path_buf(),
            timeout: Duration::from_secs(30),
            max_body: 16 * 1024 * 1024,
            idle: Mutex::new(None),
        }
    }

    /// Sets the time a whole request (send and response) may take.
    pub fn with_timeout(mut self, timeout: Duration) -> Client {
        self.timeout = timeout;
        self
    }

    /// Sets the largest response body accepted.
    pub fn with_max_body(mut self, max_body: usize) -> Client {
        self.max_body = max_body;
        self
    }

    /// The server's socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Sends `method path` with an optional JSON `body` and returns the response, whatever
    /// its status.
    pub fn request(&self, method: Method, path: &str, body: Option<&[u8]>) -> Result<Response> {
        self.request_with_fds(method, path, body, &[])
    }

    /// `GET path`.
    pub fn get(&self, path: &str) -> Result<Response> {
        self.request(Method::Get, path, None)
    }

    /// Like [`request`](Client::request), with `fds` sent as SCM_RIGHTS along with the first
    /// bytes of the request (as Kata sends tap fds). At most [`MAX_FDS`].
    pub fn request_with_fds(
        &self,
        method: Method,
        path: &str,
        body: Option<&[u8]>,
        fds: &[BorrowedFd<'_>],
    ) -> Result<Response> {
        if fds.len() > MAX_FDS {
            return Err(Error::TooManyFds(fds.len()));
        }
        let bytes = encode_request(method, path, body)?;
        let deadline = Instant::now() + self.timeout;
        let head = method == Method::Head;
        let idle = self.lock_idle().take();
        if let Some(stream) = idle {
            match self.exchange(&stream, &bytes, fds, head, deadline) {
                Ok(parsed) if parsed.response.status != 408 => {
                    return Ok(self.keep(stream, parsed));
                }
                Ok(_) => {}
                Err(f) if f.nothing_received => {}
                Err(f) => return Err(f.error),
            }
        }
        let stream = UnixStream::connect(&self.path).map_err(|source| Error::Connect {
            path: self.path.clone(),
            source,
        })?;
        match self.exchange(&stream, &bytes, fds, head, deadline) {
            Ok(parsed) => Ok(self.keep(stream, parsed)),
            Err(f) => Err(f.error),
        }
    }

    fn lock_idle(&self) -> std::sync::MutexGuard<'_, Option<UnixStream>> {
        self.idle
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Keeps `stream` for the next request if the server keeps it open.
    fn keep(&self, stream: UnixStream, parsed: ParsedResponse) -> Response {
        if parsed.reusable {
            *self.lock_idle() = Some(stream);
        }
        parsed.response
    }

    /// Sends the request on `stream` and reads one final response.
    fn exchange(
        &self,
        stream: &UnixStream,
        request: &[u8],
        fds: &[BorrowedFd<'_>],
        head: bool,
        deadline: Instant,
    ) -> std::result::Result<ParsedResponse, Failure> {
        let fail = |error, nothing_received| Failure {
            error,
            nothing_received,
        };
        let timed_out = |e: &io::Error| {
            matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            )
        };
        let mut sent = 0;
        let mut send_error = None;
        while sent < request.len() {
            let remaining = remaining(deadline).ok_or_else(|| fail(Error::Timeout, false))?;
            stream
                .set_write_timeout(Some(remaining))
                .map_err(|e| fail(Error::Send(e), false))?;
            let with = if sent == 0 { fds } else { &[] };
            match fds::send(stream.as_fd(), &request[sent..], with) {
                Ok(n) => sent += n,
                Err(e) if timed_out(&e) => return Err(fail(Error::Timeout, false)),
                // The server may have answered early (e.g. 413) and closed: read its answer.
                Err(e) => {
                    send_error = Some(e);
                    break;
                }
            }
        }
        let mut buf = Vec::new();
        let mut chunk = vec![0u8; 64 * 1024];
        let mut eof = false;
        loop {
            loop {
                match parse_response(&buf, head, eof, self.max_body) {
                    Ok(Some(p)) if p.response.status < 200 => {
                        buf.drain(..p.len);
                    }
                    Ok(Some(mut p)) => {
                        p.reusable &= p.len == buf.len() && send_error.is_none();
                        return Ok(p);
                    }
                    Ok(None) if eof => {
                        let error = match send_error.take() {
                            Some(e) if buf.is_empty() => Error::Send(e),
                            _ => Error::Closed,
                        };
                        return Err(fail(error, buf.is_empty()));
                    }
                    Ok(None) => break,
                    Err(e) => return Err(fail(Error::Response(e), false)),
                }
            }
            let remaining = remaining(deadline).ok_or_else(|| fail(Error::Timeout, false))?;
            stream
                .set_read_timeout(Some(remaining))
                .map_err(|e| fail(Error::Receive(e), false))?;
            match (&*stream).read(&mut chunk) {
                Ok(0) => eof = true,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if timed_out(&e) => return Err(fail(Error::Timeout, false)),
                Err(e) => {
                    let nothing = buf.is_empty();
                    return Err(fail(Error::Receive(e), nothing));
                }
            }
        }
    }
}

/// Time left before `deadline`, `None` once it passed.
fn remaining(deadline: Instant) -> Option<Duration> {
    Some(deadline.checked_duration_since(Instant::now())?).filter(|d| !d.is_zero())
}

/// The wire form of a request.
fn encode_request(method: Method, path: &str, body: Option<&[u8]>) -> Result<Vec<u8>> {
    if !path.starts_with('/') || !path.bytes().all(|b| (0x21..0x7f).contains(&b)) {
        return Err(Error::Path(path.to_string()));
    }
    let mut out =
        format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\n");
    match body {
        Some(body) => {
            out.push_str("Content-Type: application/json\r\n");
            out.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        None if matches!(method, Method::Put | Method::Post | Method::Patch) => {
            out.push_str("Content-Length: 0\r\n");
        }
        None => {}
    }
    out.push_str("\r\n");
    let mut out = out.into_bytes();
    out.extend_from_slice(body.unwrap_or_default());
    Ok(out)
}
