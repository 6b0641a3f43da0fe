//! The migration stream (`docs/snapshot.md`, "Migration"): a versioned sequence of frames over
//! a Unix socket carrying the config, guest memory (pre-copy rounds driven by the hypervisor's
//! dirty log), then the same state a snapshot holds; the destination answers whether it took
//! the VM. [`Sender`] writes it, [`receive`] reads it into fresh guest memory.

use std::io::{BufWriter, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

use api::VmConfig;
use arch::GuestMemoryMmap;
use vm_memory::{Bytes, GuestAddress, GuestMemoryRegion, GuestRegionMmap, MemoryRegionAddress};

use crate::snapshot::VmSnapshot;

/// The stream's first bytes.
pub const MAGIC: &[u8; 8] = b"PETRELMG";
/// The stream version this petrel speaks.
pub const VERSION: u32 = 1;
/// The page size memory is sent in.
pub const PAGE: usize = 4096;
const TAG_CONFIG: u8 = 1;
const TAG_MEMORY: u8 = 2;
const TAG_STATE: u8 = 3;
const TAG_END: u8 = 4;
/// The destination's answer: it runs the VM.
const ACK_OK: u8 = b'K';
/// The destination's answer: it refused (a length-prefixed message follows).
const ACK_ERR: u8 = b'E';
/// Pages in one memory frame at most.
const RUN_PAGES: usize = 256;
/// The largest JSON frame accepted.
const MAX_JSON: u32 = 64 << 20;
/// How long either side waits for the other.
const PEER_TIMEOUT: Duration = Duration::from_secs(60);

/// Why a migration failed.
#[derive(Debug, thiserror::Error)]
pub enum MigrationError {
    /// The URL is not `unix:/path`.
    #[error("{0}")]
    Url(String),
    /// The socket failed.
    #[error("{what}")]
    Io {
        /// What was attempted.
        what: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The peer sent something that is not this stream.
    #[error("migration stream: {0}")]
    Protocol(String),
    /// The peer speaks another version.
    #[error("migration stream version {found}; this petrel speaks version {VERSION}")]
    Version {
        /// The peer's version.
        found: u32,
    },
    /// The destination did not take the VM.
    #[error("the destination refused the VM: {0}")]
    Refused(String),
    /// The hypervisor's dirty log failed.
    #[error("{what}")]
    Hypervisor {
        /// What was attempted.
        what: String,
        /// Why.
        #[source]
        source: hypervisor::Error,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> MigrationError {
    let what = what.into();
    move |source| MigrationError::Io { what, source }
}

/// The socket path of a `unix:/path` URL.
pub fn path_from_url(field: &str, url: &str) -> Result<PathBuf, MigrationError> {
    match url.strip_prefix("unix:") {
        Some(p) if p.starts_with('/') => Ok(PathBuf::from(p)),
        _ => Err(MigrationError::Url(format!(
            "{field}: '{url}' is not a unix:/absolute/path URL (petrel migrates over Unix \
             sockets only)"
        ))),
    }
}

/// Bits set in a dirty bitmap, as page indexes.
pub fn dirty_pages(bitmap: &[u64]) -> impl Iterator<Item = usize> + '_ {
    bitmap.iter().enumerate().flat_map(|(w, &bits)| {
        (0..64)
            .filter(move |b| bits & (1 << b) != 0)
            .map(move |b| w * 64 + b)
    })
}

/// The source's end.
pub struct Sender {
    out: BufWriter<UnixStream>,
    /// Bytes of memory sent so far.
    pub memory_bytes: u64,
}

impl Sender {
    /// Connects to the destination and sends the stream header.
    pub fn connect(path: &std::path::Path) -> Result<Self, MigrationError> {
        let stream =
            UnixStream::connect(path).map_err(io(format!("connecting to {}", path.display())))?;
        stream
            .set_read_timeout(Some(PEER_TIMEOUT))
            .map_err(io("setting the socket timeout"))?;
        let mut s = Sender {
            out: BufWriter::with_capacity(1 << 20, stream),
            memory_bytes: 0,
        };
        s.write(MAGIC)?;
        s.write(&VERSION.to_le_bytes())?;
        Ok(s)
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), MigrationError> {
        self.out
            .write_all(bytes)
            .map_err(io("writing to the destination"))
    }

    fn json(&mut self, tag: u8, value: &impl serde::Serialize) -> Result<(), MigrationError> {
        let bytes = serde_json::to_vec(value)
            .map_err(|e| MigrationError::Protocol(format!("encoding: {e}")))?;
        self.write(&[tag])?;
        self.write(&(bytes.len() as u32).to_le_bytes())?;
        self.write(&bytes)
    }

    /// The VM's config (the destination allocates memory from it).
    pub fn config(&mut self, cfg: &VmConfig) -> Result<(), MigrationError> {
        self.json(TAG_CONFIG, cfg)
    }

    /// Sends `pages` (indexes, ascending) of `region`; with `skip_zero`, pages that are all
    /// zero are left out (the destination's fresh memory is zero).
    pub fn pages(
        &mut self,
        region: &GuestRegionMmap,
        pages: impl Iterator<Item = usize>,
        skip_zero: bool,
    ) -> Result<(), MigrationError> {
        let mut buf = vec![0u8; PAGE];
        let mut run: Vec<u8> = Vec::with_capacity(PAGE * RUN_PAGES);
        let mut run_start: Option<usize> = None;
        let mut next = 0usize;
        let limit = (region.len() as usize) / PAGE;
        for p in pages.filter(|&p| p < limit) {
            region
                .read_slice(&mut buf, MemoryRegionAddress((p * PAGE) as u64))
                .map_err(|e| MigrationError::Protocol(format!("reading guest memory: {e}")))?;
            let zero = skip_zero && crate::snapshot::memory::is_zero(&buf);
            let contiguous = run_start.is_some() && p == next && run.len() < PAGE * RUN_PAGES;
            if (zero || !contiguous) && !run.is_empty() {
                self.flush_run(region, run_start.unwrap_or(0), &run)?;
                run.clear();
                run_start = None;
            }
            if !zero {
                if run_start.is_none() {
                    run_start = Some(p);
                }
                run.extend_from_slice(&buf);
                next = p + 1;
            }
        }
        if let Some(start) = run_start.filter(|_| !run.is_empty()) {
            self.flush_run(region, start, &run)?;
        }
        Ok(())
    }

    fn flush_run(
        &mut self,
        region: &GuestRegionMmap,
        page: usize,
        bytes: &[u8],
    ) -> Result<(), MigrationError> {
        let gpa = region.start_addr().0 + (page * PAGE) as u64;
        self.write(&[TAG_MEMORY])?;
        self.write(&gpa.to_le_bytes())?;
        self.write(&(bytes.len() as u32).to_le_bytes())?;
        self.write(bytes)?;
        self.memory_bytes += bytes.len() as u64;
        Ok(())
    }

    /// The VM's state (vCPUs paused).
    pub fn state(&mut self, state: &VmSnapshot) -> Result<(), MigrationError> {
        self.json(TAG_STATE, state)
    }

    /// Ends the stream and waits for the destination to say it runs the VM.
    pub fn finish(mut self) -> Result<(), MigrationError> {
        self.write(&[TAG_END])?;
        self.out.flush().map_err(io("writing to the destination"))?;
        let mut stream = self
            .out
            .into_inner()
            .map_err(|e| MigrationError::Protocol(format!("flushing: {e}")))?;
        let mut ack = [0u8; 1];
        stream
            .read_exact(&mut ack)
            .map_err(io("waiting for the destination's answer"))?;
        match ack[0] {
            ACK_OK => Ok(()),
            ACK_ERR => {
                let msg = read_json_bytes(&mut stream)
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
                    .unwrap_or_else(|e| e.to_string());
                Err(MigrationError::Refused(msg))
            }
            other => Err(MigrationError::Protocol(format!("answer byte {other:#x}"))),
        }
    }
}

fn read_u32(r: &mut impl Read) -> Result<u32, MigrationError> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b).map_err(io("reading the stream"))?;
    Ok(u32::from_le_bytes(b))
}

fn read_json_bytes(r: &mut impl Read) -> Result<Vec<u8>, MigrationError> {
    let len = read_u32(r)?;
    if len > MAX_JSON {
        return Err(MigrationError::Protocol(format!("a {len}-byte frame")));
    }
    let mut bytes = vec![0u8; len as usize];
    r.read_exact(&mut bytes).map_err(io("reading the stream"))?;
    Ok(bytes)
}

/// Reads a whole stream: checks the header, allocates memory when the config arrives (after
/// `check` accepts it), fills it, and returns it with the state.
pub fn receive(
    stream: &mut UnixStream,
    check: &dyn Fn(&VmConfig) -> Result<(), String>,
) -> Result<(GuestMemoryMmap, VmSnapshot), MigrationError> {
    stream
        .set_read_timeout(Some(PEER_TIMEOUT))
        .map_err(io("setting the socket timeout"))?;
    let mut r = std::io::BufReader::with_capacity(1 << 20, stream);
    let mut magic = [0u8; 8];
    r.read_exact(&mut magic).map_err(io("reading the stream"))?;
    if &magic != MAGIC {
        return Err(MigrationError::Protocol(
            "not a petrel migration stream".into(),
        ));
    }
    let found = read_u32(&mut r)?;
    if found != VERSION {
        return Err(MigrationError::Version { found });
    }
    let mut memory: Option<GuestMemoryMmap> = None;
    // The config `check` accepted and the memory was made for: the VM is built from the
    // state's copy, which must be the same.
    let mut checked: Option<VmConfig> = None;
    let mut state: Option<VmSnapshot> = None;
    let mut buf = vec![0u8; PAGE * RUN_PAGES];
    loop {
        let mut tag = [0u8; 1];
        r.read_exact(&mut tag).map_err(io("reading the stream"))?;
        match tag[0] {
            TAG_CONFIG => {
                let cfg: VmConfig = serde_json::from_slice(&read_json_bytes(&mut r)?)
                    .map_err(|e| MigrationError::Protocol(format!("config: {e}")))?;
                check(&cfg).map_err(MigrationError::Refused)?;
                let mem = crate::memory::create_memory(&cfg.memory)
                    .map_err(|e| MigrationError::Refused(crate::error_chain(&e)))?;
                memory = Some(mem);
                checked = Some(cfg);
            }
            TAG_MEMORY => {
                let mut gpa = [0u8; 8];
                r.read_exact(&mut gpa).map_err(io("reading the stream"))?;
                let len = read_u32(&mut r)? as usize;
                let Some(mem) = memory.as_ref() else {
                    return Err(MigrationError::Protocol("memory before the config".into()));
                };
                let chunk = buf
                    .get_mut(..len)
                    .ok_or_else(|| MigrationError::Protocol(format!("a {len}-byte page run")))?;
                r.read_exact(chunk).map_err(io("reading the stream"))?;
                mem.write_slice(chunk, GuestAddress(u64::from_le_bytes(gpa)))
                    .map_err(|e| MigrationError::Protocol(format!("memory: {e}")))?;
            }
            TAG_STATE => {
                let s: VmSnapshot = serde_json::from_slice(&read_json_bytes(&mut r)?)
                    .map_err(|e| MigrationError::Protocol(format!("state: {e}")))?;
                state = Some(s);
            }
            TAG_END => break,
            other => return Err(MigrationError::Protocol(format!("frame tag {other:#x}"))),
        }
    }
    match (memory, state) {
        (Some(_), Some(s)) if checked.as_ref() != Some(&s.config) => Err(MigrationError::Protocol(
            "the state's config differs from the config sent (and checked) first".into(),
        )),
        (Some(m), Some(s)) => Ok((m, s)),
        _ => Err(MigrationError::Protocol(
            "the stream ended without config, memory and state".into(),
        )),
    }
}

/// Tells the source whether this petrel took the VM.
pub fn answer(stream: &mut UnixStream, result: Result<(), String>) -> std::io::Result<()> {
    match result {
        Ok(()) => stream.write_all(&[ACK_OK]),
        Err(msg) => {
            stream.write_all(&[ACK_ERR])?;
            stream.write_all(&(msg.len() as u32).to_le_bytes())?;
            stream.write_all(msg.as_bytes())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stream of `cfg`, then a state whose config is `state_cfg`, then the end.
    fn stream(cfg: &VmConfig, state: &VmSnapshot) -> Vec<u8> {
        let mut s = MAGIC.to_vec();
        s.extend(VERSION.to_le_bytes());
        for (tag, json) in [
            (TAG_CONFIG, serde_json::to_vec(cfg).unwrap()),
            (TAG_STATE, serde_json::to_vec(state).unwrap()),
        ] {
            s.push(tag);
            s.extend((json.len() as u32).to_le_bytes());
            s.extend(json);
        }
        s.push(TAG_END);
        s
    }

    fn receive_bytes(bytes: &[u8]) -> Result<(GuestMemoryMmap, VmSnapshot), MigrationError> {
        use std::io::Write;
        let (mut rx, mut tx) = UnixStream::pair().unwrap();
        let bytes = bytes.to_vec();
        let writer = std::thread::spawn(move || tx.write_all(&bytes));
        let r = receive(&mut rx, &|_| Ok(()));
        writer.join().unwrap().unwrap();
        r
    }

    /// Found by the `snapshot_stream` fuzz target: the receiver checked the first config and
    /// made memory for it, then built the VM from the state's config, never checked and of
    /// another memory size (fuzz/regressions/snapshot_stream/migration-state-config-differs).
    #[test]
    fn the_state_must_carry_the_config_that_was_checked() {
        // A real state (the PVH test guest, 64 MiB), as the fuzz seeds hold it.
        let state: VmSnapshot = serde_json::from_slice(include_bytes!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../fuzz/seeds/sources/state.json"
        )))
        .unwrap();
        let (memory, got) = receive_bytes(&stream(&state.config, &state)).expect("same config");
        assert_eq!(got.config, state.config);
        drop(memory);
        let mut small = state.config.clone();
        small.memory.size = 32 << 20;
        let Err(e) = receive_bytes(&stream(&small, &state)) else {
            panic!("a state with another config was accepted");
        };
        assert!(e.to_string().contains("differs"), "{e}");
    }

    #[test]
    fn urls_and_dirty_bitmaps() {
        assert_eq!(
            path_from_url("receiver_url", "unix:/tmp/m.sock").unwrap(),
            PathBuf::from("/tmp/m.sock")
        );
        for bad in ["tcp:1.2.3.4:5", "unix:rel", "/tmp/x"] {
            let e = path_from_url("receiver_url", bad).unwrap_err().to_string();
            assert!(e.contains("receiver_url"), "{e}");
        }
        let pages: Vec<usize> = dirty_pages(&[0b1001, 1 << 63, 0, 2]).collect();
        assert_eq!(pages, [0, 3, 127, 193]);
    }
}
