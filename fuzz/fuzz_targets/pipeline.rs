//! Any bytes as a source image, under every kind of variant: the pipeline must answer with
//! a thumbnail or a typed error, never a panic, a hang or unbounded memory (libFuzzer's
//! -timeout and -rss_limit_mb catch the last two).
#![no_main]

use edgethumb::Params;
use edgethumb::pipeline::{self, Limits, Profile};
use libfuzzer_sys::fuzz_target;

/// One variant per kind of work: shrink-on-load at each scale, crop, enlarge, force, every
/// output format and both profiles (the first input byte picks one).
const VARIANTS: &[&str] = &[
    "400w_400h.jpg",
    "200w_200h.webp",
    "1024w_1r.jpg",
    "400w_400h.png",
    "16w_16h_1e_1c",
    "3w_100h_2e.webp",
    "50p",
    "64w_1l_30q.jpg",
    "1w",
    "300h_1e.png",
];

fuzz_target!(|data: &[u8]| {
    let Some((&pick, source)) = data.split_first() else {
        return;
    };
    let spec = VARIANTS[pick as usize % VARIANTS.len()];
    let Ok(params) = spec.parse::<Params>() else {
        panic!("fixed variant {spec} does not parse");
    };
    // Small enough that a hostile header cannot make one run take seconds or gigabytes.
    let limits = Limits {
        max_pixels: 4_000_000,
        max_bytes: 1 << 20,
    };
    let profile = if pick & 0x80 == 0 {
        Profile::Fast
    } else {
        Profile::Best
    };
    if let Ok(rendered) = pipeline::render(source, &params, &limits, profile) {
        assert!(rendered.width > 0 && rendered.height > 0);
        assert!(!rendered.bytes.is_empty());
    }
});
