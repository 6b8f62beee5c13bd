//! AVIF outputs, checked with an independent decoder: Pillow (its own libavif build with
//! dav1d), run from the project's test venv by `pipeline_support/avif_probe.py`. The same
//! checks as the other formats: size, orientation, alpha, colour, no metadata; and the
//! `q` scale (higher `q`, more bytes), `fast` vs `best`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::undocumented_unsafe_blocks
)] // test code

mod pipeline_support;

use std::path::{Path, PathBuf};
use std::process::Command;

use edgethumb::Params;
use edgethumb::pipeline::{self, Limits, Profile, Rendered};
use edgethumb::variant::OutputFormat;
use pipeline_support::*;

fn render_with(source: &[u8], spec: &str, profile: Profile) -> Rendered {
    let params: Params = spec.parse().expect("valid params");
    pipeline::render(source, &params, &Limits::default(), profile)
        .unwrap_or_else(|e| panic!("render {spec}: {e}"))
}

fn render(source: &[u8], spec: &str) -> Rendered {
    render_with(source, spec, Profile::Fast)
}

/// The venv's Python with Pillow, or `None` (the test then skips, except under `CI=true`,
/// where a missing decoder must fail the run: `bash scripts/test.sh` creates the venv).
fn pillow_python() -> Option<PathBuf> {
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    let usable = python.exists()
        && Command::new(&python)
            .args([
                "-c",
                "from PIL import features; assert features.check('avif')",
            ])
            .status()
            .is_ok_and(|s| s.success());
    if usable {
        return Some(python);
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "no .venv with Pillow+AVIF under CI=true: run bash scripts/test.sh"
    );
    eprintln!("skipping: no .venv/bin/python with Pillow+AVIF (bash scripts/test.sh makes it)");
    None
}

/// What Pillow saw in one AVIF file, and its pixels as RGBA.
struct Decoded {
    info: serde_json::Value,
    image: image::RgbaImage,
}

fn pillow_decode(python: &Path, avif: &[u8]) -> Decoded {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.avif");
    let output = dir.path().join("out.png");
    std::fs::write(&input, avif).unwrap();
    let probe = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/pipeline_support/avif_probe.py");
    let run = Command::new(python)
        .arg(probe)
        .arg(&input)
        .arg(&output)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "Pillow could not decode our AVIF: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    let info: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    let image = image::open(&output).unwrap().to_rgba8();
    Decoded { info, image }
}

fn assert_plain_avif(decoded: &Decoded, width: u32, height: u32) {
    assert_eq!(decoded.info["format"], "AVIF", "{}", decoded.info);
    assert_eq!(
        decoded.info["size"],
        serde_json::json!([width, height]),
        "{}",
        decoded.info
    );
    for key in ["exif", "xmp", "icc"] {
        assert_eq!(
            decoded.info[key], false,
            "no {key} expected: {}",
            decoded.info
        );
    }
}

#[test]
fn avif_has_the_size_and_colours_of_the_source() {
    let Some(python) = pillow_python() else {
        return;
    };
    let (w, h) = (640, 480);
    let source = jpeg(w, h, &marked_rgb(w, h), false, None);
    for profile in [Profile::Fast, Profile::Best] {
        let out = render_with(&source, "320w.avif", profile);
        assert_eq!(out.format, OutputFormat::Avif);
        assert_eq!(magic(&out.bytes), "avif");
        let decoded = pillow_decode(&python, &out.bytes);
        assert_plain_avif(&decoded, 320, 240);
        // Colour signalled as sRGB with the matrix we converted with: a wrong matrix or
        // range would shift pure red and the gradient by far more than these tolerances.
        assert_close(
            mean_rgb(&decoded.image, 10, 10, 50, 40),
            [255.0, 0.0, 0.0],
            12.0,
            "red marker",
        );
        let source_img = image::load_from_memory(&source).unwrap().to_rgba8();
        let expect = mean_rgb(&source_img, 400, 300, 160, 120);
        assert_close(
            mean_rgb(&decoded.image, 200, 150, 80, 60),
            expect,
            8.0,
            "gradient",
        );
        assert!(
            decoded.image.pixels().all(|p| p[3] == 255),
            "opaque source, opaque output"
        );
    }
}

