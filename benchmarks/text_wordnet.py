"""Benchmark: MRL-fine-tuned vs plainly fine-tuned vs raw all-MiniLM-L6-v2 on held-out retrieval queries.

Inputs are the JSON files ``mrl text eval --out`` writes on the same held-out queries (WordNet: the
test part of :mod:`mrl.data.wordnet_retrieval`, split seed 0, never seen in training; Jeopardy:
the test part of :func:`mrl.data.jeopardy.question_answer_split`): one for the raw model and one
per training seed for the MRL and the plain runs. This script puts them side by side at every size
(mean +- standard deviation over the seeds) and checks the goals of the text embedder on the means:

* the MRL model at 48 dims >= the raw model at its full 384 dims (nDCG@10);
* the MRL model >= the plain one by >= 5 points at 24 and 48 dims, and within 1 point at 384.

Reproduce (for each seed S in 0 1 2, the runs take the same steps on the same batches; only the
loss differs; the MRL run uses the default weights, 1 per size and 4 at the full size, the
equal-weight run ``--loss-weights 1,1,1,1,1``):

    mrl text train --pairs wordnet --nesting 24,48,96,192,384 --batch-size 32 --max-steps 100 \\
        --max-seq-length 48 --seed S --out runs/text/w_mrl_sS
    mrl text train --pairs wordnet --nesting 24,48,96,192,384 --loss-weights 1,1,1,1,1 --batch-size 32 \\
        --max-steps 100 --max-seq-length 48 --seed S --out runs/text/w_equal_sS
    mrl text train --pairs wordnet --plain --batch-size 32 --max-steps 100 --max-seq-length 48 \\
        --seed S --out runs/text/w_plain_sS
    mrl text eval runs/text/w_mrl_sS --task wordnet --limit 2000 --out runs/text/w_mrl_sS.json
    mrl text eval runs/text/w_equal_sS --task wordnet --limit 2000 --out runs/text/w_equal_sS.json
    mrl text eval runs/text/w_plain_sS --task wordnet --limit 2000 --sizes 24,48,96,192,384 \\
        --out runs/text/w_plain_sS.json
    mrl text eval --model all-MiniLM-L6-v2 --task wordnet --limit 2000 --out runs/text/w_raw.json
    .venv/bin/python benchmarks/text_wordnet.py runs/text/w_raw.json --mrl runs/text/w_mrl_s*.json \\
        --plain runs/text/w_plain_s*.json --equal runs/text/w_equal_s*.json
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from mrl.errors import MRLError
from mrl.io import read_json
from mrl.report import markdown_table

METRICS = ("ndcg@10", "mrr@10", "recall@100")


def _series(results: list[dict], metric: str, key: str = "sizes") -> tuple[dict, dict]:
    """Mean and standard deviation (0 for one run) over runs of ``metric`` at every size (or funnel)."""
    names = list(results[0][key])
    values = {name: [r[key][name][metric] for r in results] for name in names}
    mean = {_key(n): statistics.mean(v) for n, v in values.items()}
    std = {_key(n): statistics.stdev(v) if len(v) > 1 else 0.0 for n, v in values.items()}
    return mean, std


def _key(name: str) -> int | str:
    return int(name) if name.isdigit() else name


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("raw", type=Path, help="eval JSON of the raw model")
    parser.add_argument("--mrl", type=Path, nargs="+", required=True, help="eval JSON of each MRL run (one per seed)")
    parser.add_argument("--plain", type=Path, nargs="+", required=True, help="eval JSON of each plain run (one per seed)")
    parser.add_argument("--equal", type=Path, nargs="+", default=[],
                        help="eval JSON of each MRL run with equal weights (--loss-weights 1,1,1,1,1), shown beside")
    args = parser.parse_args(argv)
    runs = {"raw": [read_json(args.raw)], "MRL fine-tuned": [read_json(p) for p in args.mrl],
            "plain fine-tuned": [read_json(p) for p in args.plain]}
    if args.equal:
        runs["MRL, equal weights"] = [read_json(p) for p in args.equal]
    counts = {(r["task"], r["n_queries"], r["n_documents"]) for group in runs.values() for r in group}
    if len(counts) != 1:
        raise MRLError(f"the files were evaluated on different queries: {sorted(counts)}")
    task, n_queries, n_documents = counts.pop()
    print(f"{task}: {n_queries} held-out queries x {n_documents} documents; values x100, mean +- std over "
          f"{len(args.mrl)} MRL, {len(args.plain)} plain and {len(args.equal)} equal-weight seeds\n")
    for metric in METRICS:
        stats = {name: _series(group, metric) for name, group in runs.items()}
        table = markdown_table({n: s[0] for n, s in stats.items()},
                               stds={n: s[1] for n, s in stats.items() if len(runs[n]) > 1})
        print(f"### {metric}\n\n{table}\n")
    print("### funnel (shortlist -> rerank at the full size)\n")
    for name, group in runs.items():
        for funnel in group[0]["funnel"]:
            cells = []
            for metric in METRICS:
                mean, std = _series(group, metric, "funnel")
                cells.append(f"{metric} {100 * mean[funnel]:.2f}" + (f" +- {100 * std[funnel]:.2f}" if len(group) > 1 else ""))
            print(f"{name:>18} {funnel:>8}: " + ", ".join(cells))
    ndcg = {name: _series(group, "ndcg@10")[0] for name, group in runs.items()}
    mrl, plain, raw = ndcg["MRL fine-tuned"], ndcg["plain fine-tuned"], ndcg["raw"]
    full = max(raw)
    print("\n### goals (nDCG@10, means)\n")
    print(f"MRL at 48 ({100 * mrl[48]:.2f}) >= raw at {full} ({100 * raw[full]:.2f}): {mrl[48] >= raw[full]}")
    worse = [m for m in mrl if mrl[m] < plain[m]]
    print(f"MRL >= plain at every size: {not worse}" + (f" (below at {worse})" if worse else ""))
    for m in (24, 48):
        print(f"MRL - plain at {m}: {100 * (mrl[m] - plain[m]):+.2f} points (goal >= +5): {mrl[m] - plain[m] >= 0.05}")
    print(f"MRL - plain at {full}: {100 * (mrl[full] - plain[full]):+.2f} points (goal >= -1): {mrl[full] - plain[full] >= -0.01}")


if __name__ == "__main__":
    main()
