#!/usr/bin/env python3
"""Generates tttnn's test fixtures and golden reference outputs, deterministically.

Run with the reference stack from `scripts/setup --reference`:

    $TTTNN_PYTHON scripts/make_fixtures.py

Writes, under tests/fixtures/:
  corpus.jsonl              small real-text corpus in the Pile's JSONL format (licences and Python
                            docstrings shipped with Debian / CPython), with provenance in `meta`
  models/tiny-{gpt2,gptneo,llama,qwen2}/   random HF causal LMs (config.json, model.safetensors,
                            tokenizer.json) sharing one small byte-level BPE tokenizer
  encoders/tiny-roberta/    random RoBERTa encoder exported to ONNX (model.onnx, config.json,
                            tokenizer.json): input_ids + attention_mask -> last_hidden_state
  golden/golden.json        texts, token ids, per-document log-likelihoods (lm-eval rolling windows)
  golden/<model>.safetensors  logits, weights after 3 AdamW steps, encoder embeddings

All dropouts are 0 so that train-mode steps are deterministic and comparable with tttnn.
"""
import json
import math
import os
import random
import re
import sys
import inspect
from pathlib import Path

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, models, pre_tokenizers, decoders, trainers, processors

sys.path.insert(0, str(Path(__file__).resolve().parent))
from export_encoder import export_onnx, fuse  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent / "tests" / "fixtures"
SEED = 1216
LM_VOCAB = 384
N_CTX = 64
EOT = "<|endoftext|>"

torch.manual_seed(SEED)
random.seed(SEED)
torch.use_deterministic_algorithms(True)


# --- corpus ----------------------------------------------------------------------------------
def paragraphs(text):
    return [p.strip() for p in re.split(r"\n\s*\n", text) if len(p.strip()) > 200]


def build_corpus():
    docs = []
    lic_dir = Path("/usr/share/common-licenses")
    for name in ["Apache-2.0", "BSD", "GPL-3", "LGPL-3", "MPL-2.0", "Artistic"]:
        text = (lic_dir / name).read_text(encoding="utf-8", errors="strict")
        for i, p in enumerate(paragraphs(text)[:8]):
            docs.append({"text": p, "meta": {"pile_set_name": "FreeLaw",
                         "source": f"debian:base-files:{lic_dir / name}#para{i}"}})
    import json as m_json, os.path as m_path, textwrap, string, heapq, bisect, functools, fractions, collections
    for mod in [m_json, m_path, textwrap, string, heapq, bisect, functools, fractions, collections]:
        src = inspect.getsource(mod)
        # Source code (the Pile's "Github" set): module sources cut into ~1.5 kB pieces on def/class boundaries.
        pieces = re.split(r"\n(?=def |class )", src)
        for i, p in enumerate(pieces[1:6]):
            docs.append({"text": p[:1500], "meta": {"pile_set_name": "Github",
                         "source": f"cpython-3.11:{mod.__name__}#piece{i}"}})
    # A multi-byte document: bytes and characters differ, which bits per byte must get right.
    docs.append({"text": "Naïve café — “quoted” ü ß ✓ 東京 ✓. " * 6,
                 "meta": {"pile_set_name": "Pile-CC", "source": "tttnn:make_fixtures:unicode"}})
    seen, out = set(), []
    for d in docs:
        if d["text"] not in seen:
            seen.add(d["text"])
            out.append(d)
    return out


# --- tokenizers -------------------------------------------------------------------------------
def train_bpe(texts, vocab_size, specials):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    return tok


def hf_tokenizer(tok):
    from transformers import PreTrainedTokenizerFast
    return PreTrainedTokenizerFast(tokenizer_object=tok)


# --- lm-eval's rolling windows (lm_eval/utils.py, as used by the original) ---------------------
def get_rolling_token_windows(token_list, prefix_token, max_seq_len, context_len):
    assert 1 <= context_len <= max_seq_len
    if not token_list:
        return
    pred_len = max_seq_len - context_len + 1
    predicted = 0
    first_seq_len = min(max_seq_len, len(token_list))
    yield ([prefix_token] + token_list[: first_seq_len - 1], token_list[:first_seq_len])
    predicted += first_seq_len
    while predicted < len(token_list):
        window_pred_len = min(len(token_list) - predicted, pred_len)
        window_end = predicted + window_pred_len
        yield (token_list[window_end - max_seq_len - 1: window_end - 1],
               token_list[window_end - window_pred_len: window_end])
        predicted += window_pred_len


