//! `petrelctl`: the command line people use to drive petrel (see [`petrelctl`]).

fn main() {
    let stdout = std::io::stdout();
    let stderr = std::io::stderr();
    let code = petrelctl::run(
        std::env::args_os().skip(1),
        &mut stdout.lock(),
        &mut stderr.lock(),
    );
    std::process::exit(code);
}
