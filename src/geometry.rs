//! Geometry: from a source size and [`Params`] to the pixel sizes the pipeline produces.
//!
//! Kept free of any image type so every rule is a table test. The source size given here
//! is the *displayed* size, after EXIF orientation.

use crate::variant::{Params, ResizeMode};

/// Largest output area we scale to; beyond it the source size is served (re-encoded).
pub const MAX_TARGET_AREA: u64 = 4096 * 4096;
/// Largest output side we scale to; beyond it the source size is served (re-encoded).
pub const MAX_TARGET_SIDE: u32 = 16384;

/// A rectangle in the resized image's coordinates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Crop {
    pub left: u32,
    pub top: u32,
    pub width: u32,
    pub height: u32,
}

/// What the pipeline must do: resize the (oriented) source to `resize`, then crop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    pub source: (u32, u32),
    /// Size after resizing, before cropping.
    pub resize: (u32, u32),
    /// Centre crop applied after resizing (`1e_1c`).
    pub crop: Option<Crop>,
}

impl Plan {
    /// Final output size.
    pub fn output(&self) -> (u32, u32) {
        match self.crop {
            Some(c) => (c.width, c.height),
            None => self.resize,
        }
    }

    /// Whether any resampling is needed.
    pub fn resizes(&self) -> bool {
        self.resize != self.source
    }

    fn unchanged(source: (u32, u32)) -> Plan {
        Plan {
            source,
            resize: source,
            crop: None,
        }
    }
}

fn scaled(side: u32, factor: f64) -> u32 {
    ((side as f64 * factor).round() as u64).clamp(1, u32::MAX as u64) as u32
}

