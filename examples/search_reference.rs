//! Which reference the quality search should score against, measured: the full-decode
//! reference (`pipeline::prepare_reference`: a second, full-resolution decode) or the
//! worker's own pre-encode pixels (`pipeline::prepare`, shrink-on-load), over a folder.
//!
//! `cargo run --release --features worker --example search_reference -- DIR PARAMS...`
//!
//! e.g. `... /tmp/corpus 400w_400h.jpg 400w_400h.webp 1024w_1r.jpg`. One line per image and
//! op: the quality each reference chooses, the scores both references give that choice,
//! the ceiling (the pre-encode pixels scored against the full reference), and the CPU of
//! the search with each (reference preparation included). Used for docs/benchmarks.md,
//! "Quality search cost (issue 15)".
#![allow(clippy::unwrap_used, clippy::expect_used)] // a measuring tool: a failed unwrap ends the run

use edgethumb::Params;
use edgethumb::pipeline::{self, Limits};
use edgethumb::worker::tuning::{self, Scorer, TuningConfig};

#[path = "support/thread_cpu.rs"]
mod thread_cpu;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        anyhow::bail!("usage: search_reference DIR PARAMS...");
    }
    let limits = Limits::default();
    let config = TuningConfig::default();
    let mut paths: Vec<_> = std::fs::read_dir(&args[1])?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension()
                .is_some_and(|e| matches!(e.to_str(), Some("jpg" | "png" | "webp" | "gif")))
        })
        .collect();
    paths.sort();
    // The candidates: (name, how the pixels to encode are made, how the reference is made).
    // `own` = the pixels to encode are the reference (no second decode).
    let margins: Vec<u32> = std::env::var("MARGINS")
        .unwrap_or_else(|_| "2,4".into())
        .split(',')
        .map(|m| m.parse().expect("MARGINS: integers"))
        .collect();
    let mut tally = vec![[0u32; 3]; margins.len() * 2];
    for spec in &args[2..] {
        let params: Params = spec.parse()?;
        for path in &paths {
            let source = std::fs::read(path)?;
            let name = path.file_name().unwrap().to_string_lossy();
            // Today: shrink-on-load pixels, full-decode reference.
            let t = thread_cpu::now();
            let prepared = pipeline::prepare(&source, &params, &limits)?;
            let t_prepare = thread_cpu::now() - t;
            let t = thread_cpu::now();
            let full = pipeline::prepare_reference(&source, &params, &limits)?;
            let by_full = tuning::encode_best(&prepared, Some(&full), &params, &config)?;
            let t_today = thread_cpu::now() - t + t_prepare;
            let format = params.output_format(prepared.source_format);
            let full_scorer = Scorer::for_output(&full, format)?.expect("scoreable");
            let t = thread_cpu::now();
            let _one = prepared.encode(&pipeline::EncodeSpec {
                format,
                quality: by_full.quality,
                progressive: params.progressive,
                profile: pipeline::Profile::Best,
            })?;
            let t_one = thread_cpu::now() - t + t_prepare;
            let mut line = format!(
                "{name:32} {spec:16} today q{:3} {:5.2} {:6} B {:6.1} ms (one best {:5.1} ms, {:4.1}x)",
                by_full.quality,
                by_full.score.unwrap_or(f64::NAN),
                by_full.bytes.len(),
                t_today.as_secs_f64() * 1e3,
                t_one.as_secs_f64() * 1e3,
                t_today.as_secs_f64() / t_one.as_secs_f64(),
            );
            for (i, &margin) in margins.iter().enumerate() {
                // a) pixels at `margin`, scored against themselves.
                let t = thread_cpu::now();
                let own = pipeline::prepare_with_margin(&source, &params, &limits, margin)?;
                let by_own = tuning::encode_best(&own, Some(&own), &params, &config)?;
                let t_own = thread_cpu::now() - t;
                // One `best` encode of the same output, at the same margin.
                let t = thread_cpu::now();
                let again = pipeline::prepare_with_margin(&source, &params, &limits, margin)?;
                let _ = again.encode(&pipeline::EncodeSpec {
                    format,
                    quality: by_own.quality,
                    progressive: params.progressive,
                    profile: pipeline::Profile::Best,
                })?;
                let t_one_own = thread_cpu::now() - t;
                // b) today's pixels, reference decoded at `margin`.
                let t = thread_cpu::now();
                let reference = pipeline::prepare_with_margin(&source, &params, &limits, margin)?;
                let by_ref = tuning::encode_best(&prepared, Some(&reference), &params, &config)?;
                let t_ref = thread_cpu::now() - t + t_prepare;
                line += &format!(
                    " | m{margin} one best {:5.1} ms, own {:4.1}x",
                    t_one_own.as_secs_f64() * 1e3,
                    t_own.as_secs_f64() / t_one_own.as_secs_f64()
                );
                for (k, (label, choice, cpu)) in [("own", &by_own, t_own), ("ref", &by_ref, t_ref)]
                    .into_iter()
                    .enumerate()
                {
                    let steps =
                        (i32::from(by_full.quality) - i32::from(choice.quality)).unsigned_abs();
                    tally[i * 2 + k][steps.min(2) as usize] += 1;
                    line += &format!(
                        " | m{margin} {label} q{:3} {:5.2} (full {:5.2}) {:6} B {:6.1} ms",
                        choice.quality,
                        choice.score.unwrap_or(f64::NAN),
                        full_scorer.score_encoded(&choice.bytes)?,
                        choice.bytes.len(),
                        cpu.as_secs_f64() * 1e3,
                    );
                }
            }
            println!("{line}");
        }
    }
    for (i, &margin) in margins.iter().enumerate() {
        for (k, label) in ["own", "ref"].into_iter().enumerate() {
            let [same, one, more] = tally[i * 2 + k];
            println!(
                "m{margin} {label}: against today {same} same, {one} one step apart, {more} further"
            );
        }
    }
    Ok(())
}
