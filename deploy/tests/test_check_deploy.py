"""Tests of scripts/check_deploy.py: the real template passes, broken copies are refused.

Each broken copy starts from the real template (decoded with cfn-lint's loader and written
back as CloudFormation JSON, which both cfn-lint and the check read), changes one thing, and
runs the check as the deploy script and CI do: a subprocess whose exit status and output
lines are asserted. The unchanged JSON copy must pass, so every refusal is the change's doing.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from cfnlint.decode import decode

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "deploy" / "template.yaml"
CHECK = ROOT / "scripts" / "check_deploy.py"


def run_cli(*args: str | Path) -> subprocess.CompletedProcess:
    """The check as CI and scripts/deploy.sh run it."""
    return subprocess.run(
        [sys.executable, str(CHECK), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
    )


_spec = importlib.util.spec_from_file_location("check_deploy", CHECK)
check_deploy = importlib.util.module_from_spec(_spec)
sys.modules["check_deploy"] = check_deploy  # dataclasses look their module up
_spec.loader.exec_module(check_deploy)


def run_check(*args: str | Path) -> subprocess.CompletedProcess:
    """The same entry point in-process (a subprocess per case costs ~0.5 s of imports)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = check_deploy.main([str(a) for a in args])
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 2
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


@pytest.fixture(scope="module")
def real() -> dict:
    data, errors = decode(str(TEMPLATE))
    assert not errors, errors
    # Plain dicts/lists/strs: the decoder's node classes carry positions we don't need.
    return json.loads(json.dumps(data))


