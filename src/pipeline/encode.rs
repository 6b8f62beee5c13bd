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
            let settings = encode_avif::AvifSettings::for_profile(spec.profile);
            let qindex = encode_avif::qindex_for(spec.quality, settings.quality_map);
            encode_avif_at_qindex(image, qindex, &settings)
        }
        OutputFormat::Png => {
            // Keep gray sources one (or two) channels wide: a third of the data.
            let (pixels, channels) = packed_channels(image);
            let input = encode_png::PngInput {
                pixels: &pixels,
                width: w,
                height: h,
                channels: channels as u8,
            };
            encode_png::encode(&input, spec.profile).map_err(failed)
        }
    }
}

/// AVIF at an explicit base quantiser index rather than a JPEG-like `q`: the worker's quality
/// search settles between two neighbouring `q`s, which are up to a whole libaom quantiser
/// (four qindex) apart at the top of the map (`encode_avif::qindex_for`).
pub fn encode_avif_at_qindex(
    image: &Prepared,
    qindex: u8,
    settings: &encode_avif::AvifSettings,
) -> Result<Vec<u8>, PipelineError> {
    // Gray sources keep one luma plane (4:0:0): no chroma to spend bits on.
    let (pixels, channels) = packed_channels(image);
    let input = encode_avif::AvifInput {
        pixels: &pixels,
        width: image.width,
        height: image.height,
        channels,
    };
    encode_avif::encode_at_qindex(&input, qindex, settings).map_err(|reason| {
        PipelineError::Encode {
            format: OutputFormat::Avif,
            reason,
        }
    })
}

/// The pixels as encoders that store gray compactly want them, with their channel count:
/// RGB (3) or RGBA (4) as prepared, or for a gray source gray (1) or gray + alpha (2).
fn packed_channels(image: &Prepared) -> (Cow<'_, [u8]>, usize) {
    let channels = if image.has_alpha() { 4 } else { 3 };
    if !image.is_gray() {
        return (Cow::Borrowed(image.pixels()), channels);
    }
    let keep_alpha = image.has_alpha();
    let mut gray = Vec::with_capacity(image.pixels().len() / channels * (1 + keep_alpha as usize));
    for p in image.pixels().chunks_exact(channels) {
        gray.push(p[0]);
        if keep_alpha {
            gray.push(p[3]);
        }
    }
    (Cow::Owned(gray), 1 + keep_alpha as usize)
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
