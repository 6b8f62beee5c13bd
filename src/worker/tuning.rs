//! Quality tuning: the smallest encode whose SSIMULACRA2 score reaches a target.
//!
//! A fixed `q` wastes bytes on easy images (smooth gradients, soft photos) and under-serves
//! hard ones (noise, fine text). The worker has time the edge does not, so when the URL did
//! not pin `q` it searches the encoder quality: every candidate is encoded with the `best`
//! profile, decoded again and scored against a high-quality reference (full decode +
//! Lanczos3 to the same size, [`crate::pipeline::prepare_reference`]), and the lowest
//! quality that reaches the target wins. The search is bounded (default 6 encodes) and
//! interpolates between the last passing and failing qualities, since the score is close
//! to monotonic and smooth in `q`.
//!
//! The metric is the `ssimulacra2` crate (rust-av, BSD-2-Clause licence; its notice is
//! kept in `docs/worker.md`). It needs images of at least 8x8 pixels: smaller outputs are
//! not scored and use the default quality (they weigh a few hundred bytes either way).

use ssimulacra2::{LinearRgb, compute_frame_ssimulacra2};

use crate::pipeline::{self, EncodeSpec, PipelineError, Prepared, Profile};
use crate::variant::{DEFAULT_QUALITY, OutputFormat, Params};

/// SSIMULACRA2's smallest supported side.
pub const MIN_SCORED_SIDE: u32 = 8;

/// Outputs with more pixels than this (e.g. 1920×1080 is tuned, 2048×2048 is not) are
/// encoded at the default quality without a search: one comparison holds about
/// [`SCORING_BYTES_PER_PIXEL`] per output pixel and takes ~1 µs a pixel, so a 4096×4096
/// variant would need 2.7 GB and ~15 s per candidate.
pub const MAX_SCORED_PIXELS: u64 = 2_500_000;
/// Peak memory of one SSIMULACRA2 comparison per output pixel: the crate's planes at six
/// scales (measured 145 bytes a pixel at 0.6 and 1.6 MP), rounded up.
pub const SCORING_BYTES_PER_PIXEL: u64 = 160;
/// The most a tuned render's scoring holds on top of the render itself (400 MB).
pub const MAX_SCORING_BYTES: u64 = MAX_SCORED_PIXELS * SCORING_BYTES_PER_PIXEL;

/// Default target: what sharp's q80 reaches on our photo corpus (see `docs/worker.md`).
pub const DEFAULT_TARGET_SCORE: f64 = 80.0;
/// Default bound on encodes per image.
pub const DEFAULT_MAX_ENCODES: u32 = 6;
/// Lowest quality the search tries: below it JPEG and WebP block artefacts dominate
/// whatever the metric says on average.
pub const MIN_QUALITY: u8 = 30;
/// Highest quality the search tries: above it files grow fast for no visible gain.
pub const MAX_QUALITY: u8 = 95;
/// When even the resize alone scores close to the target (a hard image, or a target set
/// very high), the target is lowered to this far under that ceiling, so the search does not
/// climb to the top quality chasing points that compression cannot give back.
pub const CEILING_MARGIN: f64 = 4.0;
/// When the target is out of reach, candidates within this many points of the best score
/// count as equally good, and the smallest of them is written.
pub const UNREACHABLE_SLACK: f64 = 1.0;
/// The ceiling is only measured once a candidate this good still fails the target: a
/// failure at a low quality is the normal first step of the search, not a sign of it.
pub const CEILING_CHECK_QUALITY: u8 = 85;

/// How to tune.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TuningConfig {
    pub target_score: f64,
    pub max_encodes: u32,
    /// First quality tried.
    pub start_quality: u8,
}

impl Default for TuningConfig {
    fn default() -> Self {
        TuningConfig {
            target_score: DEFAULT_TARGET_SCORE,
            max_encodes: DEFAULT_MAX_ENCODES,
            start_quality: 70,
        }
    }
}

