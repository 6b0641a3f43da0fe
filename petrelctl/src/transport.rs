//! One request to the target over its Unix socket, with every failure turned into a
//! one-line message: `cannot connect to PATH: …` when nobody listens, `ROUTE: STATUS REASON:
//! server message` for 4xx/5xx answers.

use std::error::Error as _;
use std::os::fd::BorrowedFd;
use std::path::Path;
use std::time::Duration;

use petrel_http::{reason_phrase, Client, Error, Method, Response};

use super::{CtlError, Result};

/// A target's API: the HTTP client of its socket.
#[derive(Debug)]
pub struct Api {
    client: Client,
}

/// A successful (2xx) answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// Status code.
    pub status: u16,
    /// Response body (empty for 204).
    pub body: Vec<u8>,
}

impl Reply {
    /// The body as JSON; `None` when empty. `route` names the request in the error.
    pub fn json(&self, route: &str) -> Result<Option<serde_json::Value>> {
        if self.body.iter().all(u8::is_ascii_whitespace) {
            return Ok(None);
        }
        serde_json::from_slice(&self.body)
            .map(Some)
            .map_err(|e| CtlError::failed(format!("{route}: malformed JSON response: {e}")))
    }
}

impl Api {
    /// The API on `socket`; each request may take `timeout`.
    pub fn new(socket: &Path, timeout: Duration) -> Api {
        Api {
            client: Client::new(socket).with_timeout(timeout),
        }
    }

    /// The socket path.
    pub fn socket(&self) -> &Path {
        self.client.path()
    }

    /// Sends `method path` with an optional JSON `body` and the file descriptors `fds`
    /// (SCM_RIGHTS). `route` is the short name used in error messages (e.g. `vm.boot`).
    pub fn call(
        &self,
        route: &str,
        method: Method,
        path: &str,
        body: Option<&[u8]>,
        fds: &[BorrowedFd<'_>],
    ) -> Result<Reply> {
        let response = self
            .client
            .request_with_fds(method, path, body, fds)
            .map_err(|e| transport_error(route, &e))?;
        if response.is_success() {
            Ok(Reply {
                status: response.status,
                body: response.body,
            })
        } else {
            Err(server_error(route, &response))
        }
    }
}

/// `cannot connect to PATH: cause`, or `route: error: cause: …`.
fn transport_error(route: &str, e: &Error) -> CtlError {
    if let Error::Connect { path, source } = e {
        return CtlError::failed(format!("cannot connect to {}: {source}", path.display()));
    }
    let mut message = format!("{route}: {e}");
    let mut source = e.source();
    while let Some(cause) = source {
        message.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    CtlError::failed(message)
}

/// `route: 409 Conflict: the server's error text`.
fn server_error(route: &str, response: &Response) -> CtlError {
    let reason = if response.reason.is_empty() {
        reason_phrase(response.status)
    } else {
        response.reason.as_str()
    };
    let detail = response.error_message();
    // Keep the message on one line whatever the server sent.
    let detail = detail.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut message = format!("{route}: {} {reason}", response.status);
    if !detail.is_empty() {
        message.push_str(": ");
        message.push_str(&detail);
    }
    CtlError::failed(message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_errors_are_one_line() {
        let r = Response::error(409, "VM is in state Created:\nboot it first");
        assert_eq!(
            server_error("vm.pause", &r).to_string(),
            "vm.pause: 409 Conflict: VM is in state Created: boot it first"
        );
        let r = Response::text(500, "");
        assert_eq!(
            server_error("vm.info", &r).to_string(),
            "vm.info: 500 Internal Server Error"
        );
    }

    #[test]
    fn empty_body_is_no_json() {
        let reply = Reply {
            status: 204,
            body: Vec::new(),
        };
        assert_eq!(reply.json("x").unwrap(), None);
        let reply = Reply {
            status: 200,
            body: b"{".to_vec(),
        };
        assert!(reply
            .json("vm.info")
            .unwrap_err()
            .to_string()
            .contains("vm.info"));
    }
}
