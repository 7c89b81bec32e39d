#!/usr/bin/env python3
"""A local S3-compatible server (moto, from PyPI) for tttnn's object-storage tests and for trying
`--store s3://...` on one machine. Prints the endpoint on its first stdout line, creates the buckets
named, and serves until stdin closes (a test drops its handle) or it is interrupted.

    $TTTNN_S3_PYTHON scripts/s3_server.py [--port 0] BUCKET...

Clients use AWS_ENDPOINT_URL=<endpoint> AWS_ALLOW_HTTP=true AWS_ACCESS_KEY_ID=test
AWS_SECRET_ACCESS_KEY=test AWS_REGION=us-east-1 (moto checks no signature).
"""
import argparse
import logging
import sys

import boto3
from moto.server import ThreadedMotoServer


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("buckets", nargs="*")
    ap.add_argument("--port", type=int, default=0)
    args = ap.parse_args()
    # werkzeug logs every request on stderr.
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=args.port, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    s3 = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="test",
                      aws_secret_access_key="test", region_name="us-east-1")
    for b in args.buckets:
        s3.create_bucket(Bucket=b)
    print(endpoint, flush=True)
    try:
        sys.stdin.read()
    except KeyboardInterrupt:
        pass
    server.stop()


if __name__ == "__main__":
    main()
