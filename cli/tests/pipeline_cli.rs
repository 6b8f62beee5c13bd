//! `edgethumb render` end to end, through the real binary.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::undocumented_unsafe_blocks
)] // test code

#[path = "../../tests/pipeline_support/mod.rs"]
mod pipeline_support;

use std::process::Command;

use pipeline_support::*;

fn edgethumb() -> Command {
    Command::new(env!("CARGO_BIN_EXE_edgethumb"))
}

/// Run `edgethumb` with `args` and `--json`; it must succeed; its report.
fn render_json(args: &[&str]) -> serde_json::Value {
    let out = edgethumb().args(args).arg("--json").output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn render_writes_the_thumbnail() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jpg");
    std::fs::write(&input, jpeg(800, 600, &gradient_rgb(800, 600), false, None)).unwrap();
    let output = dir.path().join("out.webp");
    let status = edgethumb()
        .args([
            "render",
            input.to_str().unwrap(),
            "200w_200h.webp",
            "-o",
            output.to_str().unwrap(),
        ])
        .args(["--profile", "best"])
        .status()
        .unwrap();
    assert!(status.success());
    let bytes = std::fs::read(&output).unwrap();
    assert_eq!(magic(&bytes), "webp");
    assert_eq!(dims(&bytes), (200, 150));
}

#[test]
fn render_json_reports_runs_and_memory() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.png");
    std::fs::write(
        &input,
        png(
            300,
            200,
            png::ColorType::Rgb,
            png::BitDepth::Eight,
            &gradient_rgb(300, 200),
        ),
    )
    .unwrap();
    let output = dir.path().join("out.png");
    let report = render_json(&[
        "render",
        input.to_str().unwrap(),
        "--peer-op",
        "D",
        "-o",
        output.to_str().unwrap(),
        "--repeat",
        "3",
    ]);
    assert_eq!(report["runs"].as_array().unwrap().len(), 3);
    assert_eq!(report["format"], "png");
    // Op D fits 400×400 and enlarges by default (no `1l`).
    assert_eq!(
        (report["width"].as_u64(), report["height"].as_u64()),
        (Some(400), Some(267))
    );
    for key in ["decode_ms", "resize_ms", "encode_ms", "total_ms"] {
        assert!(report["runs"][0][key].as_f64().unwrap() >= 0.0, "{key}");
    }
    assert!(report["peak_rss_kb"].as_i64().unwrap() > 0);
    assert_eq!(dims(&std::fs::read(&output).unwrap()), (400, 267));
}

#[test]
fn bad_params_and_bad_input_fail_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("in.jpg");
    std::fs::write(&good, jpeg(64, 64, &gradient_rgb(64, 64), false, None)).unwrap();
    let junk = dir.path().join("junk.jpg");
    std::fs::write(&junk, b"definitely not an image").unwrap();
    let output = dir.path().join("out.jpg");
    let cases: [(&std::path::Path, &str, &str); 4] = [
        (&good, "100x.jpg", "100x"),
        (&good, "100w.gif", "gif"),
        (&junk, "100w.jpg", "unsupported"),
        (&dir.path().join("missing.jpg"), "100w.jpg", "missing.jpg"),
    ];
    for (input, params, needle) in cases {
        let out = edgethumb()
            .args([
                "render",
                input.to_str().unwrap(),
                params,
                "-o",
                output.to_str().unwrap(),
            ])
            .output()
            .unwrap();
        assert!(!out.status.success(), "{params} on {}", input.display());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr}");
        assert!(stderr.contains(needle), "{needle:?} not in {stderr:?}");
    }
    let out = edgethumb()
        .args([
            "render",
            good.to_str().unwrap(),
            "100w.jpg",
            "-o",
            output.to_str().unwrap(),
            "--max-pixels",
            "100",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("over the limit"));
}

