//! Checks on what the freestanding test guest's virtio drivers print (`VIRTIO: …` lines),
//! shared by the virtio integration tests. The assertions report at the caller's line.

use crate::guest_output::GuestBoot;
use crate::process::Run;

/// The guest's `VIRTIO: …` lines (without the prefix).
pub fn virtio_lines(b: &GuestBoot) -> Vec<&str> {
    b.other
        .iter()
        .filter_map(|l| l.strip_prefix("VIRTIO: "))
        .collect()
}

/// Petrel exited 0 after a guest poweroff, with no guest exception, and the driver printed
/// `VIRTIO: done`.
#[track_caller]
pub fn assert_clean_poweroff(run: &Run, b: &GuestBoot) {
    assert!(!run.timed_out, "petrel did not exit\n{}", run.dump());
    assert!(run.success(), "poweroff must exit 0\n{}", run.dump());
    assert!(b.exception.is_none(), "guest exception\n{}", run.dump());
    assert_eq!(b.action.as_deref(), Some("poweroff"), "{}", run.dump());
    assert!(
        virtio_lines(b).contains(&"done"),
        "driver did not finish\n{}",
        run.dump()
    );
}

/// The driver printed no `VIRTIO: error…` line.
#[track_caller]
pub fn assert_no_driver_errors(run: &Run, b: &GuestBoot) {
    let errors: Vec<&str> = virtio_lines(b)
        .into_iter()
        .filter(|l| l.starts_with("error"))
        .collect();
    assert!(
        errors.is_empty(),
        "driver errors {errors:?}\n{}",
        run.dump()
    );
}
