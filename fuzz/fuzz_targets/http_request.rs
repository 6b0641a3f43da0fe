//! Fuzzes petrel-http's parsers: the request parser every API socket runs on client bytes
//! (`parse_request`, pipelined requests one after another), and the response parser petrelctl
//! and petreld's client run on a server's bytes (`parse_response`).
//!
//! Invariants checked:
//! - no panic, for any bytes and limits;
//! - a parsed request used no more bytes than given, its body is exactly its Content-Length
//!   (at most the body limit), its head within the head limit; parsing those bytes alone gives
//!   the same request, and any shorter prefix is incomplete or an error, never another
//!   request (a request's end is not ambiguous);
//! - pipelined requests advance: each used at least one byte;
//! - a parsed response used no more bytes than given and its body is within the limit; a
//!   response petrel writes (`Response::to_bytes`) parses back to the same status and body.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use petrel_http::{parse_request, parse_response, Limits, Response};

#[derive(Arbitrary, Debug)]
struct Input {
    small_limits: bool,
    head_request: bool,
    eof: bool,
    status: u16,
    bytes: Vec<u8>,
}

fn check_requests(buf: &[u8], limits: &Limits) {
    let mut rest = buf;
    for _ in 0..8 {
        let Ok(Some((req, used))) = parse_request(rest, limits) else {
            return;
        };
        assert!(used >= 1 && used <= rest.len(), "used {used} of {}", rest.len());
        assert!(req.body.len() <= limits.max_body_bytes);
        let head_len = used - req.body.len();
        assert!(head_len <= limits.max_head_bytes, "head {head_len}");
        if let Some(cl) = req.header("content-length") {
            assert_eq!(cl.trim().parse::<usize>().ok(), Some(req.body.len()), "{cl:?}");
        }
        let (again, used_again) = parse_request(&rest[..used], limits)
            .expect("the same bytes parse again")
            .expect("and are complete");
        assert_eq!(used_again, used);
        assert_eq!(again.method, req.method);
        assert_eq!(again.path(), req.path());
        assert_eq!(again.body, req.body);
        if used > 1 {
            if let Ok(Some((other, n))) = parse_request(&rest[..used - 1], limits) {
                panic!("a prefix of {} bytes is another request ({n} bytes, {other:?})", used - 1);
            }
        }
        rest = &rest[used..];
    }
}

fuzz_target!(|input: Input| {
    let limits = if input.small_limits {
        Limits {
            max_head_bytes: 256,
            max_headers: 4,
            max_body_bytes: 64,
            ..Limits::default()
        }
    } else {
        Limits::default()
    };
    check_requests(&input.bytes, &limits);

    let max_body = if input.small_limits { 64 } else { 1 << 20 };
    if let Ok(Some(parsed)) = parse_response(&input.bytes, input.head_request, input.eof, max_body) {
        assert!(parsed.len <= input.bytes.len());
        assert!(parsed.response.body.len() <= max_body);
    }

    // What petrel writes, petrel reads back.
    let status = 200 + input.status % 400;
    let body = input.bytes.get(..input.bytes.len().min(max_body)).unwrap_or_default();
    let mut r = Response::new(status);
    r.body = body.to_vec();
    let wire = r.to_bytes();
    let parsed = parse_response(&wire, false, false, max_body)
        .expect("petrel's own response parses")
        .expect("and is complete");
    assert_eq!(parsed.response.status, status);
    let want: &[u8] = if status == 204 || status == 304 { &[] } else { body };
    assert_eq!(parsed.response.body, want);
    assert_eq!(parsed.len, wire.len());
});
