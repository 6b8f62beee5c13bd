"""Tests of scripts/viewer_function.py and its place in scripts/check_deploy.py: the real
template associates the viewer-request CloudFront Function (edge/js/viewer-request.js, with
its KeyValueStore) on the variants behaviour; broken copies are refused; `sync` rewrites a
stale copy of the code and nothing else.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
from cfnlint.decode import decode

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "deploy" / "template.yaml"
SOURCE = ROOT / "edge" / "js" / "viewer-request.js"
SCRIPT = ROOT / "scripts" / "viewer_function.py"
CHECK = ROOT / "scripts" / "check_deploy.py"

_spec = importlib.util.spec_from_file_location("viewer_function", SCRIPT)
viewer_function = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(viewer_function)


@pytest.fixture(scope="module")
def real() -> dict:
    data, errors = decode(str(TEMPLATE))
    assert not errors, errors
    return data


def problems(data: dict) -> list[str]:
    found: list[str] = []
    viewer_function.check(data["Resources"], lambda where, what: found.append(f"{where}: {what}"))
    return found


def variants_behaviour(data: dict) -> dict:
    config = data["Resources"]["Distribution"]["Properties"]["DistributionConfig"]
    return next(b for b in config["CacheBehaviors"] if b["PathPattern"] == "*@*")


def test_real_template_associates_the_function_on_viewer_request_of_variants(real):
    assert problems(real) == []
    (assoc,) = variants_behaviour(real)["FunctionAssociations"]
    assert assoc["EventType"] == "viewer-request"
    fn = real["Resources"]["ViewerRequestFunction"]
    assert fn["Type"] == "AWS::CloudFront::Function"
    assert fn["Properties"]["FunctionConfig"]["Runtime"] == "cloudfront-js-2.0"
    (store,) = fn["Properties"]["FunctionConfig"]["KeyValueStoreAssociations"]
    assert real["Resources"]["ViewerSettings"]["Type"] == "AWS::CloudFront::KeyValueStore"
    assert viewer_function.getatt_target(store["KeyValueStoreARN"]) == ("ViewerSettings", "Arn")
    # Originals are not run through it (each call is billed, and rule 1 passes them anyway).
    config = real["Resources"]["Distribution"]["Properties"]["DistributionConfig"]
    assert "FunctionAssociations" not in config["DefaultCacheBehavior"]


def test_inline_code_is_the_function_file_and_fits_10_kb(real):
    code = real["Resources"]["ViewerRequestFunction"]["Properties"]["FunctionCode"]
    assert code == SOURCE.read_text(encoding="utf-8")
    assert len(code.encode()) <= 10 * 1024
    assert "cf.kvs()" in code and "__EDGETHUMB" not in code


def test_check_deploy_runs_the_viewer_checks(tmp_path, real):
    data = copy.deepcopy(real)
    del variants_behaviour(data)["FunctionAssociations"]
    path = tmp_path / "template.json"
    path.write_text(json.dumps(data))
    result = subprocess.run([sys.executable, str(CHECK), str(path), "--no-edge-zip"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "runs no viewer-request CloudFront Function" in result.stdout
    ok = subprocess.run([sys.executable, str(CHECK), str(TEMPLATE), "--no-edge-zip"], capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "viewer-request function ViewerRequestFunction" in ok.stdout


def _no_association(data):
    del variants_behaviour(data)["FunctionAssociations"]


def _origin_event(data):
    variants_behaviour(data)["FunctionAssociations"][0]["EventType"] = "viewer-response"


def _on_default_only(data):
    config = data["Resources"]["Distribution"]["Properties"]["DistributionConfig"]
    config["DefaultCacheBehavior"]["FunctionAssociations"] = variants_behaviour(data).pop("FunctionAssociations")


def _runtime_1(data):
    data["Resources"]["ViewerRequestFunction"]["Properties"]["FunctionConfig"]["Runtime"] = "cloudfront-js-1.0"


def _no_store(data):
    del data["Resources"]["ViewerRequestFunction"]["Properties"]["FunctionConfig"]["KeyValueStoreAssociations"]


def _store_outside(data):
    props = data["Resources"]["ViewerRequestFunction"]["Properties"]["FunctionConfig"]
    props["KeyValueStoreAssociations"][0]["KeyValueStoreARN"] = "arn:aws:cloudfront::123456789012:key-value-store/x"


def _not_published(data):
    data["Resources"]["ViewerRequestFunction"]["Properties"]["AutoPublish"] = False


def _stale_code(data):
    props = data["Resources"]["ViewerRequestFunction"]["Properties"]
    props["FunctionCode"] = props["FunctionCode"].replace("'bad signature'", "'wrong signature'")


def _too_big(data):
    props = data["Resources"]["ViewerRequestFunction"]["Properties"]
    props["FunctionCode"] += "//" + "x" * 1024 + "\n"


@pytest.mark.parametrize(
    "change, needle",
    [
        (_no_association, "runs no viewer-request CloudFront Function"),
        (_origin_event, "runs no viewer-request CloudFront Function"),
        (_on_default_only, "runs no viewer-request CloudFront Function"),
        (_runtime_1, "cloudfront-js-2.0"),
        (_no_store, "0 KeyValueStore associations"),
        (_store_outside, "is not !GetAtt <AWS::CloudFront::KeyValueStore"),
        (_not_published, "AutoPublish"),
        (_stale_code, "differs from edge/js/viewer-request.js"),
        (_too_big, "over CloudFront Functions' 10240-byte limit"),
    ],
)
def test_broken_copies_are_refused(real, change, needle):
    data = copy.deepcopy(real)
    change(data)
    found = problems(data)
    assert any(needle in line for line in found), found


def test_sync_rewrites_a_stale_copy_and_nothing_else(tmp_path):
    text = TEMPLATE.read_text(encoding="utf-8")
    stale = text.replace("'bad signature'", "'old message'", 1)
    assert stale != text
    path = tmp_path / "template.yaml"
    path.write_text(stale, encoding="utf-8")
    result = subprocess.run([sys.executable, str(SCRIPT), "sync", "--template", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert path.read_text(encoding="utf-8") == text
    assert viewer_function.synced(text, SOURCE.read_text(encoding="utf-8")) == text
