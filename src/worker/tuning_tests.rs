//! Quality tuning on generated images of varied content, through the real pipeline:
//! the tuned encode reaches the target on every image, and wherever a fixed q80 encode
//! already beats the target, the tuned file is smaller.

use std::io::Cursor;

use super::tuning::{self, Scorer, TuningConfig};
use crate::pipeline::{self, EncodeSpec, Limits, Profile};
use crate::variant::{DEFAULT_QUALITY, OutputFormat, Params};

/// Deterministic pseudo-random numbers (xorshift), so the images are the same every run.
pub(super) struct Rng(pub(super) u64);

impl Rng {
    pub(super) fn next(&mut self) -> u8 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 24) as u8
    }
}

pub(super) fn png(img: image::RgbImage) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    image::DynamicImage::ImageRgb8(img)
        .write_to(&mut out, image::ImageFormat::Png)
        .unwrap();
    out.into_inner()
}

const W: u32 = 480;
const H: u32 = 360;

pub(super) fn smooth_gradient() -> Vec<u8> {
    png(image::RgbImage::from_fn(W, H, |x, y| {
        image::Rgb([
            (x * 255 / W) as u8,
            (y * 255 / H) as u8,
            (255 - (x + y) * 255 / (W + H)) as u8,
        ])
    }))
}

/// Heavy grain over a gradient, like a high-ISO photo: mostly luminance noise with some
/// chroma noise. (Independent full-range noise per RGB channel is not a photo; JPEG's
/// chroma subsampling caps its score well under any useful target, see docs/worker.md.)
pub(super) fn noise() -> Vec<u8> {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    png(image::RgbImage::from_fn(W, H, |x, y| {
        let luma = i32::from(rng.next()) / 3 - 42;
        let mut channel = |base: u32| {
            let chroma = i32::from(rng.next()) / 16 - 8;
            (base as i32 + luma + chroma).clamp(0, 255) as u8
        };
        image::Rgb([
            channel(60 + x * 140 / W),
            channel(80 + y * 120 / H),
            channel(120),
        ])
    }))
}

/// Black strokes on white, like text or line art: hard edges everywhere.
pub(super) fn text_like() -> Vec<u8> {
    png(image::RgbImage::from_fn(W, H, |x, y| {
        let line = (y / 18) % 2 == 0;
        let glyph = (x / 7 + y / 18 * 3) % 5 != 0;
        let stroke = (x % 7 < 2) || (y % 18 < 2) || ((x + y) % 9 == 0);
        if line && glyph && stroke && x > 20 && x < W - 20 {
            image::Rgb([10, 10, 10])
        } else {
            image::Rgb([250, 250, 250])
        }
    }))
}

/// Photo-like: sky gradient, a soft sun, a hill with fine texture, mild noise.
pub(super) fn photo_like() -> Vec<u8> {
    let mut rng = Rng(0x1234_5678_9ABC_DEF1);
    png(image::RgbImage::from_fn(W, H, |x, y| {
        let (fx, fy) = (x as f32 / W as f32, y as f32 / H as f32);
        let sky = 1.0 - fy;
        let sun = (-(((fx - 0.7).powi(2) + (fy - 0.3).powi(2)) * 40.0)).exp();
        let hill = if fy > 0.6 + 0.1 * (fx * 9.0).sin() {
            1.0
        } else {
            0.0
        };
        // Soft foliage-like texture on the hill, a little sensor noise everywhere.
        let grass = hill * (0.5 + 0.25 * (x as f32 * 0.9).sin() * (y as f32 * 0.7).cos());
        let n = f32::from(rng.next()) / 255.0 - 0.5;
        let r = 90.0 * sky + 160.0 * sun + 40.0 * hill + 30.0 * grass + 12.0 * n;
        let g = 140.0 * sky + 140.0 * sun + 110.0 * hill + 60.0 * grass + 12.0 * n;
        let b = 220.0 * sky + 60.0 * sun + 30.0 * hill + 10.0 * grass + 12.0 * n;
        image::Rgb([
            r.clamp(0.0, 255.0) as u8,
            g.clamp(0.0, 255.0) as u8,
            b.clamp(0.0, 255.0) as u8,
        ])
    }))
}

