//! The x86 reset vector, `F000:FFF0` (physical `0xFFFF0`): a 7-byte stand-in for the BIOS
//! code found there on a PC, which resets the machine through the i8042 — the same reset
//! the FADT's reset register names.
//!
//! petrel loads no firmware, yet Linux on a hardware-reduced ACPI platform reboots through
//! "EFI" first (`efi_reboot_required()` is true whenever the FADT says hardware-reduced, even
//! without EFI), and when that does nothing, through the BIOS: it drops to real mode and jumps
//! to `F000:FFF0` (`machine_real_restart`). Without this stub the guest then runs the zeroed
//! legacy area forever instead of resetting. The byte lives in the reserved legacy area
//! (`EBDA_START..HIMEM_START` in the e820 map), so the guest never reuses it.
//!
//! ```text
//! F000:FFF0  B0 FE   mov al, 0xfe     ; i8042 command: pulse the CPU reset line
//! F000:FFF2  E6 64   out 0x64, al
//! F000:FFF4  F4      hlt
//! F000:FFF5  EB FD   jmp short FFF4   ; stay halted until the VMM resets the vCPUs
//! ```

use vm_memory::{Bytes, GuestAddress, GuestMemory};

use super::{Error, Result, I8042_CMD_RESET, I8042_COMMAND_PORT};
use crate::layout;

/// The code at the reset vector (see the module documentation).
pub(super) const RESET_STUB: [u8; 7] = [
    0xb0,
    I8042_CMD_RESET,
    0xe6,
    I8042_COMMAND_PORT as u8,
    0xf4,
    0xeb,
    0xfd,
];
// The `out imm8` form needs the port below 0x100; the tables end before the stub.
const _: () = assert!(I8042_COMMAND_PORT < 0x100 && layout::ACPI_END <= layout::RESET_VECTOR);

/// Writes the stub at `layout::RESET_VECTOR`.
pub(super) fn write<M: GuestMemory>(mem: &M) -> Result<()> {
    mem.write_slice(&RESET_STUB, GuestAddress(layout::RESET_VECTOR))
        .map_err(Error::GuestMemory)
}
