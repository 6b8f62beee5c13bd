//! Colour step: everything becomes 8-bit sRGB (or 8-bit gray, which is sRGB-gray and is
//! kept one channel wide through the resize because that is a third of the work).
//!
//! - 16-bit → 8-bit with rounding.
//! - CMYK/YCCK JPEGs → sRGB through their embedded ICC profile (lcms2, the profile's own
//!   rendering intent), or a plain ink formula when there is none. Adobe (Photoshop) CMYK
//!   is stored inverted; the transform reads it as such.
//! - RGB with a non-sRGB profile (Display P3, Adobe RGB, camera profiles) → sRGB.
//!
//! A profile lcms2 cannot use is ignored rather than failing the render: a browser would
//! still show the image, so a thumbnail service should too.

use lcms2::{Flags, Intent, PixelFormat, Profile, Transform};

use super::image::{ImageState, Layout};

/// Convert to 8-bit sRGB (16-bit input must have been narrowed by [`narrow_16_to_8`]).
/// The colour step of [`super::STEPS`].
pub(crate) fn step(work: &mut super::Work) -> Result<(), super::PipelineError> {
    to_srgb8(work.image()?);
    Ok(())
}

pub fn to_srgb8(image: &mut ImageState) {
    narrow_16_to_8(image);
    let icc = image.icc.take();
    let profile = icc.as_deref().and_then(|data| Profile::new_icc(data).ok());
    match image.layout {
        Layout::Cmyk8 => cmyk_to_rgb(image, profile.as_ref()),
        Layout::Rgb8 | Layout::Rgba8 => {
            if let Some(profile) = profile.as_ref().filter(|p| !is_srgb(p)) {
                rgb_to_srgb(image, profile);
            }
        }
        // Gray profiles are nearly always sRGB-like gamma curves; the difference is below
        // what an 8-bit thumbnail shows.
        _ => {}
    }
}

/// 16-bit big-endian samples → 8-bit, rounding to nearest. Runs before the resize, which
/// works on 8-bit samples.
pub fn narrow_16_to_8(image: &mut ImageState) {
    let narrow = match image.layout {
        Layout::Gray16 => Layout::Gray8,
        Layout::GrayAlpha16 => Layout::GrayAlpha8,
        Layout::Rgb16 => Layout::Rgb8,
        Layout::Rgba16 => Layout::Rgba8,
        _ => return,
    };
    let data: Vec<u8> = image
        .data
        .chunks_exact(2)
        .map(|s| {
            let v = u16::from_be_bytes([s[0], s[1]]) as u32;
            ((v * 255 + 32767) / 65535) as u8
        })
        .collect();
    image.data = data;
    image.layout = narrow;
}

fn is_srgb(profile: &Profile) -> bool {
    profile
        .info(lcms2::InfoType::Description, lcms2::Locale::none())
        .is_some_and(|d| d.contains("sRGB") || d.contains("61966-2"))
}

fn cmyk_to_rgb(image: &mut ImageState, profile: Option<&Profile>) {
    let converter = CmykToRgb::new(profile, image.cmyk_inverted);
    let mut rgb = vec![0u8; image.data.len() / 4 * 3];
    converter.convert(&image.data, &mut rgb);
    image.data = rgb;
    image.layout = Layout::Rgb8;
    image.cmyk_inverted = false;
}

/// CMYK → 8-bit sRGB for one image: through its ICC profile when lcms2 can use it (the
/// profile's own rendering intent), else a plain ink formula.
///
/// The JPEG loader runs it on the decoded rows, before the resize: the conversion is far
/// from linear (black multiplies every ink), so averaging inks first and converting the
/// thumbnail afterwards shifts every textured area. Measured on the kit's CMYK photo:
/// 91.8 SSIMULACRA2 against a full-resolution conversion that way, 95+ when converted
/// first (docs/benchmarks.md, "CMYK").
pub struct CmykToRgb {
    transform: Option<Transform<u8, u8>>,
    inverted: bool,
}

impl CmykToRgb {
    /// `inverted`: Adobe (Photoshop) CMYK, stored as "ink remaining" (255 = no ink).
    pub fn new(profile: Option<&Profile>, inverted: bool) -> CmykToRgb {
        let transform = profile
            .filter(|p| p.color_space() == lcms2::ColorSpaceSignature::CmykData)
            .and_then(|p| {
                let format = if inverted {
                    PixelFormat::CMYK_8_REV
                } else {
                    PixelFormat::CMYK_8
                };
                Transform::<u8, u8>::new(
                    p,
                    format,
                    &Profile::new_srgb(),
                    PixelFormat::RGB_8,
                    p.header_rendering_intent(),
                )
                .ok()
            });
        CmykToRgb {
            transform,
            inverted,
        }
    }

    /// Converts the whole pixels of `cmyk` (4 bytes each) into `rgb` (3 bytes each); the
    /// shorter of the two bounds the count.
    pub fn convert(&self, cmyk: &[u8], rgb: &mut [u8]) {
        let pixels = (cmyk.len() / 4).min(rgb.len() / 3);
        let (cmyk, rgb) = (&cmyk[..pixels * 4], &mut rgb[..pixels * 3]);
        match &self.transform {
            Some(t) => t.transform_pixels(cmyk, rgb),
            None => {
                for (src, dst) in cmyk.chunks_exact(4).zip(rgb.chunks_exact_mut(3)) {
                    // Work in "ink remaining" terms: 255 = no ink.
                    let (c, m, y, k) = if self.inverted {
                        (src[0], src[1], src[2], src[3])
                    } else {
                        (255 - src[0], 255 - src[1], 255 - src[2], 255 - src[3])
                    };
                    let k = k as u32;
                    dst[0] = ((c as u32 * k + 127) / 255) as u8;
                    dst[1] = ((m as u32 * k + 127) / 255) as u8;
                    dst[2] = ((y as u32 * k + 127) / 255) as u8;
                }
            }
        }
    }
}

fn rgb_to_srgb(image: &mut ImageState, profile: &Profile) {
    if profile.color_space() != lcms2::ColorSpaceSignature::RgbData {
        return;
    }
    let (format, flags) = if image.layout == Layout::Rgba8 {
        (PixelFormat::RGBA_8, Flags::COPY_ALPHA)
    } else {
        (PixelFormat::RGB_8, Flags::default())
    };
    let intent = match profile.header_rendering_intent() {
        // Matrix/shaper RGB profiles have only colorimetric tables; perceptual falls back
        // to them anyway.
        Intent::Perceptual | Intent::RelativeColorimetric | Intent::Saturation => {
            profile.header_rendering_intent()
        }
        _ => Intent::Perceptual,
    };
    if let Ok(t) =
        Transform::<u8, u8>::new_flags(profile, format, &Profile::new_srgb(), format, intent, flags)
    {
        t.transform_in_place(&mut image.data);
    }
}
