#!/usr/bin/env python3
"""The Python reference for examples/bench_lm.rs: HF transformers + PyTorch doing the same
training step (the original's: AdamW eps 1e-8, clip 1.0, batch 1, train mode) and the same
lm-eval rolling-window evaluation, timed the same way. Prints one JSON line.

    $TTTNN_PYTHON scripts/bench_lm_reference.py MODEL_DIR [--steps 5] [--max-length 1024]
"""
import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_fixtures import rolling_loglik  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model", type=Path)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--max-length", type=int, default=1024)
    a = ap.parse_args()
    from transformers import AutoModelForCausalLM, AutoTokenizer
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(a.model)
    n_params = sum(p.numel() for p in model.parameters())
    L, S = a.max_length, a.steps
    tokens = [(i * 7919) % 5000 + 10 for i in range(L * (S + 1))]
    opt = torch.optim.AdamW(model.parameters(), lr=2e-5, eps=1e-8)

    def step(chunk):
        model.train()
        x = torch.tensor([chunk])
        loss = model(x, labels=x).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    step(tokens[:L])
    # Medians of per-step times, as examples/bench_lm.rs.
    step_times = []
    for s in range(1, S + 1):
        t = time.perf_counter()
        step(tokens[s * L:(s + 1) * L])
        step_times.append(time.perf_counter() - t)
    step_s = sorted(step_times)[len(step_times) // 2]
    model.eval()
    text_ids = tok.encode(tok.decode(tokens[:L]), add_special_tokens=False)
    eos = model.config.eos_token_id
    eos = eos[0] if isinstance(eos, list) else eos
    n_ctx = getattr(model.config, "n_positions", None) or model.config.max_position_embeddings
    rolling_loglik(model, text_ids, eos, n_ctx, torch.float32)
    eval_times = []
    for _ in range(max(1, S)):
        t = time.perf_counter()
        rolling_loglik(model, text_ids, eos, n_ctx, torch.float32)
        eval_times.append(time.perf_counter() - t)
    eval_s = sorted(eval_times)[len(eval_times) // 2]
    print(json.dumps({"impl": "python-reference", "model": str(a.model), "parameters": n_params, "max_length": L,
                      "steps": S, "device": "cpu", "precision": "fp32", "threads": torch.get_num_threads(),
                      "train_step_s": step_s, "eval_doc_s": eval_s, "train_step_all_s": step_times, "eval_doc_all_s": eval_times,
                      "train_tflops": 6 * n_params * L / step_s / 1e12}))


if __name__ == "__main__":
    main()
