//! Resize step: one SIMD convolution pass (fast_image_resize) from whatever the loader
//! produced to the planned size, with the centre crop folded into the same pass.
//!
//! Alpha is premultiplied for the convolution (fast_image_resize's `mul_div_alpha`), so
//! transparent pixels do not bleed their colour into visible edges.

use fast_image_resize::images::{Image, ImageRef};
use fast_image_resize::{FilterType, MulDiv, PixelType, ResizeAlg, ResizeOptions, Resizer};

use crate::geometry::Plan;

use super::PipelineError;
use super::image::{ImageState, Layout, displayed_rect, oriented_size, stored_rect};

/// The resampling filter. Lanczos3 scored best in SSIMULACRA2 against a full-decode
/// Lanczos reference (docs/benchmarks.md); it costs little more than Catmull-Rom at
/// thumbnail sizes because shrink-on-load already did the bulk of the reduction.
pub const FILTER: FilterType = FilterType::Lanczos3;
/// [`FILTER`]'s radius in output pixels (fast_image_resize's support for Lanczos3).
pub const FILTER_SUPPORT: f64 = 3.0;

/// Only reachable through a bug (a buffer that does not match its size); reported like an
/// undecodable source so one bad image cannot take the service down.
pub(super) fn internal(reason: String) -> PipelineError {
    PipelineError::Corrupt {
        format: "image",
        reason: format!("internal: {reason}"),
    }
}

pub(super) fn pixel_type(layout: Layout) -> Result<PixelType, PipelineError> {
    match layout {
        Layout::Gray8 => Ok(PixelType::U8),
        Layout::GrayAlpha8 => Ok(PixelType::U8x2),
        Layout::Rgb8 => Ok(PixelType::U8x3),
        // CMYK only if a loader handed it over unconverted (the JPEG loader converts it
        // before resizing; `colour::CmykToRgb`): then it is resized as four plain channels.
        Layout::Rgba8 | Layout::Cmyk8 => Ok(PixelType::U8x4),
        other => Err(internal(format!(
            "resize got {other:?}; 16-bit samples must be narrowed first"
        ))),
    }
}

/// Where the output's samples come from: `rect` (`[x0, y0, x1, y1]`) of the stored buffer
/// resampled to `out` pixels, both in stored orientation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampling {
    pub rect: [f64; 4],
    pub out: (u32, u32),
}

/// Map `plan` (full-size, displayed coordinates) onto a `width`×`height` stored buffer whose
/// `content` rectangle shows the whole source and which still needs EXIF `orientation`.
pub fn sampling(
    width: u32,
    height: u32,
    content: [f64; 4],
    orientation: u8,
    plan: &Plan,
) -> Sampling {
    let (rw, rh) = plan.resize;
    let (out_w, out_h) = plan.output();
    let (shown_w, shown_h) = oriented_size(width, height, orientation);
    let [x0, y0, x1, y1] = displayed_rect(content, width, height, orientation);
    // Buffer pixels per resized pixel; the content rectangle is what `plan.resize` covers.
    let (sx, sy) = ((x1 - x0) / rw as f64, (y1 - y0) / rh as f64);
    let (left, top) = plan.crop.map_or((x0, y0), |c| {
        (x0 + c.left as f64 * sx, y0 + c.top as f64 * sy)
    });
    let (crop_w, crop_h) = (
        (out_w as f64 * sx).min(shown_w as f64 - left),
        (out_h as f64 * sy).min(shown_h as f64 - top),
    );
    let rect = stored_rect(
        [left, top, left + crop_w, top + crop_h],
        width,
        height,
        orientation,
    );
    Sampling {
        // Whole-pixel crops come out of the float maths with noise in the last bits;
        // snapping keeps them on the copy-only path instead of resampling by ~1.0.
        rect: rect.map(snap),
        out: oriented_size(out_w, out_h, orientation),
    }
}

