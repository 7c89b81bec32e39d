#!/usr/bin/env python3
"""The Python reference for examples/bench_embed.rs, as the original embeds (docs/spec.md §1.1): HF
tokenizer with truncation to the encoder's max length and padding per batch, batches in input
order, PyTorch forward, masked mean over non-pad positions, fp32. Prints one JSON line.

    $TTTNN_PYTHON scripts/bench_embed_reference.py ENCODER_DIR FILE.jsonl [--batch-size 32] [--docs 2000]
        [--device cpu|cuda] [--precision fp32|fp16] [--attn eager|sdpa] [--sort-by-length]

--sort-by-length batches the texts in order of their token counts, as sentence-transformers' `encode`
does: the strong reference on a length mix (the original batches in input order).

ENCODER_DIR is the HF directory the ONNX graph was exported from.
"""
import argparse
import json
import time

import torch


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("encoder")
    ap.add_argument("file")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--docs", type=int, default=2000)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--precision", default="fp32", choices=["fp32", "fp16"])
    ap.add_argument("--attn", default=None, choices=["eager", "sdpa"], help="attention implementation")
    ap.add_argument("--sort-by-length", action="store_true")
    a = ap.parse_args()
    from transformers import AutoModel, AutoTokenizer
    dtype = torch.float16 if a.precision == "fp16" else torch.float32
    kw = {"attn_implementation": a.attn} if a.attn else {}
    model = AutoModel.from_pretrained(a.encoder, dtype=dtype, **kw).to(a.device).eval()
    tok = AutoTokenizer.from_pretrained(a.encoder)
    cfg = model.config
    max_len = cfg.max_position_embeddings - (cfg.pad_token_id + 1 if cfg.model_type == "roberta" else 0)
    texts = []
    with open(a.file, encoding="utf-8") as f:
        for line in f:
            texts.append(json.loads(line)["text"] or " ")
            if len(texts) >= a.docs:
                break

    def embed(batch):
        enc = tok(batch, truncation=True, max_length=max_len, padding=True, return_tensors="pt")
        with torch.no_grad():
            h = model(**{k: enc[k].to(a.device) for k in ("input_ids", "attention_mask")}).last_hidden_state
        m = enc["attention_mask"].to(a.device).unsqueeze(-1).float()
        # Pooled to the host, as tttnn returns its embeddings.
        return ((h.float() * m).sum(1) / m.sum(1)).cpu()

    embed(texts[: a.batch_size])
    t = time.perf_counter()
    if a.sort_by_length:
        # Counting tokens is part of the work, as in sentence-transformers (it sorts by characters).
        lengths = [len(ids) for ids in tok(texts, truncation=True, max_length=max_len)["input_ids"]]
        texts = [x for _, x in sorted(zip(lengths, texts), key=lambda p: p[0])]
    n = 0
    for i in range(0, len(texts), a.batch_size):
        n += embed(texts[i: i + a.batch_size]).shape[0]
    s = time.perf_counter() - t
    print(json.dumps({"impl": "python-reference", "encoder": a.encoder, "docs": n, "batch_size": a.batch_size,
                      "max_length": max_len, "device": a.device, "precision": a.precision,
                      "attn": model.config._attn_implementation, "sorted_by_length": a.sort_by_length, "seconds": s, "docs_per_s": n / s,
                      "mb_per_s": sum(len(x.encode()) for x in texts) / 1e6 / s, "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
