//! The `edgethumb` command line: one file per subcommand, dispatched from [`Command`].
//!
//! Adding a subcommand: a new `cli/src/commands/<name>.rs` with an `Args` struct and a
//! `run(args) -> anyhow::Result<()>`, one variant below and one match arm in [`main`].

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod edge_config;
mod enqueue;
mod render;
mod serve;
mod sign;
mod work;

/// On-the-fly image thumbnails for CloudFront.
#[derive(Debug, Parser)]
#[command(name = "edgethumb", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Render one thumbnail from a local file (also the benchmark entry point).
    Render(render::RenderArgs),
    /// Serve a folder (or S3 + SQS) as CloudFront + the edge + the worker would, with a page.
    Serve(serve::ServeArgs),
    /// Enqueue render jobs by hand (reprocess variants, pre-warm a prefix).
    Enqueue(enqueue::EnqueueArgs),
    /// Run the worker outside Lambda: consume render jobs from SQS or the local queue.
    Work(work::WorkArgs),
    /// Print signed variant URLs for the `signed` viewer guard (or the KeyValueStore import file).
    Sign(sign::SignArgs),
    /// Write (from the stack's outputs) or check the edge's edgethumb.json.
    EdgeConfig(edge_config::EdgeConfigArgs),
}

/// Parse the command line, run the subcommand, and exit non-zero with a one-line reason
/// on stderr if it fails.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Render(args) => render::run(args),
        Command::Serve(args) => serve::run(args),
        Command::Enqueue(args) => enqueue::run(args),
        Command::Work(args) => work::run(args),
        Command::Sign(args) => sign::run(args),
        Command::EdgeConfig(args) => edge_config::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // `{:#}` joins the context chain on one line.
            eprintln!("edgethumb: {err:#}");
            ExitCode::FAILURE
        }
    }
}
