//! Lossy WebP encoding with libwebp's advanced API (with alpha).
//!
//! - `fast`: method 4, libwebp's default speed/size trade-off (what sharp uses), or 5 for
//!   small outputs (see [`SMALL_OUTPUT_PIXELS`]).
//! - `best`: method 6 and sharp-YUV RGB→YUV conversion (crisper colour edges), for the
//!   worker, which encodes once and serves many times.
//!
//! The output is a bare VP8/VP8X+ALPH file: no EXIF, XMP or ICC chunks.

use libwebp_sys as webp;

use super::Profile;

/// Up to this many output pixels (256×256) the `fast` profile encodes with method 5: at
/// thumbnail sizes it costs well under a millisecond more than method 4 and is 2–3 %
/// smaller at the same `q` (`cwebp` on the kit's twelve 200 px thumbnails: 61.8 vs 63.4 KB,
/// SSIMULACRA2 mean 76.3 vs 76.6; at 1024 px it would add ~10 ms, so bigger outputs keep
/// method 4).
pub const SMALL_OUTPUT_PIXELS: u64 = 256 * 256;

/// Owns a WebPPicture and a memory writer; frees both on every path.
struct Encoding {
    picture: webp::WebPPicture,
    writer: webp::WebPMemoryWriter,
}

impl Drop for Encoding {
    fn drop(&mut self) {
        // SAFETY: both were initialised by libwebp; freeing them is valid in any state.
        unsafe {
            webp::WebPPictureFree(&mut self.picture);
            webp::WebPMemoryWriterClear(&mut self.writer);
        }
    }
}

fn error_text(code: webp::WebPEncodingError) -> String {
    format!("libwebp: {code:?}")
}

pub fn encode(
    pixels: &[u8],
    width: u32,
    height: u32,
    has_alpha: bool,
    quality: u8,
    profile: Profile,
) -> Result<Vec<u8>, String> {
    let channels = if has_alpha { 4 } else { 3 };
    let stride = width as usize * channels;
    if pixels.len() < stride * height as usize {
        return Err("pixel buffer too small".to_string());
    }
    let mut config = webp::WebPConfig::new().map_err(|_| "libwebp ABI mismatch".to_string())?;
    config.quality = quality.clamp(1, 100) as f32;
    config.alpha_quality = 100;
    match profile {
        Profile::Fast if u64::from(width) * u64::from(height) <= SMALL_OUTPUT_PIXELS => {
            config.method = 5
        }
        Profile::Fast => config.method = 4,
        Profile::Best => {
            config.method = 6;
            config.use_sharp_yuv = 1;
        }
    }
    // SAFETY: config was initialised by WebPConfigInit.
    if unsafe { webp::WebPValidateConfig(&config) } == 0 {
        return Err("invalid libwebp configuration".to_string());
    }
    let mut enc = Encoding {
        picture: webp::WebPPicture::new().map_err(|_| "libwebp ABI mismatch".to_string())?,
        // SAFETY: WebPMemoryWriterInit fully initialises the zeroed writer below.
        writer: unsafe { std::mem::zeroed() },
    };
    // SAFETY: the writer is a plain struct that WebPMemoryWriterInit resets.
    unsafe { webp::WebPMemoryWriterInit(&mut enc.writer) };
    // Importing into YUV directly is fastest, but sharp-YUV conversion happens inside
    // WebPEncode and needs the picture kept as ARGB until then.
    enc.picture.use_argb = i32::from(profile == Profile::Best);
    enc.picture.width = width as i32;
    enc.picture.height = height as i32;
    // SAFETY: pixels holds height rows of `stride` bytes; libwebp copies them into the
    // picture's own planes.
    let imported = unsafe {
        if has_alpha {
            webp::WebPPictureImportRGBA(&mut enc.picture, pixels.as_ptr(), stride as i32)
        } else {
            webp::WebPPictureImportRGB(&mut enc.picture, pixels.as_ptr(), stride as i32)
        }
    };
    if imported == 0 {
        return Err(error_text(enc.picture.error_code));
    }
    enc.picture.writer = Some(webp::WebPMemoryWrite);
    enc.picture.custom_ptr = (&mut enc.writer as *mut webp::WebPMemoryWriter).cast();
    // SAFETY: picture and config are valid; the writer outlives the call.
    if unsafe { webp::WebPEncode(&config, &mut enc.picture) } == 0 {
        return Err(error_text(enc.picture.error_code));
    }
    // SAFETY: the memory writer holds `size` bytes at `mem`.
    let bytes = unsafe { std::slice::from_raw_parts(enc.writer.mem, enc.writer.size).to_vec() };
    Ok(bytes)
}
