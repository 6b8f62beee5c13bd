#!/usr/bin/env bash
# Build the Lambda bundles, reproducibly:
#   target/lambda/edge.zip    index.mjs + edgethumb.node (napi-rs addon, glibc 2.17) + edgethumb.json
#   target/lambda/worker.zip  bootstrap (provided.al2023)
#
#   scripts/package.sh [EDGE_CONFIG_JSON]
#
# EDGE_CONFIG_JSON defaults to edge/js/edgethumb.json.example (placeholder queue: deploy.sh
# bakes the stack's real values in later). Both are built with `cargo zigbuild` for
# x86_64-unknown-linux-gnu.2.17 (zig and cargo-zigbuild pinned in .venv from PyPI), so they
# load on Amazon Linux 2023 whatever glibc the build host has. Stripped; zip entries sorted,
# dated 1980-01-01, fixed modes, so the same sources give the same bytes (and so the same
# Lambda version). Fails if the addon needs a glibc symbol newer than 2.17, if it does not
# load under node with the config, or if edge.zip is over Lambda@Edge's 50 MB.
#
# Environment: EDGETHUMB_PACKAGE_ONLY=edge|worker builds one bundle.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="$ROOT/target/lambda"
TARGET=x86_64-unknown-linux-gnu
GLIBC=2.17
EDGE_ZIP_LIMIT=$((50 * 1024 * 1024))
# cargo-zigbuild 0.24 with zig 0.15.2: the newest pair that builds the mozjpeg/libwebp/lcms2
# C code and links for glibc 2.17 here.
CARGO_ZIGBUILD_PIN="cargo-zigbuild==0.24.0"
ZIGLANG_PIN="ziglang==0.15.2"

say() { printf '\033[1mpackage:\033[0m %s\n' "$*" >&2; }
die() { printf '\033[1;31mpackage: %s\033[0m\n' "$*" >&2; exit 1; }

config="${1:-$ROOT/edge/js/edgethumb.json.example}"
[ -f "$config" ] || die "edge config $config not found"
only="${EDGETHUMB_PACKAGE_ONLY:-}"

# Pinned build tools in the project's venv (created here if scripts/test.sh has not yet).
ensure_tools() {
  local venv="$ROOT/.venv"
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv" || die "cannot create $venv (apt-get install python3-venv)"
  if ! "$venv/bin/pip" show cargo-zigbuild ziglang 2>/dev/null |
    awk '/^Name:/{n=tolower($2)} /^Version:/{print n"=="$2}' | sort | tr '\n' ' ' |
    grep -qx "${CARGO_ZIGBUILD_PIN} ${ZIGLANG_PIN} "; then
    say "installing $CARGO_ZIGBUILD_PIN $ZIGLANG_PIN into .venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "$CARGO_ZIGBUILD_PIN" "$ZIGLANG_PIN"
  fi
  # cargo-zigbuild runs zig as `python3 -m ziglang` when no `zig` is on PATH: the venv's.
  export PATH="$venv/bin:$PATH"
  rustup target list --installed 2>/dev/null | grep -qx "$TARGET" || rustup target add "$TARGET"
}

# Reproducible zip: python's zipfile, sorted names, fixed date and modes, max deflate.
make_zip() { # OUT.zip NAME=PATH[:MODE] ...
  python3 - "$@" <<'PY'
import sys, zipfile
out, entries = sys.argv[1], sorted(sys.argv[2:])
with zipfile.ZipFile(out + ".tmp", "w") as z:
    for entry in entries:
        name, rest = entry.split("=", 1)
        path, _, mode = rest.partition(":")
        info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
        info.create_system = 3  # unix, so the mode below is honoured
        info.external_attr = (0o100000 | int(mode or "644", 8)) << 16
        info.compress_type = zipfile.ZIP_DEFLATED
        with open(path, "rb") as f:
            z.writestr(info, f.read(), compresslevel=9)
import os
os.replace(out + ".tmp", out)
PY
}

