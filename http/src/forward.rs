//! Handing requests to another thread: the server thread sends each request with a reply
//! channel and waits for the answer, so the owner of the state (e.g. the VMM event loop)
//! handles API requests among its other events.

use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::time::Duration;

use super::server::Handler;
use super::{Dialect, Request, Response};

/// A request waiting for its response on another thread.
#[derive(Debug)]
pub struct Exchange {
    /// The request.
    pub request: Request,
    reply: SyncSender<Response>,
}

/// The reply half of an [`Exchange`], once its request has been taken.
#[derive(Debug)]
pub struct Responder {
    reply: SyncSender<Response>,
}

impl Responder {
    /// Sends the response back to the waiting connection.
    pub fn reply(self, response: Response) {
        // The connection may have gone; nothing to do then.
        let _ = self.reply.send(response);
    }
}

impl Exchange {
    /// Splits into the request and the means to answer it.
    pub fn into_parts(self) -> (Request, Responder) {
        (self.request, Responder { reply: self.reply })
    }

    /// Sends the response back to the server thread. Dropping an `Exchange` unanswered
    /// answers 503.
    pub fn reply(self, response: Response) {
        // The server thread may have given up waiting (timeout): nothing to do then.
        let _ = self.reply.send(response);
    }
}

/// A [`Handler`] that forwards each request over a channel, calls `notify` (e.g. to write
/// an eventfd the receiving loop polls), and waits for the reply.
pub struct Forwarder {
    tx: Sender<Exchange>,
    notify: Box<dyn Fn() + Send>,
    timeout: Option<Duration>,
    dialect: Dialect,
}

impl Forwarder {
    /// A forwarder and the receiving end of its channel.
    pub fn new(notify: impl Fn() + Send + 'static) -> (Forwarder, Receiver<Exchange>) {
        let (tx, rx) = mpsc::channel();
        let forwarder = Forwarder {
            tx,
            notify: Box::new(notify),
            timeout: None,
            dialect: Dialect::default(),
        };
        (forwarder, rx)
    }

    /// Answer 504 when no reply comes within `timeout` (default: wait as long as it takes).
    pub fn with_timeout(mut self, timeout: Duration) -> Forwarder {
        self.timeout = Some(timeout);
        self
    }

    /// The error bodies of the forwarder's own 503 and 504 answers (default: petrel's).
    pub fn with_dialect(mut self, dialect: Dialect) -> Forwarder {
        self.dialect = dialect;
        self
    }
}

impl Handler for Forwarder {
    fn handle(&mut self, request: Request) -> Response {
        let (reply, reply_rx) = mpsc::sync_channel(1);
        if self.tx.send(Exchange { request, reply }).is_err() {
            return self.dialect.error(503, "shutting down");
        }
        (self.notify)();
        let response = match self.timeout {
            Some(t) => reply_rx.recv_timeout(t).map_err(|e| match e {
                mpsc::RecvTimeoutError::Timeout => 504,
                mpsc::RecvTimeoutError::Disconnected => 503,
            }),
            None => reply_rx.recv().map_err(|_| 503),
        };
        response.unwrap_or_else(|status| match status {
            504 => self.dialect.error(504, "no reply in time"),
            _ => self.dialect.error(503, "request dropped unanswered"),
        })
    }
}
