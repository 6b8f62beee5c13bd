//! Orient step: apply the EXIF orientation so the pixels are stored as displayed; outputs
//! carry no Orientation tag (they carry no EXIF at all).
//!
//! Runs after the resize (which plans in displayed coordinates and samples the stored
//! buffer), so it moves thumbnail pixels: a transpose of a 10 MP decode costs ~50 ms
//! because every source read misses the cache, the same on a 1 MP thumbnail ~1 ms.

use super::image::{ImageState, displayed_rect, oriented_size};

/// The orient step of [`super::STEPS`].
pub(crate) fn step(work: &mut super::Work) -> Result<(), super::PipelineError> {
    orient(work.image()?);
    Ok(())
}

pub fn orient(image: &mut ImageState) {
    let orientation = image.orientation;
    image.orientation = 1;
    if !(2..=8).contains(&orientation) {
        return;
    }
    let (w, h) = (image.width as usize, image.height as usize);
    let data = std::mem::take(&mut image.data);
    image.data = match image.layout.bytes_per_pixel() {
        1 => remap::<1>(&data, w, h, orientation),
        2 => remap::<2>(&data, w, h, orientation),
        3 => remap::<3>(&data, w, h, orientation),
        4 => remap::<4>(&data, w, h, orientation),
        6 => remap::<6>(&data, w, h, orientation),
        _ => remap::<8>(&data, w, h, orientation),
    };
    image.content = displayed_rect(image.content, image.width, image.height, orientation);
    let (ow, oh) = oriented_size(image.width, image.height, orientation);
    image.width = ow;
    image.height = oh;
    let (fw, fh) = image.full_size;
    image.full_size = oriented_size(fw, fh, orientation);
}

/// Source coordinate for output pixel (x, y) of a `w`×`h` stored image.
#[inline]
fn source_of(x: usize, y: usize, w: usize, h: usize, orientation: u8) -> (usize, usize) {
    match orientation {
        2 => (w - 1 - x, y),
        3 => (w - 1 - x, h - 1 - y),
        4 => (x, h - 1 - y),
        5 => (y, x),
        6 => (y, h - 1 - x),
        7 => (w - 1 - y, h - 1 - x),
        8 => (w - 1 - y, x),
        _ => (x, y),
    }
}

fn remap<const N: usize>(src: &[u8], w: usize, h: usize, orientation: u8) -> Vec<u8> {
    let (ow, oh) = if orientation >= 5 { (h, w) } else { (w, h) };
    let mut out = vec![0u8; ow * oh * N];
    for (y, row) in out.chunks_exact_mut(ow * N).enumerate() {
        for (x, px) in row.chunks_exact_mut(N).enumerate() {
            let (sx, sy) = source_of(x, y, w, h, orientation);
            let at = (sy * w + sx) * N;
            px.copy_from_slice(&src[at..at + N]);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::image::Layout;

    /// A 3×2 gray image whose pixel values name their stored position.
    fn numbered(orientation: u8) -> ImageState {
        ImageState {
            width: 3,
            height: 2,
            layout: Layout::Gray8,
            data: vec![1, 2, 3, 4, 5, 6],
            full_size: (3, 2),
            content: [0.0, 0.0, 2.5, 2.0],
            orientation,
            icc: None,
            cmyk_inverted: false,
        }
    }

    #[test]
    fn all_orientations() {
        // Stored:  1 2 3      Displayed per EXIF spec.
        //          4 5 6
        let table: &[(u8, (u32, u32), &[u8])] = &[
            (1, (3, 2), &[1, 2, 3, 4, 5, 6]),
            (2, (3, 2), &[3, 2, 1, 6, 5, 4]),
            (3, (3, 2), &[6, 5, 4, 3, 2, 1]),
            (4, (3, 2), &[4, 5, 6, 1, 2, 3]),
            (5, (2, 3), &[1, 4, 2, 5, 3, 6]),
            (6, (2, 3), &[4, 1, 5, 2, 6, 3]),
            (7, (2, 3), &[6, 3, 5, 2, 4, 1]),
            (8, (2, 3), &[3, 6, 2, 5, 1, 4]),
        ];
        for &(o, size, expected) in table {
            let mut img = numbered(o);
            orient(&mut img);
            assert_eq!((img.width, img.height), size, "orientation {o}");
            assert_eq!(img.full_size, size, "orientation {o}");
            assert_eq!(img.data, expected, "orientation {o}");
            assert_eq!(img.orientation, 1);
            // The half-pixel strip of padding on the stored right edge moves with it.
            let expected_content = match o {
                1 | 4 => [0.0, 0.0, 2.5, 2.0],
                2 | 3 => [0.5, 0.0, 3.0, 2.0],
                5 | 6 => [0.0, 0.0, 2.0, 2.5],
                _ => [0.0, 0.5, 2.0, 3.0],
            };
            assert_eq!(img.content, expected_content, "orientation {o}");
        }
    }
}
