//! JPEG loading with shrink-on-load: libjpeg scales by 1/2, 1/4 or 1/8 in the DCT domain,
//! so a 20 MP photo for a 400 px thumbnail is decoded straight into a ~1 MP buffer and the
//! full-size image never exists in memory.
//!
//! The header is read by our own marker walk first (dimensions, EXIF orientation, ICC
//! profile, Adobe marker), so limits are checked before libjpeg allocates anything and the
//! scale is chosen before the entropy-coded data is touched.

use std::os::raw::c_long;

use mozjpeg_sys as ffi;

use super::colour::CmykToRgb;
use super::image::{ImageState, Layout};
use super::load::Stage;
use super::resize_rows::RowResizer;
use super::{Deadline, Limits, PipelineError, exif, libjpeg, resize};
use crate::geometry::Plan;

const FORMAT: &str = "JPEG";

/// What the marker walk found before the first scan.
#[derive(Debug, Clone, Default)]
pub struct JpegHeader {
    pub width: u32,
    pub height: u32,
    pub components: u8,
    pub progressive: bool,
    pub orientation: u8,
    pub icc: Option<Vec<u8>>,
    /// An Adobe APP14 marker: CMYK data is stored inverted (Photoshop convention).
    pub adobe: bool,
}

fn corrupt(reason: impl Into<String>) -> PipelineError {
    PipelineError::Corrupt {
        format: FORMAT,
        reason: reason.into(),
    }
}

/// Walk the markers up to the first SOS.
pub fn read_header(data: &[u8]) -> Result<JpegHeader, PipelineError> {
    if !data.starts_with(&[0xFF, 0xD8]) {
        return Err(corrupt("missing SOI marker"));
    }
    let mut header = JpegHeader {
        orientation: 1,
        ..JpegHeader::default()
    };
    let mut icc_chunks: Vec<(u8, &[u8])> = Vec::new();
    let mut saw_frame = false;
    let mut pos = 2usize;
    loop {
        // Markers may be preceded by any number of 0xFF fill bytes.
        while pos < data.len() && data[pos] != 0xFF {
            pos += 1; // tolerate junk between segments, as libjpeg does (with a warning)
        }
        while pos < data.len() && data[pos] == 0xFF {
            pos += 1;
        }
        let Some(&marker) = data.get(pos) else {
            return Err(corrupt("truncated before the first scan"));
        };
        pos += 1;
        if marker == 0xD8 || marker == 0xD9 {
            return Err(corrupt("no image data before EOI"));
        }
        if (0xD0..=0xD7).contains(&marker) || marker == 0x01 {
            continue; // stand-alone markers
        }
        let len = match data.get(pos..pos + 2) {
            Some(b) => u16::from_be_bytes([b[0], b[1]]) as usize,
            None => return Err(corrupt("truncated marker segment")),
        };
        if len < 2 {
            return Err(corrupt("bad marker segment length"));
        }
        let Some(segment) = data.get(pos + 2..pos + len) else {
            return Err(corrupt("truncated marker segment"));
        };
        pos += len;
        match marker {
            0xE1 if header.orientation == 1 && segment.starts_with(b"Exif\0\0") => {
                header.orientation = exif::orientation(exif::strip_exif_header(segment));
            }
            0xE2 if segment.len() > 14 && segment.starts_with(b"ICC_PROFILE\0") => {
                icc_chunks.push((segment[12], &segment[14..]));
            }
            0xEE if segment.starts_with(b"Adobe") => header.adobe = true,
            0xC0..=0xCF if !matches!(marker, 0xC4 | 0xC8 | 0xCC) => {
                if saw_frame {
                    return Err(corrupt("more than one frame header"));
                }
                saw_frame = true;
                if segment.len() < 6 {
                    return Err(corrupt("short frame header"));
                }
                match marker {
                    0xC0..=0xC2 => {}
                    0xC3 | 0xC7 | 0xCB | 0xCF => {
                        return Err(PipelineError::UnsupportedFormat(
                            "lossless JPEG".to_string(),
                        ));
                    }
                    _ => {
                        return Err(PipelineError::UnsupportedFormat(
                            "arithmetic-coded or hierarchical JPEG".to_string(),
                        ));
                    }
                }
                if segment[0] != 8 {
                    return Err(PipelineError::UnsupportedFormat(format!(
                        "{}-bit JPEG",
                        segment[0]
                    )));
                }
                header.height = u16::from_be_bytes([segment[1], segment[2]]) as u32;
                header.width = u16::from_be_bytes([segment[3], segment[4]]) as u32;
                header.components = segment[5];
                header.progressive = marker == 0xC2;
            }
            0xDA => break,
            _ => {}
        }
    }
    if !saw_frame {
        return Err(corrupt("scan before frame header"));
    }
    if header.width == 0 || header.height == 0 {
        return Err(corrupt(format!(
            "zero dimension in header ({}x{})",
            header.width, header.height
        )));
    }
    if !matches!(header.components, 1 | 3 | 4) {
        return Err(corrupt(format!("{} colour components", header.components)));
    }
    if !icc_chunks.is_empty() {
        icc_chunks.sort_by_key(|(seq, _)| *seq);
        header.icc = Some(
            icc_chunks
                .iter()
                .flat_map(|(_, d)| d.iter().copied())
                .collect(),
        );
    }
    Ok(header)
}

