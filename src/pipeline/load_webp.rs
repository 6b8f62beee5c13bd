//! WebP loading (lossy, lossless, alpha; an animation's first frame) through libwebp.
//!
//! libwebp can rescale while decoding (`use_scaling`): rows are averaged down as they are
//! produced, so a 17 MP WebP for a thumbnail needs a buffer of about twice the target
//! size, not the full 67 MB RGBA frame.

use libwebp_sys as webp;

use super::image::{ImageState, Layout};
use super::load::{check_pixels, decode_buffer};
use super::{Limits, PipelineError, exif, first_frame};

const FORMAT: &str = "WebP";

fn corrupt(reason: impl Into<String>) -> PipelineError {
    PipelineError::Corrupt {
        format: FORMAT,
        reason: reason.into(),
    }
}

/// What the RIFF container says besides the bitstream.
#[derive(Debug, Default)]
struct Container {
    icc: Option<Vec<u8>>,
    exif: Option<Vec<u8>>,
    animated: bool,
    /// The canvas of an extended-format file (VP8X), which animation frames are drawn on.
    canvas: Option<(u32, u32)>,
    first_frame: Option<AnimationFrame>,
}

impl Container {
    /// The EXIF orientation, 1 without an EXIF chunk.
    fn orientation(&self) -> u8 {
        self.exif
            .as_deref()
            .map_or(1, |e| exif::orientation(exif::strip_exif_header(e)))
    }
}

/// The first ANMF chunk of an animation.
#[derive(Debug)]
struct AnimationFrame {
    left: u32,
    top: u32,
    width: u32,
    height: u32,
    /// The frame's own chunks (an optional ALPH, then VP8 or VP8L), which libwebp decodes
    /// as they are.
    data: std::ops::Range<usize>,
}

/// A 24-bit little-endian field of the WebP container.
fn u24(bytes: &[u8]) -> u32 {
    u32::from_le_bytes([bytes[0], bytes[1], bytes[2], 0])
}

/// Walk the RIFF chunks for ICCP, EXIF, the canvas and the first animation frame (libwebp's
/// still-image decoder ignores them).
fn read_container(data: &[u8]) -> Container {
    let mut out = Container::default();
    let mut pos = 12usize;
    while let Some(head) = data.get(pos..pos + 8) {
        let fourcc = &head[0..4];
        let len = u32::from_le_bytes([head[4], head[5], head[6], head[7]]) as usize;
        let body_start = pos + 8;
        let Some(body) = data.get(body_start..body_start.saturating_add(len)) else {
            break;
        };
        match fourcc {
            b"ICCP" => out.icc = Some(body.to_vec()),
            b"EXIF" => out.exif = Some(body.to_vec()),
            b"VP8X" if body.len() >= 10 => {
                out.canvas = Some((u24(&body[4..7]) + 1, u24(&body[7..10]) + 1));
            }
            b"ANIM" => out.animated = true,
            b"ANMF" => {
                out.animated = true;
                if out.first_frame.is_none() && body.len() > 16 {
                    out.first_frame = Some(AnimationFrame {
                        left: u24(&body[0..3]) * 2,
                        top: u24(&body[3..6]) * 2,
                        width: u24(&body[6..9]) + 1,
                        height: u24(&body[9..12]) + 1,
                        data: body_start + 16..body_start + len,
                    });
                }
            }
            _ => {}
        }
        pos = body_start + len + (len & 1);
    }
    out
}

/// An animated WebP's thumbnail is its first frame on the canvas (see `first_frame`).
fn load_first_frame(
    data: &[u8],
    container: Container,
    limits: &Limits,
) -> Result<ImageState, PipelineError> {
    let orientation = container.orientation();
    let (width, height) = container
        .canvas
        .ok_or_else(|| corrupt("animation without a canvas (VP8X) chunk"))?;
    check_pixels(width, height, limits)?;
    let frame = container
        .first_frame
        .ok_or_else(|| corrupt("animation without a frame"))?;
    check_pixels(frame.width, frame.height, limits)?;
    let bitstream = data
        .get(frame.data.clone())
        .ok_or_else(|| corrupt("truncated animation frame"))?;
    let (mut fw, mut fh) = (0i32, 0i32);
    // SAFETY: bitstream is a valid slice; libwebp only writes the two dimensions.
    if unsafe { webp::WebPGetInfo(bitstream.as_ptr(), bitstream.len(), &mut fw, &mut fh) } == 0 {
        return Err(corrupt("undecodable animation frame"));
    }
    if (fw.max(0) as u32, fh.max(0) as u32) != (frame.width, frame.height) {
        return Err(corrupt(format!(
            "animation frame is {fw}x{fh}, its header says {}x{}",
            frame.width, frame.height
        )));
    }
    let stride = frame.width as usize * 4;
    let size = stride * frame.height as usize;
    let mut rgba = decode_buffer(size, FORMAT)?;
    // SAFETY: rgba holds exactly frame.height rows of `stride` bytes, the size libwebp was
    // told; it returns NULL instead of writing past it.
    let decoded = unsafe {
        webp::WebPDecodeRGBAInto(
            bitstream.as_ptr(),
            bitstream.len(),
            rgba.as_mut_ptr(),
            size,
            stride as i32,
        )
    };
    if decoded.is_null() {
        return Err(corrupt("undecodable animation frame"));
    }
    let (layout, pixels) = first_frame::compose(
        width,
        height,
        &rgba,
        (frame.width, frame.height),
        (frame.left, frame.top),
    );
    Ok(ImageState::whole(
        width,
        height,
        layout,
        pixels,
        orientation,
        container.icc,
    ))
}

