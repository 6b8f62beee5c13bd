//! PNG encoding (lossless; `q` does not apply).
//!
//! - `fast`: per-row adaptive filtering (the filter with the smallest sum of absolute
//!   residuals, libpng's heuristic) and one libdeflate pass at level 6. Measured on the peer
//!   corpus' 400 px thumbnails against the png crate (miniz, `Balanced`): RGB photo 6 vs
//!   20 ms and 98,976 vs 99,400 bytes; RGBA logo 10 vs 23 ms and 135,865 vs 139,009 bytes.
//!   Level 9 saved another 2-4 % of bytes for 3-5x the time (docs/benchmarks.md).
//! - `best`: that file further optimised by oxipng (lossless reductions: palette, bit
//!   depth, gray; filter and deflate search), single-threaded.
//!
//! Only IHDR, IDAT and IEND are written (oxipng may add PLTE/tRNS): no text, EXIF or colour
//! chunks.

use libdeflater::{CompressionLvl, Compressor};

use super::Profile;

pub struct PngInput<'a> {
    pub pixels: &'a [u8],
    pub width: u32,
    pub height: u32,
    /// 1 gray, 2 gray+alpha, 3 RGB, 4 RGBA.
    pub channels: u8,
}

/// libdeflate's level for the `fast` profile: 9 saved 2-4 % more bytes for 3-5x the time,
/// 3 cost 4-6 % more bytes for little speed (400 px thumbnails of the peer corpus).
const DEFLATE_LEVEL: i32 = 6;

const SIGNATURE: [u8; 8] = *b"\x89PNG\r\n\x1a\n";

pub fn encode(input: &PngInput<'_>, profile: Profile) -> Result<Vec<u8>, String> {
    let color_type: u8 = match input.channels {
        1 => 0,
        2 => 4,
        3 => 2,
        4 => 6,
        n => return Err(format!("{n} channels")),
    };
    if input.width == 0 || input.height == 0 || input.width > i32::MAX as u32 {
        return Err(format!(
            "cannot encode a {}x{} PNG",
            input.width, input.height
        ));
    }
    let bpp = input.channels as usize;
    let row_bytes = input.width as usize * bpp;
    let needed = row_bytes * input.height as usize;
    if input.pixels.len() < needed {
        return Err("pixel buffer too small".to_string());
    }
    let filtered = filter_rows(&input.pixels[..needed], row_bytes, bpp);
    let level = CompressionLvl::new(DEFLATE_LEVEL).map_err(|e| format!("{e:?}"))?;
    let mut compressor = Compressor::new(level);
    let mut idat = vec![0u8; compressor.zlib_compress_bound(filtered.len())];
    let len = compressor
        .zlib_compress(&filtered, &mut idat)
        .map_err(|e| format!("deflate: {e:?}"))?;
    idat.truncate(len);

    let mut ihdr = Vec::with_capacity(13);
    ihdr.extend_from_slice(&input.width.to_be_bytes());
    ihdr.extend_from_slice(&input.height.to_be_bytes());
    // 8-bit samples, the colour type, deflate, adaptive filtering, no interlace.
    ihdr.extend_from_slice(&[8, color_type, 0, 0, 0]);

    let mut out = Vec::with_capacity(SIGNATURE.len() + 3 * 12 + ihdr.len() + idat.len());
    out.extend_from_slice(&SIGNATURE);
    write_chunk(&mut out, b"IHDR", &ihdr)?;
    write_chunk(&mut out, b"IDAT", &idat)?;
    write_chunk(&mut out, b"IEND", &[])?;

    if profile == Profile::Best {
        out = optimise(out)?;
    }
    Ok(out)
}

/// oxipng's lossless search for the `best` profile.
#[cfg(feature = "best-png")]
fn optimise(png: Vec<u8>) -> Result<Vec<u8>, String> {
    let mut options = oxipng::Options::from_preset(2);
    options.strip = oxipng::StripChunks::All;
    oxipng::optimize_from_memory(&png, &options).map_err(|e| e.to_string())
}

/// Only the worker renders `best`; a build without oxipng (the edge addon) writes the
/// `fast` file for it too, which is the same image, a few percent larger.
#[cfg(not(feature = "best-png"))]
fn optimise(png: Vec<u8>) -> Result<Vec<u8>, String> {
    Ok(png)
}

fn write_chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) -> Result<(), String> {
    let len = u32::try_from(data.len())
        .ok()
        .filter(|&n| n <= i32::MAX as u32)
        .ok_or_else(|| format!("{} chunk too large", String::from_utf8_lossy(kind)))?;
    out.extend_from_slice(&len.to_be_bytes());
    let start = out.len();
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    let crc = libdeflater::crc32(&out[start..]);
    out.extend_from_slice(&crc.to_be_bytes());
    Ok(())
}

/// PNG filter types (the byte that starts each filtered row).
const NONE: u8 = 0;
const SUB: u8 = 1;
const UP: u8 = 2;
const AVERAGE: u8 = 3;
const PAETH: u8 = 4;

