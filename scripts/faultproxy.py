#!/usr/bin/env python3
"""A fault-injecting HTTP/1.1 proxy for moto_server (S3 + SQS), standard library only.

    python3 scripts/faultproxy.py --upstream http://127.0.0.1:5000 --port 0 \
        --fault-rate 0.1 --seed 7 --kinds s3-slowdown,reset-mid-body --log faults.jsonl

Prints the port it listens on (127.0.0.1) as one line on stdout once ready. Point the SDK's
endpoint at it. See docs/reliability.md for what each fault looks like on the wire.

Fidelity: the request line, header block (Host, SigV4 headers, case and order) and body bytes
(Content-Length or chunked framing, so aws-chunked uploads too) reach the upstream exactly as
the client sent them, so signatures still verify. Responses are relayed verbatim too. Bodies
are streamed in CHUNK-sized pieces both ways, never held whole: memory per connection is
bounded by MAX_HEAD plus a few CHUNKs. Each request gets its own upstream connection, closed
when its response ends, so a half-sent request body is never replayed on a stale connection.

Determinism: requests are numbered 1, 2, ... in arrival order (control requests excluded);
whether request k gets a fault, and which kind, is a pure function of (seed, k, the kinds that
apply to its service). Re-running the same sequential client with the same seed replays the
same faults. POST /__faultproxy/config restarts the numbering.
"""

import argparse
import asyncio
import email.utils
import hashlib
import json
import signal
import socket
import struct
import sys
import time
from urllib.parse import parse_qs, urlsplit

CHUNK = 64 * 1024
MAX_HEAD = 64 * 1024  # request/response line plus headers
CONTINUE_WAIT_S = 1.0  # how long to wait for an upstream "100 Continue" before sending anyway
CONTROL_PREFIX = "/__faultproxy/"

# kind -> (services it applies to, phase). "before": the upstream never sees the request
# (no side effect). "after": the upstream handled it (side effect done), the client still sees
# a failure: these are the faults that produce duplicates when the client retries.
KINDS = {
    "s3-slowdown": ({"s3"}, "before"),
    "s3-slowdown-after": ({"s3"}, "after"),
    "s3-internal-error": ({"s3"}, "before"),
    "s3-internal-error-after": ({"s3"}, "after"),
    "sqs-throttled": ({"sqs"}, "before"),
    "sqs-throttled-after": ({"sqs"}, "after"),
    "reset-before": ({"s3", "sqs"}, "before"),
    "reset-mid-body": ({"s3", "sqs"}, "after"),
    "truncate": ({"s3", "sqs"}, "after"),
    "latency": ({"s3", "sqs"}, "before"),
}
SERVICES = ("s3", "sqs")


class Config:
    def __init__(self, fault_rate, kinds, seed, services, latency_ms, sqs_throttle_code):
        self.fault_rate = fault_rate
        self.kinds = kinds
        self.seed = seed
        self.services = services
        self.latency_ms = latency_ms
        self.sqs_throttle_code = sqs_throttle_code

    def as_dict(self):
        return dict(fault_rate=self.fault_rate, kinds=self.kinds, seed=self.seed,
                    services=self.services, latency_ms=self.latency_ms,
                    sqs_throttle_code=self.sqs_throttle_code)

    def update(self, changes):
        """Validate and apply a JSON object of changes; raise ValueError naming the problem."""
        unknown = set(changes) - set(self.as_dict()) - {"reset_stats"}
        if unknown:
            raise ValueError(f"unknown config keys: {sorted(unknown)}")
        new = self.as_dict()
        new.update({k: v for k, v in changes.items() if k != "reset_stats"})
        if isinstance(new["kinds"], str):
            new["kinds"] = new["kinds"].split(",")
        if isinstance(new["services"], str):
            new["services"] = new["services"].split(",")
        for key in ("kinds", "services"):
            if not isinstance(new[key], list) or not all(isinstance(v, str) for v in new[key]):
                raise ValueError(f"{key} must be a list of names or a comma-separated string")
        if not isinstance(new["fault_rate"], (int, float)) or not 0 <= new["fault_rate"] <= 1:
            raise ValueError("fault_rate must be a number in [0, 1]")
        if not isinstance(new["seed"], int) or not isinstance(new["latency_ms"], int) \
                or new["latency_ms"] < 0:
            raise ValueError("seed and latency_ms must be integers (latency_ms >= 0)")
        bad = [k for k in new["kinds"] if k not in KINDS]
        if bad or not new["kinds"]:
            raise ValueError(f"kinds must be a non-empty subset of {sorted(KINDS)}, got {bad}")
        if [s for s in new["services"] if s not in SERVICES]:
            raise ValueError(f"services must be a subset of {SERVICES}")
        if new["sqs_throttle_code"] not in ("RequestThrottled", "ThrottlingException"):
            raise ValueError("sqs_throttle_code must be RequestThrottled or ThrottlingException")
        vars(self).update(new)


