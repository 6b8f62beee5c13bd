//! Score and size against quality for one image, and what the worker's tuner picks.
//!
//! `cargo run --release --example worker_tune_curve -- IMAGE PARAMS [TARGET [STEP [qindex]]]`
//! (STEP: quality step of the printed curve, default 5; `qindex`, for AVIF: the curve over
//! libaom's base qindex instead, every STEP-th from q95's to q30's)
//! (used to choose the tuner's start, step and default target; see docs/worker.md).
#![allow(clippy::unwrap_used, clippy::expect_used)] // a measuring tool: a failed unwrap ends the run

use std::time::Instant;

use edgethumb::Params;
use edgethumb::pipeline::{self, EncodeSpec, Limits, Profile, encode_avif};
use edgethumb::worker::tuning::{self, Scorer, TuningConfig};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let (Some(path), Some(spec)) = (args.get(1), args.get(2)) else {
        anyhow::bail!("usage: worker_tune_curve IMAGE PARAMS [TARGET [STEP]]");
    };
    let target: f64 = args
        .get(3)
        .map_or(Ok(tuning::DEFAULT_TARGET_SCORE), |t| t.parse())?;
    let step: usize = args.get(4).map_or(Ok(5), |s| s.parse())?;
    let source = std::fs::read(path)?;
    let params: Params = spec.parse()?;
    let limits = Limits::default();
    let by_qindex = args.get(5).is_some_and(|a| a == "qindex");
    // As the worker does: decoded at its margin, and those pixels are the reference.
    let t = Instant::now();
    let prepared = pipeline::prepare_for(&source, &params, &limits, Profile::Best)?;
    let t_prepare = t.elapsed();
    let format = params.output_format(prepared.source_format);
    let scorer =
        Scorer::for_output(&prepared, format)?.ok_or_else(|| anyhow::anyhow!("too small"))?;
    println!(
        "{path} {spec}: {}x{} prepare {:?} ceiling {:.2}",
        prepared.width,
        prepared.height,
        t_prepare,
        scorer.score(&prepared)?
    );
    if by_qindex {
        let settings = encode_avif::AvifSettings::for_profile(Profile::Best);
        let (top, bottom) = (
            encode_avif::qindex_for(95, settings.quality_map),
            encode_avif::qindex_for(30, settings.quality_map),
        );
        for qindex in (top..=bottom).step_by(step.max(1)) {
            let bytes = prepared.encode_avif_at_qindex(qindex, &settings)?;
            let score = scorer.score_encoded(&bytes)?;
            println!("qindex {qindex:3} {:8} B  s2 {score:6.2}", bytes.len());
        }
        return Ok(());
    }
    for q in (30..=95).step_by(step.max(1)) {
        let t = Instant::now();
        let bytes = prepared.encode(&EncodeSpec {
            format,
            quality: q,
            progressive: params.progressive,
            profile: Profile::Best,
        })?;
        let t_encode = t.elapsed();
        let t = Instant::now();
        let score = scorer.score_encoded(&bytes)?;
        println!(
            "q{q:3} {:8} B  s2 {score:6.2}  encode {:?} score {:?}",
            bytes.len(),
            t_encode,
            t.elapsed()
        );
    }
    let t = Instant::now();
    let config = TuningConfig {
        target_score: target,
        ..TuningConfig::default()
    };
    // The same pixels, not a copy: `encode_best` recognises the worker's own pixels by
    // address and takes their ceiling as 100, as the worker does.
    let choice = tuning::encode_best(&prepared, Some(&prepared), &params, &config)?;
    println!(
        "tuned (target {target}): q{} {} B s2 {:.2} {} encodes, {} in {:?}",
        choice.quality,
        choice.bytes.len(),
        choice.score.unwrap_or(f64::NAN),
        choice.encodes,
        choice.method,
        t.elapsed()
    );
    Ok(())
}
