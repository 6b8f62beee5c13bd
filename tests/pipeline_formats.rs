//! Pipeline correctness on generated images: sizes, formats, orientation, colour,
//! metadata stripping, encoder options.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::undocumented_unsafe_blocks
)] // test code

mod pipeline_support;

use edgethumb::Params;
use edgethumb::pipeline::{self, EncodeSpec, Limits, Profile, Rendered};
use edgethumb::variant::OutputFormat;
use pipeline_support::*;

fn params(spec: &str) -> Params {
    spec.parse().expect("valid params")
}

fn render(source: &[u8], spec: &str) -> Rendered {
    pipeline::render(source, &params(spec), &Limits::default(), Profile::Fast)
        .unwrap_or_else(|e| panic!("render {spec}: {e}"))
}

#[test]
fn jpeg_to_jpeg_size_format_and_baseline() {
    let src = jpeg(800, 600, &gradient_rgb(800, 600), false, None);
    let out = render(&src, "400w_400h.jpg");
    assert_eq!((out.width, out.height), (400, 300));
    assert_eq!(out.format, OutputFormat::Jpeg);
    assert_eq!(magic(&out.bytes), "jpeg");
    assert_eq!(dims(&out.bytes), (400, 300));
    let markers = jpeg_markers(&out.bytes);
    assert!(
        markers.contains(&0xC0),
        "baseline SOF0 expected: {markers:x?}"
    );
    assert!(!markers.contains(&0xC2), "not progressive: {markers:x?}");
}

#[test]
fn progressive_flag_gives_sof2_in_both_profiles() {
    let src = jpeg(640, 480, &gradient_rgb(640, 480), false, None);
    for profile in [Profile::Fast, Profile::Best] {
        for (spec, progressive) in [("320w_1r.jpg", true), ("320w.jpg", false)] {
            let out = pipeline::render(&src, &params(spec), &Limits::default(), profile).unwrap();
            let markers = jpeg_markers(&out.bytes);
            assert_eq!(
                markers.contains(&0xC2),
                progressive,
                "{spec} {profile:?}: {markers:x?}"
            );
            assert_eq!(
                markers.contains(&0xC0),
                !progressive,
                "{spec} {profile:?}: {markers:x?}"
            );
            assert_eq!(dims(&out.bytes), (320, 240));
        }
    }
}

#[test]
fn quality_is_honoured() {
    let src = jpeg(800, 600, &gradient_rgb(800, 600), false, None);
    for ext in ["jpg", "webp"] {
        let low = render(&src, &format!("400w_20q.{ext}"));
        let high = render(&src, &format!("400w_95q.{ext}"));
        assert!(
            low.bytes.len() * 2 < high.bytes.len(),
            "{ext}: q20 {} bytes vs q95 {} bytes",
            low.bytes.len(),
            high.bytes.len()
        );
        assert_eq!((low.quality, high.quality), (20, 95));
    }
    assert_eq!(render(&src, "400w.jpg").quality, 80);
}

#[test]
fn best_profile_is_valid_and_not_larger_for_jpeg() {
    let src = jpeg(1200, 900, &marked_rgb(1200, 900), false, None);
    let prepared = pipeline::prepare(&src, &params("600w"), &Limits::default()).unwrap();
    for format in [OutputFormat::Jpeg, OutputFormat::Webp, OutputFormat::Png] {
        let spec = |profile| EncodeSpec {
            format,
            quality: 80,
            progressive: false,
            profile,
        };
        let fast = prepared.encode(&spec(Profile::Fast)).unwrap();
        let best = prepared.encode(&spec(Profile::Best)).unwrap();
        assert_eq!(dims(&fast), (600, 450));
        assert_eq!(dims(&best), (600, 450));
        if format != OutputFormat::Webp {
            assert!(
                best.len() <= fast.len(),
                "{format}: best {} > fast {}",
                best.len(),
                fast.len()
            );
        }
    }
}