/// The photo-like image with a radial alpha ramp (opaque centre, transparent corners), as
/// a cut-out or a logo would have.
pub(super) fn with_alpha() -> Vec<u8> {
    let photo = image::load_from_memory(&photo_like()).unwrap().to_rgb8();
    let (w, h) = photo.dimensions();
    let rgba = image::RgbaImage::from_fn(w, h, |x, y| {
        let p = photo.get_pixel(x, y).0;
        let (dx, dy) = (x as f32 / w as f32 - 0.5, y as f32 / h as f32 - 0.5);
        let alpha = (1.0 - (dx * dx + dy * dy).sqrt() * 1.6).clamp(0.0, 1.0);
        image::Rgba([p[0], p[1], p[2], (alpha * 255.0) as u8])
    });
    let mut out = Cursor::new(Vec::new());
    image::DynamicImage::ImageRgba8(rgba)
        .write_to(&mut out, image::ImageFormat::Png)
        .unwrap();
    out.into_inner()
}

#[test]
fn tuned_quality_reaches_the_target_and_beats_q80_where_q80_overshoots() {
    let images = [
        ("smooth-gradient", smooth_gradient()),
        ("noise", noise()),
        ("text-like", text_like()),
        ("photo-like", photo_like()),
    ];
    let config = TuningConfig::default();
    let limits = Limits::default();
    let mut overshoots = 0;
    let mut report = String::new();
    for (name, source) in &images {
        for format in [OutputFormat::Jpeg, OutputFormat::Webp, OutputFormat::Avif] {
            let params: Params = format!("320w.{}", format.extension()).parse().unwrap();
            let prepared = pipeline::prepare(source, &params, &limits).unwrap();
            let reference = pipeline::prepare_reference(source, &params, &limits).unwrap();
            let tuned = tuning::encode_best(&prepared, Some(&reference), &params, &config).unwrap();
            let score = tuned.score.expect("tuned encodes are scored");
            let fine = if format == OutputFormat::Avif {
                tuning::FINE_AVIF_ENCODES + tuning::FINAL_AVIF_ENCODES
            } else {
                0
            };
            assert!(tuned.encodes <= config.max_encodes + fine);

            let q80 = prepared
                .encode(&EncodeSpec {
                    format,
                    quality: DEFAULT_QUALITY,
                    progressive: false,
                    profile: Profile::Best,
                })
                .unwrap();
            let scorer = Scorer::new(&reference).unwrap().unwrap();
            let q80_score = scorer.score_encoded(&q80).unwrap();
            report.push_str(&format!(
                "{name} {format}: tuned q{} {:.1} {} B ({}, {} encodes); q80 {q80_score:.1} {} B\n",
                tuned.quality,
                score,
                tuned.bytes.len(),
                tuned.method,
                tuned.encodes,
                q80.len()
            ));
            assert_eq!(tuned.method, "tuned", "{report}");
            assert!(score >= config.target_score, "{report}");
            if q80_score > config.target_score {
                overshoots += 1;
                if tuned.quality == DEFAULT_QUALITY && tuned.qindex.is_none() {
                    assert_eq!(tuned.bytes.len(), q80.len(), "{report}");
                } else if tuned.quality == DEFAULT_QUALITY {
                    // Settled below q80's own qindex.
                    assert!(tuned.bytes.len() <= q80.len(), "{report}");
                } else {
                    assert!(tuned.bytes.len() < q80.len(), "{report}");
                }
            }
        }
    }
    println!("{report}");
    // The comparison must actually have been exercised.
    assert!(
        overshoots >= 2,
        "q80 overshot on only {overshoots} cases:\n{report}"
    );
}

