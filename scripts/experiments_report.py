#!/usr/bin/env python3
"""Gathers what scripts/experiments measured into OUT/experiments.json (raw figures with the
settings and the machine, for docs/bench/experiments-DATE.json) and OUT/experiments.md (one table
per question, as docs/experiments.md shows them).

    scripts/experiments_report.py OUT --db DB --docs N --k K ...    # after scripts/experiments
    scripts/experiments_report.py --smoke-corpus CORPUS.jsonl DIR   # the smoke run's corpus

Reads the JSON files the experiments wrote and asks `tttnn sql` (on PATH) for each run's settings,
steps and tokens. Standard library only.
"""
import argparse
import datetime
import json
import os
import platform
import subprocess
import sys

# The arms of each question, by the names scripts/experiments gives their runs (`experiments/ARM`).
QUESTIONS = [
    ("order", "Neighbour order (open question 1)", ["farthest", "random", "oracle"]),
    ("iterations", "Passes, neighbours per step and the schedule (open question 2)",
     ["passes-2", "passes-3", "4-per-step-4-passes", "cosine"]),
    ("retrieval", "Retrieval quality and datastore size (open question 4)",
     ["ivf-nprobes-", "fraction-"]),
]


def smoke_corpus(source, out):
    """The fixture corpus four times over (IVF needs 256 rows): copy 0's every fourth line a test
    document, the rest training documents."""
    os.makedirs(out, exist_ok=True)
    lines = open(source, encoding="utf-8").read().splitlines()
    with open(f"{out}/train.jsonl", "w", encoding="utf-8") as train, \
            open(f"{out}/test.jsonl", "w", encoding="utf-8") as test:
        for copy in range(4):
            for i, line in enumerate(lines):
                doc = json.loads(line)
                doc["text"] = f"{doc['text']} (copy {copy})"
                (test if copy == 0 and i % 4 == 1 else train).write(json.dumps(doc) + "\n")


def sql(db, query):
    out = subprocess.run(["tttnn", "sql", query, "--db", db, "--format", "json"],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out) if out.strip() else []


def load(path):
    with open(path, encoding="utf-8") as f:
        text = f.read().strip()
    return json.loads(text) if text else []


def question_of(name):
    """The question an arm's run answers, from its name."""
    settings = name.split("/", 1)[-1]
    for key, _, arms in QUESTIONS:
        if any(settings.startswith(a) for a in arms):
            return key
    return None


