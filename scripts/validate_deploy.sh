#!/usr/bin/env bash
# Offline validation of the deployment (docs/deploy.md), run by scripts/test.sh and CI:
#   1. cfn-lint deploy/template.yaml
#   2. sam validate --lint -t deploy/template.yaml
#   3. scripts/check_deploy.py: the Lambda@Edge and SQS rules the linters miss (plus
#      target/lambda/edge.zip and its edgethumb.json when the bundle has been built)
#   4. the tests of steps 3 and of scripts/edge_config.py (pytest deploy/tests)
# The tools come pinned from PyPI (deploy/requirements.txt) into .venv-deploy, reinstalled only
# when the requirements or the Python version change (a stamp file in the venv).
# No AWS account is touched: the region and credentials below are dummies, and nothing here
# opens a network connection.
#
#   scripts/validate_deploy.sh           install if needed, then validate
#   scripts/validate_deploy.sh --setup   install only
set -euo pipefail

DEPLOY_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEPLOY_VENV="${EDGETHUMB_DEPLOY_VENV:-$DEPLOY_ROOT/.venv-deploy}"
DEPLOY_REQUIREMENTS="$DEPLOY_ROOT/deploy/requirements.txt"

ensure_deploy_venv() {
  local python="${PYTHON:-python3}" stamp="$DEPLOY_VENV/.edgethumb-deploy-stamp" want start
  want="$(cat "$DEPLOY_REQUIREMENTS" && "$python" -c 'import sys; print(sys.version)')"
  want="$(printf '%s' "$want" | sha256sum | cut -d' ' -f1)"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$DEPLOY_VENV/bin/sam" ]; then
    return 0
  fi
  echo "validate_deploy: installing deploy tools into $DEPLOY_VENV" >&2
  start=$SECONDS
  rm -rf "$DEPLOY_VENV"
  "$python" -m venv "$DEPLOY_VENV"
  "$DEPLOY_VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$DEPLOY_REQUIREMENTS"
  echo "$want" >"$stamp"
  echo "validate_deploy: installed in $((SECONDS - start)) s" >&2
}

validate_deploy() {
  ensure_deploy_venv
  local bin="$DEPLOY_VENV/bin" template="$DEPLOY_ROOT/deploy/template.yaml"
  # Dummy region and credentials: sam and boto3 want them, nothing uses them. The SAM CLI's
  # settings (and its telemetry switch) stay inside the project instead of ~/.aws-sam.
  (
    export AWS_DEFAULT_REGION=us-east-1 AWS_REGION=us-east-1
    export AWS_ACCESS_KEY_ID=validate-offline AWS_SECRET_ACCESS_KEY=validate-offline
    unset AWS_PROFILE AWS_SESSION_TOKEN
    export AWS_EC2_METADATA_DISABLED=true SAM_CLI_TELEMETRY=0
    export __SAM_CLI_APP_DIR="$DEPLOY_ROOT/.cache/sam-cli"
    export PYTHONDONTWRITEBYTECODE=1
    mkdir -p "$__SAM_CLI_APP_DIR"
    # The SAM CLI asks PyPI for a newer version once a week; mark it as just checked.
    "$bin/python" - "$__SAM_CLI_APP_DIR/metadata.json" <<'PY'
import json, sys, time
path = sys.argv[1]
try:
    with open(path) as f:
        meta = json.load(f)
except (OSError, ValueError):
    meta = {}
meta["lastVersionCheck"] = time.time()
with open(path, "w") as f:
    json.dump(meta, f)
PY
    cd "$DEPLOY_ROOT"
    echo "--- cfn-lint deploy/template.yaml"
    "$bin/cfn-lint" "$template"
    echo "cfn-lint: OK"
    echo "--- cfn-lint deploy/edge-alarms.yaml"
    "$bin/cfn-lint" "$DEPLOY_ROOT/deploy/edge-alarms.yaml"
    echo "cfn-lint: OK"
    echo "--- sam validate --lint"
    "$bin/sam" validate --lint --template-file "$template"
    echo "--- scripts/check_deploy.py"
    "$bin/python" scripts/check_deploy.py "$template"
    echo "--- pytest deploy/tests"
    "$bin/python" -m pytest -q -p no:cacheprovider deploy/tests
  )
}

if [ -z "${EDGETHUMB_SOURCE_ONLY:-}" ]; then
  case "${1:-}" in
  --setup) ensure_deploy_venv ;;
  "") validate_deploy ;;
  *) echo "usage: $0 [--setup]" >&2; exit 2 ;;
  esac
fi
