"""Shared parts of the chaos runs (docs/reliability.md, "Chaos runs").

moto_server and scripts/faultproxy.py on free 127.0.0.1 ports, boto3 clients that talk to
moto directly (setup and verification never go through the faults), seeded originals and
variant requests, and the checks every run ends with: each variant decodes (Pillow, a
decoder independent of ours), has the requested size and format, the tag createByLambda=1
and our metadata, and is never a truncated object.

Everything here is bounded: every wait has a deadline, every process is stopped on exit.
"""

from __future__ import annotations

import io
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import boto3
from botocore.config import Config
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
REGION = "us-east-1"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}


def log(message: str) -> None:
    print(f"chaos: {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def edgethumb_bin() -> str:
    """The CLI binary: EDGETHUMB_BIN, else the debug build of this checkout."""
    explicit = os.environ.get("EDGETHUMB_BIN")
    if explicit:
        return explicit
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    path = target / "debug" / "edgethumb"
    if not path.exists():
        sys.exit(f"chaos: {path} not found: cargo build --workspace --bin edgethumb (or set EDGETHUMB_BIN)")
    return str(path)


def aws_env(endpoint: str) -> dict[str, str]:
    """The environment a CLI child gets: dummy credentials, the endpoint, nothing else AWS."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(CREDENTIALS)
    env.update(
        AWS_REGION=REGION,
        AWS_DEFAULT_REGION=REGION,
        AWS_EC2_METADATA_DISABLED="true",
        AWS_ENDPOINT_URL=endpoint,
    )
    return env


class Processes:
    """Children started by a run; all stopped (TERM, then KILL) when the run ends."""

    def __init__(self) -> None:
        self.children: list[subprocess.Popen] = []

    def start(self, args, **kwargs) -> subprocess.Popen:
        child = subprocess.Popen(args, **kwargs)
        self.children.append(child)
        return child

    def stop_all(self) -> None:
        for child in reversed(self.children):
            stop(child)


def stop(child: subprocess.Popen, sig: int = signal.SIGTERM, grace_s: float = 10.0) -> int | None:
    if child.poll() is None:
        child.send_signal(sig)
        try:
            child.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait(timeout=10)
    return child.returncode


@dataclass
class Backend:
    """moto_server plus a fault proxy in front of it."""

    moto_url: str
    proxy_url: str
    proxy_log: Path
    processes: Processes

    def s3(self):
        return client("s3", self.moto_url)

    def sqs(self):
        return client("sqs", self.moto_url)

    def proxy_config(self, **settings) -> dict:
        request = urllib.request.Request(
            f"{self.proxy_url}/__faultproxy/config",
            data=json.dumps(settings).encode(),
            method="POST",
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as r:
            return json.loads(r.read())

    def proxy_stats(self) -> dict:
        with urllib.request.urlopen(f"{self.proxy_url}/__faultproxy/stats", timeout=10) as r:
            return json.loads(r.read())


def client(service: str, endpoint: str):
    return boto3.client(
        service,
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=Config(retries={"mode": "standard", "max_attempts": 5}, s3={"addressing_style": "path"}),
    )


def start_backend(workdir: Path, processes: Processes, fault_rate: float, seed: int, kinds: list[str] | None) -> Backend:
    venv_bin = Path(sys.executable).parent
    moto = venv_bin / "moto_server"
    moto_port = free_port()
    moto_log = open(workdir / "moto.log", "wb")
    processes.start([str(moto), "-H", "127.0.0.1", "-p", str(moto_port)], stdout=moto_log, stderr=subprocess.STDOUT)
    moto_url = f"http://127.0.0.1:{moto_port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(f"{moto_url}/moto-api/", timeout=2).read()
            break
        except OSError:
            if time.monotonic() > deadline:
                sys.exit("chaos: moto_server did not start in 60 s (see moto.log)")
            time.sleep(0.2)
    proxy_log = workdir / "faults.jsonl"
    args = [
        sys.executable, str(ROOT / "scripts" / "faultproxy.py"),
        "--upstream", moto_url, "--port", "0",
        "--fault-rate", str(fault_rate), "--seed", str(seed),
        "--log", str(proxy_log),
    ]
    if kinds:
        args += ["--kinds", ",".join(kinds)]
    proxy = processes.start(args, stdout=subprocess.PIPE, stderr=open(workdir / "proxy.stderr", "wb"))
    assert proxy.stdout is not None
    line = proxy.stdout.readline().decode().strip()  # the port, once it accepts connections
    if not line.isdigit():
        sys.exit(f"chaos: faultproxy did not report a port: {line!r}")
    log(f"moto {moto_url}, fault proxy http://127.0.0.1:{line} (rate {fault_rate}, seed {seed})")
    return Backend(moto_url, f"http://127.0.0.1:{line}", proxy_log, processes)


# ---- originals and variant requests ----

FORMATS = {"jpg": ("JPEG", "image/jpeg"), "png": ("PNG", "image/png"), "webp": ("WEBP", "image/webp")}


def make_original(rng: random.Random, width: int, height: int, fmt: str) -> bytes:
    """A small photo-like image: gradients and noise, deterministic from rng."""
    image = Image.new("RGB", (width, height))
    r0, g0, b0 = rng.randrange(256), rng.randrange(256), rng.randrange(256)
    pixels = [
        (
            (r0 + x * 3 + rng.randrange(24)) % 256,
            (g0 + y * 2 + rng.randrange(24)) % 256,
            (b0 + (x + y) + rng.randrange(24)) % 256,
        )
        for y in range(height)
        for x in range(width)
    ]
    image.putdata(pixels)
    out = io.BytesIO()
    image.save(out, FORMATS[fmt][0], **({"quality": 90} if fmt != "png" else {}))
    return out.getvalue()


@dataclass
class Original:
    key: str
    width: int
    height: int
    fmt: str
    etag: str = ""


@dataclass
class Variant:
    """A requested variant and what it must look like."""

    key: str
    original: Original
    params: str  # canonical, as the worker writes it in metadata
    fmt: str  # output format extension
    # (width, height) exactly, or a rule: ("w", w) / ("h", h) / ("fit", w, h)
    size: tuple


def make_originals(rng: random.Random, count: int) -> list[tuple[Original, bytes]]:
    out = []
    for i in range(count):
        fmt = ("jpg", "png", "webp")[i % 3]
        width, height = rng.randrange(80, 161), rng.randrange(64, 129)
        out.append((Original(f"orig/photo-{i:03d}.{fmt}", width, height, fmt), make_original(rng, width, height, fmt)))
    return out


def make_variants(rng: random.Random, originals: list[Original], count: int, search_share: float = 0.05) -> list[Variant]:
    """`count` distinct variants: five geometry kinds, three output formats, mostly with an
    explicit q (a few leave q to the worker's quality search)."""
    seen: set[str] = set()
    out: list[Variant] = []
    attempts = 0
    while len(out) < count:
        attempts += 1
        if attempts > count * 50:
            raise RuntimeError("cannot draw enough distinct variants")
        o = rng.choice(originals)
        kind = rng.randrange(5)
        w, h = rng.randrange(8, 65), rng.randrange(8, 65)
        fmt = rng.choice(["jpg", "png", "webp", ""])
        out_fmt = fmt or o.fmt
        q = "" if out_fmt == "png" or rng.random() < search_share else f"_{rng.randrange(40, 96)}q"
        if kind == 0:
            tokens, size = f"{w}w", ("w", w)
        elif kind == 1:
            tokens, size = f"{h}h", ("h", h)
        elif kind == 2:
            tokens, size = f"{w}w_{h}h_2e", (w, h)
        elif kind == 3:
            tokens, size = f"{w}w_{h}h_1e_1c", (w, h)
        else:
            tokens, size = f"{w}w_{h}h", ("fit", w, h)
        params = tokens + q + (f".{fmt}" if fmt else "")
        key = f"{o.key}@{params}"
        if key in seen:
            continue
        seen.add(key)
        out.append(Variant(key, o, params, out_fmt, size))
    return out


def expected_size_ok(v: Variant, width: int, height: int) -> bool:
    ow, oh = v.original.width, v.original.height
    rule = v.size
    if isinstance(rule[0], int):
        return (width, height) == rule
    if rule[0] == "w":
        return width == rule[1] and abs(height - oh * rule[1] / ow) <= 1
    if rule[0] == "h":
        return height == rule[1] and abs(width - ow * rule[1] / oh) <= 1
    _, w, h = rule  # fit inside w x h, aspect kept, one side touching
    scale = min(w / ow, h / oh)
    return abs(width - ow * scale) <= 1 and abs(height - oh * scale) <= 1 and width <= w and height <= h


# ---- verification ----


@dataclass
class Verdict:
    ok: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    wrong: list[tuple[str, str]] = field(default_factory=list)


def check_variant(s3, bucket: str, v: Variant) -> str | None:
    """None if the object under v.key is a correct variant, else what is wrong with it."""
    try:
        got = s3.get_object(Bucket=bucket, Key=v.key)
    except s3.exceptions.NoSuchKey:
        return "missing"
    body = got["Body"].read()
    if len(body) != got["ContentLength"]:
        return f"body {len(body)} bytes, Content-Length {got['ContentLength']}"
    pil_format, content_type = FORMATS[v.fmt]
    try:
        image = Image.open(io.BytesIO(body))
        image.load()  # a truncated file fails here
    except Exception as e:  # noqa: BLE001 - any decode failure is the finding
        return f"does not decode: {e}"
    if image.format != pil_format:
        return f"format {image.format}, expected {pil_format}"
    if got.get("ContentType") != content_type:
        return f"Content-Type {got.get('ContentType')}, expected {content_type}"
    if not expected_size_ok(v, image.width, image.height):
        return f"size {image.width}x{image.height} for {v.params} of {v.original.width}x{v.original.height}"
    meta = got.get("Metadata", {})
    if meta.get("params") != v.params:
        return f"metadata params {meta.get('params')!r}, expected {v.params!r}"
    if meta.get("original-etag") != v.original.etag:
        return f"metadata original-etag {meta.get('original-etag')!r}, expected {v.original.etag!r}"
    if not meta.get("edgethumb-version"):
        return "no edgethumb-version metadata"
    tags = {t["Key"]: t["Value"] for t in s3.get_object_tagging(Bucket=bucket, Key=v.key)["TagSet"]}
    if tags.get("createByLambda") != "1":
        return f"tags {tags}"
    return None


def drain_messages(sqs, queue_url: str, deadline_s: float = 60) -> list[str]:
    """Every message body on a queue (received with a long visibility, so each once)."""
    bodies: list[str] = []
    deadline = time.monotonic() + deadline_s
    empty = 0
    while time.monotonic() < deadline and empty < 2:
        r = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, VisibilityTimeout=600, WaitTimeSeconds=0)
        messages = r.get("Messages", [])
        empty = empty + 1 if not messages else 0
        bodies.extend(m["Body"] for m in messages)
    return bodies


def queue_depth(sqs, queue_url: str) -> tuple[int, int]:
    a = sqs.get_queue_attributes(
        QueueUrl=queue_url, AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    )["Attributes"]
    return int(a["ApproximateNumberOfMessages"]), int(a["ApproximateNumberOfMessagesNotVisible"])


def create_queues(sqs, name: str, max_receive_count: int, visibility_s: int) -> tuple[str, str]:
    dlq = sqs.create_queue(QueueName=f"{name}-dlq")["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    main = sqs.create_queue(
        QueueName=name,
        Attributes={
            "VisibilityTimeout": str(visibility_s),
            "RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": str(max_receive_count)}),
        },
    )["QueueUrl"]
    return main, dlq


