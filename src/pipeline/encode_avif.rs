//! AVIF encoding (and decoding our own output back) with libavif over libaom.
//!
//! Why libaom: measured on the kit's photos at 400 px (docs/benchmarks.md, "AVIF encoder
//! choice"), libaom at speed 8 encodes in about half the CPU of rav1e at its fastest speed,
//! for ~25 % fewer bytes at the same quantizer; SVT-AV1 is tuned for video sizes. libavif
//! does the container (ispe, pixi, colr, alpha auxiliary image), the RGB→YUV conversion
//! and, for the worker's quality search, the decode.
//!
//! - `quality` is on the URL's JPEG-like scale: [`qindex_for`] maps it so that `80q`
//!   gives about the SSIMULACRA2 score of a q80 JPEG (one measured table per profile).
//! - `fast` (edge) and `best` (worker) differ in libaom's settings: [`AvifSettings`].
//! - 8-bit 4:2:0 (4:0:0 for gray images; the worker's chroma made by the "sharp" conversion
//!   of `sharp_yuv`, the edge's by libavif's 2×2 averaging); colour signalled as sRGB
//!   (BT.709 primaries, sRGB transfer, BT.601 matrix, full range: what browsers assume for
//!   JPEG and WebP, so the three formats look alike); alpha kept as an auxiliary image; no
//!   EXIF, XMP or ICC.

use std::ffi::CStr;
use std::ptr;

use libavif_sys as avif;

use super::Profile;

/// Chroma sampling of colour images (gray ones are always 4:0:0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chroma {
    Yuv420,
    Yuv444,
}

/// How 4:2:0 chroma is made from full-resolution RGB (no effect on 4:4:4 or gray).
///
/// Averaging gamma-encoded chroma over 2×2 blocks leaves the decoder's upsampled
/// reconstruction wrong in linear-light luminance at colour edges and in fine colour
/// texture, which SSIMULACRA2 (linear light, XYB) sees; the sharp conversion fixes that
/// before encoding, so the worker's quality search reaches its target in fewer bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Downsampling {
    /// libavif's converter: each 2×2 block's gamma-encoded chroma averaged.
    Average,
    /// [`super::sharp_yuv`]: Y and chroma adjusted so that the decoder's upsampled
    /// reconstruction matches the source in linear light.
    Sharp,
}

/// libaom settings of one profile. Public so `examples/avif_sweep.rs` can measure others.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AvifSettings {
    /// libaom `cpu-used` (0 slowest … 9; 10 is a real-time preset).
    pub speed: i32,
    pub chroma: Chroma,
    pub chroma_downsampling: Downsampling,
    /// libaom codec options (`key=value`, as `aomenc --key=value`).
    pub options: &'static [(&'static str, &'static str)],
    /// `(JPEG-like q, libavif quality)` pairs with the same mean SSIMULACRA2 at these
    /// settings, linear in between: see [`qindex_for`].
    pub quality_map: &'static [(u8, u8)],
}

impl AvifSettings {
    /// Measured with `examples/avif_sweep` on the kit's twelve photos at 400 px (bytes at
    /// equal mean SSIMULACRA2; docs/benchmarks.md, "AVIF encoder settings"):
    /// - `fast` (edge): speed 8, 4:2:0, ~20 ms a 400 px thumbnail. Speed 9 is 4× faster but
    ///   ~8 % bigger; 4:4:4 costs 15 % more CPU for a few % the edge's short-lived copy
    ///   does not need.
    /// - `best` (worker): speed 5, 4:2:0, `tune=iq` (libaom 3.12's all-intra tuning, guided
    ///   by SSIMULACRA 2: quantiser matrices, sharpness 7, chroma delta-q, deltaq-mode 6).
    ///   `tune=iq` makes files 8–13 % smaller at equal mean score than libaom's default
    ///   tuning, and under it 4:2:0 is 2–3 % smaller than 4:4:4 for 18 % less CPU (without
    ///   it 4:4:4 was the smaller). Speed 5 is ~4 % smaller than speed 6; speed 4 no smaller.
    ///   Sharp 4:2:0 conversion ([`Downsampling::Sharp`]): 1–2 % smaller at equal mean score
    ///   around the worker's target 80 (1.6 % per image at target 80, 4–5 % near 85), for
    ///   ~4 % more CPU per encode; the edge keeps libavif's averaging (its ~20 ms encodes
    ///   would pay relatively more, for a short-lived copy).
    pub fn for_profile(profile: Profile) -> AvifSettings {
        match profile {
            Profile::Fast => AvifSettings {
                speed: 8,
                chroma: Chroma::Yuv420,
                chroma_downsampling: Downsampling::Average,
                options: &[],
                quality_map: &[
                    (1, 1),
                    (30, 40),
                    (50, 51),
                    (70, 59),
                    (80, 67),
                    (90, 81),
                    (100, 90),
                ],
            },
            Profile::Best => AvifSettings {
                speed: 5,
                chroma: Chroma::Yuv420,
                chroma_downsampling: Downsampling::Sharp,
                options: &[("tune", "iq")],
                quality_map: &[
                    (1, 1),
                    (30, 28),
                    (50, 39),
                    (70, 48),
                    (80, 54),
                    (90, 69),
                    (100, 88),
                ],
            },
        }
    }
}

