//! `serve --demo`: a few generated originals, so a newcomer without photos can try it.
//!
//! The images are drawn in code (no binary assets in the repository) and chosen to show
//! what a thumbnailer has to get right: smooth gradients (banding), a zone plate (aliasing
//! when resizing), fine dark-on-light strokes (text sharpness), transparency (alpha through
//! WebP and PNG, flattened for JPEG) and a tall aspect ratio (fit versus cover).
//! JPEG originals are encoded by our own pipeline from the drawn pixels. They are written
//! through the store, so `--demo` works the same on a folder and on an S3 bucket.

use bytes::Bytes;

use edgethumb::pipeline::{self, Limits, PipelineError, Profile};
use edgethumb::store::{ObjectStore, PutRequest, StoreError};
use edgethumb::variant::Params;

/// One generated original.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DemoImage {
    pub file_name: &'static str,
    pub width: u32,
    pub height: u32,
}

/// What `--demo` writes (file name, size).
pub const DEMO_IMAGES: [DemoImage; 5] = [
    DemoImage {
        file_name: "sunset.jpg",
        width: 1600,
        height: 1000,
    },
    DemoImage {
        file_name: "shapes.png",
        width: 1200,
        height: 900,
    },
    DemoImage {
        file_name: "page.jpg",
        width: 1280,
        height: 1700,
    },
    DemoImage {
        file_name: "zoneplate.png",
        width: 1024,
        height: 1024,
    },
    DemoImage {
        file_name: "tower.jpg",
        width: 800,
        height: 1600,
    },
];

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("cannot store demo image {key}: {source}")]
    Store {
        key: String,
        #[source]
        source: StoreError,
    },
    #[error("cannot encode demo image {name} as PNG: {reason}")]
    Png { name: &'static str, reason: String },
    #[error("cannot encode demo image {name} as JPEG: {source}")]
    Jpeg {
        name: &'static str,
        #[source]
        source: PipelineError,
    },
}

/// Put the demo originals into `store` under their file names. Existing keys are left
/// alone, so `--demo` on a folder (or bucket) of real photos never overwrites one. Returns
/// the keys written.
pub async fn seed(store: &dyn ObjectStore) -> Result<Vec<String>, DemoError> {
    let mut written = Vec::new();
    for image in &DEMO_IMAGES {
        let key = image.file_name;
        let store_error = |source| DemoError::Store {
            key: key.to_string(),
            source,
        };
        if store.head(key).await.map_err(store_error)?.is_some() {
            continue;
        }
        // Drawing and encoding take a moment of CPU: off the async threads.
        let owned = image.clone();
        let bytes = tokio::task::spawn_blocking(move || render_demo_image(&owned))
            .await
            .map_err(|e| DemoError::Png {
                name: key,
                reason: format!("drawing task failed: {e}"),
            })??;
        let content_type = if key.ends_with(".png") {
            "image/png"
        } else {
            "image/jpeg"
        };
        let request = PutRequest {
            content_type: content_type.to_string(),
            ..Default::default()
        };
        store
            .put(key, Bytes::from(bytes), request)
            .await
            .map_err(store_error)?;
        written.push(key.to_string());
    }
    Ok(written)
}

/// The encoded file for one demo image.
pub fn render_demo_image(image: &DemoImage) -> Result<Vec<u8>, DemoError> {
    let (w, h) = (image.width, image.height);
    let (pixels, channels) = match image.file_name {
        "sunset.jpg" => (sunset(w, h), 3),
        "shapes.png" => (shapes(w, h), 4),
        "page.jpg" => (text_page(w, h), 3),
        "zoneplate.png" => (zone_plate(w, h), 3),
        _ => (tower(w, h), 3),
    };
    let png = encode_png(image.file_name, &pixels, w, h, channels)?;
    if image.file_name.ends_with(".png") {
        return Ok(png);
    }
    let params: Params = "92q.jpg".parse().map_err(|e| DemoError::Png {
        name: image.file_name,
        reason: format!("bad internal params: {e}"),
    })?;
    pipeline::render(&png, &params, &Limits::default(), Profile::Best)
        .map(|rendered| rendered.bytes)
        .map_err(|source| DemoError::Jpeg {
            name: image.file_name,
            source,
        })
}

fn encode_png(
    name: &'static str,
    pixels: &[u8],
    width: u32,
    height: u32,
    channels: u8,
) -> Result<Vec<u8>, DemoError> {
    let failed = |e: png::EncodingError| DemoError::Png {
        name,
        reason: e.to_string(),
    };
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, width, height);
    encoder.set_color(if channels == 4 {
        png::ColorType::Rgba
    } else {
        png::ColorType::Rgb
    });
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header().map_err(failed)?;
    writer.write_image_data(pixels).map_err(failed)?;
    writer.finish().map_err(failed)?;
    Ok(out)
}

