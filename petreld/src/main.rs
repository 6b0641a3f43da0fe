//! `petreld`: the orchestrator that runs one `petrel` per VM (see [`petreld`]).

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    std::process::exit(petreld::main(&args));
}