/// Compute the plan for a source of `src_w`×`src_h` pixels (displayed orientation).
pub fn plan(src_w: u32, src_h: u32, params: &Params) -> Plan {
    let source = (src_w.max(1), src_h.max(1));
    let (sw, sh) = (source.0 as f64, source.1 as f64);
    let pct = params.percent as f64 / 100.0;
    // `p` multiplies the requested box; alone it scales the source.
    let box_w = params.width.map(|w| w as f64 * pct);
    let box_h = params.height.map(|h| h as f64 * pct);

    let (resize, enlarges, crop_box) = match (box_w, box_h) {
        (None, None) => {
            let r = (scaled(source.0, pct), scaled(source.1, pct));
            (r, pct > 1.0, None)
        }
        (Some(w), None) => {
            let f = w / sw;
            (
                (w.round().max(1.0) as u32, scaled(source.1, f)),
                f > 1.0,
                None,
            )
        }
        (None, Some(h)) => {
            let f = h / sh;
            (
                (scaled(source.0, f), h.round().max(1.0) as u32),
                f > 1.0,
                None,
            )
        }
        (Some(w), Some(h)) => match params.mode {
            ResizeMode::Fill => {
                let r = (w.round().max(1.0) as u32, h.round().max(1.0) as u32);
                (r, w > sw || h > sh, None)
            }
            ResizeMode::Fit | ResizeMode::Cover => {
                let (fw, fh) = (w / sw, h / sh);
                let f = if params.mode == ResizeMode::Fit {
                    fw.min(fh)
                } else {
                    fw.max(fh)
                };
                // The side that defines the box gets exactly the box size, avoiding
                // off-by-one from floating point.
                let r = if f == fw {
                    (w.round().max(1.0) as u32, scaled(source.1, f))
                } else {
                    (scaled(source.0, f), h.round().max(1.0) as u32)
                };
                let crop_box = params
                    .crops()
                    .then(|| (w.round().max(1.0) as u32, h.round().max(1.0) as u32));
                (r, f > 1.0, crop_box)
            }
        },
    };

    if params.no_enlarge && enlarges {
        return Plan::unchanged(source);
    }
    let area = resize.0 as u64 * resize.1 as u64;
    if area > MAX_TARGET_AREA || resize.0 > MAX_TARGET_SIDE || resize.1 > MAX_TARGET_SIDE {
        return Plan::unchanged(source);
    }
    let crop = crop_box.and_then(|(cw, ch)| {
        let (cw, ch) = (cw.min(resize.0), ch.min(resize.1));
        ((cw, ch) != resize).then(|| Crop {
            left: (resize.0 - cw) / 2,
            top: (resize.1 - ch) / 2,
            width: cw,
            height: ch,
        })
    });
    Plan {
        source,
        resize,
        crop,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn out(src: (u32, u32), spec: &str) -> (u32, u32) {
        plan(src.0, src.1, &spec.parse().unwrap()).output()
    }

    const LANDSCAPE: (u32, u32) = (5640, 3172);
    const PORTRAIT: (u32, u32) = (2560, 3837);

    /// (source size, params, expected output size)
    type Case = ((u32, u32), &'static str, (u32, u32));

    #[test]
    fn geometry_table() {
        let table: &[Case] = &[
            // e=0 fit inside
            (LANDSCAPE, "400w_400h", (400, 225)),
            (PORTRAIT, "400w_400h", (267, 400)),
            (LANDSCAPE, "400w_400h_0e", (400, 225)),
            // e=1 cover: the smaller side reaches the box
            (LANDSCAPE, "400w_400h_1e", (711, 400)),
            (PORTRAIT, "400w_400h_1e", (400, 600)),
            // e=1 + c=1: centre crop to exactly w×h
            (LANDSCAPE, "400w_400h_1e_1c", (400, 400)),
            (PORTRAIT, "300w_200h_1e_1c", (300, 200)),
            // c without e=1 is a no-op
            (LANDSCAPE, "400w_400h_1c", (400, 225)),
            // e=2 force
            (LANDSCAPE, "400w_400h_2e", (400, 400)),
            (PORTRAIT, "100w_50h_2e", (100, 50)),
            // only w / only h
            (LANDSCAPE, "1024w", (1024, 576)),
            (PORTRAIT, "1024w", (1024, 1535)),
            (LANDSCAPE, "200h", (356, 200)),
            (PORTRAIT, "200h", (133, 200)),
            // p alone scales the source
            (LANDSCAPE, "10p", (564, 317)),
            (PORTRAIT, "50p", (1280, 1919)),
            // p with w/h multiplies them
            ((1000, 1000), "100w_100h_200p", (200, 200)),
            (LANDSCAPE, "200w_200h_200p", (400, 225)),
            (LANDSCAPE, "100w_50p", (50, 28)),
            // enlarging is allowed by default
            ((100, 50), "400w", (400, 200)),
            ((100, 50), "400w_400h_2e", (400, 400)),
            // l=1 never enlarges
            ((100, 50), "400w_1l", (100, 50)),
            ((100, 50), "400w_400h_1e_1c_1l", (100, 50)),
            ((100, 50), "400w_40h_2e_1l", (100, 50)),
            ((100, 50), "200p_1l", (100, 50)),
            ((1000, 500), "400w_1l", (400, 200)),
            // limits: area over 4096², or a side over 16384 → source size
            ((1000, 1000), "4096w_4096h", (4096, 4096)),
            ((1000, 1000), "4096w_4096h_101p", (1000, 1000)),
            ((1000, 10), "4096w_1000p", (1000, 10)),
            ((16000, 10), "200p", (16000, 10)),
            ((100, 100), "1000p", (1000, 1000)),
            // tiny results never reach zero
            ((10000, 10), "100w", (100, 1)),
        ];
        for &(src, spec, expected) in table {
            assert_eq!(out(src, spec), expected, "{spec} on {src:?}");
        }
    }

    #[test]
    fn crop_is_centred() {
        let p = plan(5640, 3172, &"400w_400h_1e_1c".parse().unwrap());
        assert_eq!(p.resize, (711, 400));
        assert_eq!(
            p.crop,
            Some(Crop {
                left: 155,
                top: 0,
                width: 400,
                height: 400
            })
        );
    }

    #[test]
    fn unchanged_plan_does_not_resize() {
        let p = plan(100, 50, &"400w_1l".parse().unwrap());
        assert!(!p.resizes());
        assert!(plan(100, 50, &"50w".parse().unwrap()).resizes());
    }

    #[test]
    fn zero_sized_source_is_clamped() {
        assert_eq!(plan(0, 0, &"10w".parse().unwrap()).output(), (10, 10));
    }
}
