//! Fitting a generated response under Lambda@Edge's 1 MB limit.
//!
//! CloudFront answers 502 when a trigger returns a generated response over the limit, so
//! we measure the serialised response before returning it and re-encode with cheaper
//! settings (same dimensions) until it fits, or report that it cannot fit and let the
//! worker's canonical copy (not bound by the limit) serve the next request.

use crate::pipeline::{Deadline, EncodeSpec, PipelineError, Prepared};
use crate::variant::OutputFormat;

/// Default for `avif_max_pixels`: outputs up to 2048×2048 are encoded as AVIF at the edge.
/// Measured (docs/benchmarks.md, "AVIF at the edge"): libaom at the `fast` settings costs
/// 2–2.7× libwebp's CPU up to 1 MP (22 ms against 8 ms at 400 px, 89 against 44 at 1024 px)
/// and 1.0–1.4× beyond 2 MP (227 ms against 164 at 2048×1365), with 1.5–2.3× its peak
/// memory (189 against 82 MB at 4096×2304). Over 4 MP one AVIF encode passes ~350 ms and a
/// large image is the one most likely to need the budget ladder's re-encodes, so the
/// provisional copy of those is WebP and the AVIF is left to the worker.
pub const DEFAULT_AVIF_MAX_PIXELS: u64 = 2048 * 2048;
/// Largest `avif_max_pixels` a config may set: the largest output the grammar allows.
pub const MAX_AVIF_MAX_PIXELS: u64 = 4096 * 4096;

/// The format the edge encodes for `requested`: the requested one, except that AVIF over
/// `avif_max_pixels` output pixels becomes WebP (AVIF encodes cost several times WebP's, and
/// the edge's copy is provisional: every browser that asks for AVIF takes WebP, and the
/// worker's AVIF replaces it).
pub fn edge_format(
    requested: OutputFormat,
    width: u32,
    height: u32,
    avif_max_pixels: u64,
) -> OutputFormat {
    let pixels = u64::from(width) * u64::from(height);
    if requested == OutputFormat::Avif && pixels > avif_max_pixels {
        OutputFormat::Webp
    } else {
        requested
    }
}

/// Qualities tried, in order, after the requested one failed to fit.
const QUALITY_LADDER: [u8; 5] = [70, 55, 40, 28, 15];

/// Length of `n` bytes once base64-encoded (with padding).
pub fn base64_len(n: usize) -> usize {
    n.div_ceil(3) * 4
}

/// The encodes to try for `requested`, cheapest last. The requested spec comes first;
/// PNG (lossless, often huge for photos) falls back to lossy WebP, which keeps alpha.
pub fn fallback_specs(requested: EncodeSpec) -> Vec<EncodeSpec> {
    let mut specs = vec![requested];
    let lossy_base = if requested.format.is_lossy() {
        requested
    } else {
        let webp = EncodeSpec {
            format: OutputFormat::Webp,
            quality: 90,
            progressive: false,
            ..requested
        };
        specs.push(webp);
        webp
    };
    specs.extend(
        QUALITY_LADDER
            .iter()
            .filter(|&&q| q < lossy_base.quality)
            .map(|&q| EncodeSpec {
                quality: q,
                ..lossy_base
            }),
    );
    specs
}

/// An encode that fits, and which spec produced it.
#[derive(Debug)]
pub struct Fitted {
    pub bytes: Vec<u8>,
    pub spec: EncodeSpec,
    /// How many encodes it took.
    pub attempts: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum BudgetError {
    #[error(
        "no encode fits the response budget of {budget} bytes after {attempts} attempts (smallest body {smallest} bytes)"
    )]
    DoesNotFit {
        budget: usize,
        attempts: usize,
        smallest: usize,
    },
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
}

