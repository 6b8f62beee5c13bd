#!/usr/bin/env python3
"""The edge bundle's configuration, baked into edge.zip.

Lambda@Edge has no environment variables, so the edge reads `edgethumb.json` beside its
`index.mjs`. Its keys and bounds are stated once, in Rust (`EdgeConfig`, src/edge/config.rs):
the `edgethumb` CLI writes the file from the stack's outputs and checks it, with the very
parser the edge runs at its cold start:

    edgethumb edge-config generate --outputs outputs.json [--settings deploy/edge-settings.json] -o edgethumb.json
    edgethumb edge-config check edgethumb.json

This script only finds (or builds) that CLI for the other scripts, and bakes a file into the
zip:

    edge_config.py inject --zip target/lambda/edge.zip --config edgethumb.json
    edge_config.py cli edge-config check edgethumb.json     # the CLI, found or built

`inject` rewrites the zip with the config at its root and fixed timestamps, so the same code
and config always give the same bytes (and so the same Lambda version).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFIG_NAME = "edgethumb.json"

# 1980-01-01, the earliest time a zip entry can carry: no build clock in the bundle.
FIXED_ZIP_TIME = (1980, 1, 1, 0, 0, 0)


@functools.lru_cache(maxsize=1)
def edgethumb_command() -> list[str]:
    """The host's `edgethumb` CLI: $EDGETHUMB_BIN, else built here (a no-op when the tests'
    `cargo test --workspace` already built it; `--workspace` so cargo resolves the same
    features and reuses that build) and run from cargo's target directory."""
    given = os.environ.get("EDGETHUMB_BIN", "").strip()
    if given:
        return [given]
    build = subprocess.run(["cargo", "build", "--quiet", "--workspace", "--bin", "edgethumb"], cwd=ROOT, capture_output=True, text=True)
    if build.returncode != 0:
        raise ConfigError(f"cannot build the edgethumb CLI (cargo build --workspace --bin edgethumb):\n{build.stderr.strip()}")
    metadata = subprocess.run(["cargo", "metadata", "--format-version", "1", "--no-deps"], cwd=ROOT, capture_output=True, text=True, check=True)
    return [str(Path(json.loads(metadata.stdout)["target_directory"]) / "debug" / "edgethumb")]


def edgethumb(*args: str | Path, stdin: str | None = None) -> subprocess.CompletedProcess:
    """Run the `edgethumb` CLI with `args`; its output captured as text."""
    return subprocess.run([*edgethumb_command(), *map(str, args)], input=stdin, capture_output=True, text=True, timeout=120)


def check_text(text: str, name: str) -> str | None:
    """None if the edge would accept `text` as its config, else the edge's reason."""
    result = edgethumb("edge-config", "check", "-", "--name", name, stdin=text)
    if result.returncode == 0:
        return None
    reason = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else f"edgethumb exited {result.returncode}"
    return reason.removeprefix("edgethumb: ").removeprefix(f"invalid edge config {name}: ")


class ConfigError(Exception):
    pass


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
    inj = commands.add_parser("inject", help="bake a config file into the edge bundle")
    inj.add_argument("--zip", type=Path, required=True)
    inj.add_argument("--config", type=Path, required=True)
    cli = commands.add_parser("cli", help="run the edgethumb CLI (found or built) with the remaining arguments")
    cli.add_argument("args", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)

    try:
        if args.command == "cli":
            return subprocess.run([*edgethumb_command(), *args.args]).returncode
        config = args.config.read_bytes()
        reason = check_text(config.decode("utf-8", "replace"), str(args.config))
        if reason:  # refuse to bake a file the edge would refuse at its cold start
            raise ConfigError(reason)
        inject(args.zip, config)
        print(f"edge_config: baked {args.config.name} into {args.zip} ({args.zip.stat().st_size:,} bytes)")
    except (ConfigError, OSError, zipfile.BadZipFile, subprocess.SubprocessError) as error:
        print(f"edge_config: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