/// The chosen encode.
#[derive(Debug, Clone)]
pub struct Choice {
    pub bytes: Vec<u8>,
    pub format: OutputFormat,
    pub quality: u8,
    /// SSIMULACRA2 of `bytes` against the reference, when it was measured.
    pub score: Option<f64>,
    /// Encodes spent (1 when not tuned).
    pub encodes: u32,
    /// Why this quality: `tuned`, `url` (the URL set `q`), `lossless`, `too-small`,
    /// `too-large` (over [`MAX_SCORED_PIXELS`]), `untuned` (no reference), `unreachable`.
    pub method: &'static str,
}

#[derive(Debug, thiserror::Error)]
pub enum TuneError {
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    #[error("SSIMULACRA2 failed: {0}")]
    Metric(String),
}

/// A reference image in linear light, flattened on the backgrounds the output may be seen on.
pub struct Scorer {
    width: u32,
    height: u32,
    /// One per background: white, and black too when the image has alpha (the lower score
    /// counts, so a bad alpha edge cannot hide on a matching background).
    references: Vec<(u8, LinearRgb)>,
}

impl Scorer {
    /// `None` when the image is too small for SSIMULACRA2.
    pub fn new(reference: &Prepared) -> Result<Option<Scorer>, TuneError> {
        if reference.width < MIN_SCORED_SIDE || reference.height < MIN_SCORED_SIDE {
            return Ok(None);
        }
        let backgrounds: &[u8] = if reference.has_alpha() {
            &[255, 0]
        } else {
            &[255]
        };
        let mut references = Vec::with_capacity(backgrounds.len());
        for &bg in backgrounds {
            references.push((bg, to_linear(reference, bg)?));
        }
        Ok(Some(Scorer {
            width: reference.width,
            height: reference.height,
            references,
        }))
    }

    /// Score decoded pixels (same size as the reference).
    pub fn score(&self, distorted: &Prepared) -> Result<f64, TuneError> {
        if distorted.width != self.width || distorted.height != self.height {
            return Err(TuneError::Metric(format!(
                "size mismatch: reference {}x{}, candidate {}x{}",
                self.width, self.height, distorted.width, distorted.height
            )));
        }
        let mut worst = f64::INFINITY;
        for (bg, reference) in &self.references {
            let candidate = to_linear(distorted, *bg)?;
            let score = compute_frame_ssimulacra2(reference.clone(), candidate)
                .map_err(|e| TuneError::Metric(e.to_string()))?;
            worst = worst.min(score);
        }
        Ok(worst)
    }

    /// Decode `encoded` with our own pipeline (no resize) and score it.
    pub fn score_encoded(&self, encoded: &[u8]) -> Result<f64, TuneError> {
        let decoded = decode(encoded)?;
        self.score(&decoded)
    }
}

/// Decode one of our own outputs back to pixels: the pipeline at 100 %, which for a file
/// without orientation or ICC is a plain decode.
fn decode(encoded: &[u8]) -> Result<Prepared, PipelineError> {
    pipeline::decode_output(encoded)
}

/// 8-bit sRGB to linear light, through a table (256 entries, exact to f32).
fn srgb_to_linear_table() -> [f32; 256] {
    let mut table = [0f32; 256];
    for (i, v) in table.iter_mut().enumerate() {
        let c = i as f32 / 255.0;
        *v = if c <= 0.040_45 {
            c / 12.92
        } else {
            ((c + 0.055) / 1.055).powf(2.4)
        };
    }
    table
}

/// Interleaved 8-bit pixels (gray, gray+alpha, RGB or RGBA, told apart by the buffer
/// length) flattened on a gray level `bg` and converted to linear RGB.
fn to_linear(image: &Prepared, bg: u8) -> Result<LinearRgb, TuneError> {
    let width = image.width as usize;
    let height = image.height as usize;
    let pixels = image.pixels();
    let count = width * height;
    if count == 0 || !pixels.len().is_multiple_of(count) {
        return Err(TuneError::Metric(format!(
            "{} bytes of pixels for {}x{}",
            pixels.len(),
            width,
            height
        )));
    }
    let channels = pixels.len() / count;
    let table = srgb_to_linear_table();
    let flatten = |v: u8, a: u8| -> u8 {
        let (v, a, bg) = (u32::from(v), u32::from(a), u32::from(bg));
        ((v * a + bg * (255 - a) + 127) / 255) as u8
    };
    let mut data = Vec::with_capacity(count);
    match channels {
        1 => data.extend(pixels.iter().map(|&g| [table[g as usize]; 3])),
        2 => data.extend(
            pixels
                .chunks_exact(2)
                .map(|p| [table[flatten(p[0], p[1]) as usize]; 3]),
        ),
        3 => data.extend(pixels.chunks_exact(3).map(|p| {
            [
                table[p[0] as usize],
                table[p[1] as usize],
                table[p[2] as usize],
            ]
        })),
        4 => data.extend(pixels.chunks_exact(4).map(|p| {
            [
                table[flatten(p[0], p[3]) as usize],
                table[flatten(p[1], p[3]) as usize],
                table[flatten(p[2], p[3]) as usize],
            ]
        })),
        n => {
            return Err(TuneError::Metric(format!("unexpected {n} bytes per pixel")));
        }
    }
    LinearRgb::new(data, width, height).map_err(|e| TuneError::Metric(format!("{e:?}")))
}

