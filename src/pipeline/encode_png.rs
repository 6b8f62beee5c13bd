//! PNG encoding (lossless; `q` does not apply).
//!
//! - `fast`: the png crate with adaptive filtering and its balanced deflate level.
//! - `best`: that file further optimised by oxipng (lossless reductions: palette, bit
//!   depth, gray; filter and deflate search), single-threaded.
//!
//! Only IHDR, (PLTE, tRNS,) IDAT and IEND are written: no text, EXIF or colour chunks.

use super::Profile;

pub struct PngInput<'a> {
    pub pixels: &'a [u8],
    pub width: u32,
    pub height: u32,
    /// 1 gray, 2 gray+alpha, 3 RGB, 4 RGBA.
    pub channels: u8,
}

pub fn encode(input: &PngInput<'_>, profile: Profile) -> Result<Vec<u8>, String> {
    let color = match input.channels {
        1 => png::ColorType::Grayscale,
        2 => png::ColorType::GrayscaleAlpha,
        3 => png::ColorType::Rgb,
        4 => png::ColorType::Rgba,
        n => return Err(format!("{n} channels")),
    };
    let mut out = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut out, input.width, input.height);
        encoder.set_color(color);
        encoder.set_depth(png::BitDepth::Eight);
        encoder.set_compression(match profile {
            Profile::Fast => png::Compression::Balanced,
            // oxipng re-deflates anyway; keep the first pass cheap.
            Profile::Best => png::Compression::Fast,
        });
        encoder.set_filter(png::Filter::Adaptive);
        let mut writer = encoder.write_header().map_err(|e| e.to_string())?;
        writer
            .write_image_data(input.pixels)
            .map_err(|e| e.to_string())?;
        writer.finish().map_err(|e| e.to_string())?;
    }
    if profile == Profile::Best {
        let mut options = oxipng::Options::from_preset(2);
        options.strip = oxipng::StripChunks::All;
        out = oxipng::optimize_from_memory(&out, &options).map_err(|e| e.to_string())?;
    }
    Ok(out)
}