impl AvifSettings {
    /// The worker's quality search measures its candidates with this stand-in
    /// (`worker::tuning`): libaom speed 6 costs about a quarter of speed 5's CPU and a tenth
    /// of speed 3's at 400 px, and its score moves with qindex as theirs do, about a point
    /// lower (`examples/avif_sweep`, docs/benchmarks.md, "Session 9").
    pub fn search_proxy(self) -> AvifSettings {
        AvifSettings {
            speed: PROXY_SPEED,
            ..self
        }
    }

    /// The encoder of a tuned output of `pixels` pixels: libaom speed 3, which reaches a
    /// given SSIMULACRA2 in ~3 % fewer bytes than speed 5 for 2.7× its CPU (it only ever
    /// encodes the one or two finalists of a search, not the search itself), up to
    /// [`SLOW_OUTPUT_MAX_PIXELS`]; bigger outputs keep `self`, so a batch of large tuned
    /// variants stays well inside the worker's timeout.
    pub fn tuned_output(self, pixels: u64) -> AvifSettings {
        if pixels > SLOW_OUTPUT_MAX_PIXELS {
            return self;
        }
        AvifSettings {
            speed: SLOW_OUTPUT_SPEED,
            ..self
        }
    }
}

/// libaom speed of [`AvifSettings::search_proxy`].
pub const PROXY_SPEED: i32 = 6;
/// libaom speed of [`AvifSettings::tuned_output`].
pub const SLOW_OUTPUT_SPEED: i32 = 3;
/// The largest tuned output encoded at [`SLOW_OUTPUT_SPEED`]: 1024×683 and every smaller
/// thumbnail (~2.6 s of CPU per encode at this size).
pub const SLOW_OUTPUT_MAX_PIXELS: u64 = 1_000_000;

/// The base quantiser index (libaom's qindex, 1–255) for a JPEG-like `q` under `map`: so that
/// `80q` gives about the SSIMULACRA2 of a q80 mozjpeg JPEG (measured means over the kit's
/// photos, mozjpeg `best` at 400 px: q30 52.9, q50 66.0, q70 74.3, q80 79.1, q90 84.8).
///
/// The map is in libavif's quality (0–100); it is read linearly at `q`, carried through
/// libavif's quality → quantiser formula and libaom's quantiser → qindex table without
/// rounding, and rounded once, in qindex. libaom's own API stops at its 64 quantisers, four
/// qindex apart, and one of those steps is worth up to 1.5 SSIMULACRA2 points and 8 % of a
/// photo's bytes, so the worker's quality search overshot its target by half a step on
/// average; our libaom build takes the qindex itself (`third_party/libaom-sys`, the
/// `edgethumb-qindex` option), and the search steps through it ([`crate::worker::tuning`]).
pub fn qindex_for(q: u8, map: &[(u8, u8)]) -> u8 {
    let quantizer = (100.0 - interpolate(q, map)) * 63.0 / 100.0;
    qindex_between_quantizers(quantizer)
}

/// libaom's quantiser → qindex table (`quantizer_to_qindex` in av1/encoder/av1_quantize.c),
/// read linearly between its entries and rounded.
fn qindex_between_quantizers(quantizer: f64) -> u8 {
    let quantizer = quantizer.clamp(0.0, 63.0);
    let below = quantizer.floor() as i32;
    let (a, b) = (
        f64::from(qindex_of_quantizer(below)),
        f64::from(qindex_of_quantizer(below + 1)),
    );
    (a + (quantizer - f64::from(below)) * (b - a))
        .round()
        .clamp(1.0, 255.0) as u8
}

