//! Builds libaom from the release tarball beside this file and tells `libavif-sys` where it
//! is (`DEP_AOM_INCLUDE`, `DEP_AOM_PKGCONFIG`).
//!
//! Always an optimised (CMake `Release`) build, also under `cargo test`: a Debug libaom
//! encodes several times slower, and nothing here debugs libaom itself.
//!
//! Finished builds are kept in the repository's git-ignored `.cache/libaom/` (or
//! `EDGETHUMB_LIBAOM_CACHE`; `off` keeps nothing), one per target and C compiler command
//! line, and reused: libaom is the slowest thing in the workspace to compile (minutes on two
//! cores), and `cargo clippy`, `cargo test`, a second target folder and the next CI run on
//! the same machine would otherwise each compile it again. That is the one place this
//! script writes outside `OUT_DIR`.

use std::collections::hash_map::DefaultHasher;
use std::env;
use std::fs::{self, File};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

/// The tarball: upstream's release, byte for byte Debian's `aom_3.12.1.orig.tar.gz`
/// (SHA-256 in README.md).
const TARBALL: &str = "aom-3.12.1.tar.gz";
/// The folder the tarball unpacks to.
const SOURCE_DIR: &str = "aom-3.12.1";
const CACHE_ENV: &str = "EDGETHUMB_LIBAOM_CACHE";

/// The one change we make to libaom (README.md, "The base-qindex option"): an encoder option
/// `edgethumb-qindex` (1–255) that sets the base quantiser index directly. libaom's own
/// controls (`cq-level`, `min-q`/`max-q`, `AV1E_SET_QUANTIZER_ONE_PASS`) take 0–63 and map
/// each step to about four qindex values, so the worker's quality search could only move in
/// steps worth up to 8 % of a photo's bytes; the bitstream itself has 256. Each edit is
/// `(file, anchor, replacement, occurrences)`: the anchor must occur exactly that many times,
/// so a libaom upgrade that moves the code stops the build rather than silently dropping the
/// option.
const SOURCE_EDITS: &[(&str, &str, &str, usize)] = &[
    (
        "av1/av1_cx_iface.c",
        "  int sb_qp_sweep;\n};\n",
        "  int sb_qp_sweep;\n  unsigned int edgethumb_qindex;  // edgethumb: 0 = use cq_level\n};\n",
        1,
    ),
    (
        "av1/av1_cx_iface.c",
        "// sb_qp_sweep\n};\n",
        "// sb_qp_sweep\n  0,  // edgethumb_qindex\n};\n",
        2,
    ),
    (
        "av1/av1_cx_iface.c",
        "  rc_cfg->cq_level = av1_quantizer_to_qindex(extra_cfg->cq_level);\n",
        "  rc_cfg->cq_level = av1_quantizer_to_qindex(extra_cfg->cq_level);\n\
  if (extra_cfg->edgethumb_qindex > 0)\n\
    rc_cfg->cq_level = (int)extra_cfg->edgethumb_qindex;\n",
        1,
    ),
    (
        "av1/av1_cx_iface.c",
        "  struct av1_extracfg extra_cfg = ctx->extra_cfg;\n  // Used to mock the argv",
        "  struct av1_extracfg extra_cfg = ctx->extra_cfg;\n\
  if (strcmp(name, \"edgethumb-qindex\") == 0) {\n\
    char *end = NULL;\n\
    const long qindex = strtol(value, &end, 10);\n\
    if (end == value || *end != '\\0' || qindex < 1 || qindex > 255)\n\
      return AOM_CODEC_INVALID_PARAM;\n\
    extra_cfg.edgethumb_qindex = (unsigned int)qindex;\n\
    return update_extra_cfg(ctx, &extra_cfg);\n\
  }\n\
  // Used to mock the argv",
        1,
    ),
];

fn main() {
    let manifest =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let tarball = manifest.join(TARBALL);
    println!("cargo:rerun-if-changed={}", tarball.display());
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed={CACHE_ENV}");

    let cache = match env::var_os(CACHE_ENV) {
        Some(dir) if dir == "off" || dir.is_empty() => None,
        Some(dir) => Some(PathBuf::from(dir)),
        None => Some(manifest.join("..").join("..").join(".cache").join("libaom")),
    };
    let cached = cache.map(|dir| dir.join(cache_key()));
    let installed = match &cached {
        Some(dir) if dir.join("lib").join("libaom.a").is_file() => dir.clone(),
        _ => {
            let built = build(&tarball, &out);
            match &cached {
                Some(dir) => keep(&built, dir),
                None => built,
            }
        }
    };

    println!("cargo:include={}", installed.join("include").display());
    println!(
        "cargo:pkgconfig={}",
        installed.join("lib").join("pkgconfig").display()
    );
    println!(
        "cargo:rustc-link-search=native={}",
        installed.join("lib").display()
    );
    println!("cargo:rustc-link-lib=static=aom");
}

