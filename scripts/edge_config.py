#!/usr/bin/env python3
"""The edge bundle's configuration: generated from the stack, baked into edge.zip.

Lambda@Edge has no environment variables, so the edge reads `edgethumb.json` beside its
`index.mjs` (src/edge/config.rs). This is the one place that says where each key comes
from, so nobody hand-edits queue URLs:

* from the stack's outputs: queue_url (QueueUrl), queue_region (QueueRegion),
  bucket_region (BucketRegion);
* from deploy/edge-settings.json, tuning a person may change: response_budget_bytes,
  provisional_cache_control, max_source_bytes, ... (any key EdgeConfig accepts except the
  stack's own and endpoint_url, which only tests use).

    edge_config.py generate --outputs outputs.json [--settings deploy/edge-settings.json] -o edgethumb.json
    edge_config.py inject --zip target/lambda/edge.zip --config edgethumb.json

`outputs.json` is what `sam list stack-outputs --output json` or
`aws cloudformation describe-stacks --query Stacks[0].Outputs` prints. `inject` rewrites the
zip with the config at its root and fixed timestamps, so the same code and config always
give the same bytes (and so the same Lambda version).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SETTINGS = ROOT / "deploy" / "edge-settings.json"
CONFIG_NAME = "edgethumb.json"

# Keys of EdgeConfig (src/edge/config.rs; deny_unknown_fields there, so a stray key here
# would fail every cold start). deploy/tests checks this list against the Rust struct.
EDGE_CONFIG_KEYS = {
    "queue_url",
    "queue_region",
    "bucket_region",
    "endpoint_url",
    "response_budget_bytes",
    "provisional_cache_control",
    "error_cache_control",
    "retry_after_seconds",
    "max_source_bytes",
    "max_source_pixels",
    "render_deadline_ms",
}
FROM_STACK = {"queue_url": "QueueUrl", "queue_region": "QueueRegion", "bucket_region": "BucketRegion"}
NOT_SETTABLE = set(FROM_STACK) | {"endpoint_url"}
GENERATED_RESPONSE_LIMIT_BYTES = 1_000_000

# 1980-01-01, the earliest time a zip entry can carry: no build clock in the bundle.
FIXED_ZIP_TIME = (1980, 1, 1, 0, 0, 0)


class ConfigError(Exception):
    pass


def outputs_by_key(outputs: object) -> dict[str, str]:
    """Accept a list of {OutputKey, OutputValue} or a plain {key: value} object."""
    if isinstance(outputs, dict) and "Stacks" in outputs:
        outputs = outputs["Stacks"][0].get("Outputs", [])
    if isinstance(outputs, list):
        return {str(o["OutputKey"]): str(o["OutputValue"]) for o in outputs}
    if isinstance(outputs, dict):
        return {str(k): str(v) for k, v in outputs.items()}
    raise ConfigError("stack outputs are neither a list of OutputKey/OutputValue nor an object")


def generate(outputs: object, settings: dict) -> dict:
    stack = outputs_by_key(outputs)
    unknown = sorted(set(settings) - EDGE_CONFIG_KEYS)
    if unknown:
        raise ConfigError(f"unknown edge setting(s) {', '.join(unknown)}; EdgeConfig accepts {', '.join(sorted(EDGE_CONFIG_KEYS - NOT_SETTABLE))}")
    fixed = sorted(set(settings) & NOT_SETTABLE)
    if fixed:
        raise ConfigError(f"{', '.join(fixed)} come(s) from the stack, not from the settings file")
    missing = sorted(output for output in FROM_STACK.values() if not stack.get(output))
    if missing:
        raise ConfigError(f"stack outputs lack {', '.join(missing)}; is this the edgethumb stack?")
    budget = settings.get("response_budget_bytes")
    if budget is not None and (not isinstance(budget, int) or not 0 < budget <= GENERATED_RESPONSE_LIMIT_BYTES):
        raise ConfigError(f"response_budget_bytes {budget!r} must be an integer in 1..{GENERATED_RESPONSE_LIMIT_BYTES}")
    config = {key: stack[output] for key, output in FROM_STACK.items()}
    config.update(settings)
    return config


def render(config: dict) -> bytes:
    return (json.dumps(config, indent=2, sort_keys=True) + "\n").encode("utf-8")


def inject(zip_path: Path, config_bytes: bytes) -> None:
    """Put edgethumb.json at the bundle's root, replacing any there; deterministic output."""
    with zipfile.ZipFile(zip_path) as source:
        entries = [(info, source.read(info)) for info in source.infolist() if info.filename != CONFIG_NAME]
    config_info = zipfile.ZipInfo(CONFIG_NAME, date_time=FIXED_ZIP_TIME)
    config_info.compress_type = zipfile.ZIP_DEFLATED
    config_info.external_attr = (0o100644 & 0xFFFF) << 16
    config_info.create_system = 3  # unix, so the mode above is honoured
    entries.append((config_info, config_bytes))
    handle, temp = tempfile.mkstemp(dir=zip_path.parent, prefix=".edge-", suffix=".zip")
    os.close(handle)
    try:
        with zipfile.ZipFile(temp, "w") as target:
            for info, data in entries:
                target.writestr(info, data, compress_type=info.compress_type)
        os.replace(temp, zip_path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    gen = commands.add_parser("generate", help="write edgethumb.json from stack outputs and settings")
    gen.add_argument("--outputs", type=Path, required=True, help="stack outputs as JSON ('-' for stdin)")
    gen.add_argument("--settings", type=Path, default=DEFAULT_SETTINGS)
    gen.add_argument("-o", "--output", type=Path, required=True)
    inj = commands.add_parser("inject", help="bake a config file into the edge bundle")
    inj.add_argument("--zip", type=Path, required=True)
    inj.add_argument("--config", type=Path, required=True)
    args = parser.parse_args(argv)

    try:
        if args.command == "generate":
            text = sys.stdin.read() if str(args.outputs) == "-" else args.outputs.read_text(encoding="utf-8")
            settings = json.loads(args.settings.read_text(encoding="utf-8")) if args.settings.exists() else {}
            if not isinstance(settings, dict):
                raise ConfigError(f"{args.settings} is not a JSON object")
            args.output.write_bytes(render(generate(json.loads(text), settings)))
            print(f"edge_config: wrote {args.output}")
        else:
            config = args.config.read_bytes()
            json.loads(config)  # refuse to bake a file the edge could not parse
            inject(args.zip, config)
            print(f"edge_config: baked {args.config.name} into {args.zip} ({args.zip.stat().st_size:,} bytes)")
    except (ConfigError, OSError, json.JSONDecodeError, zipfile.BadZipFile, KeyError) as error:
        print(f"edge_config: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
