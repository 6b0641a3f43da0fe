//! Responses: what a handler returns and the client receives, their wire form and the
//! client-side parser.

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::headers::{content_length, is_token, scan_head, Scan};
use super::request::parse_version;
use super::{Headers, ParseError, Version};

/// The standard reason phrase of `status` ("" if unknown).
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        417 => "Expectation Failed",
        422 => "Unprocessable Content",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        507 => "Insufficient Storage",
        _ => "",
    }
}

/// How a server spells what the transport itself writes: the status line and the bodies of
/// the errors it makes (malformed requests, limits, time-outs, a handler that never answered).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Dialect {
    /// Reason phrases (`HTTP/1.1 200 OK`), error bodies `{"error": message}` (petreld's API).
    #[default]
    Petrel,
    /// Cloud Hypervisor's API server: the status code with an empty reason phrase
    /// (`HTTP/1.1 200 `: its `ch-remote` reads everything after `HTTP/1.1 ` up to the CR as
    /// the number) and error bodies that are a JSON array of messages, from the top error
    /// to its root cause.
    CloudHypervisor,
    /// Firecracker's API server: the status code with an empty reason phrase, as Cloud
    /// Hypervisor's, and error bodies `{"fault_message": message}`.
    Firecracker,
}

impl Dialect {
    /// An error response with `message` in this dialect's error body.
    pub fn error(self, status: u16, message: &str) -> Response {
        match self {
            Dialect::Petrel => Response::error(status, message),
            Dialect::CloudHypervisor => Response::error_list(status, &[message]),
            Dialect::Firecracker => {
                Response::json(status, &serde_json::json!({ "fault_message": message }))
            }
        }
    }

    /// `response` as this dialect writes it (the reason phrase dropped for Cloud Hypervisor).
    pub fn adapt<'a>(self, response: &'a Response) -> std::borrow::Cow<'a, Response> {
        match self {
            Dialect::CloudHypervisor | Dialect::Firecracker if !response.reason.is_empty() => {
                let mut r = response.clone();
                r.reason.clear();
                std::borrow::Cow::Owned(r)
            }
            _ => std::borrow::Cow::Borrowed(response),
        }
    }
}

/// An HTTP response. `Content-Length` and `Connection` are written by the transport.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Reason phrase.
    pub reason: String,
    /// Header fields (Content-Type among them when there is a body).
    pub headers: Headers,
    /// The body.
    pub body: Vec<u8>,
    /// Set by [`Response::stream`]: the connection is handed over after the head.
    takeover: Option<Takeover>,
}

/// What a streaming response does with its connection (see [`Response::stream`]).
type TakeoverFn = Box<dyn FnOnce(std::os::unix::net::UnixStream) + Send>;

/// A streaming response's callback, shared so that [`Response`] stays `Clone`; the first
/// taker runs it.
#[derive(Clone)]
struct Takeover(std::sync::Arc<std::sync::Mutex<Option<TakeoverFn>>>);

impl std::fmt::Debug for Takeover {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Takeover")
    }
}

