//! `build-test-guest pvh|bzimage`: builds petrel's freestanding test guest and prints its path
//! (used by resources/quickstart.sh and the benchmark harness).

use petrel_tests::{build_guest, GuestKind};

fn main() {
    let kind = match std::env::args().nth(1).as_deref() {
        Some("pvh") | None => GuestKind::Pvh,
        Some("bzimage") => GuestKind::BzImage,
        Some(other) => {
            eprintln!("build-test-guest: unknown guest '{other}' (expected pvh or bzimage)");
            std::process::exit(2);
        }
    };
    match build_guest(kind) {
        Ok(path) => println!("{}", path.display()),
        Err(e) => {
            eprintln!("build-test-guest: {e}");
            std::process::exit(1);
        }
    }
}
