//! Integration-test support for petrel: builds the freestanding test guests
//! (`tests/guests/`), runs the real `petrel` binary with a timeout, and parses what the guest
//! prints on its serial console.

pub mod guest_build;
pub mod guest_output;
pub mod process;

pub use guest_build::{build_guest, target_dir, workspace_dir, GuestKind};
pub use guest_output::{parse_boots, parse_first_boot, Fadt, GuestBoot, MemRange};
pub use process::{kvm_available, petrel_bin, run_petrel, run_petrel_until, Run};