impl Sampling {
    /// Whether the output is a whole-pixel part of the buffer at its own size: a copy (or
    /// nothing at all), no filtering.
    pub fn is_plain_copy(&self) -> bool {
        let [x0, y0, x1, y1] = self.rect;
        self.rect.iter().all(|v| v.fract() == 0.0)
            && (x1 - x0, y1 - y0) == (self.out.0 as f64, self.out.1 as f64)
    }
}

fn snap(v: f64) -> f64 {
    if (v - v.round()).abs() < 1e-6 {
        v.round()
    } else {
        v
    }
}

/// Resize (and crop) `image` as `plan` says. `plan` is in full-size, displayed
/// coordinates; `image` may be a reduced decode of that, still in stored orientation: the
/// crop is mapped back to the stored buffer and the output keeps the stored orientation,
/// for the orient step to turn afterwards.
/// The resize step of [`super::STEPS`]: 16-bit narrowed to 8, then resized and cropped to
/// the plan; nothing to do when the load step resized the rows as they were decoded.
pub(crate) fn step(work: &mut super::Work) -> Result<(), PipelineError> {
    if work.resized {
        return Ok(());
    }
    let params = work.params;
    let image = work.image()?;
    super::colour::narrow_16_to_8(image);
    // Planned on the displayed size; the resize samples the stored buffer, so the orient
    // step after it turns thumbnail pixels rather than the decode.
    let (full_w, full_h) = image.full_size;
    let plan = super::load::resize_plan(full_w, full_h, image.orientation, params);
    resize(image, &plan)
}