def cpu_model():
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def fmt(x, digits=4):
    return "" if x is None else f"{x:.{digits}f}"


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--smoke-corpus":
        smoke_corpus(sys.argv[2], sys.argv[3])
        return
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--db", required=True)
    for flag in ["--docs", "--k", "--kmax", "--k-docs", "--probes", "--lr", "--model", "--smoke"]:
        ap.add_argument(flag, required=True)
    a = ap.parse_args()
    comparison = load(f"{a.out}/comparison.json")
    quality = load(f"{a.out}/retrieval_quality.json")
    curve = load(f"{a.out}/bpb_vs_k.json")
    # Per run: its documents, mean training steps and tokens per document, seconds.
    runs = {r["run_id"]: r for r in sql(a.db, """
        SELECT d.run_id, r.name, count(*) AS docs, avg(d.train_steps) AS steps_per_doc,
               avg(d.train_tokens) AS tokens_per_doc,
               avg(d.train_s + d.eval_s + d.retrieval_s) AS seconds_per_doc
        FROM docs d JOIN runs r ON r.id = d.run_id WHERE d.complete
        GROUP BY d.run_id, r.name ORDER BY d.run_id""")}
    by_run_quality = {(q["run_id"], q["task"]): q for q in quality}
    rows = []
    for c in comparison:
        run = runs.get(c["run_id"], {})
        base = runs.get(c["baseline_run"], {})
        q = by_run_quality.get((c["run_id"], "all" if c["task"] == "pile_all" else c["task"]), {})
        rows.append({
            "question": question_of(c["name"] or ""),
            "arm": c["name"],
            "run_id": c["run_id"],
            "baseline_run": c["baseline_run"],
            "task": c["task"],
            "docs": c["docs"],
            "bpb_baseline": c["bpb_baseline"],
            "bpb": c["bpb"],
            "change_bpb": c["change"],
            "ci_low": c["ci_low"],
            "ci_high": c["ci_high"],
            "p_value": c["p_value"],
            "steps_per_doc": run.get("steps_per_doc"),
            "tokens_per_doc": run.get("tokens_per_doc"),
            "baseline_steps_per_doc": base.get("steps_per_doc"),
            "baseline_tokens_per_doc": base.get("tokens_per_doc"),
            "seconds_per_doc": run.get("seconds_per_doc"),
            "recall_at_k": q.get("recall_at_k"),
            "rank_correlation": q.get("rank_correlation"),
        })
    report = {
        "date": datetime.date.today().isoformat(),
        "command": "scripts/experiments" + (" --smoke" if a.smoke == "1" else ""),
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "gpu": None},
        "settings": {"docs_per_set": int(a.docs), "neighbors": int(a.k), "kmax": int(a.kmax),
                     "k_docs_per_set": int(a.k_docs), "probes": a.probes, "lr": float(a.lr),
                     "model": os.path.basename(a.model.rstrip("/"))},
        "comparisons": rows,
        "retrieval_quality": quality,
        "bpb_vs_k": curve,
        "runs": list(runs.values()),
    }
    # One plot per question: its arms against the paper's setting, paired, with their intervals.
    plots = {}
    for key, _, _ in QUESTIONS:
        ids = list(dict.fromkeys(r["run_id"] for r in rows if r["question"] == key))
        if not ids:
            continue
        base = rows[0]["baseline_run"]
        out_dir = f"{a.out}/plots/{key}"
        subprocess.run(["tttnn", "report", "--db", a.db, "--compare", "--out", out_dir]
                       + [f"--run={i}" for i in [base] + ids],
                       check=True, capture_output=True, text=True)
        name = "compare-" + "-".join(str(i) for i in [base] + ids)
        os.replace(f"{out_dir}/{name}.png", f"{a.out}/plots/{key}.png")
        os.replace(f"{out_dir}/{name}.svg", f"{a.out}/plots/{key}.svg")
        plots[key] = f"plots/{key}.png"
    report["plots"] = plots
    with open(f"{a.out}/experiments.json", "w", encoding="utf-8") as f:
        json.dump(report, f, indent=1)
        f.write("\n")
    md = [f"Run {report['date']} on {report['machine']['cpu']} ({report['machine']['cores']} "
          f"cores): `{report['command']}`, {a.docs} test documents per set, k = {a.k}, "
          f"lr {a.lr}, {report['settings']['model']}.", ""]
    for key, title, _ in QUESTIONS:
        arms = [r for r in rows if r["question"] == key and r["task"] == "pile_all"]
        if not arms:
            continue
        retrieval = key == "retrieval"
        md += [f"### {title}", "",
               "| arm | Δ bpb vs the paper's | 95% interval | p | n | steps/doc | tokens/doc |"
               + (" recall@k |" if retrieval else ""),
               "|---|---|---|---|---|---|---|" + ("---|" if retrieval else "")]
        first = arms[0]
        md.append(f"| the paper's (run {first['baseline_run']}: {fmt(first['bpb_baseline'])} bpb) "
                  f"| 0 | | | {first['docs']} | {fmt(first['baseline_steps_per_doc'], 1)} "
                  f"| {fmt(first['baseline_tokens_per_doc'], 0)} |" + (" 1.0000 |" if retrieval else ""))
        for r in arms:
            cells = [r["arm"].split("/", 1)[-1], f"{r['change_bpb']:+.4f}",
                     f"[{r['ci_low']:+.4f}, {r['ci_high']:+.4f}]", fmt(r["p_value"]),
                     str(r["docs"]), fmt(r["steps_per_doc"], 1), fmt(r["tokens_per_doc"], 0)]
            if retrieval:
                cells.append(fmt(r["recall_at_k"]))
            md.append("| " + " | ".join(cells) + " |")
        md.append("")
    if curve:
        ks = sorted({row["k"] for row in curve})
        tasks = list(dict.fromkeys(row["task"] for row in curve))
        at = {(row["task"], row["k"]): row["bits_per_byte"] for row in curve}
        md += ["### Bits per byte against k", "",
               "| task | " + " | ".join(f"k={k}" for k in ks) + " |",
               "|---|" + "---|" * len(ks)]
        for task in tasks:
            md.append(f"| {task} | " + " | ".join(fmt(at.get((task, k))) for k in ks) + " |")
        md.append("")
    with open(f"{a.out}/experiments.md", "w", encoding="utf-8") as f:
        f.write("\n".join(md))


if __name__ == "__main__":
    main()
