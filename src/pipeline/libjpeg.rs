//! libjpeg (mozjpeg) glue shared by the JPEG loader and encoder.
//!
//! libjpeg reports fatal errors through `error_exit`, which must not return. We unwind out
//! of it with a [`LibjpegFailure`] payload (mozjpeg-sys is built with `C-unwind` callbacks
//! for exactly this) and [`catch`] turns that into a `Result` at the boundary. Warnings that
//! mean the data is damaged (premature end of file, corrupt entropy data) are fatal too: a
//! truncated upload must be an error, not a thumbnail with a grey bottom half.

use std::os::raw::c_int;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};

use mozjpeg_sys as ffi;

/// Unwind payload carrying a libjpeg failure message out of C.
struct LibjpegFailure(String);

/// Warnings that mean the pixels would be wrong; everything else (extraneous bytes between
/// markers, odd JFIF versions, bogus ICC chunks) is common in real files and harmless.
const FATAL_WARNINGS: &[ffi::J_MESSAGE_CODE] = &[
    ffi::JWRN_JPEG_EOF,
    ffi::JWRN_HIT_MARKER,
    ffi::JWRN_MUST_RESYNC,
    ffi::JWRN_HUFF_BAD_CODE,
    ffi::JWRN_BOGUS_PROGRESSION,
    ffi::JWRN_NOT_SEQUENTIAL,
];

/// More scans than any sane encoder writes (mozjpeg writes ~10, Photoshop ~4–8). A crafted
/// progressive file with thousands of tiny scans is a CPU bomb; libjpeg-turbo's own tools
/// offer the same cut-off (`djpeg -maxscans`).
pub const MAX_SCANS: c_int = 500;

/// An error manager whose callbacks unwind instead of calling `exit()`.
pub fn error_mgr() -> Box<ffi::jpeg_error_mgr> {
    // SAFETY: jpeg_error_mgr is a plain C struct; all-zero is a valid starting state that
    // jpeg_std_error then fills in.
    let mut err: Box<ffi::jpeg_error_mgr> = Box::new(unsafe { std::mem::zeroed() });
    // SAFETY: err points to a live, writable jpeg_error_mgr.
    unsafe { ffi::jpeg_std_error(&mut err) };
    err.error_exit = Some(error_exit);
    err.emit_message = Some(emit_message);
    err.output_message = Some(output_message);
    err
}

/// A progress monitor that aborts decoding after [`MAX_SCANS`] input scans.
pub fn scan_limiter() -> Box<ffi::jpeg_progress_mgr> {
    Box::new(ffi::jpeg_progress_mgr {
        progress_monitor: Some(progress_monitor),
        pass_counter: 0,
        pass_limit: 0,
        completed_passes: 0,
        total_passes: 0,
    })
}

/// What unwound out of a [`catch`]ed closure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caught {
    /// libjpeg reported an error (or a warning we treat as fatal): the data is at fault.
    Libjpeg(String),
    /// Any other panic: a bug in our code or a library's, not the data's fault.
    Panic(String),
}

/// A decompressor that is destroyed however its scope ends: a return, `?`, or a libjpeg
/// error unwinding through it. Shared by the loader and the encoder's progressive rewrite.
pub struct Decompressor {
    pub cinfo: Box<ffi::jpeg_decompress_struct>,
}

impl Decompressor {
    /// All zero, the documented state before `jpeg_create_decompress`.
    pub fn zeroed() -> Decompressor {
        Decompressor {
            // SAFETY: jpeg_decompress_struct is a plain C struct; all-zero is the documented
            // state before jpeg_create_decompress, and jpeg_destroy_decompress accepts it.
            cinfo: Box::new(unsafe { std::mem::zeroed() }),
        }
    }
}

impl Drop for Decompressor {
    fn drop(&mut self) {
        // SAFETY: zeroed or created by jpeg_create_decompress; destroy is valid in any state.
        unsafe { ffi::jpeg_destroy_decompress(&mut self.cinfo) };
    }
}