zigbuild() { # cargo args...
  # Strip here rather than in the shared release profile: host builds keep their symbols.
  # -mevex512: zig pins the baseline CPU's features, evex512 off, so libdeflate's AVX-512
  # functions (enabled per function with target attributes, chosen at run time by CPUID)
  # would not compile; it enables nothing outside those functions.
  CARGO_PROFILE_RELEASE_STRIP=symbols \
    CFLAGS_x86_64_unknown_linux_gnu="${CFLAGS_x86_64_unknown_linux_gnu:-} -mevex512" \
    cargo zigbuild --release --target "$TARGET.$GLIBC" "$@"
}

size_of() { stat -c %s "$1"; }
human() { numfmt --to=iec-i --suffix=B "$1" 2>/dev/null || echo "$1 bytes"; }

ensure_tools
mkdir -p "$OUT"
# Where cargo puts the build (CARGO_TARGET_DIR lets several checkouts share one dependency
# cache); the packaged zips always go under this checkout's target/lambda.
release="${CARGO_TARGET_DIR:-$ROOT/target}/$TARGET/release"
started=$(date +%s)

if [ "$only" != worker ]; then
  say "building the edge addon (cargo zigbuild --target $TARGET.$GLIBC -p edgethumb-edge --lib)"
  t0=$(date +%s)
  (cd "$ROOT" && zigbuild -p edgethumb-edge --lib)
  say "edge addon built in $(($(date +%s) - t0)) s"
  addon="$release/libedgethumb_edge.so"
  [ -f "$addon" ] || die "$addon was not produced"
  python3 "$ROOT/scripts/elf_glibc.py" --max "$GLIBC" "$addon" ||
    die "the addon needs a glibc newer than $GLIBC; it would not load on Lambda@Edge"

  stage="$OUT/edge"
  rm -rf "$stage" && mkdir -p "$stage"
  cp "$ROOT/edge/js/index.mjs" "$stage/index.mjs"
  cp "$addon" "$stage/edgethumb.node"
  cp "$config" "$stage/edgethumb.json"
  # The bundle must load under node with its config (init() runs at import).
  node --input-type=module -e "await import(process.argv[1]); console.error('package: edge bundle loads under node ' + process.version)" \
    "$stage/index.mjs" >/dev/null || die "the edge bundle does not load under node (see above)"
  make_zip "$OUT/edge.zip" \
    "index.mjs=$stage/index.mjs" "edgethumb.node=$stage/edgethumb.node:755" "edgethumb.json=$stage/edgethumb.json"
fi

if [ "$only" != edge ]; then
  say "building the worker (cargo zigbuild --target $TARGET.$GLIBC -p edgethumb-worker)"
  t0=$(date +%s)
  (cd "$ROOT" && zigbuild -p edgethumb-worker --bin bootstrap)
  say "worker built in $(($(date +%s) - t0)) s"
  [ -f "$release/bootstrap" ] || die "$release/bootstrap was not produced"
  python3 "$ROOT/scripts/elf_glibc.py" --max "$GLIBC" "$release/bootstrap" ||
    die "the worker needs a glibc newer than $GLIBC"
  make_zip "$OUT/worker.zip" "bootstrap=$release/bootstrap:755"
fi

say "done in $(($(date +%s) - started)) s"
for z in edge worker; do
  f="$OUT/$z.zip"
  [ -f "$f" ] || continue
  printf '  %-34s %10s bytes (%s)  sha256 %s\n' "target/lambda/$z.zip" "$(size_of "$f")" \
    "$(human "$(size_of "$f")")" "$(sha256sum "$f" | cut -c1-16)" >&2
done
if [ "$only" != worker ] && [ "$(size_of "$OUT/edge.zip")" -gt "$EDGE_ZIP_LIMIT" ]; then
  die "edge.zip is $(size_of "$OUT/edge.zip") bytes, over Lambda@Edge's limit of $EDGE_ZIP_LIMIT"
fi