/// The AVIF search measures with libaom's fast stand-in and writes the output encoder's
/// encode: a qindex above the stand-in's own answer that still reaches the target, the
/// output encoder's bytes at that qindex.
#[test]
fn the_avif_output_comes_from_the_output_encoder() {
    use crate::pipeline::encode_avif::AvifSettings;
    let limits = Limits::default();
    let best = AvifSettings::for_profile(Profile::Best);
    // 320x240 is well under the size the slow output encoder stops at.
    let output = best.tuned_output(320 * 240);
    let proxy = best.search_proxy();
    assert!(proxy.speed > best.speed && best.speed > output.speed);
    assert_eq!(best.tuned_output(4_000_000), best);
    let mut from_output = 0;
    let mut report = String::new();
    for (name, source) in [("photo-like", photo_like()), ("noise", noise())] {
        for target in [76.0, 80.0, 84.0] {
            let config = TuningConfig {
                target_score: target,
                ..TuningConfig::default()
            };
            let params: Params = "320w.avif".parse().unwrap();
            let prepared = pipeline::prepare(&source, &params, &limits).unwrap();
            let tuned = tuning::encode_best(&prepared, Some(&prepared), &params, &config).unwrap();
            let score = tuned.score.unwrap();
            let qindex = tuned.qindex.expect("AVIF reports its qindex");
            report.push_str(&format!(
                "{name} {target}: q{} qindex {qindex} {score:.2} {} B, {} encodes\n",
                tuned.quality,
                tuned.bytes.len(),
                tuned.encodes
            ));
            assert_eq!(tuned.method, "tuned", "{report}");
            assert!(score >= target, "{report}");
            let scorer = Scorer::new(&prepared).unwrap().unwrap();
            assert_eq!(scorer.score_encoded(&tuned.bytes).unwrap(), score);
            assert!(
                tuned.encodes
                    <= config.max_encodes + tuning::FINE_AVIF_ENCODES + tuning::FINAL_AVIF_ENCODES,
                "{report}"
            );
            let at = |settings| prepared.encode_avif_at_qindex(qindex, settings).unwrap();
            if tuned.bytes == at(&output) {
                from_output += 1;
            } else {
                // The fallback: the stand-in's own encode, when the output encoder passed
                // nowhere it looked.
                assert_eq!(tuned.bytes, at(&proxy), "{report}");
            }
        }
    }
    println!("{report}");
    assert!(
        from_output >= 5,
        "{from_output} of 6 from the output encoder:\n{report}"
    );
}

#[test]
fn a_url_quality_and_lossless_output_are_not_tuned() {
    let source = photo_like();
    let limits = Limits::default();
    let config = TuningConfig::default();
    for (spec, quality, method) in [("100w_42q.jpg", 42, "url"), ("100w.png", 80, "lossless")] {
        let params: Params = spec.parse().unwrap();
        let prepared = pipeline::prepare(&source, &params, &limits).unwrap();
        let reference = pipeline::prepare_reference(&source, &params, &limits).unwrap();
        let choice = tuning::encode_best(&prepared, Some(&reference), &params, &config).unwrap();
        assert_eq!(choice.quality, quality);
        assert_eq!(choice.method, method);
        assert_eq!(choice.encodes, 1);
        assert!(choice.score.is_none());
    }
}

#[test]
fn tiny_outputs_skip_the_metric() {
    let source = photo_like();
    let limits = Limits::default();
    let params: Params = "6w.jpg".parse().unwrap();
    let prepared = pipeline::prepare(&source, &params, &limits).unwrap();
    let reference = pipeline::prepare_reference(&source, &params, &limits).unwrap();
    assert!(prepared.height < tuning::MIN_SCORED_SIDE);
    assert!(Scorer::new(&reference).unwrap().is_none());
    let choice = tuning::encode_best(
        &prepared,
        Some(&reference),
        &params,
        &TuningConfig::default(),
    )
    .unwrap();
    assert_eq!(choice.method, "too-small");
    assert_eq!(choice.quality, DEFAULT_QUALITY);
    assert_eq!(&choice.bytes[..2], &[0xFF, 0xD8]);
}

