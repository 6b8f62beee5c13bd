//! SSIMULACRA2, written for the quality search: one reference, many candidates.
//!
//! The metric is the published one (libjxl's `tools/ssimulacra2.cc`, as the `ssimulacra2`
//! crate implements it, which `metric_tests.rs` holds this to within 0.5 points): both images
//! in linear RGB, up to six scales (2×2 box downscale in linear light), each converted to XYB
//! and shifted positive; per scale and channel the Gaussian-blurred (σ 1.5) means,
//! variances and covariance give an SSIM error map, and the blurred means an "edge" map
//! (ringing where the candidate has an edge the reference lacks, blurring the reverse);
//! their 1- and 4-norms, weighted by the 108 published weights, make the score.
//!
//! Why our own rather than `fast-ssim2` (which the worker used before): at 1024 px a
//! candidate's score cost more than its encode (72–94 ms against 33–57 ms, docs/benchmarks.md,
//! "Quality search cost (issue 15)"), and the search scores 3–4 of them. The work here is
//! laid out for that use:
//!
//! - Everything about the reference is computed once ([`Reference::new`]): its XYB planes,
//!   blurred means, variances (σ² − μ², the form the SSIM term uses) and edge strength
//!   `1 + |x − μ|`.
//! - Per candidate, only three blurs per channel remain (its mean, its square's mean, the
//!   product with the reference). They are streamed: rows are blurred horizontally eight at
//!   a time (one per SIMD lane) into a ring of 24 rows, the vertical pass advances over the
//!   ring one row at a time, and the maps consume each output row at once. No blurred plane
//!   is ever written out, so at 1024×683 the working set is a few hundred KB instead of
//!   nine 2.8 MB planes.
//! - The blur is the reference implementation's recursive Gaussian (Charalampidis'
//!   truncated cosines, radius 5 at σ 1.5) in f32, not its 9-tap FIR equivalent: exact
//!   in theory, the FIR scored up to 0.5 higher at q95 on 1024 px photos, because the
//!   recursion's f32 rounding noise is part of the reference's scores.
//! - sRGB → linear is a 256-entry table; the cube root of the opsin mix is two Halley steps
//!   from a bit-level guess (the mix is ≥ the opsin bias, 0.0038, so no special cases).
//! - The loops are plain Rust over slices, compiled twice: once for AVX2 + FMA, picked at
//!   run time, and once for the baseline target. Sums use per-lane accumulators so the
//!   vectorised and the scalar build add in the same order and give the same score.
//! - The per-candidate buffers ([`Workspace`]) are reused from one call to the next (no
//!   allocation per call after the first), one for all the references of an image.

use std::sync::LazyLock;

/// The smallest side SSIMULACRA2 supports; no scale is made below one smaller than this.
pub const MIN_SIDE: usize = 8;
/// Scales: 1:1 down to 1:32.
const NUM_SCALES: usize = 6;
/// The recursive Gaussian's radius N (σ 1.5: round(3.2795 σ + 0.2546)). Output n reads
/// the inputs at n − N − 1 and n + N − 1.
const N: usize = 5;
/// How far behind and ahead of the output the recursion reads.
const BEHIND: usize = N + 1;
const AHEAD: usize = N - 1;
/// Rows blurred horizontally at once, one per SIMD lane.
const BATCH: usize = 8;
/// Horizontally blurred rows kept per quantity for the vertical pass: it reads row
/// n − [`BEHIND`] while up to n + [`AHEAD`] + [`BATCH`] may already be there.
const RING: usize = 24;
/// The three cosine terms of the recursion, o = n2·(in[n−N−1] + in[n+N−1]) − d1·o₋₁ − o₋₂,
/// summed: Charalampidis (2016), "Recursive implementation of the Gaussian filter using
/// truncated cosine functions", eqs. (33)–(57) at σ 1.5, computed in f64 and rounded.
/// The same filter as libjxl's and the `ssimulacra2` crate's, in f32 like theirs: the
/// recursion's rounding noise (~1e-6, growing along a row) is part of the score at high
/// quality (an exact FIR of the same kernel scored 0.5 higher at q95, 1024 px), so the
/// filter is kept rather than replaced by its impulse response.
const IIR_N2: [f32; 3] = [0.055_295_236, -0.058_836_687, 0.012_955_819];
const IIR_D1: [f32; 3] = [-1.902_113_1, -1.175_570_5, -1.224_646_9e-16];
/// SSIM's stabilising constant (there is no C1: the mean term has no denominator).
const C2: f32 = 0.0009;
/// Lanes the map sums are split into: the order of additions is then fixed by the code
/// rather than by the compiler, and the same in the AVX2 and the baseline build.
const LANES: usize = 8;

/// Errors: only ones the caller can cause (the Scorer checks sizes before it gets here).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Ssim2Error {
    #[error("image {0}x{1} is smaller than 8x8")]
    TooSmall(usize, usize),
    #[error("{got} bytes of RGB for {width}x{height}")]
    BadLength {
        got: usize,
        width: usize,
        height: usize,
    },
    #[error("size mismatch: reference {0}x{1}, candidate {2}x{3}")]
    SizeMismatch(usize, usize, usize, usize),
}

