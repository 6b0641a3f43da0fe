//! One accepted connection of the [`Server`](super::Server): a non-blocking state machine
//! driven by `poll(2)` readiness that reads bytes and fds, parses requests, calls the handler
//! and writes responses, with one deadline for whatever it waits on.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::Instant;

use super::fds;
use super::server::{Handler, ServerConfig};
use super::{parse_head, Head, Method, ParseError, Response, Version};

/// Bytes read per `recvmsg`.
const READ_CHUNK: usize = 64 * 1024;

/// An accepted connection and what it is in the middle of.
pub(crate) struct Connection {
    stream: UnixStream,
    /// Received bytes not yet consumed by a request.
    inbuf: Vec<u8>,
    /// Fds received for the request being read.
    fds: Vec<OwnedFd>,
    /// The head of the request being read, once complete.
    head: Option<Head>,
    continue_sent: bool,
    /// Response bytes and how many were written.
    out: Vec<u8>,
    out_pos: usize,
    close_after_write: bool,
    /// The peer shut down its side: serve what arrived, then close.
    peer_closed: bool,
    /// Finished: drop it.
    pub closed: bool,
    /// One of its requests showed it may use the server ([`Handler::authenticates`]).
    pub authenticated: bool,
    /// Since when it has been waiting for a request with nothing of one received.
    idle_start: Instant,
    /// When the current wait (for a request, or for the peer to take a response) times out.
    pub deadline: Instant,
}

impl Connection {
    /// Takes over an accepted stream.
    pub fn new(stream: UnixStream, config: &ServerConfig) -> io::Result<Connection> {
        stream.set_nonblocking(true)?;
        let now = Instant::now();
        Ok(Connection {
            stream,
            inbuf: Vec::new(),
            fds: Vec::new(),
            head: None,
            continue_sent: false,
            out: Vec::new(),
            out_pos: 0,
            close_after_write: false,
            peer_closed: false,
            closed: false,
            authenticated: false,
            idle_start: now,
            deadline: now + config.idle_timeout,
        })
    }

    /// Gives up the stream (to close it in an orderly way).
    pub fn into_stream(self) -> UnixStream {
        self.stream
    }

