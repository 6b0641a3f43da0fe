//! The host side's Unix sockets: the listening socket at `uds_path`, non-blocking connects to
//! `<uds_path>_<port>`, and the `CONNECT <port>\n` line a host program sends first.

use std::ffi::OsString;
use std::io::{self, Read};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Longest `CONNECT <port>\n` line accepted.
pub const MAX_LINE: usize = 32;

/// Binds a non-blocking listening socket at `path`, replacing a stale socket file. Any other
/// kind of file there is left alone and is an error.
pub fn listen(path: &Path) -> io::Result<UnixListener> {
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "a file that is not a socket is in the way",
            ));
        }
        std::fs::remove_file(path)?;
    }
    let listener = UnixListener::bind(path)?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// `<uds_path>_<port>`: where guest connections to host port `port` go.
pub fn port_path(uds_path: &Path, port: u32) -> PathBuf {
    let mut s = OsString::from(uds_path.as_os_str());
    s.push(format!("_{port}"));
    PathBuf::from(s)
}

/// Connects a non-blocking stream to `path` without ever waiting: a listener whose backlog
/// is full is an error (`EAGAIN`), like no listener at all.
pub fn connect(path: &Path) -> io::Result<UnixStream> {
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: sockaddr_un is plain old data; all zeroes is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.is_empty() || bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "socket path too long",
        ));
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (dst, &src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = src as libc::c_char;
    }
    // SAFETY: plain syscall with constant arguments; the result is checked.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just created and is owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let len = std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1;
    // SAFETY: `addr` is a valid sockaddr_un that lives through the call, `len` is within its
    // size, and `fd` is an open socket.
    let ret = unsafe {
        libc::connect(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            (&addr as *const libc::sockaddr_un).cast(),
            len as libc::socklen_t,
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(UnixStream::from(fd))
}

/// A host connection that has not yet said which guest port it wants.
#[derive(Debug)]
pub struct Handshake {
    /// The host program's socket (non-blocking).
    pub stream: UnixStream,
    /// When it was accepted (it is closed if the line takes too long).
    pub since: Instant,
    line: Vec<u8>,
}

/// What reading a handshake gave.
#[derive(Debug, PartialEq, Eq)]
pub enum HandshakeStep {
    /// The line is not complete yet.
    Pending,
    /// `CONNECT <port>`.
    Connect(u32),
    /// A malformed or too-long line, or the host went away.
    Failed,
}

impl Handshake {
    /// A freshly accepted host connection.
    pub fn new(stream: UnixStream) -> Self {
        Self {
            stream,
            since: Instant::now(),
            line: Vec::with_capacity(MAX_LINE),
        }
    }

    /// Reads what is available of the line, a byte at a time so that nothing after the
    /// newline is consumed.
    pub fn read(&mut self) -> HandshakeStep {
        let mut b = [0u8; 1];
        loop {
            match (&self.stream).read(&mut b) {
                Ok(0) => return HandshakeStep::Failed,
                Ok(_) if b[0] == b'\n' => return parse_connect(&self.line),
                Ok(_) if self.line.len() >= MAX_LINE => return HandshakeStep::Failed,
                Ok(_) => self.line.push(b[0]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return HandshakeStep::Pending,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return HandshakeStep::Failed,
            }
        }
    }
}

/// Parses `CONNECT <port>` (without the newline; a trailing `\r` is allowed).
pub fn parse_connect(line: &[u8]) -> HandshakeStep {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let Some(port) = line.strip_prefix(b"CONNECT ") else {
        return HandshakeStep::Failed;
    };
    if port.is_empty() || !port.iter().all(u8::is_ascii_digit) {
        return HandshakeStep::Failed;
    }
    match std::str::from_utf8(port).ok().and_then(|p| p.parse().ok()) {
        Some(p) => HandshakeStep::Connect(p),
        None => HandshakeStep::Failed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use vmm_sys_util::tempdir::TempDir;

    #[test]
    fn connect_lines() {
        assert_eq!(parse_connect(b"CONNECT 52"), HandshakeStep::Connect(52));
        assert_eq!(parse_connect(b"CONNECT 52\r"), HandshakeStep::Connect(52));
        assert_eq!(
            parse_connect(b"CONNECT 4294967295"),
            HandshakeStep::Connect(u32::MAX)
        );
        for bad in [
            &b"CONNECT 4294967296"[..],
            b"CONNECT",
            b"CONNECT ",
            b"CONNECT -1",
            b"CONNECT +1",
            b"connect 1",
            b"CONNECT 1 2",
            b"",
        ] {
            assert_eq!(parse_connect(bad), HandshakeStep::Failed, "{bad:?}");
        }
    }

    #[test]
    fn handshake_reads_up_to_the_newline() {
        let (a, b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let mut h = Handshake::new(a);
        assert_eq!(h.read(), HandshakeStep::Pending);
        (&b).write_all(b"CONN").unwrap();
        assert_eq!(h.read(), HandshakeStep::Pending);
        (&b).write_all(b"ECT 7\nrest").unwrap();
        assert_eq!(h.read(), HandshakeStep::Connect(7));
        let mut rest = [0u8; 4];
        (&h.stream).read_exact(&mut rest).unwrap();
        assert_eq!(&rest, b"rest");

        let (a, b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let mut h = Handshake::new(a);
        (&b).write_all(&[b'x'; MAX_LINE + 1]).unwrap();
        assert_eq!(h.read(), HandshakeStep::Failed);
        let (a, b) = UnixStream::pair().unwrap();
        drop(b);
        assert_eq!(Handshake::new(a).read(), HandshakeStep::Failed);
    }

    #[test]
    fn listen_replaces_stale_sockets_only() {
        let dir = TempDir::new().unwrap();
        let path = dir.as_path().join("v.sock");
        drop(listen(&path).unwrap());
        // The socket file is left behind; a new listener replaces it.
        let l = listen(&path).unwrap();
        assert!(UnixStream::connect(&path).is_ok());
        drop(l);
        let file = dir.as_path().join("file");
        std::fs::write(&file, b"keep").unwrap();
        assert!(listen(&file).is_err());
        assert_eq!(std::fs::read(&file).unwrap(), b"keep");
        assert!(listen(&dir.as_path().join("missing/v.sock")).is_err());
    }

    #[test]
    fn nonblocking_connect() {
        let dir = TempDir::new().unwrap();
        let base = dir.as_path().join("v.sock");
        let p = port_path(&base, 52);
        assert!(p.to_string_lossy().ends_with("v.sock_52"));
        assert!(connect(&p).is_err());
        let l = UnixListener::bind(&p).unwrap();
        let s = connect(&p).unwrap();
        let (peer, _) = l.accept().unwrap();
        (&s).write_all(b"hi").unwrap();
        let mut buf = [0u8; 2];
        (&peer).read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"hi");
        let long = dir.as_path().join("x".repeat(200));
        assert!(connect(&long).is_err());
    }
}
