//! The boot information handed to the kernel: the command line, and either the PVH
//! `hvm_start_info` (with memory map and module list) or the Linux zero page.

use linux_loader::bootparam::boot_params;
use vm_memory::{Bytes, GuestAddress};

use crate::layout::*;
use crate::loader::{BootProtocol, LoadedKernel};
use crate::memory::e820_map;
use crate::{Error, GuestMemoryMmap, Result};

const PVH_MAGIC: u32 = 0x336e_c578;
/// Linux boot protocol `type_of_loader` for an undefined boot loader.
const LOADER_TYPE_UNDEFINED: u8 = 0xff;

/// Everything the kernel is told at entry.
pub struct BootInfo<'a> {
    /// The loaded kernel.
    pub kernel: &'a LoadedKernel,
    /// Command line (without NUL).
    pub cmdline: &'a str,
    /// Initramfs address and size, if any.
    pub initramfs: Option<(u64, u64)>,
    /// Guest physical address of the ACPI RSDP.
    pub rsdp: u64,
    /// Guest memory size in bytes.
    pub mem_size: u64,
}

fn write<T: vm_memory::ByteValued>(
    mem: &GuestMemoryMmap,
    val: T,
    addr: u64,
    what: &'static str,
) -> Result<()> {
    mem.write_obj(val, GuestAddress(addr))
        .map_err(|source| Error::GuestMemory { what, source })
}

/// Writes the command line and the protocol's boot structure to guest memory.
pub fn write_boot_info(mem: &GuestMemoryMmap, info: &BootInfo) -> Result<()> {
    let cmdline = info.cmdline.as_bytes();
    if cmdline.contains(&0) {
        return Err(Error::Cmdline("contains a NUL byte".into()));
    }
    if cmdline.len() >= CMDLINE_MAX_SIZE {
        return Err(Error::Cmdline(format!(
            "{} bytes, longer than the {} petrel allows",
            cmdline.len(),
            CMDLINE_MAX_SIZE - 1
        )));
    }
    let mut buf = cmdline.to_vec();
    buf.push(0);
    mem.write_slice(&buf, GuestAddress(CMDLINE_START))
        .map_err(|source| Error::GuestMemory {
            what: "command line",
            source,
        })?;
    match info.kernel.protocol {
        BootProtocol::Pvh { .. } => write_pvh(mem, info),
        BootProtocol::BzImage { header, .. } => write_zero_page(mem, info, header),
    }
}

fn write_pvh(mem: &GuestMemoryMmap, info: &BootInfo) -> Result<()> {
    let map = e820_map(info.mem_size);
    if map.len() > PVH_MEMMAP_MAX {
        return Err(Error::Cmdline("memory map too large".into()));
    }
    for (i, e) in map.iter().enumerate() {
        let at = PVH_MEMMAP_START + 24 * i as u64;
        write(mem, e.addr, at, "PVH memory map")?;
        write(mem, e.size, at + 8, "PVH memory map")?;
        write(mem, e.kind, at + 16, "PVH memory map")?;
        write(mem, 0u32, at + 20, "PVH memory map")?;
    }
    let mut nr_modules = 0u32;
    if let Some((addr, size)) = info.initramfs {
        write(mem, addr, PVH_MODLIST_START, "PVH module list")?;
        write(mem, size, PVH_MODLIST_START + 8, "PVH module list")?;
        write(mem, 0u64, PVH_MODLIST_START + 16, "PVH module list")?;
        write(mem, 0u64, PVH_MODLIST_START + 24, "PVH module list")?;
        nr_modules = 1;
    }
    let s = PVH_INFO_START;
    write(mem, PVH_MAGIC, s, "PVH start info")?;
    write(mem, 1u32, s + 4, "PVH start info")?; // version 1: has the memory map
    write(mem, 0u32, s + 8, "PVH start info")?; // flags
    write(mem, nr_modules, s + 12, "PVH start info")?;
    write(mem, PVH_MODLIST_START, s + 16, "PVH start info")?;
    write(mem, CMDLINE_START, s + 24, "PVH start info")?;
    write(mem, info.rsdp, s + 32, "PVH start info")?;
    write(mem, PVH_MEMMAP_START, s + 40, "PVH start info")?;
    write(mem, map.len() as u32, s + 48, "PVH start info")?;
    write(mem, 0u32, s + 52, "PVH start info")
}

fn write_zero_page(
    mem: &GuestMemoryMmap,
    info: &BootInfo,
    header: linux_loader::bootparam::setup_header,
) -> Result<()> {
    let mut params = boot_params {
        hdr: header,
        ..Default::default()
    };
    params.hdr.type_of_loader = LOADER_TYPE_UNDEFINED;
    params.hdr.cmd_line_ptr = CMDLINE_START as u32;
    params.hdr.cmdline_size = info.cmdline.len() as u32;
    if let Some((addr, size)) = info.initramfs {
        params.hdr.ramdisk_image = addr as u32;
        params.hdr.ramdisk_size = size as u32;
    }
    params.acpi_rsdp_addr = info.rsdp;
    let map = e820_map(info.mem_size);
    for (slot, e) in params.e820_table.iter_mut().zip(map.iter()) {
        slot.addr = e.addr;
        slot.size = e.size;
        slot.r#type = e.kind;
    }
    params.e820_entries = map.len().min(params.e820_table.len()) as u8;
    write(mem, params, ZERO_PAGE_START, "zero page")
}
