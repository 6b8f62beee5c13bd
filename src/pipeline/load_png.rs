//! PNG loading (8/16-bit, palette, gray, alpha, interlaced; APNG gives its default image).
//!
//! PNG has no reduced-resolution decode, so every row is decoded; 8-bit non-interlaced
//! rows go straight into the streaming resize, others into a whole-image buffer. The
//! header is checked against the pixel limit before anything is allocated, which is what
//! defeats decompression bombs (a tiny file claiming 100000×100000).

use std::io::Cursor;

use super::image::{ImageState, Layout};
use super::load::{Stage, check_pixels};
use super::resize_rows::RowResizer;
use super::{Deadline, Limits, PipelineError, exif, resize};
use crate::geometry::Plan;

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

/// Decode `data`. `plan` is the resize to run on the rows as they are decoded (8-bit,
/// non-interlaced images: see `resize_rows`); the result is then [`Stage::Resized`].
pub fn load(
    data: &[u8],
    limits: &Limits,
    plan: impl FnOnce(u32, u32, u8) -> Plan,
    deadline: &Deadline,
) -> Result<(ImageState, Stage), PipelineError> {
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
    let interlaced = info.interlaced;
    let whole = |w, h| [0.0, 0.0, w as f64, h as f64];
    let state = |w, h, data| ImageState {
        width: w,
        height: h,
        layout,
        data,
        full_size: (width, height),
        content: whole(w, h),
        orientation,
        icc,
        cmyk_inverted: false,
    };
    let plan = plan(width, height, orientation);
    let sampling = resize::sampling(width, height, whole(width, height), orientation, &plan);
    // Adam7 delivers rows out of order, so interlaced files decode whole.
    let streamed = if interlaced {
        None
    } else {
        RowResizer::new(width, height, layout, &sampling)?
    };
    if let Some(mut rows) = streamed {
        for y in 0..height {
            if y % super::deadline::ROWS_PER_CHECK == 0 {
                deadline.check("load")?;
            }
            let row = rows.rows_mut(1);
            if reader.read_row(row).map_err(corrupt)?.is_none() {
                return Err(corrupt("image data ended early"));
            }
            rows.commit(1)?;
        }
        let (data, out_w, out_h) = rows.finish()?;
        return Ok((state(out_w, out_h, data), Stage::Resized));
    }
    let mut pixels = super::load::decode_buffer(size, FORMAT)?;
    reader.next_frame(&mut pixels).map_err(corrupt)?;
    Ok((state(width, height, pixels), Stage::Decoded))
}
