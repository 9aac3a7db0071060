//! `loom-shim RUN_DIR`: the per-run shim of the nodelet (the same code as the
//! hidden `loom shim` subcommand, as its own small binary).

fn main() -> std::process::ExitCode {
    match std::env::args_os().nth(1) {
        Some(dir) => nodelet::shim::main(std::path::Path::new(&dir)),
        None => {
            eprintln!("usage: loom-shim RUN_DIR");
            std::process::ExitCode::from(2)
        }
    }
}
