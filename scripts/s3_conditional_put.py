#!/usr/bin/env python3
"""Checks that an S3 endpoint honours conditional PUT atomically, as Lance's commits need: WRITERS
clients PUT one new key at once with `If-None-Match: *`; exactly one may succeed, the rest must get
412 Precondition Failed, and the object must hold the winner's bytes. Prints a JSON summary.

    python scripts/s3_conditional_put.py ENDPOINT BUCKET [--writers 64] [--rounds 3] [--bytes 0]

`--bytes N` pads each body to N bytes: a Lance manifest is kilobytes, and a server that checks the
condition and stores the object as two steps is wider open to a race the longer the store takes.
"""
import argparse
import json
import threading
import uuid
from collections import Counter

import boto3
import botocore


def client(endpoint):
    return boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="test",
                        aws_secret_access_key="test", region_name="us-east-1")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("endpoint")
    ap.add_argument("bucket")
    ap.add_argument("--writers", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--bytes", type=int, default=0)
    args = ap.parse_args()
    rounds = []

    def body_of(i):
        return f"writer {i}".encode().ljust(args.bytes, b".")

    for _ in range(args.rounds):
        key = f"conditional-put-{uuid.uuid4()}"
        outcomes = {}
        clients = [client(args.endpoint) for _ in range(args.writers)]
        start = threading.Barrier(args.writers)

        def put(i):
            start.wait()
            try:
                clients[i].put_object(Bucket=args.bucket, Key=key, Body=body_of(i),
                                      IfNoneMatch="*")
                outcomes[i] = "ok"
            except botocore.exceptions.ClientError as e:
                outcomes[i] = str(e.response["ResponseMetadata"]["HTTPStatusCode"])

        threads = [threading.Thread(target=put, args=(i,)) for i in range(args.writers)]
        [t.start() for t in threads]
        [t.join() for t in threads]
        winners = [i for i, o in outcomes.items() if o == "ok"]
        body = client(args.endpoint).get_object(Bucket=args.bucket, Key=key)["Body"].read()
        rounds.append({"outcomes": dict(Counter(outcomes.values())),
                       "winner_stored": len(winners) == 1 and body == body_of(winners[0])})
    print(json.dumps({"writers": args.writers, "rounds": rounds}))


if __name__ == "__main__":
    main()
