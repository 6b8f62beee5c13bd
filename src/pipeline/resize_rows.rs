//! Resize step, streaming form: the loader hands rows over as it decodes them, and only the
//! window of source rows the vertical filter still needs is kept.
//!
//! A one-shot resize needs the whole decode in memory: 29.5 MB for a 10 MP photo decoded at
//! full size for a 1024 px thumbnail, every page of it faulted in fresh (~2 µs a page on a
//! VM, ~14 ms of that render). Here the decoder writes into a window of ~150 rows that is
//! reused, hot in cache, and each batch of output rows is filtered vertically as soon as its
//! source rows are in; one horizontal pass at the end makes the thumbnail. The two passes
//! are fast_image_resize's own (it filters u8 images vertically first too), over exactly
//! the rows and columns its one-shot resize would read, so the pixels are the same.

use fast_image_resize::images::{Image, ImageRef};
use fast_image_resize::{MulDiv, PixelType, ResizeAlg, ResizeOptions, Resizer};

use super::PipelineError;
use super::image::Layout;
use super::resize::{FILTER, FILTER_SUPPORT, Sampling, internal, pixel_type};

/// Source rows one vertical batch should span; small enough to stay in cache, large
/// enough that per-call set-up is negligible.
const BATCH_SOURCE_ROWS: f64 = 128.0;

/// Takes decoded rows top to bottom (stored orientation) and produces the resampled image.
pub struct RowResizer {
    width: u32,
    height: u32,
    row_bytes: usize,
    pixel_type: PixelType,
    alpha: bool,
    /// Source columns `[first, last)` the horizontal pass reads.
    cols: (u32, u32),
    rect: [f64; 4],
    out: (u32, u32),
    scale_y: f64,
    support_y: f64,
    /// Source rows `[window_start, received)`, packed.
    window: Vec<u8>,
    window_start: u32,
    received: u32,
    /// Vertical pass output: `cols` wide, `out.1` rows.
    columns: Vec<u8>,
    done_rows: u32,
    batch_rows: u32,
    resizer: Resizer,
    mul_div: MulDiv,
}

impl RowResizer {
    /// A streaming resize of a `width`×`height` source of `layout` as `sampling` says, or
    /// `None` where there is nothing to resample (a plain crop or copy: the one-shot step
    /// does those without filtering) or the layout is 16-bit (narrowed after loading).
    /// Refuses, rather than aborts, when the column buffer cannot be allocated.
    pub fn new(
        width: u32,
        height: u32,
        layout: Layout,
        sampling: &Sampling,
    ) -> Result<Option<Self>, PipelineError> {
        let Ok(pixel_type) = pixel_type(layout) else {
            return Ok(None);
        };
        let Sampling { rect, out } = *sampling;
        let [x0, y0, x1, y1] = rect;
        if sampling.is_plain_copy() || out.0 == 0 || out.1 == 0 || width == 0 || height == 0 {
            return Ok(None);
        }
        let scale_x = (x1 - x0) / out.0 as f64;
        let scale_y = (y1 - y0) / out.1 as f64;
        let support_x = FILTER_SUPPORT * scale_x.max(1.0);
        let support_y = FILTER_SUPPORT * scale_y.max(1.0);
        // One pixel beyond the filter's reach on each side, so rounding in the window
        // arithmetic can never leave out a source column a weight needs.
        let first = ((x0 - support_x).floor() - 1.0).max(0.0) as u32;
        let last = ((x1 + support_x).ceil() + 1.0).min(width as f64) as u32;
        let batch_rows = ((BATCH_SOURCE_ROWS / scale_y).ceil() as u32).clamp(1, out.1);
        let bpp = layout.bytes_per_pixel();
        // As large as the one-shot resize's own scratch image (it filters vertically first
        // too); bounded by the source pixel limit.
        let columns_len = (last - first) as usize * bpp * out.1 as usize;
        let mut columns = Vec::new();
        columns
            .try_reserve_exact(columns_len)
            .map_err(|_| internal(format!("cannot allocate {columns_len} bytes to resize")))?;
        columns.resize(columns_len, 0);
        Ok(Some(RowResizer {
            width,
            height,
            row_bytes: width as usize * bpp,
            pixel_type,
            alpha: layout.has_alpha(),
            cols: (first, last),
            rect,
            out,
            scale_y,
            support_y,
            window: Vec::new(),
            window_start: 0,
            received: 0,
            columns,
            done_rows: 0,
            batch_rows,
            resizer: Resizer::new(),
            mul_div: MulDiv::default(),
        }))
    }

