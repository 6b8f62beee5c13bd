//! "Sharp" RGB → YUV 4:2:0 (8-bit, full range, BT.601 matrix): the planes are chosen so that
//! what the decoder *reconstructs* from them matches the source in linear light, instead of
//! averaging chroma over each 2×2 block in gamma-encoded space.
//!
//! Why: averaging gamma-encoded chroma and then upsampling it back makes the decoder's
//! reconstruction wrong around colour edges and in fine colour texture: a saturated red
//! next to a green comes back with a dark (too low linear luminance) seam, because the
//! luma that was computed for the full-resolution colour no longer fits the averaged
//! chroma. Metrics that work in linear light (SSIMULACRA2's XYB) see that seam.
//!
//! How (the idea of libwebp's sharp YUV, written from scratch here):
//! 1. Start from the plain conversion (per-pixel Y, 2×2-averaged U/V, as libavif does).
//! 2. Twice ([`ROUNDS`]): reconstruct RGB exactly as libavif 1.0.4's decoder does for
//!    4:2:0 (reformat.c, built-in path: chroma samples centred between the four luma
//!    samples, bilinear 9/16, 3/16, 3/16, 1/16 weights from the nearest four, edge samples
//!    repeated; RGB clamped to 0..1), then
//!    - correct each pixel's Y by the error of its linear-light luminance (taken back to
//!      the gamma-encoded scale, where Y lives), and
//!    - (but in the last round) move each block's U and V by a fraction ([`CHROMA_STEP`])
//!      of the chroma error of the block's mean linear colour (target mean against
//!      reconstructed mean, both gamma-encoded before taking chroma).
//! 3. Round and clamp to 0..255.
//!
//! The decoder model is the one `encode_avif::decode` and the worker's scoring use. Other
//! decoders may upsample otherwise (libyuv, behind some browsers, can replicate chroma
//! instead of filtering it); not measured how much of the gain they see.

/// BT.601 matrix coefficients (the matrix our AVIF files signal).
const KR: f32 = 0.299;
const KB: f32 = 0.114;
const KG: f32 = 1.0 - KR - KB;
/// Linear-light luminance of sRGB (BT.709) primaries: what the eye (and XYB) weighs.
const LR: f32 = 0.2126;
const LG: f32 = 0.7152;
const LB: f32 = 0.0722;

/// Rounds of correction: Y, then chroma and Y again. Measured (docs/benchmarks.md): more
/// rounds, or the full chroma step, sharpen the chroma beyond what the encoder keeps and
/// cost bytes; two rounds with a damped chroma step gave the smallest files.
const ROUNDS: usize = 2;
/// Fraction of each block's chroma error corrected per round.
const CHROMA_STEP: f32 = 0.35;
/// Entries (+1) of the transfer tables over 0..=1, read at the nearest entry: the error,
/// below 3e-4, is far under an 8-bit step.
const TABLE: usize = 4096;

/// 8-bit YUV 4:2:0 planes, tightly packed: Y is `width × height`, U and V
/// `⌈width/2⌉ × ⌈height/2⌉`.
pub struct Yuv420 {
    pub y: Vec<u8>,
    pub u: Vec<u8>,
    pub v: Vec<u8>,
}

fn srgb_to_linear_exact(c: f32) -> f32 {
    if c <= 0.04045 {
        c / 12.92
    } else {
        ((c + 0.055) / 1.055).powf(2.4)
    }
}

fn linear_to_srgb_exact(l: f32) -> f32 {
    if l <= 0.003_130_8 {
        l * 12.92
    } else {
        1.055 * l.powf(1.0 / 2.4) - 0.055
    }
}

/// The transfer tables, built once per process: every encode of a quality search uses the
/// same ones.
static TRANSFER: std::sync::LazyLock<Transfer> = std::sync::LazyLock::new(Transfer::new);

/// Lookup tables for the transfer function.
struct Transfer {
    /// 8-bit code → linear.
    linear8: [f32; 256],
    to_linear: Vec<f32>,
    /// Indexed by `sqrt(linear)`, which spreads the entries where sRGB is steep.
    to_gamma: Vec<f32>,
}