impl PartialEq for Takeover {
    fn eq(&self, other: &Self) -> bool {
        std::sync::Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for Takeover {}

impl Response {
    /// An empty response with `status` and its standard reason.
    pub fn new(status: u16) -> Response {
        Response {
            status,
            reason: reason_phrase(status).to_string(),
            headers: Headers::new(),
            body: Vec::new(),
            takeover: None,
        }
    }

    /// A streaming response (server-sent events, for instance): the server writes the status
    /// line and headers with neither `Content-Length` nor keep-alive (the body ends when the
    /// connection closes), then hands the connection to `then` (blocking mode, the server's
    /// write timeout set) and forgets it. `then` runs on the server thread: keep it short
    /// (hand the stream to another thread). On a TCP [`Listener`](super::Listener) the stream
    /// is the TCP socket in a `UnixStream` wrapper: use only read, write, timeouts and shutdown.
    pub fn stream(
        status: u16,
        content_type: &str,
        then: impl FnOnce(std::os::unix::net::UnixStream) + Send + 'static,
    ) -> Response {
        let mut r = Response::new(status);
        r.headers.set("Content-Type", content_type);
        r.takeover = Some(Takeover(std::sync::Arc::new(std::sync::Mutex::new(Some(
            Box::new(then),
        )))));
        r
    }

    /// Whether this is a [`Response::stream`].
    pub fn is_stream(&self) -> bool {
        self.takeover.is_some()
    }

    /// The callback of a [`Response::stream`], once.
    pub(crate) fn take_stream(&self) -> Option<TakeoverFn> {
        let t = self.takeover.as_ref()?;
        t.0.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// The head of a streaming response: no `Content-Length`, `Connection: close`.
    pub(crate) fn stream_head(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.write_to(&mut out, Version::Http11, false, true);
        // write_to announced the (empty) body's length: drop that line.
        let text = String::from_utf8_lossy(&out).into_owned();
        text.split_inclusive("\r\n")
            .filter(|l| !l.to_ascii_lowercase().starts_with("content-length:"))
            .collect::<String>()
            .into_bytes()
    }

    /// `204 No Content`.
    pub fn no_content() -> Response {
        Response::new(204)
    }

    /// `status` with `body` of type `content_type`.
    pub fn with_body(status: u16, content_type: &str, body: impl Into<Vec<u8>>) -> Response {
        let mut r = Response::new(status);
        r.headers.set("Content-Type", content_type);
        r.body = body.into();
        r
    }

    /// `status` with `value` as JSON (`application/json`); a value that fails to serialize
    /// gives a 500.
    pub fn json<T: Serialize + ?Sized>(status: u16, value: &T) -> Response {
        match serde_json::to_vec(value) {
            Ok(body) => Response::with_body(status, "application/json", body),
            Err(e) => Response::error(500, &format!("serialize response: {e}")),
        }
    }

    /// `status` with the body `{"error": message}`.
    pub fn error(status: u16, message: &str) -> Response {
        Response::json(status, &serde_json::json!({ "error": message }))
    }

    /// `status` with a body that is a JSON array of messages, the top error first and its
    /// root cause last (Cloud Hypervisor's error body).
    pub fn error_list<S: AsRef<str>>(status: u16, messages: &[S]) -> Response {
        let list: Vec<&str> = messages.iter().map(AsRef::as_ref).collect();
        Response::json(status, &list)
    }

    /// `status` with a `text/plain` body.
    pub fn text(status: u16, text: impl Into<String>) -> Response {
        Response::with_body(status, "text/plain; charset=utf-8", text.into())
    }

    /// Adds a header field.
    pub fn with_header(mut self, name: &str, value: impl Into<String>) -> Response {
        self.headers.append(name, value);
        self
    }

    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name)
    }

    /// Whether the status is 2xx.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The body parsed as JSON.
    pub fn json_body<T: DeserializeOwned>(&self) -> serde_json::Result<T> {
        serde_json::from_slice(&self.body)
    }

    /// The message of an error body: the `error` field of `{"error": message}`, the messages
    /// of a JSON array of them (Cloud Hypervisor's error chain) joined with ": ", else the
    /// body as text.
    pub fn error_message(&self) -> String {
        let from_json = self
            .json_body::<serde_json::Value>()
            .ok()
            .and_then(|v| match v {
                serde_json::Value::Array(items) => {
                    let lines: Option<Vec<&str>> = items.iter().map(|i| i.as_str()).collect();
                    lines.map(|l| l.join(": "))
                }
                v => v
                    .get("error")
                    .or_else(|| v.get("fault_message"))?
                    .as_str()
                    .map(str::to_string),
            });
        from_json.unwrap_or_else(|| String::from_utf8_lossy(&self.body).trim().to_string())
    }

    /// Whether the status forbids a body (1xx, 204, 304).
    fn bodiless(&self) -> bool {
        self.status < 200 || self.status == 204 || self.status == 304
    }

    /// Appends the wire form to `out`. `keep_alive` decides the `Connection` field; for HEAD
    /// requests (`head_only`) the body is left out but its length is still announced.
    pub fn write_to(&self, out: &mut Vec<u8>, version: Version, keep_alive: bool, head_only: bool) {
        // A handler's mistakes must not corrupt the stream: no status outside 100..=999, no
        // CR/LF in the reason or values, no header whose name is not a token.
        let status = if (100..1000).contains(&self.status) {
            self.status
        } else {
            500
        };
        let reason = self.reason.replace(['\r', '\n'], " ");
        out.extend_from_slice(format!("HTTP/1.1 {status} {reason}\r\n").as_bytes());
        for (name, value) in self.headers.iter() {
            let framing = ["content-length", "connection", "transfer-encoding"]
                .iter()
                .any(|n| name.eq_ignore_ascii_case(n));
            if framing || !is_token(name.as_bytes()) {
                continue;
            }
            let value = value.replace(['\r', '\n'], " ");
            out.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
        }
        if !self.bodiless() {
            out.extend_from_slice(format!("Content-Length: {}\r\n", self.body.len()).as_bytes());
        }
        if !keep_alive {
            out.extend_from_slice(b"Connection: close\r\n");
        } else if version == Version::Http10 {
            out.extend_from_slice(b"Connection: keep-alive\r\n");
        }
        out.extend_from_slice(b"\r\n");
        if !head_only && !self.bodiless() {
            out.extend_from_slice(&self.body);
        }
    }

    /// The wire form (HTTP/1.1, connection kept open).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.write_to(&mut out, Version::Http11, true, false);
        out
    }
}