fn status_text(status: webp::VP8StatusCode) -> &'static str {
    match status {
        webp::VP8StatusCode::VP8_STATUS_OK => "ok",
        webp::VP8StatusCode::VP8_STATUS_OUT_OF_MEMORY => "out of memory",
        webp::VP8StatusCode::VP8_STATUS_INVALID_PARAM => "invalid parameter",
        webp::VP8StatusCode::VP8_STATUS_BITSTREAM_ERROR => "bitstream error",
        webp::VP8StatusCode::VP8_STATUS_UNSUPPORTED_FEATURE => "unsupported feature",
        webp::VP8StatusCode::VP8_STATUS_SUSPENDED => "suspended",
        webp::VP8StatusCode::VP8_STATUS_USER_ABORT => "aborted",
        webp::VP8StatusCode::VP8_STATUS_NOT_ENOUGH_DATA => "truncated data",
    }
}

/// Decode `data`. `floor(width, height, orientation)` gives the smallest size (stored
/// orientation) the caller can use, or `None` for a full-size decode.
pub fn load(
    data: &[u8],
    limits: &Limits,
    floor: impl FnOnce(u32, u32, u8) -> Option<(u32, u32)>,
) -> Result<ImageState, PipelineError> {
    let mut config = webp::WebPDecoderConfig::new().map_err(|_| corrupt("libwebp ABI mismatch"))?;
    // SAFETY: data is a valid slice; config.input is a plain struct libwebp fills in.
    let status = unsafe { webp::WebPGetFeatures(data.as_ptr(), data.len(), &mut config.input) };
    if status != webp::VP8StatusCode::VP8_STATUS_OK {
        return Err(corrupt(status_text(status)));
    }
    let container = read_container(data);
    if config.input.has_animation != 0 || container.animated {
        return load_first_frame(data, container, limits);
    }
    let (width, height) = (
        config.input.width.max(0) as u32,
        config.input.height.max(0) as u32,
    );
    check_pixels(width, height, limits)?;
    let orientation = container.orientation();

    let (out_w, out_h) = match floor(width, height, orientation) {
        Some((fw, fh)) => {
            let factor = (fw as f64 / width as f64).max(fh as f64 / height as f64);
            // Rescaling costs a little per row; below ~20% savings it is not worth it.
            if factor >= 0.8 {
                (width, height)
            } else {
                (
                    ((width as f64 * factor).ceil() as u32).clamp(1, width),
                    ((height as f64 * factor).ceil() as u32).clamp(1, height),
                )
            }
        }
        None => (width, height),
    };
    let has_alpha = config.input.has_alpha != 0;
    let layout = if has_alpha {
        Layout::Rgba8
    } else {
        Layout::Rgb8
    };
    let stride = out_w as usize * layout.bytes_per_pixel();
    let size = stride * out_h as usize;
    let mut pixels = decode_buffer(size, FORMAT)?;

    if (out_w, out_h) != (width, height) {
        config.options.use_scaling = 1;
        config.options.scaled_width = out_w as i32;
        config.options.scaled_height = out_h as i32;
    }
    config.output.colorspace = if has_alpha {
        webp::WEBP_CSP_MODE::MODE_RGBA
    } else {
        webp::WEBP_CSP_MODE::MODE_RGB
    };
    config.output.is_external_memory = 1;
    config.output.u.RGBA = webp::WebPRGBABuffer {
        rgba: pixels.as_mut_ptr(),
        stride: stride as i32,
        size,
    };
    // SAFETY: config describes our buffer of exactly `size` bytes with `stride`; libwebp
    // writes only inside it. With external memory WebPFreeDecBuffer frees nothing of ours.
    let status = unsafe { webp::WebPDecode(data.as_ptr(), data.len(), &mut config) };
    // SAFETY: releases any internal memory libwebp attached to the output buffer.
    unsafe { webp::WebPFreeDecBuffer(&mut config.output) };
    if status != webp::VP8StatusCode::VP8_STATUS_OK {
        return Err(corrupt(status_text(status)));
    }
    Ok(ImageState {
        width: out_w,
        height: out_h,
        layout,
        data: pixels,
        full_size: (width, height),
        // libwebp's rescaler maps the whole source onto the output: no padding.
        content: [0.0, 0.0, out_w as f64, out_h as f64],
        orientation,
        icc: container.icc,
        cmyk_inverted: false,
    })
}
