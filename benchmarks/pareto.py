"""mrl funnels against the FAISS indexes a user would pick without mrl: recall, speed, RAM, build time.

One data set per run, every method side by side on the same vectors and queries:

- real: embeddings written by `mrl embed` (database = train split, queries = test split,
  relevant = same label, so mAP@10 is reported too), e.g. the demo's MRL Fashion-MNIST run;
- synthetic: N x D vectors from the generator documented in benchmarks/funnel_search.py
  (`synthetic`: cluster centres plus noise, coordinate j scaled by (j+1)^-decay, unit-normalised).

Vectors are L2-normalised, so inner product is cosine for every method.
Baselines on full vectors (FAISS): IndexFlatIP (exact), IndexHNSWFlat(32), IndexIVFFlat,
IndexIVFPQ and OPQ+IVFPQ (--pq-bytes bytes per vector; "opq" in --baselines), IndexScalarQuantizer SQ8
(per-dimension ranges, FAISS's QT_8bit, and one range for all, QT_8bit_uniform), and binary sign
codes (IndexBinaryFlat) re-scored in float. FAISS scans a scalar-quantised table once per query
(no blocking of queries as its flat index does with BLAS), so SQ8 reads all N x D code bytes for
every query: memory-bound at best (QT_8bit_uniform), and QT_8bit's per-dimension decoding is
slower still; it is slower than exact IndexFlatIP on batches, not a broken build.
mrl funnels: FunnelIndex over a prefix with each --mrl-shortlists structure, each tuned on separate
tuning queries (mrl.retrieval.IndexTuner) with the full vectors memory-mapped from disk (float16, or
float32 with --tune-store mmap32); for --target-recall, --low-target and each --extra-targets the
fastest point reaching it on the tuning queries is kept. Each point is then timed with the full
vectors float16 memory-mapped ("[mmap f16]": RAM counts the process's own memory only, the shortlist
structure; the page cache the OS keeps for the file is shared and reclaimable), with --stores mmap32
float32 memory-mapped ("[mmap f32]": the same RAM; float16's rounding of the stored vectors alone
swaps near-ties at rank 10, which caps recall against float32 exact search below 1), and with
--stores memory float32 in RAM ("[RAM f32]": 4 D bytes more per vector).

For every point: kNN-recall@10 against exact full-dim search, mAP@10 (labels), ms/query batched
(median of --repeats interleaved rounds after a warm-up) and one query at a time (--single
queries), RAM bytes per vector, build seconds. Prints markdown tables, the Pareto set and, per
baseline, whether an mrl point dominates it; writes JSON and a recall-vs-ms plot (marker size ~ RAM).

    # real: embeddings of the demo's MRL run (bash scripts/demo.sh first)
    mrl embed runs/demo/runs/mrl --split train --out runs/demo/mrl_train.npz
    mrl embed runs/demo/runs/mrl --split test --out runs/demo/mrl_test.npz
    .venv/bin/python benchmarks/pareto.py --database runs/demo/mrl_train.npz --queries runs/demo/mrl_test.npz
    # the top of the recall range: float32 vectors memory-mapped as well, funnels tuned against float32 exact search
    .venv/bin/python benchmarks/pareto.py --database runs/demo/mrl_train.npz --queries runs/demo/mrl_test.npz \
        --baselines hnsw --target-recall 0.999 --extra-targets 0.9995,1.0 --mrl-shortlists "hnsw:int8:1024;hnsw:float16:1024" \
        --hnsw-m 48 --ef-construction 200 --stores mmap,mmap32,memory --tune-store mmap32
    # real embeddings of models trained without MRL
    .venv/bin/python benchmarks/pareto.py --dataset jeopardy --mrl-shortlists "flat:float32:64;hnsw:float32:128"
    .venv/bin/python benchmarks/pareto.py --dataset wordnet-minilm --wordnet-n 20000 --mrl-shortlists "flat:float32:64;hnsw:float32:96"
    .venv/bin/python benchmarks/pareto.py --dataset wordnet-minilm --wordnet-n 116359 --embed-threads 2 \
        --cache-dir runs/cache   # every synset: ~13 min to embed, once (later runs load the verified cache)
    # synthetic
    .venv/bin/python benchmarks/pareto.py --synthetic-n 200000
    # 1M x 2048: vectors and the tuning queries' exact top-k cached once (benchmarks/synthetic_cache.py), mrl
    # points over float16 mmap only; exact IndexFlatIP holds 8 GB (~10 GiB RAM in all); full-dim HNSW32,
    # IVF-Flat and SQ8 (8, 8 and 2 GB more) left out, HNSW32's build measured by benchmarks/hnsw_build.py;
    # OPQ's training at d = 2048 ran over 25 minutes on 2 loaded cores and was left out too
    # (recall against the cached exact cosine top-k; add --baselines ivfpq --train-size 20000 --nlist 1024 for IVF-PQ)
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/pareto.py --synthetic-n 1000000 --cache-dir runs/cache --stores mmap \
        --n-queries 300 --single 10 --baselines binary --tune-max-length 1024 --margins \
        --mrl-shortlists "flat:float32:16;hnsw:float32:16;ivf:int8:32:16"
    .venv/bin/python benchmarks/pareto.py --synthetic-n 20000 --dim 256 --n-queries 200   # smoke run
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import logging
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np
import torch

from mrl.io import atomic_write_bytes, load_npz, write_json
from mrl.metrics import Relevance, knn_recall_at_k, retrieval_summary
from mrl.retrieval import (FunnelIndex, IndexTuner, ShortlistSpec, candidate_funnels, exact_search, format_shortlist, holding_target,
                           pareto_front, parse_shortlists)
from mrl.retrieval.shortlist import faiss_nbytes

logger = logging.getLogger("pareto")
K = 10


@contextlib.contextmanager
def _torch_threads(threads: int | None):
    """Run untimed work (embedding, fitting an adapter) with ``threads`` torch threads (None: as
    timed), then give the timed searches their stated count back."""
    timing_threads = torch.get_num_threads()
    torch.set_num_threads(threads or timing_threads)
    try:
        yield threads or timing_threads
    finally:
        torch.set_num_threads(timing_threads)


def _normalise(x: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    return x


def _timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def _float32_blocks(vectors: np.ndarray, block: int = 65536):
    """Float32 row blocks [<= block, D] of ``vectors``, so a float16 memory map is never converted whole."""
    for start in range(0, len(vectors), block):
        yield np.asarray(vectors[start : start + block], dtype=np.float32)


def _add(index, vectors: np.ndarray, encode=lambda block: block) -> None:
    for block in _float32_blocks(vectors):
        index.add(encode(block))


def faiss_baselines(vectors: np.ndarray, args) -> list[dict]:
    """Build each FAISS baseline on the full vectors (float32, or a float16 memory map added block by
    block); return methods with search(q) -> ids. RAM per vector: ``faiss_nbytes`` over N (so
    IVF's centroids and PQ's codebooks count, as they do for mrl's structures), plus the float
    vectors the binary baseline re-scores when they are in memory."""
    n, d = vectors.shape
    wanted = {name.strip() for name in args.baselines.split(",")}
    nlist = args.nlist or max(1, min(n // 39, int(4 * np.sqrt(n))))
    mapped = isinstance(vectors, np.memmap)
    train = np.asarray(vectors[np.random.default_rng(0).choice(n, min(n, args.train_size), replace=False)], dtype=np.float32)
    methods = []

    def add(name, index, ram, build, search_params=None, rescore=None):
        methods.append({"name": name, "index": index, "ram": ram, "build_s": build, "params": search_params, "rescore": rescore})

    flat = faiss.IndexFlatIP(d)
    build, _ = _timed(lambda: _add(flat, vectors))
    add("FAISS IndexFlatIP (exact)", flat, faiss_nbytes(flat) / n, build)
    if "hnsw" in wanted and n <= args.hnsw_full_n:
        hnsw = faiss.IndexHNSWFlat(d, 32, faiss.METRIC_INNER_PRODUCT)
        hnsw.hnsw.efConstruction = 40
        build, _ = _timed(lambda: _add(hnsw, vectors))
        for ef in (64, 256):
            add(f"FAISS HNSWFlat32 ef={ef}", hnsw, faiss_nbytes(hnsw) / n, build, faiss.SearchParametersHNSW(efSearch=ef))
    if "ivf" in wanted:
        ivf = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        build, _ = _timed(lambda: (ivf.train(train), _add(ivf, vectors)))
        for nprobe in (8, 32):
            add(f"FAISS IVF{nlist},Flat nprobe={nprobe}", ivf, faiss_nbytes(ivf) / n, build, faiss.SearchParametersIVF(nprobe=nprobe))
    for opq in [False] * ("ivfpq" in wanted) + [True] * ("opq" in wanted):
        key = f"{'OPQ' + str(args.pq_bytes) + ',' if opq else ''}IVF{nlist},PQ{args.pq_bytes}np"  # np: no polysemous training
        index = faiss.index_factory(d, key, faiss.METRIC_INNER_PRODUCT)
        if opq:
            faiss.downcast_VectorTransform(index.chain.at(0)).niter = 10  # FAISS's default 50 rounds take hours at d=2048 on 2 cores
        build, _ = _timed(lambda index=index: (index.train(train), _add(index, vectors)))
        for nprobe in (16, 64):
            add(f"FAISS {key} nprobe={nprobe}", index, faiss_nbytes(index) / n, build, faiss.SearchParametersIVF(nprobe=nprobe))
    if "sq8" in wanted:
        for name, kind in (("SQ8", faiss.ScalarQuantizer.QT_8bit), ("SQ8 uniform", faiss.ScalarQuantizer.QT_8bit_uniform)):
            sq = faiss.IndexScalarQuantizer(d, kind, faiss.METRIC_INNER_PRODUCT)
            build, _ = _timed(lambda sq=sq: (sq.train(train), _add(sq, vectors)))
            add(f"FAISS {name}", sq, faiss_nbytes(sq) / n, build)
    if "binary" in wanted and d % 8 == 0:
        binary = faiss.IndexBinaryFlat(d)
        build, _ = _timed(lambda: _add(binary, vectors, lambda block: np.packbits(block > 0, axis=1)))
        # The classic recipe: Hamming top-200 on sign bits, then float re-score (float vectors kept in
        # RAM, or read from the float16 memory map, which then costs no RAM of the process's own).
        if mapped:
            add("FAISS binary + float rescore (200) [mmap f16]", binary, faiss_nbytes(binary) / n, build, rescore=200)
        else:
            add("FAISS binary + float rescore (200)", binary, faiss_nbytes(binary) / n + 4 * d, build, rescore=200)
    return methods


def baseline_search(method: dict, vectors: np.ndarray, queries: np.ndarray) -> np.ndarray:
    index = method["index"]
    if method["rescore"] is not None:
        _, candidates = index.search(np.packbits(queries > 0, axis=1), method["rescore"])
        out = np.empty((len(queries), K), dtype=np.int64)
        for start in range(0, len(queries), 32):  # blocks bound the gathered [32, 200, d] floats
            block = candidates[start : start + 32]
            scores = np.einsum("qd,qkd->qk", queries[start : start + 32], np.asarray(vectors[block], dtype=np.float32))
            out[start : start + 32] = np.take_along_axis(block, np.argsort(-scores, axis=1)[:, :K], axis=1)
        return out
    if method["params"] is not None:
        return index.search(queries, K, params=method["params"])[1]
    return index.search(queries, K)[1]


def mrl_points(index: FunnelIndex, tune_queries: np.ndarray, args, tune_exact: np.ndarray | None = None) -> list[dict]:
    """Tune each shortlist structure on the tuning queries; keep its fastest point at each target
    (and, with --tune-headroom H, its fastest point holding the target with H grid steps to spare).

    The tuner runs at the highest target: it skips a funnel only when more than H shorter ones with
    the same stage dims already met its target, so every lower target's fastest point was measured too.
    """
    if tune_exact is None:
        _, tune_exact = exact_search(index.vectors, tune_queries, K, metric="cosine")
    targets = [args.target_recall, args.low_target, *args.extra_targets]
    points = []
    for spec in parse_shortlists(args.mrl_shortlists):
        if spec.kind == "hnsw":  # the flags fill in what an entry leaves at its default (hnsw:int8:192:hnsw_m=64 keeps 64)
            spec = dataclasses.replace(spec, **{field: value for field, value in (("hnsw_m", args.hnsw_m), ("ef_construction", args.ef_construction))
                                                if value and getattr(spec, field) == getattr(ShortlistSpec(), field)})
        candidates = candidate_funnels(index.dim, spec.dim, index.ntotal, K, max_length=args.tune_max_length,
                                       rescore=spec.encoding != "float32")
        start = time.perf_counter()
        tuner = IndexTuner(k=K, target_recall=max(targets), shortlists=[spec], nprobes=args.nprobes, ef_searches=args.ef_searches,
                           repeats=1, candidates=candidates, headroom=args.tune_headroom).fit(index, tune_queries, tune_exact)
        logger.info("%s: %d points measured in %.0f s", format_shortlist(spec), len(tuner.results_), time.perf_counter() - start)
        structure = tuner.best_shortlist_
        chosen = []
        for target in targets:
            for headroom in sorted({0, args.tune_headroom}):
                meeting = holding_target(tuner.results_, target, headroom)
                fastest = min(meeting, key=lambda r: r["ms_per_query"]) if meeting else None
                if fastest is not None and all(fastest is not r for r in chosen):
                    chosen.append(fastest)
        if not chosen:
            chosen = [tuner.best_]  # the most accurate point when no target was met
        for row in chosen:
            options = {key: row[key] for key in ("nprobe", "ef_search") if row[key] is not None}
            label = f"mrl {row['shortlist']} {row['spec']}" + "".join(f" {k}={v}" for k, v in options.items())
            points.append({"name": label, "structure": structure, "funnel": row["funnel"], "options": options,
                           "ram": row["ram_bytes_per_vector"], "build_s": row["build_seconds"], "tuned_recall": row["knn_recall"]})
        logger.info("%s: kept %s", format_shortlist(spec), ", ".join(f"{r['spec']} ({r['knn_recall']:.4f})" for r in chosen))
    return points


# Where the timed mrl points keep their full vectors: --stores name -> (dtype, FunnelIndex store, row label).
STORES = {"mmap": ("float16", "mmap", "[mmap f16]"), "mmap32": ("float32", "mmap", "[mmap f32]"),
          "memory": ("float32", "memory", "[RAM f32]")}


def with_stores(points: list[dict], indexes: dict[str, FunnelIndex]) -> list[dict]:
    """Each tuned point searched over each store's index (the same structure and funnel), in the
    order of ``indexes``. RAM is the tuned point's own (shortlist structure; full vectors mapped)
    plus, for the in-memory store, the full vectors' bytes."""
    out = []
    for name, index in indexes.items():
        vector_bytes = index.dim * np.dtype(index.dtype).itemsize if index.store == "memory" else 0
        out += [{**p, "name": f"{p['name']} {STORES[name][2]}", "index": index, "ram": p["ram"] + vector_bytes} for p in points]
    return out


def store_indexes(vectors: np.ndarray, stores: set[str], tmp: Path) -> dict[str, FunnelIndex]:
    """One FunnelIndex per store, in :data:`STORES` order (flat 16-dim shortlist; the points swap in
    their own structure): mapped stores saved under ``tmp`` / name and loaded memory-mapped, the
    in-memory one on ``vectors`` (no copy when they are float32; float16 ones, as cached at 1M, are
    converted whole, 4 N D bytes, for mmap32 and memory)."""
    indexes = {}
    for name in sorted(stores, key=list(STORES).index):
        dtype, store, _ = STORES[name]
        start = time.perf_counter()
        built = FunnelIndex(vectors, shortlist_dim=16, dtype=dtype)
        if store == "memory":
            indexes[name] = built
            continue
        built.save(tmp / name)
        del built
        indexes[name] = FunnelIndex.load(tmp / name, store="mmap")
        logger.info("%s vectors written and mapped in %.1fs", dtype, time.perf_counter() - start)
    return indexes


def mrl_search(point: dict, queries: np.ndarray) -> np.ndarray:
    index = point["index"]
    index._shortlist, index._shortlist_bytes = point["structure"], None
    return index.search(queries, K, point["funnel"], **point["options"])[1]


def margin_study(path: Path, queries: np.ndarray, exact_ids: np.ndarray, args) -> list[dict]:
    """Adaptive shortlist depth against fixed depth, flat float32 16-dim shortlist then full-dim rerank.

    Fixed: n_1 candidates for every query. Adaptive: up to 2048 candidates, cut where the 16-dim
    cosine falls more than the margin below the 10th best. Compared by recall at equal mean candidates reranked.
    """
    index = FunnelIndex.load(path, store="mmap")  # as saved: the flat float32 16-dim shortlist, float16 vectors
    rows = []
    configs = [("fixed", n1, None) for n1 in (25, 50, 100, 200, 400, 800)]
    configs += [("margin", min(2048, index.ntotal), m) for m in args.margins]
    for kind, n1, margin in configs:
        index.search(queries[:20], K, [(16, n1), (index.dim, K)], shortlist_margin=margin)  # warm-up
        _, ids, stats = index.search(queries, K, [(16, n1), (index.dim, K)], shortlist_margin=margin, return_stats=True)
        rows.append({"depth": f"{kind} {n1 if margin is None else margin}", "mean_candidates": stats.mean_shortlist_length,
                     f"knn_recall@{K}": float(knn_recall_at_k(ids, exact_ids, K).mean()), "ms_per_query": stats.ms_per_query,
                     "mflops": stats.flops_per_query / 1e6})
    return rows


def named_dataset(args) -> tuple[np.ndarray, np.ndarray | None, np.ndarray, np.ndarray | None, str]:
    """(database, labels, queries, labels, title) of a real set embedded by a model trained without MRL.

    jeopardy: the 10,000 OpenAI ada-002 clue vectors (1536-d) of :mod:`mrl.data.jeopardy`, split
    8,000 database / 2,000 queries by one seeded shuffle; label = category (mAP@10).
    wordnet-minilm: all-MiniLM-L6-v2 (384-d, offline) embeddings of WordNet glosses
    (:func:`mrl.data.wordnet_retrieval.document_text` of every synset, shuffled with seed 0):
    the first --wordnet-n are the database, the next ones the queries; no labels.
    """
    if args.dataset == "jeopardy":
        from mrl.data.jeopardy import load_jeopardy, split_indices

        data = load_jeopardy()
        train, test = split_indices(len(data.labels), test_fraction=0.2, seed=0)
        return (_normalise(data.vectors[train]), data.labels[train], _normalise(data.vectors[test]), data.labels[test],
                f"Jeopardy ada-002: {len(train)} x {data.vectors.shape[1]}")
    from mrl.data.wordnet import load_synsets
    from mrl.data.wordnet_retrieval import document_text
    from mrl.text.model import embed, load_text_model

    synsets = load_synsets()
    order = np.random.default_rng(0).permutation(len(synsets))[: args.wordnet_n + args.tune_queries + args.n_queries]
    if len(order) < args.wordnet_n + args.tune_queries + args.n_queries:
        raise SystemExit(f"--wordnet-n + --tune-queries + --n-queries exceeds the {len(synsets)} WordNet synsets")
    texts = [document_text(synsets[i]) for i in order]

    def embedded() -> np.ndarray:
        start = time.perf_counter()
        with _torch_threads(args.embed_threads) as threads:
            out = _normalise(embed(load_text_model("all-MiniLM-L6-v2"), texts, batch_size=128))
        logger.info("embedded %d WordNet glosses with all-MiniLM-L6-v2 (%d threads) in %.0f s", len(texts), threads,
                    time.perf_counter() - start)
        return out

    if args.cache_dir is None:
        vectors = embedded()
    else:  # keyed by the texts themselves, so another WordNet or another split is never served from the cache
        from synthetic_cache import cached_array

        params = {"model": "all-MiniLM-L6-v2", "normalised": True, "dtype": "float32", "n": len(texts),
                  "texts_sha256": hashlib.sha256("\x00".join(texts).encode()).hexdigest()}
        vectors = cached_array(args.cache_dir, f"wordnet-minilm-{len(texts)}", params, embedded)
        if vectors.shape[0] != len(texts) or vectors.dtype != np.float32:
            raise RuntimeError(f"cached WordNet embeddings hold {vectors.dtype} {vectors.shape}, expected {len(texts)} float32 rows")
    return (vectors[: args.wordnet_n], None, vectors[args.wordnet_n :], None,
            f"WordNet glosses, all-MiniLM-L6-v2: {args.wordnet_n} x {vectors.shape[1]}")


def adapted(vectors: np.ndarray, others: list[np.ndarray], args) -> tuple[np.ndarray, list[np.ndarray]]:
    """The vectors made Matryoshka post hoc: an unsupervised adapter (``mrl adapt fit``'s defaults
    and seed 0, --adapter-nesting, --adapter-epochs) fitted on the database vectors alone, then
    database and queries transformed and L2-normalised (``mrl adapt apply --normalize``). Untimed;
    trained with --embed-threads torch threads."""
    from mrl.adapter import FitConfig, MatryoshkaAdapter, fit_adapter
    from mrl.nesting import parse_nesting

    start = time.perf_counter()
    with _torch_threads(args.embed_threads):
        config = FitConfig(epochs=args.adapter_epochs, seed=0)
        torch.manual_seed(config.seed)
        adapter = MatryoshkaAdapter(vectors.shape[1], parse_nesting(args.adapter_nesting, vectors.shape[1]))
        fit_adapter(adapter, vectors, config=config)
        out = [adapter.transform(x, normalize=True, batch_size=8192) for x in (vectors, *others)]
    logger.info("adapter (nesting %s, %d epochs) fitted on %d vectors and applied in %.0f s", args.adapter_nesting,
                args.adapter_epochs, len(vectors), time.perf_counter() - start)
    return out[0], out[1:]


def run(vectors: np.ndarray, queries: np.ndarray, tune_queries: np.ndarray, db_labels, query_labels, args,
        tune_exact: np.ndarray | None = None, reference_ids: np.ndarray | None = None) -> dict:
    """Every method side by side; kNN-recall against ``reference_ids`` [Q, K] when given (exact cosine
    top-k over the stored vectors), else against the exact IndexFlatIP's own results."""
    n, d = vectors.shape
    methods = faiss_baselines(vectors, args)
    exact = methods[0]
    tmp = Path(tempfile.mkdtemp(prefix="pareto-", dir=args.tmp_dir))
    try:
        indexes = store_indexes(vectors, args.stores | {args.tune_store}, tmp)
        points = with_stores(mrl_points(indexes[args.tune_store], tune_queries, args, tune_exact), indexes)
        runners = [(m["name"], lambda m=m, q=None: baseline_search(m, vectors, q)) for m in methods]
        runners += [(p["name"], lambda p=p, q=None: mrl_search(p, q)) for p in points]
        for _, fn in runners:  # warm-up (also pages in the mapped rows the queries touch)
            fn(q=queries[: min(50, len(queries))])
        times = {name: [] for name, _ in runners}
        ids = {}
        for _ in range(args.repeats):
            for name, fn in runners:
                seconds, ids[name] = _timed(lambda fn=fn: fn(q=queries))
                times[name].append(seconds)
        single = {}
        for name, fn in runners:
            seconds, _ = _timed(lambda fn=fn: [fn(q=queries[i : i + 1]) for i in range(args.single)])
            single[name] = 1000 * seconds / args.single
        exact_ids = ids[exact["name"]] if reference_ids is None else reference_ids
        info = {m["name"]: m for m in methods} | {p["name"]: p for p in points}
        rows = []
        for name, _ in runners:
            row = {
                "method": name,
                f"knn_recall@{K}": float(knn_recall_at_k(ids[name], exact_ids, K).mean()),
                "ms_per_query": 1000 * statistics.median(times[name]) / len(queries),
                "ms_single": single[name],
                "ram_bytes_per_vector": float(info[name]["ram"]),
                "build_s": float(info[name]["build_s"]),
            }
            if query_labels is not None:
                summary = retrieval_summary(Relevance.from_labels(ids[name], query_labels, db_labels), k=K)
                row[f"map@{K}"] = summary[f"map@{K}"]
            rows.append(row)
        margins = margin_study(tmp / "mmap", queries, exact_ids, args) if args.margins else []
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    exact_ms, exact_single = rows[0]["ms_per_query"], rows[0]["ms_single"]
    for row in rows:
        row["speedup"] = exact_ms / row["ms_per_query"]
        row["speedup_single"] = exact_single / row["ms_single"]
    front = pareto_front(rows, ((f"knn_recall@{K}", True), ("ms_per_query", False), ("ram_bytes_per_vector", False)))
    for row in rows:
        row["pareto"] = row in front
        if row["method"].startswith("FAISS"):  # exact search too: a funnel that finds every neighbour faster dominates it
            row["dominated_by"] = [r["method"] for r in rows if r["method"].startswith("mrl")
                                   and r[f"knn_recall@{K}"] >= row[f"knn_recall@{K}"] and r["ms_per_query"] <= row["ms_per_query"]
                                   and r["ram_bytes_per_vector"] <= row["ram_bytes_per_vector"]]
    return {"n": n, "dim": d, "n_queries": len(queries), "rows": rows, "margins": margins}


def table(rows: list[dict]) -> str:
    keys = ["method", f"knn_recall@{K}"] + ([f"map@{K}"] if f"map@{K}" in rows[0] else []) + [
        "ms_per_query", "ms_single", "speedup", "speedup_single", "ram_bytes_per_vector", "build_s", "pareto"]
    return table_of(rows, keys)


def table_of(rows: list[dict], keys: list[str] | None = None) -> str:
    keys = keys or list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for r in rows:
        cells = [f"{r[key]:.4g}" if isinstance(r[key], float) else str(r[key]) for key in keys]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(path: Path, rows: list[dict], title: str) -> None:
    """Recall vs ms/query (log x), marker area ~ RAM bytes per vector; a Figure, no pyplot state."""
    import io

    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 4.8), dpi=120)
    ax = fig.add_subplot()
    top = max(r["ram_bytes_per_vector"] for r in rows)
    for r in rows:
        colour = "tab:red" if r["method"].startswith("mrl") else "tab:blue"
        ax.scatter(r["ms_per_query"], r[f"knn_recall@{K}"], s=15 + 300 * r["ram_bytes_per_vector"] / top, c=colour, alpha=0.6)
        ax.annotate(r["method"].replace("FAISS ", ""), (r["ms_per_query"], r[f"knn_recall@{K}"]), fontsize=5, xytext=(3, 2),
                    textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("ms per query (batched, log scale)")
    ax.set_ylabel(f"kNN-recall@{K} vs exact full-dim")
    ax.set_title(title + "  (red: mrl, blue: FAISS; area ~ RAM bytes/vector)", fontsize=8)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    atomic_write_bytes(path, buf.getvalue())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database", type=Path, default=None, help="real data: embeddings .npz (X, y) of the database")
    parser.add_argument("--queries", type=Path, default=None, help="real data: embeddings .npz (X, y) of the queries")
    parser.add_argument("--synthetic-n", type=int, default=None, help="synthetic data: database size")
    parser.add_argument("--dataset", choices=["jeopardy", "wordnet-minilm"], default=None,
                        help="real embeddings of a model trained without MRL (see named_dataset)")
    parser.add_argument("--wordnet-n", type=int, default=20_000,
                        help="wordnet-minilm: glosses in the database (at most 117,659 - tuning - timed queries)")
    parser.add_argument("--embed-threads", type=int, default=None, help="torch threads while embedding (wordnet-minilm) or fitting --adapter-nesting (default: as timed)")
    parser.add_argument("--adapter-nesting", default=None,
                        help="real data: search the vectors made Matryoshka post hoc by an unsupervised mrl adapter with these "
                             "prefix sizes (e.g. 24,48,96,192,384), fitted on the database vectors (untimed)")
    parser.add_argument("--adapter-epochs", type=int, default=5, help="epochs of the --adapter-nesting fit")
    parser.add_argument("--dim", type=int, default=2048, help="synthetic dimension")
    parser.add_argument("--n-queries", type=int, default=1000, help="timed queries (real: the first test vectors after the tuning ones)")
    parser.add_argument("--tune-queries", type=int, default=200, help="queries the mrl funnels are tuned on (never timed)")
    parser.add_argument("--single", type=int, default=100, help="queries timed one at a time")
    parser.add_argument("--target-recall", type=float, default=0.99, help="kNN-recall@10 the tuned mrl points must reach")
    parser.add_argument("--low-target", type=float, default=0.95, help="also keep each structure's fastest point above this")
    parser.add_argument("--extra-targets", type=lambda text: [float(t) for t in text.split(",") if t.strip()], default=[],
                        help="more recall levels (comma-separated, e.g. 0.5,0.999) at which each structure's fastest point is kept")
    parser.add_argument("--mrl-shortlists", default="flat:float32:16;flat:int8:32;flat:binary:64;hnsw:float32:16;ivf:int8:32:16",
                        help="mrl structures (kind:encoding:dim[:coarse_dim | :opq_niter][:name=value ...], ';'-separated; "
                             "see mrl.retrieval.parse_shortlists)")
    parser.add_argument("--hnsw-m", type=int, default=None,
                        help="graph degree M of the mrl HNSW shortlists that do not set hnsw_m= themselves (default: ShortlistSpec's 32)")
    parser.add_argument("--ef-construction", type=int, default=None,
                        help="build beam of the mrl HNSW shortlists (default: ShortlistSpec's 80)")
    parser.add_argument("--nprobes", type=lambda text: [int(t) for t in text.split(",") if t.strip()], default=[4, 16, 64],
                        help="lists probed per query the tuner tries on the mrl ivf shortlists")
    parser.add_argument("--ef-searches", type=lambda text: [int(t) for t in text.split(",") if t.strip()], default=[64, 256],
                        help="search beams the tuner tries on the mrl hnsw shortlists (raised to the shortlist length when shorter)")
    parser.add_argument("--stores", type=lambda text: {"mmap"} | {s.strip() for s in text.split(",") if s.strip()}, default="mmap,memory",
                        help="where the timed mrl points keep full vectors, comma-separated: mmap (float16 on disk, always), "
                             "mmap32 (float32 on disk) and memory (float32 in RAM)")
    parser.add_argument("--tune-store", choices=["mmap", "mmap32"], default="mmap",
                        help="the memory-mapped vectors the mrl funnels are tuned on: float16 (mmap) or float32 (mmap32)")
    parser.add_argument("--baselines", default="hnsw,ivf,ivfpq,opq,sq8,binary",
                        help="FAISS baselines besides exact, comma-separated (hnsw, ivf, ivfpq, opq, sq8, binary)")
    parser.add_argument("--pq-bytes", type=int, default=64, help="bytes per vector of the IVFPQ / OPQ+IVFPQ baselines")
    parser.add_argument("--hnsw-full-n", type=int, default=250_000, help="build full-dim HNSW32 only up to this N")
    parser.add_argument("--nlist", type=int, default=None, help="lists of the FAISS IVF baselines (default: min(N / 39, 4 sqrt(N)))")
    parser.add_argument("--tune-max-length", type=int, default=2048, help="longest first-stage shortlist the mrl tuner tries")
    parser.add_argument("--tune-headroom", type=int, default=0,
                        help="grid steps to spare: at each target also keep the fastest funnel whose N next-shorter funnels "
                             "(same structure, breadth and stage dims) met it on the tuning queries too")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="synthetic: keep the float16 vectors and the tuning queries' exact top-k here (benchmarks/synthetic_cache.py) "
                             "and reuse them, size and sha256 checked; the vectors stay memory-mapped (use --stores mmap at 1M); "
                             "wordnet-minilm: keep the embeddings here, keyed by the texts' sha256")
    parser.add_argument("--train-size", type=int, default=50_000, help="training sample of the FAISS quantisers")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved timing rounds (median)")
    parser.add_argument("--clusters", type=int, default=1000, help="synthetic cluster centres")
    parser.add_argument("--decay", type=float, default=1.0, help="synthetic: coordinate j scaled by (j+1)^-decay")
    parser.add_argument("--noise", type=float, default=0.5, help="synthetic: within-cluster noise std")
    parser.add_argument("--seed", type=int, default=0, help="synthetic generator seed")
    parser.add_argument("--margins", type=float, nargs="*", default=[0.02, 0.05, 0.1, 0.2],
                        help="adaptive shortlist margins compared with fixed depths (none: skip)")
    parser.add_argument("--tmp-dir", type=Path, default=None, help="where the mrl index's vectors.npy is written (default: system temp)")
    parser.add_argument("--out", type=Path, default=Path("runs/benchmarks/pareto.json"), help="JSON results (and a .png beside it)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if sum(x is not None for x in (args.database, args.synthetic_n, args.dataset)) != 1:
        parser.error("give one of --database and --queries (real data), --dataset or --synthetic-n")
    if args.stores - set(STORES):
        parser.error(f"--stores: unknown {sorted(args.stores - set(STORES))}; known: {', '.join(STORES)}")
    if args.adapter_nesting is not None and args.synthetic_n is not None:
        parser.error("--adapter-nesting applies to real embeddings (--dataset, --database)")

    if args.dataset is not None:
        vectors, db_labels, all_queries, all_labels, title = named_dataset(args)
        tune_queries = all_queries[: args.tune_queries]
        queries = all_queries[args.tune_queries : args.tune_queries + args.n_queries]
        query_labels = None if all_labels is None else all_labels[args.tune_queries : args.tune_queries + args.n_queries]
    elif args.database is not None:
        db, q = load_npz(args.database, required=("X",)), load_npz(args.queries, required=("X",))
        vectors, db_labels = _normalise(db["X"]), db.get("y")
        tune_queries = _normalise(q["X"][: args.tune_queries])
        queries = _normalise(q["X"][args.tune_queries : args.tune_queries + args.n_queries])
        query_labels = None if q.get("y") is None else q["y"][args.tune_queries : args.tune_queries + args.n_queries]
        title = f"{args.database.name}: {len(vectors)} x {vectors.shape[1]}"
    else:
        from funnel_search import synthetic  # the documented generator, beside this script

        shape = (args.dim, args.clusters, args.seed)
        if args.cache_dir is not None:
            from synthetic_cache import cached_synthetic

            vectors = cached_synthetic(args.cache_dir, args.synthetic_n, *shape, stream=0, decay=args.decay, noise=args.noise)
        else:
            vectors = synthetic(args.synthetic_n, *shape, stream=0, decay=args.decay, noise=args.noise)
        queries = synthetic(args.n_queries, *shape, stream=1, decay=args.decay, noise=args.noise)
        tune_queries = synthetic(args.tune_queries, *shape, stream=2, decay=args.decay, noise=args.noise)
        db_labels = query_labels = None
        title = f"synthetic {args.synthetic_n} x {args.dim} (decay {args.decay})"
    if args.adapter_nesting is not None:
        vectors, (tune_queries, queries) = adapted(vectors, [tune_queries, queries], args)
        title += f", adapted (nesting {args.adapter_nesting}, {args.adapter_epochs} epochs)"
    report = {
        "machine": {"cpu_count": os.cpu_count(), "faiss_threads": faiss.omp_get_max_threads(), "torch_threads": torch.get_num_threads(),
                    "platform": platform.platform(), "load_average_start": os.getloadavg()},
        "faiss": faiss.__version__, "args": {k: str(v) for k, v in vars(args).items()},
    }
    tune_exact = reference_ids = None
    if args.cache_dir is not None and args.synthetic_n is not None:
        from synthetic_cache import cached_ground_truth

        # Cosine top-k over the float16 vectors as stored: IndexFlatIP's inner products differ from
        # cosine by float16's rounding of the unit norms, enough to swap near-ties at rank k among 1M.
        tune_exact = cached_ground_truth(args.cache_dir, vectors, tune_queries, K)[1]
        reference_ids = cached_ground_truth(args.cache_dir, vectors, queries, K)[1]
    report["result"] = run(vectors, queries, tune_queries, db_labels, query_labels, args, tune_exact, reference_ids)
    report["machine"]["load_average_end"] = os.getloadavg()
    rows = report["result"]["rows"]
    print(f"\n## {title}, {len(queries)} queries, k={K}, {os.cpu_count()} cores, {faiss.omp_get_max_threads()} FAISS threads, "
          f"{torch.get_num_threads()} torch threads\n")
    print(table(rows))
    for row in rows:
        if "dominated_by" in row:
            print(f"- {row['method']}: " + (f"dominated by {row['dominated_by'][0]}" if row["dominated_by"] else "NOT dominated by an mrl point"))
    for regime, key in (("batched", "speedup"), ("one query at a time", "speedup_single")):
        accurate = [r for r in rows if r["method"].startswith("mrl") and r[f"knn_recall@{K}"] >= args.target_recall]
        if accurate:
            best = max(accurate, key=lambda r: r[key])
            print(f"- fastest mrl point at knn_recall@{K} >= {args.target_recall} {regime}: {best['method']} "
                  f"({best[f'knn_recall@{K}']:.4f}, {best[key]:.1f}x exact)")
    if report["result"]["margins"]:
        print("\n## Adaptive shortlist depth (flat 16-dim shortlist, full-dim rerank)\n")
        print(table_of(report["result"]["margins"]))
    write_json(args.out, report)
    plot(args.out.with_suffix(".png"), rows, title)
    print(f"\nwrote {args.out} and {args.out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
