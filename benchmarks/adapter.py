"""Benchmark: make all-MiniLM-L6-v2 Matryoshka with a post-hoc adapter, on WordNet retrieval.

Task (:mod:`mrl.data.wordnet_retrieval`): queries are WordNet example sentences, the one relevant
document is the synset's dictionary entry ("lemmas: definition"); the 32,923 synsets with an example
are split in half with seed 0; the train half fits PCA and the adapters, the test half (16,462
queries against 16,462 documents) is searched exactly (cosine) at every prefix size m.

Methods, each at every m of --nesting (all fitted only on the train half):

* raw: the model's first m coordinates (what truncating a non-MRL model gives);
* pca: projection on the top-m principal directions of the train embeddings (centred);
* adapter (unsup.): :class:`mrl.adapter.MatryoshkaAdapter` fitted on the train embeddings alone;
* adapter (sup.): the same plus the ranking loss on the train (query, document) pairs.

Metrics: nDCG@10, recall@10, mAP@10 (:mod:`mrl.metrics`; one relevant document, so recall@10 is the
hit rate and mAP@10 the reciprocal rank cut at 10). The "% of full" column divides by the raw model
at its full 384 dims.

Embeddings are cached in --work-dir (not in git); the script writes results.json, results.md and
adapter_ndcg.png (plus recall/mAP PNGs) there. Reproduce:

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/adapter.py
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import time
from pathlib import Path

import numpy as np
import torch

from mrl.adapter import FitConfig, MatryoshkaAdapter, fit_adapter, fit_info
from mrl.adapter.encoders import encode_texts, load_sentence_encoder
from mrl.data.wordnet_retrieval import build_wordnet_retrieval
from mrl.io import atomic_write_text, load_npz, save_npz, write_json
from mrl.metrics import average_precision_at_k, ndcg_at_k, recall_at_k
from mrl.nesting import parse_nesting
from mrl.report import markdown_table, plot_vs_size
from mrl.retrieval import exact_search

log = logging.getLogger("benchmarks.adapter")
PARTS = ("train_queries", "train_documents", "test_queries", "test_documents")
METRICS = {"ndcg@10": ndcg_at_k, "recall@10": recall_at_k, "map@10": average_precision_at_k}
K = 10


def task_texts(task) -> dict[str, tuple[str, ...]]:
    return {
        "train_queries": task.train.queries,
        "train_documents": task.train.documents,
        "test_queries": task.test.queries,
        "test_documents": task.test.documents,
    }


def fingerprint(texts: dict[str, tuple[str, ...]]) -> str:
    """Hash of every text in order: a cache made for other texts is never reused."""
    h = hashlib.sha256()
    for name in PARTS:
        h.update(name.encode())
        for t in texts[name]:
            h.update(t.encode("utf-8") + b"\x00")
    return h.hexdigest()


def embeddings(task, cache: Path, batch_size: int = 64) -> dict[str, np.ndarray]:
    """Frozen all-MiniLM-L6-v2 embeddings of the four text sets, float32 [n, 384], cached."""
    texts = task_texts(task)
    digest = fingerprint(texts)
    if cache.is_file():
        cached = load_npz(cache, required=(*PARTS, "fingerprint"))
        if str(cached["fingerprint"]) == digest:
            log.info("embeddings from cache %s", cache)
            return {k: cached[k] for k in PARTS}
        log.info("cache %s was made for other texts; encoding again", cache)
    model = load_sentence_encoder()
    out = {}
    for name in PARTS:
        start = time.perf_counter()
        out[name] = encode_texts(model, texts[name], batch_size=batch_size, progress=True)
        log.info("encoded %s: %d texts in %.0f s", name, len(texts[name]), time.perf_counter() - start)
    save_npz(cache, fingerprint=np.array(digest), **out)
    return out


def evaluate(queries: np.ndarray, documents: np.ndarray, labels_q, labels_d, nesting) -> dict[str, dict[int, float]]:
    """Mean metrics of exact cosine search over documents[:, :m] for every m."""
    out: dict[str, dict[int, float]] = {name: {} for name in METRICS}
    for m in nesting:
        _, ids = exact_search(documents, queries, k=K, metric="cosine", dim=m)
        for name, metric in METRICS.items():
            out[name][m] = float(metric(ids, labels_q, labels_d, k=K).mean())
    return out


def pca_basis(train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean [d] and principal directions [d, d] (rows, by decreasing variance) of the train rows."""
    mean = train.mean(axis=0)
    _, _, vt = np.linalg.svd(train - mean, full_matrices=False)
    return mean, vt


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work-dir", type=Path, default=Path("runs/adapter"),
                        help="embedding cache, fitted adapters and results (outside git)")
    parser.add_argument("--nesting", default="16,32,64,128,256,384", help="prefix sizes evaluated and trained")
    parser.add_argument("--epochs-unsupervised", type=int, default=10, help="epochs of the unsupervised adapter")
    parser.add_argument("--epochs-supervised", type=int, default=10, help="epochs of the supervised adapter")
    parser.add_argument("--seed", type=int, default=0, help="seed of the adapters' weights and batch order")
    parser.add_argument("--split-seed", type=int, default=0, help="seed of the train/test split of the synsets")
    parser.add_argument("--max-synsets", type=int, default=None, help="use fewer synsets (quick runs)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    args.work_dir.mkdir(parents=True, exist_ok=True)

    task = build_wordnet_retrieval(seed=args.split_seed, max_synsets=args.max_synsets)
    suffix = f"_s{args.split_seed}" + (f"_n{args.max_synsets}" if args.max_synsets else "")
    emb = embeddings(task, args.work_dir / f"wordnet_minilm{suffix}.npz")
    dim = emb["test_queries"].shape[1]
    nesting = parse_nesting(args.nesting, dim)
    labels_q, labels_d = task.test.query_labels, task.test.document_labels
    train_all = np.concatenate([emb["train_queries"], emb["train_documents"]])
    log.info("task: train %d pairs, test %d queries x %d documents, d = %d",
             len(task.train), len(task.test.queries), len(task.test.documents), dim)

    results: dict[str, dict[str, dict[int, float]]] = {}
    timings: dict[str, float] = {}
    results["raw"] = evaluate(emb["test_queries"], emb["test_documents"], labels_q, labels_d, nesting)

    start = time.perf_counter()
    mean, basis = pca_basis(train_all)
    timings["pca"] = time.perf_counter() - start
    project = lambda x: (x - mean) @ basis.T  # noqa: E731  (all directions; evaluate cuts to m)
    results["pca"] = evaluate(project(emb["test_queries"]), project(emb["test_documents"]), labels_q, labels_d, nesting)

    for name, supervised, epochs in (
        ("adapter (unsup.)", False, args.epochs_unsupervised),
        ("adapter (sup.)", True, args.epochs_supervised),
    ):
        torch.manual_seed(args.seed)
        adapter = MatryoshkaAdapter(dim, nesting)
        config = FitConfig(epochs=epochs, seed=args.seed)
        start = time.perf_counter()
        if supervised:
            history = fit_adapter(adapter, train_all, emb["train_queries"], emb["train_documents"], config=config, progress=True)
        else:
            history = fit_adapter(adapter, train_all, config=config, progress=True)
        timings[name] = time.perf_counter() - start
        log.info("%s fitted in %.0f s: %s", name, timings[name], history[-1])
        folder = "adapter_supervised" if supervised else "adapter_unsupervised"
        adapter.save(args.work_dir / folder, overwrite=True,
                     fit_info=fit_info(config, history, task=f"wordnet usage->entry, split seed {args.split_seed}"))
        results[name] = evaluate(adapter.transform(emb["test_queries"]), adapter.transform(emb["test_documents"]),
                                 labels_q, labels_d, nesting)

    full = results["raw"]["ndcg@10"][dim]
    lines = [
        f"WordNet usage -> dictionary entry, all-MiniLM-L6-v2 (d = {dim}); test: {len(labels_q)} queries x "
        f"{len(labels_d)} documents; fitted on {len(task.train)} train pairs. Values x100.",
        "",
    ]
    for metric in METRICS:
        lines += [f"### {metric}", "", markdown_table({n: r[metric] for n, r in results.items()}, nesting), ""]
    recovered = {n: {m: v / full for m, v in r["ndcg@10"].items()} for n, r in results.items()}
    lines += ["### nDCG@10 as % of the raw model's full-size nDCG@10", "", markdown_table(recovered, nesting), ""]
    lines += ["fit time (s): " + ", ".join(f"{n} {t:.0f}" for n, t in timings.items())]
    table = "\n".join(lines)
    print(table)
    atomic_write_text(args.work_dir / "results.md", table + "\n")
    write_json(args.work_dir / "results.json", {
        "task": {"train_pairs": len(task.train), "test_queries": len(labels_q), "test_documents": len(labels_d),
                 "split_seed": args.split_seed, "max_synsets": args.max_synsets},
        "nesting": nesting, "seed": args.seed, "epochs_unsupervised": args.epochs_unsupervised,
        "epochs_supervised": args.epochs_supervised, "fit_seconds": timings,
        "results": {n: {metric: {str(m): v for m, v in series.items()} for metric, series in r.items()} for n, r in results.items()},
    })
    for metric, label in (("ndcg@10", "nDCG@10"), ("recall@10", "recall@10"), ("map@10", "mAP@10")):
        plot_vs_size(args.work_dir / f"adapter_{metric.split('@')[0]}.png", {n: r[metric] for n, r in results.items()},
                     ylabel=f"{label} (%)", title=f"WordNet retrieval, MiniLM-L6 truncated to m: {label}")
    log.info("wrote %s", args.work_dir)


if __name__ == "__main__":
    main()