/// libaom's `quantizer_to_qindex` table: 4 qindex per quantiser, then 249 and 255.
pub fn qindex_of_quantizer(quantizer: i32) -> u8 {
    match quantizer.clamp(0, 63) {
        62 => 249,
        63 => 255,
        q => (q * 4) as u8,
    }
}

/// libavif 1.0's own quality → quantiser rounding (`avifQualityToQuantizer`).
pub fn quantizer_of(quality: i32) -> i32 {
    ((100 - quality.clamp(0, 100)) * 63 + 50) / 100
}

/// The libavif quality (0–100) nearest a qindex: libavif still wants one, and the alpha
/// plane's quality is derived from the colour's.
fn libavif_quality_of(qindex: u8) -> i32 {
    (100.0 - f64::from(qindex) * 100.0 / 255.0)
        .round()
        .clamp(0.0, 100.0) as i32
}

/// `map` read linearly at `q` (not rounded).
fn interpolate(q: u8, map: &[(u8, u8)]) -> f64 {
    let q = q.clamp(1, 100);
    for pair in map.windows(2) {
        let ((q0, a0), (q1, a1)) = (pair[0], pair[1]);
        if q <= q1 {
            let span = f64::from(q1.saturating_sub(q0)).max(1.0);
            let t = f64::from(q.saturating_sub(q0)) / span;
            return f64::from(a0) + t * (f64::from(a1) - f64::from(a0));
        }
    }
    map.last().map_or(f64::from(q), |&(_, a)| f64::from(a))
}

/// Owns the libavif objects of one encode or decode; frees them on every path.
struct Handles {
    image: *mut avif::avifImage,
    encoder: *mut avif::avifEncoder,
    decoder: *mut avif::avifDecoder,
    output: avif::avifRWData,
}

impl Handles {
    fn new() -> Handles {
        Handles {
            image: ptr::null_mut(),
            encoder: ptr::null_mut(),
            decoder: ptr::null_mut(),
            output: avif::avifRWData::default(),
        }
    }
}

impl Drop for Handles {
    fn drop(&mut self) {
        // SAFETY: each pointer is null or owned by us and created by the matching libavif
        // constructor; the RW data is empty or allocated by libavif.
        unsafe {
            if !self.image.is_null() {
                avif::avifImageDestroy(self.image);
            }
            if !self.encoder.is_null() {
                avif::avifEncoderDestroy(self.encoder);
            }
            if !self.decoder.is_null() {
                avif::avifDecoderDestroy(self.decoder);
            }
            avif::avifRWDataFree(&mut self.output);
        }
    }
}

fn check(result: avif::avifResult, what: &str) -> Result<(), String> {
    if result == avif::AVIF_RESULT_OK {
        return Ok(());
    }
    // SAFETY: avifResultToString returns a static NUL-terminated string for any value.
    let text = unsafe { CStr::from_ptr(avif::avifResultToString(result)) };
    Err(format!("libavif {what}: {}", text.to_string_lossy()))
}

/// Interleaved 8-bit pixels to encode: `channels` is 1 (gray), 2 (gray+alpha), 3 (RGB) or
/// 4 (RGBA).
pub struct AvifInput<'a> {
    pub pixels: &'a [u8],
    pub width: u32,
    pub height: u32,
    pub channels: usize,
}

/// Encode at a JPEG-like `quality` (see [`qindex_for`]) with `profile`'s settings.
pub fn encode(input: &AvifInput<'_>, quality: u8, profile: Profile) -> Result<Vec<u8>, String> {
    let settings = AvifSettings::for_profile(profile);
    encode_at_qindex(input, qindex_for(quality, settings.quality_map), &settings)
}

/// Encode at libavif's own `quality` (0–100) with explicit settings, through libaom's own
/// 64-step API (`examples/avif_sweep` measures settings on that scale).
pub fn encode_with(
    input: &AvifInput<'_>,
    quality: i32,
    settings: &AvifSettings,
) -> Result<Vec<u8>, String> {
    encode_raw(input, quality, None, settings)
}

