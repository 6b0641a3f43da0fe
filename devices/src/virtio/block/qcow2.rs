//! qcow2 images, through the `imago` crate (built with its `sync` feature: plain blocking calls
//! on the event loop thread, no runtime, no extra threads).
//!
//! The image file itself is opened and locked by [`super::disk::open_locked`], like a raw one,
//! then handed to imago. Backing files (and an external data file) named in the header are
//! opened read-only through [`ChainGate`], which refuses them unless the disk allows backing
//! files (Cloud Hypervisor's `backing_files`), refuses a chain that loops or is deeper than
//! [`MAX_CHAIN`], and records every file opened (Landlock needs the list).

use std::cell::RefCell;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use imago::format::gate::ImplicitOpenGate;
use imago::io_buffers::{IoVector, IoVectorMut};
use imago::qcow2::Qcow2;
use imago::{FormatAccess, FormatDriverBuilder, Storage, StorageOpenOptions};
use vm_memory::{GuestAddress, GuestMemoryBackend, VolatileSlice};

use super::super::GuestMemoryMmap;
use super::BlockError;

/// Most images below the top one (backing files) in a chain.
pub const MAX_CHAIN: usize = 16;

type ImageFile = imago::file::File;

/// An open qcow2 image and its backing chain.
pub(crate) struct Qcow2Disk {
    image: FormatAccess<ImageFile>,
    /// A second descriptor of the top image's open file, for the advisory lock.
    lock: File,
    size: u64,
}

impl std::fmt::Debug for Qcow2Disk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Qcow2Disk")
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

impl Qcow2Disk {
    /// Wraps `file` (already opened, checked and locked, `path` is its name) as qcow2.
    pub(crate) fn open(
        file: File,
        path: &Path,
        readonly: bool,
        direct: bool,
        backing_files: bool,
    ) -> Result<Self, BlockError> {
        let open_err = |source| BlockError::Image {
            path: path.to_path_buf(),
            source,
        };
        let lock = file.try_clone().map_err(open_err)?;
        let image = open_chain(file, path, readonly, direct, backing_files).0?;
        let size = image.size();
        Ok(Self { image, lock, size })
    }

    /// Capacity in bytes (the virtual disk size).
    pub(crate) fn size(&self) -> u64 {
        self.size
    }

    /// See `DiskFile::set_lock`. Before letting another process open the image, imago's
    /// cached metadata is written back, so that the other process sees every write.
    pub(crate) fn set_lock(&self, held: bool, readonly: bool) -> io::Result<()> {
        if !held && !readonly {
            self.flush()?;
        }
        super::disk::flock(&self.lock, held, readonly)
    }

    /// Reads `len` bytes at `offset` of the virtual disk into guest memory at `addr`.
    pub(crate) fn read_to_guest(
        &self,
        mem: &GuestMemoryMmap,
        addr: GuestAddress,
        offset: u64,
        len: usize,
    ) -> io::Result<()> {
        let slices = guest_slices(mem, addr, len)?;
        // The guard keeps the pages mapped and marks them dirty when dropped.
        let (bufv, _guard) = IoVectorMut::from_volatile_slice(&slices);
        self.image.readv(bufv, offset)
    }

    /// Writes `len` bytes of guest memory at `addr` to the virtual disk at `offset`.
    pub(crate) fn write_from_guest(
        &self,
        mem: &GuestMemoryMmap,
        addr: GuestAddress,
        offset: u64,
        len: usize,
    ) -> io::Result<()> {
        let slices = guest_slices(mem, addr, len)?;
        let (bufv, _guard) = IoVector::from_volatile_slice(&slices);
        self.image.writev(bufv, offset)
    }

    /// Writes back imago's cached metadata (L2 tables, refcounts, in their dependency order),
    /// then `fsync`s: every write completed before is durable, with the metadata that finds it.
    pub(crate) fn flush(&self) -> io::Result<()> {
        self.image.flush()?;
        self.image.sync()
    }
}

impl Drop for Qcow2Disk {
    fn drop(&mut self) {
        // imago flushes in its own Drop too; doing it here lets a failure be logged.
        if let Err(e) = self.image.flush() {
            log::error!("virtio-blk: qcow2 metadata flush at close failed: {e}");
        }
    }
}

