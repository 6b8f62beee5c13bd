//! Progressive-JPEG scan filter: drop the scans a DCT-scaled decode cannot show.
//!
//! libjpeg entropy-decodes every scan of a progressive file before it runs a single IDCT,
//! even when the output is scaled to 1/8 and only the DC coefficients reach the pixels.
//! That makes an 18 MP progressive photo ~10x dearer than a baseline one. Scans are
//! self-delimiting (the entropy data ends at the next marker), so a scan whose spectral band
//! holds no coefficient the scaled IDCT reads can be cut out of the byte stream without
//! decoding it; libjpeg then leaves those coefficients at zero (progressive coefficient
//! buffers start zeroed), which is exactly what the reduced IDCT ignores anyway.
//!
//! Three libjpeg facts decide what "needed" means (mozjpeg-sys 2.2 / libjpeg-turbo):
//! - Each component gets its own reduced IDCT size (`jdmaster.c`): subsampled chroma is
//!   scaled up through the IDCT, so at 1/8 the chroma of a 4:2:0 file uses a 2x2 IDCT.
//! - The 2x2 and 4x4 IDCTs (`jidctred.c`) are exact box averages of the 8x8 IDCT and read
//!   odd rows/columns up to 7, not just the top-left corner. Only the 1x1 IDCT (DC only)
//!   can be served bit-exactly from fewer scans; for 2x2/4x4, keeping only the top-left
//!   NxN coefficients is a (slight) low-pass approximation: [`Fidelity::LowPass`].
//! - An AC *refinement* scan (Ah > 0) can only be parsed if the decoder knows which
//!   coefficients of its whole band are already nonzero, so keeping one drags in every
//!   earlier scan of its band. [`Fidelity::Coarse`] drops such refinements instead.
//!
//! The decoder must run with block smoothing off (`do_block_smoothing = FALSE`): with no
//! AC data at all libjpeg-turbo otherwise "interpolates" the DC values with a 5x5 kernel,
//! which blurs the thumbnail. On a complete, unfiltered file smoothing never triggers, so
//! turning it off changes nothing there.
//!
//! The parser sees hostile bytes: every index is bounds-checked, every loop advances, and
//! anything it does not fully understand (not SOF2, truncated, unknown markers, odd scan
//! headers) yields `None`, meaning "decode the original bytes", which is always correct.

use std::ops::Range;

/// Zig-zag position -> natural (row-major) position in the 8x8 block (ITU T.81 figure A.6).
const NATURAL_ORDER: [u8; 64] = [
    0, 1, 8, 16, 9, 2, 3, 10, 17, 24, 32, 25, 18, 11, 4, 5, 12, 19, 26, 33, 40, 48, 41, 34, 27, 20,
    13, 6, 7, 14, 21, 28, 35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23, 30, 37, 44, 51, 58, 59,
    52, 45, 38, 31, 39, 46, 53, 60, 61, 54, 47, 55, 62, 63,
];

/// Real encoders write 2-20 scans; a crafted file with millions of tiny scans must not
/// make us build a huge scan list (libjpeg's own loader refuses far fewer).
const MAX_SCANS: usize = 1000;

/// libjpeg's component limit (`MAX_COMPONENTS`); more is not a file we can decode anyway.
const MAX_COMPONENTS: usize = 10;

/// How far the filter may depart from decoding the original bytes at the same scale.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Fidelity {
    /// Pixels identical to the original at this scale: only components whose reduced IDCT
    /// is 1x1 (DC only) lose their AC scans. Covers 1/8 of 4:4:4/4:2:2/gray files fully
    /// and the luma of 4:2:0 files.
    Exact,
    /// Keep the top-left NxN coefficients of an NxN reduced IDCT, at full precision
    /// (with whatever refinement scans and their dependencies that takes).
    LowPass,
    /// Like [`Fidelity::LowPass`], but drop a refinement scan rather than keep unneeded
    /// bands to parse it; the kept low coefficients then miss their last `Al` bits.
    ///
    /// The default: measured on real photos (docs/benchmarks.md) the thumbnail scores
    /// *higher* SSIMULACRA2 against a full-size decode than the exact 1/4 decode does (the
    /// missing high frequencies are aliasing the 2x2 box-average IDCT would let through),
    /// while a 1/4 decode gets 2-3x cheaper.
    #[default]
    Coarse,
}

/// Zig-zag bitmask (bit k = zig-zag coefficient k) of what a reduced IDCT of `idct_size`
/// (1, 2, 4 or 8 output pixels per block side) reads, as `fidelity` counts it.
pub fn needed_coefficients(idct_size: u32, fidelity: Fidelity) -> u64 {
    let mut mask = 0u64;
    for (k, &natural) in NATURAL_ORDER.iter().enumerate() {
        let (row, col) = (u32::from(natural / 8), u32::from(natural % 8));
        let read = match (idct_size, fidelity) {
            (1, _) => row == 0 && col == 0,
            // jpeg_idct_2x2 skips even rows/columns 2, 4, 6; jpeg_idct_4x4 skips 4.
            (2, Fidelity::Exact) => {
                row != 2 && row != 4 && row != 6 && col != 2 && col != 4 && col != 6
            }
            (4, Fidelity::Exact) => row != 4 && col != 4,
            (2 | 4, _) => row < idct_size && col < idct_size,
            _ => true,
        };
        if read {
            mask |= 1 << k;
        }
    }
    mask
}