/// Whether the search would run for `prepared` (so a reference is worth making): a lossy
/// format, no `q` in the URL, and an output small enough to score.
pub fn wants_reference(prepared: &Prepared, params: &Params) -> bool {
    params.output_format(prepared.source_format).is_lossy()
        && params.quality.is_none()
        && scoreable_size(prepared)
}

fn scoreable_size(prepared: &Prepared) -> bool {
    u64::from(prepared.width) * u64::from(prepared.height) <= MAX_SCORED_PIXELS
}

/// Encode `prepared` for `params` with the `best` profile, tuning the quality when the URL
/// left it open and the format is lossy.
///
/// `reference` is only used when tuning; pass `None` to skip the search (then the default
/// quality is used).
pub fn encode_best(
    prepared: &Prepared,
    reference: Option<&Prepared>,
    params: &Params,
    config: &TuningConfig,
) -> Result<Choice, TuneError> {
    let format = params.output_format(prepared.source_format);
    let spec = |quality: u8| EncodeSpec {
        format,
        quality,
        progressive: params.progressive,
        profile: Profile::Best,
    };
    let fixed = |quality: u8, method: &'static str| -> Result<Choice, TuneError> {
        Ok(Choice {
            bytes: prepared.encode(&spec(quality))?,
            format,
            quality,
            score: None,
            encodes: 1,
            method,
        })
    };
    if !format.is_lossy() {
        return fixed(DEFAULT_QUALITY, "lossless");
    }
    if let Some(q) = params.quality {
        return fixed(q, "url");
    }
    if !scoreable_size(prepared) {
        return fixed(DEFAULT_QUALITY, "too-large");
    }
    let Some(reference) = reference else {
        return fixed(DEFAULT_QUALITY, "untuned");
    };
    let Some(scorer) = Scorer::new(reference)? else {
        return fixed(DEFAULT_QUALITY, "too-small");
    };
    search(&scorer, prepared, format, config, |q| {
        Ok(prepared.encode(&spec(q))?)
    })
}

/// One measured candidate.
#[derive(Debug, Clone)]
struct Trial {
    quality: u8,
    score: f64,
    bytes: Vec<u8>,
}

/// The bounded search, separated from the encoder so it can be tested with a synthetic
/// score curve.
fn search(
    scorer: &Scorer,
    prepared: &Prepared,
    format: OutputFormat,
    config: &TuningConfig,
    mut encode: impl FnMut(u8) -> Result<Vec<u8>, TuneError>,
) -> Result<Choice, TuneError> {
    let mut measure = |q: u8| -> Result<Trial, TuneError> {
        let bytes = encode(q)?;
        let score = scorer.score_encoded(&bytes)?;
        Ok(Trial {
            quality: q,
            score,
            bytes,
        })
    };
    // The ceiling (resize only, no compression) is measured lazily: only an image that
    // fails the target at the first quality can need it.
    let mut ceiling = || scorer.score(prepared);
    let choice = bounded_search(config, &mut measure, &mut ceiling)?;
    let (trial, encodes, method) = choice;
    Ok(Choice {
        bytes: trial.bytes,
        format,
        quality: trial.quality,
        score: Some(trial.score),
        encodes,
        method,
    })
}

