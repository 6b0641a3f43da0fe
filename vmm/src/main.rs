//! `petrel`: one process per VM.

fn main() {
    std::process::exit(vmm::cli::main());
}
