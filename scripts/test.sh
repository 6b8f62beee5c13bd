#!/usr/bin/env bash
# The project's test command (README, .ci/run): every test, against a real S3/SQS server.
#
#   bash scripts/test.sh [extra cargo test args...]     e.g. bash scripts/test.sh -- --nocapture
#
# 1. setup_venv       .venv (git-ignored) with pinned moto; reused while the pins and the
#                     Python version are unchanged (stamp file), rebuilt otherwise.
# 2. start_moto       moto_server on 127.0.0.1 on a free port, waited for (bounded), killed on
#                     exit however the tests end. Fails loudly if it cannot start.
# 3. lint             cargo fmt --all -- --check; cargo clippy --workspace --all-targets
#                     -D warnings (workspace lints: no unwrap/expect outside tests, every
#                     unsafe block documented); clippy again for the two Lambda crates alone,
#                     whose core features differ from the workspace's (edge, worker, no local).
# 3. run_cargo_tests  cargo test --workspace with EDGETHUMB_TEST_ENDPOINT and dummy AWS
#                     credentials exported; extra arguments are passed through.
# 4. run_edge_e2e     scripts/test_edge.sh: package edge.zip (zig, glibc 2.17), load it in
#                     real node against moto (tests/edge_node.rs); EDGETHUMB_SKIP_EDGE_E2E=1
#                     skips it, loudly. The zig build itself starts in the background right
#                     after step 1, at nice 10 (start_edge_prebuild), so it overlaps steps 2-3.
# 5. validate_deploy  offline checks of deploy/template.yaml (cfn-lint, sam validate --lint,
#                     scripts/check_deploy.py) and pytest deploy/tests, with their own pinned
#                     tools in .venv-deploy (scripts/validate_deploy.sh).
# 6. run_faultproxy_tests  pytest tests/faultproxy: scripts/faultproxy.py (the fault-injecting
#                     proxy of docs/reliability.md) against its own moto_server; about 10 s.
# 7. run_chaos        scripts/chaos/run.sh short: the seeded short chaos runs (worker with
#                     10 % faults and poison messages, the same with SIGKILLs, misses through
#                     the packaged edge bundle under node) and a 5 s wrk load on serve; each
#                     with its own moto_server and fault proxy; about 3 minutes.
#                     EDGETHUMB_SKIP_CHAOS=1 skips it, loudly.
#
# Each step's wall time is logged as it ends, and all of them in a summary on exit (also when
# a step fails). With CI=true, CARGO_INCREMENTAL defaults to 0: a cold CI build compiles each
# workspace crate once, so incremental state is pure overhead there.
#
# Adding a step: write a function and add `step NAME function` to main() below (keep steps
# independent, so a failing step names itself). Nothing is installed outside the repository.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
# Pinned: the tests rely on moto's wire behaviour (SQS JSON protocol, /moto-api/reset, S3 event
# notifications to SQS, CloudFront CreateInvalidation for aws/tests/refresh_moto.rs).
# pytest runs tests/faultproxy (scripts/faultproxy.py). pillow is the chaos runs' independent
# decoder of the variants (scripts/chaos/).
PY_REQUIREMENTS=("moto[s3,sqs,cloudfront]==5.2.5" "flask==3.1.3" "flask-cors==6.0.5" "pytest==9.2.0" "pillow==13.0.0")
MOTO_LOG="$ROOT/.cache/moto_server.log"
MOTO_START_TIMEOUT_S="${EDGETHUMB_MOTO_START_TIMEOUT_S:-60}"
MOTO_PID=""

