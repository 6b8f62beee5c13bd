//! The image pipeline: one step per file, run in a fixed order over one image state.
//!
//! load (with shrink-on-load) → orient → colour → resize → encode.
//!
//! PLACEHOLDER: the public API below is fixed; the implementation is being filled in.

pub mod jpeg_scans;

use crate::variant::{OutputFormat, Params};

/// Encoder settings profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Profile {
    /// Edge: baseline-speed encoder settings.
    #[default]
    Fast,
    /// Worker: slower, smaller (trellis, optimised Huffman, WebP method 6, optimised PNG).
    Best,
}

/// Source limits, checked from the header before decoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_pixels: u64,
    pub max_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_pixels: 100_000_000,
            max_bytes: 50 * 1024 * 1024,
        }
    }
}

/// Why a render failed. The edge maps these to HTTP statuses (413, 415, 422, 500).
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("source is {actual} bytes, over the limit of {limit}")]
    TooManyBytes { actual: u64, limit: u64 },
    #[error("source is {width}x{height} ({pixels} pixels), over the limit of {limit}")]
    TooManyPixels {
        width: u32,
        height: u32,
        pixels: u64,
        limit: u64,
    },
    #[error("unsupported source format: {0}")]
    UnsupportedFormat(String),
    #[error("corrupt or undecodable {format} source: {reason}")]
    Corrupt {
        format: &'static str,
        reason: String,
    },
    #[error("encoding {format} failed: {reason}")]
    Encode {
        format: OutputFormat,
        reason: String,
    },
}

/// A decoded, oriented, colour-converted and resized image, ready to encode (possibly
/// several times, e.g. for quality tuning or to fit a response budget).
#[derive(Debug, Clone)]
pub struct Prepared {
    pub width: u32,
    pub height: u32,
    /// Format of the source, used when the params name no output format.
    pub source_format: OutputFormat,
}

/// Settings for one encode of a [`Prepared`] image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EncodeSpec {
    pub format: OutputFormat,
    pub quality: u8,
    pub progressive: bool,
    pub profile: Profile,
}

/// An encoded thumbnail.
#[derive(Debug, Clone)]
pub struct Rendered {
    pub bytes: Vec<u8>,
    pub format: OutputFormat,
    pub width: u32,
    pub height: u32,
    pub quality: u8,
}

/// Decode, orient, convert to sRGB and resize `source` as `params` say.
pub fn prepare(source: &[u8], params: &Params, limits: &Limits) -> Result<Prepared, PipelineError> {
    let _ = (source, params, limits);
    Err(PipelineError::UnsupportedFormat(
        "pipeline not built yet".into(),
    ))
}

impl Prepared {
    pub fn encode(&self, spec: &EncodeSpec) -> Result<Vec<u8>, PipelineError> {
        Err(PipelineError::Encode {
            format: spec.format,
            reason: "pipeline not built yet".into(),
        })
    }
}

/// Convenience: prepare and encode once with the URL's quality (or the default).
pub fn render(
    source: &[u8],
    params: &Params,
    limits: &Limits,
    profile: Profile,
) -> Result<Rendered, PipelineError> {
    let prepared = prepare(source, params, limits)?;
    let format = params.output_format(prepared.source_format);
    let spec = EncodeSpec {
        format,
        quality: params.quality.unwrap_or(crate::variant::DEFAULT_QUALITY),
        progressive: params.progressive,
        profile,
    };
    let bytes = prepared.encode(&spec)?;
    Ok(Rendered {
        bytes,
        format,
        width: prepared.width,
        height: prepared.height,
        quality: spec.quality,
    })
}
