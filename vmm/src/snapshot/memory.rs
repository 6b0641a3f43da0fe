//! Guest RAM in a snapshot: one file per RAM region, written sparse (pages that are all zero are
//! skipped, leaving holes), with a CRC-32 over the pages written; restored by mapping the file
//! private (copy-on-write) instead of reading it.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;

use arch::GuestMemoryMmap;
use serde::{Deserialize, Serialize};
use vm_memory::{
    Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryRegion, GuestRegionMmap,
    MemoryRegionAddress, MmapRegion,
};

use super::{io_err, SnapshotError};

/// The page size the sparse layout and the checksum are counted in.
pub const PAGE: usize = 4096;
/// Pages copied out of guest memory per write.
const RUN_PAGES: usize = 256;

/// One memory file, as the header lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryFile {
    /// File name inside the snapshot directory.
    pub file: String,
    /// Guest physical address of the region.
    pub gpa: u64,
    /// Region (and file) size in bytes.
    pub size: u64,
    /// Pages that were not all zero, i.e. written.
    pub data_pages: u64,
    /// CRC-32 over every written page: its index (u64, little endian) then its bytes.
    pub crc32: u32,
}

/// Adds one written page to a checksum.
fn checksum_page(crc: &mut crc32fast::Hasher, index: u64, page: &[u8]) {
    crc.update(&index.to_le_bytes());
    crc.update(page);
}

fn is_zero(page: &[u8]) -> bool {
    page.iter().all(|&b| b == 0)
}

/// Writes `region` to `path` sparse. Returns its entry for the header.
fn write_region(
    region: &GuestRegionMmap,
    path: &Path,
    file: &str,
) -> Result<MemoryFile, SnapshotError> {
    let out = File::create(path).map_err(io_err(format!("creating {}", path.display())))?;
    let size = region.len();
    let len =
        usize::try_from(size).map_err(|_| SnapshotError::Mismatch("region too big".into()))?;
    let mut crc = crc32fast::Hasher::new();
    let mut buf = vec![0u8; PAGE * RUN_PAGES];
    let mut data_pages = 0u64;
    let mut offset = 0usize;
    while offset < len {
        let chunk = (len - offset).min(buf.len());
        let chunk_buf = &mut buf[..chunk];
        region
            .read_slice(chunk_buf, MemoryRegionAddress(offset as u64))
            .map_err(|e| SnapshotError::Mismatch(format!("reading guest memory: {e}")))?;
        // Write each run of non-zero pages with one call; zero pages become holes.
        let mut run_start: Option<usize> = None;
        let pages = chunk.div_ceil(PAGE);
        for p in 0..=pages {
            let page = chunk_buf.get(p * PAGE..((p + 1) * PAGE).min(chunk));
            let nonzero = match page {
                Some(bytes) if !is_zero(bytes) => {
                    checksum_page(&mut crc, ((offset + p * PAGE) / PAGE) as u64, bytes);
                    data_pages += 1;
                    true
                }
                _ => false,
            };
            match (nonzero, run_start) {
                (true, None) => run_start = Some(p),
                (false, Some(start)) => {
                    let bytes = &chunk_buf[start * PAGE..(p * PAGE).min(chunk)];
                    out.write_all_at(bytes, (offset + start * PAGE) as u64)
                        .map_err(io_err(format!("writing {}", path.display())))?;
                    run_start = None;
                }
                _ => {}
            }
        }
        offset += chunk;
    }
    out.set_len(size)
        .map_err(io_err(format!("sizing {}", path.display())))?;
    out.sync_all()
        .map_err(io_err(format!("syncing {}", path.display())))?;
    Ok(MemoryFile {
        file: file.to_string(),
        gpa: region.start_addr().0,
        size,
        data_pages,
        crc32: crc.finalize(),
    })
}

/// Writes every RAM region of `memory` into `dir`.
pub fn save(memory: &GuestMemoryMmap, dir: &Path) -> Result<Vec<MemoryFile>, SnapshotError> {
    memory
        .iter()
        .enumerate()
        .map(|(i, region)| {
            let name = format!("memory-{i}.bin");
            write_region(region, &dir.join(&name), &name)
        })
        .collect()
}

