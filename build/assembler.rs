// Shared by build.rs (which runs it) and the core's unit tests (which check its verdicts):
// whether mozjpeg-sys will get its SIMD, and what to tell the user when it will not.
//
// mozjpeg-sys builds its x86 SIMD with NASM and, when `nasm` is missing or too old, silently
// builds the plain C code instead (its warning is hidden by cargo for registry crates): JPEG
// then decodes and encodes 1.3-3x slower and every test still passes. So a missing assembler
// stops the build here, with the command that fixes it, unless the user says a slow build is
// what they want.

/// The variable that lets a build go on without the assembler (set to `1`).
pub const ALLOW_SLOW_JPEG_ENV: &str = "EDGETHUMB_ALLOW_SLOW_JPEG";

/// What the build should do about the assembler.
#[derive(Debug, PartialEq, Eq)]
pub enum AssemblerVerdict {
    /// SIMD will be built (or the target has no NASM-built SIMD to lose).
    Fine,
    /// Build on, slowly, and say so loudly (the user opted in).
    WarnSlow(String),
    /// Stop the build with this message.
    Refuse(String),
}

/// `nasm_version`: what `nasm -v` printed, or `None` when it could not run.
pub fn assembler_verdict(
    target_arch: &str,
    nasm_version: Option<&str>,
    allow_slow: bool,
) -> AssemblerVerdict {
    if target_arch != "x86_64" && target_arch != "x86" {
        return AssemblerVerdict::Fine;
    }
    let problem = match nasm_version {
        None => "nasm was not found on PATH".to_string(),
        // The same test mozjpeg-sys applies: NASM 0.x cannot build its SIMD.
        Some(v) if v.contains("NASM version 0.") => format!("nasm is too old ({})", v.trim()),
        Some(_) => return AssemblerVerdict::Fine,
    };
    let message = format!(
        "{problem}: mozjpeg would be built without its SIMD code and JPEG would be 1.3-3x \
         slower, silently. Install it (Debian/Ubuntu: `apt-get install nasm`; Fedora/Amazon \
         Linux: `dnf install nasm`; macOS: `brew install nasm`), run `cargo clean -p \
         mozjpeg-sys` (it may already have been built without SIMD) and build again, or \
         set {ALLOW_SLOW_JPEG_ENV}=1 to build the slow version anyway."
    );
    if allow_slow {
        AssemblerVerdict::WarnSlow(message)
    } else {
        AssemblerVerdict::Refuse(message)
    }
}
