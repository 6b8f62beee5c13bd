"""Tests of scripts/edge_config.py: edgethumb.json from stack outputs, baked into edge.zip."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "edge_config.py"
SETTINGS = ROOT / "deploy" / "edge-settings.json"

_spec = importlib.util.spec_from_file_location("edge_config", SCRIPT)
edge_config = importlib.util.module_from_spec(_spec)
sys.modules["edge_config"] = edge_config
_spec.loader.exec_module(edge_config)

_check_spec = importlib.util.spec_from_file_location("check_deploy", ROOT / "scripts" / "check_deploy.py")
check_deploy = importlib.util.module_from_spec(_check_spec)
sys.modules["check_deploy"] = check_deploy
_check_spec.loader.exec_module(check_deploy)

QUEUE_URL = "https://sqs.us-east-1.amazonaws.com/123456789012/edgethumb-RenderQueue-AbC123"
OUTPUTS = [
    {"OutputKey": "DistributionDomainName", "OutputValue": "d111111abcdef8.cloudfront.net"},
    {"OutputKey": "QueueUrl", "OutputValue": QUEUE_URL, "Description": "Render queue"},
    {"OutputKey": "QueueRegion", "OutputValue": "us-east-1"},
    {"OutputKey": "BucketRegion", "OutputValue": "us-east-1"},
    {"OutputKey": "BucketName", "OutputValue": "edgethumb-imagebucket-1x2y3z"},
]


def run_cli(*args: str | Path, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], input=stdin, capture_output=True, text=True, timeout=120)


def generate(outputs: object, settings: object | None, tmp_path: Path) -> subprocess.CompletedProcess:
    """`edgethumb edge-config generate`, as scripts/deploy.sh runs it."""
    settings_file = tmp_path / "edge-settings.json"
    if settings is None:
        settings_file = tmp_path / "absent.json"
    else:
        settings_file.write_text(json.dumps(settings))
    out = tmp_path / "edgethumb.json"
    out.unlink(missing_ok=True)
    return edge_config.edgethumb("edge-config", "generate", "--outputs", "-", "--settings", settings_file, "-o", out, stdin=json.dumps(outputs))


def generated(outputs: object, settings: object | None, tmp_path: Path) -> dict:
    result = generate(outputs, settings, tmp_path)
    assert result.returncode == 0, result.stderr
    return json.loads((tmp_path / "edgethumb.json").read_text())


def test_template_outputs_feed_every_stack_key(tmp_path):
    # The stack outputs EdgeConfig needs, as the Rust side names them when they are missing.
    result = generate([], None, tmp_path)
    assert result.returncode == 1
    needed = re.search(r"stack outputs lack ([\w, ]+);", result.stderr)
    assert needed, result.stderr
    template = (ROOT / "deploy" / "template.yaml").read_text(encoding="utf-8")
    for output in needed.group(1).split(", "):
        assert re.search(rf"^  {output}:$", template, re.M), f"template has no output {output}"


def test_generate_takes_queue_and_regions_from_the_stack_and_tuning_from_settings(tmp_path):
    config = generated(OUTPUTS, {"response_budget_bytes": 900_000, "provisional_cache_control": "public, max-age=60"}, tmp_path)
    assert config["queue_url"] == QUEUE_URL
    assert config["queue_region"] == "us-east-1"
    assert config["bucket_region"] == "us-east-1"
    assert config["response_budget_bytes"] == 900_000
    assert config["provisional_cache_control"] == "public, max-age=60"
    assert "endpoint_url" not in config
    # Every other key is written with the edge's default, so the file says what runs.
    assert config["render_deadline_ms"] == 20_000


def test_generate_accepts_describe_stacks_output_too(tmp_path):
    config = generated({"Stacks": [{"Outputs": OUTPUTS}]}, {}, tmp_path)
    assert config["queue_url"] == QUEUE_URL


@pytest.mark.parametrize(
    "settings, needle",
    [
        ({"queue_ulr": "x"}, "unknown field `queue_ulr`"),
        ({"queue_url": "https://elsewhere"}, "queue_url cannot be set in the settings"),
        ({"endpoint_url": "http://127.0.0.1:5000"}, "endpoint_url cannot be set in the settings"),
        ({"response_budget_bytes": 1_000_001}, "response_budget_bytes 1000001 must be between 16384 and 1000000"),
        ({"response_budget_bytes": 16_383}, "response_budget_bytes 16383 must be between 16384 and 1000000"),
        ({"response_budget_bytes": "990000"}, "invalid type"),
    ],
)
def test_generate_refuses_bad_settings(tmp_path, settings, needle):
    result = generate(OUTPUTS, settings, tmp_path)
    assert result.returncode == 1
    assert needle in result.stderr
    assert not (tmp_path / "edgethumb.json").exists()


def test_generate_refuses_outputs_of_another_stack(tmp_path):
    result = generate([{"OutputKey": "Something", "OutputValue": "else"}], {}, tmp_path)
    assert result.returncode == 1
    assert "lack BucketRegion, QueueRegion, QueueUrl" in result.stderr


def test_shipped_settings_are_valid_and_within_the_response_limit(tmp_path):
    settings = json.loads(SETTINGS.read_text(encoding="utf-8"))
    config = generated(OUTPUTS, settings, tmp_path)
    assert 16 * 1024 <= config["response_budget_bytes"] <= 1_000_000
    report = check_deploy.Report()
    check_deploy.check_edge_config_text(json.dumps(config), "edgethumb.json", report)
    assert report.violations == []


def bundle(path: Path, files: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in files.items():
            z.writestr(name, data)
    return path


def test_inject_replaces_the_config_keeps_the_rest_and_is_deterministic(tmp_path):
    files = {"index.mjs": b"export const handler = 1;\n", "edgethumb.node": bytes(range(256)) * 64, "edgethumb.json": b"{}"}
    zip_path = bundle(tmp_path / "edge.zip", files)
    generated(OUTPUTS, {}, tmp_path)
    config = (tmp_path / "edgethumb.json").read_bytes()
    edge_config.inject(zip_path, config)
    first = zip_path.read_bytes()
    edge_config.inject(zip_path, config)
    assert zip_path.read_bytes() == first, "same code and config must give the same bundle bytes"
    with zipfile.ZipFile(zip_path) as z:
        assert z.namelist() == ["index.mjs", "edgethumb.node", "edgethumb.json"]
        assert z.read("edgethumb.json") == config
        assert z.read("edgethumb.node") == files["edgethumb.node"]
        info = z.getinfo("edgethumb.json")
        assert info.date_time == (1980, 1, 1, 0, 0, 0)
        assert (info.external_attr >> 16) & 0o777 == 0o644
    report = check_deploy.Report()
    check_deploy.check_edge_bundle(zip_path, "index.handler", False, report)
    assert report.violations == []


def test_inject_adds_a_config_to_a_bundle_without_one(tmp_path):
    zip_path = bundle(tmp_path / "edge.zip", {"index.mjs": b""})
    edge_config.inject(zip_path, b'{"queue_url": "u"}\n')
    with zipfile.ZipFile(zip_path) as z:
        assert z.read("edgethumb.json") == b'{"queue_url": "u"}\n'


def test_cli_generate_then_inject(tmp_path):
    out = tmp_path / "edgethumb.json"
    result = run_cli("cli", "edge-config", "generate", "--outputs", "-", "--settings", SETTINGS, "-o", out, stdin=json.dumps(OUTPUTS))
    assert result.returncode == 0, result.stderr
    assert json.loads(out.read_text())["queue_url"] == QUEUE_URL
    zip_path = bundle(tmp_path / "edge.zip", {"index.mjs": b""})
    result = run_cli("inject", "--zip", zip_path, "--config", out)
    assert result.returncode == 0, result.stderr
    with zipfile.ZipFile(zip_path) as z:
        assert z.read("edgethumb.json") == out.read_bytes()


@pytest.mark.parametrize("text, reason", [("{not json", "key must be a string"), ('{"queue_url": "u"}', "missing field `queue_region`"), ('{"queue_url": "u", "queue_region": "r", "response_budget_bytes": 1000001}', "must be between 16384 and 1000000")])
def test_cli_refuses_to_bake_a_config_the_edge_would_refuse(tmp_path, text, reason):
    bad = tmp_path / "edgethumb.json"
    bad.write_text(text)
    zip_path = bundle(tmp_path / "edge.zip", {"index.mjs": b""})
    before = zip_path.read_bytes()
    result = run_cli("inject", "--zip", zip_path, "--config", bad)
    assert result.returncode == 1 and result.stderr.startswith("edge_config: ")
    assert reason in result.stderr
    assert zip_path.read_bytes() == before
