//! `GET /v1/events`: server-sent events of VM state changes. The store reports every state
//! it writes (creation, each change of the observed state, deletion) in commit order; one
//! thread writes them to every subscriber as
//!
//! ```text
//! event: vm
//! data: {"id":"…","name":"…","state":"running","reason":null}
//! ```
//!
//! with a `: keep-alive` comment after each quiet interval (15 s by default). A subscriber
//! that does not take its bytes within the write timeout is dropped.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;

/// Subscribers at once; more are closed at once.
pub const MAX_SUBSCRIBERS: usize = 64;

/// How long one write to a subscriber may block.
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);

/// One state change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VmEvent {
    /// VM id.
    pub id: String,
    /// VM name.
    pub name: String,
    /// The observed state, or `deleted`.
    pub state: String,
    /// The VM's exit reason, if any.
    pub reason: Option<String>,
}

impl VmEvent {
    /// The wire form of the event.
    pub fn to_sse(&self) -> String {
        let data = serde_json::to_string(self).unwrap_or_else(|_| "{}".into());
        format!("event: vm\ndata: {data}\n\n")
    }
}

enum Msg {
    Event(VmEvent),
    Subscribe(UnixStream),
}

/// Fans events out to the subscribers from one thread.
pub struct EventHub {
    tx: Mutex<Sender<Msg>>,
}

impl EventHub {
    /// Starts the writer thread; a keep-alive comment goes out after each `keepalive` without
    /// events.
    pub fn start(keepalive: Duration) -> std::io::Result<EventHub> {
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("events".into())
            .spawn(move || run(&rx, keepalive))?;
        Ok(EventHub { tx: Mutex::new(tx) })
    }

    fn send(&self, msg: Msg) {
        let _ = super::lock(&self.tx).send(msg);
    }

    /// Publishes `event` to every subscriber.
    pub fn publish(&self, event: VmEvent) {
        self.send(Msg::Event(event));
    }

    /// Adds a subscriber (a connection whose response head was written); it first gets a
    /// `: subscribed` comment.
    pub fn subscribe(&self, stream: UnixStream) {
        self.send(Msg::Subscribe(stream));
    }

    /// A sender for the store's observer (it must be `Send`).
    pub fn publisher(&self) -> impl Fn(VmEvent) + Send + 'static {
        let tx = Mutex::new(super::lock(&self.tx).clone());
        move |e| {
            let _ = super::lock(&tx).send(Msg::Event(e));
        }
    }
}

/// Writes `bytes` to every subscriber, dropping those that fail.
fn broadcast(subs: &mut Vec<UnixStream>, bytes: &[u8]) {
    subs.retain(|s| (&*s).write_all(bytes).is_ok());
}

fn run(rx: &Receiver<Msg>, keepalive: Duration) {
    let mut subs: Vec<UnixStream> = Vec::new();
    let mut last = Instant::now();
    loop {
        let wait = (last + keepalive).saturating_duration_since(Instant::now());
        match rx.recv_timeout(wait) {
            Ok(Msg::Event(e)) => {
                broadcast(&mut subs, e.to_sse().as_bytes());
                last = Instant::now();
            }
            Ok(Msg::Subscribe(s)) => {
                if subs.len() >= MAX_SUBSCRIBERS {
                    log::warn!("events: more than {MAX_SUBSCRIBERS} subscribers; closing one");
                    continue;
                }
                let _ = s.set_write_timeout(Some(WRITE_TIMEOUT));
                if (&s).write_all(b": subscribed\n\n").is_ok() {
                    subs.push(s);
                }
            }
            Err(RecvTimeoutError::Timeout) => {
                broadcast(&mut subs, b": keep-alive\n\n");
                last = Instant::now();
            }
            Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader};

    #[test]
    fn events_and_keepalive_reach_subscribers() {
        let hub = EventHub::start(Duration::from_millis(200)).unwrap();
        let (a, b) = UnixStream::pair().unwrap();
        hub.subscribe(a);
        let mut r = BufReader::new(b);
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        assert_eq!(line, ": subscribed\n");
        let publish = hub.publisher();
        publish(VmEvent {
            id: "1".into(),
            name: "a".into(),
            state: "running".into(),
            reason: None,
        });
        let mut lines = Vec::new();
        while lines.len() < 6 {
            line.clear();
            r.read_line(&mut line).unwrap();
            lines.push(line.clone());
        }
        assert_eq!(lines[1], "event: vm\n");
        assert!(lines[2].starts_with("data: {\"id\":\"1\""), "{lines:?}");
        assert!(lines.contains(&": keep-alive\n".to_string()), "{lines:?}");
    }
}
