//! What one quality-search candidate costs, stage by stage, and how the worker's
//! SSIMULACRA2 (our own, src/worker/ssim2.rs, reference precomputed) compares with the
//! `ssimulacra2` crate (the reference implementation), in score and in time, on a real image.
//!
//! `cargo run --release --features worker --example worker_metric_cost -- IMAGE PARAMS [MODE]`
//!
//! MODE is `both` (default: encode, decode and score five qualities, both metrics side by
//! side), or `fast` / `slow`: only that metric, only the resize against the reference (no
//! encoder runs), so the growth of the process's peak RSS is that metric's: used to measure
//! `SCORING_BYTES_PER_PIXEL`. See docs/benchmarks.md, "Quality search cost (issue 15)".
#![allow(clippy::unwrap_used, clippy::expect_used)] // a measuring tool: a failed unwrap ends the run

use std::time::{Duration, Instant};

use edgethumb::pipeline::{self, EncodeSpec, Limits, Prepared, Profile};
use edgethumb::worker::tuning::Scorer;
use edgethumb::{OutputFormat, Params};

#[path = "../src/worker/slow_ssimulacra2.rs"]
mod slow_ssimulacra2;

use slow_ssimulacra2::slow_score;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let (Some(path), Some(spec)) = (args.get(1), args.get(2)) else {
        anyhow::bail!("usage: worker_metric_cost IMAGE PARAMS [both|fast|slow]");
    };
    let mode = args.get(3).map_or("both", String::as_str);
    let source = std::fs::read(path)?;
    let params: Params = spec.parse()?;
    let limits = Limits::default();
    let (prepared, t_prepare) = timed(|| pipeline::prepare(&source, &params, &limits).unwrap());
    let (reference, t_reference) =
        timed(|| pipeline::prepare_reference(&source, &params, &limits).unwrap());
    let format = params.output_format(prepared.source_format);
    if let Some(metric) = mode.strip_prefix("loop-") {
        return loop_metric(metric, &reference, &prepared, format);
    }
    let pixels = u64::from(reference.width) * u64::from(reference.height);
    let rss_before = peak_rss_kb();
    println!(
        "{path} {spec}: {}x{} ({} px), alpha {}; prepare {} ms, reference {} ms, peak RSS {} MB",
        reference.width,
        reference.height,
        pixels,
        reference.has_alpha(),
        ms(t_prepare),
        ms(t_reference),
        rss_before / 1024
    );
    // Transparency is scored on black too only where the output keeps it (as the Scorer).
    let alpha = reference.has_alpha() && !matches!(format, OutputFormat::Jpeg);
    // The metric's own memory, before any encoder runs: the scorer (and with it the
    // precomputed reference) plus one comparison, of the resize alone (the ceiling).
    let (scorer, t_new) = if mode == "slow" {
        (None, Duration::ZERO)
    } else {
        let (scorer, t) = timed(|| Scorer::for_output(&reference, format).unwrap().unwrap());
        (Some(scorer), t)
    };
    let ceiling = match &scorer {
        Some(scorer) => scorer.score(&prepared).unwrap(),
        None => slow_score(&reference, &prepared, alpha),
    };
    let rss_metric = peak_rss_kb();
    println!(
        "{mode}: ceiling {ceiling:.3}; peak RSS +{} MB for the metric = {} bytes per output pixel",
        (rss_metric - rss_before) / 1024,
        (rss_metric - rss_before) * 1024 / pixels.max(1) as i64
    );
    if mode != "both" {
        return Ok(());
    }
    println!("our reference precompute {} ms", ms(t_new));
    simd_check(&reference, &prepared);
    let mut worst: f64 = 0.0;
    for q in [40u8, 60, 75, 85, 95] {
        let spec = EncodeSpec {
            format,
            quality: q,
            progressive: params.progressive,
            profile: Profile::Best,
        };
        let (bytes, t_encode) = timed(|| prepared.encode(&spec).unwrap());
        let (decoded, t_decode) = timed(|| {
            let no_limits = Limits {
                max_pixels: u64::MAX,
                max_bytes: u64::MAX,
            };
            pipeline::prepare(&bytes, &Params::default(), &no_limits).unwrap()
        });
        let mut line = format!(
            "q{q:3} {:7} B  encode {:6} ms  decode {:6} ms",
            bytes.len(),
            ms(t_encode),
            ms(t_decode)
        );
        let fast = scorer
            .as_ref()
            .map(|scorer| timed(|| scorer.score(&decoded).unwrap()));
        let slow = (mode != "fast").then(|| timed(|| slow_score(&reference, &decoded, alpha)));
        if let Some((score, t)) = fast {
            line.push_str(&format!("  ours {score:7.3} in {:6} ms", ms(t)));
        }
        if let Some((score, t)) = slow {
            line.push_str(&format!("  ssimulacra2 {score:7.3} in {:6} ms", ms(t)));
        }
        if let (Some((a, _)), Some((b, _))) = (fast, slow) {
            worst = worst.max((a - b).abs());
            line.push_str(&format!("  delta {:+.3}", a - b));
        }
        println!("{line}");
    }
    println!(
        "worst |delta| {worst:.3}; peak RSS {} MB",
        peak_rss_kb() / 1024
    );
    Ok(())
}