/// Run `f`, telling a libjpeg failure from any other panic, so the caller can blame the
/// input for the first and only for the first.
pub fn catch<T>(f: impl FnOnce() -> T) -> Result<T, Caught> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|payload| {
        if let Some(failure) = payload.downcast_ref::<LibjpegFailure>() {
            Caught::Libjpeg(failure.0.clone())
        } else if let Some(s) = payload.downcast_ref::<&str>() {
            Caught::Panic(format!("panic: {s}"))
        } else if let Some(s) = payload.downcast_ref::<String>() {
            Caught::Panic(format!("panic: {s}"))
        } else {
            Caught::Panic("panic".to_string())
        }
    })
}

fn message(cinfo: &mut ffi::jpeg_common_struct) -> String {
    // SAFETY: cinfo.err was set by us to a live error manager before any libjpeg call.
    let err = unsafe { &*cinfo.err };
    let code = err.msg_code;
    let Some(format) = err.format_message else {
        return format!("libjpeg message {code}");
    };
    let mut buffer = [0u8; 80];
    // SAFETY: libjpeg's format_message writes at most JMSG_LENGTH_MAX (80) bytes into the
    // buffer; the binding declares it `&[u8; 80]` but the C side takes `char *`, so we
    // hand it a pointer to our writable buffer.
    unsafe {
        let format: unsafe extern "C-unwind" fn(&mut ffi::jpeg_common_struct, *mut u8) =
            std::mem::transmute(format);
        format(cinfo, buffer.as_mut_ptr());
    }
    let text = buffer.split(|&b| b == 0).next().unwrap_or_default();
    String::from_utf8_lossy(text).into_owned()
}

extern "C-unwind" fn error_exit(cinfo: &mut ffi::jpeg_common_struct) {
    let text = message(cinfo);
    resume_unwind(Box::new(LibjpegFailure(text)));
}

extern "C-unwind" fn emit_message(cinfo: &mut ffi::jpeg_common_struct, level: c_int) {
    if level >= 0 {
        return; // trace messages
    }
    // SAFETY: as in `message`.
    let code = unsafe { (*cinfo.err).msg_code };
    if FATAL_WARNINGS.contains(&code) {
        let text = message(cinfo);
        resume_unwind(Box::new(LibjpegFailure(text)));
    }
}

extern "C-unwind" fn output_message(_cinfo: &mut ffi::jpeg_common_struct) {}

extern "C-unwind" fn progress_monitor(cinfo: &mut ffi::jpeg_common_struct) {
    if cinfo.is_decompressor == 0 {
        return;
    }
    // SAFETY: is_decompressor says this common struct heads a jpeg_decompress_struct.
    let scans = unsafe {
        (*(cinfo as *mut ffi::jpeg_common_struct as *mut ffi::jpeg_decompress_struct))
            .input_scan_number
    };
    if scans > MAX_SCANS {
        resume_unwind(Box::new(LibjpegFailure(format!(
            "more than {MAX_SCANS} progressive scans"
        ))));
    }
}

/// A libjpeg data source that reads a list of byte slices as one stream, so a progressive
/// file with some scans dropped (`jpeg_scans`) is decoded from the original bytes without
/// first being copied together (a 16 MB file kept 36 % at 1/4: 6 MB less at the peak).
///
/// Like `jpeg_mem_src`, running out of data inserts an EOI after a premature-end warning,
/// which our error manager makes fatal.
#[repr(C)]
pub struct SegmentSource<'a> {
    /// First, so libjpeg's `cinfo.src` pointer is also a pointer to the whole struct.
    mgr: ffi::jpeg_source_mgr,
    segments: &'a [&'a [u8]],
    next: usize,
}

/// Two bytes libjpeg reads as an EOI marker once the data ran out.
static FAKE_EOI: [u8; 2] = [0xFF, 0xD9];