def decide(seed, k, rate, kinds):
    """The fault kind for request number k (None: no fault) and a request id, from (seed, k)."""
    digest = hashlib.sha256(f"faultproxy/{seed}/{k}".encode()).digest()
    request_id = digest[16:24].hex().upper()
    draw = int.from_bytes(digest[:8], "big") / 2**64
    if not kinds or draw >= rate:
        return None, request_id
    return kinds[int.from_bytes(digest[8:16], "big") % len(kinds)], request_id


# ---- HTTP/1.1 framing: just enough to find where a message ends, never to rewrite it ----

class Head:
    """A request or response head, kept as the raw bytes it arrived as."""

    def __init__(self, raw):
        self.raw = raw
        lines = raw.decode("latin-1").split("\r\n")
        self.start = lines[0].split(" ", 2)
        self.headers = {}
        for line in lines[1:]:
            if ":" in line:
                name, value = line.split(":", 1)
                self.headers.setdefault(name.strip().lower(), value.strip())

    def get(self, name, default=""):
        return self.headers.get(name, default)

    def body_framing(self, is_response=False, request_method=""):
        """('length', n), ('chunked', None), ('close', None) or ('none', None)."""
        if is_response:
            status = int(self.start[1])
            if request_method == "HEAD" or status in (204, 304) or 100 <= status < 200:
                return ("none", None)
        if "chunked" in self.get("transfer-encoding").lower():
            return ("chunked", None)
        if "content-length" in self.headers:
            return ("length", int(self.get("content-length")))
        return ("close", None) if is_response else ("none", None)

    def wants_close(self):
        connection = self.get("connection").lower()
        if self.start[0].startswith("HTTP/"):  # a response: version is the first word
            version = self.start[0]
        else:
            version = self.start[2] if len(self.start) > 2 else "HTTP/1.0"
        return "close" in connection or (version == "HTTP/1.0" and "keep-alive" not in connection)


async def read_head(reader):
    """The next head, or None at a clean end of stream. Raises on oversize or a cut head."""
    try:
        raw = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as e:
        if not e.partial:
            return None
        raise ConnectionError("stream ended inside a message head") from e
    except asyncio.LimitOverrunError as e:
        raise ConnectionError(f"message head over {MAX_HEAD} bytes") from e
    return Head(raw)


async def relay_body(reader, writer, framing, budget=None):
    """Copy one body from reader to writer (None: discard), framing bytes included.

    With a budget, stop after that many bytes have been written; returns the bytes written.
    """
    kind, length = framing
    sent = 0

    async def copy(data):
        nonlocal sent
        if budget is not None:
            data = data[: max(0, budget - sent)]
        if writer is not None and data:
            writer.write(data)
            await writer.drain()
        sent += len(data)
        return budget is None or sent < budget

    if kind == "length":
        remaining = length
        while remaining > 0:
            data = await reader.read(min(CHUNK, remaining))
            if not data:
                raise ConnectionError("stream ended inside a body")
            remaining -= len(data)
            if not await copy(data):
                return sent
    elif kind == "chunked":
        while True:
            size_line = await reader.readuntil(b"\r\n")
            if not await copy(size_line):
                return sent
            size = int(size_line.split(b";", 1)[0].strip(), 16)
            if size == 0:  # trailers, then the empty line
                while True:
                    line = await reader.readuntil(b"\r\n")
                    if not await copy(line) or line == b"\r\n":
                        return sent
            remaining = size + 2  # data and its CRLF
            while remaining > 0:
                data = await reader.readexactly(min(CHUNK, remaining))
                remaining -= len(data)
                if not await copy(data):
                    return sent
    elif kind == "close":
        while data := await reader.read(CHUNK):
            if not await copy(data):
                return sent
    return sent


