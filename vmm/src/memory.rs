//! Guest RAM: one anonymous mapping per RAM range of the memory map, mapped and advised as
//! `MemoryConfig` asks (shared, transparent huge pages, mergeable, prefaulted).

use api::MemoryConfig;
use arch::GuestMemoryMmap;
use vm_memory::mmap::FromRangesError;
use vm_memory::{GuestAddress, GuestRegionMmap, MmapRegion};

use crate::{Error, Result};

/// The `mmap(2)` flags for `cfg`.
fn map_flags(cfg: &MemoryConfig) -> i32 {
    let sharing = if cfg.shared {
        libc::MAP_SHARED
    } else {
        libc::MAP_PRIVATE
    };
    let populate = if cfg.prefault { libc::MAP_POPULATE } else { 0 };
    libc::MAP_ANONYMOUS | libc::MAP_NORESERVE | sharing | populate
}

/// Applies `advice` to `len` bytes at `addr`, naming `what` in the error.
fn advise(addr: *mut u8, len: usize, advice: i32, what: &str) -> Result<()> {
    // SAFETY: `addr..addr+len` is a mapping this module just created and still owns; advice
    // does not change its contents or its validity.
    let rc = unsafe { libc::madvise(addr.cast(), len, advice) };
    if rc == 0 {
        Ok(())
    } else {
        Err(Error::io(
            format!("madvise({what}) on guest RAM"),
            std::io::Error::last_os_error(),
        ))
    }
}

/// Allocates guest RAM. It lives as long as the process: a guest reboot reuses it (the
/// kernel and boot structures are loaded again; like a real machine, RAM is not cleared).
pub fn create_memory(cfg: &MemoryConfig) -> Result<GuestMemoryMmap> {
    let size = cfg.size;
    let failed = |source: FromRangesError| Error::Memory { size, source };
    let mut regions = Vec::new();
    for (start, len) in arch::ram_ranges(size) {
        let len = usize::try_from(len).map_err(|_| failed(FromRangesError::InvalidGuestRegion))?;
        let mapping = MmapRegion::build(
            None,
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            map_flags(cfg),
        )
        .map_err(|e| failed(e.into()))?;
        if cfg.thp {
            advise(mapping.as_ptr(), len, libc::MADV_HUGEPAGE, "MADV_HUGEPAGE")?;
        }
        if cfg.mergeable {
            advise(
                mapping.as_ptr(),
                len,
                libc::MADV_MERGEABLE,
                "MADV_MERGEABLE",
            )?;
        }
        let region = GuestRegionMmap::new(mapping, GuestAddress(start))
            .ok_or_else(|| failed(FromRangesError::InvalidGuestRegion))?;
        regions.push(region);
    }
    GuestMemoryMmap::from_regions(regions).map_err(|e| failed(e.into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

    /// The smaps entry of the mapping that starts at `addr`: its header line and fields.
    fn smaps_entry(addr: usize) -> (String, Vec<String>) {
        let text = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let start_of = |line: &str| {
            let range = line.split(' ').next()?;
            let (start, _) = range.split_once('-')?;
            usize::from_str_radix(start, 16).ok()
        };
        let mut lines = text.lines();
        while let Some(line) = lines.next() {
            if start_of(line) == Some(addr) {
                let fields = lines
                    .by_ref()
                    .take_while(|l| start_of(l).is_none())
                    .map(str::to_string)
                    .collect();
                return (line.to_string(), fields);
            }
        }
        panic!("no mapping at {addr:#x} in /proc/self/smaps");
    }

    /// KiB of `len` bytes at `addr` resident in memory (mincore: exactly this range, unlike
    /// smaps' Rss, which covers a whole VMA and so also a neighbouring mapping merged into it).
    fn resident_kib(addr: *const u8, len: usize) -> u64 {
        let page = 4096;
        let mut vec = vec![0u8; len.div_ceil(page)];
        // SAFETY: `addr..addr + len` is a live mapping of the caller's and `vec` has one byte
        // per page of it, as mincore(2) requires.
        let r = unsafe { libc::mincore(addr as *mut libc::c_void, len, vec.as_mut_ptr()) };
        assert_eq!(r, 0, "mincore: {}", std::io::Error::last_os_error());
        vec.iter().filter(|&&b| b & 1 == 1).count() as u64 * (page as u64 / 1024)
    }

    /// The permissions, `VmFlags` and `Rss` (KiB) of the mapping at `addr`.
    fn smaps_of(addr: usize) -> (String, String, u64) {
        let (header, fields) = smaps_entry(addr);
        let perms = header.split_whitespace().nth(1).unwrap_or("").to_string();
        let field = |name: &str| {
            fields
                .iter()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim().to_string())
                .unwrap_or_default()
        };
        let rss = field("Rss:").trim_end_matches("kB").trim().parse().unwrap();
        (perms, field("VmFlags:"), rss)
    }

    #[test]
    fn mapping_follows_the_config() {
        let mut cfg = MemoryConfig {
            size: 8 << 20,
            ..MemoryConfig::default()
        };
        let mem = create_memory(&cfg).unwrap();
        let region = mem.iter().next().unwrap();
        let (perms, flags, _) = smaps_of(region.as_ptr() as usize);
        assert_eq!(perms, "rw-p", "private by default");
        assert_eq!(
            resident_kib(region.as_ptr(), region.len() as usize),
            0,
            "not faulted in"
        );
        assert!(flags.split(' ').any(|f| f == "hg"), "THP advised: {flags}");
        assert!(!flags.split(' ').any(|f| f == "mg"), "{flags}");

        cfg.thp = false;
        cfg.mergeable = true;
        let mem = create_memory(&cfg).unwrap();
        let region = mem.iter().next().unwrap();
        let (_, flags, _) = smaps_of(region.as_ptr() as usize);
        assert!(!flags.split(' ').any(|f| f == "hg"), "{flags}");
        assert!(flags.split(' ').any(|f| f == "mg"), "mergeable: {flags}");

        // (KSM merges private pages only: the kernel ignores MADV_MERGEABLE on a shared map.)
        cfg.shared = true;
        cfg.prefault = true;
        let mem = create_memory(&cfg).unwrap();
        let region = mem.iter().next().unwrap();
        let (perms, flags, _) = smaps_of(region.as_ptr() as usize);
        assert_eq!(perms, "rw-s", "shared: {flags}");
        assert_eq!(
            resident_kib(region.as_ptr(), region.len() as usize),
            8 << 10,
            "prefaulted"
        );
        assert_eq!(region.len(), 8 << 20);
    }
}