#[test]
fn avif_is_upright_for_every_exif_orientation() {
    let Some(python) = pillow_python() else {
        return;
    };
    // Displayed 240×160 with a red top-left block; stored rotated (orientation 6 and 8
    // swap the sides).
    for orientation in [3u8, 6, 8] {
        let display = marked_rgb(240, 160);
        let (stored, sw, sh) = stored_for_display(&display, 240, 160, orientation);
        let source = jpeg(sw as u32, sh as u32, &stored, false, Some(orientation));
        let out = render(&source, "120w.avif");
        let decoded = pillow_decode(&python, &out.bytes);
        assert_plain_avif(&decoded, 120, 80);
        assert_close(
            mean_rgb(&decoded.image, 4, 4, 20, 12),
            [255.0, 0.0, 0.0],
            20.0,
            &format!("orientation {orientation}: red top-left"),
        );
    }
}

#[test]
fn avif_keeps_alpha() {
    let Some(python) = pillow_python() else {
        return;
    };
    let (w, h) = (200, 100);
    let source = png(
        w,
        h,
        png::ColorType::Rgba,
        png::BitDepth::Eight,
        &half_transparent_rgba(w, h),
    );
    let out = render(&source, "100w.avif");
    let decoded = pillow_decode(&python, &out.bytes);
    assert_plain_avif(&decoded, 100, 50);
    assert_eq!(decoded.info["mode"], "RGBA", "{}", decoded.info);
    let opaque = decoded.image.get_pixel(10, 25);
    let clear = decoded.image.get_pixel(90, 25);
    assert!(opaque[3] >= 250 && opaque[0] >= 240, "{opaque:?}");
    assert!(clear[3] <= 5, "{clear:?}");
}

#[test]
fn gray_sources_give_gray_avif() {
    let Some(python) = pillow_python() else {
        return;
    };
    let source = gray_jpeg(200, 120);
    let out = render(&source, "100w.avif");
    let decoded = pillow_decode(&python, &out.bytes);
    assert_plain_avif(&decoded, 100, 60);
    for p in decoded.image.pixels() {
        let spread = p[0].max(p[1]).max(p[2]) - p[0].min(p[1]).min(p[2]);
        assert!(spread <= 2, "gray expected, got {p:?}");
    }
}

#[test]
fn avif_quality_orders_sizes_and_best_is_not_bigger() {
    let (w, h) = (400, 300);
    let source = jpeg(w, h, &gradient_rgb(w, h), false, None);
    let noisy: Vec<u8> = (0..w * h * 3)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let noisy = jpeg(w, h, &noisy, false, None);
    let size = |src: &[u8], spec: &str, profile| render_with(src, spec, profile).bytes.len();
    assert!(size(&noisy, "30q.avif", Profile::Fast) < size(&noisy, "60q.avif", Profile::Fast));
    assert!(size(&noisy, "60q.avif", Profile::Fast) < size(&noisy, "90q.avif", Profile::Fast));
    // The worker's slower speed finds smaller files at the same `q` (a few % margin for
    // the rare image where it does not).
    let fast = size(&source, "80q.avif", Profile::Fast) as f64;
    let best = size(&source, "80q.avif", Profile::Best) as f64;
    assert!(best <= fast * 1.05, "best {best} vs fast {fast}");
}

#[test]
fn our_avif_decodes_back_through_the_scoring_path() {
    let (w, h) = (160, 120);
    let source = jpeg(w, h, &marked_rgb(w, h), false, None);
    let out = render(&source, ".avif");
    let back = pipeline::decode_output(&out.bytes).unwrap();
    assert_eq!((back.width, back.height), (w, h));
    assert_eq!(back.source_format, OutputFormat::Avif);
    assert!(!back.has_alpha());
    // Red marker survives our own decode too.
    let px = &back.pixels()[(10 * w as usize + 10) * 3..][..3];
    assert!(px[0] > 230 && px[1] < 30 && px[2] < 30, "{px:?}");
    // Truncated files are errors, not panics.
    let cut = &out.bytes[..out.bytes.len() / 2];
    assert!(pipeline::decode_output(cut).is_err());
}
