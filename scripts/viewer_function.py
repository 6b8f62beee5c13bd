#!/usr/bin/env python3
"""The viewer-request CloudFront Function in deploy/template.yaml (docs/deploy.md).

CloudFormation takes a CloudFront Function's code only inline (`FunctionCode`), so the
template carries a copy of edge/js/viewer-request.js, the one source. This script:

* `sync [--template T]`: rewrites the template's `FunctionCode: |` block of the function
  from edge/js/viewer-request.js (run it after editing the function);
* `check [--template T]`: the rules below, also run by scripts/check_deploy.py (so by
  scripts/validate_deploy.sh, CI and scripts/deploy.sh).

The rules, on the template as CloudFormation reads it:

* the variants behaviour (`*@*`) of every distribution runs one AWS::CloudFront::Function of
  this template on viewer-request (so every variant request is canonicalised and guarded
  before the cache lookup);
* that function: runtime cloudfront-js-2.0 (KeyValueStore access and async handlers need
  it), `AutoPublish: true` (a distribution runs the LIVE stage), exactly one KeyValueStore
  association, naming an AWS::CloudFront::KeyValueStore of this template (the code calls
  `cf.kvs()` without an id, which means the one associated store);
* its code is byte for byte edge/js/viewer-request.js and at most 10 KB (CloudFront
  Functions' size quota).

The code needs no deploy-time substitution: `cf.kvs()` without an id is the associated
store (AWS's "Helper methods for key value stores").
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "deploy" / "template.yaml"
SOURCE = ROOT / "edge" / "js" / "viewer-request.js"

# CloudFront Functions quotas ("Quotas on CloudFront Functions"): code size 10 KB.
MAX_CODE_BYTES = 10 * 1024
RUNTIME = "cloudfront-js-2.0"
VARIANTS_PATH_PATTERN = "*@*"
FUNCTION_TYPE = "AWS::CloudFront::Function"
KVS_TYPE = "AWS::CloudFront::KeyValueStore"
# The line that opens the code block in the template, and the code's indentation in it.
CODE_KEY = "      FunctionCode: |"
CODE_INDENT = " " * 8

Add = Callable[[str, str], None]


def getatt_target(value: Any) -> tuple[str, str] | None:
    """(resource, attribute) of an Fn::GetAtt, in either of its spellings."""
    if not isinstance(value, dict) or list(value) != ["Fn::GetAtt"]:
        return None
    arg = value["Fn::GetAtt"]
    if isinstance(arg, str) and "." in arg:
        resource, attribute = arg.split(".", 1)
        return resource, attribute
    if isinstance(arg, list) and len(arg) == 2 and all(isinstance(a, str) for a in arg):
        return arg[0], arg[1]
    return None


def check(resources: dict, add: Add, source: Path = SOURCE) -> list[str]:
    """Check the rules of the module docstring; return the functions checked."""
    checked: list[str] = []
    code = source.read_text(encoding="utf-8")
    distributions = {k: r for k, r in resources.items() if r.get("Type") == "AWS::CloudFront::Distribution"}
    for dist_id, dist in distributions.items():
        config = (dist.get("Properties") or {}).get("DistributionConfig") or {}
        variants = [b for b in config.get("CacheBehaviors") or [] if b.get("PathPattern") == VARIANTS_PATH_PATTERN]
        where = f"{dist_id} CacheBehaviors[{VARIANTS_PATH_PATTERN}]"
        if not variants:
            add(dist_id, f"no {VARIANTS_PATH_PATTERN} cache behaviour for variants")
            continue
        viewer = [a for a in variants[0].get("FunctionAssociations") or [] if a.get("EventType") == "viewer-request"]
        if len(viewer) != 1:
            add(where, "runs no viewer-request CloudFront Function (edge/js/viewer-request.js): variants are neither canonicalised nor guarded")
            continue
        target = getatt_target(viewer[0].get("FunctionARN"))
        if not target or target[1] != "FunctionARN" or (resources.get(target[0]) or {}).get("Type") != FUNCTION_TYPE:
            add(where, f"viewer-request FunctionARN {viewer[0].get('FunctionARN')!r} is not !GetAtt <{FUNCTION_TYPE} of this template>.FunctionARN")
            continue
        fn = target[0]
        if fn not in checked:
            check_function(fn, resources, add, code, source)
            checked.append(fn)
    return checked


def check_function(fn: str, resources: dict, add: Add, code: str, source: Path) -> None:
    props = resources[fn].get("Properties") or {}
    config = props.get("FunctionConfig") or {}
    if config.get("Runtime") != RUNTIME:
        add(fn, f"runtime {config.get('Runtime')!r}; the function needs {RUNTIME} (KeyValueStore, async handler)")
    if props.get("AutoPublish") is not True:
        add(fn, "AutoPublish is not true: the distribution would keep running the previous LIVE code")
    stores = config.get("KeyValueStoreAssociations") or []
    if len(stores) != 1:
        add(fn, f"{len(stores)} KeyValueStore associations; the code reads cf.kvs(), which needs exactly one")
    else:
        target = getatt_target(stores[0].get("KeyValueStoreARN"))
        if not target or target[1] != "Arn" or (resources.get(target[0]) or {}).get("Type") != KVS_TYPE:
            add(fn, f"KeyValueStoreARN {stores[0].get('KeyValueStoreARN')!r} is not !GetAtt <{KVS_TYPE} of this template>.Arn")
    inline = props.get("FunctionCode")
    if not isinstance(inline, str):
        add(fn, "FunctionCode is not a literal string (the code must need no substitution)")
        return
    size = len(inline.encode("utf-8"))
    if size > MAX_CODE_BYTES:
        add(fn, f"code is {size} bytes, over CloudFront Functions' {MAX_CODE_BYTES}-byte limit")
    if inline != code:
        add(fn, f"FunctionCode differs from {source.relative_to(ROOT) if source.is_relative_to(ROOT) else source}: run python3 scripts/viewer_function.py sync")


def synced(template_text: str, code: str) -> str:
    """The template text with the function's code block replaced by `code`."""
    lines = template_text.split("\n")
    starts = [i for i, line in enumerate(lines) if line == CODE_KEY]
    if len(starts) != 1:
        raise ValueError(f"expected one line {CODE_KEY.strip()!r} in the template, found {len(starts)}")
    start = starts[0] + 1
    end = start
    while end < len(lines) and (lines[end].startswith(CODE_INDENT) or lines[end] == ""):
        end += 1
    # Blank lines after the block belong to the template, not the code.
    while end > start and lines[end - 1] == "":
        end -= 1
    if not code.endswith("\n") or code.endswith("\n\n"):
        raise ValueError("the function's source must end with exactly one newline (YAML's `|` keeps one)")
    body = [CODE_INDENT + line if line else "" for line in code[:-1].split("\n")]
    return "\n".join(lines[:start] + body + lines[end:])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["sync", "check"])
    parser.add_argument("--template", type=Path, default=TEMPLATE)
    args = parser.parse_args(argv)
    if args.command == "sync":
        text = args.template.read_text(encoding="utf-8")
        new = synced(text, SOURCE.read_text(encoding="utf-8"))
        if new != text:
            args.template.write_text(new, encoding="utf-8")
            print(f"viewer_function: {args.template} updated from {SOURCE.relative_to(ROOT)}")
        else:
            print(f"viewer_function: {args.template} already matches")
        return 0
    from cfnlint.decode import decode  # the deploy venv's cfn-lint, as check_deploy.py uses

    data, errors = decode(str(args.template))
    if errors or data is None:
        for error in errors or []:
            print(f"{args.template}: cannot parse: {error}", file=sys.stderr)
        return 2
    problems: list[str] = []
    checked = check(data.get("Resources") or {}, lambda where, what: problems.append(f"{where}: {what}"))
    for line in problems:
        print(line)
    if problems:
        return 1
    print(f"viewer_function: OK: {', '.join(checked)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
