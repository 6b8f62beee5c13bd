//! JPEG encoding with mozjpeg.
//!
//! - `fast`: libjpeg-turbo speed (`JCP_FASTEST`: no trellis) plus optimised Huffman tables,
//!   the settings sharp uses by default, so edge responses cost what sharp's do; but
//!   mozjpeg's MS-SSIM-tuned quantisation tables instead of Annex K's, which makes them a
//!   little smaller and better at the same `q`.
//! - `best`: mozjpeg's full profile (trellis quantisation, optimised progressive scans)
//!   with the same tables, which gives smaller files at the same visual quality.
//!
//! Both write baseline unless progressive was asked for, 4:2:0 chroma, a JFIF header and
//! nothing else (no EXIF, no ICC: the pixels are sRGB). The worker's quality search scores
//! sequential candidates and rewrites only the chosen one progressive
//! ([`progressive_from_sequential`]).

use std::os::raw::{c_int, c_ulong};

use mozjpeg_sys as ffi;

use super::Profile;
use super::libjpeg;

/// mozjpeg's base quantisation tables: 2, tuned for MS-SSIM on the Kodak set. For `fast`
/// instead of libjpeg's Annex K tables (0), measured with the shared peer kit on its 12
/// photos at q80 (docs/benchmarks.md): op A 0.99x sharp's bytes at +3.1 SSIMULACRA2 (Annex
/// K: 1.01x at +2.3), op C 0.97x at +1.3 (Annex K: 1.01x at +0.8); no CPU cost. For `best`
/// instead of mozjpeg's default (3): at equal SSIMULACRA2 (75, 80, 85; bytes interpolated
/// over a q sweep of 24 thumbnails of the kit's photos, 400 and 1024 px) 0.98-1.00x the
/// bytes at 400 px and 0.96-0.98x at 1024 px.
const QUANT_TABLES: c_int = 2;

/// What to encode: tightly packed 8-bit rows, 1 (gray) or 3 (RGB) channels.
pub struct JpegInput<'a> {
    pub pixels: &'a [u8],
    pub width: u32,
    pub height: u32,
    pub gray: bool,
}

struct Compressor {
    cinfo: Box<ffi::jpeg_compress_struct>,
}

impl Compressor {
    fn zeroed() -> Compressor {
        Compressor {
            // SAFETY: zeroed is the documented state before jpeg_create_compress, and
            // jpeg_destroy_compress accepts it.
            cinfo: Box::new(unsafe { std::mem::zeroed() }),
        }
    }
}

impl Drop for Compressor {
    fn drop(&mut self) {
        // SAFETY: zeroed or created by jpeg_create_compress; destroy is valid in any state.
        unsafe { ffi::jpeg_destroy_compress(&mut self.cinfo) };
    }
}

/// libjpeg's memory destination: it mallocs (and reallocs) the output as it grows; what it
/// holds is copied out once the compressor is finished, and freed in any case.
struct MemoryDestination {
    ptr: *mut u8,
    len: c_ulong,
}

impl MemoryDestination {
    fn new() -> MemoryDestination {
        MemoryDestination {
            ptr: std::ptr::null_mut(),
            len: 0,
        }
    }

    /// Point `cinfo` at this destination, which must outlive the compressor.
    fn install(&mut self, cinfo: &mut ffi::jpeg_compress_struct) {
        // SAFETY: ptr and len are written by libjpeg while the compressor runs; `self`
        // outlives it (the caller declares the destination before the compressor).
        unsafe { ffi::jpeg_mem_dest(cinfo, &mut self.ptr, &mut self.len) };
    }

    /// The bytes written, after a successful `jpeg_finish_compress`.
    fn bytes(&self) -> Vec<u8> {
        if self.ptr.is_null() {
            return Vec::new();
        }
        // SAFETY: after jpeg_finish_compress the memory destination holds len valid bytes.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len as usize).to_vec() }
    }
}

impl Drop for MemoryDestination {
    fn drop(&mut self) {
        if !self.ptr.is_null() {
            // SAFETY: allocated by libjpeg with malloc; the compressor that used it is gone
            // (it is declared after the destination, so it is dropped first).
            unsafe { libc::free(self.ptr.cast()) };
        }
    }
}

fn caught(result: Result<Result<Vec<u8>, String>, libjpeg::Caught>) -> Result<Vec<u8>, String> {
    match result {
        Ok(done) => done,
        Err(libjpeg::Caught::Libjpeg(reason)) | Err(libjpeg::Caught::Panic(reason)) => Err(reason),
    }
}

