//! A raw image file (or host block device) and the I/O on it.
//!
//! Data moves between the file and guest memory with `pread`/`pwrite` straight into the guest's
//! pages (no bounce buffer). With `O_DIRECT`, a transfer the kernel refuses for alignment
//! (`EINVAL`) is retried through a second, buffered descriptor of the same file; Linux keeps the
//! two coherent.

use std::fs::{File, FileType, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use vm_memory::bitmap::BitmapSlice;
use vm_memory::{
    Bytes, GuestAddress, GuestMemoryError, ReadVolatile, VolatileMemoryError, VolatileSlice,
    WriteVolatile,
};

use super::super::GuestMemoryMmap;
use super::BlockError;

/// Bytes in a virtio-blk sector.
pub const SECTOR_SIZE: u64 = 512;
/// log2 of [`SECTOR_SIZE`].
pub const SECTOR_SHIFT: u32 = 9;

/// An open disk image.
#[derive(Debug)]
pub(crate) struct DiskFile {
    file: File,
    /// A buffered descriptor for transfers `O_DIRECT` refuses; `None` without `O_DIRECT`.
    buffered: Option<File>,
    /// Size in bytes, rounded down to whole sectors.
    size: u64,
    punch_hole: bool,
    zero_range: bool,
}

impl DiskFile {
    /// Releases (`held == false`) or takes again the image's advisory lock: a VM handed to
    /// another process on this host lets it open the image before this one exits.
    pub(crate) fn set_lock(&self, held: bool, readonly: bool) -> io::Result<()> {
        flock(&self.file, held, readonly)
    }
}

/// Releases (`held == false`) or takes (without waiting) the advisory lock of `file`.
pub(crate) fn flock(file: &File, held: bool, readonly: bool) -> io::Result<()> {
    let how = match (held, readonly) {
        (false, _) => libc::LOCK_UN,
        (true, true) => libc::LOCK_SH | libc::LOCK_NB,
        (true, false) => libc::LOCK_EX | libc::LOCK_NB,
    };
    // SAFETY: flock takes no pointers; the descriptor is open for the call.
    if unsafe { libc::flock(file.as_raw_fd(), how) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Takes an advisory lock on the image so two VMs cannot corrupt it: exclusive for a
/// read-write disk, shared for a read-only one (several read-only users may share an image;
/// none may while one writes). Held as long as the file is open.
fn lock(file: &File, path: &Path, readonly: bool) -> Result<(), BlockError> {
    let how = if readonly {
        libc::LOCK_SH
    } else {
        libc::LOCK_EX
    };
    // SAFETY: flock takes no pointers; the descriptor is open for the call.
    if unsafe { libc::flock(file.as_raw_fd(), how | libc::LOCK_NB) } == 0 {
        return Ok(());
    }
    let source = io::Error::last_os_error();
    if source.raw_os_error() == Some(libc::EWOULDBLOCK) {
        return Err(BlockError::Locked {
            path: path.to_path_buf(),
        });
    }
    Err(BlockError::Open {
        path: path.to_path_buf(),
        source,
    })
}

/// Opens `path` (read-only or read-write, `O_DIRECT` if asked), takes its advisory lock and
/// checks it is a regular file or a block device.
pub(crate) fn open_locked(
    path: &Path,
    readonly: bool,
    direct: bool,
) -> Result<(File, FileType), BlockError> {
    let file = open_file(path, readonly, direct)?;
    lock(&file, path, readonly)?;
    let file_type = file
        .metadata()
        .map_err(|source| BlockError::Metadata {
            path: path.to_path_buf(),
            source,
        })?
        .file_type();
    if !file_type.is_file() && !file_type.is_block_device() {
        return Err(BlockError::NotADisk {
            path: path.to_path_buf(),
        });
    }
    Ok((file, file_type))
}

fn open_file(path: &Path, readonly: bool, direct: bool) -> Result<File, BlockError> {
    let mut opts = OpenOptions::new();
    opts.read(true).write(!readonly);
    if direct {
        opts.custom_flags(libc::O_DIRECT);
    }
    opts.open(path).map_err(|source| BlockError::Open {
        path: path.to_path_buf(),
        source,
    })
}

impl DiskFile {
    /// Serves `file` (from [`open_locked`] with the same flags) as a raw image.
    pub(crate) fn from_file(
        file: File,
        file_type: FileType,
        path: &Path,
        readonly: bool,
        direct: bool,
    ) -> Result<Self, BlockError> {
        let meta_err = |source| BlockError::Metadata {
            path: path.to_path_buf(),
            source,
        };
        let buffered = if direct {
            Some(open_file(path, readonly, false)?)
        } else {
            None
        };
        let mut probe = &file;
        let len = probe.seek(SeekFrom::End(0)).map_err(meta_err)?;
        if !len.is_multiple_of(SECTOR_SIZE) {
            log::warn!(
                "disk {}: size {len} is not a multiple of {SECTOR_SIZE}; the tail is ignored",
                path.display()
            );
        }
        let mut disk = Self {
            file,
            buffered,
            size: len - len % SECTOR_SIZE,
            punch_hole: false,
            zero_range: false,
        };
        if !readonly && file_type.is_file() {
            disk.probe_fallocate(path.to_path_buf(), len);
        }
        Ok(disk)
    }

    /// Finds out once whether the file system can punch holes and zero ranges, by trying both
    /// past the end of the file (with KEEP_SIZE, so the data and the size are untouched).
    fn probe_fallocate(&mut self, path: PathBuf, len: u64) {
        let offset = len.next_multiple_of(4096);
        self.punch_hole = self.fallocate(FALLOC_PUNCH, offset, 4096).is_ok();
        self.zero_range = self.fallocate(FALLOC_ZERO, offset, 4096).is_ok();
        if self.zero_range && self.punch_hole {
            // Zeroing past the end may have allocated a block: give it back.
            let _ = self.fallocate(FALLOC_PUNCH, offset, 4096);
        }
        log::debug!(
            "disk {}: punch hole {}, zero range {}",
            path.display(),
            self.punch_hole,
            self.zero_range
        );
    }

    /// Capacity in bytes (whole sectors).
    pub(crate) fn size(&self) -> u64 {
        self.size
    }

    /// Grows a regular file to `size` bytes (a whole number of sectors, not smaller than
    /// now); the new space reads as zeros and takes no room until written.
    pub(crate) fn grow(&mut self, size: u64) -> Result<(), String> {
        if !size.is_multiple_of(SECTOR_SIZE) || size < self.size {
            return Err(format!(
                "{size} bytes: a disk grows by whole {SECTOR_SIZE}-byte sectors from its {} \
                 bytes (petrel does not shrink a disk)",
                self.size
            ));
        }
        let meta = self.file.metadata().map_err(|e| e.to_string())?;
        if !meta.file_type().is_file() {
            return Err("only a disk image file can be resized (this is a block device)".into());
        }
        if size > meta.len() {
            self.file
                .set_len(size)
                .map_err(|e| format!("growing the file: {e}"))?;
        }
        self.size = size;
        Ok(())
    }

    /// Whether the file system can deallocate ranges (`DISCARD`).
    pub(crate) fn can_discard(&self) -> bool {
        self.punch_hole
    }

    /// Whether ranges can be zeroed without writing them (`WRITE_ZEROES`).
    pub(crate) fn can_write_zeroes(&self) -> bool {
        self.punch_hole || self.zero_range
    }

    fn fallocate(&self, mode: libc::c_int, offset: u64, len: u64) -> io::Result<()> {
        let offset =
            i64::try_from(offset).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        let len = i64::try_from(len).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: fallocate only reads its integer arguments and acts on our own descriptor.
        let ret = unsafe { libc::fallocate64(self.file.as_raw_fd(), mode, offset, len) };
        if ret < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    /// Reads `len` bytes at `offset` of the disk into guest memory at `addr`.
    pub(crate) fn read_to_guest(
        &self,
        mem: &GuestMemoryMmap,
        addr: GuestAddress,
        offset: u64,
        len: usize,
    ) -> io::Result<()> {
        let mut at = self.at(offset);
        mem.read_exact_volatile_from(addr, &mut at, len)
            .map_err(|e| at.take_error(e))
    }

    /// Writes `len` bytes of guest memory at `addr` to the disk at `offset`.
    pub(crate) fn write_from_guest(
        &self,
        mem: &GuestMemoryMmap,
        addr: GuestAddress,
        offset: u64,
        len: usize,
    ) -> io::Result<()> {
        let mut at = self.at(offset);
        mem.write_all_volatile_to(addr, &mut at, len)
            .map_err(|e| at.take_error(e))
    }

    /// Makes every acknowledged write durable (`fdatasync`).
    pub(crate) fn flush(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    /// Deallocates `len` bytes at `offset`; they read back as zeroes.
    pub(crate) fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        self.fallocate(FALLOC_PUNCH, offset, len)
    }

    /// Zeroes `len` bytes at `offset`, deallocating them when `unmap` is allowed.
    pub(crate) fn write_zeroes(&self, offset: u64, len: u64, unmap: bool) -> io::Result<()> {
        if self.zero_range && !(unmap && self.punch_hole) {
            self.fallocate(FALLOC_ZERO, offset, len)
        } else {
            self.fallocate(FALLOC_PUNCH, offset, len)
        }
    }

    fn at(&self, offset: u64) -> FileAt<'_> {
        FileAt {
            file: &self.file,
            buffered: self.buffered.as_ref(),
            offset,
            error: None,
        }
    }
}

const FALLOC_PUNCH: libc::c_int = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
const FALLOC_ZERO: libc::c_int = libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE;

/// A file seen from a moving offset: `ReadVolatile`/`WriteVolatile` with `pread`/`pwrite`.
struct FileAt<'a> {
    file: &'a File,
    buffered: Option<&'a File>,
    offset: u64,
    /// The last OS error, kept to report it instead of vm-memory's wrapper.
    error: Option<io::Error>,
}

type Transfer = unsafe fn(libc::c_int, *mut libc::c_void, usize, i64) -> isize;

impl FileAt<'_> {
    fn take_error(&mut self, e: GuestMemoryError) -> io::Error {
        match self.error.take() {
            Some(err) => err,
            None => io::Error::other(e),
        }
    }

    /// Moves `len` bytes at `ptr` with `op` at the current offset, until done or end of file.
    /// Returns the bytes moved.
    fn transfer(&mut self, op: Transfer, ptr: *mut u8, len: usize) -> Result<usize, io::Error> {
        let mut done = 0;
        while done < len {
            let offset = self
                .offset
                .checked_add(done as u64)
                .and_then(|o| i64::try_from(o).ok())
                .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
            // SAFETY: `ptr + done .. ptr + len` lies inside the volatile slice the caller got
            // the pointer from (done < len); the descriptors are ours and open.
            let run =
                |fd: &File| unsafe { op(fd.as_raw_fd(), ptr.add(done).cast(), len - done, offset) };
            let mut n = run(self.file);
            if n < 0 {
                let err = io::Error::last_os_error();
                match (err.raw_os_error(), self.buffered) {
                    (Some(libc::EINVAL), Some(buffered)) => n = run(buffered),
                    (Some(libc::EINTR), _) => continue,
                    _ => return Err(err),
                }
                if n < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            if n == 0 {
                break;
            }
            // n > 0 and at most len - done.
            done += n as usize;
        }
        self.offset += done as u64;
        Ok(done)
    }

    fn record(&mut self, r: io::Result<usize>) -> Result<usize, VolatileMemoryError> {
        r.map_err(|e| {
            let copy = io::Error::from(e.kind());
            let copy = e.raw_os_error().map_or(copy, io::Error::from_raw_os_error);
            self.error = Some(e);
            VolatileMemoryError::IOError(copy)
        })
    }
}

/// `pread64` with a mutable buffer type so that one signature serves both directions.
///
/// # Safety
/// Same as `libc::pread64`.
unsafe fn pread(fd: libc::c_int, buf: *mut libc::c_void, len: usize, off: i64) -> isize {
    // SAFETY: forwarded from the caller.
    unsafe { libc::pread64(fd, buf, len, off) }
}

/// `pwrite64`, see [`pread`].
///
/// # Safety
/// Same as `libc::pwrite64`.
unsafe fn pwrite(fd: libc::c_int, buf: *mut libc::c_void, len: usize, off: i64) -> isize {
    // SAFETY: forwarded from the caller.
    unsafe { libc::pwrite64(fd, buf.cast_const(), len, off) }
}

impl ReadVolatile for FileAt<'_> {
    fn read_volatile<B: BitmapSlice>(
        &mut self,
        buf: &mut VolatileSlice<B>,
    ) -> Result<usize, VolatileMemoryError> {
        let r = {
            let guard = buf.ptr_guard_mut();
            self.transfer(pread, guard.as_ptr(), buf.len())
        };
        // Whatever happened, the guest pages may have changed.
        buf.bitmap().mark_dirty(0, buf.len());
        self.record(r)
    }
}

impl WriteVolatile for FileAt<'_> {
    fn write_volatile<B: BitmapSlice>(
        &mut self,
        buf: &VolatileSlice<B>,
    ) -> Result<usize, VolatileMemoryError> {
        let guard = buf.ptr_guard();
        // pwrite only reads through the pointer.
        let r = self.transfer(pwrite, guard.as_ptr().cast_mut(), buf.len());
        self.record(r)
    }
}
