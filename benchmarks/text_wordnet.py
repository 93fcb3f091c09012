"""Benchmark: MRL-fine-tuned vs plainly fine-tuned vs raw all-MiniLM-L6-v2 on held-out WordNet queries.

Inputs are the JSON files ``mrl text eval --out`` writes for the three models on the same held-out
queries (the test part of :mod:`mrl.data.wordnet_retrieval`, split seed 0, never seen in training);
this script puts them side by side at every size and checks the goals of the text embedder:

* the MRL model at 48 dims >= the raw model at its full 384 dims (nDCG@10);
* the MRL model >= the plain one by >= 5 points at 24 and 48 dims, and within 1 point at 384.

Reproduce (the two runs take the same steps on the same batches; only the loss differs):

    mrl text train --pairs wordnet --nesting 24,48,96,192,384 --batch-size 32 --max-steps 120 \\
        --max-seq-length 48 --out runs/text/wordnet_mrl
    mrl text train --pairs wordnet --plain ... --out runs/text/wordnet_plain
    mrl text eval --model all-MiniLM-L6-v2 --task wordnet --limit 2000 --out runs/text/raw.json
    mrl text eval runs/text/wordnet_mrl --task wordnet --limit 2000 --out runs/text/mrl.json
    mrl text eval runs/text/wordnet_plain --task wordnet --limit 2000 --sizes 24,48,96,192,384 --out runs/text/plain.json
    .venv/bin/python benchmarks/text_wordnet.py runs/text/raw.json runs/text/mrl.json runs/text/plain.json
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mrl.errors import MRLError
from mrl.io import read_json
from mrl.report import markdown_table

METRICS = ("ndcg@10", "mrr@10", "recall@100")


def _series(results: dict, metric: str) -> dict[int, float]:
    return {int(m): values[metric] for m, values in results["sizes"].items()}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("raw", type=Path, help="eval JSON of the raw model")
    parser.add_argument("mrl", type=Path, help="eval JSON of the MRL run")
    parser.add_argument("plain", type=Path, help="eval JSON of the plain run")
    args = parser.parse_args(argv)
    results = {"raw": read_json(args.raw), "MRL fine-tuned": read_json(args.mrl), "plain fine-tuned": read_json(args.plain)}
    counts = {(r["task"], r["n_queries"], r["n_documents"]) for r in results.values()}
    if len(counts) != 1:
        raise MRLError(f"the three files were evaluated on different queries: {sorted(counts)}")
    task, n_queries, n_documents = counts.pop()
    print(f"{task}: {n_queries} held-out queries x {n_documents} documents; values x100\n")
    for metric in METRICS:
        print(f"### {metric}\n\n{markdown_table({n: _series(r, metric) for n, r in results.items()})}\n")
    print("### funnel (shortlist -> rerank at 384)\n")
    for name, r in results.items():
        for funnel, values in r["funnel"].items():
            print(f"{name:>18} {funnel:>8}: " + ", ".join(f"{k} {100 * v:.2f}" for k, v in values.items()))
    ndcg = {n: _series(r, "ndcg@10") for n, r in results.items()}
    mrl, plain, raw = ndcg["MRL fine-tuned"], ndcg["plain fine-tuned"], ndcg["raw"]
    full = max(raw)
    print("\n### goals (nDCG@10)\n")
    print(f"MRL at 48 ({100 * mrl[48]:.2f}) >= raw at {full} ({100 * raw[full]:.2f}): {mrl[48] >= raw[full]}")
    worse = [m for m in mrl if mrl[m] < plain[m]]
    print(f"MRL >= plain at every size: {not worse}" + (f" (below at {worse})" if worse else ""))
    for m in (24, 48):
        print(f"MRL - plain at {m}: {100 * (mrl[m] - plain[m]):+.2f} points (goal >= +5): {mrl[m] - plain[m] >= 0.05}")
    print(f"MRL - plain at {full}: {100 * (mrl[full] - plain[full]):+.2f} points (goal >= -1): {mrl[full] - plain[full] >= -0.01}")


if __name__ == "__main__":
    main()
