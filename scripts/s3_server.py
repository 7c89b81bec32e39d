#!/usr/bin/env python3
"""A local S3-compatible server (moto, from PyPI) for tttnn's object-storage tests, for trying
`--store s3://...` on one machine, and for the retrieval benchmark's object-storage rows. Prints the
endpoint on its first stdout line, creates the buckets named, and serves until stdin closes (a test
drops its handle) or it is interrupted.

    $TTTNN_S3_PYTHON scripts/s3_server.py [--port 0] [--latency-ms 0] [--upload DIR=BUCKET/PREFIX] BUCKET...

Clients use AWS_ENDPOINT_URL=<endpoint> AWS_ALLOW_HTTP=true AWS_ACCESS_KEY_ID=test
AWS_SECRET_ACCESS_KEY=test AWS_REGION=us-east-1 (moto checks no signature).

For benchmarks (examples/bench_retrieval.rs drives it), lines on stdin control it:
  `latency MS`  every later request waits MS milliseconds before it is served (a network round trip);
  `reset`       zeroes the request counters;
  `stats`       prints one JSON line: requests (by method), bytes sent and received since `reset`.
`--upload DIR=BUCKET/PREFIX` copies a local directory (a store) into the server before the endpoint
is printed.
"""
import argparse
import json
import logging
import os
import sys
import threading
import time

import boto3
from moto.core.models import DEFAULT_ACCOUNT_ID
from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from moto.s3.models import s3_backends
from werkzeug.serving import make_server


class Shim:
    """WSGI middleware around moto: injected latency, request and byte counters, and ranged GETs
    served from the object's buffer.

    moto answers a ranged GET by reading the whole object and slicing it (moto/s3/models.py,
    FakeKey.value), so a 4 KiB read of a 1.5 GB Lance data file copies 1.5 GB; real S3 reads only the
    range. The shim serves `GET /bucket/key` with a single `Range: bytes=a-b` itself, by seeking in
    moto's spooled buffer, with the headers S3 sends; anything else goes to moto unchanged."""

    def __init__(self, app, latency_ms):
        self.app = app
        self.latency = latency_ms / 1000.0
        self.lock = threading.Lock()
        # moto checks a conditional PUT's precondition and then stores the object, two steps with
        # no lock between them (moto/s3/responses.py, put_object): two `If-None-Match: *` PUTs of one
        # key can both succeed (seen here with 2 MB bodies: scripts/s3_conditional_put.py
        # --bytes). Two Lance writers would then both commit one version and one commit would be
        # lost. Real S3 decides a conditional write atomically; one writer at a time here does too.
        self.write_lock = threading.Lock()
        self.reset()

    def reset(self):
        with self.lock:
            self.requests = {}
            self.bytes_sent = 0
            self.bytes_received = 0

    def stats(self):
        with self.lock:
            return {
                "requests": sum(self.requests.values()),
                "by_method": dict(self.requests),
                "bytes_sent": self.bytes_sent,
                "bytes_received": self.bytes_received,
            }

    def count(self, method, received, sent):
        with self.lock:
            self.requests[method] = self.requests.get(method, 0) + 1
            self.bytes_received += received
            self.bytes_sent += sent

    def ranged_get(self, environ, start_response):
        rng = environ.get("HTTP_RANGE", "")
        if environ["REQUEST_METHOD"] != "GET" or not rng.startswith("bytes=") or "," in rng:
            return None
        if environ.get("QUERY_STRING"):
            return None  # versionId, partNumber, ...: moto's business
        parts = environ.get("PATH_INFO", "").lstrip("/").split("/", 1)
        if len(parts) != 2 or not parts[1]:
            return None
        try:
            backend = s3_backends[DEFAULT_ACCOUNT_ID]["aws"]
            key = backend.get_object(parts[0], parts[1])
        except Exception:
            return None
        if key is None:
            return None
        size = key.size
        first, _, last = rng[len("bytes="):].partition("-")
        try:
            if first:
                begin = int(first)
                end = min(int(last), size - 1) if last else size - 1
            else:
                begin = max(size - int(last), 0)
                end = size - 1
        except ValueError:
            return None
        if begin >= size or begin > end:
            return None  # moto answers 416
        with key.lock:
            key._value_buffer.seek(begin)
            body = key._value_buffer.read(end - begin + 1)
        start_response(
            "206 Partial Content",
            [
                ("Content-Type", "binary/octet-stream"),
                ("Content-Length", str(len(body))),
                ("Content-Range", f"bytes {begin}-{end}/{size}"),
                ("Accept-Ranges", "bytes"),
                ("ETag", key.etag),
                ("Last-Modified", key.last_modified_RFC1123),
            ],
        )
        return [body]

    def __call__(self, environ, start_response):
        if self.latency > 0:
            time.sleep(self.latency)
        received = int(environ.get("CONTENT_LENGTH") or 0)
        body = self.ranged_get(environ, start_response)
        if body is None and environ["REQUEST_METHOD"] in ("PUT", "POST", "DELETE"):
            with self.write_lock:
                body = list(self.app(environ, start_response))
        elif body is None:
            body = list(self.app(environ, start_response))
        self.count(environ["REQUEST_METHOD"], received, sum(len(b) for b in body))
        return body


def upload(s3, spec):
    local, _, target = spec.partition("=")
    bucket, _, prefix = target.partition("/")
    if not os.path.isdir(local) or not bucket:
        sys.exit(f"--upload {spec}: want an existing DIR=BUCKET/PREFIX")
    prefix = prefix.strip("/")
    n = 0
    for root, _, files in os.walk(local):
        for f in files:
            path = os.path.join(root, f)
            rel = os.path.relpath(path, local)
            s3.upload_file(path, bucket, f"{prefix}/{rel}" if prefix else rel)
            n += 1
    print(f"uploaded {n} files from {local} to s3://{bucket}/{prefix}", file=sys.stderr)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("buckets", nargs="*")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--latency-ms", type=float, default=0.0)
    ap.add_argument("--upload", action="append", default=[], metavar="DIR=BUCKET/PREFIX")
    args = ap.parse_args()
    # werkzeug logs every request on stderr.
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    shim = Shim(DomainDispatcherApplication(create_backend_app), 0.0)
    server = make_server("127.0.0.1", args.port, shim, True, request_handler=MotoRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    host, port = server.server_address[:2]
    endpoint = f"http://{host}:{port}"
    s3 = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="test",
                      aws_secret_access_key="test", region_name="us-east-1")
    for b in args.buckets:
        s3.create_bucket(Bucket=b)
    for spec in args.upload:
        upload(s3, spec)
    shim.latency = args.latency_ms / 1000.0
    shim.reset()
    print(endpoint, flush=True)
    try:
        for line in sys.stdin:
            cmd = line.split()
            if cmd[:1] == ["latency"] and len(cmd) == 2:
                shim.latency = float(cmd[1]) / 1000.0
            elif cmd == ["reset"]:
                shim.reset()
            elif cmd == ["stats"]:
                print(json.dumps(shim.stats()), flush=True)
            elif cmd:
                print(f"unknown command: {line.strip()}", file=sys.stderr)
    except KeyboardInterrupt:
        pass
    server.shutdown()
    thread.join()


if __name__ == "__main__":
    main()