#[test]
fn all_eight_exif_orientations_end_upright() {
    let (w, h) = (320usize, 240usize);
    let display = marked_rgb(w as u32, h as u32); // red block top-left
    for orientation in 1..=8u8 {
        let (stored, sw, sh) = stored_for_display(&display, w, h, orientation);
        let src = jpeg(sw as u32, sh as u32, &stored, false, Some(orientation));
        for spec in ["160w.png", "160w.jpg"] {
            let out = render(&src, spec);
            assert_eq!(
                (out.width, out.height),
                (160, 120),
                "orientation {orientation} {spec}"
            );
            let img = decode(&out.bytes);
            let corner = mean_rgb(&img, 5, 5, 25, 20);
            assert_close(
                corner,
                [255.0, 0.0, 0.0],
                30.0,
                &format!("top-left, orientation {orientation} {spec}"),
            );
            for (x, y) in [(130, 5), (5, 95), (130, 95)] {
                let other = mean_rgb(&img, x, y, 25, 20);
                assert!(
                    other[0] < 100.0,
                    "orientation {orientation} {spec}: red at ({x},{y}): {other:?}"
                );
            }
            if spec.ends_with("jpg") {
                let markers = jpeg_markers(&out.bytes);
                assert!(
                    !markers.contains(&0xE1),
                    "EXIF left in output: {markers:x?}"
                );
            }
        }
    }
}

#[test]
fn orientation_swaps_geometry_and_shrink_on_load_sides() {
    // Stored 1200×400 with orientation 6 displays as 400×1200: "200w" means 200×600.
    let src = jpeg(1200, 400, &gradient_rgb(1200, 400), false, Some(6));
    let out = render(&src, "200w.jpg");
    assert_eq!((out.width, out.height), (200, 600));
    assert_eq!(dims(&out.bytes), (200, 600));
}

#[test]
fn adobe_cmyk_red_stays_red() {
    let (w, h) = (256u32, 128u32);
    let mut cmyk = Vec::new();
    for _ in 0..h {
        for x in 0..w {
            // Left half: magenta+yellow ink = red. Right half: cyan = cyan.
            cmyk.extend_from_slice(if x < w / 2 {
                &[0, 255, 255, 0]
            } else {
                &[255, 0, 0, 0]
            });
        }
    }
    let src = cmyk_jpeg(w, h, &cmyk);
    let out = render(&src, "128w.png");
    assert_eq!((out.width, out.height), (128, 64));
    let img = decode(&out.bytes);
    assert_close(
        mean_rgb(&img, 8, 8, 40, 40),
        [255.0, 0.0, 0.0],
        20.0,
        "red half",
    );
    assert_close(
        mean_rgb(&img, 80, 8, 40, 40),
        [0.0, 255.0, 255.0],
        20.0,
        "cyan half",
    );
    // Default output for a JPEG source is JPEG, and it decodes as RGB.
    let out = render(&src, "128w");
    assert_eq!(magic(&out.bytes), "jpeg");
    assert_close(
        mean_rgb(&decode(&out.bytes), 8, 8, 40, 40),
        [255.0, 0.0, 0.0],
        25.0,
        "red half, jpeg",
    );
}

/// CMYK → RGB is far from linear (black multiplies every ink), so where inks mix inside the
/// resize's window, converting the decoded pixels first and averaging converting the
/// averaged inks give different colours. Stripes of cyan ink and of black ink: converted
/// first, they average to (0, 128, 128); as averaged inks (half cyan, half black) they make
/// up to (64, 128, 128), a visible red cast (31 measured at the edge). The worker (`best`) and the full-resolution
/// reference convert first; the edge keeps the cheaper order (`Decode::cmyk_before_resize`).
#[test]
fn the_worker_converts_cmyk_before_it_resizes() {
    let (w, h) = (512u32, 256u32);
    let mut cmyk = Vec::new();
    for _ in 0..h {
        for x in 0..w {
            cmyk.extend_from_slice(if (x / 8) % 2 == 0 {
                &[255, 0, 0, 0]
            } else {
                &[0, 0, 0, 255]
            });
        }
    }
    let src = cmyk_jpeg(w, h, &cmyk);
    let thumb = params("64w.png");
    let mean_red = |prepared: &pipeline::Prepared| {
        let px = prepared.pixels();
        assert_eq!(px.len(), 64 * 32 * 3, "RGB thumbnail");
        px.chunks_exact(3).map(|p| f64::from(p[0])).sum::<f64>() / (64.0 * 32.0)
    };
    let limits = Limits::default();
    let worker = pipeline::prepare_for(&src, &thumb, &limits, Profile::Best).unwrap();
    let reference = pipeline::prepare_reference(&src, &thumb, &limits).unwrap();
    let edge = pipeline::prepare_for(&src, &thumb, &limits, Profile::Fast).unwrap();
    let (worker, reference, edge) = (mean_red(&worker), mean_red(&reference), mean_red(&edge));
    assert!(
        worker < 12.0,
        "worker's red {worker:.1}: inks were averaged first"
    );
    assert!(reference < 12.0, "reference's red {reference:.1}");
    assert!(
        edge > 20.0,
        "edge's red {edge:.1}: the edge converts the thumbnail"
    );
}

