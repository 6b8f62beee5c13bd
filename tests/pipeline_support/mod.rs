//! Test-image generators and output checks shared by the `pipeline_*` tests.
//!
//! Every source image is generated here, so the tests need no fixtures and each one says
//! exactly what it feeds the pipeline.
#![allow(dead_code)] // each test crate uses a different subset

use image::GenericImageView;

/// An RGB gradient, `w`×`h`, with a marker: the top-left `w/4`×`h/4` block is pure red.
pub fn marked_rgb(w: u32, h: u32) -> Vec<u8> {
    let mut px = Vec::with_capacity((w * h * 3) as usize);
    for y in 0..h {
        for x in 0..w {
            if x < w / 4 && y < h / 4 {
                px.extend_from_slice(&[255, 0, 0]);
            } else {
                let g = (x * 200 / w.max(1)) as u8 + 20;
                let b = (y * 200 / h.max(1)) as u8 + 20;
                px.extend_from_slice(&[40, g, b]);
            }
        }
    }
    px
}

pub fn gradient_rgb(w: u32, h: u32) -> Vec<u8> {
    let mut px = Vec::with_capacity((w * h * 3) as usize);
    for y in 0..h {
        for x in 0..w {
            px.extend_from_slice(&[
                (x * 255 / w.max(1)) as u8,
                (y * 255 / h.max(1)) as u8,
                ((x + y) * 127 / (w + h).max(1)) as u8,
            ]);
        }
    }
    px
}

/// The stored pixels of an image that *displays* as `display` (w×h RGB) once EXIF
/// `orientation` is applied; follows the EXIF 2.32 definition of the eight values.
pub fn stored_for_display(
    display: &[u8],
    w: usize,
    h: usize,
    orientation: u8,
) -> (Vec<u8>, usize, usize) {
    let (sw, sh) = if orientation >= 5 { (h, w) } else { (w, h) };
    let mut stored = vec![0u8; sw * sh * 3];
    for y in 0..h {
        for x in 0..w {
            // Where displayed (x, y) is stored.
            let (sx, sy) = match orientation {
                1 => (x, y),
                2 => (sw - 1 - x, y),
                3 => (sw - 1 - x, sh - 1 - y),
                4 => (x, sh - 1 - y),
                5 => (y, x),
                6 => (y, sh - 1 - x),
                7 => (sw - 1 - y, sh - 1 - x),
                _ => (sw - 1 - y, x),
            };
            let d = (y * w + x) * 3;
            let s = (sy * sw + sx) * 3;
            stored[s..s + 3].copy_from_slice(&display[d..d + 3]);
        }
    }
    (stored, sw, sh)
}

/// A JPEG (4:2:0) from RGB pixels, optionally progressive, with extra APP segments.
pub fn jpeg(
    w: u32,
    h: u32,
    rgb: &[u8],
    progressive: bool,
    exif_orientation: Option<u8>,
) -> Vec<u8> {
    let mut out = Vec::new();
    let mut enc = jpeg_encoder::Encoder::new(&mut out, 92);
    enc.set_progressive(progressive);
    enc.set_sampling_factor(jpeg_encoder::SamplingFactor::F_2_2);
    if let Some(o) = exif_orientation {
        enc.add_exif_metadata(&exif_tiff(o)).unwrap();
    }
    enc.encode(rgb, w as u16, h as u16, jpeg_encoder::ColorType::Rgb)
        .unwrap();
    out
}

/// A JPEG with an embedded ICC profile.
pub fn jpeg_with_icc(w: u32, h: u32, rgb: &[u8], icc: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut enc = jpeg_encoder::Encoder::new(&mut out, 95);
    enc.add_icc_profile(icc).unwrap();
    enc.encode(rgb, w as u16, h as u16, jpeg_encoder::ColorType::Rgb)
        .unwrap();
    out
}

