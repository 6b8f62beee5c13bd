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
RUST_CONFIG = ROOT / "src" / "edge" / "config.rs"

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
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], input=stdin, capture_output=True, text=True, timeout=60)


def rust_config_fields() -> set[str]:
    text = RUST_CONFIG.read_text(encoding="utf-8")
    body = re.search(r"pub struct EdgeConfig \{(.*?)\n\}", text, re.S)
    assert body, f"no `pub struct EdgeConfig` in {RUST_CONFIG}"
    return set(re.findall(r"^\s*pub (\w+):", body.group(1), re.M))


def test_known_keys_are_exactly_the_rust_struct_fields():
    # The edge refuses unknown keys (deny_unknown_fields): a drift here breaks every cold start.
    assert edge_config.EDGE_CONFIG_KEYS == rust_config_fields()


def test_template_outputs_feed_every_stack_key():
    template = (ROOT / "deploy" / "template.yaml").read_text(encoding="utf-8")
    for output in edge_config.FROM_STACK.values():
        assert re.search(rf"^  {output}:$", template, re.M), f"template has no output {output}"


def test_generate_takes_queue_and_regions_from_the_stack_and_tuning_from_settings():
    config = edge_config.generate(OUTPUTS, {"response_budget_bytes": 900_000, "provisional_cache_control": "public, max-age=60"})
    assert config == {
        "queue_url": QUEUE_URL,
        "queue_region": "us-east-1",
        "bucket_region": "us-east-1",
        "response_budget_bytes": 900_000,
        "provisional_cache_control": "public, max-age=60",
    }


def test_generate_accepts_describe_stacks_output_too():
    config = edge_config.generate({"Stacks": [{"Outputs": OUTPUTS}]}, {})
    assert config["queue_url"] == QUEUE_URL


@pytest.mark.parametrize(
    "settings, needle",
    [
        ({"queue_ulr": "x"}, "unknown edge setting(s) queue_ulr"),
        ({"queue_url": "https://elsewhere"}, "queue_url come(s) from the stack"),
        ({"endpoint_url": "http://127.0.0.1:5000"}, "endpoint_url come(s) from the stack"),
        ({"response_budget_bytes": 1_000_001}, "response_budget_bytes 1000001 must be an integer in 1..1000000"),
        ({"response_budget_bytes": "990000"}, "must be an integer"),
    ],
)
def test_generate_refuses_bad_settings(settings, needle):
    with pytest.raises(edge_config.ConfigError, match=re.escape(needle)):
        edge_config.generate(OUTPUTS, settings)


def test_generate_refuses_outputs_of_another_stack():
    with pytest.raises(edge_config.ConfigError, match="lack BucketRegion, QueueRegion, QueueUrl"):
        edge_config.generate([{"OutputKey": "Something", "OutputValue": "else"}], {})


def test_shipped_settings_are_valid_and_within_the_response_limit():
    settings = json.loads(SETTINGS.read_text(encoding="utf-8"))
    config = edge_config.generate(OUTPUTS, settings)
    assert set(config) <= rust_config_fields()
    assert 16 * 1024 <= config["response_budget_bytes"] <= 1_000_000
    report = check_deploy.Report()
    check_deploy.check_edge_config_text(edge_config.render(config).decode(), "edgethumb.json", report)
    assert report.violations == []


def bundle(path: Path, files: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in files.items():
            z.writestr(name, data)
    return path


def test_inject_replaces_the_config_keeps_the_rest_and_is_deterministic(tmp_path):
    files = {"index.mjs": b"export const handler = 1;\n", "edgethumb.node": bytes(range(256)) * 64, "edgethumb.json": b"{}"}
    zip_path = bundle(tmp_path / "edge.zip", files)
    config = edge_config.render(edge_config.generate(OUTPUTS, {}))
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


def test_cli_generate_from_stdin_then_inject(tmp_path):
    out = tmp_path / "edgethumb.json"
    result = run_cli("generate", "--outputs", "-", "--settings", SETTINGS, "-o", out, stdin=json.dumps(OUTPUTS))
    assert result.returncode == 0, result.stderr
    assert json.loads(out.read_text())["queue_url"] == QUEUE_URL
    zip_path = bundle(tmp_path / "edge.zip", {"index.mjs": b""})
    result = run_cli("inject", "--zip", zip_path, "--config", out)
    assert result.returncode == 0, result.stderr
    with zipfile.ZipFile(zip_path) as z:
        assert z.read("edgethumb.json") == out.read_bytes()


def test_cli_refuses_to_bake_invalid_json(tmp_path):
    bad = tmp_path / "edgethumb.json"
    bad.write_text("{not json")
    zip_path = bundle(tmp_path / "edge.zip", {"index.mjs": b""})
    before = zip_path.read_bytes()
    result = run_cli("inject", "--zip", zip_path, "--config", bad)
    assert result.returncode == 1 and "edge_config:" in result.stderr
    assert zip_path.read_bytes() == before


def test_cli_reports_bad_settings_without_a_traceback(tmp_path):
    settings = tmp_path / "settings.json"
    settings.write_text(json.dumps({"queue_url": "x"}))
    result = run_cli("generate", "--outputs", "-", "--settings", settings, "-o", tmp_path / "o.json", stdin=json.dumps(OUTPUTS))
    assert result.returncode == 1
    assert result.stderr.strip() == "edge_config: queue_url come(s) from the stack, not from the settings file"