/// What [`parse_response`] found.
#[derive(Debug)]
pub struct ParsedResponse {
    /// The response.
    pub response: Response,
    /// Bytes used.
    pub len: usize,
    /// Whether the connection may carry another request.
    pub reusable: bool,
}

/// Parses one response at the start of `buf`. `head_request`: the request was HEAD (no body);
/// `eof`: the peer closed, so a body without Content-Length ends here. `Ok(None)`: incomplete.
pub fn parse_response(
    buf: &[u8],
    head_request: bool,
    eof: bool,
    max_body: usize,
) -> Result<Option<ParsedResponse>, ParseError> {
    let Scan::Complete(raw) = scan_head(buf, 64 * 1024, 1000)? else {
        return Ok(None);
    };
    let line = raw.start_line;
    let version = parse_version(line.get(..8).ok_or(ParseError::StartLine)?)?;
    let (status, reason) = match line.get(8..) {
        Some([b' ', a, b, c, rest @ ..]) if [a, b, c].iter().all(|d| d.is_ascii_digit()) => {
            let status = u16::from(a - b'0') * 100 + u16::from(b - b'0') * 10 + u16::from(c - b'0');
            let reason = match rest {
                [] => &[][..],
                [b' ', reason @ ..] => reason,
                _ => return Err(ParseError::StartLine),
            };
            (status, String::from_utf8_lossy(reason).into_owned())
        }
        _ => return Err(ParseError::StartLine),
    };
    let headers = raw.headers;
    let mut reusable = version == Version::Http11 && !headers.has_token("connection", "close");
    let bodiless = head_request || status < 200 || status == 204 || status == 304;
    let body_len = if bodiless {
        0
    } else if headers.get("transfer-encoding").is_some() {
        return Err(ParseError::LengthRequired);
    } else if let Some(len) = content_length(&headers)? {
        usize::try_from(len)
            .ok()
            .filter(|&n| n <= max_body)
            .ok_or(ParseError::BodyTooLarge {
                len,
                limit: max_body,
            })?
    } else if eof {
        reusable = false;
        buf.len() - raw.len
    } else if buf.len() - raw.len > max_body {
        return Err(ParseError::BodyTooLarge {
            len: (buf.len() - raw.len) as u64,
            limit: max_body,
        });
    } else {
        return Ok(None);
    };
    let Some(body) = buf.get(raw.len..raw.len + body_len) else {
        return Ok(None);
    };
    Ok(Some(ParsedResponse {
        response: Response {
            status,
            reason,
            headers,
            body: body.to_vec(),
            takeover: None,
        },
        len: raw.len + body_len,
        reusable,
    }))
}
