//! The ACPI power button and the guest progress counter, as the test guest sees them.
//!
//! Checked now: the DSDT petrel builds carries the Generic Event Device the guest finds
//! (`DSDT: ged=1 gsi=<layout::GED_GSI>`); `action=power-button` arms (routes the GED GSI and
//! waits) and does not fire by itself; `action=count` prints a steady `COUNT <n>` stream.
//!
//! For the API tests: [`arm_power_button_guest`] and [`expect_power_button_ack`] drive the
//! guest's whole power-button path once something can press the button (`vm.power-button`):
//! arm, press, then the guest prints `PETREL-GUEST: power button pressed` and powers off.

use std::time::{Duration, Instant};

use arch::layout::GED_GSI;
use petrel_tests::{guest_image, require_kvm, run_petrel, GuestKind, Petrel};

/// Boot, ACPI walk and the first lines of an action, with room for a loaded host.
const BOOT_TIMEOUT: Duration = Duration::from_secs(60);

/// The line the guest prints for the GED it finds in the DSDT.
fn ged_line() -> String {
    format!("DSDT: ged=1 gsi={GED_GSI}")
}

fn has_line(out: &str, line: &str) -> bool {
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
/// until the guest has found the GED and armed its interrupt: a press before that is lost,
/// as on real hardware before the OS is up.
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
    let armed = p.wait_for_stdout(BOOT_TIMEOUT, |out| {
        has_line(out, "PETREL-GUEST: waiting for power button")
    });
    let out = p.stdout();
    assert!(
        armed,
        "guest did not arm the power button\n{out}\n{}",
        p.stderr()
    );
    assert!(has_line(&out, &ged_line()), "no GED in the DSDT\n{out}");
    p
}

/// Presses the button of an armed guest (from [`arm_power_button_guest`]) with `press` (e.g. a
/// `vm.power-button` API call) and checks the guest acknowledges it and powers off. Returns
/// the serial output; the caller checks what follows the poweroff (process exit, or the API's
/// `Shutdown` state).
pub fn expect_power_button_ack(p: &mut Petrel, press: impl FnOnce(&mut Petrel)) -> String {
    press(p);
    let acked = p.wait_for_stdout(BOOT_TIMEOUT, |out| {
        has_line(out, "PETREL-GUEST: power button pressed")
            && has_line(out, "PETREL-GUEST: poweroff")
    });
    let out = p.stdout();
    assert!(
        acked,
        "guest did not acknowledge the power button\n{out}\n{}",
        p.stderr()
    );
    out
}

#[test]
fn dsdt_describes_the_ged() {
    require_kvm!();
    for kind in [GuestKind::Pvh, GuestKind::BzImage] {
        let kernel = guest_image(kind);
        let run = run_petrel(
            &[
                "--kernel",
                &kernel,
                "--cpus",
                "2",
                "--cmdline",
                "action=poweroff",
            ],
            BOOT_TIMEOUT,
        );
        assert!(run.success(), "{kind:?}\n{}", run.dump());
        assert!(
            has_line(&run.stdout, &ged_line()),
            "{kind:?}\n{}",
            run.dump()
        );
        // The line that was there before the GED keeps its format.
        assert!(
            has_line(&run.stdout, "DSDT: s5=5"),
            "{kind:?}\n{}",
            run.dump()
        );
    }
}

#[test]
fn armed_guest_waits_for_the_button() {
    require_kvm!();
    let mut p = arm_power_button_guest(&[]);
    let out = p.stdout();
    assert!(
        has_line(&out, &format!("POWER: gsi={GED_GSI} vector=0x40 apic=0")),
        "{out}"
    );
    // Nothing presses the button: the guest keeps waiting.
    let fired = p.wait_for_stdout(Duration::from_secs(2), |out| {
        out.contains("power button pressed") || out.contains("PETREL-GUEST: poweroff")
    });
    assert!(!fired, "the button fired by itself\n{}", p.stdout());
}

#[test]
fn count_makes_steady_progress() {
    require_kvm!();
    let kernel = guest_image(GuestKind::Pvh);
    let mut p = Petrel::spawn(&["--kernel", &kernel, "--cmdline", "action=count"]);
    let started = p.wait_for_stdout(BOOT_TIMEOUT, |out| !count_values(out).is_empty());
    assert!(started, "no COUNT line\n{}\n{}", p.stdout(), p.stderr());
    let t0 = Instant::now();
    let first = count_values(&p.stdout()).len();
    // A handful of lines within a few seconds, even on a loaded host.
    let more = p.wait_for_stdout(Duration::from_secs(10), |out| {
        count_values(out).len() >= first + 5
    });
    let elapsed = t0.elapsed();
    let values = count_values(&p.stdout());
    assert!(more, "fewer than 5 COUNT lines in 10 s\n{}", p.stdout());
    let expected: Vec<u64> = (0..values.len() as u64).collect();
    assert_eq!(values, expected, "COUNT lines must be 0, 1, 2, ...");
    eprintln!(
        "count: {} lines in {elapsed:?}",
        values.len().saturating_sub(first)
    );
}
