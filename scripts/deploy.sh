#!/usr/bin/env bash
# Deploy edgethumb to AWS: one SAM stack in us-east-1 (docs/deploy.md).
#
#   scripts/deploy.sh [--stack-name NAME] [--guided] [--skip-package] [-- SAM_DEPLOY_ARGS...]
#   scripts/deploy.sh --rollback-edge VERSION_ARN [--stack-name NAME]
#   scripts/deploy.sh --outputs [--stack-name NAME]
#
# Deploy does, in order:
#   1. edgethumb.json from the stack's outputs (`edgethumb edge-config generate`, the edge's own
#      EdgeConfig), if the stack exists
#   2. scripts/package.sh [edgethumb.json] -> target/lambda/edge.zip (config baked in, loaded
#      under node by package.sh), target/lambda/worker.zip; without a stack yet, package.sh's
#      placeholder config
#   3. offline checks: cfn-lint, scripts/check_deploy.py (template + bundle + baked config)
#   4. sam deploy                    -> stack create/update, a new edge version if edge.zip changed
#   5. edgethumb.json from the outputs as they are now; if it differs from the baked one (first
#      deploy, or a queue was replaced): rebuild edge.zip with it and sam deploy again, which
#      publishes a new numbered edge version and re-associates the distribution with it
#   6. print the outputs and how to roll back
# --skip-package deploys the zips already in target/lambda, baking the config into edge.zip
# directly (scripts/edge_config.py inject) instead of rebuilding it.
#
# Needs AWS credentials for the target account (any way boto3 finds them) and the deploy tools
# that scripts/validate_deploy.sh installs into the project venv. Nothing else is downloaded.
# --guided asks SAM's questions once and saves the answers to deploy/samconfig.toml; later runs
# reuse that file non-interactively.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TEMPLATE="$ROOT/deploy/template.yaml"
SAMCONFIG="$ROOT/deploy/samconfig.toml"
EDGE_ZIP="$ROOT/target/lambda/edge.zip"
WORKER_ZIP="$ROOT/target/lambda/worker.zip"
REGION=us-east-1 # Lambda@Edge functions are created only in us-east-1
STATE="$ROOT/target/deploy"
EDGE_CONFIG="$STATE/edgethumb.json"

export AWS_DEFAULT_REGION="$REGION" AWS_REGION="$REGION"
export SAM_CLI_TELEMETRY=0

die() {
  echo "deploy: $*" >&2
  exit 1
}
say() { echo "==> $*" >&2; }

usage() {
  sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'
  exit "${1:-0}"
}

stack_name=""
guided=0
skip_package=0
rollback_arn=""
outputs_only=0
sam_args=()
while [ $# -gt 0 ]; do
  case "$1" in
  --stack-name) stack_name="${2:?--stack-name needs a value}"; shift 2 ;;
  --stack-name=*) stack_name="${1#*=}"; shift ;;
  --guided) guided=1; shift ;;
  --skip-package) skip_package=1; shift ;;
  --rollback-edge) rollback_arn="${2:?--rollback-edge needs a version ARN}"; shift 2 ;;
  --outputs) outputs_only=1; shift ;;
  -h | --help) usage 0 ;;
  --) shift; sam_args=("$@"); break ;;
  *) echo "deploy: unknown argument $1" >&2; usage 2 ;;
  esac
done

# ------------------------------------------------------------------ tools
# shellcheck source=scripts/validate_deploy.sh
EDGETHUMB_SOURCE_ONLY=1 source "$ROOT/scripts/validate_deploy.sh"
ensure_deploy_venv
PY="$DEPLOY_VENV/bin/python"
SAM="$DEPLOY_VENV/bin/sam"
[ -x "$SAM" ] || die "sam is not installed in $DEPLOY_VENV"
mkdir -p "$STATE"

if [ -z "$stack_name" ] && [ -f "$SAMCONFIG" ]; then
  stack_name="$("$PY" - "$SAMCONFIG" <<'PY'
import sys, tomllib
with open(sys.argv[1], "rb") as f:
    config = tomllib.load(f)
print(config.get("default", {}).get("deploy", {}).get("parameters", {}).get("stack_name", ""))
PY
)"
fi
stack_name="${stack_name:-${EDGETHUMB_STACK:-edgethumb}}"

# Stack outputs as JSON ([] when the stack does not exist yet).
read_outputs() {
  "$PY" - "$stack_name" <<'PY'
import json, sys
import boto3
from botocore.exceptions import ClientError
try:
    stacks = boto3.client("cloudformation").describe_stacks(StackName=sys.argv[1])["Stacks"]
except ClientError as error:
    if "does not exist" in str(error):
        print("[]")
        sys.exit(0)
    raise
print(json.dumps(stacks[0].get("Outputs", []), indent=1))
PY
}

