//! The JPEG SIMD guard: build.rs's verdicts, and proof that the SIMD is really linked in.

#[cfg(test)]
mod tests {
    include!("../../build/assembler.rs");

    #[test]
    fn a_missing_or_ancient_nasm_stops_an_x86_build_with_the_fix() {
        for arch in ["x86_64", "x86"] {
            for version in [None, Some("NASM version 0.98.39 compiled on Jan 1 2005")] {
                match assembler_verdict(arch, version, false) {
                    AssemblerVerdict::Refuse(message) => {
                        assert!(message.contains("apt-get install nasm"), "{message}");
                        assert!(message.contains(ALLOW_SLOW_JPEG_ENV), "{message}");
                    }
                    other => panic!("{arch} {version:?}: {other:?}"),
                }
                assert!(matches!(
                    assembler_verdict(arch, version, true),
                    AssemblerVerdict::WarnSlow(_)
                ));
            }
            assert_eq!(
                assembler_verdict(arch, Some("NASM version 2.16.01"), false),
                AssemblerVerdict::Fine
            );
        }
        // Other targets build mozjpeg's SIMD (if any) without NASM.
        assert_eq!(
            assembler_verdict("aarch64", None, false),
            AssemblerVerdict::Fine
        );
    }

    /// libjpeg-turbo's dispatch: with the SIMD built in, these answer non-zero on any x86-64
    /// (SSE2 is part of the architecture); built without it (jsimd_none.c) they answer 0.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn jpeg_simd_is_linked_in() {
        unsafe extern "C" {
            fn jsimd_can_idct_islow() -> std::os::raw::c_int;
            fn jsimd_can_rgb_ycc() -> std::os::raw::c_int;
        }
        // SAFETY: both take no arguments and only read CPU feature flags.
        let (idct, ycc) = unsafe { (jsimd_can_idct_islow(), jsimd_can_rgb_ycc()) };
        assert!(
            idct != 0 && ycc != 0,
            "mozjpeg was built without SIMD (idct {idct}, rgb_ycc {ycc})"
        );
    }
}