impl Transfer {
    fn new() -> Transfer {
        let to_linear = (0..=TABLE)
            .map(|i| srgb_to_linear_exact(i as f32 / TABLE as f32))
            .collect();
        let to_gamma = (0..=TABLE)
            .map(|i| {
                let s = i as f32 / TABLE as f32;
                linear_to_srgb_exact(s * s)
            })
            .collect();
        Transfer {
            linear8: std::array::from_fn(|i| srgb_to_linear_exact(i as f32 / 255.0)),
            to_linear,
            to_gamma,
        }
    }

    fn lookup(table: &[f32], x: f32) -> f32 {
        // `as usize` saturates (NaN → 0); `min` keeps the index in the table.
        let i = (x * TABLE as f32 + 0.5) as usize;
        table[i.min(TABLE)]
    }

    /// Gamma-encoded 0..1 → linear 0..1 (clamped).
    fn linear(&self, c: f32) -> f32 {
        Self::lookup(&self.to_linear, c)
    }

    /// Linear 0..1 → gamma-encoded 0..1 (clamped).
    fn gamma(&self, l: f32) -> f32 {
        Self::lookup(&self.to_gamma, l.max(0.0).sqrt())
    }
}

fn luma(r: f32, g: f32, b: f32) -> f32 {
    KR * r + KG * g + KB * b
}

/// `(U, V)` of a gamma-encoded colour, centred on 0.
fn chroma(r: f32, g: f32, b: f32) -> (f32, f32) {
    let y = luma(r, g, b);
    ((b - y) / (2.0 * (1.0 - KB)), (r - y) / (2.0 * (1.0 - KR)))
}

/// The decoder's RGB (clamped to 0..1) from Y, U, V (U and V centred on 0).
fn to_rgb(y: f32, u: f32, v: f32) -> [f32; 3] {
    let r = y + 2.0 * (1.0 - KR) * v;
    let b = y + 2.0 * (1.0 - KB) * u;
    let g = y - 2.0 * (KR * (1.0 - KR) * v + KB * (1.0 - KB) * u) / KG;
    [r.clamp(0.0, 1.0), g.clamp(0.0, 1.0), b.clamp(0.0, 1.0)]
}

/// The chroma planes upsampled to full resolution as libavif's built-in 4:2:0 path does:
/// for pixel `(i, j)` the closest sample `(i/2, j/2)` weighs 9/16, the one beside it in the
/// direction of the pixel (left for even `i`, right for odd) 3/16, likewise above/below
/// 3/16, and the diagonal 1/16; a neighbour past the edge is the closest sample again.
fn upsample(plane: &[f32], cw: usize, ch: usize, w: usize, h: usize, out: &mut [f32]) {
    for j in 0..h {
        let (cj, nj) = (j / 2, neighbour(j, ch));
        let (row, adj) = (
            &plane[cj * cw..(cj + 1) * cw],
            &plane[nj * cw..(nj + 1) * cw],
        );
        for i in 0..w {
            let (ci, ni) = (i / 2, neighbour(i, cw));
            out[j * w + i] = (9.0 * row[ci] + 3.0 * row[ni] + 3.0 * adj[ci] + adj[ni]) / 16.0;
        }
    }
}

/// For full-resolution position `pos` (one axis), the chroma sample beside its closest
/// one, `pos / 2`, on the side of `pos` (before it for even `pos`, after it for odd), or
/// the closest one again past the edge of `samples`.
fn neighbour(pos: usize, samples: usize) -> usize {
    let closest = pos / 2;
    if pos.is_multiple_of(2) {
        closest.saturating_sub(1)
    } else {
        (closest + 1).min(samples - 1)
    }
}

/// Sharp 4:2:0 planes of interleaved 8-bit sRGB pixels (`channels` 3 or 4; alpha is not
/// looked at). `pixels` must hold `width × height × channels` bytes.
pub fn rgb_to_yuv420_sharp(pixels: &[u8], width: usize, height: usize, channels: usize) -> Yuv420 {
    convert(pixels, width, height, channels, ROUNDS)
}

