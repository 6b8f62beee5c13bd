//! The image pipeline: one step per file, run in a fixed order over one image state.
//!
//! The order is [`STEPS`], read top to bottom: load (magic-byte sniffing, header limits,
//! shrink-on-load; JPEG and 8-bit PNG rows resized as they are decoded) → resize (16-bit
//! narrowed, Lanczos3, crop; planned in displayed coordinates, sampled in stored ones;
//! skipped when the load step already resized) → orient (EXIF) → colour (ICC/CMYK → 8-bit
//! sRGB). Encoding (mozjpeg, libwebp, png/oxipng) is separate, because the edge's budget
//! ladder and the worker's quality search encode one prepared image several times.
//!
//! A [`Deadline`] is checked before every step and inside the long decode loops, so a
//! legal but pathological source stops within a batch of rows of its deadline.
//!
//! Everything is synchronous and CPU-bound; async callers use `spawn_blocking`. See
//! docs/pipeline.md for the design and docs/benchmarks.md for the measurements.

pub mod jpeg_scans;

mod colour;
mod deadline;
mod encode;
pub mod encode_avif;
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
mod sharp_yuv;
mod simd_check;

use std::time::{Duration, Instant};

pub use deadline::Deadline;
pub use load::{SHRINK_MARGIN, SourceFormat};
/// The loader's header parser, for tests that check what our encoders wrote.
#[cfg(test)]
pub(crate) use load_jpeg::read_header as read_jpeg_header;

use crate::variant::{OutputFormat, Params};

/// Encoder settings profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Profile {
    /// Edge: baseline-speed encoder settings.
    #[default]
    Fast,
    /// Worker: slower, smaller (trellis, optimised Huffman, WebP method 6, optimised PNG),
    /// decoded at twice the edge's margin.
    Best,
}

impl Profile {
    /// How much larger than the output shrink-on-load keeps the decode, on either side.
    ///
    /// The edge's 2× is as good as a full decode to the eye, and fast. The worker's
    /// variant is the long-lived one and its quality search scores candidates against the
    /// very pixels it encodes, so those pixels should be what a full decode would give: at
    /// 4× they are (the search's choices land within a step of a full-decode reference's,
    /// docs/benchmarks.md "Quality search cost"), and no second, full-size decode is needed
    /// as the reference.
    pub fn shrink_margin(self) -> u32 {
        match self {
            Profile::Fast => SHRINK_MARGIN,
            Profile::Best => 2 * SHRINK_MARGIN,
        }
    }
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

/// Why a render failed. The edge maps these to HTTP statuses (413, 415, 422 for the
/// input's fault; 500 and 503 for ours or the machine's); the worker retries the latter.
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
    /// Not the input's fault: the machine had no memory for a buffer the limits allow.
    #[error("out of memory: cannot allocate {bytes} bytes for a {what} buffer")]
    OutOfMemory { what: &'static str, bytes: usize },
    /// Not the input's fault: a bug (a panic in our code or a codec's), caught.
    #[error("internal error: {0}")]
    Internal(String),
    /// The render took longer than its caller allowed.
    #[error(
        "rendering stopped in the {step} step after {} ms, past its deadline of {} ms",
        elapsed.as_millis(),
        limit.as_millis()
    )]
    DeadlineExceeded {
        step: &'static str,
        elapsed: Duration,
        limit: Duration,
    },
}

impl PipelineError {
    /// Whether the source itself is at fault (too big, not an image, corrupt): the same
    /// source fails the same way every time, so retrying is pointless. Everything else
    /// (an encoder failure, memory, a bug, time) may pass on another try or machine.
    pub fn is_input_fault(&self) -> bool {
        matches!(
            self,
            PipelineError::TooManyBytes { .. }
                | PipelineError::TooManyPixels { .. }
                | PipelineError::UnsupportedFormat(_)
                | PipelineError::Corrupt { .. }
        )
    }
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
    /// Decoded at full resolution (no shrink-on-load was worth it), see
    /// [`Self::is_full_resolution`].
    full_resolution: bool,
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

