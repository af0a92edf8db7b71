#!/usr/bin/env python3
"""Scores a screening run against the labels of a team dataset.

usage: auroc.py DATA.jsonl SCORES.jsonl

DATA.jsonl is one of the labelled files here ("label": "trait" | "neutral", "pair"); SCORES.jsonl is the --out file
of `personascope screen`. Prints the AUROC of the screening score (trait samples above neutral ones), the same for
the trivial baseline "longer response = more trait", and the fraction of prompts whose trait sample outscores its
neutral twin. Standard library only.
"""
import json
import sys


def auroc(pos, neg):
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def main():
    data_path, scores_path = sys.argv[1], sys.argv[2]
    labels, pairs, lengths = {}, {}, {}
    with open(data_path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            d = json.loads(line)
            labels[i] = d["label"]
            pairs[i] = d["pair"]
            lengths[i] = len(d["messages"][-1]["content"])
    scores = {}
    with open(scores_path, encoding="utf-8") as f:
        for line in f:
            r = json.loads(line)
            scores[r["line"]] = r["score"]
    pos = [scores[l] for l in scores if labels[l] == "trait"]
    neg = [scores[l] for l in scores if labels[l] == "neutral"]
    by_pair = {}
    for l, s in scores.items():
        by_pair.setdefault(pairs[l], {})[labels[l]] = s
    pair_wins = [p["trait"] > p["neutral"] for p in by_pair.values() if len(p) == 2]
    out = {
        "samples": len(scores),
        "auroc": round(auroc(pos, neg), 4),
        "length_baseline_auroc": round(
            auroc([lengths[l] for l in scores if labels[l] == "trait"], [lengths[l] for l in scores if labels[l] == "neutral"]), 4
        ),
        "pair_win_rate": round(sum(pair_wins) / max(1, len(pair_wins)), 4),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
