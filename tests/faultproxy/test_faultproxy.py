"""Tests of scripts/faultproxy.py against a real moto_server, with boto3 and raw http.client.

    .venv/bin/python -m pytest tests/faultproxy -q

Needs moto[s3,sqs] (with boto3) and pytest in the running interpreter, and moto_server next
to it (the venv's bin/). Everything binds 127.0.0.1 on ports picked by the OS.
"""

import base64
import http.client
import io
import json
import select
import signal
import socket
import socketserver
import subprocess
import sys
import threading
import time
import urllib.request
import xml.etree.ElementTree as ET
import zlib
from pathlib import Path

import boto3
import botocore.retries.standard as standard_retries
import pytest
from botocore.auth import S3SigV4Auth, SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.exceptions import ClientError, HTTPClientError, ResponseStreamingError

ROOT = Path(__file__).resolve().parents[2]
PROXY = ROOT / "scripts" / "faultproxy.py"
sys.path.insert(0, str(PROXY.parent))
import faultproxy  # noqa: E402  (for the pure decision function)

CREDS = Credentials("testing", "testing")
BUCKET = "fp-bucket"
BINARY = bytes(range(256)) * 1200 + b"\r\n\r\n0\r\n"  # every byte value, HTTP-looking bytes


# ---- processes ----

def wait_line(stream, deadline, what):
    """The next stdout line of a child, or fail naming `what` after the deadline."""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([stream], [], [], 0.2)
        if ready:
            line = stream.readline()
            if line:
                return line.strip()
            break
    pytest.fail(f"{what} did not print its port in time")