/// Big files are mapped, small files and pipes are read: all three give the same
/// thumbnail, and `--max-bytes` refuses an input over it either way (a pipe has no size
/// to check up front, so its bytes are counted as they come).
#[test]
fn mapped_read_and_piped_sources_render_alike_and_respect_the_byte_limit() {
    let dir = tempfile::tempdir().unwrap();
    // Noise-free gradients compress too well: a big PNG of the gradient stored without
    // compression is well over the 256 KiB mapping threshold.
    let (w, h) = (600, 400);
    let big = dir.path().join("big.png");
    let pixels = gradient_rgb(w, h);
    let mut encoded = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut encoded, w, h);
        enc.set_color(png::ColorType::Rgb);
        enc.set_compression(png::Compression::NoCompression);
        enc.write_header()
            .unwrap()
            .write_image_data(&pixels)
            .unwrap();
    }
    assert!(encoded.len() > 256 << 10, "{} bytes", encoded.len());
    std::fs::write(&big, &encoded).unwrap();
    // `piped`: feed these bytes through a pipe (a redirected file would be mapped too).
    let render = |input: &str, piped: Option<&[u8]>, extra: &[&str]| {
        let output = dir.path().join("out.jpg");
        let _ = std::fs::remove_file(&output);
        let mut cmd = edgethumb();
        cmd.args(["render", input, "150w.jpg", "-o", output.to_str().unwrap()])
            .args(extra)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let bytes = piped.unwrap_or_default().to_vec();
        // The child may stop reading early (over the limit): a broken pipe is expected then.
        let feeder = std::thread::spawn(move || {
            let _ = std::io::Write::write_all(&mut stdin, &bytes);
        });
        let out = child.wait_with_output().unwrap();
        feeder.join().unwrap();
        let written = out
            .status
            .success()
            .then(|| std::fs::read(&output).unwrap());
        (written, String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (mapped, err) = render(big.to_str().unwrap(), None, &[]);
    let mapped = mapped.unwrap_or_else(|| panic!("mapped: {err}"));
    assert_eq!(dims(&mapped), (150, 100));
    let (piped, err) = render("/dev/stdin", Some(&encoded), &[]);
    assert_eq!(piped.as_deref(), Some(&mapped[..]), "piped: {err}");

    let limit = (encoded.len() - 1).to_string();
    for (input, piped) in [
        (big.to_str().unwrap(), None),
        ("/dev/stdin", Some(&encoded[..])),
    ] {
        let (written, err) = render(input, piped, &["--max-bytes", &limit]);
        assert!(written.is_none(), "{input} over --max-bytes was rendered");
        assert!(err.contains("bytes"), "{input}: {err}");
    }
    let exact = encoded.len().to_string();
    let (piped, err) = render("/dev/stdin", Some(&encoded), &["--max-bytes", &exact]);
    assert_eq!(
        piped.as_deref(),
        Some(&mapped[..]),
        "piped at the limit: {err}"
    );
}

/// A 20 MP source never exists whole in memory: JPEG rows (at the DCT scale) and PNG rows
/// go straight into the resize. A whole RGB decode alone would be 61 MB. (`peak_rss_kb` is
/// the process's own VmHWM, not inflated by this test process's big buffers.)
#[test]
fn big_sources_are_resized_without_a_whole_image_buffer() {
    let (w, h) = (6000u32, 3400u32);
    let rgb = gradient_rgb(w, h);
    let whole_rgb_kb = (w as i64 * h as i64 * 3) / 1024;
    let dir = tempfile::tempdir().unwrap();
    let sources = [
        ("in.jpg", jpeg(w, h, &rgb, false, None)),
        (
            "in.png",
            png(w, h, png::ColorType::Rgb, png::BitDepth::Eight, &rgb),
        ),
    ];
    drop(rgb);
    for (name, bytes) in sources {
        let input = dir.path().join(name);
        std::fs::write(&input, &bytes).unwrap();
        // 1024 px asks a 1/2-scale JPEG decode (3000×1700, 15 MB whole); 400 px a 1/4 one.
        for params in ["400w.jpg", "1024w.jpg"] {
            let output = dir.path().join("out.jpg");
            let report = render_json(&[
                "render",
                input.to_str().unwrap(),
                params,
                "-o",
                output.to_str().unwrap(),
            ]);
            let peak_kb = report["peak_rss_kb"].as_i64().unwrap();
            let input_kb = bytes.len() as i64 / 1024;
            eprintln!("{name} {params}: peak RSS {peak_kb} KB (input {input_kb} KB)");
            // The binary (~9 MB), the input file and thumbnail-sized buffers (16-30 MB
            // measured), never the picture: a whole RGB decode is 61 MB on top of the rest.
            assert!(
                peak_kb < input_kb + whole_rgb_kb,
                "{name} {params}: peak RSS {peak_kb} KB with a {input_kb} KB input"
            );
            let thumb = std::fs::read(&output).unwrap();
            assert_eq!(
                dims(&thumb).0,
                params.trim_end_matches("w.jpg").parse::<u32>().unwrap()
            );
        }
    }
}
