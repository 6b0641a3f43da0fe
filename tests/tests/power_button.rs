//! The ACPI power button and the guest progress counter, as the test guest sees them.
//!
//! Checked now: the DSDT petrel builds carries the Generic Event Device the guest finds
//! (`DSDT: ged=1 gsi=<layout::GED_GSI>`); `action=power-button` arms (routes the GED GSI and
//! waits) and does not fire by itself; `action=count` prints a steady `COUNT <n>` stream.
//!
//! The helpers that drive the guest's whole power-button path (arm, press, acknowledge) and
//! read the `COUNT` stream live in `petrel_tests::guest_actions`, shared with the API tests
//! (tests/tests/api_lifecycle.rs).

use std::time::{Duration, Instant};

use arch::layout::GED_GSI;
use petrel_tests::guest_actions::{arm_power_button_guest, count_values, has_line};
use petrel_tests::{guest_image, require_kvm, run_petrel, GuestKind, Petrel};

/// Boot, ACPI walk and the first lines of an action, with room for a loaded host.
const BOOT_TIMEOUT: Duration = Duration::from_secs(60);

/// The line the guest prints for the GED it finds in the DSDT.
fn ged_line() -> String {
    format!("DSDT: ged=1 gsi={GED_GSI}")
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
    assert!(has_line(&out, &ged_line()), "{out}");
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
