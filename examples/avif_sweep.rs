//! AVIF encoder settings against size, SSIMULACRA2 and CPU, over a folder of images.
//!
//! `cargo run --release --example avif_sweep -- DIR PARAMS QUALITIES SETTINGS...`
//!
//! e.g. `... /tmp/corpus 400w_400h 30,45,60,75 s8:420 s6:420 s6:444 s6:420:sharpness=2`
//! (`sS` libaom speed, `420`/`444` chroma, then `key=value` libaom options or `sharp` for
//! the sharp 4:2:0 conversion instead of libavif's averaging, e.g. `s5:420:sharp:tune=iq`),
//! plus the
//! settings `jpeg` (mozjpeg `best`) and `webp-fast` (libwebp, the edge's settings) at the
//! same qualities (on their own 1–100 scales). Each
//! image is prepared once (as the worker does) and scored against the full-decode
//! reference; one line per (setting, quality): total bytes, mean and min score, mean
//! encode CPU time. Used to choose the settings and the `q` mapping in
//! src/pipeline/encode_avif.rs (docs/benchmarks.md, "AVIF").
#![allow(clippy::unwrap_used, clippy::expect_used)] // a measuring tool: a failed unwrap ends the run

use edgethumb::Params;
use edgethumb::pipeline::encode_avif::{self, AvifInput, AvifSettings, Chroma, Downsampling};
use edgethumb::pipeline::{self, EncodeSpec, Limits, Profile};
use edgethumb::variant::OutputFormat;
use edgethumb::worker::tuning::Scorer;

#[path = "support/thread_cpu.rs"]
mod thread_cpu;

fn parse_setting(spec: &str) -> Option<AvifSettings> {
    let mut parts = spec.split(':');
    let speed = parts.next()?.strip_prefix('s')?.parse().ok()?;
    let chroma = match parts.next()? {
        "420" => Chroma::Yuv420,
        "444" => Chroma::Yuv444,
        _ => return None,
    };
    let mut chroma_downsampling = Downsampling::Average;
    let options: Vec<(&'static str, &'static str)> = parts
        .filter(|part| {
            let sharp = *part == "sharp";
            if sharp {
                chroma_downsampling = Downsampling::Sharp;
            }
            !sharp
        })
        .map(|kv| {
            let (k, v) = kv.split_once('=').expect("key=value");
            let leak = |s: &str| -> &'static str { Box::leak(s.to_string().into_boxed_str()) };
            (leak(k), leak(v))
        })
        .collect();
    Some(AvifSettings {
        speed,
        chroma,
        chroma_downsampling,
        options: Box::leak(options.into_boxed_slice()),
        quality_map: &[],
    })
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 5 {
        anyhow::bail!("usage: avif_sweep DIR PARAMS QUALITIES SETTINGS...");
    }
    let params: Params = args[2].parse()?;
    let qualities: Vec<i32> = args[3].split(',').map(|q| q.parse().unwrap()).collect();
    let mut images = Vec::new();
    for entry in std::fs::read_dir(&args[1])? {
        let path = entry?.path();
        let source = std::fs::read(&path)?;
        let limits = Limits::default();
        let (Ok(prepared), Ok(reference)) = (
            pipeline::prepare(&source, &params, &limits),
            pipeline::prepare_reference(&source, &params, &limits),
        ) else {
            continue;
        };
        let Some(scorer) = Scorer::new(&reference)? else {
            continue;
        };
        images.push((path, prepared, scorer));
    }
    images.sort_by(|a, b| a.0.cmp(&b.0));
    println!("{} images, {}", images.len(), args[2]);
    // `AVIF_SWEEP_PER_IMAGE=1`: also one line per image (bytes and score), to compare bytes
    // at an equal score per image, as the worker's search targets one.
    let per_image = std::env::var_os("AVIF_SWEEP_PER_IMAGE").is_some();
    for setting in &args[4..] {
        for &q in &qualities {
            let (mut bytes, mut scores, mut cpu) = (0usize, Vec::new(), 0f64);
            for (path, prepared, scorer) in &images {
                let t = thread_cpu::now();
                let other = match setting.as_str() {
                    "jpeg" => Some((OutputFormat::Jpeg, Profile::Best)),
                    "webp-fast" => Some((OutputFormat::Webp, Profile::Fast)),
                    _ => None,
                };
                let encoded = if let Some((format, profile)) = other {
                    prepared.encode(&EncodeSpec {
                        format,
                        quality: q as u8,
                        progressive: false,
                        profile,
                    })?
                } else {
                    let settings = parse_setting(setting)
                        .ok_or_else(|| anyhow::anyhow!("bad setting {setting}"))?;
                    let channels = prepared.pixels().len()
                        / (prepared.width as usize * prepared.height as usize);
                    let input = AvifInput {
                        pixels: prepared.pixels(),
                        width: prepared.width,
                        height: prepared.height,
                        channels,
                    };
                    encode_avif::encode_with(&input, q, &settings).map_err(anyhow::Error::msg)?
                };
                cpu += (thread_cpu::now() - t).as_secs_f64();
                bytes += encoded.len();
                scores.push(scorer.score_encoded(&encoded)?);
                if per_image {
                    let name = path.file_name().unwrap_or_default().to_string_lossy();
                    let score = scores.last().copied().unwrap_or_default();
                    println!(
                        "  {setting} q{q} {name} bytes {} s2 {score:.2}",
                        encoded.len()
                    );
                }
            }
            let n = scores.len() as f64;
            let mean = scores.iter().sum::<f64>() / n;
            let min = scores.iter().copied().fold(f64::INFINITY, f64::min);
            println!(
                "{setting:24} q{q:3} bytes {bytes:8} s2 mean {mean:6.2} min {min:6.2} encode {:6.1} ms CPU/img",
                cpu * 1000.0 / n
            );
        }
    }
    Ok(())
}