/// Encode at base quantiser index `qindex` (1–255; 0, lossless, is not offered) with
/// explicit settings.
pub fn encode_at_qindex(
    input: &AvifInput<'_>,
    qindex: u8,
    settings: &AvifSettings,
) -> Result<Vec<u8>, String> {
    if qindex == 0 {
        return Err("qindex 0 (lossless) is not offered".to_string());
    }
    encode_raw(input, libavif_quality_of(qindex), Some(qindex), settings)
}

/// One encode: libavif `quality` (which also sets the alpha plane's), and the colour plane's
/// qindex when given (otherwise libaom's quantiser for `quality`).
fn encode_raw(
    input: &AvifInput<'_>,
    quality: i32,
    qindex: Option<u8>,
    settings: &AvifSettings,
) -> Result<Vec<u8>, String> {
    let (w, h, channels) = (input.width, input.height, input.channels);
    if !(1..=4).contains(&channels) {
        return Err(format!("unsupported channel count {channels}"));
    }
    let count = w as usize * h as usize;
    if count == 0 || input.pixels.len() < count * channels {
        return Err("pixel buffer too small".to_string());
    }
    let gray = channels <= 2;
    let has_alpha = channels == 2 || channels == 4;
    let mut handles = Handles::new();
    let yuv_format = match (gray, settings.chroma) {
        (true, _) => avif::AVIF_PIXEL_FORMAT_YUV400,
        (false, Chroma::Yuv420) => avif::AVIF_PIXEL_FORMAT_YUV420,
        (false, Chroma::Yuv444) => avif::AVIF_PIXEL_FORMAT_YUV444,
    };
    // SAFETY: plain constructor; a null result is handled below.
    handles.image = unsafe { avif::avifImageCreate(w, h, 8, yuv_format) };
    if handles.image.is_null() {
        return Err("libavif could not create an image".to_string());
    }
    // SAFETY: image is non-null and exclusively ours until destroyed.
    let image = unsafe { &mut *handles.image };
    image.colorPrimaries = avif::AVIF_COLOR_PRIMARIES_BT709 as _;
    image.transferCharacteristics = avif::AVIF_TRANSFER_CHARACTERISTICS_SRGB as _;
    image.matrixCoefficients = avif::AVIF_MATRIX_COEFFICIENTS_BT601 as _;
    image.yuvRange = avif::AVIF_RANGE_FULL;
    if gray {
        write_gray(image, input, has_alpha)?;
    } else if settings.chroma == Chroma::Yuv420
        && settings.chroma_downsampling == Downsampling::Sharp
    {
        write_rgb_sharp(image, input, has_alpha)?;
    } else {
        write_rgb(image, input, has_alpha)?;
    }
    // SAFETY: plain constructor; a null result is handled below.
    handles.encoder = unsafe { avif::avifEncoderCreate() };
    if handles.encoder.is_null() {
        return Err("libavif could not create an encoder".to_string());
    }
    // SAFETY: encoder is non-null and exclusively ours until destroyed.
    let encoder = unsafe { &mut *handles.encoder };
    encoder.codecChoice = avif::AVIF_CODEC_CHOICE_AOM;
    encoder.maxThreads = 1;
    encoder.speed = settings.speed;
    encoder.quality = quality.clamp(0, 100);
    // The colour plane's qindex, past libaom's 64-step API (see `qindex_for`); the alpha
    // plane keeps its own quality below.
    let qindex_option = qindex.map(|qindex| ("color:edgethumb-qindex", qindex.to_string()));
    let options = settings
        .options
        .iter()
        .map(|&(key, value)| (key, value.to_string()))
        .chain(qindex_option);
    for (key, value) in options {
        let key = std::ffi::CString::new(key).map_err(|e| e.to_string())?;
        let value = std::ffi::CString::new(value).map_err(|e| e.to_string())?;
        // SAFETY: the encoder is valid; libavif copies both strings.
        let set = unsafe {
            avif::avifEncoderSetCodecSpecificOption(handles.encoder, key.as_ptr(), value.as_ptr())
        };
        check(set, "codec option")?;
    }
    // Alpha edges show against any background: keep them near-lossless, as WebP does.
    encoder.qualityAlpha = 90.max(encoder.quality);
    // SAFETY: image and encoder are valid; output is an empty RW buffer libavif fills.
    let written =
        unsafe { avif::avifEncoderWrite(handles.encoder, handles.image, &mut handles.output) };
    check(written, "encode")?;
    if handles.output.data.is_null() || handles.output.size == 0 {
        return Err("libavif wrote nothing".to_string());
    }
    // SAFETY: libavif holds `size` bytes at `data` until avifRWDataFree.
    Ok(unsafe { std::slice::from_raw_parts(handles.output.data, handles.output.size).to_vec() })
}