/// Find the lowest quality in `MIN_QUALITY..=MAX_QUALITY` whose score reaches the target,
/// with at most `max_encodes` measurements.
fn bounded_search(
    config: &TuningConfig,
    measure: &mut dyn FnMut(u8) -> Result<Trial, TuneError>,
    ceiling: &mut dyn FnMut() -> Result<f64, TuneError>,
) -> Result<(Trial, u32, &'static str), TuneError> {
    let max_encodes = config.max_encodes.max(1);
    let mut target = config.target_score;
    let mut ceiling_checked = false;
    let mut trials: Vec<Trial> = Vec::new();
    let mut q = config.start_quality.clamp(MIN_QUALITY, MAX_QUALITY);
    loop {
        let trial = measure(q)?;
        if trial.score < target && !ceiling_checked && trial.quality >= CEILING_CHECK_QUALITY {
            // A high quality still fails: is the target reachable at all? If the resize
            // alone scores near it, aim a margin under that ceiling instead.
            ceiling_checked = true;
            let ceiling = ceiling()?;
            target = target.min(ceiling - CEILING_MARGIN);
        }
        trials.push(trial);
        // Classified afresh each round, since the target may just have been lowered.
        let pass = trials
            .iter()
            .filter(|t| t.score >= target)
            .min_by_key(|t| t.quality);
        let fail = trials
            .iter()
            .filter(|t| t.score < target)
            .max_by_key(|t| t.quality);
        let lo = fail.map_or(MIN_QUALITY - 1, |f| f.quality);
        let hi = pass.map_or(MAX_QUALITY + 1, |p| p.quality);
        if hi <= lo + 1 || trials.len() as u32 >= max_encodes {
            break;
        }
        q = next_quality(target, fail, pass);
        if q <= lo || q >= hi || trials.iter().any(|t| t.quality == q) {
            break;
        }
    }
    let encodes = trials.len() as u32;
    let pass_index = trials
        .iter()
        .enumerate()
        .filter(|(_, t)| t.score >= target)
        .min_by_key(|(_, t)| t.quality)
        .map(|(i, _)| i);
    if let Some(i) = pass_index {
        return Ok((trials.swap_remove(i), encodes, "tuned"));
    }
    // Nothing reached the target within the bound (e.g. chroma subsampling caps a small
    // JPEG): the lowest quality within a point of the best score, since the last points
    // near the cap cost many bytes for no visible gain.
    let best_score = trials
        .iter()
        .map(|t| t.score)
        .fold(f64::NEG_INFINITY, f64::max);
    let index = trials
        .iter()
        .enumerate()
        .filter(|(_, t)| t.score >= best_score - UNREACHABLE_SLACK)
        .min_by_key(|(_, t)| t.quality)
        .map(|(i, _)| i)
        .ok_or_else(|| TuneError::Metric("no candidate measured".into()))?;
    Ok((trials.swap_remove(index), encodes, "unreachable"))
}

