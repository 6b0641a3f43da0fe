//! Requests: the typed [`Request`] a handler receives and the parser that builds it from bytes.

use std::fmt;
use std::os::fd::OwnedFd;

use serde::de::DeserializeOwned;

use super::headers::{content_length, is_token, scan_head, Scan};
use super::{Headers, Limits, ParseError};

/// Request methods petrel knows: those it serves, and standard ones it never serves (405 on a
/// known path); other valid tokens get 501.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    /// GET
    Get,
    /// HEAD (answered like GET without the body)
    Head,
    /// POST
    Post,
    /// PUT
    Put,
    /// PATCH
    Patch,
    /// DELETE
    Delete,
    /// OPTIONS
    Options,
    /// TRACE (never served: a known path answers 405)
    Trace,
    /// CONNECT (never served: a known path answers 405)
    Connect,
    /// QUERY (never served: a known path answers 405)
    Query,
}

impl Method {
    /// The method as sent on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Patch => "PATCH",
            Method::Delete => "DELETE",
            Method::Options => "OPTIONS",
            Method::Trace => "TRACE",
            Method::Connect => "CONNECT",
            Method::Query => "QUERY",
        }
    }

    /// Parses a method token (case-sensitive, as HTTP requires).
    pub fn from_bytes(s: &[u8]) -> Option<Method> {
        Some(match s {
            b"GET" => Method::Get,
            b"HEAD" => Method::Head,
            b"POST" => Method::Post,
            b"PUT" => Method::Put,
            b"PATCH" => Method::Patch,
            b"DELETE" => Method::Delete,
            b"OPTIONS" => Method::Options,
            b"TRACE" => Method::Trace,
            b"CONNECT" => Method::Connect,
            b"QUERY" => Method::Query,
            _ => return None,
        })
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// HTTP versions petrel speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Version {
    /// HTTP/1.0: connections close unless `Connection: keep-alive`.
    Http10,
    /// HTTP/1.1: connections persist unless `Connection: close`.
    Http11,
}

/// A parsed request line and headers, with what they say about the body and the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// The method.
    pub method: Method,
    /// The request target as sent: path and optional `?query`.
    pub target: String,
    /// The protocol version.
    pub version: Version,
    /// Header fields.
    pub headers: Headers,
    /// Bytes of the head, up to and including the blank line.
    pub head_len: usize,
    /// Body bytes that follow the head (from Content-Length, else 0).
    pub body_len: usize,
    /// Whether the connection stays open after the response.
    pub keep_alive: bool,
    /// Whether the client waits for `100 Continue` before sending the body.
    pub expect_continue: bool,
}

/// A complete request.
#[derive(Debug)]
pub struct Request {
    /// The method.
    pub method: Method,
    /// The request target as sent: path and optional `?query` (not percent-decoded).
    pub target: String,
    /// The protocol version.
    pub version: Version,
    /// Header fields.
    pub headers: Headers,
    /// The body (empty without Content-Length).
    pub body: Vec<u8>,
    /// File descriptors received with the request (SCM_RIGHTS); closed when dropped.
    pub fds: Vec<OwnedFd>,
    keep_alive: bool,
}

impl Request {
    /// A request built in code (tests, in-process callers).
    pub fn new(method: Method, target: impl Into<String>, body: Vec<u8>) -> Request {
        Request {
            method,
            target: target.into(),
            version: Version::Http11,
            headers: Headers::new(),
            body,
            fds: Vec::new(),
            keep_alive: true,
        }
    }

    /// The path part of the target (before `?`).
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or_default()
    }

    /// The raw query (after `?`), if any.
    pub fn query(&self) -> Option<&str> {
        self.target.split_once('?').map(|(_, q)| q)
    }

    /// The percent-decoded value of query parameter `name` (`+` is a space); the first one wins.
    pub fn query_param(&self, name: &str) -> Option<String> {
        self.query()?.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k) == name).then(|| percent_decode(v))
        })
    }

    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name)
    }

    /// Whether the client asked to keep the connection open.
    pub fn keep_alive(&self) -> bool {
        self.keep_alive
    }

    /// The body parsed as JSON (an empty body is an error).
    pub fn json<T: DeserializeOwned>(&self) -> serde_json::Result<T> {
        serde_json::from_slice(&self.body)
    }

    /// Takes the received file descriptors.
    pub fn take_fds(&mut self) -> Vec<OwnedFd> {
        std::mem::take(&mut self.fds)
    }
}