pub fn gray_jpeg(w: u32, h: u32) -> Vec<u8> {
    let px: Vec<u8> = (0..w * h).map(|i| ((i % w) * 255 / w) as u8).collect();
    let mut out = Vec::new();
    let enc = jpeg_encoder::Encoder::new(&mut out, 90);
    enc.encode(&px, w as u16, h as u16, jpeg_encoder::ColorType::Luma)
        .unwrap();
    out
}

/// An Adobe-style CMYK JPEG (inverted inks, APP14 "Adobe", no ICC profile) from CMYK
/// pixels given in normal ink terms (0 = no ink).
pub fn cmyk_jpeg(w: u32, h: u32, cmyk: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let enc = jpeg_encoder::Encoder::new(&mut out, 95);
    // jpeg-encoder stores CMYK inverted with an Adobe marker, like Photoshop.
    enc.encode(cmyk, w as u16, h as u16, jpeg_encoder::ColorType::Cmyk)
        .unwrap();
    out
}

/// A minimal big-endian TIFF/EXIF block with only an Orientation tag.
pub fn exif_tiff(orientation: u8) -> Vec<u8> {
    let mut t = b"MM\0\x2a\0\0\0\x08".to_vec();
    t.extend_from_slice(&1u16.to_be_bytes()); // one entry
    t.extend_from_slice(&0x0112u16.to_be_bytes()); // Orientation
    t.extend_from_slice(&3u16.to_be_bytes()); // SHORT
    t.extend_from_slice(&1u32.to_be_bytes()); // count
    t.extend_from_slice(&(orientation as u16).to_be_bytes());
    t.extend_from_slice(&[0, 0]);
    t.extend_from_slice(&0u32.to_be_bytes()); // no next IFD
    t
}

/// A PNG with the given colour type and depth; `data` must match.
pub fn png(w: u32, h: u32, color: png::ColorType, depth: png::BitDepth, data: &[u8]) -> Vec<u8> {
    png_with(w, h, color, depth, data, |_| {})
}

pub fn png_with(
    w: u32,
    h: u32,
    color: png::ColorType,
    depth: png::BitDepth,
    data: &[u8],
    extra: impl FnOnce(&mut png::Info<'static>),
) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut info = png::Info::with_size(w, h);
        info.color_type = color;
        info.bit_depth = depth;
        extra(&mut info);
        let enc = png::Encoder::with_info(&mut out, info).unwrap();
        let mut writer = enc.write_header().unwrap();
        writer.write_image_data(data).unwrap();
        writer.finish().unwrap();
    }
    out
}

/// RGBA: opaque red left half, fully transparent right half.
pub fn half_transparent_rgba(w: u32, h: u32) -> Vec<u8> {
    let mut px = Vec::with_capacity((w * h * 4) as usize);
    for _ in 0..h {
        for x in 0..w {
            if x < w / 2 {
                px.extend_from_slice(&[255, 0, 0, 255]);
            } else {
                px.extend_from_slice(&[0, 0, 255, 0]);
            }
        }
    }
    px
}

/// A two-frame animated GIF: red frame then blue frame.
pub fn animated_gif(w: u16, h: u16) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let palette = [255, 0, 0, 0, 0, 255];
        let mut enc = gif::Encoder::new(&mut out, w, h, &palette).unwrap();
        enc.set_repeat(gif::Repeat::Infinite).unwrap();
        for colour in [0u8, 1u8] {
            let frame = gif::Frame {
                width: w,
                height: h,
                delay: 10,
                buffer: std::borrow::Cow::Owned(vec![colour; w as usize * h as usize]),
                ..gif::Frame::default()
            };
            enc.write_frame(&frame).unwrap();
        }
    }
    out
}

/// A one-frame GIF on a `w`×`h` logical screen whose red `fw`×`fh` frame sits at
/// (`left`, `top`), which may put it partly or wholly off the screen.
pub fn gif_with_frame_at(w: u16, h: u16, fw: u16, fh: u16, left: u16, top: u16) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let palette = [255, 0, 0, 0, 0, 255];
        let mut enc = gif::Encoder::new(&mut out, w, h, &palette).unwrap();
        let frame = gif::Frame {
            width: fw,
            height: fh,
            left,
            top,
            buffer: std::borrow::Cow::Owned(vec![0u8; fw as usize * fh as usize]),
            ..gif::Frame::default()
        };
        enc.write_frame(&frame).unwrap();
    }
    out
}

