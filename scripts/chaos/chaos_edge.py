"""Chaos run of the edge: misses through the packaged Lambda@Edge bundle (edge.zip: index.mjs +
edgethumb.node, built by scripts/package.sh) under real node, with a share of every S3 and
SQS call faulted by scripts/faultproxy.py; then `edgethumb work --once` drains the queue.

    .venv/bin/python scripts/chaos/chaos_edge.py --misses 2000 --seed 18     # full
    .venv/bin/python scripts/chaos/chaos_edge.py --short                     # test.sh

Checks: every response is a valid CloudFront answer within the edge's 30 s limit: the image
(decodes, right format and size, provisional Cache-Control), or a clean 5xx with
Retry-After and Cache-Control no-store (or a max-age of at most 60 s); bad requests get a 4xx
with a short cache; the handler never throws. Every miss whose job SQS accepted (the edge's
`edge.miss` log line says `job=sent`) leads to a correct variant once the worker drained
the queue. Exit 0 when all of that holds; figures as JSON on stdout.
"""

from __future__ import annotations

import argparse
import base64
import copy
import io
import json
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections import Counter
from pathlib import Path

from PIL import Image

import harness as h

BUCKET = "edgechaos"
EDGE_LIMIT_MS = 30_000  # Lambda@Edge's timeout for origin-facing triggers
PROVISIONAL_CACHE = "public, max-age=60"
ERROR_CACHE = "public, max-age=10"


def short_cache(value: str | None) -> bool:
    if not value:
        return False
    if "no-store" in value:
        return True
    m = re.search(r"max-age=(\d+)", value)
    return bool(m) and int(m.group(1)) <= 60


def header(response: dict, name: str) -> str | None:
    values = response.get("headers", {}).get(name.lower())
    return values[0]["value"] if values else None


def bundle_dir(workdir: Path) -> Path:
    import os

    given = os.environ.get("EDGETHUMB_EDGE_BUNDLE")
    out = workdir / "bundle"
    out.mkdir(exist_ok=True)
    if given:
        for name in ("index.mjs", "edgethumb.node"):
            shutil.copy(Path(given) / name, out / name)
    else:
        zipped = h.ROOT / "target" / "lambda" / "edge.zip"
        if not zipped.exists():
            sys.exit(f"chaos: {zipped} not found: EDGETHUMB_PACKAGE_ONLY=edge bash scripts/package.sh")
        with zipfile.ZipFile(zipped) as z:
            z.extract("index.mjs", out)
            z.extract("edgethumb.node", out)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--misses", type=int, default=2000)
    ap.add_argument("--bad-share", type=float, default=0.03, help="share of bad requests (4xx expected)")
    ap.add_argument("--fault-rate", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=18)
    ap.add_argument("--concurrency", type=int, default=4, help="events in flight in the one node process")
    ap.add_argument("--deadline", type=float, default=900)
    ap.add_argument("--short", action="store_true", help="the test.sh variant: 200 misses, 240 s")
    ap.add_argument("--workdir", type=Path)
    args = ap.parse_args()
    if args.short:
        args.misses = min(args.misses, 200)
        args.deadline = min(args.deadline, 240)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="chaos-edge-"))
    workdir.mkdir(parents=True, exist_ok=True)
    processes = h.Processes()
    try:
        return run(args, workdir, processes)
    finally:
        processes.stop_all()
        h.log(f"logs in {workdir}")