impl Head {
    /// The request made of this head and its body.
    pub fn into_request(self, body: Vec<u8>, fds: Vec<OwnedFd>) -> Request {
        Request {
            method: self.method,
            target: self.target,
            version: self.version,
            headers: self.headers,
            body,
            fds,
            keep_alive: self.keep_alive,
        }
    }
}

/// Parses the request line and headers at the start of `buf`. `Ok(None)`: incomplete so far.
/// Errors are final: answer with [`ParseError::status`] and close the connection.
pub fn parse_head(buf: &[u8], limits: &Limits) -> Result<Option<Head>, ParseError> {
    let raw = match scan_head(buf, limits.max_head_bytes, limits.max_headers)? {
        Scan::Complete(raw) => raw,
        Scan::Incomplete(start_line) => {
            if let Some(line) = start_line {
                parse_request_line(line)?;
            }
            return Ok(None);
        }
    };
    let (method, target, version) = parse_request_line(raw.start_line)?;
    let headers = raw.headers;
    let has_te = headers.get("transfer-encoding").is_some();
    let body_len = match (content_length(&headers)?, has_te) {
        (Some(_), true) => return Err(ParseError::AmbiguousLength),
        (None, true) => return Err(ParseError::LengthRequired),
        (None, false) => 0,
        (Some(len), false) => match usize::try_from(len) {
            Ok(n) if n <= limits.max_body_bytes => n,
            _ => {
                return Err(ParseError::BodyTooLarge {
                    len,
                    limit: limits.max_body_bytes,
                })
            }
        },
    };
    let keep_alive = match version {
        _ if headers.has_token("connection", "close") => false,
        Version::Http11 => true,
        Version::Http10 => headers.has_token("connection", "keep-alive"),
    };
    let expect_continue = match headers.get("expect") {
        None => false,
        Some(v) if v.eq_ignore_ascii_case("100-continue") => version == Version::Http11,
        Some(_) => return Err(ParseError::Expectation),
    };
    Ok(Some(Head {
        method,
        target,
        version,
        headers,
        head_len: raw.len,
        body_len,
        keep_alive,
        expect_continue,
    }))
}

/// Parses one complete request at the start of `buf`, returning it and the bytes it used
/// (pipelined requests follow). `Ok(None)`: incomplete so far. The request has no fds.
pub fn parse_request(buf: &[u8], limits: &Limits) -> Result<Option<(Request, usize)>, ParseError> {
    let Some(head) = parse_head(buf, limits)? else {
        return Ok(None);
    };
    let end = head.head_len + head.body_len;
    let Some(body) = buf.get(head.head_len..end) else {
        return Ok(None);
    };
    let body = body.to_vec();
    Ok(Some((head.into_request(body, Vec::new()), end)))
}

/// `method SP request-target SP HTTP-version`.
fn parse_request_line(line: &[u8]) -> Result<(Method, String, Version), ParseError> {
    let mut parts = line.split(|&b| b == b' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(ParseError::StartLine);
    };
    if !is_token(method) {
        return Err(ParseError::StartLine);
    }
    let version = parse_version(version)?;
    let method = Method::from_bytes(method).ok_or(ParseError::Method)?;
    let origin_form =
        target.first() == Some(&b'/') || (target == b"*" && method == Method::Options);
    if !origin_form || !target.iter().all(|b| (0x21..0x7f).contains(b)) {
        return Err(ParseError::Target);
    }
    // All bytes are printable ASCII.
    let target = String::from_utf8_lossy(target).into_owned();
    Ok((method, target, version))
}

/// `HTTP/1.0` or `HTTP/1.1`; another `HTTP/d.d` is [`ParseError::Version`].
pub(crate) fn parse_version(v: &[u8]) -> Result<Version, ParseError> {
    match v {
        b"HTTP/1.1" => Ok(Version::Http11),
        b"HTTP/1.0" => Ok(Version::Http10),
        [b'H', b'T', b'T', b'P', b'/', major, b'.', minor]
            if major.is_ascii_digit() && minor.is_ascii_digit() =>
        {
            Err(ParseError::Version)
        }
        _ => Err(ParseError::StartLine),
    }
}

/// Decodes `%XX` escapes and `+`; malformed escapes are kept as they are.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .filter(|h| h.iter().all(u8::is_ascii_hexdigit))
                    .and_then(|h| u8::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok());
                if let Some(b) = hex {
                    out.push(b);
                    i += 3;
                    continue;
                }
                out.push(b'%');
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
