//! Resize step: one SIMD convolution pass (fast_image_resize) from whatever the loader
//! produced to the planned size, with the centre crop folded into the same pass.
//!
//! Alpha is premultiplied for the convolution (fast_image_resize's `mul_div_alpha`), so
//! transparent pixels do not bleed their colour into visible edges.

use fast_image_resize::images::ImageRef;
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};

use crate::geometry::Plan;

use super::PipelineError;
use super::image::{ImageState, Layout};

/// The resampling filter. Lanczos3 scored best in SSIMULACRA2 against a full-decode
/// Lanczos reference (docs/benchmarks.md); it costs little more than Catmull-Rom at
/// thumbnail sizes because shrink-on-load already did the bulk of the reduction.
pub const FILTER: FilterType = FilterType::Lanczos3;

/// Only reachable through a bug (a buffer that does not match its size); reported like an
/// undecodable source so one bad image cannot take the service down.
fn internal(reason: String) -> PipelineError {
    PipelineError::Corrupt {
        format: "image",
        reason: format!("internal: {reason}"),
    }
}

fn pixel_type(layout: Layout) -> Result<PixelType, PipelineError> {
    match layout {
        Layout::Gray8 => Ok(PixelType::U8),
        Layout::GrayAlpha8 => Ok(PixelType::U8x2),
        Layout::Rgb8 => Ok(PixelType::U8x3),
        // CMYK is resized in device space (no alpha); the colour step converts afterwards.
        Layout::Rgba8 | Layout::Cmyk8 => Ok(PixelType::U8x4),
        other => Err(internal(format!(
            "resize got {other:?}; 16-bit samples must be narrowed first"
        ))),
    }
}

/// Resize (and crop) `image` as `plan` says. `plan` is in full-size, displayed
/// coordinates; `image` may be a reduced decode of that, already oriented.
pub fn resize(image: &mut ImageState, plan: &Plan) -> Result<(), PipelineError> {
    let (rw, rh) = plan.resize;
    let (out_w, out_h) = plan.output();
    let (w, h) = (image.width, image.height);
    let [x0, y0, x1, y1] = image.content;
    // Buffer pixels per resized pixel; the content rectangle is what `plan.resize` covers.
    let (sx, sy) = ((x1 - x0) / rw as f64, (y1 - y0) / rh as f64);
    let (left, top) = plan.crop.map_or((x0, y0), |c| {
        (x0 + c.left as f64 * sx, y0 + c.top as f64 * sy)
    });
    let (crop_w, crop_h) = (out_w as f64 * sx, out_h as f64 * sy);
    let whole = image.content == [0.0, 0.0, w as f64, h as f64];

    if whole && (w, h) == (out_w, out_h) {
        return Ok(()); // already the right size (e.g. `1l` on a small source)
    }
    let bpp = image.layout.bytes_per_pixel();
    if whole && (w, h) == (rw, rh) {
        // Only a crop: copy the rows, no resampling.
        let (l, t) = (left.round() as usize, top.round() as usize);
        let mut out = Vec::with_capacity(out_w as usize * out_h as usize * bpp);
        for y in t..t + out_h as usize {
            let row = &image.data[(y * w as usize + l) * bpp..];
            out.extend_from_slice(&row[..out_w as usize * bpp]);
        }
        image.data = out;
        image.width = out_w;
        image.height = out_h;
        image.content = [0.0, 0.0, out_w as f64, out_h as f64];
        return Ok(());
    }

    let pixel_type = pixel_type(image.layout)?;
    let src = ImageRef::new(w, h, &image.data, pixel_type)
        .map_err(|e| internal(format!("resize source: {e}")))?;
    let mut dst = fast_image_resize::images::Image::new(out_w, out_h, pixel_type);
    let options = ResizeOptions::new()
        .resize_alg(ResizeAlg::Convolution(FILTER))
        .crop(
            left,
            top,
            crop_w.min(w as f64 - left),
            crop_h.min(h as f64 - top),
        )
        .use_alpha(image.layout.has_alpha());
    Resizer::new()
        .resize(&src, &mut dst, &options)
        .map_err(|e| internal(format!("resize: {e}")))?;
    image.data = dst.into_vec();
    image.width = out_w;
    image.height = out_h;
    image.content = [0.0, 0.0, out_w as f64, out_h as f64];
    Ok(())
}
