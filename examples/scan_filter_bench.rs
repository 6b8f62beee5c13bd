//! Benchmark for the progressive-JPEG scan filter (`pipeline::jpeg_scans`).
//!
//! For each file and DCT scale (1/8, 1/4, 1/2): median thread CPU time of a libjpeg (mozjpeg)
//! decode of the original bytes vs the filter plus a decode of the filtered bytes, and the
//! SSIMULACRA2 of the final thumbnail (Lanczos3 down to half the decoded width, the largest
//! target the pipeline serves from that scale) against the thumbnail made from the original
//! bytes at the same scale, and against one made from a full-size decode.
//!
//! Run single-core: `taskset -c 1 cargo run --example scan_filter_bench -- FILE...`
//! (`RUNS=n` changes the number of timed runs, default 5). Prints a Markdown table.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a measuring tool: a failed unwrap ends the run

use edgethumb::pipeline::jpeg_scans::{Fidelity, strip_unneeded_scans_with};
use fast_image_resize::images::Image;
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use ssimulacra2::{ColorPrimaries, Rgb, TransferCharacteristic, compute_frame_ssimulacra2};

type Error = Box<dyn std::error::Error>;

struct Decoded {
    width: usize,
    height: usize,
    rgb: Vec<u8>,
}

/// `scale_denom` 1 = full size. Smoothing is libjpeg's default; the filtered stream must be
/// decoded without it (see the module docs).
fn decode(jpeg: &[u8], scale_denom: u32, smoothing: bool) -> Result<Decoded, Error> {
    let mut dec = mozjpeg::Decompress::new_mem(jpeg)?;
    dec.scale(u8::try_from(8 / scale_denom)?);
    dec.do_block_smoothing(smoothing);
    let mut started = dec.rgb()?;
    let (width, height) = (started.width(), started.height());
    let rgb: Vec<u8> = started.read_scanlines()?;
    started.finish()?;
    Ok(Decoded { width, height, rgb })
}

fn resize(image: &Decoded, width: u32, height: u32) -> Result<Decoded, Error> {
    let src = Image::from_vec_u8(
        u32::try_from(image.width)?,
        u32::try_from(image.height)?,
        image.rgb.clone(),
        PixelType::U8x3,
    )?;
    let mut dst = Image::new(width, height, PixelType::U8x3);
    let options = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Lanczos3));
    Resizer::new().resize(&src, &mut dst, &options)?;
    Ok(Decoded {
        width: width as usize,
        height: height as usize,
        rgb: dst.into_vec(),
    })
}

fn ssim2(reference: &Decoded, distorted: &Decoded) -> Result<f64, Error> {
    let to_rgb = |image: &Decoded| {
        let data = image
            .rgb
            .chunks_exact(3)
            .map(|p| [p[0], p[1], p[2]].map(|c| f32::from(c) / 255.0))
            .collect();
        Rgb::new(
            data,
            image.width,
            image.height,
            TransferCharacteristic::SRGB,
            ColorPrimaries::BT709,
        )
    };
    Ok(compute_frame_ssimulacra2(
        to_rgb(reference)?,
        to_rgb(distorted)?,
    )?)
}

#[path = "support/thread_cpu.rs"]
mod thread_cpu;

fn cpu_ms(f: impl FnOnce() -> Result<(), Error>) -> Result<f64, Error> {
    let start = thread_cpu::now();
    f()?;
    Ok((thread_cpu::now() - start).as_secs_f64() * 1000.0)
}

fn median(mut times: Vec<f64>) -> f64 {
    times.sort_by(f64::total_cmp);
    times.get(times.len() / 2).copied().unwrap_or(f64::NAN)
}

fn main() -> Result<(), Error> {
    let runs: usize = std::env::var("RUNS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(5);
    let modes = [Fidelity::Exact, Fidelity::LowPass, Fidelity::Coarse];
    println!(
        "| file | scale | mode | bytes kept | original ms | filter ms | filter+decode ms | speed-up | SSIM2 vs same-scale | SSIM2 same-scale vs full | SSIM2 filtered vs full |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for path in std::env::args().skip(1) {
        let jpeg = std::fs::read(&path)?;
        let name = std::path::Path::new(&path)
            .file_name()
            .map_or(path.clone(), |n| n.to_string_lossy().into_owned());
        let full = decode(&jpeg, 1, true)?;
        for scale in [8, 4, 2] {
            let original = decode(&jpeg, scale, true)?;
            let (tw, th) = (
                (original.width / 2).max(8) as u32,
                (original.height / 2).max(8) as u32,
            );
            let reference_thumb = resize(&full, tw, th)?;
            let original_thumb = resize(&original, tw, th)?;
            let original_vs_full = ssim2(&reference_thumb, &original_thumb)?;
            // Interleave the variants run by run so they share the same machine noise.
            let mut original_times = Vec::new();
            let mut filter_times = vec![Vec::new(); modes.len()];
            let mut total_times = vec![Vec::new(); modes.len()];
            for _ in 0..runs {
                original_times.push(cpu_ms(|| decode(&jpeg, scale, true).map(drop))?);
                for (i, &fidelity) in modes.iter().enumerate() {
                    filter_times[i].push(cpu_ms(|| {
                        drop(strip_unneeded_scans_with(&jpeg, scale, fidelity));
                        Ok(())
                    })?);
                    total_times[i].push(cpu_ms(|| {
                        match strip_unneeded_scans_with(&jpeg, scale, fidelity) {
                            Some(bytes) => decode(&bytes, scale, false).map(drop),
                            None => decode(&jpeg, scale, true).map(drop),
                        }
                    })?);
                }
            }
            let original_ms = median(original_times);
            for (i, &fidelity) in modes.iter().enumerate() {
                let Some(filtered_bytes) = strip_unneeded_scans_with(&jpeg, scale, fidelity) else {
                    println!(
                        "| {name} | 1/{scale} | {fidelity:?} | nothing to drop | {original_ms:.1} | {:.1} | {:.1} | | | {original_vs_full:.2} | |",
                        median(filter_times[i].clone()),
                        median(total_times[i].clone()),
                    );
                    continue;
                };
                let filtered = decode(&filtered_bytes, scale, false)?;
                let filtered_thumb = resize(&filtered, tw, th)?;
                let kept = 100.0 * filtered_bytes.len() as f64 / jpeg.len() as f64;
                let total_ms = median(total_times[i].clone());
                println!(
                    "| {name} | 1/{scale} | {fidelity:?} | {kept:.1}% | {original_ms:.1} | {:.1} | {total_ms:.1} | {:.1}x | {:.2} | {original_vs_full:.2} | {:.2} |",
                    median(filter_times[i].clone()),
                    original_ms / total_ms,
                    ssim2(&original_thumb, &filtered_thumb)?,
                    ssim2(&reference_thumb, &filtered_thumb)?,
                );
            }
        }
    }
    Ok(())
}
