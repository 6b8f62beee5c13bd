#!/usr/bin/env bash
# The edge bundle end to end (a step of scripts/test.sh): package edge.zip with zig, unzip it,
# and run tests/edge_node.rs, in which real node imports the bundle and handles CloudFront
# events against moto (EDGETHUMB_TEST_ENDPOINT, started by scripts/test.sh).
#
# The zig release build takes minutes the first time (the .venv tools and target/ are
# reused after that). EDGETHUMB_SKIP_EDGE_E2E=1 skips this step, loudly; nothing else does.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

if [ "${EDGETHUMB_SKIP_EDGE_E2E:-0}" = 1 ]; then
  printf '\n\033[1;33m%s\033[0m\n\n' \
    "!!! SKIPPED: edge bundle end-to-end tests (EDGETHUMB_SKIP_EDGE_E2E=1). The packaged Lambda@Edge addon is NOT tested. !!!" >&2
  exit 0
fi
[ -n "${EDGETHUMB_TEST_ENDPOINT:-}" ] ||
  { echo "test_edge: EDGETHUMB_TEST_ENDPOINT is not set (run scripts/test.sh, which starts moto)" >&2; exit 1; }
command -v node >/dev/null || { echo "test_edge: node is required (Node.js >= 20)" >&2; exit 1; }

EDGETHUMB_PACKAGE_ONLY=edge bash "$ROOT/scripts/package.sh"

bundle="$ROOT/target/lambda/edge-e2e"
rm -rf "$bundle"
python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])' \
  "$ROOT/target/lambda/edge.zip" "$bundle"

cd "$ROOT"
# --workspace, like scripts/test.sh's cargo test: cargo unifies dependency features over the
# selected packages, and without it (root package only: serde without `rc`, tracing without
# `log`, ...) most dependencies would be rebuilt, minutes on a cold target/. With it, the test
# binary from that run is reused as is.
EDGETHUMB_EDGE_BUNDLE="$bundle" cargo test --workspace --test edge_node -- --include-ignored
