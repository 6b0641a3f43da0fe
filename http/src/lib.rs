//! A small HTTP/1.1 server and client over Unix stream sockets (the server also over TCP): the transport under the per-VM
//! API (`petrel --api-socket`) and the orchestrator's API (`petreld`). Endpoints live elsewhere.
//!
//! - [`parse_head`] / [`parse_request`] work on byte slices and never panic on any input;
//!   every limit in [`Limits`] maps to a 4xx status ([`ParseError::status`]).
//! - [`Server`] serves a [`Listener`] (Unix or TCP) on one thread with
//!   `poll(2)`: requests are handled one at a time by a [`Handler`], slow clients are cut off by
//!   per-connection deadlines, and at most [`ServerConfig::max_connections`] are open at once.
//! - File descriptors sent with SCM_RIGHTS (Kata's tap fds) arrive on [`Request::fds`].
//! - [`Client`] sends requests (optionally with fds) and reuses its connection while it lasts.

mod client;
mod connection;
mod fds;
mod forward;
mod headers;
mod request;
mod response;
mod server;

#[cfg(test)]
mod parse_tests;
#[cfg(test)]
mod server_tests;
#[cfg(test)]
mod slots_tests;

use std::io;
use std::path::PathBuf;

pub use client::Client;
pub use fds::MAX_FDS;
pub use forward::{Exchange, Forwarder, Responder};
pub use headers::Headers;
pub use request::{parse_head, parse_request, Head, Method, Request, Version};
pub use response::{parse_response, reason_phrase, Dialect, ParsedResponse, Response};
pub use server::{adopt_listener, listen, Handler, Listener, Server, ServerConfig, SocketSpec};

/// Size limits applied to every request a [`Server`] reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Request line plus headers, including the blank line (431 beyond).
    pub max_head_bytes: usize,
    /// Number of header fields (431 beyond).
    pub max_headers: usize,
    /// Body size from Content-Length (413 beyond).
    pub max_body_bytes: usize,
    /// File descriptors received with one request (400 beyond; at most [`MAX_FDS`]).
    pub max_fds: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_head_bytes: 16 * 1024,
            max_headers: 100,
            max_body_bytes: 1024 * 1024,
            max_fds: MAX_FDS,
        }
    }
}

/// Why bytes are not a valid HTTP message; each maps to a response status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// A line ended in LF without CR.
    #[error("line not terminated by CRLF")]
    BareLf,
    /// The request or status line is malformed.
    #[error("malformed start line")]
    StartLine,
    /// The method is a valid token but not one petrel serves.
    #[error("method not implemented")]
    Method,
    /// The request target is not an origin-form path.
    #[error("malformed request target")]
    Target,
    /// An HTTP version other than 1.0 and 1.1.
    #[error("HTTP version not supported")]
    Version,
    /// A malformed header field.
    #[error("malformed header field")]
    Header,
    /// A header line starting with whitespace (obsolete line folding).
    #[error("obsolete header line folding")]
    Folding,
    /// Request line and headers exceed the limit.
    #[error("request head larger than {0} bytes")]
    HeadTooLarge(usize),
    /// More header fields than the limit.
    #[error("more than {0} header fields")]
    TooManyHeaders(usize),
    /// Content-Length is not a number, or two of them disagree.
    #[error("invalid Content-Length")]
    ContentLength,
    /// Transfer-Encoding (chunked bodies) without Content-Length.
    #[error("Transfer-Encoding not supported, send Content-Length")]
    LengthRequired,
    /// Both Transfer-Encoding and Content-Length.
    #[error("both Transfer-Encoding and Content-Length")]
    AmbiguousLength,
    /// The body is larger than the limit.
    #[error("body of {len} bytes exceeds the limit of {limit}")]
    BodyTooLarge {
        /// Declared length.
        len: u64,
        /// The limit.
        limit: usize,
    },
    /// An Expect header other than `100-continue`.
    #[error("unsupported expectation")]
    Expectation,
    /// More file descriptors than the limit arrived with a request, or some were lost.
    #[error("too many file descriptors (at most {0})")]
    TooManyFds(usize),
}

impl ParseError {
    /// The HTTP status to answer with.
    pub fn status(&self) -> u16 {
        match self {
            ParseError::Method => 501,
            ParseError::Version => 505,
            ParseError::HeadTooLarge(_) | ParseError::TooManyHeaders(_) => 431,
            ParseError::LengthRequired => 411,
            ParseError::BodyTooLarge { .. } => 413,
            ParseError::Expectation => 417,
            _ => 400,
        }
    }
}

/// Transport errors of the server and the client.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Creating or binding the listening socket failed.
    #[error("bind {path}")]
    Bind {
        /// Socket path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// A live server already answers on the path.
    #[error("{0}: another server is listening")]
    InUse(PathBuf),
    /// The path exists and is not a socket (never removed).
    #[error("{0}: exists and is not a socket")]
    NotASocket(PathBuf),
    /// An inherited fd is not a listening Unix stream socket.
    #[error("fd {0} is not a listening Unix stream socket")]
    NotAListener(i32),
    /// A `--api-socket` value that is neither a path nor `fd=N`.
    #[error("invalid socket spec {0:?}: expected a path or fd=N")]
    SocketSpec(String),
    /// Setting up a socket or the server thread failed.
    #[error("socket setup")]
    Setup(#[source] io::Error),
    /// Connecting to the server failed.
    #[error("connect {path}")]
    Connect {
        /// Socket path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// Sending the request failed.
    #[error("send request")]
    Send(#[source] io::Error),
    /// Receiving the response failed.
    #[error("receive response")]
    Receive(#[source] io::Error),
    /// No complete response within the client's timeout.
    #[error("timed out waiting for the response")]
    Timeout,
    /// The server closed the connection before a complete response.
    #[error("connection closed before a complete response")]
    Closed,
    /// The response is not valid HTTP or breaks a limit.
    #[error("malformed response")]
    Response(#[source] ParseError),
    /// A request path that is empty, relative or contains whitespace or controls.
    #[error("invalid request path {0:?}")]
    Path(String),
    /// More file descriptors than [`MAX_FDS`].
    #[error("{0} file descriptors, at most {MAX_FDS} can be sent")]
    TooManyFds(usize),
}

/// Result of this module.
pub type Result<T> = std::result::Result<T, Error>;
