#!/usr/bin/env python3
"""The GPU check's driver (scripts/device-check runs it; docs/gpu.md says how and why).

Runs tttnn's binaries on one device and PyTorch beside them, in order of importance (first the
GPU gates, tests/it/gpu.rs, from the integration test binary), each step with a time limit and the
whole under a budget; a failing step is recorded and the check goes on, and results.json is
rewritten as each step finishes, so a check cut short keeps what it measured.
Writes results.json (every figure) and table.md under --out, and prints the table.

    python3 scripts/device_check.py --device cuda --bin KIT/bin --gpt2-tokenizer FILE --out DIR
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "tests" / "fixtures"
# Dense peak rates by GPU (vendor datasheets, SXM parts): bf16 tensor cores, TF32, plain fp32.
PEAKS = {"H100": {"bf16": 989.4e12, "tf32": 494.7e12, "fp32": 66.9e12},
         "H200": {"bf16": 989.4e12, "tf32": 494.7e12, "fp32": 66.9e12}}


def rows(out):
    """`tttnn sql --format json` output: a JSON array, or one object per line."""
    out = out.strip()
    try:
        v = json.loads(out)
        return v if isinstance(v, list) else [v]
    except json.JSONDecodeError:
        return [json.loads(line) for line in out.splitlines() if line.strip()]


class Check:
    def __init__(self, a):
        self.a = a
        self.dev = a.device
        self.out = Path(a.out)
        self.work = Path(a.work)
        self.work.mkdir(parents=True, exist_ok=True)
        self.out.mkdir(parents=True, exist_ok=True)
        self.start = time.monotonic()
        self.results = {"device": self.dev, "steps": {}, "correctness": {}, "lm_speed": [],
                        "embed_speed": [], "end_to_end": {}}
        self.py = sys.executable
        self.inputs = {}  # embed_inputs' files by number of texts

    def left(self):
        return self.a.budget_s - (time.monotonic() - self.start)

    def bin(self, name):
        return str(Path(self.a.bin) / name)

    def sh(self, cmd, timeout=120, ok_codes=(0,), env=None, stderr=False):
        """Runs cmd; returns stdout (with stderr: both); raises with the stderr tail on a bad exit."""
        t = time.monotonic()
        p = subprocess.run([str(c) for c in cmd], capture_output=True, text=True,
                           timeout=min(timeout, max(self.left(), 5)), env=env)
        took = time.monotonic() - t
        print(f"  $ {' '.join(str(c) for c in cmd)[:160]}  [{took:.1f}s, exit {p.returncode}]", file=sys.stderr)
        if p.returncode not in ok_codes:
            raise RuntimeError(f"exit {p.returncode}: {p.stderr[-1500:]}")
        return (p.stdout, p.stderr) if stderr else p.stdout

    def step(self, name, fn, min_left=20):
        if self.left() < min_left:
            self.results["steps"][name] = {"ok": False, "skipped": "budget spent"}
            print(f"== {name}: skipped, budget spent", file=sys.stderr)
            return
        print(f"== {name}", file=sys.stderr)
        t = time.monotonic()
        try:
            fn()
            self.results["steps"][name] = {"ok": True, "seconds": round(time.monotonic() - t, 1)}
        except Exception as e:  # a failed step is a finding, not the end of the check
            traceback.print_exc()
            self.results["steps"][name] = {"ok": False, "seconds": round(time.monotonic() - t, 1),
                                           "error": str(e)[-2000:]}
        self.save()

    def save(self):
        (self.out / "results.json").write_text(json.dumps(self.results, indent=1))

    # --- steps ------------------------------------------------------------------------------------

    def doctor(self):
        # --cuda on a CPU-only machine must fail cleanly (exit 1 or 2, a line per missing piece).
        ok = (0,) if self.dev == "cuda" else (0, 1, 2)
        out = self.sh([self.bin("tttnn"), "doctor", "--cuda", "--json"], ok_codes=ok)
        self.results["doctor"] = json.loads(out)
        try:
            q = "name,memory.total,driver_version"
            smi = self.sh(["nvidia-smi", f"--query-gpu={q}", "--format=csv,noheader"], timeout=20)
            self.results["gpu"] = smi.strip()
        except Exception:
            self.results["gpu"] = None

    def smoke(self):
        out = self.sh([self.bin("tttnn"), "smoke", "--device", self.dev, "--out", self.work / "smoke", "--json"],
                      timeout=120)
        self.results["correctness"]["smoke"] = json.loads(out)

    def gates(self):
        """The GPU gates (tests/it/gpu.rs): the integration test binary's `gpu::` tests, ignored in
        a plain `cargo test`, run here against CUDA (the dry run: TTTNN_GATE_DEVICE=cpu, the CPU
        standing in). Each gate prints its measured difference and bound on a `gate ...` line;
        the bounds live in the Rust tests, not here."""
        env = dict(os.environ, TTTNN_TEST_REPO=str(REPO), TTTNN_TEST_BIN=self.bin("tttnn"),
                   TTTNN_GATE_DEVICE=self.dev)
        p = subprocess.run([self.bin("integration"), "gpu::", "--ignored", "--nocapture", "--test-threads", "1"],
                           capture_output=True, text=True, env=env, timeout=max(self.left(), 5))
        text = p.stdout + p.stderr
        tests = dict(re.findall(r"^test gpu::(\w+) \.\.\. (ok|FAILED)", text, re.M))
        measured = [line for line in text.splitlines() if line.startswith("gate ")]
        failures = re.findall(r"^---- gpu::(\w+) stdout ----\n(.*?)(?=^---- |^failures:$)", text, re.M | re.S)
        self.results["correctness"]["gates"] = {
            "tests": {name: outcome == "ok" for name, outcome in tests.items()}, "measured": measured,
            "failures": {name: body.strip()[-1500:] for name, body in failures}, "exit": p.returncode,
            "ok": p.returncode == 0 and bool(tests) and all(o == "ok" for o in tests.values())}
        if not tests:
            raise RuntimeError(f"no gate ran (exit {p.returncode}): {text[-1500:]}")

    def make_gpt2(self, name, **cfg):
        d = self.work / name
        if not (d / "model.safetensors").exists():
            code = ("import sys, torch\nfrom transformers import GPT2Config, GPT2LMHeadModel\n"
                    "torch.manual_seed(0)\n"
                    f"GPT2LMHeadModel(GPT2Config(**{cfg!r})).save_pretrained(sys.argv[1], safe_serialization=True)\n")
            self.sh([self.py, "-c", code, d], timeout=180)
            shutil.copy(self.a.gpt2_tokenizer, d / "tokenizer.json")
        return d

    def lm_speed(self, name, cfg, steps):
        d = self.make_gpt2(name, **cfg)
        peaks = self.peaks()
        for precision in ["fp32", "bf16"]:
            out = self.sh([self.bin("bench_lm"), d, "--steps", steps, "--device", self.dev, "--precision", precision],
                          timeout=240)
            r = json.loads(out)
            r["mfu"] = r["train_tflops"] * 1e12 / peaks[precision] if peaks else None
            r["model_name"] = name
            self.results["lm_speed"].append(r)
            self.save()
        out = self.sh([self.py, REPO / "scripts" / "bench_lm_reference.py", d, "--steps", steps, "--device", self.dev,
                       "--precision", "fp32,bf16"], timeout=300)
        for line in out.strip().splitlines():
            r = json.loads(line)
            r["mfu"] = r["train_tflops"] * 1e12 / peaks[r["precision"]] if peaks else None
            r["model_name"] = name
            self.results["lm_speed"].append(r)

    def graphs(self):
        """Captured CUDA-graph training steps against eager ones on GPT-2 124M shapes (bench_lm
        --cuda-graphs on|off), fp32 and bf16, dropout off: ms per step and graph nodes (whether the
        captured steps train the eager steps' weights is the gate `captured_steps_train_the_eager_
        steps_weights`). On the CPU dry run, eager on tiny shapes."""
        big = self.dev == "cuda"
        d = self.make_gpt2("gpt2-124m-random" if big else "gpt2-tiny-random",
                           **({} if big else dict(n_layer=2, n_embd=64, n_head=4)))
        steps = "10" if big else "2"
        for precision in ["fp32", "bf16"]:
            for graphs in (["off", "on"] if big else ["off"]):
                out = self.sh([self.bin("bench_lm"), d, "--steps", steps, "--device", self.dev,
                               "--precision", precision, "--cuda-graphs", graphs, "--dropout", "off"], timeout=240)
                r = json.loads(out)
                r.update(model_name=d.name, lanes=1, adapter="full", step="graphs")
                self.results["lm_speed"].append(r)
                self.save()

    def peaks(self):
        gpu = self.results.get("gpu") or ""
        return next((v for k, v in PEAKS.items() if k in gpu), None)

    def embed_model(self):
        """RoBERTa-large shapes with random weights on CUDA (tiny shapes on the CPU), exported with
        pooling in the graph, fp16 and packed variants; built once. Returns (HF dir, encoder dir)."""
        big = self.dev == "cuda"
        hf = self.work / ("roberta-large-random" if big else "roberta-tiny-random")
        enc = self.work / (hf.name + "-onnx")
        tok = FIXTURES / "encoders" / "tiny-roberta" / "tokenizer.json"
        vocab = len(json.loads(tok.read_text())["model"]["vocab"])
        shape = (dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096)
                 if big else dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128))
        if not (enc / "model.onnx").exists() or (big and not (enc / "model.fp16.packed.onnx").exists()):
            code = ("import sys, torch\nfrom transformers import RobertaConfig, RobertaModel\ntorch.manual_seed(0)\n"
                    f"c = RobertaConfig(vocab_size={vocab}, max_position_embeddings=514, pad_token_id=1, "
                    f"bos_token_id=0, eos_token_id=2, **{shape!r})\n"
                    "RobertaModel(c, add_pooling_layer=False).save_pretrained(sys.argv[1])\n")
            self.sh([self.py, "-c", code, hf], timeout=120)
            shutil.copy(tok, hf / "tokenizer.json")
            # The packed graphs are written on the CPU too (the conversion is offline); only CUDA runs them.
            args = [self.py, REPO / "scripts" / "export_encoder.py", hf, enc, "--skip-check", "--pool", "--packed"]
            self.sh(args + (["--fp16"] if big else []), timeout=400)
        return hf, enc

    def embed_inputs(self, docs):
        """Two input files for the encoder benchmarks, for RoBERTa's tokenizer: `full-512`, texts that
        all fill the 512-token window, and `demo-whole`, texts whose token counts follow the length mix
        recorded in docs/bench/length-mix-demo-whole.json (whole documents of the demo corpus's six
        sources, scripts/bench-ingest), cycled to `docs` texts."""
        if docs in self.inputs:  # written by an earlier step of this run
            return self.inputs[docs]
        files = {"full-512": self.work / f"texts-full-512-{docs}.jsonl",
                 "demo-whole": self.work / f"texts-demo-whole-{docs}.jsonl"}
        from tokenizers import Tokenizer
        tok = Tokenizer.from_file(str(FIXTURES / "encoders" / "tiny-roberta" / "tokenizer.json"))
        full = files["full-512"]
        with open(full, "w") as f:
            for i in range(docs):
                words = " ".join(f"w{(i * 31 + j * 7) % 997}" for j in range(600))
                f.write(json.dumps({"text": words, "meta": {"pile_set_name": "bench"}}) + "\n")
        mix = json.loads((REPO / "docs" / "bench" / "length-mix-demo-whole.json").read_text())
        lengths = mix["token_lengths"]
        with open(files["demo-whole"], "w") as f:
            for i in range(docs):
                want = max(1, lengths[i % len(lengths)] - 2)  # the encoder adds <s> and </s>
                words = " ".join(f"w{(i * 31 + j * 7) % 997}" for j in range(want + 8))
                e = tok.encode(words, add_special_tokens=False)
                end = e.offsets[want - 1][1] if len(e.offsets) >= want else len(words)
                f.write(json.dumps({"text": words[:end], "meta": {"pile_set_name": "bench"}}) + "\n")
        self.inputs[docs] = files
        return files

    def embed_speed(self):
        """Sequences/s of tttnn's encoder (fp32, fp16; padded and packed graphs) and of transformers
        with SDPA on the same texts, on full 512-token inputs and on the demo's length mix; the packed
        graph's embeddings against the padded one's (fp32, the length mix, bound 1e-5)."""
        big = self.dev == "cuda"
        hf, enc = self.embed_model()
        docs = 1024 if big else 64
        inputs = self.embed_inputs(docs)
        batch = "64" if big else "16"
        saved = {}
        # (inputs, precision, packed): packed graphs run on CUDA only.
        runs = [("full-512", "fp32", False), ("demo-whole", "fp32", False)]
        if big:
            runs += [("full-512", "fp16", False), ("full-512", "fp16", True), ("demo-whole", "fp32", True),
                     ("demo-whole", "fp16", False), ("demo-whole", "fp16", True)]
        for name, precision, packed in runs:
            key = (name, precision, packed)
            saved[key] = self.work / f"emb-large-{name}-{precision}-{'packed' if packed else 'padded'}.json"
            out = self.sh([self.bin("bench_embed"), enc, inputs[name], "--device", self.dev, "--precision", precision,
                           "--packing", "packed" if packed else "padded", "--batch-size", batch, "--docs", str(docs),
                           "--save", saved[key]], timeout=240)
            r = json.loads(out)
            r.update(model_name=hf.name, inputs=name, packed=packed)
            self.results["embed_speed"].append(r)
            self.save()
        import numpy as np
        load = lambda k: np.array(json.loads(saved[k].read_text()))
        if ("full-512", "fp16", False) in saved:
            a32, a16 = load(("full-512", "fp32", False)), load(("full-512", "fp16", False))
            cos = (a32 * a16).sum(1) / (np.linalg.norm(a32, axis=1) * np.linalg.norm(a16, axis=1))
            self.results["correctness"]["encoder_fp16_vs_fp32"] = {
                "docs": len(a32), "max_abs_diff": float(abs(a32 - a16).max()), "min_cosine": float(cos.min())}
        if ("demo-whole", "fp32", True) in saved:
            pad, pack = load(("demo-whole", "fp32", False)), load(("demo-whole", "fp32", True))
            d = float(abs(pad - pack).max())
            self.results["correctness"]["encoder_packed_vs_padded_fp32"] = {
                "docs": len(pad), "inputs": "demo-whole", "max_abs_diff": d, "ok": d <= 1e-5}
        refs = [("full-512", p) for p in (["fp16", "fp32"] if big else ["fp32"])] + [("demo-whole", "fp16" if big else "fp32")]
        for name, precision in refs:
            # Sorted by length as sentence-transformers' encode sorts: the strong reference on a mix.
            out = self.sh([self.py, REPO / "scripts" / "bench_embed_reference.py", hf, inputs[name], "--device", self.dev,
                           "--precision", precision, "--attn", "sdpa", "--batch-size", batch, "--docs", str(docs),
                           "--sort-by-length"], timeout=240)
            r = json.loads(out)
            r.update(model_name=hf.name, inputs=name, packed=False)
            self.results["embed_speed"].append(r)
            self.save()

    def embed_kernels(self):
        """Which attention kernel ONNX Runtime picked for each node (ORT_ENABLE_ATTENTION_KERNEL_DEBUG_INFO=1)
        in the fp16 padded and packed graphs, and the fp16 rate with cuDNN flash attention switched off
        (ORT_ENABLE_CUDNN_FLASH_ATTENTION=0), the one switch the first device checks did not try."""
        big = self.dev == "cuda"
        hf, enc = self.embed_model()
        inputs = self.embed_inputs(64)
        precision = "fp16" if big else "fp32"
        kernels = {}
        for packing in (["padded", "packed"] if big else ["padded"]):
            env = dict(os.environ, ORT_ENABLE_ATTENTION_KERNEL_DEBUG_INFO="1")
            p = subprocess.run([self.bin("bench_embed"), str(enc), str(inputs["full-512"]), "--device", self.dev,
                                "--precision", precision, "--packing", packing, "--docs", "64", "--batch-size", "16"],
                               capture_output=True, text=True, timeout=min(180, max(self.left(), 5)), env=env)
            if p.returncode != 0:
                raise RuntimeError(f"bench_embed --packing {packing}: exit {p.returncode}: {p.stderr[-1500:]}")
            lines = [l.strip() for l in (p.stdout + p.stderr).splitlines()
                     if "kernel" in l.lower() and not l.lstrip().startswith("{")]
            counts = {}
            for l in lines:
                counts[l] = counts.get(l, 0) + 1
            kernels[packing] = {"lines": len(lines), "distinct": sorted(counts.items(), key=lambda x: -x[1])[:12]}
        self.results["embed_kernels"] = kernels
        if big:
            docs = 1024
            env = dict(os.environ, ORT_ENABLE_CUDNN_FLASH_ATTENTION="0")
            out = self.sh([self.bin("bench_embed"), enc, self.embed_inputs(docs)["full-512"], "--device", self.dev,
                           "--precision", "fp16", "--batch-size", "64", "--docs", str(docs)], timeout=240, env=env)
            r = json.loads(out)
            r.update(model_name=hf.name, inputs="full-512", packed=False, env="ORT_ENABLE_CUDNN_FLASH_ATTENTION=0")
            self.results["embed_speed"].append(r)

    def ingest_speed(self):
        """`tttnn ingest` end to end, .jsonl.zst to Lance rows, on the length mix (fp16 on CUDA, packed
        when the packed graph ran in embed_speed), against the encoder alone on the same texts."""
        big = self.dev == "cuda"
        hf, enc = self.embed_model()
        docs = 4096 if big else 128
        texts = self.embed_inputs(docs)["demo-whole"]
        zst = self.work / "ingest-demo-whole.jsonl.zst"
        try:
            import zstandard
            zst.write_bytes(zstandard.ZstdCompressor(level=3).compress(texts.read_bytes()))
        except ImportError:  # no zstandard module: the zstd tool, else the plain JSONL
            if shutil.which("zstd"):
                self.sh(["zstd", "-q", "-f", "-3", texts, "-o", zst], timeout=60)
            else:
                zst = texts
        precision = "fp16" if big else "fp32"
        packed_ok = any(r.get("packed") and r.get("inputs") == "demo-whole" and r.get("precision") == precision
                        for r in self.results["embed_speed"])
        packing = "packed" if big and packed_ok else "padded"
        enc_only = json.loads(self.sh([self.bin("bench_embed"), enc, texts, "--device", self.dev, "--precision",
                                       precision, "--packing", packing, "--batch-size", "64", "--docs", str(docs)],
                                      timeout=240))
        store = self.work / "ingest-speed-store"
        shutil.rmtree(store, ignore_errors=True)
        t = time.monotonic()
        out = self.sh([self.bin("tttnn"), "ingest", "--quiet", "--store", store, "--encoder", enc, "--device", self.dev,
                       "--precision", precision, "--packing", packing, "--batch-size", "64", "--batch-tokens", "32768",
                       zst], timeout=300)
        wall = time.monotonic() - t
        summary = json.loads(out.strip().splitlines()[-1])
        self.results["ingest_speed"] = {
            "inputs": "demo-whole", "file": zst.name, "docs": summary["added"], "precision": precision, "packed": packing == "packed",
            "wall_s": wall, "ingest_docs_per_s": summary["docs_per_s"], "encoder_docs_per_s": enc_only["docs_per_s"],
            "ingest_vs_encoder": summary["docs_per_s"] / enc_only["docs_per_s"],
            "stage_seconds": summary["stage_seconds"], "padding_fraction": summary["padding_fraction"]}

    def fixture_corpus(self):
        """The fixture corpus as the demo's layout: train.jsonl and test.jsonl (every fourth line)."""
        lines = (FIXTURES / "corpus.jsonl").read_text().splitlines(keepends=True)
        train = self.work / "train.jsonl"
        test = self.work / "test.jsonl"
        train.write_text("".join(l for i, l in enumerate(lines) if i % 4 != 1))
        test.write_text("".join(l for i, l in enumerate(lines) if i % 4 == 1))
        return train, test

    def e2e_store(self):
        """The fixture corpus ingested on the device (train and test splits), built once."""
        store = self.work / "e2e-store"
        enc = FIXTURES / "encoders" / "tiny-roberta"
        done = self.work / "e2e-store.done"
        if done.exists():
            return store, enc
        train, test = self.fixture_corpus()
        shutil.rmtree(store, ignore_errors=True)
        for split, f in [("train", train), ("test", test)]:
            out = self.sh([self.bin("tttnn"), "ingest", "--quiet", "--split", split, "--store", store, "--encoder", enc,
                           "--device", self.dev, f], timeout=120)
            self.results["end_to_end"][f"ingest_{split}"] = json.loads(out.strip().splitlines()[-1])
        self.sh([self.bin("tttnn"), "index", "--quiet", "--kind", "flat", "--store", store], timeout=60)
        done.write_text("")
        return store, enc

    def end_to_end(self):
        store, enc = self.e2e_store()
        curves = {}
        for d, precision in [("cpu", "fp32"), (self.dev, "fp32"), (self.dev, "bf16")]:
            db = self.work / f"e2e-{d}-{precision}.duckdb"
            if db.exists():
                db.unlink()
            self.sh([self.bin("tttnn"), "run", "--quiet", "--lr", "1e-3", "--val-portion", "1.0", "--store", store,
                     "--encoder", enc, "--model", FIXTURES / "models" / "tiny-gpt2", "--task", "pile_all",
                     "--neighbors", "3", "--device", d, "--precision", precision, "--db", db], timeout=180)
            out = self.sh([self.bin("tttnn"), "sql", "SELECT doc_id, k, loglik FROM curve ORDER BY ALL",
                           "--db", db, "--format", "json"], timeout=30)
            curves[(d, precision)] = rows(out)

        def rel(x, y):
            d = [abs(a["loglik"] - b["loglik"]) / max(abs(a["loglik"]), 1.0) for a, b in zip(x, y)]
            return {"points": len(d), "same_points": len(x) == len(y), "max_rel_diff": max(d) if d else None}
        self.results["end_to_end"]["fixture_curves"] = rel(curves[("cpu", "fp32")], curves[(self.dev, "fp32")])
        self.results["end_to_end"]["fixture_curves_bf16_vs_fp32"] = rel(curves[(self.dev, "fp32")],
                                                                        curves[(self.dev, "bf16")])
        # Speed on a GPT-2 124M-shaped model (random weights) over the fixture store.
        big = self.dev == "cuda"
        model = self.make_gpt2("gpt2-124m-random" if big else "gpt2-tiny-random",
                               **({} if big else dict(n_layer=2, n_embd=64, n_head=4)))
        db = self.work / "e2e-speed.duckdb"
        if db.exists():
            db.unlink()
        t = time.monotonic()
        self.sh([self.bin("tttnn"), "run", "--quiet", "--lr", "2e-5", "--val-portion", "1.0", "--store", store,
                 "--encoder", enc, "--model", model, "--task", "pile_all", "--neighbors", "10", "--device", self.dev,
                 "--db", db], timeout=300)
        wall = time.monotonic() - t
        cost = rows(self.sh([self.bin("tttnn"), "sql", "cost", "--db", db, "--format", "json"], timeout=30))
        total = [r for r in cost if r.get("task") == "pile_all"] or cost
        self.results["end_to_end"]["speed"] = {"model": model.name, "neighbors": 10, "wall_s": wall, "cost": total}

    def demo(self):
        """The README's `DEVICE=cuda scripts/demo` after its setup: scripts/demo-run with the kit's
        tttnn on PATH and DEVICE set to this device (encoder and LM there, fp32), on the fixtures:
        ingest, index, TTT-NN and the three baselines, table1, the leakage audit, cost, plots."""
        self.fixture_corpus()
        out = self.work / "demo"
        shutil.rmtree(out, ignore_errors=True)
        env = dict(os.environ, PATH=f"{self.a.bin}:{os.environ.get('PATH', '')}",
                   MODEL=str(FIXTURES / "models" / "tiny-gpt2"), ENCODER=str(FIXTURES / "encoders" / "tiny-roberta"),
                   CORPUS=str(self.work), OUT=str(out), DOCS="1", K="3", LR="1e-3", INDEX="flat", DEVICE=self.dev)
        t = time.monotonic()
        table1 = self.sh(["bash", REPO / "scripts" / "demo-run"], timeout=300, env=env)
        plots = sorted(p.name for p in (out / "plots").glob("*"))
        if not plots:
            raise RuntimeError("scripts/demo-run drew no plots")
        self.results["demo"] = {"device": self.dev, "wall_s": time.monotonic() - t, "plots": plots,
                                "stdout_tail": table1[-2000:]}

    def lanes(self):
        """Documents per hour and peak GPU memory of `tttnn run --lanes L` against one lane (issue #18):
        a GPT-2 124M-shaped model (random weights, dropout off) training on the fixture corpus's 61 train
        documents as test documents (each searching the others), k = 10, full fine-tuning and LoRA."""
        store, enc = self.e2e_store()
        big = self.dev == "cuda"
        model = self.make_gpt2("gpt2-124m-random" if big else "gpt2-tiny-random",
                               **({} if big else dict(n_layer=2, n_embd=64, n_head=4)))
        # (adapter, lanes, CUDA graphs): graphs only where CUDA is (issue #24).
        settings = ([("full", 1, "off"), ("full", 8, "off"), ("full", 32, "off"), ("lora", 1, "off"),
                     ("lora", 32, "off"), ("lora", 64, "off"), ("full", 1, "on"), ("full", 8, "on"),
                     ("full", 32, "on"), ("lora", 32, "on")] if big
                    else [("full", 1, "off"), ("full", 4, "off"), ("lora", 1, "off"), ("lora", 4, "off")])
        rows_out = []
        for adapter, lanes, graphs in settings:
            db = self.work / f"lanes-{adapter}-{lanes}-graphs-{graphs}.duckdb"
            if db.exists():
                db.unlink()
            # LoRA adapters want a larger rate than full fine-tuning's 2e-5.
            lr = "1e-4" if adapter == "lora" else "2e-5"
            # Not --quiet: stderr's "memory plan:" line is the plan to set against the peak measured.
            cmd = [self.bin("tttnn"), "run", "--lr", lr, "--val-portion", "1.0", "--split", "train",
                   "--store", store, "--encoder", enc, "--model", model, "--task", "pile_all", "--neighbors", "10",
                   "--optimizer-state", "reset", "--dropout", "off", "--lanes", str(lanes), "--device", self.dev,
                   "--cuda-graphs", graphs, "--db", db]
            if adapter == "lora":
                cmd += ["--adapter", "lora"]
            if not big:
                # The dry run checks the step, not the rate: two cores run lanes slower than one
                # (docs/benchmarks.md), and 61 documents four times outlast its budget.
                cmd += ["--limit-docs", "8"]
            peak = [0]
            stop = threading.Event()

            def poll():
                while not stop.is_set():
                    try:
                        used = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits",
                                               "-i", "0"], capture_output=True, text=True, timeout=5).stdout
                        peak[0] = max(peak[0], int(used.strip()))
                    except Exception:
                        pass
                    stop.wait(0.25)
            poller = threading.Thread(target=poll, daemon=True)
            if big:
                poller.start()
            t = time.monotonic()
            try:
                _, err = self.sh(cmd, timeout=300, stderr=True)
            finally:
                stop.set()
            planned = re.search(r"memory plan: \d+ lanes need ([\d.]+) (GiB|MiB)", err)
            planned_mib = (float(planned.group(1)) * (1024 if planned.group(2) == "GiB" else 1)
                           if planned else None)
            wall = time.monotonic() - t
            docs = rows(self.sh([self.bin("tttnn"), "sql", "SELECT count(*) AS n FROM docs", "--db", db,
                                 "--format", "json"], timeout=30))[0]["n"]
            rows_out.append({"adapter": adapter, "lanes": lanes, "graphs": graphs == "on", "docs": docs,
                             "wall_s": wall, "docs_per_hour": 3600 * docs / wall,
                             "peak_gpu_mib": peak[0] if big else None, "planned_mib": planned_mib})
            self.results["lanes"] = rows_out
            self.save()

    def neighbors(self):
        """The neighbour table by matrix products on the device (issue #26): a synthetic 384-d store
        made here, the same queries' exact neighbours from per-query search (Lance, on the CPU) and by
        products on the device, fp32 and bf16: queries/s, GFLOP/s against a plain matmul of the same
        shapes, GB/s of store read, and whether every checked query's neighbours are equal."""
        big = self.dev == "cuda"
        n_rows, n_queries = (1_000_000, 10_000) if big else (20_000, 300)
        out = self.work / "neighbors.json"
        self.sh([self.bin("bench_retrieval"), "--rows", n_rows, "--dim", 384, "--queries", 20, "--k", 50,
                 "--no-index", "--table-queries", n_queries, "--device", self.dev,
                 "--product", "f32,bf16" if big else "f32", "--block-rows", 65536 if big else 16384,
                 "--query-batch", 16384 if big else 4096, "--dir", self.work / f"neighbors-store-{n_rows}",
                 "--json", out], timeout=400)
        self.results["neighbors"] = json.loads(out.read_text())
        unequal = [r for r in self.results["neighbors"]
                   if r.get("method") == "exact by matmul" and r.get("product") == "f32"
                   and not r.get("equal_to_per_query")]
        if unequal:
            raise RuntimeError(f"fp32 matrix-product neighbours differ from per-query search: {unequal}")

    def table(self):
        r = self.results
        L = [f"# tttnn device check: {r.get('gpu') or self.dev}", "",
             "| step | ok | seconds | note |", "|---|---|---|---|"]
        for k, v in r["steps"].items():
            L.append(f"| {k} | {'yes' if v.get('ok') else 'NO'} | {v.get('seconds', '')} | "
                     f"{(v.get('error') or v.get('skipped') or '').splitlines()[-1][:90] if (v.get('error') or v.get('skipped')) else ''} |")
        c = r["correctness"]
        L += ["", "| correctness | value | bound |", "|---|---|---|"]
        g = c.get("gates")
        if g:
            for name, passed in g["tests"].items():
                L.append(f"| gate {name} (tests/it/gpu.rs) | {'passed' if passed else 'FAILED'} | in the test |")
            L += [f"| {line[len('gate '):]} | measured | in the test |" for line in g["measured"]]
        e = r["end_to_end"].get("fixture_curves_bf16_vs_fp32")
        if e:
            L.append(f"| run curves, bf16 mixed vs fp32 on {self.dev}, max rel diff of loglik | {e['max_rel_diff']:.2e} | departure |")
        if "encoder_fp16_vs_fp32" in c:
            x = c["encoder_fp16_vs_fp32"]
            L.append(f"| encoder fp16 vs fp32 (RoBERTa-large random), max abs diff / min cosine | "
                     f"{x['max_abs_diff']:.2e} / {x['min_cosine']:.6f} | departure |")
        e = r["end_to_end"].get("fixture_curves")
        if e:
            L.append(f"| run curves (tiny-gpt2, k=3), max rel diff of loglik | {e['max_rel_diff']:.2e} | — |")
        if r["lm_speed"]:
            L += ["", "| LM | impl | precision | graphs | train step (ms) | steps of one text (ms each) | TFLOP/s | MFU | eval doc (ms) |",
                  "|---|---|---|---|---|---|---|---|---|"]
            for x in r["lm_speed"]:
                mfu = f"{100 * x['mfu']:.1f}%" if x.get("mfu") else "—"
                nodes = ", ".join(f"{'score ' if b.get('scoring') else ''}{b['len']}: {b['nodes']} nodes"
                                  for b in x.get("graph_buckets") or [])
                rep = x.get("replays") or {}
                if rep.get("replays"):
                    nodes += f"; {rep['host_us_per_replay']:.0f} µs host per replay"
                graphs = ("on" + (f" ({nodes})" if nodes else "")) if x.get("graphs") else "off"
                # tttnn's steps of one text read their losses once at the end (no sync between them).
                piped = f"{1e3 * x['train_step_pipelined_s']:.2f}" if x.get("train_step_pipelined_s") else "—"
                L.append(f"| {x['model_name']} | {x['impl']} | {x['precision']} | {graphs} | {1e3 * x['train_step_s']:.2f} | {piped} | "
                         f"{x['train_tflops']:.1f} | {mfu} | {1e3 * x['eval_doc_s']:.2f} |")
        if "encoder_packed_vs_padded_fp32" in c:
            x = c["encoder_packed_vs_padded_fp32"]
            L.append(f"| encoder packed vs padded graph, fp32, length mix, max abs diff | {x['max_abs_diff']:.2e} | 1e-5 |")
        if r["embed_speed"]:
            L += ["", "| encoder | impl | inputs | precision | packed | batch | sequences/s | note |",
                  "|---|---|---|---|---|---|---|---|"]
            for x in r["embed_speed"]:
                L.append(f"| {x['model_name']} | {x['impl']} | {x.get('inputs', 'full-512')} | {x.get('precision', 'fp32')} | "
                         f"{x.get('packed', False)} | {x['batch_size']} | {x['docs_per_s']:.0f} | {x.get('env', '')} |")
        if r.get("embed_kernels"):
            for packing, k in r["embed_kernels"].items():
                top = "; ".join(f"{n}× {l[:80]}" for l, n in k["distinct"][:3]) or "none printed"
                L.append(f"\nAttention kernels ({packing}): {top}")
        if r.get("ingest_speed"):
            x = r["ingest_speed"]
            L.append(f"\nIngest end to end ({x['inputs']}, {x['precision']}, packed {x['packed']}): "
                     f"{x['ingest_docs_per_s']:.0f} docs/s against the encoder's {x['encoder_docs_per_s']:.0f} "
                     f"({100 * x['ingest_vs_encoder']:.0f}%)")
        s = r["end_to_end"].get("speed")
        if s and s["cost"]:
            c0 = s["cost"][0]
            spd = c0.get("s_per_doc")
            L += ["", f"End to end ({s['model']}, k={s['neighbors']}, fixture store): {s['wall_s']:.1f} s wall; "
                  f"{c0.get('s_per_neighbor', 0):.3f} s per neighbour, {c0.get('s_per_step', 0) or 0:.4f} s per step, "
                  f"{3600 / spd if spd else 0:.0f} documents per hour"]
        if r.get("lanes"):
            # The reference of every row: one lane, eager (libtorch launching each kernel).
            base = {x["adapter"]: x["docs_per_hour"] for x in r["lanes"] if x["lanes"] == 1 and not x.get("graphs")}
            L += ["", "| lanes (GPT-2 124M shapes, k=10) | lanes | CUDA graphs | documents/hour | vs 1 lane eager | "
                  "peak GPU MiB | memory plan MiB |", "|---|---|---|---|---|---|---|"]
            for x in r["lanes"]:
                ratio = x["docs_per_hour"] / base[x["adapter"]] if base.get(x["adapter"]) else None
                plan = f"{x['planned_mib']:.0f}" if x.get("planned_mib") else "—"
                L.append(f"| {x['adapter']} | {x['lanes']} | {'on' if x.get('graphs') else 'off'} | "
                         f"{x['docs_per_hour']:.0f} | {f'{ratio:.2f}x' if ratio else '—'} | {x['peak_gpu_mib'] or '—'} | {plan} |")
        tables = [x for x in r.get("neighbors", []) if x.get("method") == "exact by matmul"]
        if tables:
            L += ["", "| neighbour table by matmul | rows | queries | product | wall s | queries/s | GFLOP/s | "
                  "plain matmul GFLOP/s | GB/s read | equal to per-query |", "|---|---|---|---|---|---|---|---|---|---|"]
            for x in tables:
                L.append(f"| {x['device']} | {x['rows']} | {x['queries']} | {x['product']} | {x['wall_s']:.1f} | "
                         f"{x['queries_per_s']:.0f} | {x['gflops']:.0f} | {x['matmul_gflops']:.0f} | "
                         f"{x['gb_per_s_read']:.1f} | {x['equal_to_per_query']} |")
        L.append(f"\nTotal {time.monotonic() - self.start:.0f} s")
        text = "\n".join(L) + "\n"
        (self.out / "table.md").write_text(text)
        return text


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cuda")
    ap.add_argument("--bin", required=True,
                    help="directory holding tttnn, bench_lm, bench_embed, bench_retrieval and integration")
    ap.add_argument("--gpt2-tokenizer", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--work", default="/tmp/tttnn-device-check")
    ap.add_argument("--budget-s", type=float, default=450)
    ap.add_argument("--only", default="", help="comma-separated step names")
    a = ap.parse_args()
    c = Check(a)
    big = a.device == "cuda"
    # By value, most first (docs/gpu.md, "The check's plan"): what decides --cuda-graphs' default,
    # then the speed goals in the issue's order, then what the earlier device runs measured already.
    steps = [
        ("doctor", c.doctor),
        ("gates", c.gates),
        ("graphs", c.graphs),
        ("lanes", c.lanes),
        ("embed_speed", c.embed_speed),
        ("neighbors", c.neighbors),
        ("demo", c.demo),
        ("embed_kernels", c.embed_kernels),
        ("smoke", c.smoke),
        ("lm_speed_124m", lambda: c.lm_speed("gpt2-124m-random" if big else "gpt2-tiny-random", {} if big else
                                             dict(n_layer=2, n_embd=64, n_head=4), "10" if big else "2")),
        ("ingest_speed", c.ingest_speed),
        ("end_to_end", c.end_to_end),
        ("lm_speed_774m", lambda: c.lm_speed("gpt2-774m-random" if big else "gpt2-small-random",
                                             dict(n_embd=1280, n_layer=36, n_head=20) if big else
                                             dict(n_layer=4, n_embd=128, n_head=4), "10" if big else "2")),
    ]
    only = set(filter(None, a.only.split(",")))
    for name, fn in steps:
        if not only or name in only:
            c.step(name, fn)
    c.save()
    print(c.table())
    failed = [k for k, v in c.results["steps"].items() if not v.get("ok")]
    bounds = [v.get("ok", True) for v in c.results["correctness"].values() if isinstance(v, dict)]
    sys.exit(1 if failed or not all(bounds) else 0)


if __name__ == "__main__":
    main()
