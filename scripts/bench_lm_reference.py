#!/usr/bin/env python3
"""The Python reference for examples/bench_lm.rs: HF transformers + PyTorch doing the same
training step (the original's: AdamW eps 1e-8, clip 1.0, batch 1, train mode) and the same
lm-eval rolling-window evaluation, timed the same way. Prints one JSON line per precision.

    $TTTNN_PYTHON scripts/bench_lm_reference.py MODEL_DIR [--steps 5] [--max-length 1024]
        [--device cpu|cuda] [--precision fp32[,bf16]]

PyTorch eager as people run it: on CUDA, AdamW and clip_grad_norm_ take their default foreach
(multi-tensor) paths and attention is SDPA; TF32 stays off (PyTorch's default for matmuls). bf16 is
torch.autocast(bfloat16) over fp32 weights and AdamW state: the usual mixed precision.
"""
import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_fixtures import get_rolling_token_windows, make_disjoint_window  # noqa: E402


def rolling_loglik(model, ids, eot, n_ctx, device, autocast):
    """lm-eval's rolling-window log-likelihood, as tttnn's eval computes it."""
    total = torch.zeros((), dtype=torch.float64, device=device)
    for ctx, cont in map(make_disjoint_window, get_rolling_token_windows(ids, eot, n_ctx, 1)):
        inp = torch.tensor([(ctx + cont)[:-1]], device=device)
        with torch.no_grad(), autocast():
            logits = model(inp).logits[0]
        logp = torch.log_softmax(logits.double(), -1)[-len(cont):]
        total += logp[torch.arange(len(cont), device=device), torch.tensor(cont, device=device)].sum()
    return total.item()


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def bench(model, tok, a, precision):
    device = a.device
    L, S = a.max_length, a.steps
    span = min(5000, model.config.vocab_size - 10)
    tokens = [(i * 7919) % span + 10 for i in range(L * (S + 1))]
    opt = torch.optim.AdamW(model.parameters(), lr=2e-5, eps=1e-8)
    if precision == "bf16":
        def autocast():
            return torch.autocast(device_type=device, dtype=torch.bfloat16)
    else:
        autocast = contextlib.nullcontext

    def step(chunk):
        model.train()
        x = torch.tensor([chunk], device=device)
        with autocast():
            loss = model(x, labels=x).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        # As tttnn reads each step's loss (to skip a non-finite one): one host sync per step.
        return loss.item()

    step(tokens[:L])
    # Medians of per-step times, as examples/bench_lm.rs.
    step_times = []
    for s in range(1, S + 1):
        sync(device)
        t = time.perf_counter()
        step(tokens[s * L:(s + 1) * L])
        sync(device)
        step_times.append(time.perf_counter() - t)
    step_s = sorted(step_times)[len(step_times) // 2]
    model.eval()
    text_ids = tok.encode(tok.decode(tokens[:L]), add_special_tokens=False)
    eos = model.config.eos_token_id
    eos = eos[0] if isinstance(eos, list) else eos
    n_ctx = getattr(model.config, "n_positions", None) or model.config.max_position_embeddings
    rolling_loglik(model, text_ids, eos, n_ctx, device, autocast)
    eval_times = []
    for _ in range(max(1, S)):
        sync(device)
        t = time.perf_counter()
        rolling_loglik(model, text_ids, eos, n_ctx, device, autocast)
        sync(device)
        eval_times.append(time.perf_counter() - t)
    eval_s = sorted(eval_times)[len(eval_times) // 2]
    n_params = sum(p.numel() for p in model.parameters())
    return {"impl": "pytorch", "model": str(a.model), "parameters": n_params, "max_length": L,
            "steps": S, "device": device, "precision": precision, "threads": torch.get_num_threads(),
            "train_step_s": step_s, "eval_doc_s": eval_s, "train_step_all_s": step_times,
            "eval_doc_all_s": eval_times, "train_tflops": 6 * n_params * L / step_s / 1e12,
            "peak_memory_bytes": torch.cuda.max_memory_allocated() if device == "cuda" else None}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model", type=Path)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--max-length", type=int, default=1024)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--precision", default="fp32", help="comma-separated: fp32, bf16")
    a = ap.parse_args()
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(a.model)
    for precision in a.precision.split(","):
        # A fresh copy of the pretrained fp32 weights for each precision.
        model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32).to(a.device)
        if a.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        print(json.dumps(bench(model, tok, a, precision)), flush=True)
        del model
        if a.device == "cuda":
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