/// The reduced IDCT size libjpeg gives one component when the image is scaled by
/// `1/scale_denom` (replicates `jpeg_calc_output_dimensions`, IDCT_SCALING_SUPPORTED).
fn component_idct_size(scale_denom: u32, max_h: u32, max_v: u32, h: u32, v: u32) -> u32 {
    let min_size = 8 / scale_denom.clamp(1, 8);
    let mut size = min_size;
    while size < 8
        && (max_h * min_size).is_multiple_of(h * size * 2)
        && (max_v * min_size).is_multiple_of(v * size * 2)
    {
        size *= 2;
    }
    size
}

/// Bits `ss..=se` (zig-zag band of a scan); callers guarantee `ss <= se <= 63`.
fn band_mask(ss: u8, se: u8) -> u64 {
    let high = if se >= 63 {
        u64::MAX
    } else {
        (1u64 << (se + 1)) - 1
    };
    high & !((1u64 << ss) - 1)
}

#[derive(Debug, Clone, Copy)]
struct FrameComponent {
    id: u8,
    h: u32,
    v: u32,
}

/// One scan: where its SOS segment starts and its entropy data ends, and what it codes.
#[derive(Debug, Clone)]
struct Scan {
    start: usize,
    end: usize,
    /// Indices into the frame's component list.
    components: Vec<usize>,
    ss: u8,
    se: u8,
    ah: u8,
}

/// A progressive file cut into the pieces the filter needs: scans, everything else is
/// copied as is up to and including EOI.
#[derive(Debug)]
struct Layout {
    components: Vec<FrameComponent>,
    scans: Vec<Scan>,
    /// Offset just past the EOI marker; trailing bytes after it are dropped.
    eoi_end: usize,
}

fn read_u16(data: &[u8], at: usize) -> Option<usize> {
    let bytes = data.get(at..at.checked_add(2)?)?;
    Some(usize::from(u16::from_be_bytes([bytes[0], bytes[1]])))
}

/// Offset of the marker that ends entropy-coded data starting at `from`, skipping byte
/// stuffing (FF 00), restart markers (FF D0..D7) and fill bytes (FF FF).
fn entropy_end(data: &[u8], from: usize) -> Option<usize> {
    let mut at = from;
    loop {
        let rest = data.get(at..)?;
        at += rest.iter().position(|&b| b == 0xFF)?;
        match *data.get(at + 1)? {
            0x00 | 0xD0..=0xD7 => at += 2,
            0xFF => at += 1,
            _ => return Some(at),
        }
    }
}

fn parse_frame(segment: &[u8]) -> Option<Vec<FrameComponent>> {
    // P(1) Y(2) X(2) Nf(1), then Nf * (C, HV, Tq).
    let count = usize::from(*segment.get(5)?);
    if count == 0 || count > MAX_COMPONENTS || segment.len() != 6 + 3 * count {
        return None;
    }
    let mut components: Vec<FrameComponent> = Vec::with_capacity(count);
    for entry in segment.get(6..)?.chunks_exact(3) {
        let (id, h, v) = (
            entry[0],
            u32::from(entry[1] >> 4),
            u32::from(entry[1] & 0x0F),
        );
        if !(1..=4).contains(&h) || !(1..=4).contains(&v) || components.iter().any(|c| c.id == id) {
            return None;
        }
        components.push(FrameComponent { id, h, v });
    }
    Some(components)
}

/// Parse an SOS segment body (after the length) into a scan, or `None` if libjpeg would
/// reject it or it is not a progressive scan we can reason about.
fn parse_scan_header(
    segment: &[u8],
    components: &[FrameComponent],
) -> Option<(Vec<usize>, u8, u8, u8)> {
    let count = usize::from(*segment.first()?);
    if count == 0 || count > 4 || segment.len() != 4 + 2 * count {
        return None;
    }
    let mut indices = Vec::with_capacity(count);
    for selector in segment.get(1..1 + 2 * count)?.chunks_exact(2) {
        let index = components.iter().position(|c| c.id == selector[0])?;
        if indices.contains(&index) {
            return None;
        }
        indices.push(index);
    }
    let ss = *segment.get(1 + 2 * count)?;
    let se = *segment.get(2 + 2 * count)?;
    let approx = *segment.get(3 + 2 * count)?;
    let (ah, al) = (approx >> 4, approx & 0x0F);
    let valid = if ss == 0 {
        se == 0
    } else {
        // AC scans code one component only (T.81 G.1.1.1.1).
        ss <= se && se <= 63 && count == 1
    };
    if !valid || al > 13 || ah > 13 {
        return None;
    }
    Some((indices, ss, se, ah))
}

