//! PNG loading (8/16-bit, palette, gray, alpha, interlaced; APNG gives its default image).
//!
//! PNG has no reduced-resolution decode, so the full image is decoded; the header is
//! checked against the pixel limit before the buffer is allocated, which is what defeats
//! decompression bombs (a tiny file claiming 100000×100000).

use std::io::Cursor;

use super::image::{ImageState, Layout};
use super::load::check_pixels;
use super::{Limits, PipelineError, exif};

const FORMAT: &str = "PNG";

/// Budget for the decoder's own allocations (metadata chunks, row buffers); the pixel
/// buffer is ours and bounded by the pixel limit.
const METADATA_BUDGET: usize = 16 << 20;

fn corrupt(err: impl std::fmt::Display) -> PipelineError {
    PipelineError::Corrupt {
        format: FORMAT,
        reason: err.to_string(),
    }
}

pub fn load(data: &[u8], limits: &Limits) -> Result<ImageState, PipelineError> {
    let mut decoder = png::Decoder::new_with_limits(
        Cursor::new(data),
        png::Limits {
            bytes: METADATA_BUDGET,
        },
    );
    // Palette → RGB(A), tRNS → alpha, 1/2/4-bit gray → 8-bit; 16-bit stays 16-bit for the
    // colour step.
    decoder.set_transformations(png::Transformations::EXPAND);
    decoder.set_ignore_text_chunk(true);
    let header = decoder.read_header_info().map_err(corrupt)?;
    check_pixels(header.width, header.height, limits)?;
    let mut reader = decoder.read_info().map_err(corrupt)?;
    let (color, depth) = reader.output_color_type();
    let layout = match (color, depth) {
        (png::ColorType::Grayscale, png::BitDepth::Sixteen) => Layout::Gray16,
        (png::ColorType::Grayscale, _) => Layout::Gray8,
        (png::ColorType::GrayscaleAlpha, png::BitDepth::Sixteen) => Layout::GrayAlpha16,
        (png::ColorType::GrayscaleAlpha, _) => Layout::GrayAlpha8,
        (png::ColorType::Rgb, png::BitDepth::Sixteen) => Layout::Rgb16,
        (png::ColorType::Rgb, _) => Layout::Rgb8,
        (png::ColorType::Rgba, png::BitDepth::Sixteen) => Layout::Rgba16,
        (png::ColorType::Rgba, _) => Layout::Rgba8,
        (png::ColorType::Indexed, _) => return Err(corrupt("palette not expanded")),
    };
    let info = reader.info();
    let (width, height) = (info.width, info.height);
    let icc = info.icc_profile.as_ref().map(|p| p.to_vec());
    let orientation = info
        .exif_metadata
        .as_ref()
        .map_or(1, |e| exif::orientation(exif::strip_exif_header(e)));
    let size = reader
        .output_buffer_size()
        .ok_or_else(|| corrupt("image too large"))?;
    let expected = width as usize * height as usize * layout.bytes_per_pixel();
    if size != expected {
        return Err(corrupt("unexpected output buffer size"));
    }
    let mut pixels = Vec::new();
    pixels
        .try_reserve_exact(size)
        .map_err(|_| corrupt("cannot allocate the decode buffer"))?;
    pixels.resize(size, 0);
    reader.next_frame(&mut pixels).map_err(corrupt)?;
    Ok(ImageState {
        width,
        height,
        layout,
        data: pixels,
        full_size: (width, height),
        content: [0.0, 0.0, width as f64, height as f64],
        orientation,
        icc,
        cmyk_inverted: false,
    })
}