def run(args, workdir: Path, processes: h.Processes) -> int:
    started = time.monotonic()
    deadline = started + args.deadline
    rng = random.Random(args.seed)
    binary = h.edgethumb_bin()
    backend = h.start_backend(workdir, processes, args.fault_rate, args.seed, None)
    s3, sqs = backend.s3(), backend.sqs()
    s3.create_bucket(Bucket=BUCKET)
    queue_url, dlq_url = h.create_queues(sqs, "edge-jobs", 5, 30)
    originals = h.make_originals(rng, 24)
    h.upload_originals(s3, BUCKET, originals)

    bad_count = round(args.misses * args.bad_share)
    variants = h.make_variants(rng, [o for o, _ in originals], args.misses - bad_count)
    bad = []
    for i in range(bad_count):
        bad.append(("/orig/nothing-here.jpg@%dw.webp" % (10 + i)) if i % 2 else ("/orig/photo-000.jpg@%dz" % (i + 1)))
    requests = [("good", v.key, v) for v in variants] + [("bad", uri.lstrip("/"), None) for uri in bad]
    rng.shuffle(requests)

    template = json.loads((h.ROOT / "events" / "origin-response-miss-404.json").read_text())
    events = workdir / "events.jsonl"
    with events.open("w") as f:
        for n, (_, key, _) in enumerate(requests):
            e = copy.deepcopy(template)
            cf = e["Records"][0]["cf"]
            cf["request"]["uri"] = "/" + key
            cf["request"]["origin"]["s3"]["domainName"] = f"{BUCKET}.s3.amazonaws.com"
            cf["config"]["requestId"] = f"chaos-{n}"
            f.write(json.dumps(e) + "\n")

    bundle = bundle_dir(workdir)
    (bundle / "edgethumb.json").write_text(json.dumps({
        "queue_url": queue_url,
        "queue_region": h.REGION,
        "bucket_region": h.REGION,
        "endpoint_url": backend.proxy_url,
        "provisional_cache_control": PROVISIONAL_CACHE,
        "error_cache_control": ERROR_CACHE,
    }))
    # What Lambda gives a function: credentials and region, nothing else.
    env = {"PATH": __import__("os").environ.get("PATH", ""), "AWS_REGION": h.REGION, **h.CREDENTIALS}
    results = workdir / "results.jsonl"
    node_budget_s = max(10, deadline - time.monotonic() - 60)
    with open(workdir / "edge.jsonl", "wb") as logs, open(workdir / "node.stderr", "wb") as err:
        node = subprocess.run(
            ["node", str(Path(__file__).with_name("edge_driver.mjs")), str(bundle / "index.mjs"), str(events),
             str(results), str(args.concurrency), str(int(node_budget_s * 1000))],
            env=env, stdout=logs, stderr=err, timeout=node_budget_s + 30)
    edge_seconds = time.monotonic() - started
    edge_faults = h.faults_by_kind(backend)
    if node.returncode != 0:
        h.log(f"node exited {node.returncode}: {(workdir / 'node.stderr').read_text()[-2000:]}")

    # Drain the queue with the worker, straight against moto.
    backend.proxy_config(fault_rate=0)
    work = subprocess.run([binary, "work", "--queue-url", queue_url, "--once", "--json-logs",
                           "--visibility-timeout", "30"],
                          env=h.aws_env(backend.moto_url), capture_output=True, text=True,
                          timeout=max(30, deadline - time.monotonic()))
    (workdir / "work.stdout").write_text(work.stdout)
    (workdir / "work.stderr").write_text(work.stderr)

    kinds = {key: (kind, v) for kind, key, v in requests}
    logs = h.json_lines(workdir / "edge.jsonl")
    job_of = {}
    for line in logs:
        if line.get("event") == "edge.miss":
            job_of[line.get("uri", "").lstrip("/")] = line.get("job")
    statuses: Counter = Counter()
    invalid: list[tuple[str, str]] = []
    latencies = []
    answered = set()
    accepted_ok = accepted_missing = 0
    accepted_examples: list[tuple[str, str]] = []
    for line in h.json_lines(results):
        key = line["uri"].lstrip("/")
        answered.add(key)
        kind, v = kinds[key]
        latencies.append(line["ms"])
        if "error" in line:
            statuses["threw"] += 1
            invalid.append((key, "handler threw: " + line["error"][:200]))
            continue
        r = line["response"]
        status = int(r.get("status", 0))
        statuses[status] += 1
        problem = None
        if line["ms"] > EDGE_LIMIT_MS:
            problem = f"answered after {line['ms']:.0f} ms"
        elif kind == "bad":
            if not 400 <= status < 500 or not short_cache(header(r, "cache-control")):
                problem = f"bad request answered {status} cache {header(r, 'cache-control')}"
        elif status == 200:
            problem = check_image(r, v)
        elif status >= 500:
            if not header(r, "retry-after") or not short_cache(header(r, "cache-control")):
                problem = f"{status} without Retry-After or short cache: {header(r, 'retry-after')!r} {header(r, 'cache-control')!r}"
        else:
            problem = f"good request answered {status}: {r.get('body', '')[:120]!r}"
        if problem:
            invalid.append((key, problem))
        if kind == "good" and job_of.get(key) == "sent":
            issue = h.check_variant(s3, BUCKET, v)
            if issue is None:
                accepted_ok += 1
            else:
                accepted_missing += 1
                accepted_examples.append((key, issue))
    unanswered = [key for _, key, _ in requests if key not in answered]
    jobs = Counter(job_of.values())
    visible, in_flight = h.queue_depth(sqs, queue_url)
    report = {
        "run": "edge",
        "seed": args.seed,
        "fault_rate": args.fault_rate,
        "requests": len(requests),
        "bad_requests": bad_count,
        "answered": len(answered),
        "statuses": {str(k): n for k, n in sorted(statuses.items(), key=lambda kv: str(kv[0]))},
        "invalid_answers": len(invalid),
        "latency_ms": {"p50": round(h.percentile(latencies, 50), 1), "p99": round(h.percentile(latencies, 99), 1),
                       "max": round(max(latencies, default=0), 1)},
        "jobs": dict(jobs),
        "accepted_jobs_with_correct_variant": accepted_ok,
        "accepted_jobs_without_correct_variant": accepted_missing,
        "faults": edge_faults,
        "queue_left": {"visible": visible, "in_flight": in_flight},
        "edge_seconds": round(edge_seconds, 1),
        "examples": {"invalid": invalid[:5], "accepted_without_variant": accepted_examples[:5],
                     "unanswered": unanswered[:5]},
    }
    print(json.dumps(report, indent=1))
    failures = []
    if unanswered:
        failures.append(f"{len(unanswered)} request(s) not answered before the deadline")
    if invalid:
        failures.append(f"{len(invalid)} invalid answer(s)")
    if accepted_missing:
        failures.append(f"{accepted_missing} accepted job(s) without a correct variant")
    if not jobs.get("sent"):
        failures.append("no edge.miss log line says job=sent")
    for f in failures:
        h.log(f"FAIL: {f}")
    return 1 if failures else 0


def check_image(response: dict, v: h.Variant) -> str | None:
    if response.get("bodyEncoding") != "base64":
        return f"bodyEncoding {response.get('bodyEncoding')}"
    body = base64.b64decode(response.get("body") or "")
    pil_format, content_type = h.FORMATS[v.fmt]
    try:
        image = Image.open(io.BytesIO(body))
        image.load()
    except Exception as e:  # noqa: BLE001
        return f"image does not decode: {e}"
    if image.format != pil_format or header(response, "content-type") != content_type:
        return f"format {image.format} / {header(response, 'content-type')} for .{v.fmt}"
    if not h.expected_size_ok(v, image.width, image.height):
        return f"size {image.width}x{image.height} for {v.params}"
    if header(response, "cache-control") != PROVISIONAL_CACHE:
        return f"cache-control {header(response, 'cache-control')}"
    return None


if __name__ == "__main__":
    sys.exit(main())
