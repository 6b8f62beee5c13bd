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

/// Run `f`, turning a libjpeg failure (or any other panic) into `Err(message)`.
pub fn catch<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|payload| {
        if let Some(failure) = payload.downcast_ref::<LibjpegFailure>() {
            failure.0.clone()
        } else if let Some(s) = payload.downcast_ref::<&str>() {
            format!("internal panic: {s}")
        } else if let Some(s) = payload.downcast_ref::<String>() {
            format!("internal panic: {s}")
        } else {
            "internal panic".to_string()
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
