//! Hostile inputs: every one is a typed error (never a panic, hang or unbounded allocation).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::undocumented_unsafe_blocks
)] // test code

mod pipeline_support;

use edgethumb::Params;
use edgethumb::pipeline::{self, Limits, PipelineError, Prepared};
use pipeline_support::*;

fn params() -> Params {
    "100w.jpg".parse().unwrap()
}

fn prepare(src: &[u8]) -> Result<Prepared, PipelineError> {
    pipeline::prepare(src, &params(), &Limits::default())
}

fn assert_corrupt(result: Result<Prepared, PipelineError>, what: &str) {
    match result {
        Err(PipelineError::Corrupt { .. }) => {}
        Err(other) => panic!("{what}: expected Corrupt, got {other:?}"),
        Ok(p) => panic!(
            "{what}: expected an error, got a {}x{} image",
            p.width, p.height
        ),
    }
}

fn sample_sources() -> Vec<(&'static str, Vec<u8>)> {
    let (w, h) = (320u32, 240u32);
    let rgb = gradient_rgb(w, h);
    vec![
        ("baseline jpeg", jpeg(w, h, &rgb, false, None)),
        ("progressive jpeg", jpeg(w, h, &rgb, true, None)),
        (
            "png",
            png(w, h, png::ColorType::Rgb, png::BitDepth::Eight, &rgb),
        ),
        ("webp", webp(w, h, &rgb, false)),
        ("gif", animated_gif(w as u16, h as u16)),
    ]
}

#[test]
fn samples_are_valid() {
    for (name, src) in sample_sources() {
        assert!(prepare(&src).is_ok(), "{name} should decode");
    }
}

#[test]
fn truncated_files_are_corrupt() {
    for (name, src) in sample_sources() {
        // A GIF is only read up to the end of its first frame (about half of this file):
        // damage in later frames does not matter.
        let fractions: &[f64] = if name == "gif" {
            &[0.1, 0.3]
        } else {
            &[0.2, 0.5, 0.9]
        };
        for &fraction in fractions {
            let cut = (src.len() as f64 * fraction) as usize;
            assert_corrupt(
                prepare(&src[..cut]),
                &format!("{name} cut at {cut}/{}", src.len()),
            );
        }
        // Header only.
        assert!(
            prepare(&src[..src.len().min(40)]).is_err(),
            "{name} header only"
        );
    }
}

#[test]
fn random_bytes_are_refused() {
    // Deterministic pseudo-random bytes (xorshift), with and without real magic numbers.
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut noise = |n: usize| -> Vec<u8> {
        (0..n)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect()
    };
    for _ in 0..20 {
        let body = noise(4096);
        match prepare(&body) {
            Err(PipelineError::UnsupportedFormat(_)) => {}
            other => panic!("random bytes: {other:?}"),
        }
        for magic in [&b"\xFF\xD8\xFF"[..], b"\x89PNG\r\n\x1a\n", b"GIF89a"] {
            let mut data = magic.to_vec();
            data.extend_from_slice(&body);
            assert!(prepare(&data).is_err(), "random bytes behind {magic:x?}");
        }
        let mut riff = b"RIFF\0\x10\0\0WEBPVP8 ".to_vec();
        riff.extend_from_slice(&body);
        assert!(prepare(&riff).is_err(), "random WebP body");
    }
    match prepare(&[]) {
        Err(PipelineError::UnsupportedFormat(_)) => {}
        other => panic!("empty input: {other:?}"),
    }
}

#[test]
fn flipped_bytes_in_entropy_data_never_panic() {
    let src = jpeg(320, 240, &gradient_rgb(320, 240), true, None);
    for step in 0..40usize {
        let mut damaged = src.clone();
        let at = 700 + step * (src.len() - 800) / 40;
        damaged[at] ^= 0x5A;
        damaged[at + 1] = 0xFF; // a bogus marker in the middle of a scan
        // Either a typed error or a (damaged-looking) image; never a panic.
        let _ = prepare(&damaged);
    }
}