/// The guest memory `addr .. addr + len` as host slices (one per memory region crossed).
fn guest_slices(
    mem: &GuestMemoryMmap,
    addr: GuestAddress,
    len: usize,
) -> io::Result<Vec<VolatileSlice<'_>>> {
    GuestMemoryBackend::get_slices(mem, addr, len)
        .collect::<Result<Vec<_>, _>>()
        .map_err(io::Error::other)
}

/// Opens `file` as qcow2 with its backing chain; returns the image, and the files of the
/// chain below it that were opened (backing files, data file), in order, also on failure.
fn open_chain(
    file: File,
    path: &Path,
    readonly: bool,
    direct: bool,
    backing_files: bool,
) -> (Result<FormatAccess<ImageFile>, BlockError>, Vec<PathBuf>) {
    let opened = Rc::default();
    let image = open_with(file, path, readonly, direct, backing_files, &opened);
    let chain = opened.borrow().clone();
    (image, chain)
}

fn open_with(
    file: File,
    path: &Path,
    readonly: bool,
    direct: bool,
    backing_files: bool,
    opened: &Rc<RefCell<Vec<PathBuf>>>,
) -> Result<FormatAccess<ImageFile>, BlockError> {
    let err = |source| BlockError::Image {
        path: path.to_path_buf(),
        source,
    };
    let opts = StorageOpenOptions::new()
        .filename(path)
        .write(!readonly)
        .direct(direct);
    let top = file_id(&file.metadata().map_err(err)?);
    let storage = ImageFile::from_open_file(file, opts.clone()).map_err(err)?;
    let gate = ChainGate {
        backing_files,
        chain: vec![top],
        opened: Rc::clone(opened),
    };
    let driver = Qcow2::<ImageFile>::builder(storage)
        .write(!readonly)
        .storage_open_options(opts)
        .open(gate)
        .map_err(err)?;
    Ok(FormatAccess::new(driver))
}

/// The files below the qcow2 image at `path` (backing files, external data file), for
/// Landlock's list: opens the chain read-only and closes it again. Best effort: a chain that
/// cannot be opened lists the files reached, and fails again, with its error, when the disk
/// is opened.
pub fn backing_chain(path: &Path) -> Vec<PathBuf> {
    let Ok((file, _)) = super::disk::open_locked(path, true, false) else {
        return Vec::new();
    };
    if !matches!(
        super::image::detect(&file),
        Ok(super::image::Detected::Qcow2)
    ) {
        return Vec::new();
    }
    open_chain(file, path, true, false, true).1
}

/// Decides which files a qcow2 header may make petrel open (see the module comment).
#[derive(Clone)]
struct ChainGate {
    backing_files: bool,
    /// The images from the top down to the one being opened (device and inode: the same file
    /// under another name, or through a symlink, is the same image).
    chain: Vec<(u64, u64)>,
    /// Every file opened below the top, shared by the gates of the whole chain.
    opened: Rc<RefCell<Vec<PathBuf>>>,
}

impl ImplicitOpenGate<ImageFile> for ChainGate {
    fn open_format<F: FormatDriverBuilder<ImageFile>>(
        &mut self,
        builder: F,
    ) -> io::Result<FormatAccess<ImageFile>> {
        // The backing image's own backing file goes through a gate that knows the chain so far.
        let driver = builder.open(self.clone())?;
        Ok(FormatAccess::new(driver))
    }

    fn open_storage(&mut self, opts: StorageOpenOptions) -> io::Result<ImageFile> {
        let name = opts
            .get_filename()
            .map(Path::to_path_buf)
            .ok_or_else(|| io::Error::other("a file without a name"))?;
        if !self.backing_files {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "backing files are off for this disk (backing_files=on allows them)",
            ));
        }
        // imago's error names the file.
        let meta = std::fs::metadata(&name)?;
        let id = file_id(&meta);
        if self.chain.contains(&id) {
            return Err(io::Error::other(
                "backing chain loop: the file is already in the chain",
            ));
        }
        if self.chain.len() > MAX_CHAIN {
            return Err(io::Error::other(format!(
                "backing chain deeper than {MAX_CHAIN} images"
            )));
        }
        // Checked before opening: opening a FIFO would block the event loop.
        let ft = meta.file_type();
        if !ft.is_file() && !ft.is_block_device() {
            return Err(io::Error::other("not a regular file or a block device"));
        }
        self.chain.push(id);
        self.opened.borrow_mut().push(name.clone());
        ImageFile::open(opts)
    }
}

/// A file's identity: (device, inode).
fn file_id(meta: &std::fs::Metadata) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    (meta.dev(), meta.ino())
}