# ---- the services: which one, which operation, and their throttling/error bodies ----

def classify(head):
    """(service, operation) of a request, from headers and path (S3 path-style)."""
    target = head.get("x-amz-target")
    method, url = head.start[0], urlsplit(head.start[1])
    query = parse_qs(url.query, keep_blank_values=True)
    host = head.get("host").lower()
    if target.startswith("AmazonSQS."):
        return "sqs", target.split(".", 1)[1]
    if "Action" in query or host.startswith("sqs.") or ".sqs." in host or (
            method == "POST"
            and head.get("content-type").startswith("application/x-www-form-urlencoded")):
        return "sqs", query.get("Action", ["Query"])[0]
    return "s3", s3_operation(method, url.path, query, head)


def s3_operation(method, path, query, head):
    """A best-effort S3 operation name for logs and stats (path-style addressing)."""
    bucket, _, key = path.lstrip("/").partition("/")
    if not bucket:
        return "ListBuckets"
    if key:
        if "uploadId" in query:
            return {"PUT": "UploadPart", "GET": "ListParts", "POST": "CompleteMultipartUpload",
                    "DELETE": "AbortMultipartUpload"}.get(method, method + "Object")
        if "uploads" in query:
            return "CreateMultipartUpload"
        if "tagging" in query:
            return {"PUT": "PutObjectTagging", "GET": "GetObjectTagging",
                    "DELETE": "DeleteObjectTagging"}.get(method, method + "ObjectTagging")
        if method == "PUT" and head.get("x-amz-copy-source"):
            return "CopyObject"
        return {"GET": "GetObject", "PUT": "PutObject", "HEAD": "HeadObject",
                "DELETE": "DeleteObject"}.get(method, method + "Object")
    if method == "POST" and "delete" in query:
        return "DeleteObjects"
    if (method == "GET" and not query) or "list-type" in query:
        return "ListObjectsV2" if "list-type" in query else "ListObjects"
    sub = next(iter(query), "")
    verb = {"GET": "Get", "PUT": "Put", "DELETE": "Delete", "HEAD": "Head"}.get(method, method)
    if method == "PUT" and not sub:
        return "CreateBucket"
    return f"{verb}Bucket{sub[:1].upper()}{sub[1:]}"


def response_bytes(status, reason, headers, body, method):
    lines = [f"HTTP/1.1 {status} {reason}"] + [f"{k}: {v}" for k, v in headers]
    lines.append(f"Content-Length: {len(body)}")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head if method == "HEAD" else head + body