/// The largest DCT reduction (8, 4, 2 or 1) that keeps the decoded image at least
/// `floor` pixels on both sides (stored orientation).
pub fn choose_scale_denom(width: u32, height: u32, floor: (u32, u32)) -> u32 {
    [8u32, 4, 2]
        .into_iter()
        .find(|&d| width.div_ceil(d) >= floor.0 && height.div_ceil(d) >= floor.1)
        .unwrap_or(1)
}

/// Decode `data`, reduced by `1/scale_denom` in the DCT domain.
///
/// `floor`: the smallest stored-orientation size the caller can use; `None` decodes at
/// full size (reference renders).
///
/// `plan`: the resize to run on the rows as they are decoded (see `resize_rows`), so the
/// decode never exists as a whole; the result is then [`Stage::Resized`].
pub fn load(
    data: &[u8],
    limits: &Limits,
    floor: impl FnOnce(&JpegHeader) -> Option<(u32, u32)>,
    plan: impl FnOnce(&JpegHeader) -> Plan,
    cmyk_before_resize: bool,
    deadline: &Deadline,
) -> Result<(ImageState, Stage), PipelineError> {
    let header = read_header(data)?;
    super::load::check_pixels(header.width, header.height, limits)?;
    let scale_denom = match floor(&header) {
        Some(floor) => choose_scale_denom(header.width, header.height, floor),
        None => 1,
    };
    let plan = plan(&header);
    // The one place the compressed bytes go to libjpeg once the scale is known. A reduced
    // decode needs only some of a progressive file's scans: jpeg_scans finds the others,
    // and libjpeg reads around them, straight from `data`.
    let segments: Vec<&[u8]> = match super::jpeg_scans::needed_ranges(data, scale_denom) {
        Some(ranges) => ranges.into_iter().filter_map(|r| data.get(r)).collect(),
        None => vec![data],
    };
    decode(
        &segments,
        scale_denom,
        cmyk_before_resize,
        &header,
        limits,
        &plan,
        deadline,
    )
}

/// Scanlines asked of libjpeg per call (it returns at most one iMCU row's worth anyway).
const ROWS_PER_READ: usize = 16;