log() { echo "test.sh: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# Step timing: `step NAME command...` runs the command (set -e still applies inside it) and
# records its wall time; on_exit prints the table, naming a step that did not finish.
STEP_NAME=""
STEP_START=0
STEP_TIMES=""
step() {
  STEP_NAME=$1 STEP_START=$SECONDS
  shift
  log "step $STEP_NAME"
  "$@"
  log "step $STEP_NAME done in $((SECONDS - STEP_START)) s"
  STEP_TIMES+="$(printf '  %-18s %6d s' "$STEP_NAME" $((SECONDS - STEP_START)))"$'\n'
  STEP_NAME=""
}

on_exit() {
  local rc=$?
  stop_edge_prebuild
  stop_moto
  if [ -n "$STEP_NAME" ]; then
    STEP_TIMES+="$(printf '  %-18s %6d s  (did not finish, exit %d)' "$STEP_NAME" $((SECONDS - STEP_START)) "$rc")"$'\n'
  fi
  if [ -n "$STEP_TIMES" ]; then
    log "step wall times (total $SECONDS s):"
    printf '%s' "$STEP_TIMES" >&2
  fi
  exit "$rc"
}

setup_venv() {
  local python="${PYTHON:-python3}" stamp="$VENV/.edgethumb-test-stamp" want start
  command -v "$python" >/dev/null || die "$python not found (needs Python 3 with venv)"
  want="$(printf '%s\n' "${PY_REQUIREMENTS[@]}"; "$python" -c 'import sys; print(sys.version)')"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$VENV/bin/moto_server" ]; then
    log "reusing $VENV"
    return 0
  fi
  start=$SECONDS
  log "creating $VENV with ${PY_REQUIREMENTS[*]}"
  rm -rf "$VENV"
  "$python" -m venv "$VENV" || die "python3 -m venv failed (Debian: apt-get install python3-venv)"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "${PY_REQUIREMENTS[@]}" \
    || die "pip install failed"
  printf '%s' "$want" >"$stamp"
  log "venv ready in $((SECONDS - start)) s"
}

free_port() {
  "$VENV/bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

stop_moto() {
  if [ -n "$MOTO_PID" ] && kill -0 "$MOTO_PID" 2>/dev/null; then
    kill "$MOTO_PID" 2>/dev/null || true
    # Give it a moment to exit cleanly, then make sure.
    for _ in 1 2 3 4 5 6 7 8 9 10; do
      kill -0 "$MOTO_PID" 2>/dev/null || break
      sleep 0.2
    done
    kill -9 "$MOTO_PID" 2>/dev/null || true
    wait "$MOTO_PID" 2>/dev/null || true
  fi
  MOTO_PID=""
}

# Answers 200 on the moto management API once the server is up.
moto_answers() {
  "$VENV/bin/python" - "$1" <<'PY' >/dev/null 2>&1
import sys, urllib.request
urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/moto-api/", timeout=2).read()
PY
}

start_moto() {
  local attempt port deadline
  mkdir -p "$(dirname "$MOTO_LOG")"
  # A free port can be taken between probing and binding: retry with a new one.
  for attempt in 1 2 3; do
    port="$(free_port)"
    "$VENV/bin/moto_server" -H 127.0.0.1 -p "$port" >"$MOTO_LOG" 2>&1 &
    MOTO_PID=$!
    deadline=$((SECONDS + MOTO_START_TIMEOUT_S))
    while [ "$SECONDS" -lt "$deadline" ]; do
      if ! kill -0 "$MOTO_PID" 2>/dev/null; then
        log "moto_server exited during start-up (attempt $attempt):"
        tail -n 20 "$MOTO_LOG" >&2 || true
        MOTO_PID=""
        break
      fi
      if moto_answers "$port"; then
        export EDGETHUMB_TEST_ENDPOINT="http://127.0.0.1:$port"
        log "moto_server $MOTO_PID listening on $EDGETHUMB_TEST_ENDPOINT (log: $MOTO_LOG)"
        return 0
      fi
      sleep 0.2
    done
    stop_moto
  done
  die "moto_server could not start in 3 attempts (each waits up to ${MOTO_START_TIMEOUT_S} s; see $MOTO_LOG)"
}

# ---- lint (DEVELOPERS.md: fmt and clippy clean; the lints themselves are in Cargo.toml) ----
run_lint() {
  cd "$ROOT"
  cargo fmt --all -- --check || die "cargo fmt: the tree is not formatted (run cargo fmt --all)"
  cargo clippy --workspace --all-targets -- -D warnings || die "cargo clippy found problems"
  # The Lambda crates build the core with their own features only (edge, worker; no local,
  # no CLI): code behind a cfg they switch off must stay warning-free too.
  cargo clippy -p edgethumb-edge -p edgethumb-worker -- -D warnings \
    || die "cargo clippy (Lambda entry points' features) found problems"
}

run_cargo_tests() {
  # Dummy credentials and region: moto accepts anything, and nothing may reach real AWS.
  (
    export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing
    export AWS_REGION=us-east-1 AWS_DEFAULT_REGION=us-east-1
    export AWS_EC2_METADATA_DISABLED=true
    unset AWS_PROFILE AWS_SESSION_TOKEN AWS_ENDPOINT_URL
    cd "$ROOT"
    cargo test --workspace "$@"
  )
}

# ---- edge bundle prebuild (overlaps the zig release build with the test build and run) ----
# package.sh's zig release build (minutes on a cold target/) needs nothing from the test build,
# and it uses other lock directories (target/release, target/x86_64-unknown-linux-gnu) than
# cargo test (target/debug). Started in the background at low priority before cargo test, it
# takes the CPU time that rustc's serial stretches and the test run (waiting on moto, node,
# Chromium) leave idle. run_edge_e2e waits for it; scripts/test_edge.sh then runs package.sh
# again, which finds the build fresh, and reports a build error itself if there was one.
# EDGETHUMB_EDGE_PREBUILD=0 turns this off (package.sh then runs only in run_edge_e2e).
PREBUILD_PID=""
PREBUILD_LOG="$ROOT/.cache/package-prebuild.log"

start_edge_prebuild() {
  [ "${EDGETHUMB_SKIP_EDGE_E2E:-0}" = 1 ] && return 0
  [ "${EDGETHUMB_EDGE_PREBUILD:-1}" = 0 ] && { log "EDGETHUMB_EDGE_PREBUILD=0: no prebuild"; return 0; }
  mkdir -p "$(dirname "$PREBUILD_LOG")"
  # Its own process group (set -m), so on_exit can stop cargo and rustc with it. Not setsid:
  # a new session is a new scheduler autogroup, in which nice 10 would no longer yield to
  # the test build (or to anything else running on the machine).
  set -m
  EDGETHUMB_PACKAGE_ONLY=edge nice -n 10 bash "$ROOT/scripts/package.sh" \
    </dev/null >"$PREBUILD_LOG" 2>&1 &
  PREBUILD_PID=$!
  set +m
  log "edge bundle prebuild started in the background (nice 10; log: $PREBUILD_LOG)"
}

wait_edge_prebuild() {
  [ -n "$PREBUILD_PID" ] || return 0
  local rc=0 start=$SECONDS
  wait "$PREBUILD_PID" || rc=$?
  PREBUILD_PID=""
  if [ "$rc" = 0 ]; then
    log "edge bundle prebuild done (waited $((SECONDS - start)) s for it)"
  else
    log "edge bundle prebuild failed (exit $rc, log: $PREBUILD_LOG); package.sh runs again below"
  fi
}

stop_edge_prebuild() {
  [ -n "$PREBUILD_PID" ] || return 0
  kill -TERM -- "-$PREBUILD_PID" 2>/dev/null || kill -TERM "$PREBUILD_PID" 2>/dev/null || true
  wait "$PREBUILD_PID" 2>/dev/null || true
  PREBUILD_PID=""
}

# ---- edge bundle end to end (owner: edge packaging; see docs/edge.md) ----
# Packages edge.zip with zig (minutes on a cold target/), then real node loads it against
# moto. EDGETHUMB_SKIP_EDGE_E2E=1 skips it loudly.
run_edge_e2e() {
  wait_edge_prebuild
  bash "$ROOT/scripts/test_edge.sh"
}

# ---- fault-injecting proxy (see docs/reliability.md) ----
# Starts its own moto_server and proxies on free 127.0.0.1 ports; needs only the .venv.
run_faultproxy_tests() {
  "$VENV/bin/python" -m pytest "$ROOT/tests/faultproxy" -q -p no:cacheprovider
}

# ---- chaos and load runs, short seeded variants (see docs/reliability.md) ----
# Needs the CLI binary of the cargo-test step, the edge bundle of the edge-e2e step, node, wrk.
run_chaos() {
  if [ "${EDGETHUMB_SKIP_CHAOS:-0}" = 1 ]; then
    log "!!! SKIPPED: chaos runs (EDGETHUMB_SKIP_CHAOS=1) !!!"
    return 0
  fi
  # The CLI `cargo test --workspace` just built (as validate_deploy: a `cargo build` would
  # resolve features without the dev-dependencies and rebuild the AWS SDK and more, minutes).
  local bin="${EDGETHUMB_BIN:-$(cli_binary)}"
  if [ -z "$bin" ]; then
    (cd "$ROOT" && cargo build --workspace --bin edgethumb)
    bin="$(cli_binary)"
  fi
  EDGETHUMB_BIN="$bin" CHAOS_OUT="$ROOT/.cache/chaos/short" \
    bash "$ROOT/scripts/chaos/run.sh" short >/dev/null
}

# The `edgethumb` binary in this checkout's target directory, or nothing.
cli_binary() {
  local target
  target="$(cd "$ROOT" && cargo metadata --format-version 1 --no-deps |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')"
  if [ -x "$target/debug/edgethumb" ]; then echo "$target/debug/edgethumb"; fi
}

# ---- deployment (owner: deploy; see docs/deploy.md) ----
validate_deploy() {
  # The edge-config checks run the `edgethumb` CLI: the one `cargo test --workspace` just built
  # (a `cargo build` of it would resolve features without the dev-dependencies and rebuild
  # many crates).
  local bin="${EDGETHUMB_BIN:-$(cli_binary)}"
  if [ -n "$bin" ]; then
    EDGETHUMB_BIN="$bin" bash "$ROOT/scripts/validate_deploy.sh"
  else
    bash "$ROOT/scripts/validate_deploy.sh"
  fi
}

# ---- serve page in headless Chromium (owner: serve; see docs/serve.md) ----
# Debian's chromium (apt, when missing and run as root) and playwright-core (npm ci, cached in
# the git-ignored cli/tests/browser/node_modules until package-lock.json changes). Exports
# EDGETHUMB_BROWSER_TEST=required so tests/serve_e2e.rs fails instead of skipping.
setup_browser() {
  local dir="$ROOT/cli/tests/browser" stamp
  if [ ! -x /usr/bin/chromium ]; then
    [ "$(id -u)" = 0 ] || die "chromium is missing: apt-get install chromium (needs root)"
    log "installing chromium (apt)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q chromium >/dev/null 2>&1 \
      || { apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null; } \
      || die "apt-get install chromium failed"
  fi
  command -v npm >/dev/null || die "npm is missing (Node.js >= 20 with npm)"
  stamp="$dir/node_modules/.edgethumb-lock-stamp"
  if [ -f "$stamp" ] && cmp -s "$stamp" "$dir/package-lock.json"; then
    log "reusing cli/tests/browser/node_modules"
  else
    log "npm ci in tests/browser"
    (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error) || die "npm ci in tests/browser failed"
    cp "$dir/package-lock.json" "$stamp"
  fi
  export EDGETHUMB_BROWSER_TEST=required
}

# mozjpeg-sys silently builds without SIMD when nasm is missing (1.5-3x slower JPEG), and
# the tests would still pass: install it up front so every build is the real one.
# The viewer-request CloudFront Function under node's test runner (under a second; the
# differential test against the Rust rules runs in the cargo step).
run_viewer_js_tests() {
  node --test tests/viewer/
}

# wrk is the load generator of the chaos step's load run on serve. cmake builds libaom and
# libavif (AVIF out) from their vendored sources; libaom's SIMD needs nasm too.
setup_system_packages() {
  local missing=()
  command -v nasm >/dev/null || missing+=(nasm)
  command -v cmake >/dev/null || missing+=(cmake)
  command -v wrk >/dev/null || missing+=(wrk)
  [ "${#missing[@]}" = 0 ] && return 0
  [ "$(id -u)" = 0 ] || die "${missing[*]} missing: apt-get install ${missing[*]} (needs root)"
  log "installing ${missing[*]} (apt)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q "${missing[@]}" >/dev/null 2>&1 \
    || { apt-get update -q >/dev/null && apt-get install -y -q "${missing[@]}" >/dev/null; } \
    || die "apt-get install ${missing[*]} failed"
}

main() {
  cd "$ROOT"
  trap on_exit EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  if [ "${CI:-}" = true ] && [ -z "${CARGO_INCREMENTAL:-}" ]; then
    export CARGO_INCREMENTAL=0
    log "CI=true: CARGO_INCREMENTAL=0 (cold build, nothing to reuse)"
  fi
  step system-packages setup_system_packages
  step venv setup_venv
  step edge-prebuild start_edge_prebuild
  step moto start_moto
  step browser setup_browser
  step lint run_lint
  step viewer-js run_viewer_js_tests
  step cargo-test run_cargo_tests "$@"
  step edge-e2e run_edge_e2e
  step deploy validate_deploy
  step faultproxy run_faultproxy_tests
  step chaos run_chaos
}

main "$@"