/// Where to measure next: interpolate between the bracketing trials, or step outward from
/// the one side known so far. Always strictly inside the open bracket.
fn next_quality(target: f64, fail: Option<&Trial>, pass: Option<&Trial>) -> u8 {
    /// Step when only one side of the bracket is known: about one bisection step of the
    /// range, large enough to bracket typical images in two encodes.
    const STEP: i32 = 12;
    let lo = fail.map_or(i32::from(MIN_QUALITY) - 1, |f| i32::from(f.quality));
    let hi = pass.map_or(i32::from(MAX_QUALITY) + 1, |p| i32::from(p.quality));
    let guess = match (fail, pass) {
        (Some(f), Some(p)) => {
            let (qf, qp) = (f64::from(f.quality), f64::from(p.quality));
            let slope = (p.score - f.score) / (qp - qf);
            let interpolated = if slope > 1e-6 {
                qf + (target - f.score) / slope
            } else {
                (qf + qp) / 2.0
            };
            // Round up (a pass is what we need) and keep away from the bracket ends so the
            // bracket always shrinks; mix with the midpoint to avoid the slow one-sided
            // convergence of pure regula falsi.
            let mid = (qf + qp) / 2.0;
            (0.5 * interpolated + 0.5 * mid).ceil() as i32
        }
        (Some(f), None) => i32::from(f.quality) + STEP,
        (None, Some(p)) => i32::from(p.quality) - STEP,
        (None, None) => i32::from(DEFAULT_QUALITY),
    };
    let clamped = guess.clamp(lo + 1, (hi - 1).max(lo + 1));
    clamped.clamp(i32::from(MIN_QUALITY), i32::from(MAX_QUALITY)) as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(target: f64, max_encodes: u32) -> TuningConfig {
        TuningConfig {
            target_score: target,
            max_encodes,
            start_quality: 70,
        }
    }

    /// A monotone synthetic curve: score = 100 - k * (100 - q).
    fn run(
        cfg: &TuningConfig,
        curve: impl Fn(u8) -> f64,
        ceiling: f64,
    ) -> (u8, f64, u32, &'static str, Vec<u8>) {
        let mut seen = Vec::new();
        let mut measure = |q: u8| -> Result<Trial, TuneError> {
            seen.push(q);
            Ok(Trial {
                quality: q,
                score: curve(q),
                bytes: vec![0; q as usize],
            })
        };
        let mut ceil = || Ok(ceiling);
        let (t, n, m) = bounded_search(cfg, &mut measure, &mut ceil).unwrap();
        (t.quality, t.score, n, m, seen)
    }

    #[test]
    fn finds_the_lowest_passing_quality_within_the_bound() {
        for k in [0.3, 0.5, 0.8, 1.2, 2.0] {
            for target in [60.0, 75.0, 80.0, 85.0, 90.0] {
                let curve = |q: u8| 100.0 - k * (100.0 - f64::from(q));
                let cfg = config(target, 6);
                let (q, score, n, method, seen) = run(&cfg, curve, 99.0);
                assert!(n <= 6, "{seen:?}");
                let exact = (100.0 - (100.0 - target) / k).ceil();
                if exact > f64::from(MAX_QUALITY) {
                    assert_eq!(method, "unreachable");
                    continue;
                }
                let exact = exact.max(f64::from(MIN_QUALITY));
                assert_eq!(method, "tuned", "k={k} target={target} {seen:?}");
                assert!(score >= target);
                // Within 2 quality steps of the true minimum.
                assert!(
                    f64::from(q) - exact <= 2.0,
                    "k={k} target={target}: got {q}, best {exact}, tried {seen:?}"
                );
            }
        }
    }

    #[test]
    fn never_exceeds_the_encode_bound() {
        let curve = |q: u8| f64::from(q);
        for max in 1..=8 {
            let (_, _, n, _, seen) = run(&config(77.5, max), curve, 100.0);
            assert!(n <= max && seen.len() as u32 == n, "{max}: {seen:?}");
        }
    }

    #[test]
    fn non_monotone_curves_still_return_a_passing_trial() {
        // A bumpy curve: passes above ~60 but with dips.
        let curve = |q: u8| f64::from(q) + if q.is_multiple_of(3) { -4.0 } else { 3.0 };
        let (_, score, _, method, _) = run(&config(65.0, 6), curve, 100.0);
        assert_eq!(method, "tuned");
        assert!(score >= 65.0);
    }

    #[test]
    fn out_of_reach_takes_the_smallest_candidate_near_the_cap() {
        // Saturates at ~72 from q80 up (like a small 4:2:0 JPEG); the ceiling is high.
        let curve = |q: u8| 72.0 - (f64::from(80u8.saturating_sub(q)) * 0.5) + f64::from(q) * 0.001;
        let (q, score, _, method, seen) = run(&config(80.0, 6), curve, 99.0);
        assert_eq!(method, "unreachable", "{seen:?}");
        assert!(score > 71.0, "{score}");
        assert!(q < 95, "took q{q} from {seen:?}");
    }

    #[test]
    fn an_unreachable_target_is_lowered_under_the_ceiling() {
        // The resize alone scores 84 and compression costs 10 more even at q=95: aim at
        // 80, which q=90 reaches on this curve.
        let curve = |q: u8| f64::from(q) - 10.0;
        let (q, score, _, method, _) = run(&config(90.0, 6), curve, 84.0);
        assert_eq!(method, "tuned");
        assert!((80.0..=82.0).contains(&score), "{q} {score}");
        assert!((90..=92).contains(&q), "{q}");
    }
}
