//! Loading the kernel (PVH ELF or bzImage) and the initramfs into guest memory.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

use linux_loader::bootparam::setup_header;
use linux_loader::loader::{bzimage::BzImage, elf::Elf, elf::PvhBootCapability, KernelLoader};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use crate::layout::{HIMEM_START, MMIO_HOLE_START};
use crate::{Error, GuestMemoryMmap, Result};

/// How the kernel is entered.
#[derive(Debug, Clone, Copy)]
pub enum BootProtocol {
    /// PVH: 32-bit protected mode at `entry`, %ebx = start info.
    Pvh {
        /// Physical entry address from the ELF note.
        entry: u64,
    },
    /// Linux 64-bit boot protocol: long mode at load address + 0x200, %rsi = zero page.
    BzImage {
        /// The setup header read from the image, to be copied into the zero page.
        header: setup_header,
        /// Where the protected-mode kernel was loaded.
        load_addr: u64,
    },
}

/// A kernel in guest memory.
#[derive(Debug, Clone, Copy)]
pub struct LoadedKernel {
    /// How to enter it.
    pub protocol: BootProtocol,
    /// First byte after the kernel image.
    pub kernel_end: u64,
}

impl LoadedKernel {
    /// The 64-bit (bzImage) or 32-bit (PVH) entry point.
    pub fn entry(&self) -> u64 {
        match self.protocol {
            BootProtocol::Pvh { entry } => entry,
            BootProtocol::BzImage { load_addr, .. } => load_addr + 0x200,
        }
    }
}

/// Opens a payload file (kernel, initramfs) for reading without ever blocking: the open is
/// non-blocking (a FIFO or a device would otherwise wait for a writer), and anything but a
/// regular file is refused with its kind named.
pub fn open_regular(path: &Path) -> std::io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC | libc::O_NOCTTY)
        .open(path)?;
    let kind = file.metadata()?.file_type();
    if kind.is_file() {
        return Ok(file);
    }
    let what = if kind.is_dir() {
        "a directory"
    } else if kind.is_fifo() {
        "a FIFO"
    } else if kind.is_socket() {
        "a socket"
    } else if kind.is_char_device() {
        "a character device"
    } else if kind.is_block_device() {
        "a block device"
    } else {
        "not a file"
    };
    Err(std::io::Error::new(
        std::io::ErrorKind::InvalidInput,
        format!("is {what}, not a regular file"),
    ))
}

const ELF_MAGIC: [u8; 4] = [0x7f, b'E', b'L', b'F'];

/// Loads the kernel at `path`: an ELF vmlinux with a PVH note, or a bzImage.
pub fn load_kernel(mem: &GuestMemoryMmap, path: &str) -> Result<LoadedKernel> {
    let file_err = |source| Error::KernelFile {
        path: path.to_string(),
        source,
    };
    let mut file = open_regular(Path::new(path)).map_err(file_err)?;
    let mut magic = [0u8; 4];
    let is_elf = match file.read_exact(&mut magic) {
        Ok(()) => magic == ELF_MAGIC,
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => false,
        Err(e) => return Err(file_err(e)),
    };
    file.seek(SeekFrom::Start(0)).map_err(file_err)?;
    let load_err = |e: linux_loader::loader::Error| Error::KernelLoad {
        path: path.to_string(),
        reason: e.to_string(),
    };
    if is_elf {
        let r =
            Elf::load(mem, None, &mut file, Some(GuestAddress(HIMEM_START))).map_err(load_err)?;
        let PvhBootCapability::PvhEntryPresent(entry) = r.pvh_boot_cap else {
            return Err(Error::NoPvhEntry(path.to_string()));
        };
        return Ok(LoadedKernel {
            protocol: BootProtocol::Pvh {
                entry: entry.raw_value(),
            },
            kernel_end: r.kernel_end,
        });
    }
    match BzImage::load(mem, None, &mut file, Some(GuestAddress(HIMEM_START))) {
        Ok(r) => {
            let header = r
                .setup_header
                .ok_or_else(|| Error::KernelFormat(path.to_string()))?;
            Ok(LoadedKernel {
                protocol: BootProtocol::BzImage {
                    header,
                    load_addr: r.kernel_load.raw_value(),
                },
                kernel_end: r.kernel_end,
            })
        }
        Err(linux_loader::loader::Error::Bzimage(
            linux_loader::loader::bzimage::Error::InvalidBzImage,
        ))
        | Err(linux_loader::loader::Error::Bzimage(
            linux_loader::loader::bzimage::Error::ReadBzImageHeader,
        )) => Err(Error::KernelFormat(path.to_string())),
        Err(e) => Err(load_err(e)),
    }
}

/// The end of the low RAM region (the highest address an initramfs may end at).
pub fn low_ram_end(mem: &GuestMemoryMmap) -> u64 {
    mem.iter()
        .find(|r| r.start_addr().raw_value() == 0)
        .map(|r| r.len())
        .unwrap_or(0)
        .min(MMIO_HOLE_START)
}

/// Loads the initramfs at `path` at the highest page-aligned address that ends at or below
/// `limit` and starts above `kernel_end`. Returns (address, size).
pub fn load_initramfs(
    mem: &GuestMemoryMmap,
    path: &str,
    kernel_end: u64,
    limit: u64,
) -> Result<(u64, u64)> {
    let file_err = |source| Error::InitramfsFile {
        path: path.to_string(),
        source,
    };
    let mut file = open_regular(Path::new(path)).map_err(file_err)?;
    let meta = file.metadata().map_err(file_err)?;
    let size = meta.len();
    if size == 0 {
        return Err(file_err(std::io::Error::other("is empty")));
    }
    let too_large = || Error::InitramfsTooLarge {
        path: path.to_string(),
        size,
        limit,
        kernel_end,
    };
    let addr = limit.checked_sub(size).ok_or_else(too_large)? & !0xfff;
    if addr < kernel_end {
        return Err(too_large());
    }
    mem.read_exact_volatile_from(GuestAddress(addr), &mut file, size as usize)
        .map_err(|source| Error::GuestMemory {
            what: "initramfs",
            source,
        })?;
    Ok((addr, size))
}
