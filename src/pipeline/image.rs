//! The image state the steps pass along: a pixel buffer with a typed layout plus the source
//! facts later steps need (orientation, ICC profile, Adobe CMYK inversion).

/// Pixel layout of an [`ImageState`] buffer. 16-bit layouts are big-endian, as PNG stores
/// them; the colour step turns everything into one of the 8-bit gray/RGB layouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    Gray8,
    GrayAlpha8,
    Rgb8,
    Rgba8,
    /// Four ink channels as libjpeg hands them out; see [`ImageState::cmyk_inverted`].
    Cmyk8,
    Gray16,
    GrayAlpha16,
    Rgb16,
    Rgba16,
}

impl Layout {
    pub fn channels(self) -> usize {
        match self {
            Layout::Gray8 | Layout::Gray16 => 1,
            Layout::GrayAlpha8 | Layout::GrayAlpha16 => 2,
            Layout::Rgb8 | Layout::Rgb16 => 3,
            Layout::Rgba8 | Layout::Rgba16 | Layout::Cmyk8 => 4,
        }
    }

    pub fn bytes_per_channel(self) -> usize {
        match self {
            Layout::Gray16 | Layout::GrayAlpha16 | Layout::Rgb16 | Layout::Rgba16 => 2,
            _ => 1,
        }
    }

    pub fn bytes_per_pixel(self) -> usize {
        self.channels() * self.bytes_per_channel()
    }

    pub fn has_alpha(self) -> bool {
        matches!(
            self,
            Layout::GrayAlpha8 | Layout::Rgba8 | Layout::GrayAlpha16 | Layout::Rgba16
        )
    }

    pub fn is_gray(self) -> bool {
        matches!(
            self,
            Layout::Gray8 | Layout::GrayAlpha8 | Layout::Gray16 | Layout::GrayAlpha16
        )
    }
}

/// One image travelling through load → resize → orient → colour.
#[derive(Debug, Clone)]
pub struct ImageState {
    pub width: u32,
    pub height: u32,
    pub layout: Layout,
    /// Tightly packed rows, `width * layout.bytes_per_pixel()` bytes each.
    pub data: Vec<u8>,
    /// Size of the source before any shrink-on-load (stored orientation); the geometry is
    /// planned on this, so a reduced decode gives the same output size as a full one.
    pub full_size: (u32, u32),
    /// The part of the buffer that shows the source, as `[x0, y0, x1, y1]` in buffer
    /// pixels. A DCT-scaled JPEG decode covers whole blocks, so a 3837 px side at 1/4
    /// comes out as 960 px of which only 959.25 are image; resampling the padding too
    /// would stretch the thumbnail by a fraction of a pixel, which SSIMULACRA2 punishes.
    pub content: [f64; 4],
    /// EXIF orientation (1–8) still to apply; 1 once the orient step ran.
    pub orientation: u8,
    /// Embedded ICC profile, if any, dropped once the colour step converted to sRGB.
    pub icc: Option<Vec<u8>>,
    /// Adobe (Photoshop) CMYK JPEGs store inverted inks; libjpeg passes them through as is.
    pub cmyk_inverted: bool,
}

impl ImageState {
    /// A whole, unscaled decode (no shrink-on-load padding, no Adobe CMYK), as the GIF and
    /// animated WebP loaders produce.
    pub fn whole(
        width: u32,
        height: u32,
        layout: Layout,
        data: Vec<u8>,
        orientation: u8,
        icc: Option<Vec<u8>>,
    ) -> ImageState {
        ImageState {
            width,
            height,
            layout,
            data,
            full_size: (width, height),
            content: [0.0, 0.0, width as f64, height as f64],
            orientation,
            icc,
            cmyk_inverted: false,
        }
    }
}

/// Size of the displayed image for a stored size and EXIF orientation (5–8 swap the sides).
pub fn oriented_size(width: u32, height: u32, orientation: u8) -> (u32, u32) {
    if (5..=8).contains(&orientation) {
        (height, width)
    } else {
        (width, height)
    }
}

/// Where the continuous stored point (x, y) of a `w`×`h` stored image is displayed.
fn displayed_point(x: f64, y: f64, w: f64, h: f64, orientation: u8) -> (f64, f64) {
    match orientation {
        2 => (w - x, y),
        3 => (w - x, h - y),
        4 => (x, h - y),
        5 => (y, x),
        6 => (h - y, x),
        7 => (h - y, w - x),
        8 => (y, w - x),
        _ => (x, y),
    }
}

/// Where the continuous displayed point (x, y) of a `w`×`h` *stored* image is stored: the
/// inverse of [`displayed_point`].
fn stored_point(x: f64, y: f64, w: f64, h: f64, orientation: u8) -> (f64, f64) {
    match orientation {
        2 => (w - x, y),
        3 => (w - x, h - y),
        4 => (x, h - y),
        5 => (y, x),
        6 => (y, h - x),
        7 => (w - y, h - x),
        8 => (w - y, x),
        _ => (x, y),
    }
}

/// A rectangle `[x0, y0, x1, y1]` of a `w`×`h` stored buffer, in displayed coordinates.
pub fn displayed_rect(rect: [f64; 4], w: u32, h: u32, orientation: u8) -> [f64; 4] {
    map_rect(rect, w, h, orientation, displayed_point)
}

/// A displayed rectangle `[x0, y0, x1, y1]` of a `w`×`h` stored buffer, in stored
/// coordinates.
pub fn stored_rect(rect: [f64; 4], w: u32, h: u32, orientation: u8) -> [f64; 4] {
    map_rect(rect, w, h, orientation, stored_point)
}

fn map_rect(
    [x0, y0, x1, y1]: [f64; 4],
    w: u32,
    h: u32,
    orientation: u8,
    map: fn(f64, f64, f64, f64, u8) -> (f64, f64),
) -> [f64; 4] {
    let (w, h) = (w as f64, h as f64);
    let (ax, ay) = map(x0, y0, w, h, orientation);
    let (bx, by) = map(x1, y1, w, h, orientation);
    [ax.min(bx), ay.min(by), ax.max(bx), ay.max(by)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_rect_inverts_displayed_rect_for_every_orientation() {
        let rect = [1.0, 2.0, 7.5, 4.25];
        for orientation in 1..=8 {
            let shown = displayed_rect(rect, 10, 6, orientation);
            assert_eq!(
                stored_rect(shown, 10, 6, orientation),
                rect,
                "orientation {orientation}"
            );
        }
    }
}
