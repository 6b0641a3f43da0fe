//! Header fields and the scanner shared by request and response parsing: it splits a message
//! head into its start line and validated header fields, enforcing the size limits.

use super::ParseError;

/// Header fields in arrival order; names compare case-insensitively.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers(Vec<(String, String)>);

impl Headers {
    /// No fields.
    pub fn new() -> Self {
        Headers(Vec::new())
    }

    /// The first value of `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Every value of `name`, in order.
    pub fn get_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Whether any value of `name`, read as a comma-separated list, holds `token`
    /// (case-insensitive), e.g. `Connection: keep-alive, close`.
    pub fn has_token(&self, name: &str, token: &str) -> bool {
        self.get_all(name)
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }

    /// Adds a field (keeps existing fields of the same name).
    pub fn append(&mut self, name: impl Into<String>, value: impl Into<String>) {
        self.0.push((name.into(), value.into()));
    }

    /// Replaces every field named `name` by one field.
    pub fn set(&mut self, name: &str, value: impl Into<String>) {
        self.remove(name);
        self.0.push((name.to_string(), value.into()));
    }

    /// Removes every field named `name`.
    pub fn remove(&mut self, name: &str) {
        self.0.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
    }

    /// `(name, value)` pairs in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }

    /// Number of fields.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are no fields.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// `tchar` of RFC 9110.
pub(crate) fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A non-empty run of `tchar`.
pub(crate) fn is_token(s: &[u8]) -> bool {
    !s.is_empty() && s.iter().all(|&b| is_token_byte(b))
}

/// A message head split into its start line and header fields.
pub(crate) struct RawHead<'a> {
    /// The request or status line, without CRLF.
    pub start_line: &'a [u8],
    /// Validated header fields.
    pub headers: Headers,
    /// Bytes of the head, including leading blank lines and the final blank line.
    pub len: usize,
}

/// What [`scan_head`] found.
pub(crate) enum Scan<'a> {
    /// More bytes are needed; the start line, if it is complete already (to check it early).
    Incomplete(Option<&'a [u8]>),
    /// The whole head.
    Complete(RawHead<'a>),
}

/// Splits the head off `buf`; errors are final. Leading blank lines (CRLF) are skipped, as
/// RFC 9112 allows.
pub(crate) fn scan_head(
    buf: &[u8],
    max_bytes: usize,
    max_headers: usize,
) -> Result<Scan<'_>, ParseError> {
    let mut pos = 0;
    let mut start_line: Option<&[u8]> = None;
    let mut headers = Headers::new();
    loop {
        // The line must end (LF included) within the first `max_bytes` bytes.
        let window = &buf[pos..buf.len().min(max_bytes.max(pos))];
        let Some(rel) = window.iter().position(|&b| b == b'\n') else {
            return if buf.len() >= max_bytes {
                Err(ParseError::HeadTooLarge(max_bytes))
            } else {
                Ok(Scan::Incomplete(start_line))
            };
        };
        let lf = pos + rel;
        if lf == pos || buf[lf - 1] != b'\r' {
            return Err(ParseError::BareLf);
        }
        let line = &buf[pos..lf - 1];
        pos = lf + 1;
        match start_line {
            None if line.is_empty() => continue,
            None => start_line = Some(line),
            Some(start_line) if line.is_empty() => {
                return Ok(Scan::Complete(RawHead {
                    start_line,
                    headers,
                    len: pos,
                }))
            }
            Some(_) => {
                if headers.len() >= max_headers {
                    return Err(ParseError::TooManyHeaders(max_headers));
                }
                let (name, value) = parse_field(line)?;
                headers.append(name, value);
            }
        }
    }
}

/// `name ":" OWS value OWS`.
fn parse_field(line: &[u8]) -> Result<(String, String), ParseError> {
    if matches!(line.first(), Some(b' ' | b'\t')) {
        return Err(ParseError::Folding);
    }
    let colon = line
        .iter()
        .position(|&b| b == b':')
        .ok_or(ParseError::Header)?;
    let name = &line[..colon];
    if !is_token(name) {
        return Err(ParseError::Header);
    }
    let value = trim_ows(&line[colon + 1..]);
    if !value
        .iter()
        .all(|&b| b == b'\t' || (0x20..0x7f).contains(&b) || b >= 0x80)
    {
        return Err(ParseError::Header);
    }
    let value = std::str::from_utf8(value).map_err(|_| ParseError::Header)?;
    // `name` is ASCII (token bytes).
    let name = String::from_utf8_lossy(name).into_owned();
    Ok((name, value.to_string()))
}

fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// The body length from Content-Length fields: `Ok(None)` without one; repeated identical
/// values are accepted, differing ones are not.
pub(crate) fn content_length(headers: &Headers) -> Result<Option<u64>, ParseError> {
    let mut found: Option<u64> = None;
    for value in headers.get_all("content-length") {
        if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ParseError::ContentLength);
        }
        let n: u64 = value.parse().map_err(|_| ParseError::ContentLength)?;
        if found.is_some_and(|f| f != n) {
            return Err(ParseError::ContentLength);
        }
        found = Some(n);
    }
    Ok(found)
}