    /// Whether the load decoded the source at full resolution (PNG and GIF always; JPEG and
    /// WebP when the output is too close to the source size, by the profile's
    /// [`Profile::shrink_margin`], for a reduced decode): then these are exactly the pixels
    /// [`prepare_reference`] would make.
    pub fn is_full_resolution(&self) -> bool {
        self.full_resolution
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
    prepare_until(source, params, limits, Deadline::none())
}

/// [`prepare`], stopping with [`PipelineError::DeadlineExceeded`] once `deadline` passes.
pub fn prepare_until(
    source: &[u8],
    params: &Params,
    limits: &Limits,
    deadline: Deadline,
) -> Result<Prepared, PipelineError> {
    run_steps(
        source,
        params,
        limits,
        load::Decode::Shrink {
            margin: SHRINK_MARGIN,
        },
        deadline,
    )
}

/// Like [`prepare`], but from a full-resolution decode (no shrink-on-load): the
/// high-quality reference, of exactly the same size, that tests and the measuring examples
/// hold shrink-on-load results against (the worker's search scores against its own
/// [`Profile::Best`] pixels, which come within a few tenths of this).
pub fn prepare_reference(
    source: &[u8],
    params: &Params,
    limits: &Limits,
) -> Result<Prepared, PipelineError> {
    run_steps(source, params, limits, load::Decode::Full, Deadline::none())
}

/// [`prepare`] for `profile`: decoded no smaller than [`Profile::shrink_margin`] times the
/// output on either side.
pub fn prepare_for(
    source: &[u8],
    params: &Params,
    limits: &Limits,
    profile: Profile,
) -> Result<Prepared, PipelineError> {
    prepare_with_margin(source, params, limits, profile.shrink_margin())
}

/// [`prepare`], decoded no smaller than `margin` times the output on either side
/// (`examples/search_reference` measures margins with it).
pub fn prepare_with_margin(
    source: &[u8],
    params: &Params,
    limits: &Limits,
    margin: u32,
) -> Result<Prepared, PipelineError> {
    run_steps(
        source,
        params,
        limits,
        load::Decode::Shrink { margin },
        Deadline::none(),
    )
}

/// Decode one of our own encodes back to pixels, for scoring: AVIF through libavif (it
/// is an output format only, never accepted as a source), the others through the
/// pipeline at 100 %, which for our files (no orientation, no ICC) is a plain decode.
pub fn decode_output(encoded: &[u8]) -> Result<Prepared, PipelineError> {
    if encode_avif::is_avif(encoded) {
        let decoded = encode_avif::decode(encoded).map_err(|reason| PipelineError::Corrupt {
            format: "avif",
            reason,
        })?;
        return Ok(Prepared {
            width: decoded.width,
            height: decoded.height,
            source_format: OutputFormat::Avif,
            timings: StageTimings::default(),
            pixels: decoded.pixels,
            has_alpha: decoded.has_alpha,
            gray: false,
            full_resolution: true,
        });
    }
    let limits = Limits {
        max_pixels: u64::MAX,
        max_bytes: u64::MAX,
    };
    prepare(encoded, &Params::default(), &limits)
}

/// A sequential JPEG of ours rewritten as progressive with the same coefficients (so the
/// same pixels): the worker searches the quality on sequential candidates and rewrites only
/// the chosen one (`encode_jpeg::progressive_from_sequential`).
pub fn progressive_jpeg(sequential: &[u8]) -> Result<Vec<u8>, PipelineError> {
    encode_jpeg::progressive_from_sequential(sequential).map_err(|reason| PipelineError::Encode {
        format: OutputFormat::Jpeg,
        reason,
    })
}

/// What every step sees: the request, and the image as the previous step left it.
pub(crate) struct Work<'a> {
    pub source: &'a [u8],
    pub params: &'a Params,
    pub limits: &'a Limits,
    pub decode: load::Decode,
    pub deadline: Deadline,
    /// Set by the load step.
    pub format: Option<SourceFormat>,
    /// `None` until the load step has run.
    pub image: Option<image::ImageState>,
    /// The load step resized the rows as they came, so the resize step has nothing to do.
    pub resized: bool,
    /// Set by the load step: the source was decoded at full resolution.
    pub full_resolution: bool,
}

impl Work<'_> {
    /// The image, for the steps after `load` (which always sets it).
    pub fn image(&mut self) -> Result<&mut image::ImageState, PipelineError> {
        self.image
            .as_mut()
            .ok_or_else(|| PipelineError::Internal("a step ran before the load step".into()))
    }
}

/// One step of [`STEPS`].
pub(crate) struct Step {
    pub name: &'static str,
    pub run: fn(&mut Work) -> Result<(), PipelineError>,
    /// Where its wall time is added.
    pub timing: fn(&mut StageTimings) -> &mut Duration,
}

/// The preparation, in order. Each step lives in its own file.
pub(crate) const STEPS: [Step; 4] = [
    // Sniff, check the limits, decode no larger than needed (JPEG DCT scaling, WebP scaled
    // decoding); JPEG and 8-bit PNG rows are resized as they are decoded.
    Step {
        name: "load",
        run: load::step,
        timing: |t| &mut t.load,
    },
    // 16-bit → 8-bit, then Lanczos3 and the crop, sampling the stored buffer for a plan in
    // displayed coordinates (so orient turns the thumbnail, not the decode).
    Step {
        name: "resize",
        run: resize::step,
        timing: |t| &mut t.resize,
    },
    // EXIF orientation.
    Step {
        name: "orient",
        run: orient::step,
        timing: |t| &mut t.orient,
    },
    // ICC/CMYK → 8-bit sRGB, on the thumbnail (libvips' thumbnail does the same; no
    // measurable loss for RGB profiles). The worker's CMYK is converted during the load
    // instead (docs/pipeline.md).
    Step {
        name: "colour",
        run: colour::step,
        timing: |t| &mut t.colour,
    },
];

fn run_steps(
    source: &[u8],
    params: &Params,
    limits: &Limits,
    decode: load::Decode,
    deadline: Deadline,
) -> Result<Prepared, PipelineError> {
    let mut work = Work {
        source,
        params,
        limits,
        decode,
        deadline: deadline.clone(),
        format: None,
        image: None,
        resized: false,
        full_resolution: false,
    };
    let mut timings = StageTimings::default();
    for step in &STEPS {
        deadline.check(step.name)?;
        let started = Instant::now();
        (step.run)(&mut work)?;
        *(step.timing)(&mut timings) += started.elapsed();
    }
    let (Some(format), Some(image)) = (work.format, work.image) else {
        return Err(PipelineError::Internal(
            "the load step produced no image".into(),
        ));
    };
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
        full_resolution: work.full_resolution,
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

    /// AVIF at base quantiser index `qindex`: the worker's quality search steps between the
    /// `q`s of the URL scale ([`encode_avif::qindex_for`]).
    pub fn encode_avif_at_qindex(
        &self,
        qindex: u8,
        settings: &encode_avif::AvifSettings,
    ) -> Result<Vec<u8>, PipelineError> {
        encode::encode_avif_at_qindex(self, qindex, settings)
    }
}

/// Convenience: prepare and encode once with the URL's quality (or the default).
pub fn render(
    source: &[u8],
    params: &Params,
    limits: &Limits,
    profile: Profile,
) -> Result<Rendered, PipelineError> {
    let prepared = prepare_for(source, params, limits, profile)?;
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
