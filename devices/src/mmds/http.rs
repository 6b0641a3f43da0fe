//! The guest's HTTP requests to the MMDS, answered as Firecracker's MMDS answers them.
//!
//! - `GET <path>`: the value at that path of the document. `Accept: application/json` gets JSON;
//!   otherwise (and always with `imds_compat`) IMDS text: a string as itself, an object as its
//!   keys one per line (a key whose value is an object ends in `/`); other values cannot be
//!   shown as text (501). An unknown path is a 404.
//! - V2: `PUT /latest/api/token` with `X-metadata-token-ttl-seconds` (1 ..= 21600) answers a
//!   session token; every GET must carry a live one in `X-metadata-token` (401 otherwise). A
//!   request with `X-Forwarded-For` gets no token. V1 serves GETs without one, and hands out
//!   tokens too.
//! - Any other method is a 405.
//!
//! Requests may be pipelined; a request whose head is longer than [`MAX_HEAD`] is a 400 and
//! the connection is closed.

use std::time::Instant;

use serde_json::Value;

use super::{Mmds, Version, MAX_TOKEN_TTL_S};

/// Longest request head (request line and headers) accepted.
pub const MAX_HEAD: usize = 8192;
/// Longest request body accepted (the token PUT has none).
const MAX_BODY: usize = 8192;

/// What the bytes received so far make.
#[derive(Debug, PartialEq, Eq)]
pub enum Parse {
    /// Not a whole request yet.
    Incomplete,
    /// A whole request (the first `consumed` bytes) and its response.
    Done {
        /// The response's bytes.
        response: Vec<u8>,
        /// Bytes of the input the request took.
        consumed: usize,
        /// Whether the connection should be closed after the response.
        close: bool,
    },
}

/// One response.
struct Reply {
    status: u16,
    content_type: &'static str,
    body: String,
    extra: Vec<(&'static str, String)>,
}

impl Reply {
    fn text(status: u16, body: impl Into<String>) -> Self {
        Reply {
            status,
            content_type: "text/plain",
            body: body.into(),
            extra: Vec::new(),
        }
    }

    fn bytes(&self) -> Vec<u8> {
        let reason = match self.status {
            200 => "OK",
            400 => "Bad Request",
            401 => "Unauthorized",
            404 => "Not Found",
            405 => "Method Not Allowed",
            501 => "Not Implemented",
            _ => "Error",
        };
        let mut head = format!(
            "HTTP/1.1 {} {reason}\r\nServer: Firecracker API\r\nConnection: keep-alive\r\n\
             Content-Type: {}\r\nContent-Length: {}\r\n",
            self.status,
            self.content_type,
            self.body.len()
        );
        for (k, v) in &self.extra {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        let mut out = head.into_bytes();
        out.extend_from_slice(self.body.as_bytes());
        out
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Answers the first request in `buf`, if it is whole.
pub fn handle(mmds: &mut Mmds, buf: &[u8], now: Instant) -> Parse {
    let Some(head_end) = find(buf, b"\r\n\r\n") else {
        if buf.len() > MAX_HEAD {
            return Parse::Done {
                response: Reply::text(400, "Request head too long.").bytes(),
                consumed: buf.len(),
                close: true,
            };
        }
        return Parse::Incomplete;
    };
    let bad = |why: &str| Parse::Done {
        response: Reply::text(400, why).bytes(),
        consumed: buf.len(),
        close: true,
    };
    let Ok(head) = std::str::from_utf8(&buf[..head_end]) else {
        return bad("Invalid request.");
    };
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or("");
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return bad("Invalid request.");
    };
    if !version.starts_with("HTTP/1.") {
        return bad("Unsupported HTTP version.");
    }
    let headers: Vec<(String, &str)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim()))
        .collect();
    let header = |name: &str| headers.iter().find(|(k, _)| k == name).map(|(_, v)| *v);
    let body_len = match header("content-length").map(str::parse::<usize>) {
        None => 0,
        Some(Ok(n)) if n <= MAX_BODY => n,
        Some(_) => return bad("Invalid Content-Length."),
    };
    let consumed = head_end + 4 + body_len;
    if buf.len() < consumed {
        return Parse::Incomplete;
    }
    let close = header("connection").is_some_and(|c| c.eq_ignore_ascii_case("close"));
    let reply = answer(mmds, method, target, &header, now);
    Parse::Done {
        response: reply.bytes(),
        consumed,
        close,
    }
}

fn answer<'h>(
    mmds: &mut Mmds,
    method: &str,
    target: &str,
    header: &dyn Fn(&str) -> Option<&'h str>,
    now: Instant,
) -> Reply {
    // The path without a query; percent-escapes are not decoded (keys are plain).
    let path = target.split(['?', '#']).next().unwrap_or("");
    if !path.starts_with('/') {
        return Reply::text(400, "Invalid URI.");
    }
    match method {
        "PUT" if path == "/latest/api/token" => put_token(mmds, header, now),
        "PUT" => Reply::text(404, format!("Resource not found: {path}.")),
        "GET" => {
            if mmds.config().version == Version::V2 {
                match header("x-metadata-token") {
                    None => {
                        return Reply::text(
                            401,
                            "No MMDS token provided. Use `X-metadata-token` header to specify \
                             the session token.",
                        )
                    }
                    Some(token) if !mmds.token_valid(token, now) => {
                        return Reply::text(401, "MMDS token not valid.")
                    }
                    Some(_) => {}
                }
            }
            get(mmds, path, header("accept"))
        }
        _ => {
            let mut r = Reply::text(405, "Not allowed HTTP method.");
            r.extra.push(("Allow", "GET, PUT".into()));
            r
        }
    }
}