pub fn encode(
    input: &JpegInput<'_>,
    quality: u8,
    progressive: bool,
    profile: Profile,
) -> Result<Vec<u8>, String> {
    let channels = if input.gray { 1 } else { 3 };
    let row_bytes = input.width as usize * channels;
    if input.pixels.len() < row_bytes * input.height as usize {
        return Err("pixel buffer too small".to_string());
    }
    caught(libjpeg::catch(|| {
        let mut err = libjpeg::error_mgr();
        let mut destination = MemoryDestination::new();
        let mut comp = Compressor::zeroed();
        let cinfo = &mut *comp.cinfo;
        cinfo.common.err = &mut *err;
        // SAFETY: cinfo has a valid error manager.
        unsafe { ffi::jpeg_create_compress(cinfo) };
        destination.install(cinfo);
        cinfo.image_width = input.width;
        cinfo.image_height = input.height;
        cinfo.input_components = channels as c_int;
        cinfo.in_color_space = if input.gray {
            ffi::J_COLOR_SPACE::JCS_GRAYSCALE
        } else {
            ffi::J_COLOR_SPACE::JCS_RGB
        };
        // SAFETY: parameters are set on a created compressor before start.
        unsafe {
            if profile == Profile::Fast {
                ffi::jpeg_c_set_int_param(
                    cinfo,
                    ffi::J_INT_PARAM::JINT_COMPRESS_PROFILE,
                    ffi::JINT_COMPRESS_PROFILE_VALUE::JCP_FASTEST as c_int,
                );
            }
            ffi::jpeg_set_defaults(cinfo);
            // Quantisation tables are free at encode time; see QUANT_TABLES.
            ffi::jpeg_c_set_int_param(
                cinfo,
                ffi::J_INT_PARAM::JINT_BASE_QUANT_TBL_IDX,
                QUANT_TABLES,
            );
            ffi::jpeg_set_quality(cinfo, quality.clamp(1, 100) as c_int, 1);
            cinfo.optimize_coding = 1;
            if progressive {
                ffi::jpeg_simple_progression(cinfo);
            } else {
                // mozjpeg's full profile defaults to progressive; force one sequential scan.
                ffi::jpeg_c_set_bool_param(cinfo, ffi::J_BOOLEAN_PARAM::JBOOLEAN_OPTIMIZE_SCANS, 0);
                cinfo.num_scans = 0;
                cinfo.scan_info = std::ptr::null();
            }
            ffi::jpeg_start_compress(cinfo, 1);
        }
        let mut next = 0usize;
        while next < input.height as usize {
            let mut rows: [*const u8; 16] = [std::ptr::null(); 16];
            let n = (input.height as usize - next).min(rows.len());
            for (i, row) in rows.iter_mut().take(n).enumerate() {
                *row = input.pixels[(next + i) * row_bytes..].as_ptr();
            }
            // SAFETY: n valid rows of row_bytes each.
            let written = unsafe { ffi::jpeg_write_scanlines(cinfo, rows.as_ptr(), n as u32) };
            if written == 0 {
                return Err("encoder made no progress".to_string());
            }
            next += written as usize;
        }
        // SAFETY: all scanlines written.
        unsafe { ffi::jpeg_finish_compress(cinfo) };
        drop(comp);
        Ok(destination.bytes())
    }))
}

/// The same coefficients, rewritten as mozjpeg's optimised progressive scans: the worker's
/// quality search encodes and scores sequential candidates (mozjpeg's scan search is about
/// 40 % of a progressive `best` encode, and a progressive candidate decodes slower), and only
/// the chosen one is rewritten, so the written file shows exactly the pixels that were scored.
///
/// `jpeg` must be one of our own baseline encodes; anything libjpeg refuses is an error.
pub fn progressive_from_sequential(jpeg: &[u8]) -> Result<Vec<u8>, String> {
    caught(libjpeg::catch(|| {
        let mut err = libjpeg::error_mgr();
        let mut destination = MemoryDestination::new();
        let mut dec = libjpeg::Decompressor::zeroed();
        let mut comp = Compressor::zeroed();
        let src = &mut *dec.cinfo;
        src.common.err = &mut *err;
        let dst = &mut *comp.cinfo;
        dst.common.err = &mut *err;
        // SAFETY: both structs have a valid error manager; `jpeg` outlives the decompressor,
        // the coefficient arrays belong to it and outlive jpeg_finish_compress below.
        unsafe {
            ffi::jpeg_create_decompress(src);
            ffi::jpeg_mem_src(src, jpeg.as_ptr(), jpeg.len() as c_ulong);
            ffi::jpeg_read_header(src, 1);
            let coefficients = ffi::jpeg_read_coefficients(src);
            if coefficients.is_null() {
                return Err("no coefficients".to_string());
            }
            ffi::jpeg_create_compress(dst);
            destination.install(dst);
            // Sets defaults (mozjpeg's full profile: optimised scans) from the source's
            // size, components and quantisation tables.
            ffi::jpeg_copy_critical_parameters(src, dst);
            dst.optimize_coding = 1;
            ffi::jpeg_simple_progression(dst);
            ffi::jpeg_write_coefficients(dst, coefficients);
            ffi::jpeg_finish_compress(dst);
            ffi::jpeg_finish_decompress(src);
        }
        drop(comp);
        drop(dec);
        Ok(destination.bytes())
    }))
}