/// A Display P3 profile built with lcms2 (D65, P3 primaries, sRGB transfer curve).
fn display_p3_profile() -> Vec<u8> {
    let d65 = lcms2::CIExyY {
        x: 0.3127,
        y: 0.3290,
        Y: 1.0,
    };
    let primaries = lcms2::CIExyYTRIPLE {
        Red: lcms2::CIExyY {
            x: 0.680,
            y: 0.320,
            Y: 1.0,
        },
        Green: lcms2::CIExyY {
            x: 0.265,
            y: 0.690,
            Y: 1.0,
        },
        Blue: lcms2::CIExyY {
            x: 0.150,
            y: 0.060,
            Y: 1.0,
        },
    };
    let srgb_curve = lcms2::ToneCurve::new_parametric(
        4,
        &[2.4, 1.0 / 1.055, 0.055 / 1.055, 1.0 / 12.92, 0.04045],
    )
    .unwrap();
    let curves = [&srgb_curve, &srgb_curve, &srgb_curve];
    lcms2::Profile::new_rgb(&d65, &primaries, &curves)
        .unwrap()
        .icc()
        .unwrap()
}

#[test]
fn display_p3_is_converted_to_srgb() {
    let icc = display_p3_profile();
    let colour = [200u8, 80, 60];
    let (w, h) = (64u32, 64u32);
    let px: Vec<u8> = (0..w * h).flat_map(|_| colour).collect();
    // Independent expectation: lcms2 P3 → sRGB of the one colour.
    let p3 = lcms2::Profile::new_icc(&icc).unwrap();
    let t = lcms2::Transform::<[u8; 3], [u8; 3]>::new(
        &p3,
        lcms2::PixelFormat::RGB_8,
        &lcms2::Profile::new_srgb(),
        lcms2::PixelFormat::RGB_8,
        lcms2::Intent::Perceptual,
    )
    .unwrap();
    let mut expected = [[0u8; 3]];
    t.transform_pixels(&[colour], &mut expected);
    let expected = expected[0].map(f64::from);
    assert!(
        (expected[0] - 200.0).abs() > 8.0,
        "P3 red should be more saturated in sRGB"
    );

    let png_src = png_with(
        w,
        h,
        png::ColorType::Rgb,
        png::BitDepth::Eight,
        &px,
        |info| {
            info.icc_profile = Some(icc.clone().into());
        },
    );
    let jpeg_src = jpeg_with_icc(w, h, &px, &icc);
    for (name, src) in [("png", png_src), ("jpeg", jpeg_src)] {
        let out = render(&src, "32w.png");
        let got = mean_rgb(&decode(&out.bytes), 4, 4, 24, 24);
        assert_close(got, expected, 4.0, &format!("P3 {name} → sRGB"));
        assert!(
            !png_chunks(&out.bytes).iter().any(|c| c == "iCCP"),
            "no ICC in output"
        );
    }
}

#[test]
fn sixteen_bit_png_becomes_8_bit() {
    let (w, h) = (64u32, 32u32);
    let mut data = Vec::new();
    for _ in 0..w * h {
        for v in [0x8080u16, 0xFFFF, 0x0000] {
            data.extend_from_slice(&v.to_be_bytes());
        }
    }
    let src = png(w, h, png::ColorType::Rgb, png::BitDepth::Sixteen, &data);
    let out = render(&src, "32w.png");
    let img = decode(&out.bytes);
    assert_close(
        mean_rgb(&img, 2, 2, 20, 10),
        [128.0, 255.0, 0.0],
        1.0,
        "16→8 bit",
    );
    // The output is 8-bit (IHDR bit depth byte).
    assert_eq!(out.bytes[24], 8);
}

