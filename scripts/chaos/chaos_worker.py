"""Chaos run of the worker: jobs through `edgethumb enqueue` and `edgethumb work` with a share
of every S3 and SQS call faulted (scripts/faultproxy.py), poison messages among them, a
redrive policy on the queue, and optionally the worker killed with SIGKILL mid-batch and
restarted.

    .venv/bin/python scripts/chaos/chaos_worker.py --jobs 2000 --seed 18            # full
    .venv/bin/python scripts/chaos/chaos_worker.py --jobs 2000 --seed 18 --sigkill 3  # kills
    .venv/bin/python scripts/chaos/chaos_worker.py --jobs 200 --seed 1 --short         # test.sh

At the end every accepted job must be a correct variant in S3 (decodes, right size and
format, tag createByLambda=1, our metadata, never truncated) or in the dead-letter queue,
every poison message must be in the dead-letter queue, the main queue must be empty, and no
variant may be wrong. Duplicates rendered (a variant written more than once) are counted.
Exit 0 when all of that holds; the figures are printed as one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import harness as h

BUCKET = "chaos"


def poison_messages(rng: random.Random, count: int, originals: list[h.Original]) -> list[str]:
    """Messages that can never succeed: malformed, an unknown version, a missing original, a
    corrupt original, fields that disagree."""
    now = "2026-01-01T00:00:00.000Z"
    out = []
    for i in range(count):
        kind = i % 5
        o = rng.choice(originals)
        if kind == 0:
            out.append(f"not json {i}")
        elif kind == 1:
            out.append(json.dumps({"v": 99, "bucket": BUCKET, "variant_key": f"x{i}.jpg@10w"}))
        elif kind == 2:
            key = f"orig/gone-{i}.jpg"
            out.append(json.dumps({"v": 1, "bucket": BUCKET, "variant_key": f"{key}@10w_50q", "original_key": key,
                                   "params": "10w_50q", "reason": "manual", "enqueued_at": now}))
        elif kind == 3:
            key = "orig/corrupt.jpg"
            out.append(json.dumps({"v": 1, "bucket": BUCKET, "variant_key": f"{key}@{10 + i}w_50q",
                                   "original_key": key, "params": f"{10 + i}w_50q", "reason": "manual",
                                   "enqueued_at": now}))
        else:
            out.append(json.dumps({"v": 1, "bucket": BUCKET, "variant_key": f"{o.key}@12w_50q",
                                   "original_key": "orig/other.jpg", "params": "12w_50q", "reason": "manual",
                                   "enqueued_at": now}))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=2000)
    ap.add_argument("--poison-share", type=float, default=0.05)
    ap.add_argument("--fault-rate", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=18)
    ap.add_argument("--sigkill", type=int, default=0, help="kill the worker with SIGKILL this many times mid-batch")
    ap.add_argument("--max-receive-count", type=int, default=5)
    ap.add_argument("--visibility", type=int, default=3, help="visibility timeout, seconds")
    ap.add_argument("--concurrency", type=int, default=8, help="worker renders at once (moto is the bottleneck)")
    ap.add_argument("--deadline", type=float, default=900, help="seconds the whole run may take")
    ap.add_argument("--short", action="store_true", help="the test.sh variant: 120 jobs, 240 s")
    ap.add_argument("--workdir", type=Path, help="keep logs here (default: a temporary folder)")
    args = ap.parse_args()
    if args.short:
        args.jobs = min(args.jobs, 120)
        args.deadline = min(args.deadline, 240)

    started = time.monotonic()
    deadline = started + args.deadline
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="chaos-worker-"))
    workdir.mkdir(parents=True, exist_ok=True)
    processes = h.Processes()
    try:
        return run(args, workdir, processes, started, deadline)
    finally:
        processes.stop_all()
        h.log(f"logs in {workdir}")


def run(args, workdir: Path, processes: h.Processes, started: float, deadline: float) -> int:
    rng = random.Random(args.seed)
    binary = h.edgethumb_bin()
    backend = h.start_backend(workdir, processes, args.fault_rate, args.seed, None)
    s3, sqs = backend.s3(), backend.sqs()
    s3.create_bucket(Bucket=BUCKET)
    queue_url, dlq_url = h.create_queues(sqs, "chaos-jobs", args.max_receive_count, args.visibility)

    poison_count = round(args.jobs * args.poison_share)
    good_count = args.jobs - poison_count
    originals = h.make_originals(rng, 24)
    h.upload_originals(s3, BUCKET, originals)
    s3.put_object(Bucket=BUCKET, Key="orig/corrupt.jpg", Body=b"\xff\xd8\xff\xe0 not really a jpeg" * 8,
                  ContentType="image/jpeg")
    variants = h.make_variants(rng, [o for o, _ in originals], good_count)
    by_key = {v.key: v for v in variants}
    poison = poison_messages(rng, poison_count, [o for o, _ in originals])
    for i in range(0, len(poison), 10):
        sqs.send_message_batch(QueueUrl=queue_url, Entries=[
            {"Id": str(j), "MessageBody": body} for j, body in enumerate(poison[i:i + 10])])

    # Enqueue the good jobs through the faults, as an operator would.
    env = h.aws_env(backend.proxy_url)
    targets = workdir / "targets.txt"
    targets.write_text("".join(f"s3://{BUCKET}/{v.key}\n" for v in variants))
    enq = subprocess.run([binary, "enqueue", "--from", str(targets), "--queue-url", queue_url],
                         env=env, capture_output=True, text=True, timeout=max(30, deadline - time.monotonic()))
    (workdir / "enqueue.stderr").write_text(enq.stderr)
    failed_inputs = {line.split(": ", 2)[1] for line in enq.stderr.splitlines() if line.startswith("failed: ")}
    accepted = [v for v in variants if f"s3://{BUCKET}/{v.key}" not in failed_inputs]
    h.log(f"enqueue: {len(accepted)} of {len(variants)} accepted (exit {enq.returncode}); {len(poison)} poison")
    enqueue_faults = h.faults_by_kind(backend)

    # The worker, restarted after each SIGKILL, until the queue is empty.
    worker_log = workdir / "worker.jsonl"
    kills = 0
    kill_at = sorted(rng.uniform(0.15, 0.75) for _ in range(args.sigkill))
    worker_runs = 0
    log_file = open(worker_log, "ab")

    def start_worker() -> subprocess.Popen:
        nonlocal worker_runs
        worker_runs += 1
        return processes.start(
            [binary, "work", "--queue-url", queue_url, "--json-logs", "--wait", "1",
             "--visibility-timeout", str(args.visibility), "--concurrency", str(args.concurrency)],
            env=env, stdout=log_file, stderr=open(workdir / f"worker-{worker_runs}.stderr", "wb"))

    worker = start_worker()
    empty_polls = 0
    drained = False
    while time.monotonic() < deadline:
        time.sleep(0.5)
        if worker.poll() is not None:
            h.log(f"worker exited on its own ({worker.returncode}); restarting")
            worker = start_worker()
        if kills < len(kill_at):
            written = sum(1 for e in h.json_lines(worker_log) if e.get("outcome") == "written")
            if written >= kill_at[kills] * len(accepted):
                # The worker is busy the whole run (the queue is never empty before the
                # end), so this lands in the middle of a batch: renders and PUTs in flight.
                worker.send_signal(signal.SIGKILL)
                worker.wait(timeout=10)
                kills += 1
                h.log(f"SIGKILL {kills} after {written} variants written; restarting")
                worker = start_worker()
                continue
        visible, in_flight = h.queue_depth(sqs, queue_url)
        if visible == 0 and in_flight == 0:
            empty_polls += 1
            if empty_polls >= 4:
                drained = True
                break
        else:
            empty_polls = 0
    h.stop(worker)
    log_file.close()
    elapsed_work = time.monotonic() - started
    if not drained:
        h.log(f"the queue did not drain before the deadline ({args.deadline} s)")

    # Verification straight against moto: no faults.
    backend.proxy_config(fault_rate=0)
    dlq_bodies = h.drain_messages(sqs, dlq_url)
    dlq_keys = Counter()
    for body in dlq_bodies:
        try:
            dlq_keys[json.loads(body).get("variant_key")] += 1
        except (json.JSONDecodeError, AttributeError):
            pass
    dlq_set = set(dlq_bodies)
    poison_missing = [p for p in poison if p not in dlq_set]
    good_ok, good_in_dlq, lost, wrong = 0, 0, [], []
    for v in accepted:
        problem = h.check_variant(s3, BUCKET, v)
        if problem is None:
            good_ok += 1
        elif problem == "missing" and dlq_keys.get(v.key):
            good_in_dlq += 1
        elif problem == "missing":
            lost.append(v.key)
        else:
            wrong.append((v.key, problem))
    # Nothing else may have been written: every variant object is one we asked for.
    listed = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
        listed += [o["Key"] for o in page.get("Contents", [])]
    unexpected = [k for k in listed if "@" in k and k not in by_key]
    # Variants of rejected enqueues may still exist (an after-fault enqueued them): check them too.
    accepted_keys = {v.key for v in accepted}
    listed_set = set(listed)
    for v in variants:
        if v.key in accepted_keys or v.key not in listed_set:
            continue
        problem = h.check_variant(s3, BUCKET, v)
        if problem is not None:
            wrong.append((v.key, problem))
    written = Counter(e.get("key") for e in h.json_lines(worker_log) if e.get("outcome") == "written")
    # Every PutObject moto stored (the worker's log line of a write can be lost to SIGKILL;
    # an SDK retry after an after-fault stores the same render twice).
    puts = h.moto_puts(workdir / "moto.log", BUCKET)
    outcomes = Counter(e.get("outcome") for e in h.json_lines(worker_log) if e.get("event") == "worker.job")
    visible, in_flight = h.queue_depth(sqs, queue_url)
    worker_faults = h.faults_by_kind(backend)
    report = {
        "run": "worker" + (f"+sigkill{args.sigkill}" if args.sigkill else ""),
        "seed": args.seed,
        "fault_rate": args.fault_rate,
        "jobs": args.jobs,
        "good_jobs": len(variants),
        "poison_jobs": len(poison),
        "enqueue_accepted": len(accepted),
        "enqueue_refused": len(variants) - len(accepted),
        "faults_during_enqueue": enqueue_faults,
        "faults_total": worker_faults,
        "variants_correct": good_ok,
        "good_jobs_in_dlq": good_in_dlq,
        "poison_in_dlq": len(poison) - len(poison_missing),
        "poison_not_in_dlq": len(poison_missing),
        "dlq_messages": len(dlq_bodies),
        "lost": len(lost),
        "wrong": len(wrong),
        "unexpected_variants": len(unexpected),
        "queue_left": {"visible": visible, "in_flight": in_flight},
        "renders_written": sum(written.values()),
        "duplicates_rendered": sum(n - 1 for n in written.values() if n > 1),
        "variant_puts_stored": sum(puts.values()),
        "variants_stored_more_than_once": sum(1 for n in puts.values() if n > 1),
        "duplicate_puts": sum(n - 1 for n in puts.values() if n > 1),
        "worker_outcomes": dict(outcomes),
        "worker_starts": worker_runs,
        "sigkills": kills,
        "seconds": round(elapsed_work, 1),
        "examples": {"lost": lost[:5], "wrong": wrong[:5], "poison_not_in_dlq": poison_missing[:3],
                     "unexpected": unexpected[:5]},
    }
    print(json.dumps(report, indent=1))
    failures = []
    if not drained or visible or in_flight:
        failures.append("the main queue is not empty")
    if lost:
        failures.append(f"{len(lost)} accepted job(s) lost")
    if wrong:
        failures.append(f"{len(wrong)} wrong variant(s)")
    if unexpected:
        failures.append(f"{len(unexpected)} variant(s) nobody asked for")
    if poison_missing:
        failures.append(f"{len(poison_missing)} poison message(s) not in the DLQ")
    if kills < args.sigkill:
        failures.append(f"only {kills} of {args.sigkill} SIGKILLs happened")
    for f in failures:
        h.log(f"FAIL: {f}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