/// Filter every row with each of the five filters and keep the one whose residuals, read
/// as signed bytes, have the smallest sum of magnitudes.
fn filter_rows(pixels: &[u8], row_bytes: usize, bpp: usize) -> Vec<u8> {
    let rows = pixels.len() / row_bytes;
    let mut out = Vec::with_capacity(rows * (row_bytes + 1));
    let zeros = vec![0u8; row_bytes];
    let mut candidate = vec![0u8; row_bytes];
    let mut best = vec![0u8; row_bytes];
    for y in 0..rows {
        let row = &pixels[y * row_bytes..(y + 1) * row_bytes];
        let above = if y == 0 {
            &zeros[..]
        } else {
            &pixels[(y - 1) * row_bytes..y * row_bytes]
        };
        let mut best_kind = NONE;
        best.copy_from_slice(row);
        let mut best_cost = cost(&best);
        for kind in [SUB, UP, AVERAGE, PAETH] {
            apply(kind, row, above, bpp, &mut candidate);
            let c = cost(&candidate);
            if c < best_cost {
                best_cost = c;
                best_kind = kind;
                std::mem::swap(&mut best, &mut candidate);
            }
        }
        out.push(best_kind);
        out.extend_from_slice(&best);
    }
    out
}

fn cost(residuals: &[u8]) -> u64 {
    residuals
        .iter()
        .map(|&b| (b as i8).unsigned_abs() as u64)
        .sum()
}

fn apply(kind: u8, row: &[u8], above: &[u8], bpp: usize, out: &mut [u8]) {
    for i in 0..row.len() {
        let left = if i >= bpp { row[i - bpp] } else { 0 };
        let up = above[i];
        let up_left = if i >= bpp { above[i - bpp] } else { 0 };
        let predicted = match kind {
            SUB => left,
            UP => up,
            AVERAGE => ((left as u16 + up as u16) / 2) as u8,
            PAETH => paeth(left, up, up_left),
            _ => 0,
        };
        out[i] = row[i].wrapping_sub(predicted);
    }
}

fn paeth(a: u8, b: u8, c: u8) -> u8 {
    let p = a as i16 + b as i16 - c as i16;
    let (pa, pb, pc) = (
        (p - a as i16).abs(),
        (p - b as i16).abs(),
        (p - c as i16).abs(),
    );
    if pa <= pb && pa <= pc {
        a
    } else if pb <= pc {
        b
    } else {
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(bytes: &[u8]) -> (png::OutputInfo, Vec<u8>) {
        let mut reader = png::Decoder::new(std::io::Cursor::new(bytes))
            .read_info()
            .expect("valid PNG header");
        let mut buf = vec![0; reader.output_buffer_size().expect("size")];
        let info = reader.next_frame(&mut buf).expect("valid PNG data");
        buf.truncate(info.buffer_size());
        (info, buf)
    }

    /// Noise, gradients and flat areas, so every filter wins somewhere.
    fn picture(width: u32, height: u32, channels: u8) -> Vec<u8> {
        let mut state = 0x9E37_79B9u32;
        let mut out = Vec::new();
        for y in 0..height {
            for x in 0..width {
                for c in 0..channels as u32 {
                    state ^= state << 13;
                    state ^= state >> 17;
                    state ^= state << 5;
                    let value = match (y / 8) % 3 {
                        0 => (x * 3 + y + c * 40) as u8,
                        1 => (state >> 24) as u8,
                        _ => 200,
                    };
                    out.push(value);
                }
            }
        }
        out
    }

    #[test]
    fn every_channel_count_round_trips_exactly_through_another_decoder() {
        for (channels, color) in [
            (1, png::ColorType::Grayscale),
            (2, png::ColorType::GrayscaleAlpha),
            (3, png::ColorType::Rgb),
            (4, png::ColorType::Rgba),
        ] {
            for (w, h) in [(1, 1), (37, 29), (64, 3)] {
                let pixels = picture(w, h, channels);
                let input = PngInput {
                    pixels: &pixels,
                    width: w,
                    height: h,
                    channels,
                };
                let bytes = encode(&input, Profile::Fast).expect("encode");
                let (info, decoded) = decode(&bytes);
                assert_eq!((info.width, info.height), (w, h));
                assert_eq!(info.color_type, color, "{channels} channels");
                assert_eq!(info.bit_depth, png::BitDepth::Eight);
                assert_eq!(decoded, pixels, "{channels} channels {w}x{h}");
            }
        }
    }

    #[test]
    fn filtering_pays_on_smooth_pictures() {
        let (w, h) = (256u32, 64u32);
        let pixels: Vec<u8> = (0..h)
            .flat_map(|y| (0..w).flat_map(move |x| [(x + y) as u8, (x * 2) as u8, y as u8]))
            .collect();
        let filtered = filter_rows(&pixels, w as usize * 3, 3);
        assert!(
            filtered
                .iter()
                .step_by(w as usize * 3 + 1)
                .any(|&f| f != NONE),
            "a gradient should pick a predicting filter"
        );
        let input = PngInput {
            pixels: &pixels,
            width: w,
            height: h,
            channels: 3,
        };
        let bytes = encode(&input, Profile::Fast).expect("encode");
        assert!(bytes.len() < 2_000, "gradient took {} bytes", bytes.len());
    }

    #[test]
    fn refuses_bad_input_instead_of_writing_a_broken_file() {
        let input = PngInput {
            pixels: &[0; 5],
            width: 2,
            height: 2,
            channels: 3,
        };
        assert!(encode(&input, Profile::Fast).is_err());
        let input = PngInput {
            pixels: &[0; 4],
            width: 1,
            height: 1,
            channels: 5,
        };
        assert!(encode(&input, Profile::Fast).is_err());
    }
}
