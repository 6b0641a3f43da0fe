//! `petrel-jailer`: starts one petrel in a jail (see `docs/jailer.md`).

mod cgroup;
mod cli;
mod jail;
mod launch;

fn main() {
    // Descriptors inherited from whoever started the jailer are not petrel's business.
    launch::close_inherited_fds();
    let argv: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    if argv.iter().any(|a| a == "--help" || a == "-h") && !argv.iter().any(|a| a == "--") {
        println!("{}", cli::USAGE);
        return;
    }
    let code = match cli::parse(&argv).and_then(|args| launch::run(&args)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("petrel-jailer: error: {e}");
            1
        }
    };
    std::process::exit(code);
}