def make_disjoint_window(pair):
    a, b = pair
    return a[: len(a) - (len(b) - 1)], b


@torch.no_grad()
def rolling_loglik(model, ids, eot, n_ctx, dtype=torch.float64):
    total = 0.0
    for ctx, cont in map(make_disjoint_window, get_rolling_token_windows(ids, eot, n_ctx, 1)):
        inp = torch.tensor([(ctx + cont)[:-1]])
        logp = torch.log_softmax(model(inp).logits[0].to(dtype), -1)
        logp = logp[-len(cont):]
        total += logp[torch.arange(len(cont)), torch.tensor(cont)].sum().item()
    return total


def adamw_steps(model, ids, max_length, steps, lr):
    """The original's training: one AdamW step per non-overlapping max_length chunk, clip 1.0."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, eps=1e-8)
    model.train()
    losses = []
    chunks = [ids[b: b + max_length] for b in range(0, len(ids), max_length)]
    chunks = [c for c in chunks if len(c) > 1][:steps]
    assert len(chunks) == steps
    for c in chunks:
        x = torch.tensor([c])
        loss = model(x, labels=x).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
    model.eval()
    return losses


# --- models -----------------------------------------------------------------------------------
def lm_configs(vocab, eot_id):
    from transformers import GPT2Config, GPTNeoConfig, LlamaConfig, Qwen2Config
    common = dict(vocab_size=vocab, bos_token_id=eot_id, eos_token_id=eot_id)
    return {
        "tiny-gpt2": GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=N_CTX, resid_pdrop=0.0,
                                embd_pdrop=0.0, attn_pdrop=0.0, **common),
        # window_size 16 < n_ctx so the local-attention path matters in the golden logits.
        "tiny-gptneo": GPTNeoConfig(hidden_size=32, num_layers=2, num_heads=4, max_position_embeddings=N_CTX,
                                    attention_types=[[["global", "local"], 1]], window_size=16,
                                    resid_dropout=0.0, embed_dropout=0.0, attention_dropout=0.0, **common),
        "tiny-llama": LlamaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                  intermediate_size=64, max_position_embeddings=N_CTX, rope_theta=10000.0,
                                  tie_word_embeddings=False, **common),
        "tiny-qwen2": Qwen2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                  intermediate_size=64, max_position_embeddings=N_CTX, rope_theta=1000000.0,
                                  tie_word_embeddings=True, use_sliding_window=False, **common),
    }


def main():
    from transformers import AutoModelForCausalLM, RobertaConfig, RobertaModel
    ROOT.mkdir(parents=True, exist_ok=True)
    corpus = build_corpus()
    with open(ROOT / "corpus.jsonl", "w", encoding="utf-8") as f:
        for d in corpus:
            f.write(json.dumps(d, ensure_ascii=False) + "\n")
    texts = [d["text"] for d in corpus]
    golden_texts = [texts[0], texts[len(texts) // 2], texts[-1], "Hello world", ""]

    golden = {"texts": golden_texts, "n_ctx": N_CTX, "lms": {}, "encoder": {}}

    # Causal LMs share one byte-level BPE tokenizer, GPT-2 style (EOT as the only special token).
    lm_tok = train_bpe(texts, LM_VOCAB, [EOT])
    eot_id = lm_tok.token_to_id(EOT)
    golden["lm_token_ids"] = [lm_tok.encode(t).ids for t in golden_texts]
    golden["eot_id"] = eot_id

    for name, cfg in lm_configs(lm_tok.get_vocab_size(), eot_id).items():
        torch.manual_seed(SEED)
        model = AutoModelForCausalLM.from_config(cfg).float().eval()
        d = ROOT / "models" / name
        model.save_pretrained(d, safe_serialization=True)
        lm_tok.save(str(d / "tokenizer.json"))
        g, tensors = {}, {}
        ids0 = golden["lm_token_ids"][0][:N_CTX]
        with torch.no_grad():
            tensors["logits"] = model(torch.tensor([ids0])).logits[0].contiguous()
        g["logits_input_ids"] = ids0
        g["loglik"] = [rolling_loglik(model, ids, eot_id, N_CTX) for ids in golden["lm_token_ids"]]
        g["bytes"] = [len(t.encode("utf-8")) for t in golden_texts]
        # Three AdamW steps, max_length 24 (chunks of text 0), lr 1e-3 so the weights visibly move.
        g["train"] = {"text_index": 0, "max_length": 24, "steps": 3, "lr": 1e-3, "weight_decay": 0.01,
                      "eps": 1e-8, "clip": 1.0}
        g["train"]["losses"] = adamw_steps(model, golden["lm_token_ids"][0], 24, 3, 1e-3)
        for k, v in model.state_dict().items():
            if "masked_bias" in k or k.endswith(".attn.bias") or "rotary_emb" in k:
                continue
            tensors["trained." + k] = v.detach().contiguous().clone()
        golden["lms"][name] = g
        save_file(tensors, str(ROOT / "golden" / f"{name}.safetensors") if (ROOT / "golden").exists()
                  else (os.makedirs(ROOT / "golden") or str(ROOT / "golden" / f"{name}.safetensors")))

    # RoBERTa-style encoder: its own tokenizer with RoBERTa's specials and post-processor.
    enc_tok = train_bpe(texts, 320, ["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    enc_tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    max_len = 64
    cfg = RobertaConfig(vocab_size=enc_tok.get_vocab_size(), hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=4, intermediate_size=64, max_position_embeddings=max_len + 2,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, pad_token_id=1,
                        bos_token_id=0, eos_token_id=2)
    torch.manual_seed(SEED)
    enc = RobertaModel(cfg, add_pooling_layer=False).eval()
    d = ROOT / "encoders" / "tiny-roberta"
    d.mkdir(parents=True, exist_ok=True)
    cfg.save_pretrained(d)
    enc_tok.save(str(d / "tokenizer.json"))

    ex = (torch.tensor([[0, 5, 6, 2], [0, 7, 2, 1]]), torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]]))
    export_onnx(enc, d / "model.onnx", ex)
    fuse(d / "model.onnx", cfg)  # as scripts/export_encoder.py does; the golden test checks the result
    # The original's embedding (spec 1.1): truncate to max length incl. specials, empty text -> " ",
    # masked mean over non-pad positions (<s>, </s> included), fp32, no normalisation.
    enc_ids = []
    for t in golden_texts:
        ids = enc_tok.encode(t if t else " ").ids
        if len(ids) > max_len:
            ids = ids[: max_len - 1] + [2]
        enc_ids.append(ids)
    width = max(len(i) for i in enc_ids)
    inp = torch.tensor([i + [1] * (width - len(i)) for i in enc_ids])
    mask = torch.tensor([[1] * len(i) + [0] * (width - len(i)) for i in enc_ids])
    with torch.no_grad():
        hidden = enc(input_ids=inp, attention_mask=mask).last_hidden_state
        m = mask.unsqueeze(-1).float()
        pooled = (hidden * m).sum(1) / m.sum(1)
    golden["encoder"] = {"token_ids": enc_ids, "max_length": max_len, "dim": 32}
    save_file({"embeddings": pooled.contiguous(), "last_hidden_state": hidden.contiguous()},
              str(ROOT / "golden" / "tiny-roberta.safetensors"))
    golden["versions"] = {"torch": torch.__version__, "transformers": __import__("transformers").__version__,
                          "python": sys.version.split()[0]}
    with open(ROOT / "golden" / "golden.json", "w", encoding="utf-8") as f:
        json.dump(golden, f, ensure_ascii=False, indent=1)
    print(f"fixtures written to {ROOT}", file=sys.stderr)


if __name__ == "__main__":
    main()