/// The next data extent at or after `from` (`SEEK_DATA`/`SEEK_HOLE`), or None past the last.
fn next_extent(f: &File, from: u64, size: u64) -> std::io::Result<Option<(u64, u64)>> {
    let fd = f.as_raw_fd();
    let from_off = libc::off_t::try_from(from).map_err(std::io::Error::other)?;
    // SAFETY: lseek on a descriptor this function borrows; it only moves the file position.
    let start = unsafe { libc::lseek(fd, from_off, libc::SEEK_DATA) };
    if start < 0 {
        let e = std::io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ENXIO) => Ok(None),
            _ => Err(e),
        };
    }
    // SAFETY: as above.
    let end = unsafe { libc::lseek(fd, start, libc::SEEK_HOLE) };
    if end < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let (start, end) = (start as u64, (end as u64).min(size));
    Ok((start < end).then_some((start, end)))
}

/// Checks a memory file against its header entry: present, its size, and its checksum (read
/// over the file's data extents only, so the cost follows what the guest wrote).
pub fn verify(dir: &Path, entry: &MemoryFile) -> Result<(), SnapshotError> {
    let path = dir.join(&entry.file);
    let f = File::open(&path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => SnapshotError::Missing(entry.file.clone()),
        _ => io_err(format!("opening {}", path.display()))(e),
    })?;
    let actual = f
        .metadata()
        .map_err(io_err(format!("reading {}", path.display())))?
        .len();
    if actual != entry.size {
        return Err(SnapshotError::Size {
            file: entry.file.clone(),
            expected: entry.size,
            actual,
        });
    }
    let mut crc = crc32fast::Hasher::new();
    let mut pages = 0u64;
    let mut buf = vec![0u8; PAGE * RUN_PAGES];
    let mut pos = 0u64;
    while let Some((start, end)) =
        next_extent(&f, pos, entry.size).map_err(io_err(format!("reading {}", path.display())))?
    {
        let mut at = start - start % PAGE as u64;
        while at < end {
            let n = ((end - at) as usize).min(buf.len());
            let chunk = &mut buf[..n];
            f.read_exact_at(chunk, at)
                .map_err(io_err(format!("reading {}", path.display())))?;
            for (i, page) in chunk.chunks(PAGE).enumerate() {
                if !is_zero(page) {
                    checksum_page(&mut crc, at / PAGE as u64 + i as u64, page);
                    pages += 1;
                }
            }
            at += n as u64;
        }
        pos = end;
        if pos >= entry.size {
            break;
        }
    }
    let found = crc.finalize();
    if found != entry.crc32 || pages != entry.data_pages {
        return Err(SnapshotError::Checksum {
            file: entry.file.clone(),
        });
    }
    Ok(())
}

/// Guest RAM mapped from the snapshot's files: private (the guest's writes stay in this
/// process), populated up front when `prefault`.
pub fn map(
    dir: &Path,
    files: &[MemoryFile],
    prefault: bool,
) -> Result<GuestMemoryMmap, SnapshotError> {
    let mut regions = Vec::with_capacity(files.len());
    for entry in files {
        let path = dir.join(&entry.file);
        let f = File::open(&path).map_err(io_err(format!("opening {}", path.display())))?;
        let len = usize::try_from(entry.size)
            .map_err(|_| SnapshotError::Mismatch(format!("{}: size", entry.file)))?;
        let populate = if prefault { libc::MAP_POPULATE } else { 0 };
        let mapping = MmapRegion::build(
            Some(FileOffset::new(f, 0)),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_NORESERVE | populate,
        )
        .map_err(|e| SnapshotError::Mismatch(format!("mapping {}: {e}", entry.file)))?;
        let region = GuestRegionMmap::new(mapping, GuestAddress(entry.gpa))
            .ok_or_else(|| SnapshotError::Mismatch(format!("{}: bad region", entry.file)))?;
        regions.push(region);
    }
    GuestMemoryMmap::from_regions(regions)
        .map_err(|e| SnapshotError::Mismatch(format!("memory regions: {e}")))
}
