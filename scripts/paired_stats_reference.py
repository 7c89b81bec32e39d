#!/usr/bin/env python3
"""The reference for tttnn's paired statistics (src/stats.rs), written independently in Python:
the same SplitMix64 draws in the same order, sums in the same order, numpy's percentile for the
intervals. Writes tests/fixtures/paired_stats.json: the inputs and what this computes from them;
the Rust test must equal it to 1e-9.

    python3 scripts/paired_stats_reference.py    # needs numpy (scripts/setup --reference has it)
"""
import json
import math
import pathlib

import numpy as np

MASK = (1 << 64) - 1


class SplitMix64:
    def __init__(self, seed):
        self.state = seed & MASK

    def next(self):
        self.state = (self.state + 0x9E3779B97F4A7C15) & MASK
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
        return z ^ (z >> 31)


def mean(values, rows):
    total = 0.0
    for i in rows:
        total += values[i]
    return total / len(rows)


def weighted(strata, means):
    total = weights = 0.0
    for s, m in zip(strata, means):
        if s["weight"] is not None and len(s["values"][0]) > 0:
            total += s["weight"] * m
            weights += s["weight"]
    return total / weights if weights > 0 else None


def paired(strata, resamples, seed):
    quantities = len(strata[0]["values"])
    observed = [[mean(s["values"][q], range(len(s["values"][q]))) for q in range(quantities)]
                for s in strata]
    whole_observed = [weighted(strata, [o[q] for o in observed]) for q in range(quantities)]
    rng = SplitMix64(seed)
    boot = [[[] for _ in range(quantities)] for _ in strata]
    boot_whole = [[] for _ in range(quantities)]
    for _ in range(resamples):
        rows = [[rng.next() % len(s["values"][0]) for _ in range(len(s["values"][0]))]
                for s in strata]
        for q in range(quantities):
            means = [mean(s["values"][q], rows[t]) for t, s in enumerate(strata)]
            for t in range(len(strata)):
                boot[t][q].append(means[t])
            w = weighted(strata, means)
            if w is not None:
                boot_whole[q].append(w)
    flips = SplitMix64(seed + 1)
    as_large = [[0] * quantities for _ in strata]
    as_large_whole = [0] * quantities
    for _ in range(resamples):
        signs = [[-1.0 if flips.next() >> 63 == 1 else 1.0 for _ in s["values"][0]]
                 for s in strata]
        for q in range(quantities):
            means = []
            for t, s in enumerate(strata):
                total = 0.0
                for i, v in enumerate(s["values"][q]):
                    total += signs[t][i] * v
                means.append(total / len(s["values"][q]))
            for t in range(len(strata)):
                if abs(means[t]) >= abs(observed[t][q]):
                    as_large[t][q] += 1
            w = weighted(strata, means)
            if w is not None and abs(w) >= abs(whole_observed[q]):
                as_large_whole[q] += 1

    def estimate(n, m, draws, count):
        low, high = np.percentile(np.array(draws), [2.5, 97.5])
        return {"n": n, "mean": m, "ci_low": float(low), "ci_high": float(high),
                "p_value": (1 + count) / (1 + resamples)}

    weighted_n = sum(len(s["values"][0]) for s in strata if s["weight"] is not None)
    return {
        "strata": [[estimate(len(s["values"][0]), observed[t][q], boot[t][q], as_large[t][q])
                    for q in range(quantities)] for t, s in enumerate(strata)],
        "whole": [estimate(weighted_n, whole_observed[q], boot_whole[q], as_large_whole[q])
                  for q in range(quantities)],
    }


def ratio_interval(strata, resamples, seed):
    rng = SplitMix64(seed)
    draws = [[] for _ in strata]
    whole = []
    for _ in range(resamples):
        total = weights = 0.0
        for t, s in enumerate(strata):
            num = den = 0.0
            for _ in range(len(s["docs"])):
                n, d = s["docs"][rng.next() % len(s["docs"])]
                num += n
                den += d
            draws[t].append(num / den)
            if s["weight"] is not None:
                total += s["weight"] * (num / den)
                weights += s["weight"]
        whole.append(total / weights)
    ends = lambda d: [float(x) for x in np.percentile(np.array(d), [2.5, 97.5])]
    return {"strata": [ends(d) for d in draws], "whole": ends(whole)}


def main():
    # Per-document changes in bits per byte of two runs against a baseline, in three tasks (the
    # third without a Pile weight): deterministic, varied in sign and size.
    def values(n, shift, scale, phase):
        return [shift + scale * math.sin(1.7 * i + phase) for i in range(n)]

    strata = [
        {"weight": 7.59, "values": [values(7, -0.05, 0.08, 0.3), values(7, 0.01, 0.05, 1.1)]},
        {"weight": 1.53, "values": [values(11, -0.02, 0.03, 2.0), values(11, -0.06, 0.02, 0.4)]},
        {"weight": None, "values": [values(4, 0.2, 0.1, 0.9), values(4, 0.0, 0.01, 1.9)]},
    ]
    ratio_strata = [
        {"weight": 7.59, "docs": [[-300.0 - 40 * math.sin(i), 400.0 + 13 * i] for i in range(6)]},
        {"weight": 1.53, "docs": [[-900.0 - 70 * math.cos(i), 1000.0 + 7 * i] for i in range(9)]},
    ]
    resamples, seed = 2000, 1216
    out = {
        "resamples": resamples,
        "seed": seed,
        "strata": strata,
        "ratio_strata": ratio_strata,
        "expected": {
            **paired(strata, resamples, seed),
            "ratio": ratio_interval(ratio_strata, resamples, seed),
        },
    }
    path = pathlib.Path(__file__).resolve().parent.parent / "tests/fixtures/paired_stats.json"
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