#[test]
fn the_scorer_ranks_a_worse_encode_lower() {
    let source = photo_like();
    let limits = Limits::default();
    let params: Params = "320w.jpg".parse().unwrap();
    let prepared = pipeline::prepare(&source, &params, &limits).unwrap();
    let reference = pipeline::prepare_reference(&source, &params, &limits).unwrap();
    let scorer = Scorer::new(&reference).unwrap().unwrap();
    let encode = |quality| {
        prepared
            .encode(&EncodeSpec {
                format: OutputFormat::Jpeg,
                quality,
                progressive: false,
                profile: Profile::Best,
            })
            .unwrap()
    };
    let high = scorer.score_encoded(&encode(95)).unwrap();
    let low = scorer.score_encoded(&encode(20)).unwrap();
    assert!(high > low + 10.0, "q95 {high} vs q20 {low}");
    // The reference against itself is perfect.
    assert!(scorer.score(&reference).unwrap() > 99.0);
}

#[test]
fn outputs_too_big_to_score_keep_the_default_quality() {
    let source = photo_like();
    let limits = Limits::default();
    // 480x360 enlarged: 1800 wide is 2.43 MP (scored), 2000 wide 3 MP (not).
    let under: Params = "1800w.jpg".parse().unwrap();
    let prepared = pipeline::prepare(&source, &under, &limits).unwrap();
    assert!(u64::from(prepared.width) * u64::from(prepared.height) <= tuning::MAX_SCORED_PIXELS);
    let choice =
        tuning::encode_best(&prepared, Some(&prepared), &under, &TuningConfig::default()).unwrap();
    assert_eq!(choice.method, "tuned");

    let over: Params = "2000w.jpg".parse().unwrap();
    let prepared = pipeline::prepare(&source, &over, &limits).unwrap();
    assert!(u64::from(prepared.width) * u64::from(prepared.height) > tuning::MAX_SCORED_PIXELS);
    // Even handed a reference, the search does not run.
    let choice =
        tuning::encode_best(&prepared, Some(&prepared), &over, &TuningConfig::default()).unwrap();
    assert_eq!(choice.method, "too-large");
    assert_eq!((choice.quality, choice.encodes), (DEFAULT_QUALITY, 1));
    assert_eq!(choice.score, None);
    assert_eq!(&choice.bytes[..2], &[0xFF, 0xD8]);
}

#[test]
fn a_transparent_source_is_tuned_as_each_format_shows_it() {
    // JPEG flattens transparency on white, so its candidates are scored on white only (on
    // black they scored about -1000 at every quality and the search gave up as
    // "unreachable"); WebP keeps alpha and is scored on white and black, the lower counting.
    let source = with_alpha();
    let limits = Limits::default();
    let config = TuningConfig::default();
    for format in [OutputFormat::Jpeg, OutputFormat::Webp] {
        let params: Params = format!("320w.{}", format.extension()).parse().unwrap();
        let prepared = pipeline::prepare(&source, &params, &limits).unwrap();
        let reference = pipeline::prepare_reference(&source, &params, &limits).unwrap();
        assert!(reference.has_alpha());
        let tuned = tuning::encode_best(&prepared, Some(&reference), &params, &config).unwrap();
        let score = tuned.score.unwrap();
        assert_eq!(
            tuned.method, "tuned",
            "{format}: q{} {score}",
            tuned.quality
        );
        assert!(score >= config.target_score, "{format}: {score}");
        let both = Scorer::new(&reference).unwrap().unwrap();
        let as_seen = Scorer::for_output(&reference, format).unwrap().unwrap();
        let on_both = both.score_encoded(&tuned.bytes).unwrap();
        match format {
            // The black comparison is what sank the JPEG.
            OutputFormat::Jpeg => assert!(on_both < 0.0, "{on_both}"),
            _ => assert_eq!(on_both, as_seen.score_encoded(&tuned.bytes).unwrap()),
        }
    }
}