output_value() { # output_value FILE KEY
  "$PY" -c 'import json,sys; print(next((o["OutputValue"] for o in json.load(open(sys.argv[1])) if o["OutputKey"] == sys.argv[2]), ""))' "$1" "$2"
}

baked_config() { # the edgethumb.json inside edge.zip, or nothing
  "$PY" -c 'import sys, zipfile
z = zipfile.ZipFile(sys.argv[1])
sys.stdout.write(z.read("edgethumb.json").decode() if "edgethumb.json" in z.namelist() else "")' "$EDGE_ZIP"
}

# Generate edgethumb.json from OUTPUTS_FILE into $STATE; 0 if edge.zip holds another config
# (or none), 1 if it already holds this one. Any failure ends the script (callers test the
# status, which would otherwise switch off set -e inside).
config_differs() {
  local outputs_file="$1" baked=""
  "$PY" "$ROOT/scripts/edge_config.py" cli edge-config generate --outputs "$outputs_file" \
    --settings "$ROOT/deploy/edge-settings.json" -o "$EDGE_CONFIG" >&2 ||
    die "cannot generate the edge config from $outputs_file"
  if [ -f "$EDGE_ZIP" ]; then
    baked="$(baked_config)" || die "cannot read $EDGE_ZIP"
  fi
  [ "$baked" != "$(cat "$EDGE_CONFIG")" ]
}

# Put $EDGE_CONFIG into edge.zip: rebuilt by package.sh (which loads it under node), or with
# --skip-package written into the existing zip.
bake_config() {
  if [ "$skip_package" = 1 ]; then
    "$PY" "$ROOT/scripts/edge_config.py" inject --zip "$EDGE_ZIP" --config "$EDGE_CONFIG" >&2 ||
      die "cannot bake the edge config into $EDGE_ZIP"
  else
    say "rebuilding edge.zip with the stack's config (scripts/package.sh)"
    EDGETHUMB_PACKAGE_ONLY=edge bash "$ROOT/scripts/package.sh" "$EDGE_CONFIG" || die "scripts/package.sh failed"
  fi
}

check_offline() {
  say "offline checks"
  "$DEPLOY_VENV/bin/cfn-lint" "$TEMPLATE"
  "$PY" "$ROOT/scripts/check_deploy.py" "$TEMPLATE" --edge-zip "$EDGE_ZIP"
}

# Runs in deploy/, where SAM reads and (with --guided) writes samconfig.toml. (--config-file is
# not passed: SAM refuses one that does not exist yet.)
sam_deploy() {
  local args=(deploy --template-file "$TEMPLATE" --stack-name "$stack_name"
    --region "$REGION" --no-fail-on-empty-changeset)
  if [ "$guided" = 1 ] && [ ! -f "$SAMCONFIG" ]; then
    args+=(--guided)
  elif [ -f "$SAMCONFIG" ]; then
    args+=(--no-confirm-changeset)
  else
    args+=(--capabilities CAPABILITY_IAM --resolve-s3 --no-confirm-changeset)
  fi
  say "sam ${args[*]} ${sam_args[*]}"
  (cd "$ROOT/deploy" && "$SAM" "${args[@]}" "${sam_args[@]}")
}

print_rollback() {
  local previous="$1" current="$2"
  cat >&2 <<EOF

Rolling back
  Edge only, in minutes (points the distribution's origin-response trigger at an older
  numbered version; every published version is kept):
    scripts/deploy.sh --rollback-edge ${previous:-<previous EdgeFunctionVersionArn>}
  The stack stays as it is; the next deploy that changes edge.zip re-associates the new version.
  Everything (template, worker, edge), from an earlier commit:
    git checkout <good commit> && scripts/deploy.sh${stack_name:+ --stack-name $stack_name}
  Now associated: ${current}
EOF
}

# ------------------------------------------------------------------ --outputs
if [ "$outputs_only" = 1 ]; then
  read_outputs
  exit 0
fi

# ------------------------------------------------------------------ --rollback-edge
if [ -n "$rollback_arn" ]; then
  [[ "$rollback_arn" =~ ^arn:aws[a-z-]*:lambda:us-east-1:[0-9]{12}:function:[A-Za-z0-9_-]+:[0-9]+$ ]] ||
    die "--rollback-edge takes a numbered version ARN (…:function:NAME:N), got $rollback_arn"
  read_outputs >"$STATE/outputs.json"
  distribution="$(output_value "$STATE/outputs.json" DistributionId)"
  [ -n "$distribution" ] || die "stack $stack_name has no DistributionId output"
  say "re-associating $distribution origin-response with $rollback_arn"
  "$PY" - "$distribution" "$rollback_arn" <<'PY'