    pub fn row_bytes(&self) -> usize {
        self.row_bytes
    }

    /// Space for up to `rows` more source rows (fewer near the bottom), to be filled and
    /// then [`commit`](Self::commit)ted.
    pub fn rows_mut(&mut self, rows: usize) -> &mut [u8] {
        let rows = rows.min((self.height - self.received) as usize);
        let held = (self.received - self.window_start) as usize * self.row_bytes;
        let need = held + rows * self.row_bytes;
        if self.window.len() < need {
            self.window.resize(need, 0);
        }
        &mut self.window[held..need]
    }

    /// `rows` rows were written at the start of the last [`rows_mut`](Self::rows_mut)
    /// slice: filter every output batch whose source rows are now all in.
    pub fn commit(&mut self, rows: usize) -> Result<(), PipelineError> {
        let held = (self.received - self.window_start) as usize * self.row_bytes;
        // Never past the image's last row or the window's end, whatever the caller says.
        let room = (self.window.len() - held) / self.row_bytes.max(1);
        let rows = rows.min(room).min((self.height - self.received) as usize) as u32;
        if self.alpha && rows > 0 {
            let fresh = &mut self.window[held..held + rows as usize * self.row_bytes];
            let mut fresh = Image::from_slice_u8(self.width, rows, fresh, self.pixel_type)
                .map_err(|e| internal(format!("premultiply rows: {e}")))?;
            self.mul_div
                .multiply_alpha_inplace(&mut fresh)
                .map_err(|e| internal(format!("premultiply: {e}")))?;
        }
        self.received += rows;
        // Rows above what the next batch reads (above a crop, say) are never needed.
        self.drop_rows_above(self.rows_needed_from(self.done_rows));
        while self.done_rows < self.out.1 {
            let end = (self.done_rows + self.batch_rows).min(self.out.1);
            if self.received < self.height && self.received < self.rows_needed_below(end) {
                break;
            }
            self.filter_batch(self.done_rows, end)?;
            self.done_rows = end;
            self.drop_rows_above(self.rows_needed_from(end));
        }
        Ok(())
    }

    /// Centre of output row `row` in source rows.
    fn centre(&self, row: u32) -> f64 {
        self.rect[1] + (row as f64 + 0.5) * self.scale_y
    }

    /// First source row output rows from `row` on can read.
    fn rows_needed_from(&self, row: u32) -> u32 {
        if row >= self.out.1 {
            return self.height;
        }
        ((self.centre(row) - self.support_y).floor() - 1.0).max(0.0) as u32
    }

    /// One past the last source row output rows before `end` can read.
    fn rows_needed_below(&self, end: u32) -> u32 {
        ((self.centre(end - 1) + self.support_y).ceil() + 1.0).min(self.height as f64) as u32
    }

    fn filter_batch(&mut self, start: u32, end: u32) -> Result<(), PipelineError> {
        let held = self.received - self.window_start;
        let src = ImageRef::new(
            self.width,
            held,
            &self.window[..held as usize * self.row_bytes],
            self.pixel_type,
        )
        .map_err(|e| internal(format!("resize window: {e}")))?;
        let (first, last) = self.cols;
        let col_bytes = (last - first) as usize * self.pixel_type.size();
        let rows = &mut self.columns[start as usize * col_bytes..end as usize * col_bytes];
        let mut dst = Image::from_slice_u8(last - first, end - start, rows, self.pixel_type)
            .map_err(|e| internal(format!("resize batch: {e}")))?;
        // By construction the window starts above this batch's first centre and reaches
        // past its last one; the clamps only absorb floating-point fuzz at the edges.
        let top = (self.rect[1] + start as f64 * self.scale_y - self.window_start as f64).max(0.0);
        let span = ((end - start) as f64 * self.scale_y).min(held as f64 - top);
        let options = ResizeOptions::new()
            .resize_alg(ResizeAlg::Convolution(FILTER))
            .crop(first as f64, top, (last - first) as f64, span)
            .use_alpha(false);
        self.resizer
            .resize(&src, &mut dst, &options)
            .map_err(|e| internal(format!("resize rows: {e}")))
    }