#[test]
fn palette_png_with_transparency_keeps_alpha() {
    let (w, h) = (64u32, 64u32);
    let indices: Vec<u8> = (0..w * h).map(|i| u8::from(i % w >= w / 2)).collect();
    let src = png_with(
        w,
        h,
        png::ColorType::Indexed,
        png::BitDepth::Eight,
        &indices,
        |info| {
            info.palette = Some(vec![0, 200, 0, 0, 0, 0].into());
            info.trns = Some(vec![255, 0].into());
        },
    );
    for spec in ["32w.png", "32w.webp"] {
        let out = render(&src, spec);
        let img = decode(&out.bytes);
        assert_eq!(img.dimensions(), (32, 32));
        assert_eq!(img.get_pixel(4, 16)[3], 255, "{spec}: opaque half");
        assert_eq!(img.get_pixel(28, 16)[3], 0, "{spec}: transparent half");
        assert!(img.get_pixel(4, 16)[1] > 180, "{spec}: green kept");
    }
}

#[test]
fn gray_alpha_png_stays_gray_with_alpha() {
    let (w, h) = (40u32, 40u32);
    let data: Vec<u8> = (0..w * h)
        .flat_map(|i| [((i % w) * 6) as u8, if i / w < 20 { 255 } else { 0 }])
        .collect();
    let src = png(
        w,
        h,
        png::ColorType::GrayscaleAlpha,
        png::BitDepth::Eight,
        &data,
    );
    let out = render(&src, "20w.png");
    // PNG colour type 4 = gray+alpha: kept one channel wide.
    assert_eq!(out.bytes[25], 4, "IHDR colour type");
    let img = decode(&out.bytes);
    let p = img.get_pixel(10, 2);
    assert!(p[0] == p[1] && p[1] == p[2] && p[3] == 255, "{p:?}");
    assert_eq!(img.get_pixel(10, 17)[3], 0);
}

#[test]
fn gray_jpeg_is_encoded_as_one_component() {
    let src = gray_jpeg(300, 200);
    let out = render(&src, "150w.jpg");
    assert_eq!(dims(&out.bytes), (150, 100));
    // SOF0 payload: length(2) precision(1) height(2) width(2) components(1).
    let sof = out
        .bytes
        .windows(2)
        .position(|w| w == [0xFF, 0xC0])
        .unwrap();
    assert_eq!(out.bytes[sof + 9], 1, "one component");
    let prepared = pipeline::prepare(&src, &params("150w"), &Limits::default()).unwrap();
    assert!(prepared.is_gray());
    assert_eq!(
        prepared.pixels().len(),
        150 * 100 * 3,
        "public pixels are RGB"
    );
}

#[test]
fn alpha_is_flattened_on_white_for_jpeg_and_kept_for_webp() {
    let (w, h) = (200u32, 100u32);
    let src = png(
        w,
        h,
        png::ColorType::Rgba,
        png::BitDepth::Eight,
        &half_transparent_rgba(w, h),
    );
    let jpg = decode(&render(&src, "100w.jpg").bytes);
    assert_close(
        mean_rgb(&jpg, 5, 5, 30, 40),
        [255.0, 0.0, 0.0],
        12.0,
        "opaque red",
    );
    assert_close(
        mean_rgb(&jpg, 65, 5, 30, 40),
        [255.0, 255.0, 255.0],
        6.0,
        "transparent → white",
    );
    let webp_out = render(&src, "100w.webp");
    let img = decode(&webp_out.bytes);
    assert!(img.get_pixel(10, 20)[3] > 250 && img.get_pixel(90, 20)[3] < 5);
    let png_out = decode(&render(&src, "100w.png").bytes);
    assert_eq!(png_out.get_pixel(10, 20).0, [255, 0, 0, 255]);
    assert_eq!(png_out.get_pixel(90, 20)[3], 0);
    // Premultiplied resize: no blue fringe from the invisible pixels at the edge.
    let edge = png_out.get_pixel(48, 20);
    assert!(
        edge[2] < 10 || edge[3] < 10,
        "edge pixel {edge:?} bleeds transparent colour"
    );
}

#[test]
fn animated_gif_gives_first_frame() {
    let src = animated_gif(60, 40);
    let out = render(&src, "30w");
    assert_eq!(magic(&out.bytes), "png", "GIF sources default to PNG");
    assert_red_30x20_first_frame(&decode(&out.bytes));
}

/// The first frame of `animated_gif(60, 40)` or its WebP twin at 30 px: red and opaque.
fn assert_red_30x20_first_frame(img: &image::RgbaImage) {
    assert_eq!(img.dimensions(), (30, 20));
    assert_close(
        mean_rgb(img, 0, 0, 30, 20),
        [255.0, 0.0, 0.0],
        1.0,
        "first frame",
    );
    assert_eq!(
        img.get_pixel(15, 10)[3],
        255,
        "opaque animation stays opaque"
    );
}

