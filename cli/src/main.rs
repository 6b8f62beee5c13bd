//! The `edgethumb` command line; one file per subcommand in `commands/`, the local HTTP
//! front (`serve`) in `serve/`.
mod commands;
mod serve;

fn main() -> std::process::ExitCode {
    commands::main()
}