/// One frame of [`animated_webp`]: a solid colour `w`×`h` at (`left`, `top`) (even).
pub struct WebpFrame {
    pub left: u32,
    pub top: u32,
    pub w: u32,
    pub h: u32,
    pub rgba: [u8; 4],
}

fn riff_chunk(out: &mut Vec<u8>, fourcc: &[u8; 4], body: &[u8]) {
    out.extend_from_slice(fourcc);
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(body);
    if body.len() % 2 == 1 {
        out.push(0);
    }
}

fn u24(v: u32) -> [u8; 3] {
    let b = v.to_le_bytes();
    [b[0], b[1], b[2]]
}

/// An animated WebP on a `w`×`h` canvas, assembled chunk by chunk as the container spec
/// lays it out (VP8X, ANIM, one ANMF per frame), each frame's VP8L bitstream from libwebp.
pub fn animated_webp(w: u32, h: u32, frames: &[WebpFrame]) -> Vec<u8> {
    let mut chunks = Vec::new();
    let mut vp8x = vec![0x02 | 0x10, 0, 0, 0]; // animation, alpha
    vp8x.extend_from_slice(&u24(w - 1));
    vp8x.extend_from_slice(&u24(h - 1));
    riff_chunk(&mut chunks, b"VP8X", &vp8x);
    riff_chunk(&mut chunks, b"ANIM", &[0, 0, 0, 0, 0, 0]);
    for f in frames {
        let pixels = f.rgba.repeat((f.w * f.h) as usize);
        let mut out: *mut u8 = std::ptr::null_mut();
        // SAFETY: pixels has f.h rows of 4 * f.w bytes; libwebp mallocs `out`.
        let len = unsafe {
            libwebp_sys::WebPEncodeLosslessRGBA(
                pixels.as_ptr(),
                f.w as i32,
                f.h as i32,
                f.w as i32 * 4,
                &mut out,
            )
        };
        assert!(len > 0 && !out.is_null());
        // SAFETY: libwebp returned `len` bytes at `out`, freed with WebPFree.
        let still = unsafe { std::slice::from_raw_parts(out, len).to_vec() };
        unsafe { libwebp_sys::WebPFree(out.cast()) };
        // A simple-format lossless file: RIFF header, then one VP8L chunk.
        assert_eq!(&still[12..16], b"VP8L");
        let mut anmf = Vec::new();
        anmf.extend_from_slice(&u24(f.left / 2));
        anmf.extend_from_slice(&u24(f.top / 2));
        anmf.extend_from_slice(&u24(f.w - 1));
        anmf.extend_from_slice(&u24(f.h - 1));
        anmf.extend_from_slice(&u24(100)); // duration, ms
        anmf.push(0);
        anmf.extend_from_slice(&still[12..]);
        riff_chunk(&mut chunks, b"ANMF", &anmf);
    }
    let mut file = b"RIFF".to_vec();
    file.extend_from_slice(&(chunks.len() as u32 + 4).to_le_bytes());
    file.extend_from_slice(b"WEBP");
    file.extend_from_slice(&chunks);
    file
}

/// A lossy WebP from RGB(A) pixels via libwebp's simple API.
pub fn webp(w: u32, h: u32, pixels: &[u8], alpha: bool) -> Vec<u8> {
    let mut out: *mut u8 = std::ptr::null_mut();
    let stride = w as i32 * if alpha { 4 } else { 3 };
    // SAFETY: pixels has h rows of `stride` bytes; libwebp mallocs `out`.
    let len = unsafe {
        if alpha {
            libwebp_sys::WebPEncodeRGBA(pixels.as_ptr(), w as i32, h as i32, stride, 90.0, &mut out)
        } else {
            libwebp_sys::WebPEncodeRGB(pixels.as_ptr(), w as i32, h as i32, stride, 90.0, &mut out)
        }
    };
    assert!(len > 0 && !out.is_null());
    // SAFETY: libwebp returned `len` bytes at `out`, freed with WebPFree.
    let bytes = unsafe { std::slice::from_raw_parts(out, len).to_vec() };
    unsafe { libwebp_sys::WebPFree(out.cast()) };
    bytes
}

