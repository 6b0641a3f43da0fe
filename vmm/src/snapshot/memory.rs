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
    /// Region size in bytes.
    pub size: u64,
    /// Where the region starts in its file: 0 in a snapshot directory (one file per region);
    /// in the two-file layout every region lies in the one memory file, one after another.
    #[serde(default, skip_serializing_if = "is_zero_offset")]
    pub offset: u64,
    /// Pages that were not all zero, i.e. written.
    pub data_pages: u64,
    /// CRC-32 over every written page: its index (u64, little endian) then its bytes.
    pub crc32: u32,
}

fn is_zero_offset(offset: &u64) -> bool {
    *offset == 0
}

/// Adds one written page to a checksum.
fn checksum_page(crc: &mut crc32fast::Hasher, index: u64, page: &[u8]) {
    crc.update(&index.to_le_bytes());
    crc.update(page);
}

/// A page of zeros to compare with.
static ZERO_PAGE: [u8; PAGE] = [0; PAGE];

/// Whether `page` (at most a page long) is all zero: one `memcmp` with a zero page, which is
/// fast in any build (a byte loop made a debug build's snapshot of 512 MiB take minutes
/// under nested emulation).
pub(crate) fn is_zero(page: &[u8]) -> bool {
    ZERO_PAGE.get(..page.len()).is_some_and(|zero| page == zero)
        || (page.len() > PAGE && page.iter().all(|&b| b == 0))
}

/// Writes `region` sparse into `out` (the file at `path`) from `base` on. Returns its entry
/// for the header.
fn write_region(
    region: &GuestRegionMmap,
    out: &File,
    path: &Path,
    base: u64,
) -> Result<MemoryFile, SnapshotError> {
    let file = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
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
                    out.write_all_at(bytes, base + (offset + start * PAGE) as u64)
                        .map_err(io_err(format!("writing {}", path.display())))?;
                    run_start = None;
                }
                _ => {}
            }
        }
        offset += chunk;
    }
    Ok(MemoryFile {
        file,
        gpa: region.start_addr().0,
        size,
        offset: base,
        data_pages,
        crc32: crc.finalize(),
    })
}

/// Sizes (the tail of a sparse file is a hole) and syncs a memory file just written.
fn finish(out: &File, path: &Path, len: u64) -> Result<(), SnapshotError> {
    out.set_len(len)
        .map_err(io_err(format!("sizing {}", path.display())))?;
    out.sync_all()
        .map_err(io_err(format!("syncing {}", path.display())))
}

/// Writes every RAM region of `memory` into `dir`, one `memory-N.bin` each.
pub fn save(memory: &GuestMemoryMmap, dir: &Path) -> Result<Vec<MemoryFile>, SnapshotError> {
    memory
        .iter()
        .enumerate()
        .map(|(i, region)| {
            let path = dir.join(format!("memory-{i}.bin"));
            let out =
                File::create(&path).map_err(io_err(format!("creating {}", path.display())))?;
            let entry = write_region(region, &out, &path, 0)?;
            finish(&out, &path, entry.size)?;
            Ok(entry)
        })
        .collect()
}

/// Writes every RAM region of `memory` into the one file `path`, back to back in address
/// order (the two-file layout's memory file, as Firecracker's is: guest RAM, region after
/// region).
pub fn save_one_file(
    memory: &GuestMemoryMmap,
    path: &Path,
) -> Result<Vec<MemoryFile>, SnapshotError> {
    let out = File::create(path).map_err(io_err(format!("creating {}", path.display())))?;
    let mut entries = Vec::new();
    let mut base = 0u64;
    for region in memory.iter() {
        let entry = write_region(region, &out, path, base)?;
        base += entry.size;
        entries.push(entry);
    }
    finish(&out, path, base)?;
    Ok(entries)
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

/// Every data extent of the file range `from..to` (holes left out), page aligned, as offsets
/// from `from`.
fn data_extents(f: &File, from: u64, to: u64) -> std::io::Result<Vec<(u64, u64)>> {
    let mut out = Vec::new();
    let mut pos = from;
    while let Some((start, end)) = next_extent(f, pos, to)? {
        let (start, end) = (start - from, end - from);
        let start = start - start % PAGE as u64;
        out.push((start, end.div_ceil(PAGE as u64) * PAGE as u64));
        pos = from + end;
        if pos >= to {
            break;
        }
    }
    Ok(out)
}

/// Checks a memory file of a snapshot directory against its header entry.
pub fn verify(dir: &Path, entry: &MemoryFile) -> Result<(), SnapshotError> {
    verify_at(&dir.join(&entry.file), &entry.file, entry, entry.size)
}

/// Checks one region of the memory file `path` (called `name` in errors) against its entry:
/// the file present and `file_len` bytes long, the region's checksum (read over the file's
/// data extents only, so the cost follows what the guest wrote).
pub fn verify_at(
    path: &Path,
    name: &str,
    entry: &MemoryFile,
    file_len: u64,
) -> Result<(), SnapshotError> {
    let f = File::open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => SnapshotError::Missing(name.to_string()),
        _ => io_err(format!("opening {}", path.display()))(e),
    })?;
    let actual = f
        .metadata()
        .map_err(io_err(format!("reading {}", path.display())))?
        .len();
    let end = entry.offset.checked_add(entry.size);
    if actual != file_len || end.is_none_or(|end| end > file_len) {
        return Err(SnapshotError::Size {
            file: name.to_string(),
            expected: file_len,
            actual,
        });
    }
    let end = entry.offset + entry.size;
    let mut crc = crc32fast::Hasher::new();
    let mut pages = 0u64;
    let mut buf = vec![0u8; PAGE * RUN_PAGES];
    let mut pos = entry.offset;
    while let Some((start, stop)) =
        next_extent(&f, pos, end).map_err(io_err(format!("reading {}", path.display())))?
    {
        let mut at = start - (start - entry.offset) % PAGE as u64;
        while at < stop {
            let n = ((stop - at) as usize).min(buf.len());
            let chunk = &mut buf[..n];
            f.read_exact_at(chunk, at)
                .map_err(io_err(format!("reading {}", path.display())))?;
            for (i, page) in chunk.chunks(PAGE).enumerate() {
                if !is_zero(page) {
                    let index = (at - entry.offset) / PAGE as u64 + i as u64;
                    checksum_page(&mut crc, index, page);
                    pages += 1;
                }
            }
            at += n as u64;
        }
        pos = stop;
        if pos >= end {
            break;
        }
    }
    let found = crc.finalize();
    if found != entry.crc32 || pages != entry.data_pages {
        return Err(SnapshotError::Checksum {
            file: name.to_string(),
        });
    }
    Ok(())
}