#[test]
fn a_full_resolution_load_is_exactly_the_reference() {
    // `is_full_resolution` says a load gave exactly `prepare_reference`'s pixels: that is
    // only true if the two are equal, and the flag only useful if it is false whenever a
    // reduced decode happened.
    let limits = Limits::default();
    let photo = pipeline::prepare(&photo_like(), &Params::default(), &limits).unwrap();
    let encode = |format| {
        photo
            .encode(&EncodeSpec {
                format,
                quality: 90,
                progressive: false,
                profile: Profile::Best,
            })
            .unwrap()
    };
    let sources = [
        ("png", photo_like()),
        ("jpeg", encode(OutputFormat::Jpeg)),
        ("webp", encode(OutputFormat::Webp)),
    ];
    // 480x360 sources: 320 px leaves no room for a reduced decode (it keeps 2x the output),
    // 60 px does for JPEG and WebP.
    for (name, source) in &sources {
        for (spec, reducible) in [("320w.jpg", false), ("60w.jpg", *name != "png")] {
            let params: Params = spec.parse().unwrap();
            let prepared = pipeline::prepare(source, &params, &limits).unwrap();
            let reference = pipeline::prepare_reference(source, &params, &limits).unwrap();
            assert!(reference.is_full_resolution(), "{name} {spec}");
            assert_eq!(prepared.is_full_resolution(), !reducible, "{name} {spec}");
            if prepared.is_full_resolution() {
                assert_eq!(prepared.pixels(), reference.pixels(), "{name} {spec}");
            } else {
                assert_ne!(prepared.pixels(), reference.pixels(), "{name} {spec}");
            }
        }
    }
}

#[test]
fn the_worker_decodes_at_twice_the_edges_margin_and_closer_to_a_full_decode() {
    // The search scores candidates against the pixels they were encoded from; that only
    // holds against a full decode if those pixels are close to one. A 480x360 JPEG:
    // at 100 px wide the edge (2x) decodes at 1/2 while the worker (4x) needs all of it;
    // at 60 px the edge decodes at 1/4, the worker at 1/2.
    let limits = Limits::default();
    let photo = pipeline::prepare(&photo_like(), &Params::default(), &limits).unwrap();
    let source = photo
        .encode(&EncodeSpec {
            format: OutputFormat::Jpeg,
            quality: 92,
            progressive: false,
            profile: Profile::Best,
        })
        .unwrap();
    let params: Params = "100w.jpg".parse().unwrap();
    let edge = pipeline::prepare_for(&source, &params, &limits, Profile::Fast).unwrap();
    let worker = pipeline::prepare_for(&source, &params, &limits, Profile::Best).unwrap();
    let full = pipeline::prepare_reference(&source, &params, &limits).unwrap();
    assert!(!edge.is_full_resolution());
    assert!(worker.is_full_resolution());
    assert_eq!(worker.pixels(), full.pixels());

    let params: Params = "60w.jpg".parse().unwrap();
    let edge = pipeline::prepare_for(&source, &params, &limits, Profile::Fast).unwrap();
    let worker = pipeline::prepare_for(&source, &params, &limits, Profile::Best).unwrap();
    let full = pipeline::prepare_reference(&source, &params, &limits).unwrap();
    assert!(!worker.is_full_resolution());
    let against_full = Scorer::new(&full).unwrap().unwrap();
    let (edge_score, worker_score) = (
        against_full.score(&edge).unwrap(),
        against_full.score(&worker).unwrap(),
    );
    assert!(
        worker_score > edge_score,
        "worker {worker_score} edge {edge_score}"
    );
}

