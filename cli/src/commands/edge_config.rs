//! `edgethumb edge-config`: write and check `edgethumb.json` with the edge's own struct
//! (`edgethumb::edge::EdgeConfig`), so its keys and bounds are stated once, in Rust.
//!
//! `generate` is what `scripts/deploy.sh` runs on the stack's outputs; `check` is what
//! `scripts/check_deploy.py` runs on a file or on the copy baked into `edge.zip`.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, Subcommand};

use edgethumb::edge::EdgeConfig;

#[derive(Debug, Args)]
pub struct EdgeConfigArgs {
    #[command(subcommand)]
    pub command: EdgeConfigCommand,
}

#[derive(Debug, Subcommand)]
pub enum EdgeConfigCommand {
    /// Write edgethumb.json from the stack's outputs and the settings file.
    Generate {
        /// Stack outputs as JSON (`aws cloudformation describe-stacks`, `sam list
        /// stack-outputs --output json`, or `{"QueueUrl": ...}`); `-` for stdin.
        #[arg(long)]
        outputs: PathBuf,
        /// Tuning a person may change (any key but the stack's and endpoint_url). A missing
        /// file means none.
        #[arg(long, default_value = "deploy/edge-settings.json")]
        settings: PathBuf,
        /// Where to write edgethumb.json (`-` for stdout).
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Check an edgethumb.json as the edge's cold start will (`-` for stdin); exit 1 with
    /// the reason if the edge would refuse it.
    Check {
        file: PathBuf,
        /// The name to give the file in the message (for stdin).
        #[arg(long)]
        name: Option<String>,
    },
}

fn read(path: &Path) -> anyhow::Result<String> {
    if path == Path::new("-") {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("reading stdin")?;
        Ok(text)
    } else {
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
    }
}

pub fn run(args: EdgeConfigArgs) -> anyhow::Result<()> {
    match args.command {
        EdgeConfigCommand::Generate {
            outputs,
            settings,
            output,
        } => {
            let outputs_text = read(&outputs)?;
            let outputs_json: serde_json::Value = serde_json::from_str(&outputs_text)
                .with_context(|| format!("stack outputs {} are not JSON", outputs.display()))?;
            let settings_json = if settings.exists() {
                serde_json::from_str(&read(&settings)?)
                    .with_context(|| format!("{} is not JSON", settings.display()))?
            } else {
                serde_json::Value::Null
            };
            let config = EdgeConfig::for_stack(
                &outputs_json,
                &settings_json,
                &settings.display().to_string(),
            )?;
            let text = config.to_json_pretty();
            if output == Path::new("-") {
                print!("{text}");
            } else {
                std::fs::write(&output, text)
                    .with_context(|| format!("writing {}", output.display()))?;
                eprintln!("edgethumb edge-config: wrote {}", output.display());
            }
            Ok(())
        }
        EdgeConfigCommand::Check { file, name } => {
            let text = read(&file)?;
            let shown = name.unwrap_or_else(|| file.display().to_string());
            EdgeConfig::from_json(&text, &shown)?;
            eprintln!("edgethumb edge-config: {shown} is valid");
            Ok(())
        }
    }
}