def start_proxy(upstream, *args, log=None):
    cmd = [sys.executable, str(PROXY), "--upstream", upstream, "--port", "0", *args]
    if log:
        cmd += ["--log", str(log)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    port = int(wait_line(proc.stdout, time.monotonic() + 15, "faultproxy"))
    return proc, f"http://127.0.0.1:{port}"


def stop(proc):
    """SIGTERM, and the exit code (a clean stop is 0)."""
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        return "hung"


@pytest.fixture(scope="session")
def moto(tmp_path_factory):
    moto_server = Path(sys.executable).parent / "moto_server"
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([str(moto_server), "-H", "127.0.0.1", "-p", "0"],
                                stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    url = None
    while url is None and time.monotonic() < deadline and proc.poll() is None:
        for line in log.read_text().splitlines():
            if "Running on http://127.0.0.1:" in line:
                url = line.split("Running on ")[1].strip()
        time.sleep(0.1)
    if url is None:
        proc.kill()
        pytest.fail(f"moto_server did not start: {log.read_text()[-2000:]}")
    yield url
    stop(proc)


@pytest.fixture(scope="session")
def proxy_proc(moto, tmp_path_factory):
    log = tmp_path_factory.mktemp("proxy") / "faults.jsonl"
    proc, url = start_proxy(moto, log=log)
    yield proc, url, log
    assert stop(proc) == 0, "faultproxy did not stop cleanly on SIGTERM"


@pytest.fixture
def proxy(proxy_proc, moto):
    """The shared proxy, at rate 0 with zeroed stats and an empty log, over a reset moto."""
    _, url, log = proxy_proc
    urllib.request.urlopen(urllib.request.Request(moto + "/moto-api/reset", method="POST"))
    configure(url, fault_rate=0.0, kinds=list(faultproxy.KINDS), seed=0, latency_ms=0,
              services=["s3", "sqs"], sqs_throttle_code="RequestThrottled")
    log.write_text("")
    boto3.client("s3", **client_args(moto)).create_bucket(Bucket=BUCKET)
    return url


def configure(url, **changes):
    req = urllib.request.Request(url + "/__faultproxy/config", method="POST",
                                 data=json.dumps(dict(changes, reset_stats=True)).encode())
    return json.loads(urllib.request.urlopen(req).read())


def stats(url):
    return json.loads(urllib.request.urlopen(url + "/__faultproxy/stats").read())


def read_log(proxy_proc):
    return [json.loads(line) for line in proxy_proc[2].read_text().splitlines()]


# ---- clients ----

@pytest.fixture(autouse=True, scope="session")
def no_backoff():
    """botocore's standard-mode back-off (up to seconds) is not under test: the decision is."""
    original = standard_retries.ExponentialBackoff.delay_amount
    standard_retries.ExponentialBackoff.delay_amount = lambda self, context: 0
    yield
    standard_retries.ExponentialBackoff.delay_amount = original


def client_args(endpoint, attempts=3):
    return dict(endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing",
                aws_secret_access_key="testing",
                config=Config(retries={"mode": "standard", "total_max_attempts": attempts},
                              s3={"addressing_style": "path"}, read_timeout=10))


def recording_client(service, endpoint, attempts=3):
    """A boto3 client that also records the kwargs of every needs-retry event."""
    client = boto3.client(service, **client_args(endpoint, attempts))
    client.retry_events = []
    client.meta.events.register(f"needs-retry.{service}",
                                lambda **kw: client.retry_events.append(kw))
    return client


def botocore_verdict(event_kwargs):
    """(retryable, throttling) as botocore's standard retry mode classifies one attempt."""
    adapter = standard_retries.RetryEventAdapter()
    context = adapter.create_retry_context(**event_kwargs)
    # A high attempt limit, so only the error itself decides (not "that was the last try").
    retryable = standard_retries.StandardRetryConditions(max_attempts=99).is_retryable(context)
    throttling = standard_retries.ThrottlingErrorDetector(adapter).is_throttling_error(
        **event_kwargs)
    return retryable, throttling


def queue_depth(sqs, queue_url):
    attrs = sqs.get_queue_attributes(QueueUrl=queue_url,
                                     AttributeNames=["ApproximateNumberOfMessages"])
    return int(attrs["Attributes"]["ApproximateNumberOfMessages"])


def object_exists(s3, key):
    try:
        s3.head_object(Bucket=BUCKET, Key=key)
        return True
    except ClientError:
        return False


# ---- an echo upstream, to see the exact bytes the proxy forwards ----

class EchoUpstream(socketserver.ThreadingTCPServer):
    """Records each raw request (head + Content-Length or chunked body) and answers 200."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), EchoHandler)
        self.received = []
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self):
        return f"http://127.0.0.1:{self.server_address[1]}"


class EchoHandler(socketserver.BaseRequestHandler):
    def handle(self):
        self.request.settimeout(5)
        stream = self.request.makefile("rb")
        data = b""
        while not data.endswith(b"\r\n\r\n"):
            data += stream.readline()
        head = data.lower()
        if b"transfer-encoding: chunked" in head:
            while True:
                size_line = stream.readline()
                data += size_line
                size = int(size_line.split(b";")[0], 16)
                if size == 0:
                    while (line := stream.readline()) != b"\r\n":
                        data += line
                    data += line
                    break
                data += stream.read(size + 2)
        elif b"\r\ncontent-length:" in head:
            data += stream.read(int(head.split(b"\r\ncontent-length:")[1].split(b"\r\n")[0]))
        self.server.received.append(data)
        self.request.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")


def signed_aws_chunked_put(host, path, payload, framing):
    """A raw SigV4-signed S3 PUT with an aws-chunked body (as the Rust SDK sends for a
    streaming upload with a checksum trailer); framing: 'content-length' or 'chunked'."""
    crc = base64.b64encode(zlib.crc32(payload).to_bytes(4, "big")).decode()
    body = b""
    for i in range(0, len(payload), 100_000):
        piece = payload[i:i + 100_000]
        body += f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
    body += f"0\r\nx-amz-checksum-crc32:{crc}\r\n\r\n".encode()
    headers = {"Host": host, "Content-Encoding": "aws-chunked",
               "X-Amz-Content-SHA256": "STREAMING-UNSIGNED-PAYLOAD-TRAILER",
               "X-Amz-Decoded-Content-Length": str(len(payload)),
               "X-Amz-Trailer": "x-amz-checksum-crc32"}
    request = AWSRequest("PUT", f"http://{host}{path}", headers=headers)
    SigV4Auth(CREDS, "s3", "us-east-1").add_auth(request)
    lines = [f"PUT {path} HTTP/1.1"]
    # Header names in mixed case and an unusual order, as a client may send them.
    for name, value in request.headers.items():
        lines.append(f"{name.swapcase() if name.startswith('X-Amz-D') else name}: {value}")
    if framing == "chunked":
        lines.append("Transfer-Encoding: chunked")
        # HTTP chunked framing around the aws-chunked body: one chunk plus the terminator.
        body = f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n"
    else:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def raw_exchange(url, request_bytes):
    """Send raw bytes, return the raw response (until the server closes or 2 s of quiet)."""
    host, port = url.split("//")[1].split(":")
    with socket.create_connection((host, int(port)), timeout=2) as s:
        s.sendall(request_bytes)
        data = b""
        try:
            while chunk := s.recv(65536):
                data += chunk
        except socket.timeout:
            pass
        return data


def raw_request(url, method, path, body=None, headers=None):
    host, port = url.split("//")[1].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    conn.request(method, path, body=body, headers=headers or {})
    return conn, conn.getresponse()


# ---- pass-through fidelity ----

def test_s3_binary_body_tags_and_expect_continue_pass_through(proxy):
    s3 = boto3.client("s3", **client_args(proxy))
    s3.put_object(Bucket=BUCKET, Key="dir/a b+c.bin", Body=BINARY, Tagging="createByLambda=1",
                  ContentType="image/webp", Metadata={"origin": "test"})
    # A file-like body makes botocore send "Expect: 100-continue" and wait for the 100.
    s3.put_object(Bucket=BUCKET, Key="file.bin", Body=io.BytesIO(BINARY))
    got = s3.get_object(Bucket=BUCKET, Key="dir/a b+c.bin")
    assert got["Body"].read() == BINARY
    assert got["ContentType"] == "image/webp" and got["Metadata"] == {"origin": "test"}
    assert s3.get_object(Bucket=BUCKET, Key="file.bin")["Body"].read() == BINARY
    assert s3.get_object(Bucket=BUCKET, Key="file.bin", Range="bytes=10-19")["Body"].read() \
        == BINARY[10:20]
    tags = s3.get_object_tagging(Bucket=BUCKET, Key="dir/a b+c.bin")["TagSet"]
    assert tags == [{"Key": "createByLambda", "Value": "1"}]
    with pytest.raises(ClientError) as missing:
        s3.get_object(Bucket=BUCKET, Key="nope")
    assert missing.value.response["Error"]["Code"] == "NoSuchKey"
    counted = stats(proxy)
    assert counted["requests"] == {"s3": 7, "sqs": 0}
    assert counted["faults_by_kind"] == {}


def test_sqs_json_protocol_pass_through(proxy):
    sqs = boto3.client("sqs", **client_args(proxy))
    sent = []
    sqs.meta.events.register("before-send.sqs", lambda request, **kw: sent.append(request))
    queue = sqs.create_queue(QueueName="jobs")["QueueUrl"]
    sqs.send_message(QueueUrl=queue, MessageBody='{"key":"photos/cat.jpg@200w.webp"}',
                     MessageAttributes={"a": {"DataType": "String", "StringValue": "ü"}})
    messages = sqs.receive_message(QueueUrl=queue, WaitTimeSeconds=1,
                                   MessageAttributeNames=["All"])["Messages"]
    assert messages[0]["Body"] == '{"key":"photos/cat.jpg@200w.webp"}'
    assert messages[0]["MessageAttributes"]["a"]["StringValue"] == "ü"
    # boto3 speaks the JSON protocol here, which is what the proxy classifies as SQS.
    assert sent[1].headers["X-Amz-Target"] == b"AmazonSQS.SendMessage"
    assert sent[1].headers["Content-Type"] == b"application/x-amz-json-1.0"
    assert stats(proxy)["requests"] == {"s3": 0, "sqs": 3}


def test_aws_chunked_streaming_upload_reaches_moto(proxy):
    host = proxy.split("//")[1]
    raw = signed_aws_chunked_put(host, f"/{BUCKET}/streamed.bin", BINARY, "content-length")
    response = raw_exchange(proxy, raw)
    assert response.startswith(b"HTTP/1.1 200"), response[:300]
    s3 = boto3.client("s3", **client_args(proxy))
    assert s3.get_object(Bucket=BUCKET, Key="streamed.bin")["Body"].read() == BINARY


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_request_bytes_and_sigv4_reach_upstream_unchanged(framing):
    echo = EchoUpstream()
    proc, url = start_proxy(echo.url)
    try:
        raw = signed_aws_chunked_put(url.split("//")[1], "/b/k%20x?x-id=PutObject", BINARY,
                                     framing)
        assert raw_exchange(url, raw).startswith(b"HTTP/1.1 200 OK")
        assert echo.received == [raw]  # byte for byte: line, header case/order, framing, body

        # And a boto3-signed request: same headers and body upstream, signature recomputes.
        sent = []
        s3 = boto3.client("s3", **client_args(url))
        s3.meta.events.register("before-send.s3", lambda request, **kw: sent.append(request))
        s3.put_object(Bucket="bkt", Key="k/ü.bin", Body=BINARY[:1000])
        head, body = echo.received[1].split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        upstream_headers = dict(line.split(": ", 1) for line in lines[1:])
        sent_body = sent[0].body
        assert body == BINARY[:1000] == getattr(sent_body, "getvalue", lambda: sent_body)()
        for name, value in sent[0].headers.items():
            value = value.decode() if isinstance(value, bytes) else value
            assert upstream_headers[name] == value, name
        # Verify as S3 does: canonicalize the headers named in SignedHeaders, as received.
        authorization = upstream_headers["Authorization"]
        signed = authorization.split("SignedHeaders=")[1].split(",")[0].split(";")
        path = lines[0].split(" ")[1]
        check = AWSRequest("PUT", url + path, data=body, headers={
            k: v for k, v in upstream_headers.items() if k.lower() in signed})
        assert len(check.headers) == len(signed) and "host" in signed
        check.context["timestamp"] = upstream_headers["X-Amz-Date"]
        auth = S3SigV4Auth(CREDS, "s3", "us-east-1")  # S3: no double path encoding
        signature = auth.signature(auth.string_to_sign(check, auth.canonical_request(check)),
                                   check)
        assert authorization.endswith("Signature=" + signature)
    finally:
        assert stop(proc) == 0
        echo.shutdown()


# ---- each fault kind: wire shape, botocore's verdict, side effects ----

S3_ERROR_KINDS = {  # kind: (status, code, reaches moto)
    "s3-slowdown": (503, "SlowDown", False),
    "s3-slowdown-after": (503, "SlowDown", True),
    "s3-internal-error": (500, "InternalError", False),
    "s3-internal-error-after": (500, "InternalError", True),
}


@pytest.mark.parametrize("kind", sorted(S3_ERROR_KINDS))
def test_s3_error_kinds(proxy, moto, kind):
    status, code, side_effect = S3_ERROR_KINDS[kind]
    configure(proxy, fault_rate=1.0, kinds=[kind])
    conn, response = raw_request(proxy, "GET", f"/{BUCKET}/k?x=1&y=<2>")
    body = response.read()
    assert response.status == status
    assert response.getheader("Content-Type") == "application/xml"
    assert len(response.getheader("x-amz-request-id")) == 16
    error = ET.fromstring(body)
    assert error.tag == "Error" and error.findtext("Code") == code
    assert error.findtext("RequestId") == response.getheader("x-amz-request-id")
    assert error.findtext("Resource") == f"/{BUCKET}/k"
    conn.close()

    s3 = recording_client("s3", proxy, attempts=3)
    with pytest.raises(ClientError) as failure:
        s3.put_object(Bucket=BUCKET, Key="thumb.webp", Body=b"pixels")
    assert failure.value.response["Error"]["Code"] == code
    assert failure.value.response["ResponseMetadata"]["HTTPStatusCode"] == status
    assert stats(proxy)["faults"]["s3"] == {kind: 4}  # the raw GET, then 3 attempts
    verdicts = {botocore_verdict(kw) for kw in s3.retry_events}
    assert verdicts == {(True, code == "SlowDown")}
    direct = boto3.client("s3", **client_args(moto))
    assert object_exists(direct, "thumb.webp") == side_effect


@pytest.mark.parametrize("kind", ["sqs-throttled", "sqs-throttled-after"])
@pytest.mark.parametrize("code", ["RequestThrottled", "ThrottlingException"])
def test_sqs_throttling_kinds(proxy, moto, kind, code):
    queue = boto3.client("sqs", **client_args(moto)).create_queue(QueueName="q")["QueueUrl"]
    configure(proxy, fault_rate=1.0, kinds=[kind], sqs_throttle_code=code)
    conn, response = raw_request(proxy, "POST", "/", body=b"{}", headers={
        "X-Amz-Target": "AmazonSQS.SendMessage",
        "Content-Type": "application/x-amz-json-1.0"})
    body = json.loads(response.read())
    assert response.status == 400
    assert response.getheader("Content-Type") == "application/x-amz-json-1.0"
    assert response.getheader("x-amzn-query-error") == f"{code};Sender"
    assert body["__type"] == f"com.amazonaws.sqs#{code}" and body["message"]
    conn.close()
    # The query protocol (form-encoded) gets the XML error shape.
    conn, response = raw_request(proxy, "POST", "/", body=b"Action=SendMessage", headers={
        "Content-Type": "application/x-www-form-urlencoded"})
    assert response.status == 400
    assert ET.fromstring(response.read()).find("{*}Error/{*}Code").text == code
    conn.close()

    sqs = recording_client("sqs", proxy, attempts=3)
    with pytest.raises(ClientError) as failure:
        sqs.send_message(QueueUrl=queue, MessageBody="job")
    assert failure.value.response["Error"]["Code"] == code
    assert stats(proxy)["faults"]["sqs"] == {kind: 5}  # 2 raw, then 3 attempts
    assert {botocore_verdict(kw) for kw in sqs.retry_events} == {(True, True)}
    # "after": every attempt was delivered: the client's retries made duplicates.
    expected = 3 if kind.endswith("-after") else 0
    assert queue_depth(boto3.client("sqs", **client_args(moto)), queue) == expected


@pytest.mark.parametrize("kind", ["reset-before", "reset-mid-body"])
def test_resets(proxy, moto, kind):
    queue = boto3.client("sqs", **client_args(moto)).create_queue(QueueName="q")["QueueUrl"]
    boto3.client("s3", **client_args(moto)).put_object(Bucket=BUCKET, Key="orig", Body=BINARY)
    configure(proxy, fault_rate=1.0, kinds=[kind])

    # On the wire: reset-before sends nothing at all; reset-mid-body the head and half the body.
    sock = socket.create_connection(("127.0.0.1", int(proxy.rsplit(":", 1)[1])), timeout=5)
    request = boto3.client("s3", **client_args(proxy))
    sent = []
    request.meta.events.register("before-send.s3", lambda request, **kw: sent.append(request))
    configure(proxy, fault_rate=0.0, kinds=[kind])  # learn the exact signed GET first
    request.get_object(Bucket=BUCKET, Key="orig")["Body"].read()
    configure(proxy, fault_rate=1.0, kinds=[kind])
    head = f"GET {sent[0].url.split(proxy)[1]} HTTP/1.1\r\nHost: {proxy.split('//')[1]}\r\n"
    head += "".join(f"{k}: {v.decode() if isinstance(v, bytes) else v}\r\n"
                    for k, v in sent[0].headers.items())
    sock.sendall(head.encode() + b"\r\n")
    received, error = b"", None
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except ConnectionResetError as e:
        error = e
    sock.close()
    assert error is not None, "expected a TCP RST (ECONNRESET), got an orderly close"
    if kind == "reset-before":
        assert received == b""
    else:
        head, _, partial = received.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200") and 0 < len(partial) < len(BINARY)

    s3 = recording_client("s3", proxy, attempts=3)
    sqs = recording_client("sqs", proxy, attempts=3)
    with pytest.raises(HTTPClientError):
        s3.put_object(Bucket=BUCKET, Key="thumb.webp", Body=b"pixels")
    with pytest.raises(HTTPClientError):
        sqs.send_message(QueueUrl=queue, MessageBody="job")
    assert stats(proxy)["faults_by_kind"] == {kind: 1 + 3 + 3}
    assert {botocore_verdict(kw) for kw in s3.retry_events + sqs.retry_events} \
        == {(True, False)}
    direct_sqs = boto3.client("sqs", **client_args(moto))
    direct_s3 = boto3.client("s3", **client_args(moto))
    after = kind == "reset-mid-body"
    assert object_exists(direct_s3, "thumb.webp") == after
    assert queue_depth(direct_sqs, queue) == (3 if after else 0)

    # A streaming GetObject fails while its body is read, after botocore has returned:
    # the caller retries; the error is of the class botocore counts as transient.
    if after:
        body = s3.get_object(Bucket=BUCKET, Key="orig")["Body"]
        with pytest.raises(ResponseStreamingError) as failure:
            body.read()
        assert isinstance(failure.value, HTTPClientError)
        assert isinstance(failure.value,
                          standard_retries.TransientRetryableChecker._TRANSIENT_EXCEPTION_CLS)


def test_truncate(proxy, moto):
    boto3.client("s3", **client_args(moto)).put_object(Bucket=BUCKET, Key="orig", Body=BINARY)
    configure(proxy, fault_rate=1.0, kinds=["truncate"])
    # A body: the declared Content-Length, then half of it and an orderly close.
    conn, response = raw_request(proxy, "GET", f"/{BUCKET}/orig")
    assert response.status in (200, 403)  # unsigned: moto may refuse; either has a body
    declared = int(response.getheader("Content-Length"))
    with pytest.raises(http.client.IncompleteRead) as short:
        response.read()
    assert len(short.value.partial) == declared // 2 and short.value.expected > 0
    conn.close()
    # No body (HEAD): the status line is cut, so no client can take it for a response.
    conn = http.client.HTTPConnection(*proxy.split("//")[1].split(":"), timeout=5)
    conn.request("HEAD", f"/{BUCKET}/orig")
    with pytest.raises((http.client.BadStatusLine, ConnectionError)):
        conn.getresponse()
    conn.close()

    s3 = recording_client("s3", proxy, attempts=3)
    body = s3.get_object(Bucket=BUCKET, Key="orig")["Body"]
    with pytest.raises(ResponseStreamingError):  # botocore's StreamingBody checks the length
        body.read()
    with pytest.raises(HTTPClientError):  # HeadObject: no response at all, retried
        s3.head_object(Bucket=BUCKET, Key="orig")
    head_events = [kw for kw in s3.retry_events if kw["operation"].name == "HeadObject"]
    assert len(head_events) == 3
    assert {botocore_verdict(kw) for kw in head_events} == {(True, False)}
    # A short body on a non-streaming operation is *not* detected by botocore (it reads with
    # enforce_content_length=False); PutObject's empty body arrives declared as 1 byte.
    s3.put_object(Bucket=BUCKET, Key="thumb.webp", Body=b"pixels")
    assert stats(proxy)["faults_by_kind"] == {"truncate": 2 + 1 + 3 + 1}


def test_latency(proxy):
    configure(proxy, fault_rate=1.0, kinds=["latency"], latency_ms=300)
    s3 = boto3.client("s3", **client_args(proxy))
    start = time.monotonic()
    s3.put_object(Bucket=BUCKET, Key="slow", Body=b"x")
    assert s3.get_object(Bucket=BUCKET, Key="slow")["Body"].read() == b"x"
    assert time.monotonic() - start >= 0.6
    assert stats(proxy)["faults"]["s3"] == {"latency": 2}


# ---- selection: rate, services, determinism, stats, log, config ----

def run_sequence(proxy, n):
    """n single-attempt requests alternating S3 and SQS; the faults the log shows."""
    s3 = boto3.client("s3", **client_args(proxy, attempts=1))
    sqs = boto3.client("sqs", **client_args(proxy, attempts=1))
    for i in range(n):
        try:
            if i % 2:
                sqs.list_queues()
            else:
                s3.head_bucket(Bucket=BUCKET)
        except (ClientError, HTTPClientError):
            pass


def test_rate_zero_injects_nothing(proxy, proxy_proc):
    configure(proxy, fault_rate=0.0, kinds=list(faultproxy.KINDS), seed=1)
    run_sequence(proxy, 40)
    counted = stats(proxy)
    assert counted["requests"] == {"s3": 20, "sqs": 20}
    assert counted["faults"] == {"s3": {}, "sqs": {}} and counted["faults_by_kind"] == {}
    assert read_log(proxy_proc) == []


def test_same_seed_same_faults(proxy, proxy_proc):
    kinds = ["s3-slowdown", "s3-internal-error", "sqs-throttled", "reset-before"]
    runs = []
    for seed in (42, 42, 43):
        proxy_proc[2].write_text("")
        configure(proxy, fault_rate=0.5, kinds=kinds, seed=seed)  # also restarts numbering
        run_sequence(proxy, 30)
        runs.append([(e["request"], e["service"], e["operation"], e["kind"])
                     for e in read_log(proxy_proc)])
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]
    assert 5 <= len(runs[0]) <= 25  # about half of 30
    # The log is exactly the pure function of (seed, request number, applicable kinds).
    expected = []
    for k in range(1, 31):
        service = "s3" if k % 2 else "sqs"
        applicable = [kd for kd in kinds if service in faultproxy.KINDS[kd][0]]
        kind, _ = faultproxy.decide(43, k, 0.5, applicable)
        if kind:
            expected.append((k, service, "HeadBucket" if service == "s3" else "ListQueues",
                             kind))
    assert runs[2] == expected
    counted = stats(proxy)
    assert sum(counted["faults_by_kind"].values()) == len(runs[2])
    assert counted["request_counter"] == 30


def test_services_filter(proxy, proxy_proc):
    configure(proxy, fault_rate=1.0, kinds=["s3-slowdown", "sqs-throttled"], services=["sqs"])
    run_sequence(proxy, 10)
    counted = stats(proxy)
    assert counted["faults"] == {"s3": {}, "sqs": {"sqs-throttled": 5}}
    assert {e["service"] for e in read_log(proxy_proc)} == {"sqs"}


def test_control_endpoint(proxy):
    bad = urllib.request.Request(proxy + "/__faultproxy/config", method="POST",
                                 data=json.dumps({"kinds": ["no-such-kind"]}).encode())
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(bad)
    assert refused.value.code == 400 and b"no-such-kind" in refused.value.read()
    for changes in ({"kinds": 3}, {"fault_rate": 2}, {"bogus": 1}, [1]):
        bad.data = json.dumps(changes).encode()
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(bad)
        assert refused.value.code == 400, changes
    with pytest.raises(urllib.error.HTTPError) as missing:
        urllib.request.urlopen(proxy + "/__faultproxy/nothing")
    assert missing.value.code == 404
    config = json.loads(urllib.request.urlopen(proxy + "/__faultproxy/config").read())
    assert config["fault_rate"] == 0.0
    assert stats(proxy)["requests"] == {"s3": 0, "sqs": 0}  # control requests are not counted


def test_sigterm_with_open_connection(moto):
    proc, url = start_proxy(moto)
    idle = socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1])))
    stats(url)
    start = time.monotonic()
    assert stop(proc) == 0
    assert time.monotonic() - start < 5
    idle.close()


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q", *sys.argv[1:]]))
