//! The image pipeline: one step per file, run in a fixed order over one image state.
//!
//! load (magic-byte sniffing, header limits, shrink-on-load) → resize (Lanczos3, crop;
//! 16-bit narrowed first; planned in displayed coordinates, sampled in stored ones) →
//! orient (EXIF) → colour (ICC/CMYK → 8-bit sRGB) → encode (mozjpeg, libwebp, png/oxipng).
//! JPEG and 8-bit PNG rows are resized as they are decoded (`resize_rows`), so for those
//! the load step hands over the resized image.
//!
//! Everything is synchronous and CPU-bound; async callers use `spawn_blocking`. See
//! docs/pipeline.md for the design and docs/benchmarks.md for the measurements.

pub mod jpeg_scans;

mod colour;
mod encode;
mod encode_jpeg;
mod encode_png;
mod encode_webp;
mod exif;
mod first_frame;
mod image;
mod libjpeg;
mod load;
mod load_gif;
mod load_jpeg;
mod load_png;
mod load_webp;
mod orient;
mod resize;
mod resize_rows;

use std::time::{Duration, Instant};

pub use load::{SHRINK_MARGIN, SourceFormat};

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
    /// Where the time went (for `edgethumb render --json` and logs).
    pub timings: StageTimings,
    /// 8-bit sRGB, RGB or RGBA with straight (not premultiplied) alpha, rows packed.
    pixels: Vec<u8>,
    has_alpha: bool,
    /// The source was grayscale: encoders may write one channel (smaller, same pixels).
    gray: bool,
}

/// Wall time of each preparation step.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StageTimings {
    /// Sniffing, header checks and (reduced) decoding; for JPEG and 8-bit PNG also the
    /// resize, which runs on the rows as they are decoded.
    pub load: Duration,
    pub orient: Duration,
    pub colour: Duration,
    pub resize: Duration,
}

impl Prepared {
    /// The pixels: `width * height` pixels of RGB8, or RGBA8 when [`Self::has_alpha`].
    pub fn pixels(&self) -> &[u8] {
        &self.pixels
    }

    pub fn has_alpha(&self) -> bool {
        self.has_alpha
    }

    /// Whether the source was grayscale (the pixels then have R = G = B).
    pub fn is_gray(&self) -> bool {
        self.gray
    }

    /// The format an encode for `params` produces: the URL's, else the source's.
    pub fn output_format(&self, params: &Params) -> OutputFormat {
        params.output_format(self.source_format)
    }

    /// The encode settings `params` ask for with `profile` (quality defaults to 80).
    pub fn encode_spec(&self, params: &Params, profile: Profile) -> EncodeSpec {
        EncodeSpec {
            format: self.output_format(params),
            quality: params.quality.unwrap_or(crate::variant::DEFAULT_QUALITY),
            progressive: params.progressive,
            profile,
        }
    }
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
///
/// Shrinks on load (JPEG DCT scaling, WebP scaled decoding) down to no less than
/// [`SHRINK_MARGIN`]× the target, so big sources never exist at full size in memory.
pub fn prepare(source: &[u8], params: &Params, limits: &Limits) -> Result<Prepared, PipelineError> {
    prepare_with(source, params, limits, load::Decode::Shrink)
}

/// Like [`prepare`], but from a full-resolution decode (no shrink-on-load): the
/// high-quality reference, of exactly the same size, that the worker's quality tuning
/// compares candidate encodes against.
pub fn prepare_reference(
    source: &[u8],
    params: &Params,
    limits: &Limits,
) -> Result<Prepared, PipelineError> {
    prepare_with(source, params, limits, load::Decode::Full)
}

fn prepare_with(
    source: &[u8],
    params: &Params,
    limits: &Limits,
    mode: load::Decode,
) -> Result<Prepared, PipelineError> {
    let mut timings = StageTimings::default();
    let mut clock = Instant::now();
    let mut lap = |slot: &mut Duration| {
        let now = Instant::now();
        *slot = now - clock;
        clock = now;
    };
    let (format, mut image, stage) = load::load(source, params, limits, mode)?;
    lap(&mut timings.load);
    if stage == load::Stage::Decoded {
        colour::narrow_16_to_8(&mut image);
        lap(&mut timings.colour);
        // Planned on the displayed size; the resize samples the stored buffer, so the
        // orient step after it turns thumbnail pixels rather than the decode.
        let (full_w, full_h) = image.full_size;
        let plan = load::resize_plan(full_w, full_h, image.orientation, params);
        resize::resize(&mut image, &plan)?;
        lap(&mut timings.resize);
    }
    orient::orient(&mut image);
    lap(&mut timings.orient);
    // ICC conversion runs on the thumbnail, not the decode: an 8-bit CMYK transform costs
    // ~35 ns a pixel, 300 ms on an 8 MP photo but 25 ms at 1024 px. libvips' thumbnail
    // does the same (shrink in device space, then import/export); SSIMULACRA2 against a
    // convert-then-resize reference shows no loss (docs/benchmarks.md).
    colour::to_srgb8(&mut image);
    let colour_after = Instant::now() - clock;
    timings.colour += colour_after;
    let gray = image.layout.is_gray();
    let has_alpha = image.layout.has_alpha();
    let pixels = if gray {
        expand_gray(&image.data, has_alpha)
    } else {
        image.data
    };
    Ok(Prepared {
        width: image.width,
        height: image.height,
        source_format: format.default_output(),
        timings,
        pixels,
        has_alpha,
        gray,
    })
}

/// Gray(+alpha) → RGB(A) for the public pixel contract; done after the resize, on the
/// thumbnail, so the resize ran on one channel.
fn expand_gray(data: &[u8], has_alpha: bool) -> Vec<u8> {
    if has_alpha {
        data.chunks_exact(2)
            .flat_map(|p| [p[0], p[0], p[0], p[1]])
            .collect()
    } else {
        data.iter().flat_map(|&g| [g, g, g]).collect()
    }
}

impl Prepared {
    pub fn encode(&self, spec: &EncodeSpec) -> Result<Vec<u8>, PipelineError> {
        encode::encode(self, spec)
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
    let spec = prepared.encode_spec(params, profile);
    let bytes = prepared.encode(&spec)?;
    Ok(Rendered {
        bytes,
        format: spec.format,
        width: prepared.width,
        height: prepared.height,
        quality: spec.quality,
    })
}