def write(tmp_path: Path, data: dict, name: str = "template.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(data, indent=1))
    return path


def violations(result: subprocess.CompletedProcess) -> list[str]:
    return [line for line in result.stdout.splitlines() if line.strip()]


def assert_refused(result: subprocess.CompletedProcess, *needles: str) -> list[str]:
    lines = violations(result)
    assert result.returncode == 1, f"expected exit 1, got {result.returncode}\n{result.stdout}{result.stderr}"
    for needle in needles:
        assert any(needle in line for line in lines), f"no violation mentions {needle!r}:\n" + "\n".join(lines)
    return lines


def edge(data: dict) -> dict:
    return data["Resources"]["EdgeFunction"]["Properties"]


def variant_behaviour(data: dict) -> dict:
    behaviours = data["Resources"]["Distribution"]["Properties"]["DistributionConfig"]["CacheBehaviors"]
    (behaviour,) = [b for b in behaviours if b["PathPattern"] == "*@*"]
    return behaviour


def association(data: dict) -> dict:
    (assoc,) = variant_behaviour(data)["LambdaFunctionAssociations"]
    return assoc


# --------------------------------------------------------------------------- passing


def test_real_template_passes():
    result = run_cli(TEMPLATE, "--no-edge-zip")
    assert result.returncode == 0, result.stdout + result.stderr
    assert violations(result) == [
        "check_deploy: OK: template.yaml: edge function EdgeFunction; worker WorkerFunction on RenderQueue; "
        "viewer-request function ViewerRequestFunction"
    ]


def test_json_copy_of_real_template_passes(tmp_path, real):
    # The baseline for every broken copy below.
    result = run_check(write(tmp_path, real), "--no-edge-zip")
    assert result.returncode == 0, result.stdout + result.stderr


def test_real_template_facts(real):
    """What the issue asks of the template, independent of the check's own rules."""
    assert association(real) == {"EventType": "origin-response", "LambdaFunctionARN": {"Ref": "EdgeFunction.Version"}}
    assert variant_behaviour(real)["Compress"] is False
    props = edge(real)
    assert props["Runtime"] == "nodejs22.x" and props["Architectures"] == ["x86_64"] and props["Timeout"] == 30
    assert "Environment" not in props and props["AutoPublishAlias"]
    worker = real["Resources"]["WorkerFunction"]["Properties"]
    assert worker["Runtime"] == "provided.al2023" and worker["CodeUri"] == "../target/lambda/worker.zip"
    assert real["Parameters"]["WorkerArchitecture"]["Default"] == "x86_64"
    rules = real["Resources"]["ImageBucket"]["Properties"]["LifecycleConfiguration"]["Rules"]
    (expiry,) = [r for r in rules if r.get("TagFilters")]
    assert expiry["TagFilters"] == [{"Key": "createByLambda", "Value": "1"}]
    assert expiry["ExpirationInDays"] == expiry["NoncurrentVersionExpiration"]["NoncurrentDays"] == {"Ref": "VariantExpirationDays"}
    dlq = real["Resources"]["RenderDeadLetterQueue"]["Properties"]
    assert dlq["MessageRetentionPeriod"] == 14 * 24 * 3600
    outputs = set(real["Outputs"])
    assert {"DistributionDomainName", "BucketName", "QueueUrl", "DeadLetterQueueUrl", "EdgeFunctionVersionArn"} <= outputs


# --------------------------------------------------------------------------- edge function


def test_arm64_edge_function_is_refused(tmp_path, real):
    broken = copy.deepcopy(real)
    edge(broken)["Architectures"] = ["arm64"]
    lines = assert_refused(run_cli(write(tmp_path, broken), "--no-edge-zip"), "EdgeFunction: Architectures ['arm64'] must be [x86_64]")
    assert len(lines) == 1


def test_edge_architecture_from_a_parameter_is_checked_for_every_allowed_value(tmp_path, real):
    broken = copy.deepcopy(real)
    edge(broken)["Architectures"] = [{"Ref": "WorkerArchitecture"}]
    assert_refused(run_check(write(tmp_path, broken), "--no-edge-zip"), "must be [x86_64]", "WorkerArchitecture=arm64")


def test_environment_variables_on_the_edge_function_are_refused(tmp_path, real):
    broken = copy.deepcopy(real)
    edge(broken)["Environment"] = {"Variables": {"QUEUE_URL": {"Ref": "RenderQueue"}}}
    assert_refused(run_check(write(tmp_path, broken), "--no-edge-zip"), "EdgeFunction: has Environment; Lambda@Edge allows no environment variables")


def test_environment_from_sam_globals_is_refused(tmp_path, real):
    broken = copy.deepcopy(real)
    broken["Globals"] = {"Function": {"Environment": {"Variables": {"RUST_LOG": "debug"}}}}
    assert_refused(run_check(write(tmp_path, broken), "--no-edge-zip"), "EdgeFunction: has Environment")


@pytest.mark.parametrize(
    "arn, needle",
    [
        ({"Fn::GetAtt": ["EdgeFunction", "Arn"]}, "unversioned function ARN of EdgeFunction"),
        ({"Ref": "EdgeFunction"}, "unversioned function EdgeFunction"),
        ({"Ref": "EdgeFunction.Alias"}, "associates alias EdgeFunction.Alias"),
        ({"Fn::Sub": "${EdgeFunction.Arn}:$LATEST"}, "associates $LATEST"),
        ("arn:aws:lambda:us-east-1:123456789012:function:thumbs", "unversioned function ARN"),
        ("arn:aws:lambda:us-east-1:123456789012:function:thumbs:live", "associates an alias"),
    ],
    ids=["getatt-arn", "ref-function", "alias", "latest", "literal-unversioned", "literal-alias"],
)
def test_unversioned_associations_are_refused(tmp_path, real, arn, needle):
    broken = copy.deepcopy(real)
    association(broken)["LambdaFunctionARN"] = arn
    lines = assert_refused(run_check(write(tmp_path, broken), "--no-edge-zip"), needle)
    assert any("Distribution CacheBehaviors[*@*] origin-response" in line for line in lines), lines


def test_literal_numbered_version_is_accepted(tmp_path, real):
    fixed = copy.deepcopy(real)
    association(fixed)["LambdaFunctionARN"] = "arn:aws:lambda:us-east-1:123456789012:function:thumbs:7"
    result = run_check(write(tmp_path, fixed), "--no-edge-zip")
    assert result.returncode == 0, result.stdout


def test_version_without_auto_publish_alias_is_refused(tmp_path, real):
    broken = copy.deepcopy(real)
    del edge(broken)["AutoPublishAlias"]
    assert_refused(run_check(write(tmp_path, broken), "--no-edge-zip"), "EdgeFunction has no AutoPublishAlias")


def test_edge_timeout_over_30_seconds_is_refused(tmp_path, real):
    broken = copy.deepcopy(real)
    edge(broken)["Timeout"] = 60
    assert_refused(run_check(write(tmp_path, broken), "--no-edge-zip"), "EdgeFunction: timeout 60 s exceeds the 30 s Lambda@Edge allows for origin events")


def test_edge_timeout_of_30_seconds_is_the_limit_not_over_it(tmp_path, real):
    ok = copy.deepcopy(real)
    edge(ok)["Timeout"] = 30
    assert run_check(write(tmp_path, ok), "--no-edge-zip").returncode == 0


def test_viewer_events_get_the_viewer_limits(tmp_path, real):
    broken = copy.deepcopy(real)
    association(broken)["EventType"] = "viewer-request"
    assert_refused(
        run_check(write(tmp_path, broken), "--no-edge-zip"),
        "timeout 30 s exceeds the 5 s Lambda@Edge allows for viewer events",
        "exceeds the 128 MB Lambda@Edge allows for viewer events",
    )


@pytest.mark.parametrize("runtime", ["provided.al2023", "java21"])
def test_non_node_runtime_is_refused(tmp_path, real, runtime):
    broken = copy.deepcopy(real)
    edge(broken)["Runtime"] = runtime
    assert_refused(run_check(write(tmp_path, broken), "--no-edge-zip"), f"runtime {runtime} is not Node.js or Python")


def test_python_runtime_is_accepted(tmp_path, real):
    ok = copy.deepcopy(real)
    edge(ok)["Runtime"] = "python3.13"
    assert run_check(write(tmp_path, ok), "--no-edge-zip").returncode == 0


@pytest.mark.parametrize(
    "key, value, needle",
    [
        ("Layers", ["arn:aws:lambda:us-east-1:123456789012:layer:x:1"], "does not support layers"),
        ("VpcConfig", {"SubnetIds": ["subnet-1"], "SecurityGroupIds": ["sg-1"]}, "does not support VPC access"),
        ("ReservedConcurrentExecutions", 5, "does not support reserved concurrency"),
        ("EphemeralStorage", {"Size": 1024}, "ephemeral storage 1024 MB exceeds the 512 MB"),
    ],
)
def test_unsupported_lambda_features_are_refused(tmp_path, real, key, value, needle):
    broken = copy.deepcopy(real)
    edge(broken)[key] = value
    assert_refused(run_check(write(tmp_path, broken), "--no-edge-zip"), needle)


def test_role_not_trusted_by_edgelambda_is_refused(tmp_path, real):
    broken = copy.deepcopy(real)
    trust = broken["Resources"]["EdgeRole"]["Properties"]["AssumeRolePolicyDocument"]
    trust["Statement"][0]["Principal"]["Service"] = ["lambda.amazonaws.com"]
    assert_refused(run_check(write(tmp_path, broken), "--no-edge-zip"), "role is not trusted by edgelambda.amazonaws.com")


def test_sam_generated_edge_role_is_refused(tmp_path, real):
    broken = copy.deepcopy(real)
    del edge(broken)["Role"]
    assert_refused(run_check(write(tmp_path, broken), "--no-edge-zip"), "role is not trusted by edgelambda.amazonaws.com")


def test_edge_role_granting_more_than_it_needs_is_refused(tmp_path, real):
    broken = copy.deepcopy(real)
    statements = broken["Resources"]["EdgeRole"]["Properties"]["Policies"][0]["PolicyDocument"]["Statement"]
    statements[0]["Action"] = ["s3:GetObject", "s3:PutObject"]
    assert_refused(run_check(write(tmp_path, broken), "--no-edge-zip"), "EdgeFunction: role allows s3:PutObject")


def test_wildcard_resource_is_refused(tmp_path, real):
    broken = copy.deepcopy(real)
    statements = broken["Resources"]["WorkerRole"]["Properties"]["Policies"][0]["PolicyDocument"]["Statement"]
    statements[1]["Resource"] = "*"
    assert_refused(run_check(write(tmp_path, broken), "--no-edge-zip"), "WorkerFunction: role allows", 'on every resource ("*")')


# --------------------------------------------------------------------------- worker and queues


def test_visibility_timeout_too_short_for_one_allowed_worker_timeout_is_refused(tmp_path, real):
    broken = copy.deepcopy(real)
    broken["Mappings"]["WorkerTimeoutToVisibility"]["900"]["VisibilityTimeout"] = 900 * 6 - 1
    lines = assert_refused(
        run_check(write(tmp_path, broken), "--no-edge-zip"),
        "WorkerFunction: timeout 900 s x 6 = 5400 s exceeds RenderQueue's visibility timeout 5399 s",
        "WorkerTimeout=900",
    )
    assert len(lines) == 1, lines  # only the one allowed value is wrong


def test_literal_visibility_timeout_too_short_is_refused(tmp_path, real):
    broken = copy.deepcopy(real)
    broken["Resources"]["RenderQueue"]["Properties"]["VisibilityTimeout"] = 300
    broken["Resources"]["WorkerFunction"]["Properties"]["Timeout"] = 60
    assert_refused(run_check(write(tmp_path, broken), "--no-edge-zip"), "timeout 60 s x 6 = 360 s exceeds RenderQueue's visibility timeout 300 s")


def test_default_visibility_timeout_is_too_short(tmp_path, real):
    broken = copy.deepcopy(real)
    del broken["Resources"]["RenderQueue"]["Properties"]["VisibilityTimeout"]
    assert_refused(run_check(write(tmp_path, broken), "--no-edge-zip"), "visibility timeout 30 s")


@pytest.mark.parametrize("count", [1, 2, 6, 10])
def test_max_receive_count_outside_3_to_5_is_refused(tmp_path, real, count):
    broken = copy.deepcopy(real)
    broken["Resources"]["RenderQueue"]["Properties"]["RedrivePolicy"]["maxReceiveCount"] = count
    assert_refused(run_check(write(tmp_path, broken), "--no-edge-zip"), f"RenderQueue: RedrivePolicy maxReceiveCount {count} is outside 3..5")


@pytest.mark.parametrize("count", [3, 5])
def test_max_receive_count_bounds_are_accepted(tmp_path, real, count):
    ok = copy.deepcopy(real)
    ok["Resources"]["RenderQueue"]["Properties"]["RedrivePolicy"]["maxReceiveCount"] = count
    assert run_check(write(tmp_path, ok), "--no-edge-zip").returncode == 0


def test_max_receive_count_from_a_parameter_is_checked_at_its_bounds(tmp_path, real):
    broken = copy.deepcopy(real)
    broken["Parameters"]["MaxReceiveCount"] = {"Type": "Number", "Default": 4, "MinValue": 1, "MaxValue": 5}
    broken["Resources"]["RenderQueue"]["Properties"]["RedrivePolicy"]["maxReceiveCount"] = {"Ref": "MaxReceiveCount"}
    assert_refused(run_check(write(tmp_path, broken), "--no-edge-zip"), "maxReceiveCount 1 is outside 3..5")


def test_queue_without_dead_letter_queue_is_refused(tmp_path, real):
    broken = copy.deepcopy(real)
    del broken["Resources"]["RenderQueue"]["Properties"]["RedrivePolicy"]
    assert_refused(run_check(write(tmp_path, broken), "--no-edge-zip"), "RenderQueue: has no RedrivePolicy")


def test_missing_partial_batch_failures_is_refused(tmp_path, real):
    broken = copy.deepcopy(real)
    del broken["Resources"]["WorkerFunction"]["Properties"]["Events"]["RenderJobs"]["Properties"]["FunctionResponseTypes"]
    assert_refused(run_check(write(tmp_path, broken), "--no-edge-zip"), "lacks FunctionResponseTypes [ReportBatchItemFailures]")


# --------------------------------------------------------------------------- bundle and config


def make_bundle(path: Path, files: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as bundle:
        for name, content in files.items():
            bundle.writestr(name, content)
    return path


def test_small_bundle_with_config_passes(tmp_path):
    config = {"queue_url": "https://sqs.us-east-1.amazonaws.com/1/q", "queue_region": "us-east-1", "response_budget_bytes": 1_000_000}
    bundle = make_bundle(tmp_path / "edge.zip", {"index.mjs": b"export const handler = async () => {};", "edgethumb.json": json.dumps(config).encode()})
    result = run_check(TEMPLATE, "--edge-zip", bundle)
    assert result.returncode == 0, result.stdout
    assert "edge bundle edge.zip" in result.stdout


def test_bundle_over_50_mib_is_refused(tmp_path):
    # Incompressible content stored as is: the zip itself is over 50 MiB.
    bundle = make_bundle(tmp_path / "edge.zip", {"index.mjs": b"", "big.node": os.urandom(50 * 1024 * 1024 + 1)})
    assert_refused(run_check(TEMPLATE, "--edge-zip", bundle), "Lambda@Edge allows 52,428,800 (50 MiB)")


def test_bundle_without_handler_module_is_refused(tmp_path):
    bundle = make_bundle(tmp_path / "edge.zip", {"lib/index.mjs": b""})
    assert_refused(run_check(TEMPLATE, "--edge-zip", bundle), "has no index.mjs or index.js or index.cjs at its root")


def test_config_baked_into_bundle_over_budget_is_refused(tmp_path):
    config = {"queue_url": "u", "queue_region": "r", "response_budget_bytes": 1_048_576}
    bundle = make_bundle(tmp_path / "edge.zip", {"index.mjs": b"", "edgethumb.json": json.dumps(config).encode()})
    assert_refused(run_check(TEMPLATE, "--edge-zip", bundle), "edge.zip!edgethumb.json: response_budget_bytes 1048576 must be between 16384 and 1000000")


# The bounds are EdgeConfig's (src/edge/config.rs), checked by the edge's own parser.
@pytest.mark.parametrize("budget, ok", [(1_000_000, True), (991_808, True), (16_384, True), (16_383, False), (1_000_001, False), ("900000", False), (0, False)])
def test_edge_config_budget(tmp_path, budget, ok):
    config = tmp_path / "edgethumb.json"
    config.write_text(json.dumps({"queue_url": "u", "queue_region": "r", "response_budget_bytes": budget}))
    result = run_check(TEMPLATE, "--no-edge-zip", "--edge-config", config)
    if ok:
        assert result.returncode == 0, result.stdout
    else:
        assert_refused(result, "response_budget_bytes" if isinstance(budget, int) else "invalid type")


def test_unreadable_edge_config_is_a_violation(tmp_path):
    assert_refused(run_check(TEMPLATE, "--no-edge-zip", "--edge-config", tmp_path / "missing.json"), "missing.json: cannot be read")


def test_missing_template_is_a_usage_error(tmp_path):
    result = run_cli(tmp_path / "nope.yaml")
    assert result.returncode == 2
    assert "no template" in result.stderr


# --------------------------------------------------------------------------- after SAM's transform


@pytest.fixture(scope="module")
def transformed(real) -> dict:
    """The template as CloudFormation will see it: SAM's own translator, run offline."""
    from samtranslator.translator.transform import transform

    class NoManagedPolicies:  # the template names no managed policies by short name
        def load(self) -> dict:
            return {}

    data = copy.deepcopy(real)
    for fn in ("WorkerFunction", "EdgeFunction"):
        data["Resources"][fn]["Properties"]["CodeUri"] = f"s3://artifacts/{fn}.zip"  # what `sam deploy` uploads
    saved = os.environ.get("AWS_DEFAULT_REGION")
    os.environ["AWS_DEFAULT_REGION"] = "us-east-1"  # the translator's pseudo-parameters; no call is made
    try:
        return json.loads(json.dumps(transform(data, {}, NoManagedPolicies())))
    finally:
        if saved is None:
            del os.environ["AWS_DEFAULT_REGION"]
        else:
            os.environ["AWS_DEFAULT_REGION"] = saved


def test_transformed_template_associates_a_retained_lambda_version(transformed):
    (assoc,) = variant_behaviour(transformed)["LambdaFunctionAssociations"]
    version = transformed["Resources"][assoc["LambdaFunctionARN"]["Ref"]]
    assert version["Type"] == "AWS::Lambda::Version"
    assert version["DeletionPolicy"] == "Retain"  # old versions stay for --rollback-edge


def test_transformed_template_passes(tmp_path, transformed):
    result = run_check(write(tmp_path, transformed), "--no-edge-zip")
    assert result.returncode == 0, result.stdout
    assert "worker WorkerFunction on RenderQueue" in result.stdout


def test_transformed_template_with_alias_association_is_refused(tmp_path, transformed):
    broken = copy.deepcopy(transformed)
    (alias,) = [k for k, v in broken["Resources"].items() if v["Type"] == "AWS::Lambda::Alias"]
    association(broken)["LambdaFunctionARN"] = {"Ref": alias}
    assert_refused(run_check(write(tmp_path, broken), "--no-edge-zip"), f"associates alias {alias}")


def test_transformed_template_with_arm64_edge_is_refused(tmp_path, transformed):
    broken = copy.deepcopy(transformed)
    broken["Resources"]["EdgeFunction"]["Properties"]["Architectures"] = ["arm64"]
    assert_refused(run_check(write(tmp_path, broken), "--no-edge-zip"), "EdgeFunction: Architectures ['arm64'] must be [x86_64]")


def test_worker_environment_names_are_ones_the_worker_reads(real):
    """A misspelt variable would be silently ignored (the worker keeps its default)."""
    # The core's settings (src/worker) and the Lambda's wiring (aws/src/worker.rs: the queue
    # that throttled invalidations are deferred to).
    files = [*(ROOT / "src" / "worker").glob("*.rs"), ROOT / "aws" / "src" / "worker.rs"]
    sources = "\n".join(p.read_text(encoding="utf-8") for p in files)
    variables = real["Resources"]["WorkerFunction"]["Properties"]["Environment"]["Variables"]
    ours = [name for name in variables if name.startswith("EDGETHUMB_")]
    assert ours, variables
    for name in ours:
        assert f'"{name}"' in sources, f"{name} is set on the worker but neither src/worker nor aws/src/worker.rs reads it"
