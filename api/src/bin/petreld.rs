//! `petreld`: the orchestrator that runs one `petrel` per VM (see [`api::daemon`]).

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    std::process::exit(api::daemon::main(&args));
}