#[test]
fn gif_frames_off_the_screen_are_clipped() {
    // Half of the frame sticks out on the right: its left half is drawn, the rest of the
    // screen stays transparent.
    let out = render(&gif_with_frame_at(40, 20, 40, 20, 20, 0), "40w");
    let img = decode(&out.bytes);
    assert_eq!(img.dimensions(), (40, 20));
    assert_eq!(
        img.get_pixel(5, 10)[3],
        0,
        "uncovered screen is transparent"
    );
    assert_eq!(img.get_pixel(35, 10).0, [255, 0, 0, 255], "frame drawn");
    // Wholly right of, or below, the screen: nothing is drawn (this panicked once).
    for (left, top) in [(50, 15), (41, 19), (40, 0), (0, 25), (60, 60)] {
        let out = render(&gif_with_frame_at(40, 20, 30, 10, left, top), "40w");
        let img = decode(&out.bytes);
        assert_eq!(img.dimensions(), (40, 20));
        assert!(
            img.pixels().all(|p| p[3] == 0),
            "frame at ({left}, {top}) is off the screen"
        );
    }
}

#[test]
fn animated_webp_gives_first_frame_on_its_canvas() {
    let red = [255, 0, 0, 255];
    let blue = [0, 0, 255, 255];
    // A red first frame over the whole canvas, then a blue one: the thumbnail is red and
    // opaque, as for a GIF.
    let src = animated_webp(
        60,
        40,
        &[
            WebpFrame {
                left: 0,
                top: 0,
                w: 60,
                h: 40,
                rgba: red,
            },
            WebpFrame {
                left: 0,
                top: 0,
                w: 60,
                h: 40,
                rgba: blue,
            },
        ],
    );
    let out = render(&src, "30w.png");
    assert_red_30x20_first_frame(&decode(&out.bytes));
    // A first frame covering only the right half: the left half of the canvas is
    // transparent; a frame sticking out of the canvas is clipped.
    let src = animated_webp(
        40,
        20,
        &[WebpFrame {
            left: 20,
            top: 10,
            w: 40,
            h: 20,
            rgba: red,
        }],
    );
    let img = decode(&render(&src, "40w.png").bytes);
    assert_eq!(img.dimensions(), (40, 20));
    assert_eq!(
        img.get_pixel(5, 15)[3],
        0,
        "uncovered canvas is transparent"
    );
    assert_eq!(img.get_pixel(5, 5)[3], 0, "uncovered canvas is transparent");
    assert_eq!(img.get_pixel(35, 15).0, red, "frame drawn at its offset");
    // Default output format is WebP, flattened on white for JPEG.
    let out = render(&src, "40w.jpg");
    assert_close(
        mean_rgb(&decode(&out.bytes), 2, 2, 10, 6),
        [255.0, 255.0, 255.0],
        3.0,
        "transparent canvas on white",
    );
}

#[test]
fn webp_sources_lossy_and_alpha() {
    let (w, h) = (640u32, 480u32);
    let src = webp(w, h, &marked_rgb(w, h), false);
    let out = render(&src, "160w");
    assert_eq!(magic(&out.bytes), "webp", "WebP sources default to WebP");
    assert_eq!(dims(&out.bytes), (160, 120));
    assert_close(
        mean_rgb(&decode(&out.bytes), 4, 4, 30, 20),
        [255.0, 0.0, 0.0],
        30.0,
        "marker",
    );

    let alpha = webp(200, 100, &half_transparent_rgba(200, 100), true);
    let img = decode(&render(&alpha, "100w.png").bytes);
    assert!(img.get_pixel(10, 20)[3] > 250 && img.get_pixel(90, 20)[3] < 5);
}