/// Decode the next scanlines into `buffer` (whole rows of `row_bytes`); returns how many.
fn read_rows(
    cinfo: &mut ffi::jpeg_decompress_struct,
    buffer: &mut [u8],
    row_bytes: usize,
) -> Result<usize, PipelineError> {
    let mut rows: [*mut u8; ROWS_PER_READ] = [std::ptr::null_mut(); ROWS_PER_READ];
    let n = (buffer.len() / row_bytes).min(ROWS_PER_READ);
    for (i, row) in rows.iter_mut().take(n).enumerate() {
        *row = buffer[i * row_bytes..].as_mut_ptr();
    }
    // SAFETY: `rows` holds n pointers to whole rows of row_bytes inside `buffer`.
    let read = unsafe { ffi::jpeg_read_scanlines(cinfo, rows.as_mut_ptr(), n as u32) };
    if read == 0 {
        return Err(corrupt("decoder made no progress"));
    }
    Ok(read as usize)
}

/// Decode the next scanlines into `buffer` (whole rows of `row_bytes` of the output
/// layout). CMYK rows are decoded into `scratch` first and converted to RGB on the way in,
/// so everything after the load sees sRGB.
fn read_rows_into(
    cinfo: &mut ffi::jpeg_decompress_struct,
    buffer: &mut [u8],
    row_bytes: usize,
    cmyk: Option<(&CmykToRgb, &mut Vec<u8>)>,
) -> Result<usize, PipelineError> {
    let Some((converter, scratch)) = cmyk else {
        return read_rows(cinfo, buffer, row_bytes);
    };
    let pixels_per_row = row_bytes / 3;
    let rows = (buffer.len() / row_bytes.max(1)).min(ROWS_PER_READ);
    let cmyk_row_bytes = pixels_per_row * 4;
    scratch.resize(rows * cmyk_row_bytes, 0);
    let read = read_rows(cinfo, scratch, cmyk_row_bytes)?;
    converter.convert(
        &scratch[..read * cmyk_row_bytes],
        &mut buffer[..read * row_bytes],
    );
    Ok(read)
}