    fn drop_rows_above(&mut self, row: u32) {
        let row = row.clamp(self.window_start, self.received);
        if row == self.window_start {
            return; // the usual case between batches: nothing to move
        }
        let drop = (row - self.window_start) as usize * self.row_bytes;
        let held = (self.received - self.window_start) as usize * self.row_bytes;
        self.window.copy_within(drop..held, 0);
        self.window_start = row;
    }

    /// The resampled image (`out` pixels, straight alpha), once every source row is in.
    pub fn finish(mut self) -> Result<(Vec<u8>, u32, u32), PipelineError> {
        if self.received < self.height || self.done_rows < self.out.1 {
            return Err(internal(format!(
                "resize got {} of {} rows",
                self.received, self.height
            )));
        }
        let (first, last) = self.cols;
        let (out_w, out_h) = self.out;
        let src = ImageRef::new(last - first, out_h, &self.columns, self.pixel_type)
            .map_err(|e| internal(format!("resize columns: {e}")))?;
        let mut dst = Image::new(out_w, out_h, self.pixel_type);
        let [x0, _, x1, _] = self.rect;
        let options = ResizeOptions::new()
            .resize_alg(ResizeAlg::Convolution(FILTER))
            .crop(x0 - first as f64, 0.0, x1 - x0, out_h as f64)
            .use_alpha(false);
        self.resizer
            .resize(&src, &mut dst, &options)
            .map_err(|e| internal(format!("resize: {e}")))?;
        if self.alpha {
            self.mul_div
                .divide_alpha_inplace(&mut dst)
                .map_err(|e| internal(format!("unpremultiply: {e}")))?;
        }
        Ok((dst.into_vec(), out_w, out_h))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::geometry;
    use crate::pipeline::image::{ImageState, oriented_size};
    use crate::pipeline::resize::{resize, sampling};
    use crate::variant::Params;

    /// Detail along both axes (periods of a few pixels) and, for RGBA, varying alpha with
    /// fully transparent patches, so a wrong row window or premultiplication shows.
    fn pattern(width: u32, height: u32, layout: Layout) -> Vec<u8> {
        let mut data = Vec::new();
        for y in 0..height {
            for x in 0..width {
                let (fx, fy) = (x as f64, y as f64);
                let r = (127.0 + 120.0 * (fx / 2.7).sin() * (fy / 3.1).cos()) as u8;
                let g = (255.0 * fy / height as f64) as u8;
                let b = ((x * 7 + y * 13) % 256) as u8;
                match layout {
                    Layout::Rgb8 => data.extend_from_slice(&[r, g, b]),
                    Layout::Rgba8 => {
                        let a = if (x / 5 + y / 7) % 3 == 0 {
                            0
                        } else {
                            (x * 3 % 256) as u8
                        };
                        data.extend_from_slice(&[r, g, b, a]);
                    }
                    Layout::Gray8 => data.push(r),
                    _ => unreachable!("test layouts"),
                }
            }
        }
        data
    }

    /// The streaming resize gives the one-shot resize's pixels (up to rounding),
    /// whatever the strip size the decoder hands over.
    #[test]
    fn streaming_matches_one_shot_resize() {
        let cases = [
            ("60w_40h_1e_1c", 1),
            ("50w", 1),
            ("70w_70h", 6),
            ("30h_2e", 8),
            ("37w_5h_2e", 1),
            ("300w", 1), // enlarging
        ];
        for layout in [Layout::Rgb8, Layout::Rgba8, Layout::Gray8] {
            for (params, orientation) in cases {
                for strip in [1usize, 7, 16] {
                    let params: Params = params.parse().expect("params");
                    let (w, h) = (203u32, 331u32);
                    // A reduced decode with a fraction of a pixel of padding.
                    let content = [0.0, 0.0, w as f64 - 0.625, h as f64 - 0.875];
                    let full_size = (w * 4, h * 4);
                    let (shown_w, shown_h) = oriented_size(full_size.0, full_size.1, orientation);
                    let plan = geometry::plan(shown_w, shown_h, &params);
                    let data = pattern(w, h, layout);
                    let what =
                        format!("{layout:?} {params:?} orientation {orientation} strip {strip}");

                    let mut one_shot = ImageState {
                        width: w,
                        height: h,
                        layout,
                        data: data.clone(),
                        full_size,
                        content,
                        orientation,
                        icc: None,
                        cmyk_inverted: false,
                    };
                    resize(&mut one_shot, &plan).expect("resize");

                    let sampling = sampling(w, h, content, orientation, &plan);
                    let mut rows = RowResizer::new(w, h, layout, &sampling)
                        .expect(&what)
                        .expect(&what);
                    let row_bytes = rows.row_bytes();
                    let mut next = 0usize;
                    while next < h as usize {
                        let buffer = rows.rows_mut(strip);
                        let n = buffer.len() / row_bytes;
                        buffer.copy_from_slice(&data[next * row_bytes..(next + n) * row_bytes]);
                        rows.commit(n).expect(&what);
                        next += n;
                        // The window holds one batch of rows and the filter's reach, never
                        // the image (the 40 px tall cases would otherwise hold all 331 rows).
                        let bound = BATCH_SOURCE_ROWS + rows.scale_y + 2.0 * rows.support_y;
                        let held = rows.window.len() / row_bytes;
                        assert!(
                            held <= bound as usize + 4 + strip,
                            "{what}: window of {held}"
                        );
                    }
                    let (pixels, out_w, out_h) = rows.finish().expect(&what);
                    assert_eq!((out_w, out_h), (one_shot.width, one_shot.height), "{what}");
                    // Straight alpha amplifies a rounding step by 255/alpha in nearly
                    // transparent pixels, so RGBA colour is compared as it is seen
                    // (premultiplied).
                    let seen = |px: &[u8], c: usize| match layout {
                        Layout::Rgba8 if c < 3 => (px[c] as u32 * px[3] as u32 + 127) / 255,
                        _ => px[c] as u32,
                    };
                    let bpp = layout.bytes_per_pixel();
                    let worst = pixels
                        .chunks_exact(bpp)
                        .zip(one_shot.data.chunks_exact(bpp))
                        .flat_map(|(a, b)| (0..bpp).map(move |c| seen(a, c).abs_diff(seen(b, c))))
                        .max()
                        .unwrap_or(0);
                    // fast_image_resize picks its fixed-point precision from the largest
                    // weight of each call; a batch can get one bit more than the whole
                    // image, which moves a rounding by a level or two, never more.
                    assert!(worst <= 2, "{what}: pixels differ by up to {worst}");
                }
            }
        }
    }

    #[test]
    fn finishing_early_is_an_error_not_a_partial_image() {
        let params: Params = "50w".parse().expect("params");
        let plan = geometry::plan(200, 100, &params);
        let sampling = sampling(200, 100, [0.0, 0.0, 200.0, 100.0], 1, &plan);
        let mut rows = RowResizer::new(200, 100, Layout::Rgb8, &sampling)
            .expect("resizer")
            .expect("resamples");
        let n = rows.rows_mut(16).len() / rows.row_bytes();
        rows.commit(n).expect("commit");
        assert!(rows.finish().is_err());
    }

    #[test]
    fn plain_copies_and_crops_are_left_to_the_one_shot_step() {
        let params: Params = "200w".parse().expect("params");
        let plan = geometry::plan(200, 100, &params);
        let sampling = sampling(200, 100, [0.0, 0.0, 200.0, 100.0], 1, &plan);
        assert!(
            RowResizer::new(200, 100, Layout::Rgb8, &sampling)
                .expect("resizer")
                .is_none()
        );
    }
}
