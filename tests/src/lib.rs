//! Integration-test support for petrel: builds the freestanding test guests
//! (`tests/guests/`) and reads their images, runs the real `petrel` binary with a timeout (or
//! drives it step by step: stdin, signals), and parses what the guest prints on its serial
//! console and what petrel logs on stderr; builds the Debian guest kit for real-Linux tests and
//! decides whether full Linux boots can run here; helpers for the test guest's `count` and
//! `power-button` actions, the host side (tap, packet socket) of a guest's network, and checks
//! on the test guest's `VIRTIO:` lines.

pub mod guest_actions;
pub mod guest_build;
pub mod guest_output;
pub mod host_net;
pub mod image;
pub mod linux_guest;
pub mod linux_kit;
pub mod petrel_log;
pub mod process;
pub mod scratch;
pub mod virtio_checks;

pub use guest_build::{
    build_guest, guest_image, scratch_path, target_dir, workspace_dir, GuestKind,
};
pub use guest_output::{parse_boots, parse_first_boot, Fadt, GuestBoot, MemRange, Module};
pub use image::{loaded_bytes, loaded_extent};
pub use linux_kit::{
    build_linux_kit, calibrate_ring0, linux_kit_dir, linux_kit_or_skip, ring0_native, LinuxKit,
    NATIVE_RING0_LIMIT,
};
pub use petrel_log::{debug_port_lines, error_lines, is_log_line, DebugPortWrite};
pub use process::{
    jailer_bin, kvm_available, petrel_bin, run_petrel, run_petrel_until, Petrel, Run,
};
pub use scratch::ScratchDir;
pub use test_skip::skip;