import sys
import boto3
distribution, arn = sys.argv[1], sys.argv[2]
cloudfront = boto3.client("cloudfront")
lam = boto3.client("lambda")
name, version = arn.rsplit(":", 1)
lam.get_function(FunctionName=name, Qualifier=version)  # fails clearly if it is gone
reply = cloudfront.get_distribution_config(Id=distribution)
config = reply["DistributionConfig"]
changed = 0
behaviours = [config["DefaultCacheBehavior"]] + config.get("CacheBehaviors", {}).get("Items", [])
for behaviour in behaviours:
    for association in behaviour.get("LambdaFunctionAssociations", {}).get("Items", []):
        if association["EventType"] == "origin-response":
            print(f"  {behaviour.get('PathPattern', 'default')}: {association['LambdaFunctionARN']} -> {arn}", file=sys.stderr)
            association["LambdaFunctionARN"] = arn
            changed += 1
if not changed:
    sys.exit("no origin-response association found on the distribution")
cloudfront.update_distribution(Id=distribution, IfMatch=reply["ETag"], DistributionConfig=config)
print("  waiting for CloudFront to deploy the change (several minutes)...", file=sys.stderr)
cloudfront.get_waiter("distribution_deployed").wait(Id=distribution)
print("  done", file=sys.stderr)
PY
  exit 0
fi

# ------------------------------------------------------------------ deploy
say "stack $stack_name in $REGION"
read_outputs >"$STATE/outputs.before.json"
previous_version="$(output_value "$STATE/outputs.before.json" EdgeFunctionVersionArn)"
if [ "$skip_package" = 0 ]; then
  [ -f "$ROOT/scripts/package.sh" ] || die "scripts/package.sh is missing"
  say "building the bundles (scripts/package.sh)"
  if [ -n "$previous_version" ]; then
    config_differs "$STATE/outputs.before.json" || true
    bash "$ROOT/scripts/package.sh" "$EDGE_CONFIG" || die "scripts/package.sh failed"
  else
    bash "$ROOT/scripts/package.sh" || die "scripts/package.sh failed"
  fi
elif [ -n "$previous_version" ] && config_differs "$STATE/outputs.before.json"; then
  bake_config
fi
[ -f "$EDGE_ZIP" ] || die "$EDGE_ZIP is missing (run scripts/package.sh)"
[ -f "$WORKER_ZIP" ] || die "$WORKER_ZIP is missing (run scripts/package.sh)"
if [ -z "$previous_version" ]; then
  say "first deploy: edge.zip carries package.sh's placeholder config until the queue exists; a second deploy follows"
fi

check_offline
sam_deploy

read_outputs >"$STATE/outputs.json"
if config_differs "$STATE/outputs.json"; then
  say "edge config changed: publishing a configured edge version"
  if [ "$guided" = 1 ] && [ ! -f "$SAMCONFIG" ]; then
    die "the guided answers were not saved to $SAMCONFIG; rerun with --guided and save them (the second deploy must reuse your parameters)"
  fi
  bake_config
  check_offline
  guided=0
  sam_deploy
  read_outputs >"$STATE/outputs.json"
fi
config_differs "$STATE/outputs.json" && die "the baked edge config still differs from the stack outputs; see $STATE"

current_version="$(output_value "$STATE/outputs.json" EdgeFunctionVersionArn)"
cat >&2 <<EOF

Deployed stack $stack_name:
  https://$(output_value "$STATE/outputs.json" DistributionDomainName)/<key>@<params>
  bucket       $(output_value "$STATE/outputs.json" BucketName)
  queue        $(output_value "$STATE/outputs.json" QueueUrl)
  dead letters $(output_value "$STATE/outputs.json" DeadLetterQueueUrl)
  edge version $current_version
  viewer guard $(output_value "$STATE/outputs.json" ViewerSettingsArn) (KeyValueStore; docs/deploy.md, "The viewer guard")
  (all outputs: $STATE/outputs.json; edge config: $STATE/edgethumb.json)
EOF
if [ -n "$previous_version" ] && [ "$previous_version" != "$current_version" ]; then
  print_rollback "$previous_version" "$current_version"
else
  print_rollback "" "$current_version"
fi