pub fn resize(image: &mut ImageState, plan: &Plan) -> Result<(), PipelineError> {
    let (w, h) = (image.width, image.height);
    let sampled = sampling(w, h, image.content, image.orientation, plan);
    let Sampling {
        rect: [left, top, right, bottom],
        out: (out_w, out_h),
    } = sampled;
    if sampled.is_plain_copy() {
        if (left, top, out_w, out_h) == (0.0, 0.0, w, h) {
            return Ok(()); // already the right size (e.g. `1l` on a small source)
        }
        // Only a crop: copy the rows, no resampling.
        let bpp = image.layout.bytes_per_pixel();
        let (l, t) = (left as usize, top as usize);
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
    // Premultiply in place: the decode is ours to overwrite, whereas fast_image_resize's
    // `use_alpha` premultiplies into a fresh copy of the whole source (12 MB of new pages,
    // ~6 ms of page faults, for a 3 MP RGBA PNG).
    let alpha = image.layout.has_alpha();
    let mul_div = MulDiv::default();
    if alpha {
        let mut src = Image::from_slice_u8(w, h, &mut image.data, pixel_type)
            .map_err(|e| internal(format!("resize source: {e}")))?;
        mul_div
            .multiply_alpha_inplace(&mut src)
            .map_err(|e| internal(format!("premultiply: {e}")))?;
    }
    let src = ImageRef::new(w, h, &image.data, pixel_type)
        .map_err(|e| internal(format!("resize source: {e}")))?;
    let mut dst = Image::new(out_w, out_h, pixel_type);
    let options = ResizeOptions::new()
        .resize_alg(ResizeAlg::Convolution(FILTER))
        .crop(left, top, right - left, bottom - top)
        .use_alpha(false);
    Resizer::new()
        .resize(&src, &mut dst, &options)
        .map_err(|e| internal(format!("resize: {e}")))?;
    if alpha {
        mul_div
            .divide_alpha_inplace(&mut dst)
            .map_err(|e| internal(format!("unpremultiply: {e}")))?;
    }
    image.data = dst.into_vec();
    image.width = out_w;
    image.height = out_h;
    image.content = [0.0, 0.0, out_w as f64, out_h as f64];
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::geometry;
    use crate::pipeline::orient::orient;
    use crate::variant::Params;

    /// An RGB pattern that differs along both axes and has detail a thumbnail keeps
    /// (periods of ~20 px), so a wrong flip, transpose or sub-pixel shift shows.
    fn pattern(width: u32, height: u32, orientation: u8) -> ImageState {
        let mut data = Vec::with_capacity((width * height * 3) as usize);
        for y in 0..height {
            for x in 0..width {
                let (fx, fy) = (x as f64 / width as f64, y as f64 / height as f64);
                data.push((255.0 * fx) as u8);
                data.push((255.0 * fy) as u8);
                data.push((127.0 + 120.0 * (x as f64 / 3.0).sin() * (y as f64 / 3.5).cos()) as u8);
            }
        }
        ImageState {
            width,
            height,
            layout: Layout::Rgb8,
            data,
            full_size: (width * 4, height * 4),
            // A reduced decode padded by a fraction of a pixel on the stored right/bottom.
            content: [0.0, 0.0, width as f64 - 0.625, height as f64 - 0.875],
            orientation,
            icc: None,
            cmyk_inverted: false,
        }
    }

    /// Transparent pixels carry colour too (here green); premultiplying keeps it out of the
    /// visible pixels next to them, and the un-premultiplied result is straight alpha again.
    #[test]
    fn transparent_colour_does_not_bleed_into_visible_pixels() {
        let (w, h) = (64u32, 16u32);
        let mut data = Vec::with_capacity((w * h * 4) as usize);
        for _y in 0..h {
            for x in 0..w {
                // Opaque red stripes 4 px wide, separated by fully transparent green.
                if (x / 4) % 2 == 0 {
                    data.extend_from_slice(&[255, 0, 0, 255]);
                } else {
                    data.extend_from_slice(&[0, 255, 0, 0]);
                }
            }
        }
        let mut image = ImageState {
            width: w,
            height: h,
            layout: Layout::Rgba8,
            data,
            full_size: (w, h),
            content: [0.0, 0.0, w as f64, h as f64],
            orientation: 1,
            icc: None,
            cmyk_inverted: false,
        };
        let params: Params = "24w".parse().expect("params");
        resize(&mut image, &geometry::plan(w, h, &params)).expect("resize");
        assert_eq!((image.width, image.height), (24, 6));
        let mut partly_visible = 0;
        for px in image.data.chunks_exact(4) {
            if px[3] >= 16 {
                partly_visible += 1;
                assert!(px[1] <= 8, "green bled into a visible pixel: {px:?}");
                assert!(px[0] >= 240, "visible pixels stay red: {px:?}");
            }
        }
        assert!(partly_visible > 0);
    }

    /// Resizing in stored orientation and turning the thumbnail afterwards must give the
    /// picture of turning the decode first: same size, same pixels up to rounding.
    #[test]
    fn resize_then_orient_matches_orient_then_resize() {
        for params in ["60w_40h_1e_1c", "50w", "70w_70h", "30h_2e"] {
            let params: Params = params.parse().expect("params");
            for orientation in 1..=8 {
                let source = pattern(203, 131, orientation);
                let (fw, fh) = source.full_size;
                let (shown_w, shown_h) = oriented_size(fw, fh, orientation);
                let plan = geometry::plan(shown_w, shown_h, &params);

                let mut turned_first = source.clone();
                orient(&mut turned_first);
                resize(&mut turned_first, &plan).expect("resize");

                let mut turned_last = source;
                resize(&mut turned_last, &plan).expect("resize");
                orient(&mut turned_last);

                let what = format!("{params:?} orientation {orientation}");
                assert_eq!(
                    (turned_last.width, turned_last.height),
                    plan.output(),
                    "{what}"
                );
                assert_eq!(
                    (turned_first.width, turned_first.height),
                    plan.output(),
                    "{what}"
                );
                let worst = turned_first
                    .data
                    .iter()
                    .zip(&turned_last.data)
                    .map(|(a, b)| a.abs_diff(*b))
                    .max()
                    .unwrap_or(0);
                assert!(worst <= 2, "{what}: pixels differ by up to {worst}");
            }
        }
    }
}