def upload_originals(s3, bucket: str, originals: list[tuple[Original, bytes]]) -> None:
    for o, body in originals:
        r = s3.put_object(Bucket=bucket, Key=o.key, Body=body, ContentType=FORMATS[o.fmt][1])
        o.etag = r["ETag"]


def faults_by_kind(backend: Backend) -> dict:
    stats = backend.proxy_stats()
    return {
        "requests": stats.get("requests"),
        "faults_by_kind": stats.get("faults_by_kind"),
        "faults": stats.get("faults"),
    }


def json_lines(path: Path) -> list[dict]:
    out = []
    if not path.exists():
        return out
    for line in path.read_text(errors="replace").splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    return out


def moto_puts(moto_log: Path, bucket: str) -> Counter:
    """PutObject requests moto answered 200, per variant key (from moto's access log)."""
    from urllib.parse import unquote

    out: Counter = Counter()
    pattern = re.compile(r'"PUT /' + re.escape(bucket) + r'/(\S+) HTTP/1\.1" 200 ')
    for line in moto_log.read_text(errors="replace").splitlines():
        m = pattern.search(line)
        if m:
            key = unquote(m.group(1).split("?", 1)[0])
            if "@" in key:
                out[key] += 1
    return out


def percentile(values: list[float], p: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(p / 100 * len(ordered) + 0.5) - 1))
    return ordered[index]