/// Encode `prepared` with the first spec whose response fits: `overhead` is the serialised
/// response without its body, `budget` the limit for the whole response. Stops trying new
/// encodes once `deadline` has passed: before the first one that is
/// [`PipelineError::DeadlineExceeded`], after it [`BudgetError::DoesNotFit`].
pub fn fit(
    prepared: &Prepared,
    requested: EncodeSpec,
    overhead: usize,
    budget: usize,
    deadline: &Deadline,
) -> Result<Fitted, BudgetError> {
    let mut smallest = usize::MAX;
    let mut attempts = 0;
    let body_budget = budget.saturating_sub(overhead);
    let specs = fallback_specs(requested);
    let mut index = 0;
    while index < specs.len() {
        let spec = specs[index];
        if attempts == 0 {
            deadline.check("encode")?;
        } else if deadline.passed() {
            break;
        }
        attempts += 1;
        let bytes = prepared.encode(&spec)?;
        let encoded = base64_len(bytes.len());
        if encoded <= body_budget {
            return Ok(Fitted {
                bytes,
                spec,
                attempts,
            });
        }
        smallest = smallest.min(bytes.len());
        // Far over budget: a small quality step will not do, skip a rung.
        index += if encoded > body_budget * 3 { 2 } else { 1 };
    }
    Err(BudgetError::DoesNotFit {
        budget,
        attempts,
        smallest,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::Profile;

    fn spec(format: OutputFormat, quality: u8) -> EncodeSpec {
        EncodeSpec {
            format,
            quality,
            progressive: false,
            profile: Profile::Fast,
        }
    }

    #[test]
    fn base64_lengths() {
        assert_eq!(base64_len(0), 0);
        assert_eq!(base64_len(1), 4);
        assert_eq!(base64_len(3), 4);
        assert_eq!(base64_len(4), 8);
        assert_eq!(base64_len(750_000), 1_000_000);
    }

    #[test]
    fn lossy_ladder_only_lowers_quality_and_keeps_format() {
        let specs = fallback_specs(spec(OutputFormat::Jpeg, 80));
        assert_eq!(specs[0], spec(OutputFormat::Jpeg, 80));
        let qualities: Vec<u8> = specs.iter().map(|s| s.quality).collect();
        assert_eq!(qualities, vec![80, 70, 55, 40, 28, 15]);
        assert!(specs.iter().all(|s| s.format == OutputFormat::Jpeg));
        let low = fallback_specs(spec(OutputFormat::Webp, 30));
        assert_eq!(
            low.iter().map(|s| s.quality).collect::<Vec<_>>(),
            vec![30, 28, 15]
        );
    }

    #[test]
    fn avif_ladder_stays_avif() {
        let specs = fallback_specs(spec(OutputFormat::Avif, 80));
        assert!(specs.iter().all(|s| s.format == OutputFormat::Avif));
        assert_eq!(
            specs.iter().map(|s| s.quality).collect::<Vec<_>>(),
            vec![80, 70, 55, 40, 28, 15]
        );
    }

    #[test]
    fn big_avif_outputs_become_webp_at_the_edge() {
        let max = 1000 * 1000;
        assert_eq!(
            edge_format(OutputFormat::Avif, 1000, 1000, max),
            OutputFormat::Avif
        );
        assert_eq!(
            edge_format(OutputFormat::Avif, 1001, 1000, max),
            OutputFormat::Webp
        );
        assert_eq!(edge_format(OutputFormat::Avif, 1, 1, 0), OutputFormat::Webp);
        assert_eq!(
            edge_format(OutputFormat::Jpeg, 4000, 4000, 0),
            OutputFormat::Jpeg
        );
        assert_eq!(
            edge_format(OutputFormat::Png, 4000, 4000, 0),
            OutputFormat::Png
        );
    }

    #[test]
    fn png_falls_back_to_webp() {
        let specs = fallback_specs(spec(OutputFormat::Png, 80));
        assert_eq!(specs[0].format, OutputFormat::Png);
        assert!(specs[1..].iter().all(|s| s.format == OutputFormat::Webp));
        assert_eq!(specs[1].quality, 90);
    }
}
