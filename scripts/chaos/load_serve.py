"""Load on `edgethumb serve` with wrk (Debian's `wrk`, `apt-get install wrk`): a seeded mix of
hits, misses and bad requests from 64 concurrent connections on 127.0.0.1.

    .venv/bin/python scripts/chaos/load_serve.py --duration 60          # full
    .venv/bin/python scripts/chaos/load_serve.py --short                # test.sh: 5 s

serve runs on the embedded defaults (a folder of 1024x768 JPEG originals, the spool queue,
the in-process worker). Reported: throughput, p50/p90/p99 latency, peak RSS (VmHWM), and the
answers by status. Checks: every 503 carries Retry-After (requests beyond capacity are shed,
not queued), no wrk timeout (nothing waits without bound), only expected statuses, and peak
RSS under --rss-limit-mib (see docs/reliability.md for how the bound is set).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from PIL import Image

import harness as h

EXPECTED = {"200", "304", "400", "404", "503"}


def vm(pid: int, field: str) -> int:
    """A /proc/PID/status size field in KiB (0 once the process is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def photo(rng: random.Random, width: int, height: int) -> bytes:
    base = Image.linear_gradient("L").resize((width, height))
    noise = Image.effect_noise((width, height), 40 + rng.randrange(30))
    image = Image.merge("RGB", (base, noise, base.transpose(Image.Transpose.FLIP_LEFT_RIGHT)))
    out = io.BytesIO()
    image.save(out, "JPEG", quality=88)
    return out.getvalue()


def get(url: str, timeout: float = 30) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            r.read()
            return r.status, dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=int, default=60, help="seconds of load")
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=18)
    ap.add_argument("--originals", type=int, default=24)
    ap.add_argument("--rss-limit-mib", type=int, default=512)
    ap.add_argument("--short", action="store_true", help="the test.sh variant: 5 s")
    ap.add_argument("--workdir", type=Path)
    args = ap.parse_args()
    if args.short:
        args.duration = min(args.duration, 5)
    wrk = shutil.which("wrk")
    if not wrk:
        sys.exit("chaos: wrk not found (Debian: apt-get install wrk)")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="chaos-load-"))
    workdir.mkdir(parents=True, exist_ok=True)
    processes = h.Processes()
    try:
        return run(args, wrk, workdir, processes)
    finally:
        processes.stop_all()
        h.log(f"logs in {workdir}")


def run(args, wrk: str, workdir: Path, processes: h.Processes) -> int:
    rng = random.Random(args.seed)
    folder = workdir / "photos"
    (folder / "orig").mkdir(parents=True, exist_ok=True)
    originals = []
    for i in range(args.originals):
        key = f"orig/photo-{i:03d}.jpg"
        (folder / key).write_bytes(photo(rng, 1024, 768))
        originals.append("/" + key)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    # The in-process worker's memory budget (default 1024 MiB off Lambda): part of the bound.
    env.setdefault("EDGETHUMB_MEMORY_BUDGET_MB", "256")
    env.setdefault("RUST_LOG", "warn")
    serve = processes.start([h.edgethumb_bin(), "serve", str(folder), "--addr", "127.0.0.1:0"],
                            env=env, stdout=subprocess.PIPE, stderr=open(workdir / "serve.stderr", "wb"))
    assert serve.stdout is not None
    line = serve.stdout.readline().decode()
    if "http://" not in line:
        sys.exit(f"chaos: serve did not start: {line!r}")
    url = line.split("listening on ")[1].strip().rstrip("/")
    h.log(f"serve {serve.pid} on {url}")

    # Hits: originals, plus variants the worker has written (warm-up misses, bounded wait).
    warm = [f"{o}@{w}w.webp" for o in originals for w in (160, 320)]
    for path in warm:
        get(url + path)
    deadline = time.monotonic() + 120
    pending = list(warm)
    while pending and time.monotonic() < deadline:
        pending = [p for p in pending if get(url + p)[1].get("x-edgethumb") != "hit"]
        if pending:
            time.sleep(0.5)
    hits = originals + [p for p in warm if p not in pending]
    h.log(f"{len(hits)} hit paths ({len(pending)} warm-up variants not written in time)")

    samples: list[int] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            samples.append(vm(serve.pid, "VmRSS"))
            stop.wait(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    rss_before = vm(serve.pid, "VmRSS")
    sampler.start()
    wrk_env = dict(os.environ, LOAD_HITS=",".join(hits), LOAD_ORIGINALS=",".join(originals),
                   LOAD_SEED=str(args.seed))
    result = subprocess.run(
        [wrk, "-t", str(args.threads), "-c", str(args.connections), "-d", f"{args.duration}s", "--timeout", "10s",
         "--latency", "-s", str(Path(__file__).with_name("load_mix.lua")), url],
        env=wrk_env, capture_output=True, text=True, timeout=args.duration + 60)
    stop.set()
    sampler.join()
    peak_kib = vm(serve.pid, "VmHWM")
    (workdir / "wrk.out").write_text(result.stdout + result.stderr)
    alive = serve.poll() is None
    h.stop(serve)
    lines = [l for l in result.stdout.splitlines() if l.startswith("LOADJSON ")]
    if result.returncode != 0 or not lines:
        sys.exit(f"chaos: wrk failed ({result.returncode}): {result.stdout[-1000:]} {result.stderr[-1000:]}")
    load = json.loads(lines[-1][len("LOADJSON "):])
    statuses = load["statuses"]
    report = {
        "run": "load",
        "connections": args.connections,
        "duration_s": load["duration_s"],
        "requests": load["requests"],
        "throughput_rps": round(load["requests"] / load["duration_s"], 1),
        "latency_ms": load["latency_ms"],
        "statuses": statuses,
        "socket_errors": load["errors"],
        "rss_mib": {"before_load": round(rss_before / 1024, 1), "peak_vmhwm": round(peak_kib / 1024, 1),
                    "max_sampled": round(max(samples, default=0) / 1024, 1)},
        "rss_limit_mib": args.rss_limit_mib,
        "serve_alive_after_load": alive,
    }
    print(json.dumps(report, indent=1))
    failures = []
    unexpected = {s: n for s, n in statuses.items() if s not in EXPECTED}
    if unexpected:
        failures.append(f"unexpected statuses {unexpected}")
    if statuses.get("503-without-retry-after"):
        failures.append(f"{statuses['503-without-retry-after']} 503 answers without Retry-After")
    if load["errors"]["timeout"] or load["errors"]["connect"]:
        failures.append(f"socket errors {load['errors']}")
    if peak_kib > args.rss_limit_mib * 1024:
        failures.append(f"peak RSS {peak_kib // 1024} MiB over the {args.rss_limit_mib} MiB bound")
    if not alive:
        failures.append("serve died under load")
    if not any(s in statuses for s in ("200",)):
        failures.append("no request succeeded")
    for f in failures:
        h.log(f"FAIL: {f}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