/// Unpacks and compiles libaom under `out`; the install prefix (`include/`, `lib/`).
fn build(tarball: &Path, out: &Path) -> PathBuf {
    let source = out.join(SOURCE_DIR);
    if !source.join("CMakeLists.txt").exists() {
        let file = File::open(tarball)
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", tarball.display()));
        tar::Archive::new(flate2::read::GzDecoder::new(file))
            .unpack(out)
            .unwrap_or_else(|e| panic!("cannot unpack {}: {e}", tarball.display()));
    }
    patch(&source);
    cmake::Config::new(&source)
        .profile("Release")
        .define("ENABLE_DOCS", "0")
        .define("ENABLE_EXAMPLES", "0")
        .define("ENABLE_TESTDATA", "0")
        .define("ENABLE_TESTS", "0")
        .define("ENABLE_TOOLS", "0")
        .define("CMAKE_INSTALL_LIBDIR", "lib")
        .build()
}

/// Applies [`SOURCE_EDITS`] to the unpacked source, once: a marker file records that they
/// were made, so a rebuild in the same `OUT_DIR` does not look for anchors already replaced.
fn patch(source: &Path) {
    let marker = source.join(".edgethumb-edits-applied");
    if marker.exists() {
        return;
    }
    for (file, anchor, replacement, occurrences) in SOURCE_EDITS {
        let path = source.join(file);
        let text = fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        let found = text.matches(anchor).count();
        assert_eq!(
            found, *occurrences,
            "libaom source edit: expected {occurrences} of {anchor:?} in {file}, found {found}"
        );
        fs::write(&path, text.replace(anchor, replacement))
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    }
    fs::write(&marker, "").unwrap_or_else(|e| panic!("cannot write {}: {e}", marker.display()));
}

/// The cache entry's name: the libaom version, the target, and a hash of the C compiler and
/// its flags as the `cc` crate sees them (what `cmake` hands to CMake), so a zig
/// cross-build for glibc 2.17 never picks up a host gcc build, or the reverse.
fn cache_key() -> String {
    let target = env::var("TARGET").expect("cargo sets TARGET");
    // No cargo warnings: cc probes the compiler's family, and zig (the edge's glibc 2.17
    // build) answers the probe with a harmless "invalid target triple" error.
    let compiler = cc::Build::new().cargo_warnings(false).get_compiler();
    let mut hasher = DefaultHasher::new();
    compiler.path().hash(&mut hasher);
    compiler.args().hash(&mut hasher);
    SOURCE_EDITS.hash(&mut hasher);
    for var in ["CMAKE_TOOLCHAIN_FILE", "CMAKE_GENERATOR"] {
        env::var_os(var).hash(&mut hasher);
    }
    format!("{SOURCE_DIR}-{target}-{:016x}", hasher.finish())
}

/// Copies the install prefix `built` to the cache entry `entry` (through a temporary name
/// and a rename, so a concurrent build never sees half an entry); the entry to link.
fn keep(built: &Path, entry: &Path) -> PathBuf {
    let mut staging_name = entry.file_name().unwrap_or_default().to_os_string();
    staging_name.push(format!(".tmp-{}", std::process::id()));
    let staging = entry.with_file_name(staging_name);
    let copied = entry
        .parent()
        .map_or(Ok(()), fs::create_dir_all)
        .and_then(|()| copy_tree(&built.join("include"), &staging.join("include")))
        .and_then(|()| copy_tree(&built.join("lib"), &staging.join("lib")))
        .and_then(|()| match fs::rename(&staging, entry) {
            // Another build finished the same entry first: theirs is as good as ours.
            Err(_) if entry.join("lib").join("libaom.a").is_file() => fs::remove_dir_all(&staging),
            other => other,
        });
    match copied {
        Ok(()) => entry.to_path_buf(),
        Err(e) => {
            println!(
                "cargo:warning=libaom not cached in {} ({e}); using this build's own copy",
                entry.display()
            );
            let _ = fs::remove_dir_all(&staging);
            built.to_path_buf()
        }
    }
}

fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    fs::create_dir_all(to)?;
    for entry in fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_tree(&entry.path(), &target)?;
        } else {
            fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}