/// Owns a libjpeg decompressor; destroys it on every exit path, unwinding included.
/// `cmyk_before_resize`: convert CMYK as it is decoded, before the resize
/// ([`super::load::Decode::cmyk_before_resize`]).
fn decode(
    input: &[&[u8]],
    scale_denom: u32,
    cmyk_before_resize: bool,
    header: &JpegHeader,
    limits: &Limits,
    plan: &Plan,
    deadline: &Deadline,
) -> Result<(ImageState, Stage), PipelineError> {
    // Progressive files keep every DCT coefficient of the full image (2 bytes each); the
    // pixel limit bounds that, and libjpeg refuses to exceed this budget.
    let memory_budget = limits
        .max_pixels
        .saturating_mul(8)
        .saturating_add(64 << 20)
        .min(c_long::MAX as u64) as c_long;
    let result = libjpeg::catch(|| -> Result<(ImageState, Stage), PipelineError> {
        // Declared before the decompressor so they outlive it (locals drop in reverse).
        let mut err = libjpeg::error_mgr();
        let mut progress = libjpeg::scan_limiter();
        let mut source = libjpeg::SegmentSource::new(input);
        let mut dec = libjpeg::Decompressor::zeroed();
        let cinfo = &mut *dec.cinfo;
        cinfo.common.err = &mut *err;
        // SAFETY: cinfo is zeroed with a valid error manager; the source and the input it
        // reads outlive the decoder.
        unsafe {
            ffi::jpeg_create_decompress(cinfo);
            cinfo.common.progress = &mut *progress;
            (*cinfo.common.mem).max_memory_to_use = memory_budget;
            source.install(cinfo);
            ffi::jpeg_read_header(cinfo, 1);
        }
        let layout = match cinfo.jpeg_color_space {
            ffi::J_COLOR_SPACE::JCS_GRAYSCALE => {
                cinfo.out_color_space = ffi::J_COLOR_SPACE::JCS_GRAYSCALE;
                Layout::Gray8
            }
            ffi::J_COLOR_SPACE::JCS_CMYK | ffi::J_COLOR_SPACE::JCS_YCCK => {
                cinfo.out_color_space = ffi::J_COLOR_SPACE::JCS_CMYK;
                Layout::Cmyk8
            }
            _ => {
                cinfo.out_color_space = ffi::J_COLOR_SPACE::JCS_RGB;
                Layout::Rgb8
            }
        };
        cinfo.scale_num = 1;
        cinfo.scale_denom = scale_denom;
        // Off: after jpeg_scans some AC coefficients never arrive, and libjpeg would invent
        // them and blur the DC. A complete file never triggers smoothing (truncated ones are
        // errors here), so nothing else changes.
        cinfo.do_block_smoothing = 0;
        // SAFETY: header read, parameters set.
        unsafe { ffi::jpeg_start_decompress(cinfo) };
        let (w, h) = (cinfo.output_width, cinfo.output_height);
        let channels = cinfo.output_components as usize;
        if channels != layout.channels() {
            return Err(corrupt("unexpected component count"));
        }
        let content = [
            0.0,
            0.0,
            header.width as f64 / scale_denom as f64,
            header.height as f64 / scale_denom as f64,
        ];
        // CMYK becomes RGB as it is decoded, before any resize, where the caller asks
        // for fidelity (`CmykToRgb`); otherwise the colour step converts the thumbnail.
        let cmyk = (cmyk_before_resize && layout == Layout::Cmyk8).then(|| {
            let profile = header
                .icc
                .as_deref()
                .and_then(|data| lcms2::Profile::new_icc(data).ok());
            CmykToRgb::new(profile.as_ref(), header.adobe)
        });
        let mut scratch = Vec::new();
        let (layout, icc) = match cmyk {
            Some(_) => (Layout::Rgb8, None),
            None => (layout, header.icc.clone()),
        };
        let state = |width, height, data, content| ImageState {
            width,
            height,
            layout,
            data,
            full_size: (header.width, header.height),
            content,
            orientation: header.orientation,
            icc: icc.clone(),
            cmyk_inverted: layout == Layout::Cmyk8 && header.adobe,
        };
        let sampling = resize::sampling(w, h, content, header.orientation, plan);
        if let Some(mut rows) = RowResizer::new(w, h, layout, &sampling)? {
            let row_bytes = rows.row_bytes();
            while cinfo.output_scanline < h {
                deadline.check("load")?;
                let buffer = rows.rows_mut(ROWS_PER_READ);
                let read = read_rows_into(
                    cinfo,
                    buffer,
                    row_bytes,
                    cmyk.as_ref().map(|c| (c, &mut scratch)),
                )?;
                rows.commit(read)?;
            }
            let (data, out_w, out_h) = rows.finish()?;
            let whole = [0.0, 0.0, out_w as f64, out_h as f64];
            return Ok((state(out_w, out_h, data, whole), Stage::Resized));
        }
        let row_bytes = w as usize * layout.channels();
        let mut data = super::load::decode_buffer(row_bytes * h as usize, FORMAT)?;
        while cinfo.output_scanline < h {
            deadline.check("load")?;
            let first = cinfo.output_scanline as usize * row_bytes;
            let end = (first + ROWS_PER_READ * row_bytes).min(data.len());
            read_rows_into(
                cinfo,
                &mut data[first..end],
                row_bytes,
                cmyk.as_ref().map(|c| (c, &mut scratch)),
            )?;
        }
        // No jpeg_finish_decompress: all pixels are in, and a missing EOI after complete
        // image data is common in real uploads; damaged scan data has already failed above.
        Ok((state(w, h, data, content), Stage::Decoded))
    });
    match result {
        Ok(inner) => inner,
        // libjpeg's own error: the data is damaged or hostile.
        Err(libjpeg::Caught::Libjpeg(reason)) => Err(corrupt(reason)),
        // Anything else that unwound out of the closure (our row resizer included) is a
        // bug, not the input's fault: retried by the worker, a 500 at the edge.
        Err(libjpeg::Caught::Panic(reason)) => Err(PipelineError::Internal(reason)),
    }
}