def error_response(kind, head, request_id, config, close=False):
    """The full wire bytes of an injected S3 or SQS error response."""
    method = head.start[0]
    common = [("Date", email.utils.formatdate(usegmt=True))] + ([("Connection", "close")] if close else [])
    if kind.startswith("sqs-"):
        code = config.sqs_throttle_code
        if head.get("x-amz-target"):  # JSON protocol (awsQueryCompatible)
            body = json.dumps({"__type": f"com.amazonaws.sqs#{code}",
                               "message": "Rate exceeded"}).encode()
            headers = [("x-amzn-RequestId", request_id), *common,
                       ("Content-Type", "application/x-amz-json-1.0"),
                       ("x-amzn-query-error", f"{code};Sender")]
        else:  # query protocol
            body = ("<?xml version=\"1.0\"?><ErrorResponse xmlns=\"http://queue.amazonaws.com/"
                    f"doc/2012-11-05/\"><Error><Type>Sender</Type><Code>{code}</Code><Message>"
                    f"Rate exceeded</Message><Detail/></Error><RequestId>{request_id}"
                    "</RequestId></ErrorResponse>").encode()
            headers = [("x-amzn-RequestId", request_id), *common, ("Content-Type", "text/xml")]
        return response_bytes(400, "Bad Request", headers, body, method)
    status, reason, code, message = (
        (503, "Slow Down", "SlowDown", "Please reduce your request rate.")
        if kind.startswith("s3-slowdown") else
        (500, "Internal Server Error", "InternalError",
         "We encountered an internal error. Please try again."))
    resource = urlsplit(head.start[1]).path.replace("&", "&amp;").replace("<", "&lt;")
    body = ("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>" + code + "</Code><Message>"
            + message + "</Message><Resource>" + resource + "</Resource><RequestId>"
            + request_id + "</RequestId><HostId>faultproxy</HostId></Error>").encode()
    headers = [("x-amz-request-id", request_id), ("x-amz-id-2", "faultproxy"), *common,
               ("Content-Type", "application/xml"), ("Server", "AmazonS3")]
    return response_bytes(status, reason, headers, body, method)