/// sRGB (8-bit) to linear light, computed in f64 once per process.
static TO_LINEAR: LazyLock<[f32; 256]> = LazyLock::new(|| {
    let mut table = [0.0f32; 256];
    for (v, out) in table.iter_mut().enumerate() {
        let c = v as f64 / 255.0;
        let linear = if c <= 0.040_45 {
            c / 12.92
        } else {
            ((c + 0.055) / 1.055).powf(2.4)
        };
        *out = linear as f32;
    }
    table
});

/// Three planes of one scale, row-major, `width * height` each.
type Planes = [Vec<f32>; 3];

/// The reference side of one scale.
struct RefScale {
    width: usize,
    height: usize,
    /// XYB (shifted positive).
    xyb: Planes,
    /// Blurred XYB.
    mu: Planes,
    /// blur(x²) − μ²: the reference's term of the SSIM denominator.
    var: Planes,
    /// 1 + |x − μ|: the reference's edge strength.
    edge: Planes,
}

/// Buffers for scoring a candidate, reused from one comparison to the next (no allocation
/// per call after the first) and shared by the references of one image: an image with
/// alpha has two (white and black backgrounds) compared one after the other, and one
/// workspace each would hold ~27 bytes per pixel twice.
#[derive(Default)]
pub struct Workspace {
    /// Linear RGB of the current scale (downscaled in place).
    linear: Planes,
    /// The candidate's XYB at the current scale.
    xyb: Planes,
    /// The blur's buffers.
    blur: Blurrer,
    /// Six rows of per-pixel map terms.
    terms: Vec<f32>,
}

/// A reference image with its side of the metric computed, ready to score candidates.
pub struct Reference {
    width: usize,
    height: usize,
    scales: Vec<RefScale>,
}

/// The 1- and 4-norms of the three maps for one channel at one scale.
#[derive(Debug, Clone, Copy, Default)]
struct Norms {
    ssim: [f64; 2],
    artifact: [f64; 2],
    detail_lost: [f64; 2],
}

impl Reference {
    /// Precompute the reference side for packed 8-bit sRGB `rgb`.
    pub fn new(rgb: &[u8], width: usize, height: usize) -> Result<Reference, Ssim2Error> {
        check_size(rgb, width, height)?;
        let scales = if avx2_fma() {
            // SAFETY: the CPU supports AVX2 and FMA (checked at run time just above).
            unsafe { build_reference_avx2(rgb, width, height) }
        } else {
            build_reference(rgb, width, height)
        };
        Ok(Reference {
            width,
            height,
            scales,
        })
    }

    /// SSIMULACRA2 of packed 8-bit sRGB `rgb` (same size) against the reference, using
    /// (and growing) `workspace`.
    pub fn compare(
        &self,
        rgb: &[u8],
        width: usize,
        height: usize,
        workspace: &mut Workspace,
    ) -> Result<f64, Ssim2Error> {
        check_size(rgb, width, height)?;
        if (width, height) != (self.width, self.height) {
            return Err(Ssim2Error::SizeMismatch(
                self.width,
                self.height,
                width,
                height,
            ));
        }
        let norms = if avx2_fma() {
            // SAFETY: the CPU supports AVX2 and FMA (checked at run time just above).
            unsafe { compare_avx2(&self.scales, rgb, workspace) }
        } else {
            compare_scales(&self.scales, rgb, workspace)
        };
        Ok(combine(&norms))
    }
}

fn check_size(rgb: &[u8], width: usize, height: usize) -> Result<(), Ssim2Error> {
    if width < MIN_SIDE || height < MIN_SIDE {
        return Err(Ssim2Error::TooSmall(width, height));
    }
    if width.checked_mul(height).and_then(|n| n.checked_mul(3)) != Some(rgb.len()) {
        return Err(Ssim2Error::BadLength {
            got: rgb.len(),
            width,
            height,
        });
    }
    Ok(())
}

