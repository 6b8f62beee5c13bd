#!/usr/bin/env bash
# The chaos and load runs of docs/reliability.md ("Chaos runs", "Load on serve").
#
#   bash scripts/chaos/run.sh short   # seeded short variants, a step of scripts/test.sh (~3 min)
#   bash scripts/chaos/run.sh full    # 2,000 jobs/misses each and 60 s of load (~30-40 min)
#   bash scripts/chaos/run.sh full worker   # one run: edge | worker | sigkill | load
#
# Needs: .venv with moto, boto3 and pillow (scripts/test.sh makes it), the CLI binary
# (cargo build --workspace --bin edgethumb; EDGETHUMB_BIN overrides), target/lambda/edge.zip
# (EDGETHUMB_PACKAGE_ONLY=edge bash scripts/package.sh; EDGETHUMB_EDGE_BUNDLE overrides),
# node and wrk. Each run starts its own moto_server and fault proxy on free 127.0.0.1 ports,
# is bounded in time and stops everything it started. Results: one JSON object per run on
# stdout; logs under CHAOS_OUT (default .cache/chaos/<mode>).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PY="${EDGETHUMB_PYTHON:-$ROOT/.venv/bin/python}"
mode="${1:-short}"
only="${2:-all}"
out="${CHAOS_OUT:-$ROOT/.cache/chaos/$mode}"
SEED="${CHAOS_SEED:-18}"
case "$mode" in
  short) flags=(--short) ;;
  full) flags=() ;;
  *) echo "usage: run.sh short|full [edge|worker|sigkill|load]" >&2; exit 2 ;;
esac
rm -rf "$out"
mkdir -p "$out"
cd "$ROOT/scripts/chaos"

failed=()
run() { # NAME command...
  local name=$1 start=$SECONDS
  shift
  [ "$only" = all ] || [ "$only" = "$name" ] || return 0
  echo "chaos: run $name ($mode)" >&2
  if "$@" --workdir "$out/$name" >"$out/$name.json"; then
    echo "chaos: $name passed in $((SECONDS - start)) s" >&2
  else
    echo "chaos: $name FAILED in $((SECONDS - start)) s (logs: $out/$name)" >&2
    failed+=("$name")
  fi
  cat "$out/$name.json"
}

run worker "$PY" chaos_worker.py --seed "$SEED" --deadline 3000 "${flags[@]}"
run sigkill "$PY" chaos_worker.py --seed "$((SEED + 1))" --sigkill 2 --deadline 3000 "${flags[@]}"
run edge "$PY" chaos_edge.py --seed "$SEED" "${flags[@]}"
run load "$PY" load_serve.py --seed "$SEED" "${flags[@]}"

if [ "${#failed[@]}" -gt 0 ]; then
  echo "chaos: FAILED: ${failed[*]}" >&2
  exit 1
fi