/// Deterministic per-pixel noise in -1..1 (film grain, so gradients look photographic).
fn grain(x: u32, y: u32) -> f32 {
    let mut v = x.wrapping_mul(0x9E37_79B1) ^ y.wrapping_mul(0x85EB_CA77);
    v ^= v >> 15;
    v = v.wrapping_mul(0xC2B2_AE3D);
    v ^= v >> 13;
    (v & 0xFFFF) as f32 / 32768.0 - 1.0
}

fn mix(a: [f32; 3], b: [f32; 3], t: f32) -> [f32; 3] {
    let t = t.clamp(0.0, 1.0);
    [
        a[0] + (b[0] - a[0]) * t,
        a[1] + (b[1] - a[1]) * t,
        a[2] + (b[2] - a[2]) * t,
    ]
}

fn push_rgb(out: &mut Vec<u8>, c: [f32; 3], noise: f32) {
    for v in c {
        out.push((v + noise).round().clamp(0.0, 255.0) as u8);
    }
}

fn sunset(w: u32, h: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(w as usize * h as usize * 3);
    let (sun_x, sun_y, sun_r) = (w as f32 * 0.62, h as f32 * 0.58, h as f32 * 0.09);
    for y in 0..h {
        for x in 0..w {
            let (fx, fy) = (x as f32, y as f32);
            let t = fy / h as f32;
            let sky = if t < 0.45 {
                mix([18.0, 32.0, 92.0], [220.0, 110.0, 80.0], t / 0.45)
            } else {
                mix(
                    [220.0, 110.0, 80.0],
                    [255.0, 196.0, 110.0],
                    (t - 0.45) / 0.25,
                )
            };
            let d = ((fx - sun_x).powi(2) + (fy - sun_y).powi(2)).sqrt();
            let glow = (1.0 - (d / (sun_r * 4.0))).max(0.0).powi(2);
            let mut c = mix(sky, [255.0, 235.0, 170.0], glow);
            if d < sun_r {
                c = [255.0, 244.0, 200.0];
            }
            let far = h as f32 * (0.66 + 0.05 * (fx / 170.0).sin() + 0.02 * (fx / 53.0).cos());
            let near =
                h as f32 * (0.78 + 0.06 * (fx / 260.0 + 1.3).sin() + 0.015 * (fx / 31.0).sin());
            if fy > near {
                c = mix(
                    [40.0, 34.0, 52.0],
                    [14.0, 12.0, 20.0],
                    (fy - near) / (h as f32 * 0.2),
                );
            } else if fy > far {
                c = mix(
                    [96.0, 64.0, 92.0],
                    [70.0, 48.0, 76.0],
                    (fy - far) / (h as f32 * 0.12),
                );
            }
            push_rgb(&mut out, c, grain(x, y) * 3.0);
        }
    }
    out
}

fn shapes(w: u32, h: u32) -> Vec<u8> {
    let mut out = vec![0u8; w as usize * h as usize * 4];
    let circles: [(f32, f32, f32, [u8; 4]); 4] = [
        (0.30, 0.40, 0.25, [230, 57, 70, 220]),
        (0.55, 0.35, 0.22, [42, 157, 143, 200]),
        (0.45, 0.62, 0.24, [244, 162, 97, 190]),
        (0.78, 0.66, 0.15, [69, 123, 157, 255]),
    ];
    for y in 0..h {
        for x in 0..w {
            let (fx, fy) = (x as f32 / w as f32, y as f32 / h as f32);
            let mut px = [0.0f32; 4];
            // A soft-edged rounded frame.
            let inset = 0.04;
            if fx > inset && fx < 1.0 - inset && fy > inset && fy < 1.0 - inset {
                let edge = (fx - inset)
                    .min(1.0 - inset - fx)
                    .min(fy - inset)
                    .min(1.0 - inset - fy);
                if edge < 0.012 {
                    px = [29.0, 53.0, 87.0, 255.0];
                }
            }
            for (cx, cy, r, colour) in circles {
                let d = ((fx - cx) * w as f32).hypot((fy - cy) * h as f32) / (r * h as f32);
                // Anti-aliased edge, one pixel wide.
                let cover = ((1.0 - d) * r * h as f32).clamp(0.0, 1.0);
                let a = cover * f32::from(colour[3]) / 255.0;
                for i in 0..3 {
                    px[i] = f32::from(colour[i]) * a + px[i] * (1.0 - a);
                }
                px[3] = 255.0 * a + px[3] * (1.0 - a);
            }
            let at = (y as usize * w as usize + x as usize) * 4;
            for i in 0..4 {
                out[at + i] = px[i].round().clamp(0.0, 255.0) as u8;
            }
        }
    }
    out
}