/// A PNG that is nothing but an IHDR claiming `w`×`h` and a tiny IDAT.
fn png_header_claiming(w: u32, h: u32) -> Vec<u8> {
    let mut ihdr = w.to_be_bytes().to_vec();
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]); // 8-bit RGB
    let mut data = b"\x89PNG\r\n\x1a\n".to_vec();
    data.extend(png_chunk(b"IHDR", &ihdr));
    data.extend(png_chunk(
        b"IDAT",
        &[0x78, 0x9C, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01],
    ));
    data.extend(png_chunk(b"IEND", &[]));
    data
}

#[test]
fn decompression_bomb_png_is_refused_from_the_header() {
    match prepare(&png_header_claiming(100_000, 100_000)) {
        Err(PipelineError::TooManyPixels {
            width,
            height,
            pixels,
            limit,
        }) => {
            assert_eq!((width, height, pixels), (100_000, 100_000, 10_000_000_000));
            assert_eq!(limit, Limits::default().max_pixels);
        }
        other => panic!("bomb: {other:?}"),
    }
}

#[test]
fn real_decompression_bomb_is_refused_by_a_lower_limit() {
    // 6000×6000 of zeros compresses to a few tens of KB.
    let (w, h) = (6000u32, 6000u32);
    let src = png(
        w,
        h,
        png::ColorType::Grayscale,
        png::BitDepth::Eight,
        &vec![0u8; (w * h) as usize],
    );
    assert!(src.len() < 200_000, "bomb is small: {}", src.len());
    let limits = Limits {
        max_pixels: 20_000_000,
        ..Limits::default()
    };
    assert!(matches!(
        pipeline::prepare(&src, &params(), &limits),
        Err(PipelineError::TooManyPixels { .. })
    ));
}

#[test]
fn zero_and_huge_dimensions_in_headers() {
    assert!(matches!(
        prepare(&png_header_claiming(0, 100)),
        Err(PipelineError::Corrupt { .. })
    ));

    // JPEG SOF with patched dimensions.
    let src = jpeg(64, 48, &gradient_rgb(64, 48), false, None);
    let sof = src.windows(2).position(|w| w == [0xFF, 0xC0]).unwrap();
    let patch = |h: u16, w: u16| {
        let mut d = src.clone();
        d[sof + 5..sof + 7].copy_from_slice(&h.to_be_bytes());
        d[sof + 7..sof + 9].copy_from_slice(&w.to_be_bytes());
        d
    };
    assert_corrupt(prepare(&patch(0, 64)), "JPEG height 0");
    assert_corrupt(prepare(&patch(48, 0)), "JPEG width 0");
    assert!(matches!(
        prepare(&patch(65535, 65535)),
        Err(PipelineError::TooManyPixels { .. })
    ));

    // GIF logical screen 65535×65535.
    let mut gif = animated_gif(8, 8);
    gif[6..10].copy_from_slice(&[0xFF, 0xFF, 0xFF, 0xFF]);
    assert!(matches!(
        prepare(&gif),
        Err(PipelineError::TooManyPixels { .. })
    ));
}

#[test]
fn limits_are_checked_for_every_format() {
    let tight = Limits {
        max_pixels: 1000,
        max_bytes: 50 * 1024 * 1024,
    };
    for (name, src) in sample_sources() {
        match pipeline::prepare(&src, &params(), &tight) {
            Err(PipelineError::TooManyPixels {
                width: 320,
                height: 240,
                ..
            }) => {}
            other => panic!("{name}: {other:?}"),
        }
        let small = Limits {
            max_pixels: 100_000_000,
            max_bytes: 100,
        };
        match pipeline::prepare(&src, &params(), &small) {
            Err(PipelineError::TooManyBytes { limit: 100, .. }) => {}
            other => panic!("{name}: {other:?}"),
        }
    }
}

