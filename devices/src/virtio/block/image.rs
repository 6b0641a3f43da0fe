//! A disk image in one of the formats petrel serves (raw on its own fast path, qcow2 through
//! imago), chosen by the config or detected from the image's header.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use vm_memory::GuestAddress;

use super::super::GuestMemoryMmap;
use super::disk::{open_locked, DiskFile};
use super::qcow2::Qcow2Disk;
use super::BlockError;

/// The format of a disk image (Cloud Hypervisor's `image_type`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ImageFormat {
    /// Detect from the header: qcow2's magic, else raw (a VHDX, VMDK or fixed VHD header is
    /// refused by name rather than served as raw).
    #[default]
    Detect,
    /// Raw: the file's bytes are the disk's.
    Raw,
    /// qcow2 (version 2 or 3), with its backing chain.
    Qcow2,
}

/// What the first bytes (and the last 512) of an image say it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detected {
    /// No known header.
    Raw,
    /// `QFI\xfb`.
    Qcow2,
    /// A format petrel does not serve.
    Unsupported(&'static str),
}

/// Reads the header (and a VHD footer) of `file`, which may be open with `O_DIRECT`: reads
/// are whole aligned 4 KiB blocks into an aligned buffer.
pub fn detect(file: &File) -> io::Result<Detected> {
    let mut block = AlignedBlock([0; ALIGNED]);
    let n = read_at_most(file, &mut block.0, 0)?;
    let head = &block.0[..n];
    if head.starts_with(b"QFI\xfb") {
        return Ok(Detected::Qcow2);
    }
    if head.starts_with(b"vhdxfile") {
        return Ok(Detected::Unsupported("VHDX"));
    }
    if head.starts_with(b"KDMV") || head.starts_with(b"# Disk Descriptor") {
        return Ok(Detected::Unsupported("VMDK"));
    }
    let len = file.metadata()?.len();
    if len >= 512 {
        let footer = len - 512;
        let start = footer - footer % ALIGNED as u64;
        let n = read_at_most(file, &mut block.0, start)?;
        // footer - start < ALIGNED.
        let at = (footer - start) as usize;
        if n >= at + 8 && &block.0[at..at + 8] == b"conectix" {
            return Ok(Detected::Unsupported("VHD"));
        }
    }
    Ok(Detected::Raw)
}

/// Size and alignment of the blocks [`detect`] reads.
const ALIGNED: usize = 4096;

#[repr(C, align(4096))]
struct AlignedBlock([u8; ALIGNED]);

/// One `pread` (a regular file or block device reads short only at its end; a second read at
/// an unaligned offset would fail under `O_DIRECT`).
fn read_at_most(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    loop {
        match file.read_at(buf, offset) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            r => return r,
        }
    }
}

/// An open disk image.
#[derive(Debug)]
pub(crate) enum Image {
    /// Raw: `pread`/`pwrite` straight to guest memory.
    Raw(DiskFile),
    /// qcow2 through imago.
    Qcow2(Qcow2Disk),
}

impl Image {
    /// Opens and locks `path` and serves it in `format` (detected if asked).
    pub(crate) fn open(
        path: &Path,
        format: ImageFormat,
        readonly: bool,
        direct: bool,
        backing_files: bool,
    ) -> Result<Self, BlockError> {
        let (file, file_type) = open_locked(path, readonly, direct)?;
        let bad = |reason: String| BlockError::Format {
            path: path.to_path_buf(),
            reason,
        };
        let detected = detect(&file).map_err(|source| BlockError::Metadata {
            path: path.to_path_buf(),
            source,
        })?;
        let qcow2 = match (format, detected) {
            (ImageFormat::Raw, _) => false,
            (ImageFormat::Qcow2, Detected::Qcow2) => true,
            (ImageFormat::Qcow2, _) => {
                return Err(bad(
                    "image_type is Qcow2 but the file has no qcow2 header".into()
                ))
            }
            (ImageFormat::Detect, Detected::Qcow2) => true,
            (ImageFormat::Detect, Detected::Raw) => false,
            (ImageFormat::Detect, Detected::Unsupported(what)) => {
                return Err(bad(format!(
                    "is a {what} image; petrel serves raw and qcow2 images"
                )))
            }
        };
        if qcow2 {
            Qcow2Disk::open(file, path, readonly, direct, backing_files).map(Image::Qcow2)
        } else {
            DiskFile::from_file(file, file_type, path, readonly, direct).map(Image::Raw)
        }
    }