def reset(writer):
    """Abort the connection with a TCP RST (SO_LINGER 0) instead of an orderly FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


# ---- the proxy ----

class FaultProxy:
    def __init__(self, upstream, config, log_path):
        url = urlsplit(upstream)
        if url.scheme != "http" or not url.hostname:
            raise ValueError(f"--upstream must be http://host:port, got {upstream!r}")
        self.upstream = (url.hostname, url.port or 80)
        self.config = config
        self.log = open(log_path, "a", buffering=1) if log_path else None
        self.counter = 0
        self.reset_stats()

    def reset_stats(self):
        self.stats = {"requests": {s: 0 for s in SERVICES}, "faults": {s: {} for s in SERVICES},
                      "faults_by_kind": {}, "upstream_errors": 0}

    def count_fault(self, service, kind, k, operation, head):
        self.stats["faults"][service][kind] = self.stats["faults"][service].get(kind, 0) + 1
        self.stats["faults_by_kind"][kind] = self.stats["faults_by_kind"].get(kind, 0) + 1
        if self.log:
            self.log.write(json.dumps({
                "ts": round(time.time(), 3), "request": k, "seed": self.config.seed,
                "service": service, "operation": operation, "kind": kind,
                "phase": KINDS[kind][1], "method": head.start[0], "target": head.start[1],
            }) + "\n")

    async def handle_client(self, reader, writer):
        writer.transport.set_write_buffer_limits(0)  # drain() waits until bytes left us
        try:
            while await self.handle_one(reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                ValueError, IndexError) as e:
            print(f"faultproxy: connection dropped: {e!r}", file=sys.stderr)
        except asyncio.CancelledError:
            pass
        finally:
            if not writer.transport.is_closing():
                writer.close()

    async def handle_one(self, reader, writer):
        """Serve one request; True if the client connection can carry another."""
        head = await read_head(reader)
        if head is None:
            return False
        if head.start[1].startswith(CONTROL_PREFIX):
            return await self.control(head, reader, writer)
        service, operation = classify(head)
        self.counter += 1
        k = self.counter
        self.stats["requests"][service] += 1
        cfg = self.config
        applicable = [kd for kd in cfg.kinds if service in KINDS[kd][0]] \
            if service in cfg.services else []
        kind, request_id = decide(cfg.seed, k, cfg.fault_rate, applicable)
        if kind:
            self.count_fault(service, kind, k, operation, head)
        expects_continue = "100-continue" in head.get("expect").lower()
        framing = head.body_framing()

        if kind == "latency":
            await asyncio.sleep(cfg.latency_ms / 1000)
        elif kind and KINDS[kind][1] == "before":
            if kind == "reset-before":
                if not expects_continue:
                    await relay_body(reader, None, framing)
                reset(writer)
                return False
            if not expects_continue:
                await relay_body(reader, None, framing)
                close = head.wants_close()
                writer.write(error_response(kind, head, request_id, cfg, close=close))
                await writer.drain()
                return not close
            # Answer at once, as S3 does: the client then sends no body. One that sends it
            # anyway gets it read (briefly), so closing does not turn the answer into an RST.
            writer.write(error_response(kind, head, request_id, cfg, close=True))
            await writer.drain()
            try:
                await asyncio.wait_for(relay_body(reader, None, framing), CONTINUE_WAIT_S)
            except (asyncio.TimeoutError, ConnectionError, asyncio.IncompleteReadError):
                pass
            return False

        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream, limit=MAX_HEAD)
        except OSError as e:
            self.stats["upstream_errors"] += 1
            writer.write(response_bytes(502, "Bad Gateway", [("Content-Type", "text/plain")],
                                        f"faultproxy: upstream: {e}\n".encode(), head.start[0]))
            await writer.drain()
            return False
        try:
            return await self.forward(head, framing, expects_continue, kind, request_id,
                                      reader, writer, up_reader, up_writer)
        finally:
            up_writer.transport.abort()

    async def forward(self, head, framing, expects_continue, kind, request_id,
                      reader, writer, up_reader, up_writer):
        method = head.start[0]
        up_writer.write(head.raw)
        await up_writer.drain()
        response = None
        if expects_continue:  # relay the upstream's 100 Continue so the client sends the body
            try:
                response = await asyncio.wait_for(read_head(up_reader), CONTINUE_WAIT_S)
            except asyncio.TimeoutError:
                response = None
            if response is not None and response.start[1] == "100":
                writer.write(response.raw)
                await writer.drain()
                response = None
            elif response is not None:  # a final answer instead: the client sends no body
                framing = ("none", None)
                expects_continue = "refused"
        await relay_body(reader, up_writer, framing)
        while response is None or response.start[1].startswith("1"):
            if response is not None:
                writer.write(response.raw)  # other interim responses, relayed as they are
            response = await read_head(up_reader)
            if response is None:
                raise ConnectionError("upstream closed without a response")
        resp_framing = response.body_framing(True, method)
        keep_alive = not (head.wants_close() or response.wants_close()
                          or resp_framing[0] == "close" or expects_continue == "refused")

        if kind in ("s3-slowdown-after", "s3-internal-error-after", "sqs-throttled-after"):
            await relay_body(up_reader, None, resp_framing)  # the side effect stays done
            writer.write(error_response(kind, head, request_id, self.config,
                                        close=not keep_alive))
            await writer.drain()
            return keep_alive
        if kind in ("reset-mid-body", "truncate"):
            await self.cut_response(kind, response, resp_framing, up_reader, writer)
            return False
        writer.write(response.raw)
        await writer.drain()
        await relay_body(up_reader, writer, resp_framing)
        return keep_alive

    async def cut_response(self, kind, response, framing, up_reader, writer):
        """Send part of the response, then RST (reset-mid-body) or FIN (truncate).

        With a body: the head (Content-Length raised to 1 if it was 0) and the first half of
        the body, so the declared length is always more than what arrives. Without one
        (HEAD, 204, 304): the first half of the status line (a head cut between header lines
        would pass for a complete one with lenient clients such as http.client).
        A close-delimited body (no Content-Length, not chunked) cannot be told from a short
        one by the client; moto never sends one.
        """
        if framing[0] == "none":
            writer.write(response.raw[: response.raw.index(b"\r\n") // 2])
        else:
            raw = response.raw
            if framing == ("length", 0):
                raw = raw.replace(b"\r\n\r\n", b"\r\n", 1)
                raw = b"\r\n".join(line for line in raw.split(b"\r\n")
                                   if not line.lower().startswith(b"content-length:"))
                raw += b"Content-Length: 1\r\n\r\n"
            writer.write(raw)
            await writer.drain()
            budget = framing[1] // 2 if framing[0] == "length" else CHUNK // 2
            await relay_body(up_reader, writer, framing, budget=budget)
        await writer.drain()
        await asyncio.sleep(0.05)  # let the client take in the head, so it fails mid-body
        if kind == "reset-mid-body":
            reset(writer)
        else:
            writer.close()

    async def control(self, head, reader, writer):
        """GET stats / GET config / POST config (JSON). Never forwarded, never counted."""
        path, method = urlsplit(head.start[1]).path, head.start[0]
        framing = head.body_framing()
        if framing[0] == "length" and framing[1] > MAX_HEAD:
            raise ConnectionError("control request body too large")
        body = await reader.readexactly(framing[1]) if framing[0] == "length" else b""
        status, payload = 200, None
        if path == CONTROL_PREFIX + "stats" and method == "GET":
            payload = dict(self.stats, request_counter=self.counter, config=self.config.as_dict())
        elif path == CONTROL_PREFIX + "config" and method == "GET":
            payload = self.config.as_dict()
        elif path == CONTROL_PREFIX + "config" and method == "POST":
            try:
                changes = json.loads(body or b"{}")
                if not isinstance(changes, dict):
                    raise ValueError("expected a JSON object")
                self.config.update(changes)
            except ValueError as e:
                status, payload = 400, {"error": str(e)}
            else:
                self.counter = 0  # a new phase: request numbering (and so the replay) restarts
                if changes.get("reset_stats"):
                    self.reset_stats()
                payload = self.config.as_dict()
                print(f"faultproxy: config {json.dumps(payload)}", file=sys.stderr)
        else:
            status, payload = 404, {"error": f"no such control endpoint: {method} {path}"}
        writer.write(response_bytes(status, "OK" if status == 200 else "Error",
                                    [("Content-Type", "application/json")],
                                    json.dumps(payload).encode(), method))
        await writer.drain()
        return not head.wants_close()


async def serve(proxy, host, port):
    tasks = set()

    async def on_client(reader, writer):
        task = asyncio.current_task()
        tasks.add(task)
        try:
            await proxy.handle_client(reader, writer)
        finally:
            tasks.discard(task)

    server = await asyncio.start_server(on_client, host, port, limit=MAX_HEAD)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(server.sockets[0].getsockname()[1], flush=True)
    await stop.wait()
    server.close()
    for task in list(tasks):
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await server.wait_closed()
    if proxy.log:
        proxy.log.close()
    print(f"faultproxy: stopped; stats {json.dumps(proxy.stats)}", file=sys.stderr)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--upstream", required=True, help="moto_server URL, e.g. http://127.0.0.1:5000")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=0, help="port to listen on; 0 picks a free one")
    p.add_argument("--fault-rate", type=float, default=0.0, help="share of requests faulted, 0..1")
    p.add_argument("--seed", type=int, default=0, help="fault sequence seed (replay a run)")
    p.add_argument("--kinds", default=",".join(KINDS), help=f"comma list of {', '.join(KINDS)}")
    p.add_argument("--services", default="s3,sqs", help="services that get faults: s3,sqs")
    p.add_argument("--latency-ms", type=int, default=1000, help="delay of the latency fault")
    p.add_argument("--sqs-throttle-code", default="RequestThrottled",
                   choices=["RequestThrottled", "ThrottlingException"])
    p.add_argument("--log", help="append one JSON line per injected fault to this file")
    a = p.parse_args(argv)
    config = Config(0.0, ["latency"], 0, ["s3"], 0, "RequestThrottled")
    try:
        config.update(dict(fault_rate=a.fault_rate, kinds=a.kinds, seed=a.seed,
                           services=a.services, latency_ms=a.latency_ms,
                           sqs_throttle_code=a.sqs_throttle_code))
        proxy = FaultProxy(a.upstream, config, a.log)
    except ValueError as e:
        p.error(str(e))
    asyncio.run(serve(proxy, a.host, a.port))


if __name__ == "__main__":
    main()