/// RGB(A) into the image through libavif's converter (BT.601 matrix, full range).
fn write_rgb(
    image: &mut avif::avifImage,
    input: &AvifInput<'_>,
    has_alpha: bool,
) -> Result<(), String> {
    let mut rgb = avif::avifRGBImage::default();
    // SAFETY: rgb is a plain struct; the defaults come from the valid image.
    unsafe { avif::avifRGBImageSetDefaults(&mut rgb, image) };
    rgb.format = if has_alpha {
        avif::AVIF_RGB_FORMAT_RGBA
    } else {
        avif::AVIF_RGB_FORMAT_RGB
    };
    rgb.depth = 8;
    rgb.rowBytes = input.width * input.channels as u32;
    // libavif only reads through this pointer during the conversion (it is `*mut` in the
    // C struct because the same type is used for decoding into).
    rgb.pixels = input.pixels.as_ptr().cast_mut();
    // SAFETY: rgb describes `height` rows of `rowBytes` readable bytes (checked by the
    // caller); the image planes are allocated by the call.
    check(
        unsafe { avif::avifImageRGBToYUV(image, &rgb) },
        "RGB to YUV",
    )
}

/// RGB(A) into the image through [`super::sharp_yuv`] (4:2:0 only; same matrix and range
/// as [`write_rgb`]), alpha copied as it is.
fn write_rgb_sharp(
    image: &mut avif::avifImage,
    input: &AvifInput<'_>,
    has_alpha: bool,
) -> Result<(), String> {
    allocate_planes(image, has_alpha)?;
    let (w, h, channels) = (input.width as usize, input.height as usize, input.channels);
    let yuv = super::sharp_yuv::rgb_to_yuv420_sharp(input.pixels, w, h, channels);
    let (cw, ch) = (w.div_ceil(2), h.div_ceil(2));
    for (plane, data, pw, ph) in [(0, &yuv.y, w, h), (1, &yuv.u, cw, ch), (2, &yuv.v, cw, ch)] {
        let stride = image.yuvRowBytes[plane] as usize;
        for (row, src) in data.chunks_exact(pw).take(ph).enumerate() {
            // SAFETY: a 4:2:0 8-bit plane has `ph` rows of `yuvRowBytes` ≥ `pw` bytes
            // (⌈w/2⌉ × ⌈h/2⌉ for U and V).
            let dst = unsafe {
                std::slice::from_raw_parts_mut(image.yuvPlanes[plane].add(row * stride), pw)
            };
            dst.copy_from_slice(src);
        }
    }
    if has_alpha {
        copy_alpha(image, input);
    }
    Ok(())
}

/// Lets libavif allocate the image's Y, U, V (and alpha) planes at its own size and
/// stride, for the writers that fill them directly.
fn allocate_planes(image: &mut avif::avifImage, has_alpha: bool) -> Result<(), String> {
    let planes = if has_alpha {
        avif::AVIF_PLANES_YUV | avif::AVIF_PLANES_A
    } else {
        avif::AVIF_PLANES_YUV
    };
    // SAFETY: the image is valid; libavif allocates planes of its own size.
    let allocated = unsafe { avif::avifImageAllocatePlanes(image, planes as _) };
    check(allocated, "allocate planes")
}

/// The last channel of every pixel into the alpha plane, which must have been allocated
/// (`AVIF_PLANES_A`).
fn copy_alpha(image: &mut avif::avifImage, input: &AvifInput<'_>) {
    let (w, h, channels) = (input.width as usize, input.height as usize, input.channels);
    for y in 0..h {
        let row = &input.pixels[y * w * channels..(y + 1) * w * channels];
        // SAFETY: the caller allocated the alpha plane: `h` rows of `alphaRowBytes` ≥ `w`
        // bytes.
        let alpha = unsafe {
            std::slice::from_raw_parts_mut(
                image.alphaPlane.add(y * image.alphaRowBytes as usize),
                w,
            )
        };
        for (out, px) in alpha.iter_mut().zip(row.chunks_exact(channels)) {
            *out = px[channels - 1];
        }
    }
}

