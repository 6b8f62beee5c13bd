//! Load step: sniff the format from magic bytes, check the limits from the header, decode
//! (shrinking on load where the format allows).

use crate::geometry;
use crate::variant::{OutputFormat, Params};

use super::image::{ImageState, oriented_size};
use super::{Deadline, Limits, PipelineError, load_gif, load_jpeg, load_png, load_webp};

/// Shrink-on-load stops once the decoded image would drop below this multiple of the
/// resize target on either side, so the final Lanczos step always has at least 2× to work
/// with; that is what keeps quality at or above a full decode + resize (see
/// docs/benchmarks.md for the SSIMULACRA2 measurements that picked it).
pub const SHRINK_MARGIN: u32 = 2;

/// Source formats we decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceFormat {
    Jpeg,
    Png,
    Webp,
    Gif,
}

impl SourceFormat {
    /// Output format when the URL names none: the same, except GIF (we do not encode it),
    /// which becomes PNG to keep transparency and sharp edges.
    pub fn default_output(self) -> OutputFormat {
        match self {
            SourceFormat::Jpeg => OutputFormat::Jpeg,
            SourceFormat::Png | SourceFormat::Gif => OutputFormat::Png,
            SourceFormat::Webp => OutputFormat::Webp,
        }
    }
}

/// Identify the format by magic bytes; file names and Content-Type headers lie.
pub fn sniff(data: &[u8]) -> Result<SourceFormat, PipelineError> {
    if data.starts_with(&[0xFF, 0xD8, 0xFF]) {
        Ok(SourceFormat::Jpeg)
    } else if data.starts_with(b"\x89PNG\r\n\x1a\n") {
        Ok(SourceFormat::Png)
    } else if data.len() >= 12 && &data[0..4] == b"RIFF" && &data[8..12] == b"WEBP" {
        Ok(SourceFormat::Webp)
    } else if data.starts_with(b"GIF87a") || data.starts_with(b"GIF89a") {
        Ok(SourceFormat::Gif)
    } else {
        let what = if data.len() >= 12 && &data[4..8] == b"ftyp" {
            "AVIF/HEIF"
        } else if data.starts_with(b"II*\0") || data.starts_with(b"MM\0*") {
            "TIFF"
        } else if data.starts_with(b"BM") {
            "BMP"
        } else if data.is_empty() {
            "empty file"
        } else {
            "unrecognised data"
        };
        Err(PipelineError::UnsupportedFormat(what.to_string()))
    }
}

pub fn check_bytes(data: &[u8], limits: &Limits) -> Result<(), PipelineError> {
    if data.len() as u64 > limits.max_bytes {
        return Err(PipelineError::TooManyBytes {
            actual: data.len() as u64,
            limit: limits.max_bytes,
        });
    }
    Ok(())
}

/// A zeroed decode buffer of `len` bytes, or [`PipelineError::OutOfMemory`] when the
/// allocation fails: the pixel limit bounds `len`, but a small Lambda may still not have
/// it, and that is the machine's fault, not the source's (another try may succeed).
pub fn decode_buffer(len: usize, format: &'static str) -> Result<Vec<u8>, PipelineError> {
    let mut buffer = Vec::new();
    buffer
        .try_reserve_exact(len)
        .map_err(|_| PipelineError::OutOfMemory {
            what: format,
            bytes: len,
        })?;
    buffer.resize(len, 0);
    Ok(buffer)
}

/// Refuse a source whose header claims more pixels than allowed, before any allocation.
pub fn check_pixels(width: u32, height: u32, limits: &Limits) -> Result<(), PipelineError> {
    let pixels = width as u64 * height as u64;
    if pixels > limits.max_pixels {
        return Err(PipelineError::TooManyPixels {
            width,
            height,
            pixels,
            limit: limits.max_pixels,
        });
    }
    if width == 0 || height == 0 {
        return Err(PipelineError::Corrupt {
            format: "image",
            reason: format!("zero dimension in header ({width}x{height})"),
        });
    }
    Ok(())
}

/// The smallest decoded size (stored orientation) shrink-on-load may produce for a source
/// of `width`×`height` stored with EXIF `orientation`, keeping `margin` times the resize
/// target on either side.
pub fn shrink_floor(
    width: u32,
    height: u32,
    orientation: u8,
    params: &Params,
    margin: u32,
) -> (u32, u32) {
    let plan = resize_plan(width, height, orientation, params);
    let need = |side: u32| side.saturating_mul(margin);
    let (fw, fh) = (need(plan.resize.0), need(plan.resize.1));
    // Back to stored orientation.
    let (sw, sh) = oriented_size(fw, fh, orientation);
    (sw.min(width), sh.min(height))
}

