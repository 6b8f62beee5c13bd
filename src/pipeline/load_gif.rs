//! GIF loading: the first frame, composited onto the logical screen (transparent
//! background), as a thumbnail of an animation shows its first frame.

use std::io::Cursor;
use std::num::NonZeroU64;

use super::image::{ImageState, Layout};
use super::load::check_pixels;
use super::{Limits, PipelineError};

const FORMAT: &str = "GIF";

fn corrupt(err: impl std::fmt::Display) -> PipelineError {
    PipelineError::Corrupt {
        format: FORMAT,
        reason: err.to_string(),
    }
}

pub fn load(data: &[u8], limits: &Limits) -> Result<ImageState, PipelineError> {
    let mut options = gif::DecodeOptions::new();
    options.set_color_output(gif::ColorOutput::RGBA);
    let frame_budget = limits.max_pixels.saturating_mul(4).max(4);
    options.set_memory_limit(gif::MemoryLimit::Bytes(
        NonZeroU64::new(frame_budget).unwrap_or(NonZeroU64::MIN),
    ));
    let mut decoder = options.read_info(Cursor::new(data)).map_err(corrupt)?;
    let (width, height) = (decoder.width() as u32, decoder.height() as u32);
    check_pixels(width, height, limits)?;
    let frame = decoder
        .read_next_frame()
        .map_err(corrupt)?
        .ok_or_else(|| corrupt("no image frame"))?;

    let (fw, fh) = (frame.width as usize, frame.height as usize);
    let (left, top) = (frame.left as usize, frame.top as usize);
    if frame.buffer.len() < fw * fh * 4 {
        return Err(corrupt("short frame"));
    }
    let (w, h) = (width as usize, height as usize);
    let mut canvas = vec![0u8; w * h * 4];
    let mut opaque = true;
    // Frames may stick out of the logical screen, or lie wholly outside it; clip them as
    // browsers do (nothing of such a frame is drawn).
    let cols = fw.min(w.saturating_sub(left));
    let rows = fh.min(h.saturating_sub(top));
    if cols > 0 {
        for y in 0..rows {
            let src = &frame.buffer[y * fw * 4..(y + 1) * fw * 4];
            let dst_start = ((top + y) * w + left) * 4;
            canvas[dst_start..dst_start + cols * 4].copy_from_slice(&src[..cols * 4]);
        }
    }
    if fw < w || fh < h || left > 0 || top > 0 {
        opaque = false; // uncovered screen areas are transparent
    }
    if opaque {
        opaque = canvas.chunks_exact(4).all(|p| p[3] == 255);
    }
    // Most GIFs have no transparency; dropping the alpha channel then keeps PNG/WebP
    // outputs opaque and smaller.
    let (layout, pixels) = if opaque {
        let rgb = canvas
            .chunks_exact(4)
            .flat_map(|p| [p[0], p[1], p[2]])
            .collect();
        (Layout::Rgb8, rgb)
    } else {
        (Layout::Rgba8, canvas)
    };
    Ok(ImageState {
        width,
        height,
        layout,
        data: pixels,
        full_size: (width, height),
        content: [0.0, 0.0, width as f64, height as f64],
        orientation: 1,
        icc: None,
        cmyk_inverted: false,
    })
}