/// fast-ssim2's view of opaque prepared pixels.
fn slice(p: &Prepared) -> fast_ssim2::PixelSlice<'_> {
    fast_ssim2::PixelSlice::new(
        p.pixels(),
        p.width,
        p.height,
        p.width as usize * 3,
        fast_ssim2::PixelDescriptor::RGB8_SRGB,
    )
    .unwrap()
}

/// The SIMD kernels against fast-ssim2's scalar ones on the same pair (reference and
/// comparison, opaque pixels only): proof that the dispatch really picks SIMD on this CPU.
fn simd_check(reference: &Prepared, distorted: &Prepared) {
    use fast_ssim2::{Ssimulacra2Config, Ssimulacra2Reference};
    if reference.has_alpha() {
        return;
    }
    let run = |config: &Ssimulacra2Config| {
        timed(|| {
            Ssimulacra2Reference::new_with_config(&slice(reference), config)
                .unwrap()
                .compare_with_config(&slice(distorted), config)
                .unwrap()
        })
    };
    let (simd, t_simd) = run(&Ssimulacra2Config::simd());
    let (scalar, t_scalar) = run(&Ssimulacra2Config::scalar());
    println!(
        "fast-ssim2 reference + one comparison: SIMD {} ms ({simd:.3}), scalar {} ms ({scalar:.3})",
        ms(t_simd),
        ms(t_scalar)
    );
}

/// `loop-fast-ssim2` / `loop-ours`: build the reference once, then score a q85 candidate
/// 20 times with one metric only, printing the CPU per stage: a clean run to profile
/// (`perf record`) and to time the two metrics against each other.
fn loop_metric(
    metric: &str,
    reference: &Prepared,
    prepared: &Prepared,
    format: OutputFormat,
) -> anyhow::Result<()> {
    use fast_ssim2::Ssimulacra2Reference;
    const RUNS: usize = 20;
    anyhow::ensure!(!reference.has_alpha(), "loop modes take opaque images");
    let spec = EncodeSpec {
        format,
        quality: 85,
        progressive: false,
        profile: Profile::Best,
    };
    let candidate = pipeline::decode_output(&prepared.encode(&spec)?)?;
    let start = cpu_time();
    let (new, compare): (Duration, Box<dyn Fn() -> f64>) = match metric {
        "fast-ssim2" => {
            let r = Ssimulacra2Reference::new(&slice(reference)).unwrap();
            let new = cpu_time() - start;
            (
                new,
                Box::new(move || r.compare(&slice(&candidate)).unwrap()),
            )
        }
        "ours" => {
            let scorer = Scorer::new(reference)?.unwrap();
            let new = cpu_time() - start;
            if std::env::var_os("LOOP_REFERENCE").is_some() {
                for _ in 0..RUNS {
                    let t = cpu_time();
                    drop(Scorer::new(reference)?);
                    println!("reference again {} ms CPU", ms(cpu_time() - t));
                }
            }
            (new, Box::new(move || scorer.score(&candidate).unwrap()))
        }
        other => anyhow::bail!("unknown metric {other}"),
    };
    let mut times = Vec::with_capacity(RUNS);
    let mut score = 0.0;
    for _ in 0..RUNS {
        let t = cpu_time();
        score = compare();
        times.push(cpu_time() - t);
    }
    times.sort();
    println!(
        "{metric}: reference {} ms CPU; compare median {} ms CPU (min {}), score {score:.3}",
        ms(new),
        ms(times[RUNS / 2]),
        ms(times[0])
    );
    Ok(())
}

/// CPU time of this process (user + system).
fn cpu_time() -> Duration {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes a whole rusage into the pointer it is given.
    let usage = unsafe {
        libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr());
        usage.assume_init()
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let start = Instant::now();
    let value = f();
    (value, start.elapsed())
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1e3)
}

/// Peak resident set of this process so far, from /proc (Linux).
fn peak_rss_kb() -> i64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1).map(str::to_string))
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}