    /// The stream, to poll.
    pub fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.stream.as_fd()
    }

    /// The poll events this connection waits for.
    pub fn interest(&self) -> libc::c_short {
        if self.writing() {
            libc::POLLOUT
        } else {
            libc::POLLIN
        }
    }

    fn writing(&self) -> bool {
        self.out_pos < self.out.len()
    }

    /// When it became idle, if it is: waiting for a request with nothing of one received.
    pub fn idle_since(&self) -> Option<Instant> {
        let idle = !self.closed
            && !self.writing()
            && !self.close_after_write
            && self.inbuf.is_empty()
            && self.head.is_none();
        idle.then_some(self.idle_start)
    }

    /// Reacts to poll `revents`.
    pub fn ready(
        &mut self,
        revents: libc::c_short,
        handler: &mut dyn Handler,
        config: &ServerConfig,
    ) {
        if revents & libc::POLLNVAL != 0 {
            self.closed = true;
            return;
        }
        if self.writing() {
            self.flush(config);
        } else {
            self.read(config);
        }
        self.process(handler, config);
    }

    /// The deadline passed: a partial request gets a best-effort 408, then the connection closes.
    pub fn time_out(&mut self, config: &ServerConfig) {
        if !self.writing() && !self.inbuf.is_empty() {
            let mut out = Vec::new();
            let response = config.dialect.error(408, "request not received in time");
            config
                .dialect
                .adapt(&response)
                .write_to(&mut out, Version::Http11, false, false);
            let _ = fds::send(self.stream.as_fd(), &out, &[]);
        }
        self.closed = true;
    }

    fn read(&mut self, config: &ServerConfig) {
        let start = self.inbuf.len();
        let was_idle = self.idle_since().is_some();
        self.inbuf.resize(start + READ_CHUNK, 0);
        let result = fds::recv(self.stream.as_fd(), &mut self.inbuf[start..], &mut self.fds);
        match result {
            Ok(received) => {
                self.inbuf.truncate(start + received.bytes);
                if received.bytes == 0 {
                    self.peer_closed = true;
                } else if was_idle {
                    // A request has begun: it has the read timeout to arrive whole.
                    self.deadline = Instant::now() + config.read_timeout;
                }
                let max = config.limits.max_fds.min(fds::MAX_FDS);
                if received.truncated || self.fds.len() > max {
                    self.fail(ParseError::TooManyFds(max), config);
                }
            }
            Err(e) => {
                self.inbuf.truncate(start);
                if e.kind() != io::ErrorKind::WouldBlock {
                    log::debug!("api connection: read: {e}");
                    self.closed = true;
                }
            }
        }
    }

    /// Serves every complete request in the buffer, one at a time, stopping while a response
    /// is still being written.
    fn process(&mut self, handler: &mut dyn Handler, config: &ServerConfig) {
        while !self.closed && !self.writing() && !self.close_after_write {
            let head = match self.head.take() {
                Some(head) => head,
                None => match parse_head(&self.inbuf, &config.limits) {
                    Ok(Some(head)) => head,
                    Ok(None) => {
                        self.closed = self.peer_closed;
                        return;
                    }
                    Err(e) => return self.fail(e, config),
                },
            };
            let end = head.head_len + head.body_len;
            if self.inbuf.len() < end {
                let send_continue = head.expect_continue && !self.continue_sent;
                self.head = Some(head);
                self.closed = self.peer_closed;
                if send_continue && !self.closed {
                    self.continue_sent = true;
                    self.out.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
                    self.deadline = Instant::now() + config.write_timeout;
                    self.flush(config);
                }
                return;
            }
            let body = self.inbuf[head.head_len..end].to_vec();
            self.inbuf.drain(..end);
            self.continue_sent = false;
            let fds = std::mem::take(&mut self.fds);
            let version = head.version;
            let head_only = head.method == Method::Head;
            let request = head.into_request(body, fds);
            if !self.authenticated && handler.authenticates(&request) {
                self.authenticated = true;
            }
            let keep_alive = request.keep_alive();
            let response = handler.handle(request);
            if response.is_stream() {
                return self.hand_over(&response, config);
            }
            let keep_alive = keep_alive && !response.headers.has_token("connection", "close");
            self.queue(&response, version, keep_alive, head_only, config);
        }
    }

    /// Writes a streaming response's head and gives the stream to its callback; this
    /// connection is then closed (the callback's copy of the socket stays open).
    fn hand_over(&mut self, response: &Response, config: &ServerConfig) {
        self.closed = true;
        let Some(then) = response.take_stream() else {
            return;
        };
        let stream = match self.stream.try_clone() {
            Ok(s) => s,
            Err(e) => {
                log::warn!("api connection: hand over: {e}");
                return;
            }
        };
        let ready = stream
            .set_nonblocking(false)
            .and_then(|()| stream.set_write_timeout(Some(config.write_timeout)))
            .and_then(|()| {
                use std::io::Write;
                (&stream).write_all(&response.stream_head())
            });
        match ready {
            Ok(()) => then(stream),
            Err(e) => log::debug!("api connection: streaming response head: {e}"),
        }
    }

    /// Answers a malformed request and closes.
    fn fail(&mut self, error: ParseError, config: &ServerConfig) {
        log::debug!("api connection: bad request: {error}");
        self.inbuf.clear();
        self.fds.clear();
        self.head = None;
        let response = config.dialect.error(error.status(), &error.to_string());
        self.queue(&response, Version::Http11, false, false, config);
    }

    fn queue(
        &mut self,
        response: &Response,
        version: Version,
        keep_alive: bool,
        head_only: bool,
        config: &ServerConfig,
    ) {
        config
            .dialect
            .adapt(response)
            .write_to(&mut self.out, version, keep_alive, head_only);
        self.close_after_write = !keep_alive;
        self.deadline = Instant::now() + config.write_timeout;
        self.flush(config);
    }

    /// Writes what it can; on completion either closes or waits for the next request.
    fn flush(&mut self, config: &ServerConfig) {
        while self.writing() {
            match fds::send(self.stream.as_fd(), &self.out[self.out_pos..], &[]) {
                Ok(0) => break,
                Ok(n) => self.out_pos += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    log::debug!("api connection: write: {e}");
                    self.closed = true;
                    return;
                }
            }
        }
        if self.writing() {
            return;
        }
        self.out.clear();
        self.out_pos = 0;
        if self.close_after_write {
            let _ = self.stream.shutdown(std::net::Shutdown::Write);
            self.closed = true;
        } else if self.inbuf.is_empty() {
            self.idle_start = Instant::now();
            self.deadline = self.idle_start + config.idle_timeout;
        } else {
            self.deadline = Instant::now() + config.read_timeout;
        }
    }
}
