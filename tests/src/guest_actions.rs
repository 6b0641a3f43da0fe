//! Helpers for the test guest's `count` and `power-button` actions, shared by the tests that
//! boot them from the command line and those that drive them over the API: the `COUNT <n>`
//! progress stream, and arming, pressing and checking the ACPI power button.

use std::time::Duration;

use crate::{guest_image, GuestKind, Petrel};

/// Boot, ACPI walk and the first lines of an action, with room for a loaded host.
pub const GUEST_BOOT_TIMEOUT: Duration = Duration::from_secs(60);

/// The guest's line once it waits for the button.
pub const POWER_BUTTON_WAITING: &str = "PETREL-GUEST: waiting for power button";
/// The guest's line when it saw the button.
pub const POWER_BUTTON_PRESSED: &str = "PETREL-GUEST: power button pressed";

/// True when `out` has a line equal to `line`.
pub fn has_line(out: &str, line: &str) -> bool {
    out.lines().any(|l| l == line)
}

/// The values of the `COUNT <n>` lines in `out`, in order.
pub fn count_values(out: &str) -> Vec<u64> {
    out.lines()
        .filter_map(|l| l.strip_prefix("COUNT "))
        .filter_map(|n| n.trim().parse().ok())
        .collect()
}

/// Starts petrel with `args` plus a test guest that runs `action=power-button` (`args` must not
/// give `--kernel` or `--cmdline`; with an API socket, the VM must boot at start), and waits
/// until the guest has armed its interrupt (see [`wait_power_button_armed`]).
pub fn arm_power_button_guest(args: &[&str]) -> Petrel {
    let kernel = guest_image(GuestKind::Pvh);
    let mut all = vec![
        "--kernel",
        kernel.as_str(),
        "--cmdline",
        "action=power-button",
    ];
    all.extend_from_slice(args);
    let mut p = Petrel::spawn(&all);
    wait_power_button_armed(&mut p);
    p
}

/// Waits until a `power-button` guest has found a GED in the DSDT (`DSDT: ged=1 gsi=…`; the
/// caller checks the GSI against `arch::layout::GED_GSI`) and armed its interrupt: a press
/// before that is lost, as on real hardware before the OS is up. Panics (with the output) when
/// it does not.
pub fn wait_power_button_armed(p: &mut Petrel) {
    let armed = p.wait_for_stdout(GUEST_BOOT_TIMEOUT, |out| {
        has_line(out, POWER_BUTTON_WAITING)
    });
    let out = p.stdout();
    assert!(
        armed,
        "guest did not arm the power button\n{out}\n{}",
        p.stderr()
    );
    assert!(
        out.lines().any(|l| l.starts_with("DSDT: ged=1 gsi=")),
        "no GED in the DSDT\n{out}"
    );
}

/// Presses the button of an armed guest (from [`arm_power_button_guest`]) with `press` (e.g. a
/// `vm.power-button` API call) and checks the guest acknowledges it and powers off. Returns
/// the serial output; the caller checks what follows the poweroff (process exit, or the API's
/// `Shutdown` state).
pub fn expect_power_button_ack(p: &mut Petrel, press: impl FnOnce(&mut Petrel)) -> String {
    press(p);
    let acked = p.wait_for_stdout(GUEST_BOOT_TIMEOUT, |out| {
        has_line(out, POWER_BUTTON_PRESSED) && has_line(out, "PETREL-GUEST: poweroff")
    });
    let out = p.stdout();
    assert!(
        acked,
        "guest did not acknowledge the power button\n{out}\n{}",
        p.stderr()
    );
    out
}