#[test]
fn the_worker_search_holds_its_target_against_a_full_decode() {
    // Scored against its own pixels, the worker's choice still reaches the target, within
    // a point, against the full-resolution reference (docs/benchmarks.md measures a few
    // tenths on real photos).
    let limits = Limits::default();
    let config = TuningConfig::default();
    // 1920x1440 JPEGs: at 200 px the worker decodes them at 1/2, the reference in full.
    let big_jpeg = |png: Vec<u8>| {
        let params: Params = "1920w.jpg".parse().unwrap();
        pipeline::prepare(&png, &params, &limits)
            .unwrap()
            .encode(&EncodeSpec {
                format: OutputFormat::Jpeg,
                quality: 92,
                progressive: false,
                profile: Profile::Best,
            })
            .unwrap()
    };
    for source in [big_jpeg(photo_like()), big_jpeg(noise())] {
        for spec in ["200w.jpg", "200w.webp"] {
            let params: Params = spec.parse().unwrap();
            let worker = pipeline::prepare_for(&source, &params, &limits, Profile::Best).unwrap();
            assert!(!worker.is_full_resolution());
            let choice =
                crate::worker::process::render_sync(&source, &params, &limits, &config).unwrap();
            assert_eq!(
                choice.method, "tuned",
                "{spec}: q{} {:?} in {} encodes",
                choice.quality, choice.score, choice.encodes
            );
            let full = pipeline::prepare_reference(&source, &params, &limits).unwrap();
            let on_full = Scorer::new(&full)
                .unwrap()
                .unwrap()
                .score_encoded(&choice.bytes)
                .unwrap();
            assert!(
                on_full >= config.target_score - 1.0,
                "{spec}: q{} scores {on_full} against a full decode",
                choice.quality
            );
        }
    }
}

/// A tuned progressive JPEG is searched on sequential candidates and the chosen one is
/// rewritten progressive: the file is progressive, shows exactly the pixels that were
/// scored, and weighs about what a direct progressive encode at that quality weighs.
#[test]
fn a_tuned_progressive_jpeg_shows_the_pixels_it_was_scored_on() {
    let limits = Limits::default();
    for (name, source) in [("photo-like", photo_like()), ("noise", noise())] {
        let params: Params = "320w_1r.jpg".parse().unwrap();
        let prepared = pipeline::prepare(&source, &params, &limits).unwrap();
        let tuned = tuning::encode_best(
            &prepared,
            Some(&prepared),
            &params,
            &TuningConfig::default(),
        )
        .unwrap();
        assert_eq!(tuned.method, "tuned", "{name}");
        assert!(is_progressive_jpeg(&tuned.bytes), "{name}: not progressive");
        let scorer = Scorer::new(&prepared).unwrap().unwrap();
        assert_eq!(
            scorer.score_encoded(&tuned.bytes).unwrap(),
            tuned.score.unwrap(),
            "{name}: the written file is not the scored one"
        );
        let spec = |progressive| EncodeSpec {
            format: OutputFormat::Jpeg,
            quality: tuned.quality,
            progressive,
            profile: Profile::Best,
        };
        let sequential = prepared.encode(&spec(false)).unwrap();
        assert!(!is_progressive_jpeg(&sequential));
        assert_eq!(
            pipeline::decode_output(&tuned.bytes).unwrap().pixels(),
            pipeline::decode_output(&sequential).unwrap().pixels(),
            "{name}: the rewrite changed pixels"
        );
        let direct = prepared.encode(&spec(true)).unwrap().len() as f64;
        let ratio = tuned.bytes.len() as f64 / direct;
        assert!(
            (0.98..=1.02).contains(&ratio),
            "{name}: rewrite {} B against a direct progressive encode's {direct} B",
            tuned.bytes.len()
        );
    }
}

/// What the loader's header parser says of the frame (SOF2 against SOF0/SOF1).
fn is_progressive_jpeg(bytes: &[u8]) -> bool {
    pipeline::read_jpeg_header(bytes).unwrap().progressive
}

#[test]
fn rewriting_anything_but_a_jpeg_is_an_error() {
    for bytes in [
        &b""[..],
        b"not a jpeg at all",
        &[0xFF, 0xD8, 0xFF, 0xDB, 0x00],
    ] {
        assert!(pipeline::progressive_jpeg(bytes).is_err());
    }
}