#[test]
fn unsupported_formats_are_named() {
    let tiff = b"II*\0\x08\0\0\0rest of a tiff".to_vec();
    match prepare(&tiff) {
        Err(PipelineError::UnsupportedFormat(what)) => assert!(what.contains("TIFF"), "{what}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn broken_animated_webp_is_corrupt_or_over_the_limit() {
    let frame = |w, h| WebpFrame {
        left: 0,
        top: 0,
        w,
        h,
        rgba: [0, 128, 0, 255],
    };
    let good = animated_webp(64, 48, &[frame(64, 48)]);
    assert!(prepare(&good).is_ok(), "the sample itself decodes");
    // Cut inside the frame's bitstream.
    let mut cut = good[..good.len() - 20].to_vec();
    let riff_len = (cut.len() - 8) as u32;
    cut[4..8].copy_from_slice(&riff_len.to_le_bytes());
    assert_corrupt(prepare(&cut), "truncated animation");
    // The ANMF header claims a bigger frame than its bitstream holds.
    let mut lying = good.clone();
    let anmf = lying.windows(4).position(|w| w == b"ANMF").unwrap();
    lying[anmf + 8 + 6] = 99; // width - 1, low byte
    assert_corrupt(prepare(&lying), "frame size mismatch");
    // No frame at all.
    let empty = animated_webp(64, 48, &[]);
    assert_corrupt(prepare(&empty), "animation without frames");
    // A canvas over the pixel limit is refused from the header, before any decoding.
    let mut huge = good.clone();
    let vp8x = huge.windows(4).position(|w| w == b"VP8X").unwrap();
    // 20000 x 20000: under libwebp's own 2^32 area limit, over our 100 MP.
    huge[vp8x + 8 + 4..vp8x + 8 + 10].copy_from_slice(&[0x1F, 0x4E, 0, 0x1F, 0x4E, 0]);
    match prepare(&huge) {
        Err(PipelineError::TooManyPixels { width, height, .. }) => {
            assert_eq!((width, height), (20_000, 20_000));
        }
        other => panic!("{other:?}"),
    }
}

/// A deadline stops a render inside the step that is running: the streamed JPEG and PNG
/// decodes check it every batch of rows, the step runner before each step. (Counted
/// deadlines expire after a given number of checks, so this holds on any machine.)
#[test]
fn a_deadline_stops_the_render_inside_the_running_step() {
    use edgethumb::pipeline::Deadline;
    let (w, h) = (1200, 960);
    let rgb = gradient_rgb(w, h);
    let jpeg_src = jpeg(w, h, &rgb, false, None);
    let png_src = png(w, h, png::ColorType::Rgb, png::BitDepth::Eight, &rgb);
    let gif_src = animated_gif(600, 400);
    let big: Params = "1000w.png".parse().unwrap();
    let step_of = |src: &[u8], checks: u64| match pipeline::prepare_until(
        src,
        &big,
        &Limits::default(),
        Deadline::after_checks(checks),
    ) {
        Err(PipelineError::DeadlineExceeded { step, .. }) => step,
        other => panic!("{checks} checks: {other:?}"),
    };
    // One check passes (the one before the load step); the decode's own checks stop it.
    assert_eq!(step_of(&jpeg_src, 3), "load", "JPEG rows");
    assert_eq!(step_of(&png_src, 3), "load", "PNG rows");
    // Nothing passes: stopped before any work.
    assert_eq!(step_of(&jpeg_src, 0), "load");
    // A GIF decodes whole: the check before the next step stops it.
    assert_eq!(step_of(&gif_src, 1), "resize");
    // Enough checks: the same render completes.
    let done = pipeline::prepare_until(
        &jpeg_src,
        &big,
        &Limits::default(),
        Deadline::after_checks(10_000),
    )
    .unwrap();
    assert_eq!(done.width, 1000);
}