/// `MADV_POPULATE_READ` (Linux 5.14): faults pages in for reading (from the page cache; holes
/// as the shared zero page) without the copy a write fault makes.
const MADV_POPULATE_READ: i32 = 22;

/// Guest RAM mapped from the snapshot's files: private (the guest's writes stay in this
/// process); with `prefault`, every page the snapshot holds data for is read in up front
/// (page tables filled for reading; holes stay on demand, they cost a zero page either way).
pub fn map(
    dir: &Path,
    files: &[MemoryFile],
    prefault: bool,
) -> Result<GuestMemoryMmap, SnapshotError> {
    let located: Vec<_> = files.iter().map(|e| (dir.join(&e.file), e)).collect();
    map_at(&located, prefault)
}

/// As [`map`], each region from the file named beside it, at its entry's offset.
pub fn map_at(
    files: &[(std::path::PathBuf, &MemoryFile)],
    prefault: bool,
) -> Result<GuestMemoryMmap, SnapshotError> {
    let mut regions = Vec::with_capacity(files.len());
    for (path, entry) in files {
        let f = File::open(path).map_err(io_err(format!("opening {}", path.display())))?;
        let len = usize::try_from(entry.size)
            .map_err(|_| SnapshotError::Mismatch(format!("{}: size", entry.file)))?;
        let extents = if prefault {
            data_extents(&f, entry.offset, entry.offset + entry.size)
                .map_err(io_err(format!("reading {}", path.display())))?
        } else {
            Vec::new()
        };
        let mapping = MmapRegion::build(
            Some(FileOffset::new(f, entry.offset)),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_NORESERVE,
        )
        .map_err(|e| SnapshotError::Mismatch(format!("mapping {}: {e}", entry.file)))?;
        for (start, end) in extents {
            let (Ok(offset), Ok(n)) = (usize::try_from(start), usize::try_from(end - start)) else {
                continue;
            };
            if offset.checked_add(n).is_none_or(|e| e > len) {
                continue;
            }
            // SAFETY: `offset..offset + n` lies inside the mapping just made (checked above);
            // the advice only faults its pages in.
            let rc = unsafe {
                libc::madvise(mapping.as_ptr().add(offset).cast(), n, MADV_POPULATE_READ)
            };
            if rc != 0 {
                let e = std::io::Error::last_os_error();
                log::warn!("prefaulting {}: {e}; pages fault in on demand", entry.file);
                break;
            }
        }
        let region = GuestRegionMmap::new(mapping, GuestAddress(entry.gpa))
            .ok_or_else(|| SnapshotError::Mismatch(format!("{}: bad region", entry.file)))?;
        regions.push(region);
    }
    GuestMemoryMmap::from_regions(regions)
        .map_err(|e| SnapshotError::Mismatch(format!("memory regions: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_pages() {
        let mut page = vec![0u8; PAGE];
        assert!(is_zero(&page) && is_zero(&page[..100]) && is_zero(&[]));
        page[PAGE - 1] = 1;
        assert!(!is_zero(&page));
        assert!(is_zero(&page[..PAGE - 1]));
        let mut big = vec![0u8; 2 * PAGE];
        assert!(is_zero(&big));
        big[2 * PAGE - 1] = 7;
        assert!(!is_zero(&big));
    }

    /// `Rss` (KiB) of the mapping that starts at `addr`.
    fn rss_kib(addr: usize) -> u64 {
        let text = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let mut lines = text.lines();
        while let Some(line) = lines.next() {
            let start = line
                .split('-')
                .next()
                .and_then(|s| usize::from_str_radix(s, 16).ok());
            if start == Some(addr) {
                for l in lines.by_ref() {
                    if let Some(v) = l.strip_prefix("Rss:") {
                        return v.trim().trim_end_matches("kB").trim().parse().unwrap();
                    }
                }
            }
        }
        panic!("no mapping at {addr:#x}");
    }

    #[test]
    fn sparse_files_verify_map_private_and_prefault_only_data() {
        let dir = vmm_sys_util::tempdir::TempDir::new().unwrap();
        let ram = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap();
        ram.write_slice(&[7u8; 3 * PAGE], GuestAddress(0x10_0000))
            .unwrap();
        ram.write_obj(0xabcd_u32, GuestAddress(0x30_0000)).unwrap();
        let files = save(&ram, dir.as_path()).unwrap();
        assert_eq!(files.len(), 1);
        assert_eq!(files[0].data_pages, 4);
        let path = dir.as_path().join(&files[0].file);
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.len(), 4 << 20);
        use std::os::unix::fs::MetadataExt;
        assert!(
            meta.blocks() * 512 < 1 << 20,
            "not sparse: {} blocks",
            meta.blocks()
        );
        verify(dir.as_path(), &files[0]).unwrap();

        for prefault in [false, true] {
            let mem = map(dir.as_path(), &files, prefault).unwrap();
            let region = mem.iter().next().unwrap();
            let rss = rss_kib(region.as_ptr() as usize);
            if prefault {
                assert!(rss >= 16, "the 4 data pages are not faulted in: {rss} KiB");
                assert!(rss < 1024, "holes were faulted in too: {rss} KiB");
            } else {
                assert_eq!(rss, 0, "faulted in without prefault");
            }
            assert_eq!(
                mem.read_obj::<u32>(GuestAddress(0x30_0000)).unwrap(),
                0xabcd
            );
            // Private: the guest's writes do not reach the file.
            mem.write_obj(1u8, GuestAddress(0x10_0000)).unwrap();
        }
        verify(dir.as_path(), &files[0]).unwrap();

        // One changed byte in a data page, or a truncated file, is caught.
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all_at(&[8], 0x10_0001).unwrap();
        assert!(matches!(
            verify(dir.as_path(), &files[0]),
            Err(SnapshotError::Checksum { .. })
        ));
        f.set_len(1 << 20).unwrap();
        assert!(matches!(
            verify(dir.as_path(), &files[0]),
            Err(SnapshotError::Size { .. })
        ));
    }

    #[test]
    fn one_file_holds_every_region_at_its_offset() {
        let dir = vmm_sys_util::tempdir::TempDir::new().unwrap();
        let ram = GuestMemoryMmap::from_ranges(&[
            (GuestAddress(0), 2 << 20),
            (GuestAddress(1 << 32), 1 << 20),
        ])
        .unwrap();
        ram.write_obj(0x1111_u32, GuestAddress(0x1000)).unwrap();
        ram.write_obj(0x2222_u32, GuestAddress((1 << 32) + 0x3000))
            .unwrap();
        let path = dir.as_path().join("vm.mem");
        let entries = save_one_file(&ram, &path).unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!((entries[0].offset, entries[1].offset), (0, 2 << 20));
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 3 << 20);
        // The second region's page sits right after the first region in the file.
        let mut word = [0u8; 4];
        File::open(&path)
            .unwrap()
            .read_exact_at(&mut word, (2 << 20) + 0x3000)
            .unwrap();
        assert_eq!(u32::from_le_bytes(word), 0x2222);
        for e in &entries {
            assert_eq!(e.data_pages, 1);
            verify_at(&path, "vm.mem", e, 3 << 20).unwrap();
        }
        for prefault in [false, true] {
            let located: Vec<_> = entries.iter().map(|e| (path.clone(), e)).collect();
            let mem = map_at(&located, prefault).unwrap();
            assert_eq!(mem.read_obj::<u32>(GuestAddress(0x1000)).unwrap(), 0x1111);
            assert_eq!(
                mem.read_obj::<u32>(GuestAddress((1 << 32) + 0x3000))
                    .unwrap(),
                0x2222
            );
        }
        // A changed byte in the second region fails only that region's check.
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all_at(&[9], (2 << 20) + 0x3001).unwrap();
        verify_at(&path, "vm.mem", &entries[0], 3 << 20).unwrap();
        assert!(matches!(
            verify_at(&path, "vm.mem", &entries[1], 3 << 20),
            Err(SnapshotError::Checksum { .. })
        ));
    }
}