/// Whether the AVX2 + FMA build of the loops can run here (cached by std).
fn avx2_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn build_reference_avx2(rgb: &[u8], width: usize, height: usize) -> Vec<RefScale> {
    build_reference(rgb, width, height)
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn build_reference_avx2(rgb: &[u8], width: usize, height: usize) -> Vec<RefScale> {
    build_reference(rgb, width, height)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn compare_avx2(scales: &[RefScale], rgb: &[u8], ws: &mut Workspace) -> Vec<[Norms; 3]> {
    compare_scales(scales, rgb, ws)
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn compare_avx2(scales: &[RefScale], rgb: &[u8], ws: &mut Workspace) -> Vec<[Norms; 3]> {
    compare_scales(scales, rgb, ws)
}

/// The scales' sizes: halved (rounded up), up to [`NUM_SCALES`], while the scale *before*
/// is at least [`MIN_SIDE`] on both sides. The reference implementation (libjxl, and the
/// `ssimulacra2` crate) checks the size before it downscales, so its last scale can be
/// smaller than 8 (a 200×150 thumbnail is scored down to 7×5), and the weights are taken in
/// order over the scales computed, so stopping one scale early would shift every weight
/// after it (scores 15 points off at 200 px).
fn scale_sizes(width: usize, height: usize) -> Vec<(usize, usize)> {
    let mut sizes = Vec::with_capacity(NUM_SCALES);
    let (mut w, mut h) = (width, height);
    while sizes.len() < NUM_SCALES && w >= MIN_SIDE && h >= MIN_SIDE {
        if !sizes.is_empty() {
            w = w.div_ceil(2);
            h = h.div_ceil(2);
        }
        sizes.push((w, h));
    }
    sizes
}

#[inline(always)]
fn build_reference(rgb: &[u8], width: usize, height: usize) -> Vec<RefScale> {
    let sizes = scale_sizes(width, height);
    let mut scales = Vec::with_capacity(sizes.len());
    let mut linear: Planes = Default::default();
    to_linear_planes(rgb, &mut linear);
    let mut blur = Blurrer::default();
    for (i, &(w, h)) in sizes.iter().enumerate() {
        if i > 0 {
            downscale(&mut linear, sizes[i - 1].0, sizes[i - 1].1);
        }
        let n = w * h;
        // `vec!` of zeros is a zeroed allocation: fresh pages from the system are not
        // written twice (a resize would memset them before they are overwritten).
        let planes = || -> Planes { std::array::from_fn(|_| vec![0.0f32; n]) };
        let mut xyb = planes();
        to_xyb(&linear, n, &mut xyb);
        let (mut mu, mut var, mut edge) = (planes(), planes(), planes());
        for c in 0..3 {
            let x = &xyb[c][..n];
            let (mu, var, edge) = (&mut mu[c], &mut var[c], &mut edge[c]);
            stream_blur::<2>(
                &mut blur,
                w,
                h,
                #[inline(always)]
                |q, y, row| {
                    let src = &x[y * w..][..w];
                    if q == 0 {
                        row.copy_from_slice(src);
                    } else {
                        for (r, v) in row.iter_mut().zip(src) {
                            *r = v * v;
                        }
                    }
                },
                #[inline(always)]
                |y, rows| {
                    let at = y * w;
                    let (m, sq) = (&rows[..w], &rows[w..2 * w]);
                    mu[at..at + w].copy_from_slice(m);
                    for (((v, e), (m, sq)), x) in var[at..at + w]
                        .iter_mut()
                        .zip(&mut edge[at..at + w])
                        .zip(m.iter().zip(sq))
                        .zip(&x[at..at + w])
                    {
                        *v = sq - m * m;
                        *e = 1.0 + (x - m).abs();
                    }
                },
            );
        }
        scales.push(RefScale {
            width: w,
            height: h,
            xyb,
            mu,
            var,
            edge,
        });
    }
    scales
}

#[inline(always)]
fn compare_scales(scales: &[RefScale], rgb: &[u8], ws: &mut Workspace) -> Vec<[Norms; 3]> {
    let mut out = Vec::with_capacity(scales.len());
    to_linear_planes(rgb, &mut ws.linear);
    for (i, scale) in scales.iter().enumerate() {
        if i > 0 {
            let previous = &scales[i - 1];
            downscale(&mut ws.linear, previous.width, previous.height);
        }
        let n = scale.width * scale.height;
        for plane in &mut ws.xyb {
            grow(plane, n);
        }
        to_xyb(&ws.linear, n, &mut ws.xyb);
        out.push(compare_scale(scale, ws));
    }
    out
}

/// Make `plane` at least `n` long. Buffers reused from one scale or call to the next are
/// only ever grown, never refilled: every element used is written before it is read, and
/// a resize to a smaller then a larger size would memset megabytes per comparison.
#[inline(always)]
fn grow(plane: &mut Vec<f32>, n: usize) {
    if plane.len() < n {
        plane.resize(n, 0.0);
    }
}

/// Packed 8-bit sRGB to three linear planes.
#[inline(always)]
fn to_linear_planes(rgb: &[u8], out: &mut Planes) {
    let table = &*TO_LINEAR;
    let n = rgb.len() / 3;
    let [r, g, b] = out;
    for plane in [&mut *r, &mut *g, &mut *b] {
        plane.clear();
        plane.reserve(n);
    }
    for p in rgb.chunks_exact(3) {
        r.push(table[usize::from(p[0])]);
        g.push(table[usize::from(p[1])]);
        b.push(table[usize::from(p[2])]);
    }
}

/// 2×2 box average in linear light, in place (the next scale is written over the start of
/// the current one, so no second full-size buffer is held); an odd last row or column is
/// averaged with itself (the reference implementation clamps its coordinates the same way).
#[inline(always)]
fn downscale(planes: &mut Planes, width: usize, height: usize) {
    let (ow, oh) = (width.div_ceil(2), height.div_ceil(2));
    let pairs = width / 2;
    let average = |row0: &[f32], row1: &[f32], out_row: &mut [f32]| {
        for ((o, a), b) in out_row[..pairs]
            .iter_mut()
            .zip(row0.chunks_exact(2))
            .zip(row1.chunks_exact(2))
        {
            *o = (((a[0] + a[1]) + b[0]) + b[1]) * 0.25;
        }
        if width % 2 == 1 {
            let x = width - 1;
            out_row[pairs] = (((row0[x] + row0[x]) + row1[x]) + row1[x]) * 0.25;
        }
    };
    for plane in planes.iter_mut() {
        // Output row 0 overlaps input row 0, but output x reads inputs 2x and 2x + 1 (and
        // row 1), never behind a write, so a scalar pass in increasing x is exact.
        let y1 = 1.min(height - 1) * width;
        for ox in 0..ow {
            let x0 = 2 * ox;
            let x1 = (x0 + 1).min(width - 1);
            plane[ox] = (((plane[x0] + plane[x1]) + plane[y1 + x0]) + plane[y1 + x1]) * 0.25;
        }
        // Output row oy ≥ 1 ends at (oy + 1)·ow ≤ 2·oy·width, where its input rows start.
        for oy in 1..oh {
            let y0 = 2 * oy;
            let y1 = (y0 + 1).min(height - 1);
            let (head, tail) = plane.split_at_mut(y0 * width);
            average(
                &tail[..width],
                &tail[(y1 - y0) * width..][..width],
                &mut head[oy * ow..][..ow],
            );
        }
    }
}

/// Cube root for the opsin mix, which is at least the opsin bias (0.0038) and at most ~1.
/// A guess from the bits (a third of the bit pattern plus a constant, within ~4 %),
/// then two Halley steps (cubic convergence: ~1e-5, then below f32's resolution). Written
/// without branches or lookups so that it vectorises.
#[inline(always)]
fn cbrt(x: f32) -> f32 {
    // Integer division by a constant vectorises; a float-to-int cast (saturating in
    // Rust) does not.
    let guess = f32::from_bits(x.to_bits() / 3 + 709_921_077);
    halley(halley(guess, x), x)
}

/// One Halley step for y³ = x.
#[inline(always)]
fn halley(y: f32, x: f32) -> f32 {
    let y3 = y * y * y;
    y * (y3 + 2.0 * x) / (2.0 * y3 + x)
}

/// Linear RGB to XYB, shifted positive as SSIMULACRA2 wants it (X·14 + 0.42, Y + 0.01,
/// B − Y + 0.55).
#[inline(always)]
fn to_xyb(linear: &Planes, n: usize, out: &mut Planes) {
    const M: [[f32; 3]; 3] = [
        [0.30, 0.622, 0.078],
        [0.23, 0.692, 0.078],
        [0.243_422_69, 0.204_767_45, 0.551_809_86],
    ];
    let (r, g, b) = (&linear[0][..n], &linear[1][..n], &linear[2][..n]);
    let [ox, oy, ob] = out;
    let (ox, oy, ob) = (&mut ox[..n], &mut oy[..n], &mut ob[..n]);
    for i in 0..n {
        let (r, g, b) = (r[i], g[i], b[i]);
        let (l, m, s) = (mix(M[0], r, g, b), mix(M[1], r, g, b), mix(M[2], r, g, b));
        let y = 0.5 * (l + m);
        ox[i] = 0.5 * (l - m) * 14.0 + 0.42;
        oy[i] = y + 0.01;
        ob[i] = (s - y) + 0.55;
    }
}

/// One row of the opsin matrix applied, biased, cube-rooted and shifted so black is zero.
#[inline(always)]
fn mix(m: [f32; 3], r: f32, g: f32, b: f32) -> f32 {
    const BIAS: f32 = 0.003_793_073_4;
    // cbrt(BIAS), subtracted so that black maps to zero.
    const CBRT_BIAS: f32 = 0.155_954_2;
    let v = m[0] * r + m[1] * g + m[2] * b + BIAS;
    cbrt(v.max(0.0)) - CBRT_BIAS
}

/// Buffers of the streamed blur, kept between calls.
#[derive(Default)]
struct Blurrer {
    /// The rows of one batch, transposed (one lane per row) and padded with zeros: input
    /// x is at `BEHIND + AHEAD + x`... see [`horizontal`].
    lanes_in: Vec<[f32; BATCH]>,
    lanes_out: Vec<[f32; BATCH]>,
    /// One input row as `fill` writes it.
    row: Vec<f32>,
    /// `Q` quantities × [`RING`] rows × width, horizontally blurred.
    ring: Vec<f32>,
    /// The vertical recursion's state: `Q` quantities × (o₋₁, o₋₂) × 3 terms × width.
    state: Vec<f32>,
    /// One fully blurred row of each quantity, handed to `consume`.
    out: Vec<f32>,
    /// A row of zeros, read above and below the image.
    zeros: Vec<f32>,
}

/// Left padding of a batch's transposed rows: the recursion starts at n = −(N − 1) and
/// reads n − N − 1.
const PAD_LEFT: usize = AHEAD + BEHIND;

/// Blur `Q` quantities of a `width`×`height` plane with the recursive Gaussian, zeros
/// outside the image, streaming: `fill(q, y, row)` writes the input row `y` of quantity
/// `q`; rows are blurred horizontally eight at a time (one per lane) into a ring, the
/// vertical recursion advances one row at a time over the whole width, and
/// `consume(y, rows)` gets output row `y` of every quantity (`rows[q * width..]`).
#[inline(always)]
fn stream_blur<const Q: usize>(
    b: &mut Blurrer,
    width: usize,
    height: usize,
    mut fill: impl FnMut(usize, usize, &mut [f32]),
    mut consume: impl FnMut(usize, &[f32]),
) {
    let w = width;
    b.lanes_in.clear();
    b.lanes_in.resize(w + PAD_LEFT + AHEAD, [0.0; BATCH]);
    b.lanes_out.clear();
    b.lanes_out.resize(w, [0.0; BATCH]);
    b.row.clear();
    b.row.resize(w, 0.0);
    // Every ring row is written before it is read.
    grow(&mut b.ring, Q * RING * w);
    b.state.clear();
    b.state.resize(Q * 6 * w, 0.0);
    b.out.clear();
    b.out.resize(Q * w, 0.0);
    b.zeros.clear();
    b.zeros.resize(w, 0.0);
    let mut blurred = 0usize;
    // The vertical recursion starts N − 1 rows above the image, like the horizontal one.
    let mut n = -(AHEAD as isize);
    while n < height as isize {
        let needed = (n + AHEAD as isize + 1).clamp(0, height as isize) as usize;
        if blurred < needed {
            let count = BATCH.min(height - blurred);
            for q in 0..Q {
                for lane in 0..count {
                    fill(q, blurred + lane, &mut b.row);
                    for (cell, v) in b.lanes_in[PAD_LEFT..PAD_LEFT + w].iter_mut().zip(&b.row) {
                        cell[lane] = *v;
                    }
                }
                horizontal(&b.lanes_in, &mut b.lanes_out);
                for lane in 0..count {
                    let slot = (blurred + lane) % RING;
                    let dst = &mut b.ring[(q * RING + slot) * w..][..w];
                    for (d, cell) in dst.iter_mut().zip(&b.lanes_out) {
                        *d = cell[lane];
                    }
                }
            }
            blurred += count;
            continue;
        }
        for q in 0..Q {
            let top = ring_row(&b.ring, &b.zeros, q, n - BEHIND as isize, height);
            let bottom = ring_row(&b.ring, &b.zeros, q, n + AHEAD as isize, height);
            let state = &mut b.state[q * 6 * w..(q + 1) * 6 * w];
            vertical(top, bottom, state, &mut b.out[q * w..(q + 1) * w]);
        }
        if n >= 0 {
            consume(n as usize, &b.out);
        }
        n += 1;
    }
}

/// Row `r` of quantity `q` in the ring, or zeros outside the image.
#[inline(always)]
fn ring_row<'a>(ring: &'a [f32], zeros: &'a [f32], q: usize, r: isize, height: usize) -> &'a [f32] {
    let w = zeros.len();
    if r < 0 || r >= height as isize {
        zeros
    } else {
        &ring[(q * RING + r as usize % RING) * w..][..w]
    }
}

/// The horizontal recursion over a batch of transposed rows (see [`stream_blur`]).
#[inline(always)]
fn horizontal(input: &[[f32; BATCH]], out: &mut [[f32; BATCH]]) {
    let w = out.len();
    let input = &input[..w + PAD_LEFT + AHEAD];
    let mut prev = [[0.0f32; BATCH]; 3];
    let mut prev2 = [[0.0f32; BATCH]; 3];
    for i in 0..w + AHEAD {
        // Output x = i − AHEAD reads x − N − 1 and x + N − 1.
        let (left, right) = (input[i], input[i + BEHIND + AHEAD]);
        let mut sum = [0.0f32; BATCH];
        for k in 0..3 {
            for lane in 0..BATCH {
                let s = left[lane] + right[lane];
                let o = IIR_N2[k].mul_add(s, -IIR_D1[k].mul_add(prev[k][lane], prev2[k][lane]));
                prev2[k][lane] = prev[k][lane];
                prev[k][lane] = o;
                sum[lane] += o;
            }
        }
        if let Some(x) = i.checked_sub(AHEAD) {
            out[x] = sum;
        }
    }
}

/// One step of the vertical recursion across a row: `top` and `bottom` are the input rows
/// at n − N − 1 and n + N − 1, `state` holds o₋₁ of the three terms then o₋₂.
#[inline(always)]
fn vertical(top: &[f32], bottom: &[f32], state: &mut [f32], out: &mut [f32]) {
    let w = out.len();
    let (top, bottom) = (&top[..w], &bottom[..w]);
    let (p0, rest) = state.split_at_mut(w);
    let (p1, rest) = rest.split_at_mut(w);
    let (p2, rest) = rest.split_at_mut(w);
    let (q0, rest) = rest.split_at_mut(w);
    let (q1, q2) = rest.split_at_mut(w);
    let (q2, p0, p1, p2, q0, q1) = (
        &mut q2[..w],
        &mut p0[..w],
        &mut p1[..w],
        &mut p2[..w],
        &mut q0[..w],
        &mut q1[..w],
    );
    for x in 0..w {
        let s = top[x] + bottom[x];
        let o0 = IIR_N2[0].mul_add(s, -IIR_D1[0].mul_add(p0[x], q0[x]));
        let o1 = IIR_N2[1].mul_add(s, -IIR_D1[1].mul_add(p1[x], q1[x]));
        let o2 = IIR_N2[2].mul_add(s, -IIR_D1[2].mul_add(p2[x], q2[x]));
        q0[x] = p0[x];
        q1[x] = p1[x];
        q2[x] = p2[x];
        p0[x] = o0;
        p1[x] = o1;
        p2[x] = o2;
        out[x] = (o0 + o1) + o2;
    }
}

/// One scale of a comparison, channel by channel: the candidate, its square and its
/// product with the reference are blurred and consumed row by row by the maps.
#[inline(always)]
fn compare_scale(scale: &RefScale, ws: &mut Workspace) -> [Norms; 3] {
    let (w, h) = (scale.width, scale.height);
    let Workspace {
        xyb, blur, terms, ..
    } = ws;
    terms.clear();
    terms.resize(6 * w, 0.0);
    let mut norms = [Norms::default(); 3];
    for (c, norm) in norms.iter_mut().enumerate() {
        let x2 = &xyb[c][..w * h];
        let x1 = &scale.xyb[c][..w * h];
        let mut sums = [0.0f64; 6];
        stream_blur::<3>(
            blur,
            w,
            h,
            #[inline(always)]
            |q, y, row| {
                let (a, b) = (&x1[y * w..][..w], &x2[y * w..][..w]);
                match q {
                    0 => row.copy_from_slice(b),
                    1 => {
                        for (r, v) in row.iter_mut().zip(b) {
                            *r = v * v;
                        }
                    }
                    _ => {
                        for ((r, u), v) in row.iter_mut().zip(a).zip(b) {
                            *r = u * v;
                        }
                    }
                }
            },
            #[inline(always)]
            |y, rows| {
                let at = y * w;
                let row_sums = map_row(
                    &x2[at..at + w],
                    &rows[..w],
                    &rows[w..2 * w],
                    &rows[2 * w..3 * w],
                    &scale.mu[c][at..at + w],
                    &scale.var[c][at..at + w],
                    &scale.edge[c][at..at + w],
                    terms,
                );
                for (s, r) in sums.iter_mut().zip(row_sums) {
                    *s += f64::from(r);
                }
            },
        );
        let per_pixel = 1.0 / (w * h) as f64;
        let norm4 = |v: f64| (v * per_pixel).sqrt().sqrt();
        *norm = Norms {
            ssim: [sums[0] * per_pixel, norm4(sums[1])],
            artifact: [sums[2] * per_pixel, norm4(sums[3])],
            detail_lost: [sums[4] * per_pixel, norm4(sums[5])],
        };
    }
    norms
}

/// One row of the SSIM and edge maps for one channel: sums of d, d⁴ (SSIM error), and of
/// the artefact and lost-detail terms and their fourth powers. The terms are written to
/// `terms` (six rows) by one element-wise loop and then summed lane by lane, two loops
/// the compiler vectorises as they are.
#[allow(clippy::too_many_arguments)] // the seven rows of one channel, all read together
#[inline(always)]
fn map_row(
    x2: &[f32],
    mu2: &[f32],
    sq2: &[f32],
    cross: &[f32],
    mu1: &[f32],
    var1: &[f32],
    edge1: &[f32],
    terms: &mut [f32],
) -> [f32; 6] {
    let w = x2.len();
    let (mu2, sq2, cross) = (&mu2[..w], &sq2[..w], &cross[..w]);
    let (mu1, var1, edge1) = (&mu1[..w], &var1[..w], &edge1[..w]);
    let (t0, rest) = terms[..6 * w].split_at_mut(w);
    let (t1, rest) = rest.split_at_mut(w);
    let (t2, rest) = rest.split_at_mut(w);
    let (t3, rest) = rest.split_at_mut(w);
    let (t4, t5) = rest.split_at_mut(w);
    for j in 0..w {
        let (m1, m2) = (mu1[j], mu2[j]);
        let diff = m1 - m2;
        let num_m = 1.0 - diff * diff;
        let num_s = 2.0 * (cross[j] - m1 * m2) + C2;
        let denom_s = var1[j] + (sq2[j] - m2 * m2) + C2;
        let d = (1.0 - num_m * num_s / denom_s).max(0.0);
        // A division, not a multiplication by a stored reciprocal: identical images must
        // give exactly 0 here (and score exactly 100), as in the reference.
        let ratio = (1.0 + (x2[j] - m2).abs()) / edge1[j] - 1.0;
        let artifact = ratio.max(0.0);
        let lost = (-ratio).max(0.0);
        let (d2, a2, l2) = (d * d, artifact * artifact, lost * lost);
        t0[j] = d;
        t1[j] = d2 * d2;
        t2[j] = artifact;
        t3[j] = a2 * a2;
        t4[j] = lost;
        t5[j] = l2 * l2;
    }
    [
        lane_sum(t0),
        lane_sum(t1),
        lane_sum(t2),
        lane_sum(t3),
        lane_sum(t4),
        lane_sum(t5),
    ]
}

/// The sum of `values`, added in [`LANES`] interleaved partial sums (a fixed order, so the
/// vectorised and the scalar build agree to the bit).
#[inline(always)]
fn lane_sum(values: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    let chunks = values.chunks_exact(LANES);
    let rest = chunks.remainder();
    for chunk in chunks {
        for lane in 0..LANES {
            acc[lane] += chunk[lane];
        }
    }
    for (a, v) in acc.iter_mut().zip(rest) {
        *a += v;
    }
    acc.iter().sum()
}

/// The published weights: per channel (X, Y, B), per scale, per norm (1, 4), for the SSIM,
/// artefact and lost-detail maps.
const WEIGHT: [f64; 108] = [
    0.0,
    0.000_737_660_670_740_658_6,
    0.0,
    0.0,
    0.000_779_348_168_286_730_9,
    0.0,
    0.0,
    0.000_437_115_573_010_737_9,
    0.0,
    1.104_172_642_665_734_6,
    0.000_662_848_341_292_71,
    0.000_152_316_327_837_187_52,
    0.0,
    0.001_640_643_745_659_975_4,
    0.0,
    1.842_245_552_053_929_8,
    11.441_172_603_757_666,
    0.0,
    0.000_798_910_943_601_516_3,
    0.000_176_816_438_078_653,
    0.0,
    1.878_759_497_954_638_7,
    10.949_069_906_051_42,
    0.0,
    0.000_728_934_699_150_807_2,
    0.967_793_708_062_683_3,
    0.0,
    0.000_140_034_242_854_358_84,
    0.998_176_697_785_496_7,
    0.000_319_497_559_344_350_53,
    0.000_455_099_211_379_206_3,
    0.0,
    0.0,
    0.001_364_876_616_324_339_8,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    7.466_890_328_078_848,
    0.0,
    17.445_833_984_131_262,
    0.000_623_560_163_404_146_6,
    0.0,
    0.0,
    6.683_678_146_179_332,
    0.000_377_244_079_796_112_96,
    1.027_889_937_768_264,
    225.205_153_008_492_74,
    0.0,
    0.0,
    19.213_238_186_143_016,
    0.001_140_152_458_661_836_1,
    0.001_237_755_635_509_985,
    176.393_175_984_506_94,
    0.0,
    0.0,
    24.433_009_998_704_76,
    0.285_208_026_121_177_57,
    0.000_448_543_692_383_340_8,
    0.0,
    0.0,
    0.0,
    34.779_063_444_837_72,
    44.835_625_328_877_896,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.000_868_055_657_329_169_8,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.000_531_319_187_435_874_7,
    0.0,
    0.000_165_338_141_613_791_12,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.000_417_917_180_325_133_6,
    0.001_729_082_823_472_283_3,
    0.0,
    0.002_082_700_584_663_643_7,
    0.0,
    0.0,
    8.826_982_764_996_862,
    23.192_433_439_989_26,
    0.0,
    95.108_049_881_108_6,
    0.986_397_803_440_068_2,
    0.983_438_279_246_535_3,
    0.001_228_640_504_827_849_3,
    171.266_725_589_730_7,
    0.980_785_887_243_537_9,
    0.0,
    0.0,
    0.0,
    0.000_513_006_458_899_067_9,
    0.0,
    0.000_108_540_578_584_115_37,
];

/// The weighted sum of all norms, mapped to the 100-is-identical scale. The weights are
/// taken in order over the scales present (an image under 256 px has fewer than six), as
/// the reference implementation does.
fn combine(scales: &[[Norms; 3]]) -> f64 {
    let mut sum = 0.0f64;
    let mut i = 0;
    for c in 0..3 {
        for scale in scales {
            let norms = &scale[c];
            for n in 0..2 {
                sum += WEIGHT[i] * norms.ssim[n].abs();
                sum += WEIGHT[i + 1] * norms.artifact[n].abs();
                sum += WEIGHT[i + 2] * norms.detail_lost[n].abs();
                i += 3;
            }
        }
    }
    let s = sum * 0.956_238_261_683_484_4;
    let s = 2.326_765_642_916_932 * s - 0.020_884_521_182_843_837 * s * s
        + 6.248_496_625_763_138e-5 * s * s * s;
    if s > 0.0 {
        100.0 - 10.0 * s.powf(0.627_633_646_783_138_7)
    } else {
        100.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic plane with structure and noise, values in 0.2..0.8.
    fn plane(width: usize, height: usize, seed: u32) -> Vec<f32> {
        let mut state = seed.wrapping_mul(2_654_435_761) | 1;
        (0..width * height)
            .map(|i| {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                let (x, y) = ((i % width) as f32, (i / width) as f32);
                let noise = (state % 1000) as f32 / 1000.0;
                0.5 + 0.2 * (x * 0.31 + y * 0.17).sin() + 0.1 * (noise - 0.5)
            })
            .collect()
    }

    fn rgb(width: usize, height: usize, seed: u32) -> Vec<u8> {
        let p = plane(width * 3, height, seed);
        p.iter().map(|v| (v * 255.0) as u8).collect()
    }

    #[test]
    fn cbrt_is_exact_to_f32_over_the_opsin_range() {
        // The mix is at least the bias (0.0038) and at most ~1.01 (white), plus margin.
        let mut worst: f64 = 0.0;
        for i in 0..=200_000 {
            let x = 0.0037 + 1.1 * i as f32 / 200_000.0;
            let exact = f64::from(x).cbrt();
            worst = worst.max(((f64::from(cbrt(x)) - exact) / exact).abs());
        }
        // Two f32 ulps: a plain f32 division is already one.
        assert!(worst < 2.4e-7, "relative error {worst:e}");
    }

    #[test]
    fn blur_matches_the_recursive_gaussian_of_the_reference_implementation() {
        // Odd sizes, a row shorter than a batch, one narrower than the ring, one wide.
        for (w, h) in [
            (37, 23),
            (9, 8),
            (300, 11),
            (8, 70),
            (1030, 12),
            (4, 4),
            (7, 5),
            (1, 3),
        ] {
            let input = plane(w, h, (w * h) as u32);
            let expected =
                ssimulacra2::Blur::new(w, h).blur(&[input.clone(), input.clone(), input.clone()]);
            let mut got = vec![0.0f32; w * h];
            let mut squares = vec![0.0f32; w * h];
            stream_blur::<2>(
                &mut Blurrer::default(),
                w,
                h,
                |q, y, row| {
                    for (r, v) in row.iter_mut().zip(&input[y * w..(y + 1) * w]) {
                        *r = if q == 0 { *v } else { v * v };
                    }
                },
                |y, rows| {
                    got[y * w..(y + 1) * w].copy_from_slice(&rows[..w]);
                    squares[y * w..(y + 1) * w].copy_from_slice(&rows[w..]);
                },
            );
            let worst = got
                .iter()
                .zip(&expected[0])
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            // Same recursion, different rounding: a few f32 ulps of values around 0.5.
            assert!(worst < 1e-5, "{w}x{h}: max |difference| {worst:e}");
            // Interior pixels of a blurred plane of squares are near the squared mean
            // plus its local variance: positive and bounded, and never mixed up with
            // the first quantity's ring rows.
            let squared: Vec<f32> = input.iter().map(|v| v * v).collect();
            let expected_sq =
                ssimulacra2::Blur::new(w, h).blur(&[squared.clone(), squared.clone(), squared]);
            let worst_sq = squares
                .iter()
                .zip(&expected_sq[0])
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            assert!(
                worst_sq < 1e-5,
                "{w}x{h}: squares, max |difference| {worst_sq:e}"
            );
        }
    }

    #[test]
    fn identical_images_score_100_and_distortion_lowers_the_score() {
        let (w, h) = (61, 45);
        let image = rgb(w, h, 7);
        let reference = Reference::new(&image, w, h).unwrap();
        let ws = &mut Workspace::default();
        assert_eq!(reference.compare(&image, w, h, ws).unwrap(), 100.0);
        let mut worse = image.clone();
        for (i, v) in worse.iter_mut().enumerate() {
            if i % 7 == 0 {
                *v = v.saturating_add(40);
            }
        }
        let score = reference.compare(&worse, w, h, ws).unwrap();
        assert!(score < 90.0, "{score}");
        // Scoring is repeatable with the reused workspace, whatever came before, even a
        // comparison of another size.
        let small = Reference::new(&image[..w * 20 * 3], w, 20).unwrap();
        small.compare(&worse[..w * 20 * 3], w, 20, ws).unwrap();
        assert_eq!(reference.compare(&worse, w, h, ws).unwrap(), score);
        assert_eq!(reference.compare(&image, w, h, ws).unwrap(), 100.0);
        assert_eq!(
            reference
                .compare(&worse, w, h, &mut Workspace::default())
                .unwrap(),
            score
        );
    }

    #[test]
    fn the_vectorised_and_the_baseline_build_give_the_same_score() {
        if !avx2_fma() {
            return;
        }
        let (w, h) = (203, 77);
        let (a, b) = (rgb(w, h, 1), rgb(w, h, 2));
        let baseline = build_reference(&a, w, h);
        // SAFETY: avx2_fma() was checked above.
        let vectorised = unsafe { build_reference_avx2(&a, w, h) };
        for (x, y) in baseline.iter().zip(&vectorised) {
            assert_eq!(x.mu, y.mu);
            assert_eq!(x.var, y.var);
            assert_eq!(x.edge, y.edge);
        }
        let plain = combine(&compare_scales(&baseline, &b, &mut Workspace::default()));
        // SAFETY: as above.
        let fast = combine(&unsafe { compare_avx2(&vectorised, &b, &mut Workspace::default()) });
        assert_eq!(plain, fast);
    }

    #[test]
    fn bad_sizes_are_errors() {
        let image = rgb(16, 16, 3);
        assert_eq!(
            Reference::new(&image[..7 * 16 * 3], 16, 7).err(),
            Some(Ssim2Error::TooSmall(16, 7))
        );
        assert!(matches!(
            Reference::new(&image, 16, 15),
            Err(Ssim2Error::BadLength { .. })
        ));
        let reference = Reference::new(&image, 16, 16).unwrap();
        assert_eq!(
            reference
                .compare(&image[..16 * 8 * 3], 16, 8, &mut Workspace::default())
                .err(),
            Some(Ssim2Error::SizeMismatch(16, 16, 16, 8))
        );
    }

    #[test]
    fn scales_stop_after_the_first_under_eight_pixels() {
        assert_eq!(scale_sizes(8, 8), vec![(8, 8), (4, 4)]);
        assert_eq!(scale_sizes(17, 300), vec![(17, 300), (9, 150), (5, 75)]);
        assert_eq!(
            scale_sizes(200, 150),
            vec![(200, 150), (100, 75), (50, 38), (25, 19), (13, 10), (7, 5)]
        );
        assert_eq!(
            scale_sizes(1024, 683),
            vec![
                (1024, 683),
                (512, 342),
                (256, 171),
                (128, 86),
                (64, 43),
                (32, 22)
            ]
        );
    }
}