    /// Capacity in bytes.
    pub(crate) fn size(&self) -> u64 {
        match self {
            Image::Raw(d) => d.size(),
            Image::Qcow2(d) => d.size(),
        }
    }

    /// Grows the image to `size` bytes (raw image files only).
    pub(crate) fn grow(&mut self, size: u64) -> Result<(), String> {
        match self {
            Image::Raw(d) => d.grow(size),
            Image::Qcow2(_) => Err(
                "a qcow2 image is resized with `qemu-img resize` while the VM is stopped; \
                 petrel grows raw images only"
                    .into(),
            ),
        }
    }

    /// Whether `DISCARD` can be offered (raw on a file system that punches holes).
    pub(crate) fn can_discard(&self) -> bool {
        matches!(self, Image::Raw(d) if d.can_discard())
    }

    /// Whether `WRITE_ZEROES` can be offered.
    pub(crate) fn can_write_zeroes(&self) -> bool {
        matches!(self, Image::Raw(d) if d.can_write_zeroes())
    }

    /// See [`DiskFile::set_lock`].
    pub(crate) fn set_lock(&self, held: bool, readonly: bool) -> io::Result<()> {
        match self {
            Image::Raw(d) => d.set_lock(held, readonly),
            Image::Qcow2(d) => d.set_lock(held, readonly),
        }
    }

    /// Reads `len` bytes at disk offset `offset` into guest memory at `addr`.
    pub(crate) fn read_to_guest(
        &self,
        mem: &GuestMemoryMmap,
        addr: GuestAddress,
        offset: u64,
        len: usize,
    ) -> io::Result<()> {
        match self {
            Image::Raw(d) => d.read_to_guest(mem, addr, offset, len),
            Image::Qcow2(d) => d.read_to_guest(mem, addr, offset, len),
        }
    }

    /// Writes `len` bytes of guest memory at `addr` to disk offset `offset`.
    pub(crate) fn write_from_guest(
        &self,
        mem: &GuestMemoryMmap,
        addr: GuestAddress,
        offset: u64,
        len: usize,
    ) -> io::Result<()> {
        match self {
            Image::Raw(d) => d.write_from_guest(mem, addr, offset, len),
            Image::Qcow2(d) => d.write_from_guest(mem, addr, offset, len),
        }
    }

    /// Makes every acknowledged write durable.
    pub(crate) fn flush(&self) -> io::Result<()> {
        match self {
            Image::Raw(d) => d.flush(),
            Image::Qcow2(d) => d.flush(),
        }
    }

    /// Deallocates a range (raw only: not offered otherwise).
    pub(crate) fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        match self {
            Image::Raw(d) => d.discard(offset, len),
            Image::Qcow2(_) => Err(io::Error::from(io::ErrorKind::Unsupported)),
        }
    }

    /// Zeroes a range (raw only: not offered otherwise).
    pub(crate) fn write_zeroes(&self, offset: u64, len: u64, unmap: bool) -> io::Result<()> {
        match self {
            Image::Raw(d) => d.write_zeroes(offset, len, unmap),
            Image::Qcow2(_) => Err(io::Error::from(io::ErrorKind::Unsupported)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn detect_bytes(bytes: &[u8]) -> Detected {
        let mut f = vmm_sys_util::tempfile::TempFile::new().unwrap().into_file();
        f.write_all(bytes).unwrap();
        detect(&f).unwrap()
    }

    #[test]
    fn headers_name_their_format() {
        assert_eq!(detect_bytes(b""), Detected::Raw);
        assert_eq!(detect_bytes(&[0u8; 4096]), Detected::Raw);
        assert_eq!(detect_bytes(b"QFI\xfb\0\0\0\x03"), Detected::Qcow2);
        assert_eq!(detect_bytes(b"vhdxfile"), Detected::Unsupported("VHDX"));
        assert_eq!(
            detect_bytes(b"KDMV\x01\0\0\0"),
            Detected::Unsupported("VMDK")
        );
        // A fixed VHD: data, then a 512-byte footer starting "conectix".
        let mut vhd = vec![0u8; 8192 + 512];
        vhd[8192..8200].copy_from_slice(b"conectix");
        assert_eq!(detect_bytes(&vhd), Detected::Unsupported("VHD"));
        // The same bytes anywhere else are data.
        let mut raw = vec![0u8; 8192 + 512];
        raw[8100..8108].copy_from_slice(b"conectix");
        assert_eq!(detect_bytes(&raw), Detected::Raw);
    }
}
