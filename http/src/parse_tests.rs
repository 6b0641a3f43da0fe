//! Parser tests: valid and pipelined requests, every limit, malformed input, responses, and
//! property-style runs over random and mutated bytes.

use super::response::parse_response;
use super::*;

fn limits() -> Limits {
    Limits::default()
}

fn parse(buf: &[u8]) -> std::result::Result<Option<(Request, usize)>, ParseError> {
    parse_request(buf, &limits())
}

fn parse_ok(buf: &[u8]) -> (Request, usize) {
    parse(buf).unwrap().expect("complete request")
}

fn parse_err(buf: &[u8]) -> ParseError {
    parse(buf).expect_err("malformed request")
}

#[test]
fn get_without_body() {
    let buf = b"GET /api/v1/vmm.ping HTTP/1.1\r\nHost: localhost\r\n\r\n";
    let (r, n) = parse_ok(buf);
    assert_eq!(n, buf.len());
    assert_eq!(r.method, Method::Get);
    assert_eq!(r.path(), "/api/v1/vmm.ping");
    assert_eq!(r.query(), None);
    assert_eq!(r.version, Version::Http11);
    assert_eq!(r.header("HOST"), Some("localhost"));
    assert!(r.body.is_empty());
    assert!(r.keep_alive());
}

#[test]
fn put_with_body_and_query() {
    let buf = b"PUT /v1/vms?name=a%20b&x=1+2&flag HTTP/1.1\r\ncontent-length: 7\r\n\r\n{\"a\":1}";
    let (r, n) = parse_ok(buf);
    assert_eq!(n, buf.len());
    assert_eq!(r.method, Method::Put);
    assert_eq!(r.path(), "/v1/vms");
    assert_eq!(r.query_param("name").as_deref(), Some("a b"));
    assert_eq!(r.query_param("x").as_deref(), Some("1 2"));
    assert_eq!(r.query_param("flag").as_deref(), Some(""));
    assert_eq!(r.query_param("y"), None);
    let v: serde_json::Value = r.json().unwrap();
    assert_eq!(v["a"], 1);
}

#[test]
fn header_names_are_case_insensitive_and_values_trimmed() {
    let (r, _) = parse_ok(b"GET / HTTP/1.1\r\nX-Thing: \t  a b \t\r\nx-thing:c\r\n\r\n");
    assert_eq!(r.header("x-THING"), Some("a b"));
    assert_eq!(
        r.headers.get_all("X-Thing").collect::<Vec<_>>(),
        ["a b", "c"]
    );
    assert_eq!(r.headers.len(), 2);
}

#[test]
fn incomplete_until_the_last_byte() {
    let buf = b"POST /x HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello";
    for i in 0..buf.len() {
        assert!(parse(&buf[..i]).unwrap().is_none(), "prefix of {i} bytes");
    }
    assert_eq!(parse_ok(buf).0.body, b"hello");
}

#[test]
fn pipelined_requests() {
    let buf = b"GET /a HTTP/1.1\r\n\r\nPUT /b HTTP/1.1\r\nContent-Length: 2\r\n\r\nhiGET /c HTTP/1.0\r\n\r\n";
    let (a, n1) = parse_ok(buf);
    let (b, n2) = parse_ok(&buf[n1..]);
    let (c, n3) = parse_ok(&buf[n1 + n2..]);
    assert_eq!((a.path(), b.path(), c.path()), ("/a", "/b", "/c"));
    assert_eq!(b.body, b"hi");
    assert_eq!(n1 + n2 + n3, buf.len());
    assert!(!c.keep_alive());
}

#[test]
fn leading_blank_lines_are_skipped() {
    let (r, n) = parse_ok(b"\r\n\r\nGET / HTTP/1.1\r\n\r\n");
    assert_eq!(r.path(), "/");
    assert_eq!(n, 22);
}