/// Gray(+alpha) straight into the Y (and alpha) plane: no conversion needed for 4:0:0.
fn write_gray(
    image: &mut avif::avifImage,
    input: &AvifInput<'_>,
    has_alpha: bool,
) -> Result<(), String> {
    allocate_planes(image, has_alpha)?;
    let (w, h) = (input.width as usize, input.height as usize);
    let channels = input.channels;
    for y in 0..h {
        let row = &input.pixels[y * w * channels..(y + 1) * w * channels];
        // SAFETY: the Y plane has `h` rows of `yuvRowBytes[0]` ≥ `w` bytes.
        let luma = unsafe {
            std::slice::from_raw_parts_mut(
                image.yuvPlanes[0].add(y * image.yuvRowBytes[0] as usize),
                w,
            )
        };
        for (out, px) in luma.iter_mut().zip(row.chunks_exact(channels)) {
            *out = px[0];
        }
    }
    if has_alpha {
        copy_alpha(image, input);
    }
    Ok(())
}

/// Whether `data` starts like an AVIF file: an ISO-BMFF `ftyp` box whose major brand is
/// `avif` or `avis`.
pub fn is_avif(data: &[u8]) -> bool {
    data.len() >= 12
        && &data[4..8] == b"ftyp"
        && (&data[8..12] == b"avif" || &data[8..12] == b"avis")
}

/// Pixels decoded from one of our AVIF files: 8-bit RGB or RGBA, interleaved.
pub struct DecodedAvif {
    pub pixels: Vec<u8>,
    pub width: u32,
    pub height: u32,
    pub has_alpha: bool,
}