#[test]
fn outputs_carry_no_metadata() {
    let (w, h) = (300u32, 200u32);
    let px = gradient_rgb(w, h);
    let srgb = lcms2::Profile::new_srgb().icc().unwrap();
    // A source with both an ICC profile and EXIF.
    let mut src = Vec::new();
    let mut enc = jpeg_encoder::Encoder::new(&mut src, 90);
    enc.add_icc_profile(&srgb).unwrap();
    enc.add_exif_metadata(&exif_tiff(1)).unwrap();
    enc.encode(&px, w as u16, h as u16, jpeg_encoder::ColorType::Rgb)
        .unwrap();
    assert!(jpeg_markers(&src).contains(&0xE1) && jpeg_markers(&src).contains(&0xE2));
    for profile in [Profile::Fast, Profile::Best] {
        let get = |spec: &str| {
            pipeline::render(&src, &params(spec), &Limits::default(), profile)
                .unwrap()
                .bytes
        };
        let jpg = get("100w.jpg");
        let markers = jpeg_markers(&jpg);
        assert!(
            markers.iter().all(|m| !matches!(m, 0xE1..=0xEF | 0xFE)),
            "{profile:?}: {markers:x?}"
        );
        let chunks = webp_chunks(&get("100w.webp"));
        assert!(
            chunks
                .iter()
                .all(|c| c == "VP8 " || c == "VP8L" || c == "VP8X" || c == "ALPH"),
            "{chunks:?}"
        );
        let chunks = png_chunks(&get("100w.png"));
        assert!(
            chunks
                .iter()
                .all(|c| ["IHDR", "PLTE", "tRNS", "IDAT", "IEND"].contains(&c.as_str())),
            "{profile:?}: {chunks:?}"
        );
    }
}

#[test]
fn cover_crop_and_no_enlarge() {
    let src = jpeg(800, 400, &marked_rgb(800, 400), false, None);
    assert_eq!(dims(&render(&src, "200w_200h_1e_1c.jpg").bytes), (200, 200));
    assert_eq!(dims(&render(&src, "300w_100h_2e.png").bytes), (300, 100));
    assert_eq!(dims(&render(&src, "2000w_1l.png").bytes), (800, 400));
    assert_eq!(dims(&render(&src, "1600w.png").bytes), (1600, 800));
}

#[test]
fn reference_matches_prepare_size_and_content() {
    let (w, h) = (2400u32, 1600u32);
    let src = jpeg(w, h, &marked_rgb(w, h), false, None);
    let p = params("300w_300h");
    let fast = pipeline::prepare(&src, &p, &Limits::default()).unwrap();
    let reference = pipeline::prepare_reference(&src, &p, &Limits::default()).unwrap();
    assert_eq!((fast.width, fast.height), (300, 200));
    assert_eq!((reference.width, reference.height), (300, 200));
    assert!(!fast.has_alpha());
    assert_eq!(fast.pixels().len(), reference.pixels().len());
    let mean_abs: f64 = fast
        .pixels()
        .iter()
        .zip(reference.pixels())
        .map(|(a, b)| (*a as f64 - *b as f64).abs())
        .sum::<f64>()
        / fast.pixels().len() as f64;
    assert!(
        mean_abs < 3.0,
        "shrink-on-load drifted from the reference: {mean_abs}"
    );
    assert_eq!(fast.output_format(&p), OutputFormat::Jpeg);
}

/// An EXIF block whose links are broken (IFD0's next-IFD pointing back at IFD0, the Exif
/// sub-IFD pointer far past the end, as metadata strippers and maker notes leave them) still
/// carries IFD0's Orientation, and browsers honour it: so do we.
#[test]
fn a_damaged_exif_block_still_rotates_the_thumbnail() {
    // Big-endian TIFF: IFD0 at 8 with Orientation 6 and an ExifIFD pointer to 0x7FFF0000;
    // next-IFD offset 8 (IFD0 itself).
    let mut tiff = b"MM\0\x2a\0\0\0\x08".to_vec();
    tiff.extend_from_slice(&2u16.to_be_bytes());
    for (tag, kind, value) in [(0x0112u16, 3u16, 6u32 << 16), (0x8769, 4, 0x7FFF_0000)] {
        tiff.extend_from_slice(&tag.to_be_bytes());
        tiff.extend_from_slice(&kind.to_be_bytes());
        tiff.extend_from_slice(&1u32.to_be_bytes());
        tiff.extend_from_slice(&value.to_be_bytes());
    }
    tiff.extend_from_slice(&8u32.to_be_bytes());
    let (w, h) = (320u32, 240u32);
    let mut out = Vec::new();
    let mut enc = jpeg_encoder::Encoder::new(&mut out, 92);
    enc.add_exif_metadata(&tiff).unwrap();
    enc.encode(
        &gradient_rgb(w, h),
        w as u16,
        h as u16,
        jpeg_encoder::ColorType::Rgb,
    )
    .unwrap();
    let rendered = render(&out, "120w.png");
    // Orientation 6 displays the stored 320×240 as 240×320: 120 wide means 160 high.
    assert_eq!((rendered.width, rendered.height), (120, 160));
}