impl<'a> SegmentSource<'a> {
    pub fn new(segments: &'a [&'a [u8]]) -> Box<SegmentSource<'a>> {
        Box::new(SegmentSource {
            mgr: ffi::jpeg_source_mgr {
                next_input_byte: std::ptr::null(),
                bytes_in_buffer: 0,
                init_source: Some(source_init),
                fill_input_buffer: Some(source_fill),
                skip_input_data: Some(source_skip),
                resync_to_restart: Some(ffi::jpeg_resync_to_restart),
                term_source: Some(source_term),
            },
            segments,
            next: 0,
        })
    }

    /// Point `cinfo` at this source; it must outlive every libjpeg call on `cinfo`. Taken
    /// on the `Box`, so the address libjpeg keeps cannot move.
    pub fn install(self: &mut Box<Self>, cinfo: &mut ffi::jpeg_decompress_struct) {
        cinfo.src = &mut self.mgr;
    }
}

/// The source `cinfo` reads from, installed by [`SegmentSource::install`].
///
/// # Safety
/// `cinfo.src` must point at the `mgr` of a live `SegmentSource`.
unsafe fn segment_source<'c>(
    cinfo: &'c mut ffi::jpeg_decompress_struct,
) -> &'c mut SegmentSource<'c> {
    // SAFETY: per the contract, src is the first field of a repr(C) SegmentSource.
    unsafe { &mut *cinfo.src.cast::<SegmentSource<'c>>() }
}

unsafe extern "C-unwind" fn source_init(_cinfo: &mut ffi::jpeg_decompress_struct) {}

unsafe extern "C-unwind" fn source_term(_cinfo: &mut ffi::jpeg_decompress_struct) {}

unsafe extern "C-unwind" fn source_fill(cinfo: &mut ffi::jpeg_decompress_struct) -> ffi::boolean {
    // SAFETY: libjpeg calls this only on the cinfo our source was installed on.
    let source = unsafe { segment_source(cinfo) };
    while let Some(segment) = source.segments.get(source.next) {
        source.next += 1;
        if !segment.is_empty() {
            source.mgr.next_input_byte = segment.as_ptr();
            source.mgr.bytes_in_buffer = segment.len();
            return 1;
        }
    }
    // SAFETY: cinfo.err is our live error manager; emit_message unwinds for this code.
    unsafe {
        (*cinfo.common.err).msg_code = ffi::JWRN_JPEG_EOF;
        if let Some(emit) = (*cinfo.common.err).emit_message {
            emit(&mut cinfo.common, -1);
        }
    }
    // SAFETY: as above; reached only with an error manager that let the warning pass.
    let source = unsafe { segment_source(cinfo) };
    source.mgr.next_input_byte = FAKE_EOI.as_ptr();
    source.mgr.bytes_in_buffer = FAKE_EOI.len();
    1
}

unsafe extern "C-unwind" fn source_skip(
    cinfo: &mut ffi::jpeg_decompress_struct,
    count: std::os::raw::c_long,
) {
    let Ok(mut count) = usize::try_from(count) else {
        return; // libjpeg's contract: zero or negative skips nothing
    };
    loop {
        // SAFETY: libjpeg calls this only on the cinfo our source was installed on.
        let source = unsafe { segment_source(cinfo) };
        if count <= source.mgr.bytes_in_buffer {
            // SAFETY: count bytes are left in the current buffer.
            source.mgr.next_input_byte = unsafe { source.mgr.next_input_byte.add(count) };
            source.mgr.bytes_in_buffer -= count;
            return;
        }
        count -= source.mgr.bytes_in_buffer;
        source.mgr.bytes_in_buffer = 0;
        // SAFETY: same cinfo; fill either loads the next segment or ends in the EOF path.
        unsafe { source_fill(cinfo) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_libjpeg_error_and_our_own_panic_are_told_apart() {
        let libjpeg =
            catch(|| -> u8 { resume_unwind(Box::new(LibjpegFailure("bad Huffman".into()))) });
        assert_eq!(libjpeg.unwrap_err(), Caught::Libjpeg("bad Huffman".into()));
        let ours = catch(|| -> u8 { panic!("index out of bounds") });
        match ours.unwrap_err() {
            Caught::Panic(message) => assert!(message.contains("index out of bounds")),
            other => panic!("{other:?}"),
        }
        assert_eq!(catch(|| 7).unwrap(), 7);
    }
}
