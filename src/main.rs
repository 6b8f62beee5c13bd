//! The `edgethumb` command line; subcommands live in `src/cli/`.
mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