#[test]
fn connection_semantics() {
    let ka = |buf: &[u8]| parse_ok(buf).0.keep_alive();
    assert!(ka(b"GET / HTTP/1.1\r\n\r\n"));
    assert!(!ka(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n"));
    assert!(!ka(b"GET / HTTP/1.1\r\nConnection: foo, CLOSE\r\n\r\n"));
    assert!(!ka(b"GET / HTTP/1.0\r\n\r\n"));
    assert!(ka(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n"));
}

#[test]
fn expect_continue() {
    let h = parse_head(
        b"PUT / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n",
        &limits(),
    )
    .unwrap()
    .unwrap();
    assert!(h.expect_continue);
    assert_eq!(h.body_len, 3);
    assert_eq!(
        parse_err(b"PUT / HTTP/1.1\r\nExpect: magic\r\n\r\n").status(),
        417
    );
}

#[test]
fn every_method() {
    for m in ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"] {
        let buf = format!("{m} / HTTP/1.1\r\n\r\n");
        assert_eq!(parse_ok(buf.as_bytes()).0.method.as_str(), m);
    }
    assert_eq!(parse_ok(b"OPTIONS * HTTP/1.1\r\n\r\n").0.target, "*");
}

#[test]
fn head_limit() {
    let l = limits();
    let line = b"GET / HTTP/1.1\r\n";
    // Exactly at the limit: accepted.
    let pad = l.max_head_bytes - line.len() - "X: \r\n\r\n".len();
    let exact = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(pad));
    assert_eq!(exact.len(), l.max_head_bytes);
    assert!(parse(exact.as_bytes()).unwrap().is_some());
    // One byte more: 431.
    let over = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(pad + 1));
    assert_eq!(
        parse_err(over.as_bytes()),
        ParseError::HeadTooLarge(l.max_head_bytes)
    );
    // Never terminated: 431 as soon as the limit is reached, not before.
    let endless = vec![b'a'; l.max_head_bytes];
    assert_eq!(parse_err(&endless).status(), 431);
    assert!(parse(&endless[..l.max_head_bytes - 1]).unwrap().is_none());
    // A huge request line.
    let long = format!("GET /{} HTTP/1.1\r\n\r\n", "x".repeat(l.max_head_bytes));
    assert_eq!(parse_err(long.as_bytes()).status(), 431);
}

#[test]
fn header_count_limit() {
    let mut ok = String::from("GET / HTTP/1.1\r\n");
    for i in 0..100 {
        ok.push_str(&format!("H{i}: v\r\n"));
    }
    let over = format!("{ok}H100: v\r\n\r\n");
    ok.push_str("\r\n");
    assert_eq!(parse_ok(ok.as_bytes()).0.headers.len(), 100);
    assert_eq!(parse_err(over.as_bytes()), ParseError::TooManyHeaders(100));
    assert_eq!(parse_err(over.as_bytes()).status(), 431);
}

#[test]
fn body_limit() {
    let l = Limits {
        max_body_bytes: 10,
        ..limits()
    };
    let ok = b"PUT / HTTP/1.1\r\nContent-Length: 10\r\n\r\n0123456789";
    assert!(parse_request(ok, &l).unwrap().is_some());
    // Rejected from the head alone, before the body arrives.
    let e = parse_request(b"PUT / HTTP/1.1\r\nContent-Length: 11\r\n\r\n", &l).unwrap_err();
    assert_eq!(e, ParseError::BodyTooLarge { len: 11, limit: 10 });
    assert_eq!(e.status(), 413);
    let huge = b"PUT / HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n";
    assert_eq!(parse_request(huge, &l).unwrap_err().status(), 400);
    let big = b"PUT / HTTP/1.1\r\nContent-Length: 18446744073709551615\r\n\r\n";
    assert_eq!(parse_request(big, &l).unwrap_err().status(), 413);
}

#[test]
fn content_length_forms() {
    assert_eq!(
        parse_ok(b"PUT / HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nab")
            .0
            .body,
        b"ab"
    );
    for bad in [
        &b"PUT / HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nabc"[..],
        b"PUT / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
        b"PUT / HTTP/1.1\r\nContent-Length: +1\r\n\r\n",
        b"PUT / HTTP/1.1\r\nContent-Length: 1 2\r\n\r\n",
        b"PUT / HTTP/1.1\r\nContent-Length: 0x10\r\n\r\n",
        b"PUT / HTTP/1.1\r\nContent-Length: 2, 2\r\n\r\n",
        b"PUT / HTTP/1.1\r\nContent-Length:\r\n\r\n",
    ] {
        assert_eq!(
            parse_err(bad),
            ParseError::ContentLength,
            "{:?}",
            String::from_utf8_lossy(bad)
        );
    }
}

#[test]
fn transfer_encoding_is_refused() {
    let chunked = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
    assert_eq!(parse_err(chunked).status(), 411);
    let both = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n";
    assert_eq!(parse_err(both), ParseError::AmbiguousLength);
    assert_eq!(parse_err(both).status(), 400);
}

#[test]
fn malformed_request_lines() {
    let cases: &[(&[u8], u16)] = &[
        (b"GET\r\n\r\n", 400),
        (b"GET /\r\n\r\n", 400),
        (b"GET  / HTTP/1.1\r\n\r\n", 400),
        (b"GET / HTTP/1.1 \r\n\r\n", 400),
        (b" GET / HTTP/1.1\r\n\r\n", 400),
        (b"GET / HTTP/1.1 extra\r\n\r\n", 400),
        (b"GET\t/ HTTP/1.1\r\n\r\n", 400),
        (b"G(T / HTTP/1.1\r\n\r\n", 400),
        (b"get / HTTP/1.1\r\n\r\n", 501),
        (b"BREW / HTTP/1.1\r\n\r\n", 501),
        (b"GET x HTTP/1.1\r\n\r\n", 400),
        (b"GET http://h/ HTTP/1.1\r\n\r\n", 400),
        (b"GET * HTTP/1.1\r\n\r\n", 400),
        (b"GET /\x7f HTTP/1.1\r\n\r\n", 400),
        (b"GET /\xff HTTP/1.1\r\n\r\n", 400),
        (b"GET / HTTP/2.0\r\n\r\n", 505),
        (b"GET / HTTP/0.9\r\n\r\n", 505),
        (b"GET / HTTP/1\r\n\r\n", 400),
        (b"GET / http/1.1\r\n\r\n", 400),
        (b"GET / HTTP/1.1x\r\n\r\n", 400),
        (b"GET / HTTP/1.1\n\r\n", 400),
        (b"GET / HTTP/1.1\r\r\n\r\n", 400),
        (b"\n", 400),
        (b"\r\r\n", 400),
        (b"\x00\r\n\r\n", 400),
    ];
    for (buf, status) in cases {
        let e = parse(buf)
            .err()
            .unwrap_or_else(|| panic!("accepted {:?}", String::from_utf8_lossy(buf)));
        assert_eq!(
            e.status(),
            *status,
            "{:?}: {e}",
            String::from_utf8_lossy(buf)
        );
    }
}

#[test]
fn malformed_headers() {
    let cases: &[&[u8]] = &[
        b"GET / HTTP/1.1\r\nNoColon\r\n\r\n",
        b"GET / HTTP/1.1\r\n: empty-name\r\n\r\n",
        b"GET / HTTP/1.1\r\nName : space\r\n\r\n",
        b"GET / HTTP/1.1\r\nNa me: space\r\n\r\n",
        b"GET / HTTP/1.1\r\nA: b\r\n folded\r\n\r\n",
        b"GET / HTTP/1.1\r\nA: b\r\n\tfolded\r\n\r\n",
        b"GET / HTTP/1.1\r\nA: b\x00c\r\n\r\n",
        b"GET / HTTP/1.1\r\nA: b\rc\r\n\r\n",
        b"GET / HTTP/1.1\r\nA: b\x1bc\r\n\r\n",
        b"GET / HTTP/1.1\r\nA: \xff\xfe\r\n\r\n",
        b"GET / HTTP/1.1\r\nA: b\n\r\n",
        b"GET / HTTP/1.1\r\nA: b\r\n\n",
        b"GET / HTTP/1.1\r\n\xc3\xa9: v\r\n\r\n",
    ];
    for buf in cases {
        let e = parse(buf)
            .err()
            .unwrap_or_else(|| panic!("accepted {:?}", String::from_utf8_lossy(buf)));
        assert_eq!(e.status(), 400, "{:?}: {e}", String::from_utf8_lossy(buf));
    }
    // UTF-8 in values is kept.
    assert_eq!(
        parse_ok("GET / HTTP/1.1\r\nA: é\r\n\r\n".as_bytes())
            .0
            .header("a"),
        Some("é")
    );
}

#[test]
fn errors_are_reported_before_the_head_ends() {
    // A malformed complete line is an error even while more is expected.
    assert_eq!(parse_err(b"GET / HTTP/1.1\r\nbad header\r\n").status(), 400);
    assert_eq!(parse_err(b"GET / HTTP/1.1\n").status(), 400);
}

#[test]
fn response_round_trip() {
    let r = Response::json(201, &serde_json::json!({"id": "vm1"})).with_header("X-Id", "1");
    let bytes = r.to_bytes();
    let p = parse_response(&bytes, false, false, 1024).unwrap().unwrap();
    assert_eq!(p.len, bytes.len());
    assert!(p.reusable);
    assert_eq!(p.response.status, 201);
    assert_eq!(p.response.reason, "Created");
    assert_eq!(p.response.header("content-type"), Some("application/json"));
    assert_eq!(p.response.header("x-id"), Some("1"));
    assert_eq!(
        p.response.json_body::<serde_json::Value>().unwrap()["id"],
        "vm1"
    );
}

#[test]
fn response_forms() {
    let mut out = Vec::new();
    Response::no_content().write_to(&mut out, Version::Http11, true, false);
    assert_eq!(out, b"HTTP/1.1 204 No Content\r\n\r\n");
    out.clear();
    Response::text(200, "hi").write_to(&mut out, Version::Http10, true, true);
    let text = String::from_utf8(out.clone()).unwrap();
    assert!(text.contains("Content-Length: 2\r\n") && text.contains("Connection: keep-alive\r\n"));
    assert!(text.ends_with("\r\n\r\n"), "HEAD: no body");
    out.clear();
    Response::error(404, "no such vm").write_to(&mut out, Version::Http11, false, false);
    let p = parse_response(&out, false, false, 1024).unwrap().unwrap();
    assert!(!p.reusable);
    assert_eq!(p.response.error_message(), "no such vm");
    assert_eq!(p.response.reason, "Not Found");
    // Header injection through values is neutralized.
    let r = Response::new(200).with_header("X", "a\r\nInjected: 1");
    let p = parse_response(&r.to_bytes(), false, false, 1024)
        .unwrap()
        .unwrap();
    assert_eq!(p.response.header("injected"), None);
    let r = Response::new(1000).with_header("Bad Name", "x");
    let p = parse_response(&r.to_bytes(), false, false, 1024)
        .unwrap()
        .unwrap();
    assert_eq!((p.response.status, p.response.headers.len()), (500, 1));
}

#[test]
fn response_parsing_edge_cases() {
    let until_eof = b"HTTP/1.1 200 OK\r\n\r\nabc";
    assert!(parse_response(until_eof, false, false, 1024)
        .unwrap()
        .is_none());
    let p = parse_response(until_eof, false, true, 1024)
        .unwrap()
        .unwrap();
    assert_eq!(
        (p.response.body.as_slice(), p.reusable),
        (&b"abc"[..], false)
    );
    let head = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n";
    assert_eq!(
        parse_response(head, true, false, 1024)
            .unwrap()
            .unwrap()
            .response
            .body,
        b""
    );
    assert_eq!(
        parse_response(b"HTTP/1.1 200\r\n\r\n", true, false, 1)
            .unwrap()
            .unwrap()
            .response
            .status,
        200
    );
    let too_big = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n";
    assert_eq!(
        parse_response(too_big, false, false, 4)
            .unwrap_err()
            .status(),
        413
    );
    for bad in [
        &b"HTTP/1.1 20 OK\r\n\r\n"[..],
        b"HTTP/1.1 2000 OK\r\n\r\n",
        b"HTTP/1.1 abc\r\n\r\n",
        b"FTP 200 OK\r\n\r\n",
    ] {
        assert!(parse_response(bad, false, false, 16).is_err());
    }
}

/// A small deterministic generator (xorshift64*), so failures reproduce.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Checks what must hold for any input: no panic, and a complete request never claims more
/// bytes than given.
fn check_any(buf: &[u8], l: &Limits) {
    if let Ok(Some((r, n))) = parse_request(buf, l) {
        assert!(n <= buf.len());
        assert!(r.body.len() <= l.max_body_bytes);
    }
    let _ = parse_response(buf, false, true, 1024);
    let _ = parse_response(buf, false, false, 1024);
}

#[test]
fn random_bytes_never_panic() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let l = Limits {
        max_head_bytes: 512,
        max_headers: 8,
        max_body_bytes: 64,
        max_fds: 4,
    };
    let alphabet =
        b"GET PUT/ HTTP/1.01\r\n:Content-Length: 0123456789 Connection close keep-alive\x00\xff\t";
    for _ in 0..20_000 {
        let len = rng.below(700);
        let buf: Vec<u8> = (0..len)
            .map(|_| match rng.below(3) {
                0 => rng.next() as u8,
                _ => alphabet[rng.below(alphabet.len())],
            })
            .collect();
        check_any(&buf, &l);
    }
}

#[test]
fn mutated_requests_never_panic() {
    let mut rng = Rng(42);
    let seeds: [&[u8]; 3] = [
        b"PUT /api/v1/vm.create HTTP/1.1\r\nHost: localhost\r\nContent-Length: 4\r\n\r\n{}{}",
        b"GET /v1/vms?limit=2 HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET / HTTP/1.1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}",
    ];
    let l = limits();
    for _ in 0..20_000 {
        let mut buf = seeds[rng.below(seeds.len())].to_vec();
        for _ in 0..1 + rng.below(4) {
            let i = rng.below(buf.len() + 1);
            match rng.below(3) {
                0 if i < buf.len() => buf[i] = rng.next() as u8,
                1 if i < buf.len() => {
                    buf.remove(i);
                }
                _ => buf.insert(i, rng.next() as u8),
            }
        }
        check_any(&buf, &l);
        // Splitting a parseable input anywhere gives `incomplete` or the same error.
        let whole = parse_request(&buf, &l);
        if let Ok(Some((_, n))) = &whole {
            let cut = rng.below(*n);
            assert!(matches!(parse_request(&buf[..cut], &l), Ok(None) | Err(_)));
        }
    }
}