/// Split a progressive-Huffman JPEG into scans; `None` for anything else or anything odd.
fn parse(data: &[u8]) -> Option<Layout> {
    if data.get(0..2)? != [0xFF, 0xD8] {
        return None;
    }
    let mut components: Option<Vec<FrameComponent>> = None;
    let mut scans = Vec::new();
    let mut at = 2;
    loop {
        if *data.get(at)? != 0xFF {
            return None;
        }
        // Any number of FF fill bytes may precede a marker.
        let mut marker_at = at + 1;
        while *data.get(marker_at)? == 0xFF {
            marker_at += 1;
        }
        let marker = *data.get(marker_at)?;
        let segment_start = marker_at + 1;
        match marker {
            0xD9 => {
                return Some(Layout {
                    components: components?,
                    scans,
                    eoi_end: segment_start,
                });
            }
            0xC4 | 0xDB | 0xDD | 0xDC | 0xE0..=0xEF | 0xFE | 0xC2 | 0xDA => {}
            // SOI again, RST/TEM outside entropy data, other SOFs (baseline, lossless,
            // arithmetic, hierarchical), DAC, reserved: leave to libjpeg.
            _ => return None,
        }
        let length = read_u16(data, segment_start)?;
        if length < 2 {
            return None;
        }
        let body = data.get(segment_start + 2..segment_start + length)?;
        let segment_end = segment_start + length;
        match marker {
            0xC2 => {
                if components.is_some() {
                    return None;
                }
                components = Some(parse_frame(body)?);
                at = segment_end;
            }
            0xDA => {
                if scans.len() >= MAX_SCANS {
                    return None;
                }
                let frame = components.as_deref()?;
                let (indices, ss, se, ah) = parse_scan_header(body, frame)?;
                let end = entropy_end(data, segment_end)?;
                scans.push(Scan {
                    start: at,
                    end,
                    components: indices,
                    ss,
                    se,
                    ah,
                });
                at = end;
            }
            _ => at = segment_end,
        }
    }
}

/// Which scans to keep, given each component's needed-coefficient mask.
fn select_scans(scans: &[Scan], needed: &[u64], fidelity: Fidelity) -> Option<Vec<bool>> {
    let single = |scan: &Scan| scan.components.first().copied();
    let mut keep = Vec::with_capacity(scans.len());
    match fidelity {
        Fidelity::Exact | Fidelity::LowPass => {
            // A kept refinement needs the full history of its band: grow each component's
            // required set until no kept refinement reaches outside it.
            let mut required = needed.to_vec();
            loop {
                let mut grew = false;
                for scan in scans.iter().filter(|s| s.ss > 0 && s.ah > 0) {
                    let c = single(scan)?;
                    let band = band_mask(scan.ss, scan.se);
                    let req = required.get_mut(c)?;
                    if band & *req != 0 && band & !*req != 0 {
                        *req |= band;
                        grew = true;
                    }
                }
                if !grew {
                    break;
                }
            }
            for scan in scans {
                let kept = scan.ss == 0
                    || band_mask(scan.ss, scan.se) & *required.get(single(scan)?)? != 0;
                keep.push(kept);
            }
        }
        Fidelity::Coarse => {
            // Coefficients whose history lost a scan: no later refinement of them parses.
            let mut broken = vec![0u64; needed.len()];
            for scan in scans {
                if scan.ss == 0 {
                    keep.push(true);
                    continue;
                }
                let c = single(scan)?;
                let band = band_mask(scan.ss, scan.se);
                let kept =
                    band & *needed.get(c)? != 0 && (scan.ah == 0 || band & *broken.get(c)? == 0);
                if !kept {
                    *broken.get_mut(c)? |= band;
                }
                keep.push(kept);
            }
        }
    }
    Some(keep)
}

/// [`needed_ranges_with`] at the default [`Fidelity`].
pub fn needed_ranges(jpeg: &[u8], scale_denom: u32) -> Option<Vec<Range<usize>>> {
    needed_ranges_with(jpeg, scale_denom, Fidelity::default())
}

/// A copy of progressive JPEG `jpeg` without the scans a decode at `1/scale_denom` does not
/// read: the bytes of [`needed_ranges_with`] one after the other.
pub fn strip_unneeded_scans_with(
    jpeg: &[u8],
    scale_denom: u32,
    fidelity: Fidelity,
) -> Option<Vec<u8>> {
    let ranges = needed_ranges_with(jpeg, scale_denom, fidelity)?;
    let mut out = Vec::with_capacity(ranges.iter().map(|r| r.len()).sum());
    for range in ranges {
        out.extend_from_slice(jpeg.get(range)?);
    }
    Some(out)
}

/// The byte ranges of progressive JPEG `jpeg` that, read one after the other, are the file
/// without the scans a decode at `1/scale_denom` (2, 4 or 8) does not read; `None` when the
/// original should be decoded instead: not progressive Huffman, nothing to drop, truncated,
/// or not understood. Every range lies inside `jpeg`. Decode the result with block
/// smoothing off (see the module docs).
pub fn needed_ranges_with(
    jpeg: &[u8],
    scale_denom: u32,
    fidelity: Fidelity,
) -> Option<Vec<Range<usize>>> {
    if !matches!(scale_denom, 2 | 4 | 8) {
        return None;
    }
    let layout = parse(jpeg)?;
    let max_h = layout.components.iter().map(|c| c.h).max()?;
    let max_v = layout.components.iter().map(|c| c.v).max()?;
    let needed: Vec<u64> = layout
        .components
        .iter()
        .map(|c| {
            let size = component_idct_size(scale_denom, max_h, max_v, c.h, c.v);
            needed_coefficients(size, fidelity)
        })
        .collect();
    let keep = select_scans(&layout.scans, &needed, fidelity)?;
    if keep.iter().all(|&k| k) {
        return None;
    }
    let mut ranges = Vec::new();
    let mut kept_from = 0;
    for (scan, kept) in layout.scans.iter().zip(keep) {
        if !kept {
            ranges.push(kept_from..scan.start);
            kept_from = scan.end;
        }
    }
    ranges.push(kept_from..layout.eoi_end);
    // Out of order or out of bounds means the parse went wrong: decode the original.
    if !ranges
        .iter()
        .all(|r| r.start <= r.end && r.end <= jpeg.len())
    {
        return None;
    }
    ranges.retain(|r| !r.is_empty());
    Some(ranges)
}

