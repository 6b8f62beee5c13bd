//! `edgethumb sign URL... --settings FILE [--key-id ID]`: signed variant URLs for the
//! `signed` viewer guard, and `--kvs-import`: the KeyValueStore import file of the settings.
//!
//! The settings file is the one `serve --viewer-settings` reads and the KeyValueStore holds
//! (`ViewerGuard::from_json`), so what `sign` prints is accepted by both the CloudFront
//! Function and `serve`. Each URL comes out canonical (`cat.jpg@0200w.AUTO` is signed as
//! `cat.jpg@200w.auto`), any query string replaced by `?k=<key id>&s=<signature>`.

use std::io::{BufRead, Write};
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Args;

use super::serve::viewer_guard;
use edgethumb::viewer::SignError;

#[derive(Debug, Args)]
pub struct SignArgs {
    /// Variant URLs (`https://host/photos/cat.jpg@200w.auto`) or paths
    /// (`/photos/cat.jpg@200w.auto`); `-` reads them from stdin, one per line (blank lines
    /// and `#` comments skipped).
    #[arg(required_unless_present = "kvs_import", conflicts_with = "kvs_import")]
    pub urls: Vec<String>,
    /// The viewer settings (JSON object of strings: `guard`, `key:<id>`, `preset:<name>`,
    /// `allow:<params>`; docs/edge.md), as `serve --viewer-settings` reads them.
    #[arg(long, value_name = "FILE")]
    pub settings: PathBuf,
    /// The signing key to use; may be left out when the settings hold exactly one.
    #[arg(long, value_name = "ID")]
    pub key_id: Option<String>,
    /// Print the settings as a CloudFront KeyValueStore import file
    /// (`{"data":[{"key":…,"value":…}]}`) instead of signing anything.
    #[arg(long)]
    pub kvs_import: bool,
}

pub fn run(args: SignArgs) -> anyhow::Result<()> {
    let guard = viewer_guard(Some(&args.settings))?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    if args.kvs_import {
        writeln!(out, "{}", guard.to_kvs_import_json()).context("writing stdout")?;
        return Ok(());
    }
    let mut urls = Vec::new();
    for url in &args.urls {
        if url == "-" {
            for line in std::io::stdin().lock().lines() {
                let line = line.context("reading stdin")?;
                let line = line.trim();
                if !line.is_empty() && !line.starts_with('#') {
                    urls.push(line.to_string());
                }
            }
        } else {
            urls.push(url.clone());
        }
    }
    let mut failed = 0usize;
    for url in &urls {
        match guard.sign_url(url, args.key_id.as_deref()) {
            Ok(signed) => writeln!(out, "{signed}").context("writing stdout")?,
            Err(error @ SignError::Refused(_)) => {
                failed += 1;
                eprintln!("edgethumb sign: {url}: {error}");
            }
            // A settings problem (no keys, unknown or ambiguous key id) fails every URL alike.
            Err(error) => bail!("{error}"),
        }
    }
    out.flush().context("writing stdout")?;
    if failed > 0 {
        bail!("{failed} of {} URL(s) could not be signed", urls.len());
    }
    Ok(())
}