/// Whether to shrink on load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decode {
    /// Decode no larger than needed for `params`, but no smaller than `margin` times the
    /// output on either side ([`SHRINK_MARGIN`] at the edge, twice that in the worker:
    /// `Profile::shrink_margin`).
    Shrink { margin: u32 },
    /// Full-resolution decode (the quality reference).
    Full,
}

impl Decode {
    /// Whether CMYK is converted to sRGB as it is decoded, before the resize, rather than
    /// on the thumbnail. Converting first is the faithful order (the conversion is far from
    /// linear: 95.7 against 91.8 SSIMULACRA2 on the kit's CMYK photo, against a
    /// full-resolution conversion) but costs ~28 ns for every decoded pixel (+225 ms at
    /// 1024 px from 8 MP). The edge's decode ([`SHRINK_MARGIN`]) keeps the fast order for
    /// its short-lived copy; the worker's wider margin and the full-resolution reference
    /// convert first.
    pub fn cmyk_before_resize(self) -> bool {
        match self {
            Decode::Shrink { margin } => margin > SHRINK_MARGIN,
            Decode::Full => true,
        }
    }
}

/// The resize plan (displayed coordinates) for a source stored as `width`×`height` with
/// EXIF `orientation`.
pub fn resize_plan(width: u32, height: u32, orientation: u8, params: &Params) -> geometry::Plan {
    let (shown_w, shown_h) = oriented_size(width, height, orientation);
    geometry::plan(shown_w, shown_h, params)
}

/// How far loading took the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Decoded (possibly reduced); the resize step runs next.
    Decoded,
    /// Decoded and resized as the rows came (`resize_rows`): the resize step is done.
    Resized,
}

/// The load step of [`super::STEPS`]: the image state every later step works on.
pub(crate) fn step(work: &mut super::Work) -> Result<(), PipelineError> {
    let (format, image, stage, full_resolution) = load(
        work.source,
        work.params,
        work.limits,
        work.decode,
        &work.deadline,
    )?;
    work.format = Some(format);
    work.image = Some(image);
    work.resized = stage == Stage::Resized;
    work.full_resolution = full_resolution;
    Ok(())
}

/// Decode `data`; the result's size is the full size or a reduced one (never below
/// [`shrink_floor`]), or, for JPEG and 8-bit PNG, already the planned output size
/// ([`Stage::Resized`]); the flag is true when the source was decoded at full resolution.
pub fn load(
    data: &[u8],
    params: &Params,
    limits: &Limits,
    mode: Decode,
    deadline: &Deadline,
) -> Result<(SourceFormat, ImageState, Stage, bool), PipelineError> {
    check_bytes(data, limits)?;
    let format = sniff(data)?;
    let floor = |w: u32, h: u32, orientation: u8| match mode {
        Decode::Shrink { margin } => Some(shrink_floor(w, h, orientation, params, margin)),
        Decode::Full => None,
    };
    let decoded = |image| (image, Stage::Decoded);
    let plan = |w, h, orientation| resize_plan(w, h, orientation, params);
    // Whether the decode was reduced (JPEG DCT scaling, WebP scaled decoding); PNG and GIF
    // always decode in full.
    let reduced = std::cell::Cell::new(false);
    let (image, stage) = match format {
        SourceFormat::Jpeg => load_jpeg::load(
            data,
            limits,
            |hdr| {
                let f = floor(hdr.width, hdr.height, hdr.orientation);
                if let Some(f) = f {
                    reduced.set(load_jpeg::choose_scale_denom(hdr.width, hdr.height, f) > 1);
                }
                f
            },
            |hdr| plan(hdr.width, hdr.height, hdr.orientation),
            mode.cmyk_before_resize(),
            deadline,
        )?,
        SourceFormat::Png => load_png::load(data, limits, plan, deadline)?,
        SourceFormat::Webp => {
            let full = std::cell::Cell::new((0, 0));
            let image = load_webp::load(data, limits, |w, h, orientation| {
                full.set((w, h));
                floor(w, h, orientation)
            })?;
            let (w, h) = full.get();
            // Animated files take the first-frame path, which never asks (and never scales).
            reduced.set(w > 0 && (image.width < w || image.height < h));
            decoded(image)
        }
        SourceFormat::Gif => decoded(load_gif::load(data, limits)?),
    };
    Ok((format, image, stage, !reduced.get()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buffer_the_machine_cannot_give_is_out_of_memory_not_corrupt() {
        match decode_buffer(isize::MAX as usize, "JPEG") {
            Err(PipelineError::OutOfMemory { what, bytes }) => {
                assert_eq!(what, "JPEG");
                assert_eq!(bytes, isize::MAX as usize);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(decode_buffer(12, "PNG").unwrap(), vec![0; 12]);
    }
}
