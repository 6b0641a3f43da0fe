//! Inflate and deflate buffers: reading the guest's PFN arrays and releasing the host memory
//! behind inflated pages.
//!
//! A buffer is a device-readable array of little-endian 32-bit PFNs, each naming a 4 KiB
//! guest page (`VIRTIO_BALLOON_PFN_SHIFT`). A PFN whose page is not entirely inside one guest
//! memory region is counted as bad and skipped. Inflated pages that are contiguous on the host
//! are released with one `madvise(MADV_DONTNEED)`: on petrel's anonymous private guest memory
//! the host frees them and the guest reads zeroes if it touches them again.

use std::io;

use virtio_queue::DescriptorChain;
use vm_memory::{
    Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion, MemoryRegionAddress,
};

use super::BalloonCounters;
use crate::virtio::GuestMemoryMmap;

/// Guest page size the balloon works in (`1 << VIRTIO_BALLOON_PFN_SHIFT`).
pub const PAGE_SIZE: u64 = 4096;
/// Bytes of one PFN in a buffer.
const PFN_BYTES: usize = 4;
/// PFNs read from guest memory at a time.
const PFN_CHUNK: usize = 256;

/// What to do with the pages of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum PageOp {
    /// The guest gave the pages up: release their backing.
    Inflate,
    /// The guest takes the pages back: nothing to do but count.
    Deflate,
}

/// Handles every PFN of `chain`; problems are counted in `counters`.
pub(super) fn handle_chain(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
    op: PageOp,
    counters: &mut BalloonCounters,
) {
    let mut releaser = Releaser::default();
    let mut buf = [0u8; PFN_CHUNK * PFN_BYTES];
    // The chain iterator stops after queue-size descriptors, so a looping chain ends.
    for desc in chain {
        if !counters.readable(&desc, "page") {
            continue;
        }
        let len = desc.len() as usize;
        if !len.is_multiple_of(PFN_BYTES) {
            counters.malformed(format_args!(
                "page buffer of {len} bytes is not a whole number of PFNs"
            ));
        }
        let whole = len - len % PFN_BYTES;
        let mut offset = 0usize;
        while offset < whole {
            let n = (whole - offset).min(buf.len());
            let Some(addr) = desc.addr().checked_add(offset as u64) else {
                counters.malformed(format_args!("page buffer address overflows"));
                break;
            };
            if let Err(e) = mem.read_slice(&mut buf[..n], addr) {
                counters.malformed(format_args!(
                    "cannot read page buffer at {:#x}: {e}",
                    addr.0
                ));
                break;
            }
            for bytes in buf[..n].chunks_exact(PFN_BYTES) {
                let pfn = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
                handle_pfn(mem, pfn, op, &mut releaser, counters);
            }
            offset += n;
        }
    }
    releaser.flush(counters);
}

fn handle_pfn(
    mem: &GuestMemoryMmap,
    pfn: u32,
    op: PageOp,
    releaser: &mut Releaser,
    counters: &mut BalloonCounters,
) {
    let Some(host) = page_host_address(mem, pfn) else {
        counters.bad_pfns += 1;
        if counters.bad_pfns.is_power_of_two() {
            log::warn!(
                "virtio-balloon: PFN {pfn:#x} is outside guest memory ({} bad PFNs so far)",
                counters.bad_pfns
            );
        }
        return;
    };
    match op {
        PageOp::Inflate => {
            counters.inflated_pages += 1;
            releaser.add(host, counters);
        }
        PageOp::Deflate => counters.deflated_pages += 1,
    }
}

/// The host address of guest page `pfn`, if the whole page lies in one guest memory region.
pub(super) fn page_host_address(mem: &GuestMemoryMmap, pfn: u32) -> Option<usize> {
    let gpa = GuestAddress(u64::from(pfn) * PAGE_SIZE);
    let region = mem.find_region(gpa)?;
    let last = gpa.checked_add(PAGE_SIZE - 1)?;
    if last > region.last_addr() {
        return None;
    }
    let offset: MemoryRegionAddress = region.to_region_addr(gpa)?;
    region.get_host_address(offset).ok().map(|p| p as usize)
}

/// Collects host-contiguous pages into runs and releases each run with one madvise.
#[derive(Default)]
struct Releaser {
    /// (host start, length in bytes) of the run being built.
    run: Option<(usize, usize)>,
}

impl Releaser {
    fn add(&mut self, host: usize, counters: &mut BalloonCounters) {
        let page = PAGE_SIZE as usize;
        if let Some((start, len)) = self.run.as_mut() {
            if start.checked_add(*len) == Some(host) {
                *len += page;
                return;
            }
        }
        self.flush(counters);
        self.run = Some((host, page));
    }

    fn flush(&mut self, counters: &mut BalloonCounters) {
        let Some((start, len)) = self.run.take() else {
            return;
        };
        if let Err(e) = release(start, len) {
            counters.release_failed(format_args!(
                "madvise(DONTNEED) of {len:#x} bytes failed: {e}"
            ));
        }
    }
}

/// Drops the host pages behind `[start, start + len)`.
fn release(start: usize, len: usize) -> io::Result<()> {
    // SAFETY: `start..start + len` is made of whole pages of guest memory regions, found through
    // `page_host_address` on memory this device holds a reference to, so the range is mapped
    // for the whole call. MADV_DONTNEED only discards the contents of pages the guest gave up;
    // petrel keeps no Rust references into guest memory (all access is volatile), so no
    // reference sees its data change.
    let ret = unsafe { libc::madvise(start as *mut libc::c_void, len, libc::MADV_DONTNEED) };
    if ret == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
