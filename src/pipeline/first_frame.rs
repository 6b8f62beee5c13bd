//! An animation's thumbnail is its first frame as a viewer shows it: drawn at its offset on
//! the animation's canvas, clipped to it, with the rest of the canvas transparent. Shared by
//! GIF and animated WebP.

use super::image::Layout;

/// The first frame, `frame_w`×`frame_h` RGBA at (`left`, `top`), composed on a transparent
/// `canvas_w`×`canvas_h` canvas. Returns RGB when the result is wholly opaque (most GIFs are),
/// so PNG and WebP outputs stay opaque and smaller.
///
/// The caller has checked the canvas against the pixel limit; `frame` holds at least
/// `frame_w * frame_h * 4` bytes.
pub fn compose(
    canvas_w: u32,
    canvas_h: u32,
    frame: &[u8],
    (frame_w, frame_h): (u32, u32),
    (left, top): (u32, u32),
) -> (Layout, Vec<u8>) {
    let (w, h) = (canvas_w as usize, canvas_h as usize);
    let (fw, fh) = (frame_w as usize, frame_h as usize);
    let (left, top) = (left as usize, top as usize);
    let mut canvas = vec![0u8; w * h * 4];
    // Frames may stick out of the canvas, or lie wholly outside it: only what overlaps it
    // is drawn.
    let cols = fw.min(w.saturating_sub(left));
    let rows = fh.min(h.saturating_sub(top));
    if cols > 0 {
        for y in 0..rows {
            let src = &frame[y * fw * 4..y * fw * 4 + cols * 4];
            let dst_start = ((top + y) * w + left) * 4;
            canvas[dst_start..dst_start + cols * 4].copy_from_slice(src);
        }
    }
    let covers = left == 0 && top == 0 && cols == w && rows == h;
    if covers && canvas.chunks_exact(4).all(|p| p[3] == 255) {
        let rgb = canvas
            .chunks_exact(4)
            .flat_map(|p| [p[0], p[1], p[2]])
            .collect();
        (Layout::Rgb8, rgb)
    } else {
        (Layout::Rgba8, canvas)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RED: [u8; 4] = [255, 0, 0, 255];

    fn frame(w: usize, h: usize) -> Vec<u8> {
        RED.repeat(w * h)
    }

    #[test]
    fn a_covering_opaque_frame_becomes_rgb() {
        let (layout, pixels) = compose(3, 2, &frame(3, 2), (3, 2), (0, 0));
        assert_eq!(layout, Layout::Rgb8);
        assert_eq!(pixels, [255, 0, 0].repeat(6));
    }

    #[test]
    fn a_frame_at_an_offset_is_clipped_and_the_rest_is_transparent() {
        let (layout, pixels) = compose(4, 3, &frame(3, 3), (3, 3), (2, 1));
        assert_eq!(layout, Layout::Rgba8);
        let px = |x: usize, y: usize| &pixels[(y * 4 + x) * 4..(y * 4 + x) * 4 + 4];
        assert_eq!(px(2, 1), RED);
        assert_eq!(px(3, 2), RED);
        assert_eq!(px(1, 1), [0, 0, 0, 0]);
        assert_eq!(px(3, 0), [0, 0, 0, 0]);
    }

    #[test]
    fn frames_outside_the_canvas_draw_nothing() {
        for offset in [(4, 2), (5, 0), (0, 3), (9, 9), (u32::MAX, u32::MAX)] {
            let (layout, pixels) = compose(4, 3, &frame(2, 2), (2, 2), offset);
            assert_eq!(layout, Layout::Rgba8, "{offset:?}");
            assert!(pixels.iter().all(|&b| b == 0), "{offset:?}");
        }
    }
}