fn text_page(w: u32, h: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(w as usize * h as usize * 3);
    let margin = w / 10;
    let line_height = 34u32;
    for y in 0..h {
        for x in 0..w {
            let mut c = [250.0, 248.0, 240.0];
            let in_column = x >= margin && x < w - margin;
            if in_column && (margin..margin + 70).contains(&y) {
                // A heading bar.
                if x < margin + (w - 2 * margin) * 2 / 3 {
                    c = [30.0, 30.0, 40.0];
                }
            } else if in_column && y >= margin + 130 && y < h - margin {
                let line = (y - margin - 130) / line_height;
                let in_line = (y - margin - 130) % line_height;
                // Every seventh line is a paragraph break; each line has its own length.
                let length = (w - 2 * margin) as f32
                    * (0.72 + 0.28 * ((line as f32 * 1.7).sin() * 0.5 + 0.5));
                if line % 7 != 6 && (6..22).contains(&in_line) && ((x - margin) as f32) < length {
                    // Words: dark strokes with gaps; glyph-like vertical stems inside.
                    let word = (x - margin) / 9;
                    let gap = (word.wrapping_mul(2_654_435_761) >> 28).is_multiple_of(6);
                    let stem = (x - margin) % 9 < 2 || in_line == 13 || in_line == 14;
                    if !gap && stem {
                        c = [25.0, 25.0, 30.0];
                    }
                }
            }
            push_rgb(&mut out, c, 0.0);
        }
    }
    out
}

fn zone_plate(w: u32, h: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(w as usize * h as usize * 3);
    let k = std::f32::consts::PI / w as f32;
    for y in 0..h {
        for x in 0..w {
            let dx = x as f32 - w as f32 / 2.0;
            let dy = y as f32 - h as f32 / 2.0;
            let v = 127.5 + 127.5 * (k * (dx * dx + dy * dy) * 0.5).cos();
            let tint = x as f32 / w as f32;
            push_rgb(
                &mut out,
                [v, v * (0.8 + 0.2 * tint), v * (1.0 - 0.3 * tint)],
                0.0,
            );
        }
    }
    out
}

fn tower(w: u32, h: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(w as usize * h as usize * 3);
    let (left, right, top) = (w * 3 / 10, w * 7 / 10, h / 8);
    for y in 0..h {
        for x in 0..w {
            let t = y as f32 / h as f32;
            let mut c = mix([120.0, 170.0, 230.0], [225.0, 235.0, 245.0], t);
            if x >= left && x < right && y >= top {
                c = [70.0, 78.0, 92.0];
                let (wx, wy) = ((x - left) % 40, (y - top) % 56);
                if (10..30).contains(&wx) && (12..40).contains(&wy) {
                    let lit = ((x - left) / 40 + (y - top) / 56 * 3) % 5 == 0;
                    c = if lit {
                        [250.0, 220.0, 130.0]
                    } else {
                        [150.0, 185.0, 215.0]
                    };
                }
            }
            if y >= h - h / 12 {
                c = [60.0, 110.0, 60.0];
            }
            push_rgb(&mut out, c, grain(x, y) * 2.0);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn png_demo_images_decode_at_their_size() {
        for image in DEMO_IMAGES.iter().filter(|i| i.file_name.ends_with(".png")) {
            let bytes = render_demo_image(image).unwrap();
            let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
            let reader = decoder.read_info().unwrap();
            assert_eq!(
                (reader.info().width, reader.info().height),
                (image.width, image.height)
            );
        }
    }

    #[tokio::test]
    async fn seed_writes_each_image_once_and_never_overwrites() {
        let store = edgethumb::store::memory::MemoryStore::new("demo");
        let mine = PutRequest {
            content_type: "image/jpeg".into(),
            ..Default::default()
        };
        store
            .put("tower.jpg", Bytes::from_static(b"my own photo"), mine)
            .await
            .unwrap();
        let written = seed(&store).await.unwrap();
        assert_eq!(written.len(), DEMO_IMAGES.len() - 1);
        assert!(!written.contains(&"tower.jpg".to_string()));
        let kept = store.get("tower.jpg", u64::MAX).await.unwrap().unwrap();
        assert_eq!(&kept.body[..], b"my own photo");
        let sunset = store.get("sunset.jpg", u64::MAX).await.unwrap().unwrap();
        assert_eq!(sunset.info.content_type.as_deref(), Some("image/jpeg"));
        assert_eq!(&sunset.body[..3], &[0xFF, 0xD8, 0xFF], "a JPEG");
        assert!(seed(&store).await.unwrap().is_empty());
    }

    #[test]
    fn drawn_images_are_not_flat() {
        for pixels in [
            sunset(160, 100),
            text_page(640, 850),
            zone_plate(64, 64),
            tower(80, 160),
        ] {
            let distinct: std::collections::BTreeSet<u8> = pixels.iter().copied().collect();
            assert!(distinct.len() >= 4, "{} distinct values", distinct.len());
        }
        let alpha: std::collections::BTreeSet<u8> =
            shapes(120, 90).iter().skip(3).step_by(4).copied().collect();
        assert!(alpha.contains(&0) && alpha.contains(&255));
    }
}
