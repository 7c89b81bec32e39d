#!/usr/bin/env python3
"""The Python reference for `tttnn ingest` end to end (scripts/bench-ingest): what a researcher
would write with the usual tools. Reads a Pile-format JSONL file, embeds each commit's texts with
sentence-transformers' `encode` (which sorts a call's texts by length, batches them and pads each
batch to its longest), and appends them with their ids, sets and lines to a Lance dataset with
pylance, one commit per `--commit-rows` documents as `tttnn ingest` commits. Prints one JSON line.

    $TTTNN_PYTHON scripts/bench_ingest_reference.py ST_MODEL_DIR FILE.jsonl OUT.lance
        [--batch-size 32] [--commit-rows 4096] [--max-length 512]

`--max-length` is set on the model (`max_seq_length`) so both sides truncate alike: tttnn cuts at
the encoder's own limit (512 for MiniLM's 512 positions), sentence-transformers' all-MiniLM-L6-v2
config at 256 unless told.
"""
import argparse
import json
import os
import resource
import shutil
import time


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("file")
    ap.add_argument("out")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--commit-rows", type=int, default=4096)
    ap.add_argument("--max-length", type=int, default=512)
    a = ap.parse_args()
    t0 = time.perf_counter()
    import lance
    import pyarrow as pa
    import torch
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(a.model, device="cpu")
    model.max_seq_length = a.max_length
    shutil.rmtree(a.out, ignore_errors=True)
    name = os.path.basename(a.file)
    load_s = time.perf_counter() - t0

    t = time.perf_counter()
    docs = 0
    pending = []

    def commit(rows):
        emb = model.encode([r["text"] or " " for r in rows], batch_size=a.batch_size,
                           convert_to_numpy=True, show_progress_bar=False)
        dim = emb.shape[1]
        table = pa.table({
            "id": [f"{name}:{r['line']}" for r in rows],
            "set_name": [r["set"] for r in rows],
            "line": pa.array([r["line"] for r in rows], pa.uint64()),
            "text": [r["text"] for r in rows],
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1), pa.float32()), dim),
        })
        lance.write_dataset(table, a.out, mode="append" if os.path.exists(a.out) else "create")

    with open(a.file, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            d = json.loads(line)
            pending.append({"text": d["text"], "set": (d.get("meta") or {}).get("pile_set_name", ""), "line": i})
            if len(pending) >= a.commit_rows:
                commit(pending)
                docs += len(pending)
                pending = []
    if pending:
        commit(pending)
        docs += len(pending)
    s = time.perf_counter() - t
    rows = lance.dataset(a.out).count_rows()
    print(json.dumps({
        "impl": "python-reference", "pipeline": "sentence-transformers encode + pylance write_dataset",
        "model": a.model, "docs": docs, "rows": rows, "batch_size": a.batch_size, "commit_rows": a.commit_rows,
        "max_length": a.max_length, "threads": torch.get_num_threads(), "load_seconds": load_s, "seconds": s,
        "docs_per_s": docs / s, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }))


if __name__ == "__main__":
    main()