/// [`rgb_to_yuv420_sharp`] with `rounds` rounds of correction (0: the plain conversion).
fn convert(pixels: &[u8], width: usize, height: usize, channels: usize, rounds: usize) -> Yuv420 {
    let (w, h) = (width, height);
    let (cw, ch) = (w.div_ceil(2), h.div_ceil(2));
    let transfer = &*TRANSFER;
    let px = |i: usize, j: usize| -> [u8; 3] {
        let at = (j * w + i) * channels;
        [pixels[at], pixels[at + 1], pixels[at + 2]]
    };

    // Targets: each pixel's linear luminance (gamma-encoded back) and each block's mean
    // linear colour (gamma-encoded back), and the plain starting point.
    let mut target_w = vec![0f32; w * h];
    let mut y = vec![0f32; w * h];
    let mut u = vec![0f32; cw * ch];
    let mut v = vec![0f32; cw * ch];
    let mut target_block = vec![[0f32; 3]; cw * ch];
    for cj in 0..ch {
        for ci in 0..cw {
            let (mut lin, mut su, mut sv, mut n) = ([0f32; 3], 0f32, 0f32, 0f32);
            for j in 2 * cj..(2 * cj + 2).min(h) {
                for i in 2 * ci..(2 * ci + 2).min(w) {
                    let code = px(i, j);
                    let l = code.map(|c| transfer.linear8[usize::from(c)]);
                    let [r, g, b] = code.map(|c| f32::from(c) / 255.0);
                    target_w[j * w + i] = transfer.gamma(LR * l[0] + LG * l[1] + LB * l[2]);
                    y[j * w + i] = luma(r, g, b);
                    let (pu, pv) = chroma(r, g, b);
                    su += pu;
                    sv += pv;
                    for c in 0..3 {
                        lin[c] += l[c];
                    }
                    n += 1.0;
                }
            }
            let k = cj * cw + ci;
            u[k] = su / n;
            v[k] = sv / n;
            target_block[k] = [
                transfer.gamma(lin[0] / n),
                transfer.gamma(lin[1] / n),
                transfer.gamma(lin[2] / n),
            ];
        }
    }

    // Each round: Y against the current chroma, then (but in the last round) the chroma
    // against the reconstruction with the new Y; so the final Y fits the final chroma.
    let (mut up_u, mut up_v) = (vec![0f32; w * h], vec![0f32; w * h]);
    let mut block_lin = vec![[0f32; 3]; cw * ch];
    for round in 0..rounds {
        let last = round + 1 == rounds;
        upsample(&u, cw, ch, w, h, &mut up_u);
        upsample(&v, cw, ch, w, h, &mut up_v);
        block_lin.iter_mut().for_each(|b| *b = [0.0; 3]);
        for j in 0..h {
            for i in 0..w {
                let k = j * w + i;
                let rgb = to_rgb(y[k], up_u[k], up_v[k]);
                let got_w = transfer.gamma(
                    LR * transfer.linear(rgb[0])
                        + LG * transfer.linear(rgb[1])
                        + LB * transfer.linear(rgb[2]),
                );
                y[k] = (y[k] + target_w[k] - got_w).clamp(0.0, 1.0);
                if !last {
                    let rgb = to_rgb(y[k], up_u[k], up_v[k]);
                    let b = &mut block_lin[(j / 2) * cw + i / 2];
                    for c in 0..3 {
                        b[c] += transfer.linear(rgb[c]);
                    }
                }
            }
        }
        if last {
            break;
        }
        for cj in 0..ch {
            let rows = (2 * cj + 2).min(h) - 2 * cj;
            for ci in 0..cw {
                let count = (rows * ((2 * ci + 2).min(w) - 2 * ci)) as f32;
                let k = cj * cw + ci;
                let got = block_lin[k];
                let (gu, gv) = chroma(
                    transfer.gamma(got[0] / count),
                    transfer.gamma(got[1] / count),
                    transfer.gamma(got[2] / count),
                );
                let [tr, tg, tb] = target_block[k];
                let (tu, tv) = chroma(tr, tg, tb);
                u[k] = (u[k] + CHROMA_STEP * (tu - gu)).clamp(-0.5, 0.5);
                v[k] = (v[k] + CHROMA_STEP * (tv - gv)).clamp(-0.5, 0.5);
            }
        }
    }

    let unorm = |x: f32| (x * 255.0).round().clamp(0.0, 255.0) as u8;
    Yuv420 {
        y: y.iter().map(|&x| unorm(x)).collect(),
        u: u.iter().map(|&x| unorm(x + 128.0 / 255.0)).collect(),
        v: v.iter().map(|&x| unorm(x + 128.0 / 255.0)).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The decoder's 8-bit RGB of `planes` (the model above, rounded as libavif does).
    fn reconstruct(planes: &Yuv420, w: usize, h: usize) -> Vec<[u8; 3]> {
        let (cw, ch) = (w.div_ceil(2), h.div_ceil(2));
        let centred =
            |p: &[u8]| -> Vec<f32> { p.iter().map(|&x| (f32::from(x) - 128.0) / 255.0).collect() };
        let (mut up_u, mut up_v) = (vec![0f32; w * h], vec![0f32; w * h]);
        upsample(&centred(&planes.u), cw, ch, w, h, &mut up_u);
        upsample(&centred(&planes.v), cw, ch, w, h, &mut up_v);
        (0..w * h)
            .map(|k| {
                let rgb = to_rgb(f32::from(planes.y[k]) / 255.0, up_u[k], up_v[k]);
                rgb.map(|c| (c * 255.0 + 0.5) as u8)
            })
            .collect()
    }

    /// Mean absolute error in linear light over all channels.
    fn linear_error(pixels: &[u8], channels: usize, got: &[[u8; 3]]) -> f64 {
        let lin = |c: u8| f64::from(srgb_to_linear_exact(f32::from(c) / 255.0));
        let mut sum = 0.0;
        for (px, g) in pixels.chunks_exact(channels).zip(got) {
            for c in 0..3 {
                sum += (lin(px[c]) - lin(g[c])).abs();
            }
        }
        sum / (got.len() * 3) as f64
    }

    fn red_green_checker(w: usize, h: usize, channels: usize) -> Vec<u8> {
        let mut pixels = Vec::with_capacity(w * h * channels);
        for j in 0..h {
            for i in 0..w {
                let red = (i / 3 + j / 5) % 2 == 0;
                let px = if red {
                    [220, 20, 30, 255]
                } else {
                    [30, 200, 40, 128]
                };
                pixels.extend_from_slice(&px[..channels]);
            }
        }
        pixels
    }

    #[test]
    fn sharp_reconstructs_colour_edges_closer_in_linear_light() {
        for (w, h, channels) in [(64, 48, 3), (33, 17, 4), (1, 1, 3), (2, 7, 3)] {
            let pixels = red_green_checker(w, h, channels);
            let plain = convert(&pixels, w, h, channels, 0);
            let sharp = rgb_to_yuv420_sharp(&pixels, w, h, channels);
            assert_eq!(sharp.y.len(), w * h);
            assert_eq!(sharp.u.len(), w.div_ceil(2) * h.div_ceil(2));
            let plain_error = linear_error(&pixels, channels, &reconstruct(&plain, w, h));
            let sharp_error = linear_error(&pixels, channels, &reconstruct(&sharp, w, h));
            assert!(
                sharp_error <= plain_error,
                "{w}x{h}: sharp {sharp_error} plain {plain_error}"
            );
            if w > 8 {
                assert!(
                    sharp_error < 0.9 * plain_error,
                    "{w}x{h}: sharp {sharp_error} plain {plain_error}"
                );
            }
        }
    }

    #[test]
    fn flat_colours_stay_as_the_plain_conversion() {
        let pixels: Vec<u8> = [90u8, 140, 200].repeat(6 * 5);
        let plain = convert(&pixels, 6, 5, 3, 0);
        let sharp = rgb_to_yuv420_sharp(&pixels, 6, 5, 3);
        for (a, b) in plain
            .y
            .iter()
            .chain(&plain.u)
            .zip(sharp.y.iter().chain(&sharp.u))
        {
            assert!(a.abs_diff(*b) <= 1, "{a} {b}");
        }
    }

    #[test]
    fn the_tables_follow_the_transfer_function() {
        let t = Transfer::new();
        for i in 0..=255u8 {
            let c = f32::from(i) / 255.0;
            assert!((t.linear(c) - srgb_to_linear_exact(c)).abs() < 3e-4);
            assert!((t.linear8[usize::from(i)] - srgb_to_linear_exact(c)).abs() < 1e-6);
            let l = srgb_to_linear_exact(c);
            assert!((t.gamma(l) - c).abs() < 3e-4, "{i}");
        }
    }
}