fn put_token<'h>(mmds: &mut Mmds, header: &dyn Fn(&str) -> Option<&'h str>, now: Instant) -> Reply {
    if header("x-forwarded-for").is_some() {
        return Reply::text(
            400,
            "Invalid header. Reason: Unsupported header name. Key: X-Forwarded-For",
        );
    }
    let Some(ttl) = header("x-metadata-token-ttl-seconds") else {
        return Reply::text(
            400,
            "Token time to live value not found. Use `X-metadata-token-ttl-seconds` header to \
             specify the token's lifetime.",
        );
    };
    match ttl.parse::<u64>() {
        Ok(s) if (1..=MAX_TOKEN_TTL_S).contains(&s) => {
            let token = mmds.new_token(s, now);
            let mut r = Reply::text(200, token);
            r.extra
                .push(("X-metadata-token-ttl-seconds", s.to_string()));
            r
        }
        _ => Reply::text(
            400,
            format!(
                "Invalid time to live value provided for token: {ttl}. Please provide a value \
                 between 1 and {MAX_TOKEN_TTL_S}."
            ),
        ),
    }
}

fn get(mmds: &Mmds, path: &str, accept: Option<&str>) -> Reply {
    let Some(value) = mmds.lookup(path) else {
        return Reply::text(404, format!("Resource not found: {path}."));
    };
    let json = !mmds.config().imds_compat
        && accept.is_some_and(|a| a.split(',').any(|t| t.trim() == "application/json"));
    if json {
        return Reply {
            status: 200,
            content_type: "application/json",
            body: value.to_string(),
            extra: Vec::new(),
        };
    }
    match imds_text(&value) {
        Some(text) => Reply::text(200, text),
        None => Reply::text(
            501,
            "Cannot retrieve value. The value has an unsupported type.",
        ),
    }
}

/// IMDS text: a string as itself, an object as its keys (objects with a trailing `/`).
fn imds_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Object(map) => Some(
            map.iter()
                .map(|(k, v)| {
                    if v.is_object() {
                        format!("{k}/")
                    } else {
                        k.clone()
                    }
                })
                .collect::<Vec<_>>()
                .join("\n"),
        ),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::super::MmdsConfig;
    use super::*;
    use serde_json::json;

    fn store(version: Version) -> Mmds {
        let mut m = Mmds::default();
        m.set_config(MmdsConfig {
            version,
            ..MmdsConfig::default()
        });
        m.put(json!({"latest": {"meta-data": {"ami-id": "ami-1", "n": 3}}, "k": "v"}))
            .unwrap();
        m
    }

    fn ask(m: &mut Mmds, req: &str) -> (u16, String) {
        match handle(m, req.as_bytes(), Instant::now()) {
            Parse::Done {
                response, consumed, ..
            } => {
                assert_eq!(consumed, req.len());
                let text = String::from_utf8(response).unwrap();
                let status = text[9..12].parse().unwrap();
                let body = text.split_once("\r\n\r\n").unwrap().1.to_string();
                (status, body)
            }
            Parse::Incomplete => panic!("incomplete: {req}"),
        }
    }

    #[test]
    fn v1_text_json_and_errors() {
        let mut m = store(Version::V1);
        assert_eq!(
            ask(&mut m, "GET /latest/meta-data/ HTTP/1.1\r\n\r\n"),
            (200, "ami-id\nn".into())
        );
        assert_eq!(
            ask(&mut m, "GET / HTTP/1.1\r\n\r\n"),
            (200, "k\nlatest/".into())
        );
        assert_eq!(
            ask(
                &mut m,
                "GET /latest/meta-data/ami-id HTTP/1.1\r\nAccept: application/json\r\n\r\n"
            ),
            (200, "\"ami-1\"".into())
        );
        assert_eq!(
            ask(&mut m, "GET /latest/meta-data/n HTTP/1.1\r\n\r\n").0,
            501
        );
        assert_eq!(ask(&mut m, "GET /nope HTTP/1.1\r\n\r\n").0, 404);
        assert_eq!(ask(&mut m, "POST / HTTP/1.1\r\n\r\n").0, 405);
        assert_eq!(
            handle(&mut m, b"GET / HTTP/1.1\r\nHost: x\r\n", Instant::now()),
            Parse::Incomplete
        );
    }

    #[test]
    fn v2_needs_a_live_token() {
        let mut m = store(Version::V2);
        assert_eq!(ask(&mut m, "GET /k HTTP/1.1\r\n\r\n").0, 401);
        assert_eq!(
            ask(&mut m, "PUT /latest/api/token HTTP/1.1\r\n\r\n").0,
            400,
            "no ttl"
        );
        assert_eq!(
            ask(
                &mut m,
                "PUT /latest/api/token HTTP/1.1\r\nX-metadata-token-ttl-seconds: 0\r\n\r\n"
            )
            .0,
            400
        );
        assert_eq!(
            ask(
                &mut m,
                "PUT /latest/api/token HTTP/1.1\r\nX-metadata-token-ttl-seconds: 60\r\n\
                 X-Forwarded-For: 1.2.3.4\r\n\r\n"
            )
            .0,
            400
        );
        let (status, token) = ask(
            &mut m,
            "PUT /latest/api/token HTTP/1.1\r\nX-metadata-token-ttl-seconds: 60\r\n\r\n",
        );
        assert_eq!(status, 200);
        assert_eq!(
            ask(
                &mut m,
                &format!("GET /k HTTP/1.1\r\nX-metadata-token: {token}\r\n\r\n")
            ),
            (200, "v".into())
        );
        assert_eq!(
            ask(
                &mut m,
                "GET /k HTTP/1.1\r\nX-metadata-token: forged\r\n\r\n"
            )
            .0,
            401
        );
    }
}