#[cfg(test)]
#[allow(clippy::undocumented_unsafe_blocks)] // test-only libjpeg calls, the same as the loader's
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::os::raw::c_int;

    /// The filter as the loader runs it (default fidelity), as one buffer.
    fn strip_unneeded_scans(jpeg: &[u8], scale_denom: u32) -> Option<Vec<u8>> {
        strip_unneeded_scans_with(jpeg, scale_denom, Fidelity::default())
    }

    /// A photo-like test image: gradients, edges and deterministic noise, so every DCT
    /// frequency carries data and every scan is non-trivial.
    fn test_image(width: usize, height: usize) -> Vec<u8> {
        let mut seed = 0x2545_F491_u32;
        let mut pixels = Vec::with_capacity(width * height * 3);
        for y in 0..height {
            for x in 0..width {
                seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                let noise = (seed >> 24) as i32 % 48 - 24;
                let wave = ((x as f32 * 0.37).sin() * (y as f32 * 0.23).cos() * 60.0) as i32;
                let edge = if (x / 13 + y / 17) % 2 == 0 { 50 } else { -50 };
                let r = (x * 255 / width) as i32 + wave + noise;
                let g = (y * 255 / height) as i32 + edge + noise / 2;
                let b = 128 + wave - edge + noise;
                pixels.extend([r, g, b].map(|c| c.clamp(0, 255) as u8));
            }
        }
        pixels
    }

    #[derive(Debug, Clone, Copy)]
    enum Script {
        /// libjpeg's standard progression (what most progressive files on the web use).
        Libjpeg,
        /// mozjpeg's default: scans chosen by trial (optimize_scans).
        MozjpegSearched,
        /// mozjpeg's fixed max-compression script (bands 1-8 / 9-63, refinements of 1-63).
        MozjpegFixed,
    }

    /// Encode with libjpeg; `sampling` is the chroma pixel size ((1,1) = 4:4:4, (2,2) = 4:2:0),
    /// `None` for grayscale.
    fn encode_mozjpeg(
        width: usize,
        height: usize,
        script: Script,
        sampling: Option<(u8, u8)>,
    ) -> Vec<u8> {
        let rgb = test_image(width, height);
        let space = if sampling.is_some() {
            mozjpeg::ColorSpace::JCS_RGB
        } else {
            mozjpeg::ColorSpace::JCS_GRAYSCALE
        };
        let mut comp = mozjpeg::Compress::new(space);
        match script {
            Script::Libjpeg => {
                comp.set_fastest_defaults();
                comp.set_progressive_mode();
            }
            Script::MozjpegSearched => comp.set_progressive_mode(),
            Script::MozjpegFixed => {
                comp.set_optimize_scans(false);
                comp.set_progressive_mode();
            }
        }
        comp.set_size(width, height);
        comp.set_quality(88.0);
        if let Some(size) = sampling {
            comp.set_chroma_sampling_pixel_sizes(size, size);
        }
        let mut started = comp.start_compress(Vec::new()).unwrap();
        let input: Vec<u8> = match sampling {
            Some(_) => rgb,
            None => rgb.chunks_exact(3).map(|p| p[1]).collect(),
        };
        started.write_scanlines(&input).unwrap();
        started.finish().unwrap()
    }

    /// Spectral-selection-only progressive with restart markers, from another encoder.
    fn encode_jpeg_encoder(
        width: usize,
        height: usize,
        sampling: jpeg_encoder::SamplingFactor,
        scans: u8,
        restart: u16,
    ) -> Vec<u8> {
        let rgb = test_image(width, height);
        let mut out = Vec::new();
        let mut encoder = jpeg_encoder::Encoder::new(&mut out, 85);
        encoder.set_progressive(true);
        encoder.set_progressive_scans(scans);
        encoder.set_sampling_factor(sampling);
        encoder.set_restart_interval(restart);
        encoder
            .encode(
                &rgb,
                width as u16,
                height as u16,
                jpeg_encoder::ColorType::Rgb,
            )
            .unwrap();
        out
    }

    extern "C-unwind" fn fail_on_error(cinfo: &mut mozjpeg_sys::jpeg_common_struct) {
        // SAFETY: libjpeg calls this with a live cinfo whose err points to our manager.
        let code = unsafe { (*cinfo.err).msg_code };
        std::panic::resume_unwind(Box::new(format!("libjpeg error {code}")));
    }

    /// Warnings are fatal here, as in the pipeline's loader: a stripped stream must not
    /// make libjpeg complain (e.g. JWRN_BOGUS_PROGRESSION from a broken scan history).
    extern "C-unwind" fn fail_on_warning(
        cinfo: &mut mozjpeg_sys::jpeg_common_struct,
        level: c_int,
    ) {
        if level < 0 {
            // SAFETY: as above.
            let code = unsafe { (*cinfo.err).msg_code };
            std::panic::resume_unwind(Box::new(format!("libjpeg warning {code}")));
        }
    }

    /// Decode at `1/scale_denom` to interleaved samples: (width, height, samples).
    fn decode(jpeg: &[u8], scale_denom: u32, smoothing: bool) -> (usize, usize, Vec<u8>) {
        // SAFETY: all-zero is a valid jpeg_error_mgr for jpeg_std_error to fill in.
        let mut err: mozjpeg_sys::jpeg_error_mgr = unsafe { std::mem::zeroed() };
        // SAFETY: err is live and writable.
        unsafe { mozjpeg_sys::jpeg_std_error(&mut err) };
        err.error_exit = Some(fail_on_error);
        err.emit_message = Some(fail_on_warning);
        let mut dec = mozjpeg::decompress::DecompressBuilder::new()
            .with_err(err)
            .from_mem(jpeg)
            .unwrap();
        dec.scale((8 / scale_denom) as u8);
        dec.do_block_smoothing(smoothing);
        let mut started = match dec.image().unwrap() {
            mozjpeg::Format::RGB(s) | mozjpeg::Format::Gray(s) | mozjpeg::Format::CMYK(s) => s,
        };
        let (w, h) = (started.width(), started.height());
        let samples: Vec<u8> = started.read_scanlines().unwrap();
        started.finish().unwrap();
        (w, h, samples)
    }

    fn max_abs_diff(a: &[u8], b: &[u8]) -> u8 {
        assert_eq!(a.len(), b.len());
        a.iter()
            .zip(b)
            .map(|(x, y)| x.abs_diff(*y))
            .max()
            .unwrap_or(0)
    }

    fn psnr(a: &[u8], b: &[u8]) -> f64 {
        let mse = a
            .iter()
            .zip(b)
            .map(|(x, y)| (f64::from(*x) - f64::from(*y)).powi(2))
            .sum::<f64>()
            / a.len() as f64;
        10.0 * (255.0 * 255.0 / mse.max(1e-9)).log10()
    }

    /// All the encoder set-ups the filter must handle: (name, bytes).
    fn corpus() -> Vec<(String, Vec<u8>)> {
        let mut files = Vec::new();
        for script in [
            Script::Libjpeg,
            Script::MozjpegSearched,
            Script::MozjpegFixed,
        ] {
            for sampling in [Some((2, 2)), Some((2, 1)), Some((1, 1)), None] {
                files.push((
                    format!("{script:?} {sampling:?}"),
                    encode_mozjpeg(203, 149, script, sampling),
                ));
            }
        }
        use jpeg_encoder::SamplingFactor as S;
        for (sampling, scans, restart) in [
            (S::R_4_2_0, 4, 3),
            (S::R_4_4_4, 6, 1),
            (S::R_4_1_1, 3, 7),
            (S::R_4_4_0, 5, 2),
        ] {
            files.push((
                format!("jpeg-encoder {sampling:?} scans={scans} rst={restart}"),
                encode_jpeg_encoder(203, 149, sampling, scans, restart),
            ));
        }
        files
    }

    #[test]
    fn needed_coefficient_masks() {
        let set = |mask: u64| (0..64).filter(|k| mask >> k & 1 == 1).collect::<Vec<u32>>();
        assert_eq!(set(needed_coefficients(1, Fidelity::Exact)), [0]);
        assert_eq!(set(needed_coefficients(2, Fidelity::LowPass)), [0, 1, 2, 4]);
        let four = set(needed_coefficients(4, Fidelity::LowPass));
        assert_eq!((four.len(), four.last()), (16, Some(&24)));
        assert_eq!(needed_coefficients(8, Fidelity::LowPass), u64::MAX);
        // libjpeg's 2x2 IDCT reads rows/columns 0,1,3,5,7: 25 coefficients up to zig-zag 63.
        let exact_two = set(needed_coefficients(2, Fidelity::Exact));
        assert_eq!(
            (exact_two.len(), exact_two.contains(&3), exact_two.last()),
            (25, false, Some(&63))
        );
        assert_eq!(set(needed_coefficients(4, Fidelity::Exact)).len(), 49);
    }

    #[test]
    fn component_idct_sizes_follow_libjpeg() {
        // 4:2:0: chroma is scaled up through the IDCT, so it needs more than DC at 1/8.
        assert_eq!(component_idct_size(8, 2, 2, 2, 2), 1);
        assert_eq!(component_idct_size(8, 2, 2, 1, 1), 2);
        assert_eq!(component_idct_size(2, 2, 2, 1, 1), 8);
        // 4:2:2: the vertical ratio is 1, so chroma stays 1x1 at 1/8.
        assert_eq!(component_idct_size(8, 2, 1, 1, 1), 1);
        assert_eq!(component_idct_size(4, 1, 1, 1, 1), 2);
        assert_eq!(component_idct_size(2, 1, 1, 1, 1), 4);
    }

    #[test]
    fn band_masks() {
        assert_eq!(band_mask(0, 0), 1);
        assert_eq!(band_mask(1, 5), 0b11_1110);
        assert_eq!(band_mask(1, 63), u64::MAX - 1);
        assert_eq!(band_mask(63, 63), 1 << 63);
    }

    #[test]
    fn exact_strip_decodes_to_identical_pixels() {
        let mut stripped_any_at_eighth = 0;
        for (name, jpeg) in corpus() {
            for scale in [8, 4, 2] {
                let Some(stripped) = strip_unneeded_scans_with(&jpeg, scale, Fidelity::Exact)
                else {
                    continue;
                };
                assert!(
                    stripped.len() < jpeg.len(),
                    "{name} 1/{scale}: nothing dropped but Some"
                );
                let original = decode(&jpeg, scale, true);
                let filtered = decode(&stripped, scale, false);
                assert_eq!(
                    (original.0, original.1),
                    (filtered.0, filtered.1),
                    "{name} 1/{scale}"
                );
                assert!(
                    original.2 == filtered.2,
                    "{name} 1/{scale}: pixels differ (max {})",
                    max_abs_diff(&original.2, &filtered.2)
                );
                // Nothing left to drop: the filter is idempotent.
                assert_eq!(
                    strip_unneeded_scans_with(&stripped, scale, Fidelity::Exact),
                    None,
                    "{name} 1/{scale}"
                );
                if scale == 8 {
                    stripped_any_at_eighth += 1;
                }
            }
        }
        // Every file has AC scans that a 1/8 decode of its luma does not read.
        assert_eq!(stripped_any_at_eighth, corpus().len());
    }

    #[test]
    fn libjpeg_script_at_one_eighth_keeps_only_dc_scans() {
        let jpeg = encode_mozjpeg(203, 149, Script::Libjpeg, Some((2, 1)));
        let layout = parse(&jpeg).unwrap();
        assert_eq!(layout.scans.len(), 10);
        let stripped = strip_unneeded_scans(&jpeg, 8).unwrap();
        let kept = parse(&stripped).unwrap().scans;
        assert_eq!(kept.len(), 2);
        assert!(kept.iter().all(|s| s.ss == 0 && s.components.len() == 3));
        // 4:2:0 keeps the chroma AC scans: its chroma is decoded through a 2x2 IDCT.
        let jpeg = encode_mozjpeg(203, 149, Script::Libjpeg, Some((2, 2)));
        let kept = parse(&strip_unneeded_scans(&jpeg, 8).unwrap())
            .unwrap()
            .scans;
        assert_eq!(kept.len(), 6);
        assert!(kept.iter().all(|s| s.ss == 0 || s.components != [0]));
    }

    #[test]
    fn smoothing_must_be_off_for_dc_only_decodes() {
        // Guards the module's claim: with no AC data libjpeg-turbo blurs the DC otherwise.
        let jpeg = encode_mozjpeg(203, 149, Script::Libjpeg, Some((1, 1)));
        let stripped = strip_unneeded_scans(&jpeg, 8).unwrap();
        assert_ne!(decode(&stripped, 8, true).2, decode(&jpeg, 8, true).2);
        assert_eq!(decode(&stripped, 8, false).2, decode(&jpeg, 8, true).2);
    }

    #[test]
    fn approximate_modes_stay_close_and_decode_cleanly() {
        let mut dropped = [0usize; 2];
        for (name, jpeg) in corpus() {
            for scale in [8, 4, 2] {
                let reference = decode(&jpeg, scale, true);
                for (slot, fidelity) in [Fidelity::LowPass, Fidelity::Coarse]
                    .into_iter()
                    .enumerate()
                {
                    let Some(stripped) = strip_unneeded_scans_with(&jpeg, scale, fidelity) else {
                        continue;
                    };
                    dropped[slot] += 1;
                    let filtered = decode(&stripped, scale, false);
                    assert_eq!((reference.0, reference.1), (filtered.0, filtered.1));
                    let quality = psnr(&reference.2, &filtered.2);
                    // Noise-heavy synthetic content is the worst case; photos score far higher.
                    assert!(
                        quality > 28.0,
                        "{name} 1/{scale} {fidelity:?}: PSNR {quality:.1}"
                    );
                }
            }
        }
        assert!(
            dropped[0] > corpus().len(),
            "LowPass should drop scans beyond 1/8: {dropped:?}"
        );
        assert!(
            dropped[1] > dropped[0],
            "Coarse should drop more often than LowPass: {dropped:?}"
        );
    }

    #[test]
    fn coarse_drops_luma_refinements_of_the_libjpeg_script_at_one_quarter() {
        let jpeg = encode_mozjpeg(203, 149, Script::Libjpeg, Some((2, 1)));
        assert_eq!(strip_unneeded_scans_with(&jpeg, 4, Fidelity::LowPass), None);
        let stripped = strip_unneeded_scans_with(&jpeg, 4, Fidelity::Coarse).unwrap();
        let luma: Vec<(u8, u8, u8)> = parse(&stripped)
            .unwrap()
            .scans
            .iter()
            .filter(|s| s.ss > 0 && s.components == [0])
            .map(|s| (s.ss, s.se, s.ah))
            .collect();
        assert_eq!(luma, [(1, 5, 0)]);
    }

    #[test]
    fn not_progressive_or_full_scale_gives_none() {
        let rgb = test_image(64, 48);
        let mut comp = mozjpeg::Compress::new(mozjpeg::ColorSpace::JCS_RGB);
        comp.set_fastest_defaults();
        comp.set_size(64, 48);
        let mut started = comp.start_compress(Vec::new()).unwrap();
        started.write_scanlines(&rgb).unwrap();
        let baseline = started.finish().unwrap();
        for scale in [1, 2, 4, 8] {
            assert_eq!(
                strip_unneeded_scans_with(&baseline, scale, Fidelity::Coarse),
                None
            );
        }
        let progressive = encode_mozjpeg(64, 48, Script::Libjpeg, Some((2, 2)));
        for scale in [0, 1, 3, 16, u32::MAX] {
            assert_eq!(
                strip_unneeded_scans_with(&progressive, scale, Fidelity::Coarse),
                None
            );
        }
    }

    #[test]
    fn keeps_metadata_and_drops_trailing_bytes() {
        let jpeg = encode_mozjpeg(96, 64, Script::Libjpeg, Some((2, 2)));
        // Insert a COM segment after SOI and garbage after EOI.
        let comment = b"edgethumb keeps this";
        let mut with_extras = jpeg[..2].to_vec();
        with_extras.extend([0xFF, 0xFE, 0, (comment.len() + 2) as u8]);
        with_extras.extend(comment);
        with_extras.extend(&jpeg[2..]);
        with_extras.extend(b"\xFF\xD8 trailing garbage");
        let stripped = strip_unneeded_scans(&with_extras, 8).unwrap();
        assert!(stripped.windows(comment.len()).any(|w| w == comment));
        assert!(stripped.ends_with(&[0xFF, 0xD9]));
        assert_eq!(decode(&stripped, 8, false).2, decode(&jpeg, 8, true).2);
    }

    #[test]
    fn truncated_anywhere_gives_none_without_panicking() {
        let jpeg = encode_mozjpeg(64, 48, Script::Libjpeg, Some((2, 2)));
        assert!(strip_unneeded_scans(&jpeg, 8).is_some());
        for len in 0..jpeg.len() - 1 {
            // Without EOI the original must be decoded, so libjpeg reports the truncation.
            assert_eq!(
                strip_unneeded_scans_with(&jpeg[..len], 8, Fidelity::Coarse),
                None,
                "len {len}"
            );
        }
    }

    #[test]
    fn bogus_scan_headers_give_none() {
        let jpeg = encode_mozjpeg(64, 48, Script::Libjpeg, Some((2, 2)));
        let layout = parse(&jpeg).unwrap();
        let sos = layout.scans[1].start;
        let ns = usize::from(jpeg[sos + 4]);
        let cases: Vec<(usize, u8)> = vec![
            (sos + 3, 0),             // length 0
            (sos + 3, 1),             // length 1
            (sos + 3, 0xFF),          // length past the header
            (sos + 4, 0),             // Ns = 0
            (sos + 4, 5),             // Ns = 5
            (sos + 5, 99),            // unknown component id
            (sos + 5 + 2 * ns, 64),   // Ss > 63
            (sos + 6 + 2 * ns, 0),    // Se < Ss
            (sos + 7 + 2 * ns, 0xE0), // Ah = 14
        ];
        for (at, value) in cases {
            let mut bad = jpeg.clone();
            bad[at] = value;
            assert_eq!(strip_unneeded_scans(&bad, 8), None, "byte {at} = {value}");
        }
        // A huge segment length on a DHT.
        let mut bad = jpeg.clone();
        let dht = bad.windows(2).position(|w| w == [0xFF, 0xC4]).unwrap();
        bad[dht + 2] = 0xFF;
        assert_eq!(strip_unneeded_scans(&bad, 8), None);
    }

    #[test]
    fn too_many_scans_give_none() {
        let jpeg = encode_mozjpeg(32, 16, Script::Libjpeg, Some((1, 1)));
        let layout = parse(&jpeg).unwrap();
        let last = layout.scans.last().unwrap();
        let mut bomb = jpeg[..last.end].to_vec();
        // Repeat the last (refinement) scan until the file has more than MAX_SCANS scans.
        for _ in 0..MAX_SCANS {
            bomb.extend_from_slice(&jpeg[last.start..last.end]);
        }
        bomb.extend([0xFF, 0xD9]);
        assert_eq!(strip_unneeded_scans(&bomb, 8), None);
        assert!(strip_unneeded_scans(&jpeg, 8).is_some());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048), scale in 0u32..10) {
            let _ = strip_unneeded_scans_with(&bytes, scale, Fidelity::Coarse);
            let mut prefixed = vec![0xFF, 0xD8, 0xFF, 0xC2];
            prefixed.extend(&bytes);
            let _ = strip_unneeded_scans_with(&prefixed, scale, Fidelity::LowPass);
        }

        #[test]
        fn mutated_progressive_never_panics_and_output_is_well_formed(
            edits in proptest::collection::vec((any::<u16>(), any::<u8>()), 1..8),
            cut in any::<u16>(),
        ) {
            thread_local! {
                static BASE: Vec<u8> = encode_mozjpeg(48, 40, Script::Libjpeg, Some((2, 2)));
            }
            let mut bytes = BASE.with(Clone::clone);
            for (at, value) in edits {
                let at = usize::from(at) % bytes.len();
                bytes[at] = value;
            }
            if cut % 4 == 0 {
                bytes.truncate(usize::from(cut) % bytes.len());
            }
            for fidelity in [Fidelity::Exact, Fidelity::LowPass, Fidelity::Coarse] {
                if let Some(out) = strip_unneeded_scans_with(&bytes, 8, fidelity) {
                    prop_assert!(out.len() < bytes.len());
                    prop_assert!(out.starts_with(&[0xFF, 0xD8]) && out.ends_with(&[0xFF, 0xD9]));
                    prop_assert!(parse(&out).is_some());
                }
            }
        }
    }

    /// Decode `segments` as one stream through our error manager and [`SegmentSource`].
    fn decode_segments(segments: &[&[u8]], scale_denom: u32) -> Result<Vec<u8>, String> {
        use crate::pipeline::libjpeg;
        use mozjpeg_sys as ffi;
        struct Guard(Box<ffi::jpeg_decompress_struct>);
        impl Drop for Guard {
            fn drop(&mut self) {
                unsafe { ffi::jpeg_destroy_decompress(&mut self.0) };
            }
        }
        libjpeg::catch(|| {
            let mut err = libjpeg::error_mgr();
            let mut source = libjpeg::SegmentSource::new(segments);
            let mut dec = Guard(Box::new(unsafe { std::mem::zeroed() }));
            let cinfo = &mut *dec.0;
            cinfo.common.err = &mut *err;
            unsafe { ffi::jpeg_create_decompress(cinfo) };
            source.install(cinfo);
            unsafe { ffi::jpeg_read_header(cinfo, 1) };
            cinfo.scale_num = 1;
            cinfo.scale_denom = scale_denom;
            cinfo.do_block_smoothing = 0;
            unsafe { ffi::jpeg_start_decompress(cinfo) };
            let row = (cinfo.output_width * cinfo.output_components as u32) as usize;
            let mut out = vec![0u8; row * cinfo.output_height as usize];
            while cinfo.output_scanline < cinfo.output_height {
                let at = cinfo.output_scanline as usize * row;
                let mut rows = [out[at..].as_mut_ptr()];
                unsafe { ffi::jpeg_read_scanlines(cinfo, rows.as_mut_ptr(), 1) };
            }
            out
        })
        .map_err(|caught| format!("{caught:?}"))
    }

    /// Cut `bytes` into pieces of 0 (empty), 1, 2, 3, 5, 7 and 11 bytes, round and round.
    fn chop(bytes: &[u8]) -> Vec<&[u8]> {
        let sizes = [1usize, 0, 2, 3, 5, 7, 11];
        let mut pieces = Vec::new();
        let mut at = 0;
        for size in sizes.iter().cycle() {
            if at >= bytes.len() {
                break;
            }
            let end = (at + size).min(bytes.len());
            pieces.push(&bytes[at..end]);
            at = end;
        }
        pieces
    }

    #[test]
    fn the_loader_reads_around_dropped_scans_as_if_they_were_cut_out() {
        let jpeg = encode_mozjpeg(257, 131, Script::Libjpeg, Some((2, 2)));
        for denom in [8, 4] {
            let ranges = needed_ranges(&jpeg, denom).expect("scans to drop");
            assert!(ranges.len() > 1, "1/{denom}: {ranges:?}");
            let segments: Vec<&[u8]> = ranges.iter().map(|r| &jpeg[r.clone()]).collect();
            let stripped = strip_unneeded_scans(&jpeg, denom).unwrap();
            let whole = decode_segments(&[&stripped], denom).unwrap();
            assert_eq!(
                decode_segments(&segments, denom).unwrap(),
                whole,
                "1/{denom}"
            );
            // The same bytes in tiny pieces, empty ones included.
            assert_eq!(decode_segments(&chop(&stripped), denom).unwrap(), whole);
        }
    }

    #[test]
    fn segments_skip_markers_across_pieces_and_fail_when_the_data_runs_out() {
        let jpeg = encode_mozjpeg(64, 48, Script::Libjpeg, Some((2, 2)));
        // An APP15 with 600 bytes of payload (length field 602) after SOI: libjpeg skips
        // it through skip_input_data, here across a hundred pieces.
        let mut with_app = jpeg[..2].to_vec();
        with_app.extend_from_slice(&[0xFF, 0xEF, 0x02, 0x5A]);
        // Full of EOI markers, so a skip that falls short ends the file right there.
        with_app.extend([0xFF, 0xD9].repeat(300));
        with_app.extend_from_slice(&jpeg[2..]);
        let whole = decode_segments(&[&jpeg], 1).unwrap();
        assert_eq!(decode_segments(&chop(&with_app), 1).unwrap(), whole);
        // Truncated: a typed failure, in one piece or many.
        let cut = &with_app[..with_app.len() * 2 / 3];
        for segments in [vec![cut], chop(cut)] {
            let err = decode_segments(&segments, 1).unwrap_err();
            assert!(err.contains("Premature end"), "{err}");
        }
    }
}
