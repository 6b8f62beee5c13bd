//! The score the worker computed before fast-ssim2, kept as the yardstick the fast metric is
//! held to: flattened on white (and on black when `alpha`) in sRGB, converted to linear
//! light per candidate, scored by the `ssimulacra2` crate (the reference implementation),
//! the lower score counting. Shared by `metric_tests.rs` and `examples/worker_metric_cost`
//! (which includes this file by `#[path]`); both bring `Prepared` into scope.
#![allow(clippy::unwrap_used)] // a yardstick for tests and measurements

use ssimulacra2::{LinearRgb, compute_frame_ssimulacra2};

use super::Prepared;

/// SSIMULACRA2 of `distorted` against `reference` as the `ssimulacra2` crate scores it.
pub fn slow_score(reference: &Prepared, distorted: &Prepared, alpha: bool) -> f64 {
    let backgrounds: &[u8] = if alpha { &[255, 0] } else { &[255] };
    backgrounds
        .iter()
        .map(|&bg| slow_score_on(reference, distorted, bg))
        .fold(f64::INFINITY, f64::min)
}

/// The same, both images flattened on the gray level `bg` only.
pub fn slow_score_on(reference: &Prepared, distorted: &Prepared, bg: u8) -> f64 {
    compute_frame_ssimulacra2(linear(reference, bg), linear(distorted, bg)).unwrap()
}

fn linear(image: &Prepared, bg: u8) -> LinearRgb {
    let to_linear = |v: u8| {
        let c = f32::from(v) / 255.0;
        if c <= 0.040_45 {
            c / 12.92
        } else {
            ((c + 0.055) / 1.055).powf(2.4)
        }
    };
    let over = |v: u8, a: u8| {
        let (v, a, bg) = (u32::from(v), u32::from(a), u32::from(bg));
        ((v * a + bg * (255 - a) + 127) / 255) as u8
    };
    let channels = if image.has_alpha() { 4 } else { 3 };
    let data = image
        .pixels()
        .chunks_exact(channels)
        .map(|p| {
            let a = if channels == 4 { p[3] } else { 255 };
            [
                to_linear(over(p[0], a)),
                to_linear(over(p[1], a)),
                to_linear(over(p[2], a)),
            ]
        })
        .collect();
    LinearRgb::new(data, image.width as usize, image.height as usize).unwrap()
}