/// Decode an AVIF (the worker scores its own candidates with this). Bounded: libavif's
/// default limits (image size limit 16384×16384, dimension limit 32768) apply.
pub fn decode(data: &[u8]) -> Result<DecodedAvif, String> {
    let mut handles = Handles::new();
    // SAFETY: plain constructors; null results are handled below.
    unsafe {
        handles.decoder = avif::avifDecoderCreate();
        handles.image = avif::avifImageCreateEmpty();
    }
    if handles.decoder.is_null() || handles.image.is_null() {
        return Err("libavif could not create a decoder".to_string());
    }
    // SAFETY: decoder is non-null and ours.
    unsafe { (*handles.decoder).maxThreads = 1 };
    // SAFETY: decoder and image are valid; `data` outlives the call.
    let read = unsafe {
        avif::avifDecoderReadMemory(handles.decoder, handles.image, data.as_ptr(), data.len())
    };
    check(read, "decode")?;
    // SAFETY: the decode succeeded, so the image is filled in.
    let image = unsafe { &*handles.image };
    let has_alpha = !image.alphaPlane.is_null();
    let mut rgb = avif::avifRGBImage::default();
    // SAFETY: rgb is a plain struct; the defaults come from the decoded image.
    unsafe { avif::avifRGBImageSetDefaults(&mut rgb, image) };
    rgb.depth = 8;
    rgb.format = if has_alpha {
        avif::AVIF_RGB_FORMAT_RGBA
    } else {
        avif::AVIF_RGB_FORMAT_RGB
    };
    let channels = if has_alpha { 4 } else { 3 };
    rgb.rowBytes = image.width * channels;
    let mut pixels = vec![0u8; rgb.rowBytes as usize * image.height as usize];
    rgb.pixels = pixels.as_mut_ptr();
    // SAFETY: `pixels` holds height rows of rowBytes bytes and outlives the call.
    let converted = unsafe { avif::avifImageYUVToRGB(image, &mut rgb) };
    check(converted, "YUV to RGB")?;
    Ok(DecodedAvif {
        pixels,
        width: image.width,
        height: image.height,
        has_alpha,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_quality_maps_are_monotone_and_keep_their_anchors() {
        for profile in [Profile::Fast, Profile::Best] {
            let map = AvifSettings::for_profile(profile).quality_map;
            assert_eq!(map.first().map(|p| p.0), Some(1));
            assert_eq!(map.last().map(|p| p.0), Some(100));
            let mut last = u8::MAX;
            for q in 1..=100u8 {
                let qindex = qindex_for(q, map);
                assert!(qindex <= last, "{profile:?}: q{q} → {qindex} after {last}");
                assert!(qindex >= 1);
                last = qindex;
            }
            // At an anchor, within half a quantiser of what libaom's own API gives the
            // anchor's libavif quality (which rounds to a quantiser first).
            for &(q, a) in map {
                let own = i32::from(qindex_of_quantizer(quantizer_of(i32::from(a))));
                let ours = i32::from(qindex_for(q, map));
                assert!((own - ours).abs() <= 2, "{profile:?} q{q}: {ours} vs {own}");
            }
        }
        // Between anchors: linear (quality 40 → quantiser 37.8 → qindex 151.2).
        assert_eq!(qindex_for(40, &[(1, 1), (30, 30), (50, 50)]), 151);
    }

    /// The qindex is the map rounded once: wherever the map moves by at most one qindex per
    /// `q` step, no qindex is skipped, so the quality search can stop at every one.
    #[test]
    fn the_qindex_is_the_map_rounded_once() {
        for profile in [Profile::Fast, Profile::Best] {
            let map = AvifSettings::for_profile(profile).quality_map;
            // Below quantiser 62 libaom's table is 4 × the quantiser.
            let exact = |q: u8| (100.0 - interpolate(q, map)) * 63.0 / 100.0 * 4.0;
            for q in 30..=95u8 {
                assert_eq!(
                    f64::from(qindex_for(q, map)),
                    exact(q).round(),
                    "{profile:?} q{q}"
                );
                let (here, next) = (qindex_for(q, map), qindex_for(q + 1, map));
                if exact(q) - exact(q + 1) <= 1.0 {
                    assert!(
                        here - next <= 1,
                        "{profile:?}: q{q} {here}, q{} {next}",
                        q + 1
                    );
                }
            }
        }
        assert_eq!(qindex_of_quantizer(0), 0);
        assert_eq!(qindex_of_quantizer(61), 244);
        assert_eq!(qindex_of_quantizer(62), 249);
        assert_eq!(qindex_of_quantizer(63), 255);
        assert_eq!(qindex_between_quantizers(61.5), 247);
    }

    /// The small RGB image the libaom tests encode.
    fn rgb_96x64(pixels: &[u8]) -> AvifInput<'_> {
        assert_eq!(pixels.len(), 96 * 64 * 3);
        AvifInput {
            pixels,
            width: 96,
            height: 64,
            channels: 3,
        }
    }

    fn noise(w: u32, h: u32) -> Vec<u8> {
        let mut state = 0x2545_f491_u32;
        (0..w * h * 3)
            .map(|i| {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                // Texture plus a gradient, so every qindex step changes something.
                ((state % 64) + i * 191 / (w * h * 3)) as u8
            })
            .collect()
    }

    /// Our libaom build's `edgethumb-qindex` option (`third_party/libaom-sys`): at a
    /// quantiser's own qindex it gives byte for byte what libaom's 64-step API gives, and
    /// the qindex values in between are real, distinct steps. A libaom without the option
    /// fails the encode (libavif rejects the unknown option) rather than ignoring it.
    #[test]
    fn our_libaom_takes_every_qindex() {
        let pixels = noise(96, 64);
        let input = rgb_96x64(&pixels);
        let best = AvifSettings::for_profile(Profile::Best);
        for quality in [40, 55, 70] {
            let own = encode_with(&input, quality, &best).unwrap();
            let qindex = qindex_of_quantizer(quantizer_of(quality));
            let ours = encode_at_qindex(&input, qindex, &best).unwrap();
            assert_eq!(own, ours, "quality {quality} = qindex {qindex}");
        }
        let sizes: Vec<usize> = (100..=108u8)
            .map(|qindex| encode_at_qindex(&input, qindex, &best).unwrap().len())
            .collect();
        let mut distinct = sizes.clone();
        distinct.dedup();
        assert!(distinct.len() >= 7, "{sizes:?}");
        assert!(sizes.first() > sizes.last(), "{sizes:?}");
        assert!(encode_at_qindex(&input, 0, &best).is_err());
    }

    #[test]
    fn the_worker_gets_libaom_3_12_and_its_tune_iq() {
        // third_party/libaom-sys replaces crates.io's 3.11: a build that fell back to it
        // would encode without `tune=iq` (older libaom rejects the value, and the worker's
        // encodes would fail) and lose its 8–13 %.
        unsafe extern "C" {
            fn aom_codec_version() -> std::os::raw::c_int;
        }
        // SAFETY: a pure getter with no arguments.
        let version = unsafe { aom_codec_version() };
        let (major, minor) = ((version >> 16) & 0xff, (version >> 8) & 0xff);
        assert!((major, minor) >= (3, 12), "libaom {major}.{minor}");

        // The option reaches libaom and changes the encode.
        let pixels: Vec<u8> = (0..96 * 64 * 3)
            .map(|i| (((i * 37) % 251) ^ (i / 288)) as u8)
            .collect();
        let input = rgb_96x64(&pixels);
        let best = AvifSettings::for_profile(Profile::Best);
        assert!(best.options.contains(&("tune", "iq")));
        let tuned = encode_with(&input, 60, &best).unwrap();
        let untuned = encode_with(
            &input,
            60,
            &AvifSettings {
                options: &[],
                ..best
            },
        )
        .unwrap();
        assert_ne!(tuned, untuned);
        assert!(decode(&tuned).is_ok());
    }

    fn srgb_to_linear(c: u8) -> f64 {
        let c = f64::from(c) / 255.0;
        if c <= 0.04045 {
            c / 12.92
        } else {
            ((c + 0.055) / 1.055).powf(2.4)
        }
    }

    /// Saturated red/green stripes and blocks, RGB or RGBA (alpha a gradient).
    fn red_green(w: u32, h: u32, channels: usize) -> Vec<u8> {
        let mut pixels = Vec::new();
        for j in 0..h {
            for i in 0..w {
                let red = (i / 3 + j / 4) % 2 == 0;
                let rgb = if red { [230, 25, 35] } else { [20, 190, 45] };
                pixels.extend_from_slice(&rgb[..]);
                if channels == 4 {
                    pixels.push((i * 255 / w.max(1)) as u8);
                }
            }
        }
        pixels
    }

    fn encode_decode(
        pixels: &[u8],
        w: u32,
        h: u32,
        channels: usize,
        how: Downsampling,
    ) -> DecodedAvif {
        let settings = AvifSettings {
            chroma_downsampling: how,
            ..AvifSettings::for_profile(Profile::Best)
        };
        let input = AvifInput {
            pixels,
            width: w,
            height: h,
            channels,
        };
        decode(&encode_with(&input, 95, &settings).unwrap()).unwrap()
    }

    #[test]
    fn sharp_chroma_downsampling_reconstructs_colour_edges_better_in_linear_light() {
        let (w, h) = (96, 64);
        let pixels = red_green(w, h, 3);
        let error = |how| {
            let decoded = encode_decode(&pixels, w, h, 3, how);
            assert!(!decoded.has_alpha);
            let sum: f64 = pixels
                .iter()
                .zip(&decoded.pixels)
                .map(|(&a, &b)| (srgb_to_linear(a) - srgb_to_linear(b)).abs())
                .sum();
            sum / pixels.len() as f64
        };
        let (average, sharp) = (error(Downsampling::Average), error(Downsampling::Sharp));
        assert!(sharp < 0.9 * average, "sharp {sharp} average {average}");
    }

    #[test]
    fn sharp_chroma_downsampling_keeps_odd_sizes_and_alpha() {
        for (w, h) in [(33, 17), (1, 1), (2, 3), (5, 1)] {
            let pixels = red_green(w, h, 4);
            let colour_error = |how| {
                let decoded = encode_decode(&pixels, w, h, 4, how);
                assert_eq!((decoded.width, decoded.height), (w, h));
                assert!(decoded.has_alpha);
                let mut sum = 0;
                for (src, got) in pixels.chunks_exact(4).zip(decoded.pixels.chunks_exact(4)) {
                    assert!(
                        src[3].abs_diff(got[3]) <= 4,
                        "{w}x{h}: alpha {} → {}",
                        src[3],
                        got[3]
                    );
                    sum += (0..3)
                        .map(|c| u32::from(src[c].abs_diff(got[c])))
                        .sum::<u32>();
                }
                f64::from(sum) / f64::from(w * h * 3)
            };
            // 3-pixel stripes of saturated red and green are at 4:2:0's limit (a block that
            // straddles them cannot come back whole): no worse than the averaging.
            let (average, sharp) = (
                colour_error(Downsampling::Average),
                colour_error(Downsampling::Sharp),
            );
            assert!(
                sharp <= average * 1.1 + 1.0,
                "{w}x{h}: sharp {sharp} average {average}"
            );
        }
    }
}
