//! The SIMD guards: build.rs's verdicts for JPEG, and proof that mozjpeg's and libaom's
//! SIMD are really linked in and chosen at run time.

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

    /// libaom: `aom_sad16x16_sse2` exists only when its NASM source was assembled (libaom
    /// has no C fallback under that name), and after an encode has run libaom's run-time
    /// CPU detection, the dispatch pointers of two hot kernels point past their C versions
    /// (SSE4.1/SSSE3 or AVX2: every x86-64 machine Lambda runs on has them).
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avif_simd_is_linked_in_and_chosen() {
        type Kernel = *const std::ffi::c_void;
        unsafe extern "C" {
            fn aom_sad16x16_sse2();
            fn av1_fwd_txfm2d_16x16_c();
            fn aom_convolve8_horiz_c();
            static av1_fwd_txfm2d_16x16: Kernel;
            static aom_convolve8_horiz: Kernel;
        }
        let pixels: Vec<u8> = (0..64 * 64 * 3).map(|i| (i * 7 % 251) as u8).collect();
        let input = crate::pipeline::encode_avif::AvifInput {
            pixels: &pixels,
            width: 64,
            height: 64,
            channels: 3,
        };
        let encoded =
            crate::pipeline::encode_avif::encode(&input, 60, crate::pipeline::Profile::Fast);
        assert!(encoded.is_ok_and(|b| !b.is_empty()));
        let asm = aom_sad16x16_sse2 as *const ();
        assert!(!asm.is_null());
        // SAFETY: plain reads of libaom's dispatch pointers, set once by its RTCD init
        // (which the encode above ran) and never written again.
        let (txfm, convolve) = unsafe { (av1_fwd_txfm2d_16x16, aom_convolve8_horiz) };
        assert_ne!(
            txfm, av1_fwd_txfm2d_16x16_c as Kernel,
            "libaom's transform is the C one"
        );
        assert_ne!(
            convolve, aom_convolve8_horiz_c as Kernel,
            "libaom's convolve is the C one"
        );
        assert!(!txfm.is_null() && !convolve.is_null());
    }
}