/// A raw PNG chunk with its CRC.
pub fn png_chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
    let mut c = (data.len() as u32).to_be_bytes().to_vec();
    c.extend_from_slice(kind);
    c.extend_from_slice(data);
    let mut crc_input = kind.to_vec();
    crc_input.extend_from_slice(data);
    c.extend_from_slice(&crc32(&crc_input).to_be_bytes());
    c
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// Decode an output with the `image` crate (an independent decoder), as RGBA8.
pub fn decode(bytes: &[u8]) -> image::RgbaImage {
    image::load_from_memory(bytes)
        .expect("output decodes")
        .to_rgba8()
}

pub fn dims(bytes: &[u8]) -> (u32, u32) {
    image::load_from_memory(bytes)
        .expect("output decodes")
        .dimensions()
}

/// The output format from magic bytes.
pub fn magic(bytes: &[u8]) -> &'static str {
    if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        "jpeg"
    } else if bytes.starts_with(b"\x89PNG") {
        "png"
    } else if bytes.len() > 12 && &bytes[0..4] == b"RIFF" && &bytes[8..12] == b"WEBP" {
        "webp"
    } else if bytes.len() > 12 && &bytes[4..8] == b"ftyp" && &bytes[8..12] == b"avif" {
        "avif"
    } else {
        "unknown"
    }
}

/// JPEG markers (the byte after 0xFF) up to the first SOS, in order.
pub fn jpeg_markers(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut pos = 2;
    while pos + 4 <= bytes.len() && bytes[pos] == 0xFF {
        let m = bytes[pos + 1];
        out.push(m);
        if m == 0xDA {
            break;
        }
        let len = u16::from_be_bytes([bytes[pos + 2], bytes[pos + 3]]) as usize;
        pos += 2 + len;
    }
    out
}

/// PNG chunk types in order.
pub fn png_chunks(bytes: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    let mut pos = 8;
    while pos + 8 <= bytes.len() {
        let len = u32::from_be_bytes(bytes[pos..pos + 4].try_into().unwrap()) as usize;
        out.push(String::from_utf8_lossy(&bytes[pos + 4..pos + 8]).into_owned());
        pos += 12 + len;
    }
    out
}

/// WebP RIFF chunk FourCCs in order.
pub fn webp_chunks(bytes: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    let mut pos = 12;
    while pos + 8 <= bytes.len() {
        let len = u32::from_le_bytes(bytes[pos + 4..pos + 8].try_into().unwrap()) as usize;
        out.push(String::from_utf8_lossy(&bytes[pos..pos + 4]).into_owned());
        pos += 8 + len + (len & 1);
    }
    out
}

/// Mean colour of a rectangle.
pub fn mean_rgb(img: &image::RgbaImage, x0: u32, y0: u32, w: u32, h: u32) -> [f64; 3] {
    let mut sum = [0f64; 3];
    for y in y0..y0 + h {
        for x in x0..x0 + w {
            let p = img.get_pixel(x, y);
            for c in 0..3 {
                sum[c] += p[c] as f64;
            }
        }
    }
    let n = (w * h) as f64;
    [sum[0] / n, sum[1] / n, sum[2] / n]
}

pub fn assert_close(actual: [f64; 3], expected: [f64; 3], tolerance: f64, what: &str) {
    for c in 0..3 {
        assert!(
            (actual[c] - expected[c]).abs() <= tolerance,
            "{what}: got {actual:?}, expected {expected:?} ± {tolerance}"
        );
    }
}
