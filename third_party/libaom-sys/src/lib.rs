//! libaom 3.12.1, linked statically for `libavif-sys` (which finds the headers and the
//! library through this crate's `links = "aom"` metadata). No Rust API: libavif is the only
//! caller. See README.md for why this replaces crates.io's `libaom-sys`.
#![no_std]
