//! Encode step: from the prepared sRGB pixels to the requested format.

use std::borrow::Cow;

use crate::variant::OutputFormat;

use super::{
    EncodeSpec, PipelineError, Prepared, encode_avif, encode_jpeg, encode_png, encode_webp,
};

pub fn encode(image: &Prepared, spec: &EncodeSpec) -> Result<Vec<u8>, PipelineError> {
    let failed = |reason: String| PipelineError::Encode {
        format: spec.format,
        reason,
    };
    let (w, h) = (image.width, image.height);
    match spec.format {
        OutputFormat::Jpeg => {
            // JPEG has no alpha: composite on white, as browsers show transparent areas
            // on a white page.
            let rgb: Cow<'_, [u8]> = if image.has_alpha() {
                Cow::Owned(flatten_on_white(image.pixels()))
            } else {
                Cow::Borrowed(image.pixels())
            };
            let pixels: Cow<'_, [u8]> = if image.is_gray() {
                Cow::Owned(rgb.chunks_exact(3).map(|p| p[0]).collect())
            } else {
                rgb
            };
            let input = encode_jpeg::JpegInput {
                pixels: &pixels,
                width: w,
                height: h,
                gray: image.is_gray(),
            };
            encode_jpeg::encode(&input, spec.quality, spec.progressive, spec.profile)
                .map_err(failed)
        }
        OutputFormat::Webp => encode_webp::encode(
            image.pixels(),
            w,
            h,
            image.has_alpha(),
            spec.quality,
            spec.profile,
        )
        .map_err(failed),
        OutputFormat::Avif => {
            let channels = image.pixels().len() / (w as usize * h as usize).max(1);
            // Gray sources keep one luma plane (4:0:0): no chroma to spend bits on.
            let (pixels, channels): (Cow<'_, [u8]>, usize) = if image.is_gray() {
                (
                    Cow::Owned(gray_channels(image.pixels(), channels)),
                    if channels == 4 { 2 } else { 1 },
                )
            } else {
                (Cow::Borrowed(image.pixels()), channels)
            };
            let input = encode_avif::AvifInput {
                pixels: &pixels,
                width: w,
                height: h,
                channels,
            };
            encode_avif::encode(&input, spec.quality, spec.profile).map_err(failed)
        }
        OutputFormat::Png => {
            let channels = image.pixels().len() / (w as usize * h as usize).max(1);
            let (pixels, channels): (Cow<'_, [u8]>, u8) = if image.is_gray() {
                // Keep gray sources one (or two) channels wide: a third of the data.
                (
                    Cow::Owned(gray_channels(image.pixels(), channels)),
                    if channels == 4 { 2 } else { 1 },
                )
            } else {
                (Cow::Borrowed(image.pixels()), channels as u8)
            };
            let input = encode_png::PngInput {
                pixels: &pixels,
                width: w,
                height: h,
                channels,
            };
            encode_png::encode(&input, spec.profile).map_err(failed)
        }
    }
}

/// Gray pixels stored as RGB(A) (`channels` 3 or 4) → gray (+ alpha), interleaved.
fn gray_channels(pixels: &[u8], channels: usize) -> Vec<u8> {
    let keep_alpha = channels == 4;
    let mut gray = Vec::with_capacity(pixels.len() / channels.max(1) * (1 + keep_alpha as usize));
    for p in pixels.chunks_exact(channels.max(1)) {
        gray.push(p[0]);
        if keep_alpha {
            gray.push(p[3]);
        }
    }
    gray
}

/// RGBA (straight alpha) → RGB over white.
fn flatten_on_white(rgba: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(rgba.len() / 4 * 3);
    for p in rgba.chunks_exact(4) {
        let a = p[3] as u32;
        for &c in &p[..3] {
            out.push(((c as u32 * a + 255 * (255 - a) + 127) / 255) as u8);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flattening_blends_towards_white() {
        let out = flatten_on_white(&[255, 0, 0, 255, 255, 0, 0, 0, 0, 0, 0, 128]);
        assert_eq!(&out[0..3], &[255, 0, 0]); // opaque red stays red
        assert_eq!(&out[3..6], &[255, 255, 255]); // transparent becomes white
        assert_eq!(&out[6..9], &[127, 127, 127]); // half-transparent black is mid grey
    }
}
