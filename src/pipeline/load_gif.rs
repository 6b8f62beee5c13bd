//! GIF loading: the first frame on the logical screen (see `first_frame`).

use std::io::Cursor;
use std::num::NonZeroU64;

use super::image::ImageState;
use super::load::check_pixels;
use super::{Limits, PipelineError, first_frame};

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

    if frame.buffer.len() < frame.width as usize * frame.height as usize * 4 {
        return Err(corrupt("short frame"));
    }
    let (layout, pixels) = first_frame::compose(
        width,
        height,
        &frame.buffer,
        (frame.width as u32, frame.height as u32),
        (frame.left as u32, frame.top as u32),
    );
    Ok(ImageState::whole(width, height, layout, pixels, 1, None))
}
