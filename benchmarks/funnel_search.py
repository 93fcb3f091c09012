"""Funnel retrieval side by side: accuracy on real MRL embeddings, speed at 1M x 2048.

Part 1, accuracy (MRL paper section 4.3, table 3): Fashion-MNIST MRL embeddings written by
`mrl embed` (database = train split, queries = test split, relevant = same label). Exact full-dim
search, exact search on low-dim prefixes, the 16 -> 2048 funnel over 200 candidates, the paper's
cascade and the funnel tuned for kNN-recall@10 >= 0.99 on the first --tune-queries queries:
mAP@10, P@10, recall@10, nDCG@10, top-1, kNN-recall@10, MFLOPs and ms per query.

Part 2, speed: N synthetic D-dim float32 vectors with MRL-like prefix structure (see `synthetic`),
--n-queries queries, k = 10, cosine (vectors are unit-normalised, so FAISS exact IndexFlatIP is
cosine). Compared in interleaved timing rounds: exact full-dim search, the funnel with a flat
(exact) 16-dim shortlist, the funnel with an HNSW 16-dim shortlist, and FAISS HNSW on all D dims
(built on the first --hnsw-full-n vectors only when that is smaller than N, since its build
dominates on a small machine; exact and both funnels are then also timed on that subset).
Funnels are tuned (kNN-recall@10 >= --target-recall on separate tuning queries) before timing.
For exact search above --flat-copy-gib the script calls faiss.knn on the stored array, the
kernel IndexFlatIP.search runs (knn_inner_product), to avoid a second copy of the data.

    # embeddings of the demo's MRL run (bash scripts/demo.sh first):
    #   mrl embed runs/demo/runs/mrl --split train --out runs/demo/mrl_train.npz
    #   mrl embed runs/demo/runs/mrl --split test --out runs/demo/mrl_test.npz
    .venv/bin/python benchmarks/funnel_search.py --skip-speed
    .venv/bin/python benchmarks/funnel_search.py --skip-real --n 100000 --hnsw-full-n 100000 --tune-queries 100
    .venv/bin/python benchmarks/funnel_search.py --skip-real --n 1000000 --hnsw-full-n 0 --tune-queries 200 \
        --ef-construction 40 --repeats 2 --exact-repeats 1     # ~20 min on 2 busy cores, ~9 GB RAM
    .venv/bin/python benchmarks/funnel_search.py --skip-real --n 20000 --dim 256   # small smoke run

Goals (issue 5): funnel mAP@10 within 0.1 point of exact on the real data; at 1M x 2048 the
funnel >= 40x faster than exact at kNN-recall@10 >= 0.99.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import statistics
import time
from pathlib import Path

import faiss
import numpy as np

from mrl.io import load_npz, write_json
from mrl.metrics import knn_recall_at_k
from mrl.retrieval import (
    FunnelIndex,
    default_configurations,
    evaluate_configurations,
    exact_search,
    format_funnel,
    format_table,
)

logger = logging.getLogger("funnel_search")
K = 10


def synthetic(n: int, dim: int, n_clusters: int, seed: int, stream: int, decay: float = 1.0, noise: float = 0.5,
              block: int = 65536) -> np.ndarray:
    """MRL-like vectors: (centre + noise) scaled by coordinate j by (j + 1) ** -decay, then unit-normalised.

    Centres ~ N(0, I) (n_clusters of them, fixed by ``seed``), each vector picks one uniformly and
    adds N(0, noise^2 I); multiplying coordinate j by (j + 1) ** -decay makes the leading
    coordinates carry most of the variance (with decay = 1, about 96% in the first 16 of 2048), the
    way MRL training packs information into early dimensions. ``stream`` selects an independent
    draw of noise and cluster choices over the same centres (database, queries, tuning queries).
    Generated block by block in float32 (:func:`synthetic_blocks` yields the same blocks one at a time).
    """
    out = np.empty((n, dim), dtype=np.float32)
    start = 0
    for part in synthetic_blocks(n, dim, n_clusters, seed, stream, decay, noise, block):
        out[start : start + len(part)] = part
        start += len(part)
    return out


def synthetic_blocks(n: int, dim: int, n_clusters: int, seed: int, stream: int, decay: float = 1.0, noise: float = 0.5,
                     block: int = 65536):
    """The rows of :func:`synthetic` as float32 blocks of at most ``block`` rows, so 1M x 2048 can go to disk without 8 GB in RAM."""
    centres = np.random.default_rng(seed).standard_normal((n_clusters, dim), dtype=np.float32)
    scale = (np.arange(1, dim + 1, dtype=np.float32) ** -decay).astype(np.float32)
    rng = np.random.default_rng([seed, stream])
    for start in range(0, n, block):
        part = rng.standard_normal((min(block, n - start), dim), dtype=np.float32)
        part *= noise
        part += centres[rng.integers(0, n_clusters, len(part))]
        part *= scale
        part /= np.linalg.norm(part, axis=1, keepdims=True)
        yield part


def exact_search_blocks(vectors: np.ndarray, queries: np.ndarray, k: int):
    return exact_search(vectors, queries, k, metric="ip")  # unit vectors: ip is cosine


def timed(fn, repeats: int) -> tuple[list[float], object]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return times, result


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def part_real(args) -> dict:
    db = load_npz(args.database, required=("X", "y"))
    q = load_npz(args.queries, required=("X", "y"))
    index = FunnelIndex(db["X"], shortlist_dim=args.shortlist_dim, labels=db["y"])
    tune_x = q["X"][: args.tune_queries]
    tuner = index.tune(tune_x, k=K, target_recall=args.target_recall)
    logger.info("tuned on %d test queries: %s", len(tune_x), tuner.best_["spec"])
    configs = default_configurations(index, K)
    configs[2:2] = [f"exact:{m}" for m in (32, 64, 128) if m < index.dim]
    rows = evaluate_configurations(index, q["X"], q["y"], configs, k=K)
    exact = rows[0]
    for row in rows:
        row["map_delta_points"] = 100 * (row[f"map@{K}"] - exact[f"map@{K}"])
        row["flops_ratio"] = exact["mflops"] / row["mflops"]
        row["speedup"] = exact["ms_per_query"] / row["ms_per_query"]
    return {"database": str(args.database), "queries": str(args.queries), "n_database": index.ntotal,
            "n_queries": int(len(q["X"])), "dim": index.dim, "tuned_funnel": tuner.best_["spec"], "rows": rows}


def speed_rows(vectors: np.ndarray, queries: np.ndarray, tune_queries: np.ndarray, args, with_hnsw_full: bool) -> list[dict]:
    """Time every method on the same vectors, interleaved round by round."""
    n, dim = vectors.shape
    copy_exact = vectors.nbytes / 2**30 <= args.flat_copy_gib
    if copy_exact:
        flat = faiss.IndexFlatIP(dim)
        flat.add(vectors)
        exact_name = "exact IndexFlatIP"

        def exact_search(q=queries):
            return flat.search(q, K)[1]
    else:
        exact_name = "exact faiss.knn (IndexFlatIP kernel)"

        def exact_search(q=queries):
            return faiss.knn(q, vectors, K, metric=faiss.METRIC_INNER_PRODUCT)[1]

    methods: dict[str, dict] = {exact_name: {"run": exact_search, "memory": vectors.nbytes, "build_s": 0.0}}
    _, tune_exact_ids = exact_search_blocks(vectors, tune_queries, K)  # one ground truth for both tuners
    for shortlist in ("flat", "hnsw"):
        start = time.perf_counter()
        index = FunnelIndex(vectors, shortlist_dim=args.shortlist_dim, shortlist=shortlist, hnsw_m=args.hnsw_m,
                            ef_construction=args.ef_construction, ef_search=args.ef_search, progress=not args.quiet)
        build = time.perf_counter() - start
        tuner = index.tune(tune_queries, k=K, target_recall=args.target_recall, exact_ids=tune_exact_ids)
        funnel = tuner.best_funnel_
        logger.info("n=%d %s shortlist: built in %.1fs, tuned funnel %s (tuning recall %.4f)", n, shortlist, build,
                    format_funnel(funnel), tuner.best_["knn_recall"])
        methods[f"funnel {shortlist} {format_funnel(funnel)}"] = {
            "run": lambda index=index, funnel=funnel: index.search(queries, K, funnel)[1],
            "memory": index.memory_bytes()["total"], "build_s": build, "index": index, "funnel": funnel,
        }
    if with_hnsw_full:
        start = time.perf_counter()
        hnsw = faiss.IndexHNSWFlat(dim, args.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        hnsw.hnsw.efConstruction = args.ef_construction
        hnsw.add(vectors)
        build = time.perf_counter() - start
        hnsw.hnsw.efSearch = args.ef_search
        logger.info("n=%d HNSW full-dim built in %.1fs", n, build)
        methods[f"FAISS HNSW{args.hnsw_m} full-dim ef={args.ef_search}"] = {
            "run": lambda: hnsw.search(queries, K)[1], "memory": int(faiss.serialize_index(hnsw).nbytes), "build_s": build,
        }
    times: dict[str, list[float]] = {name: [] for name in methods}
    results: dict[str, np.ndarray] = {}
    methods[exact_name]["run"](queries[:10])  # warm-up (a full exact run at 1M takes minutes)
    for name, method in methods.items():
        if name != exact_name:
            method["run"]()
    for round_ in range(args.repeats):
        for name, method in methods.items():
            if name == exact_name and round_ >= args.exact_repeats:
                continue
            t, results[name] = timed(method["run"], 1)
            times[name] += t
    exact_ids = results[exact_name]
    exact_ms = mean_std(times[exact_name])[0] * 1000 / len(queries)
    rows = []
    for name, method in methods.items():
        mean, std = mean_std(times[name])
        ms = mean * 1000 / len(queries)
        row = {
            "n": n, "method": name,
            "ms_per_query": ms, "ms_std": std * 1000 / len(queries),
            f"knn_recall@{K}": float(knn_recall_at_k(results[name], exact_ids, K).mean()),
            "memory_gib": method["memory"] / 2**30, "build_s": method["build_s"],
            "speedup_vs_exact": exact_ms / ms,
        }
        if "index" in method:
            _, _, stats = method["index"].search(queries, K, method["funnel"], return_stats=True)
            row["mflops"] = stats.flops_per_query / 1e6
        elif name == exact_name:
            row["mflops"] = n * dim / 1e6
        rows.append(row)
    return rows


def part_speed(args) -> dict:
    start = time.perf_counter()
    shape = (args.dim, args.clusters, args.seed)
    vectors = synthetic(args.n, *shape, stream=0, decay=args.decay, noise=args.noise)
    queries = synthetic(args.n_queries, *shape, stream=1, decay=args.decay, noise=args.noise)
    tune_queries = synthetic(args.tune_queries, *shape, stream=2, decay=args.decay, noise=args.noise)
    logger.info("generated %d x %d vectors in %.1fs", args.n, args.dim, time.perf_counter() - start)
    out = {"generator": {"clusters": args.clusters, "decay": args.decay, "noise": args.noise, "seed": args.seed}, "tables": []}
    full_hnsw_here = args.hnsw_full_n >= args.n
    out["tables"].append(speed_rows(vectors, queries, tune_queries, args, with_hnsw_full=full_hnsw_here))
    if not full_hnsw_here and args.hnsw_full_n > 0:
        subset = vectors[: args.hnsw_full_n]
        out["tables"].append(speed_rows(subset, queries, tune_queries, args, with_hnsw_full=True))
    return out


def speed_table(rows: list[dict]) -> str:
    keys = ["method", "ms_per_query", "ms_std", f"knn_recall@{K}", "speedup_vs_exact", "mflops", "memory_gib", "build_s"]
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for r in rows:
        lines.append("| " + " | ".join(f"{r.get(k, float('nan')):.4g}" if k != "method" else r[k] for k in keys) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database", type=Path, default=Path("runs/demo/mrl_train.npz"), help="embeddings .npz (X, y) of the database")
    parser.add_argument("--queries", type=Path, default=Path("runs/demo/mrl_test.npz"), help="embeddings .npz (X, y) of the queries")
    parser.add_argument("--skip-real", action="store_true", help="skip part 1")
    parser.add_argument("--skip-speed", action="store_true", help="skip part 2")
    parser.add_argument("--n", type=int, default=1_000_000, help="synthetic database size")
    parser.add_argument("--dim", type=int, default=2048, help="synthetic dimension")
    parser.add_argument("--n-queries", type=int, default=1000, help="timed queries")
    parser.add_argument("--tune-queries", type=int, default=200, help="queries used to tune funnels (separate from timed ones in part 2)")
    parser.add_argument("--clusters", type=int, default=1000, help="synthetic cluster centres")
    parser.add_argument("--decay", type=float, default=1.0, help="coordinate j is scaled by (j+1)**-decay")
    parser.add_argument("--noise", type=float, default=0.5, help="within-cluster noise std (before scaling)")
    parser.add_argument("--seed", type=int, default=0, help="generator seed")
    parser.add_argument("--shortlist-dim", type=int, default=16, help="funnel shortlist prefix")
    parser.add_argument("--target-recall", type=float, default=0.99, help="kNN-recall@10 the tuned funnels must reach")
    parser.add_argument("--hnsw-m", type=int, default=32, help="HNSW degree")
    parser.add_argument("--ef-construction", type=int, default=80, help="HNSW build beam")
    parser.add_argument("--ef-search", type=int, default=128, help="HNSW search beam (raised to the shortlist length in funnels)")
    parser.add_argument("--hnsw-full-n", type=int, default=100_000,
                        help="build full-dim HNSW on at most this many vectors (0: skip it)")
    parser.add_argument("--flat-copy-gib", type=float, default=2.0, help="above this size exact search uses faiss.knn without a copy")
    parser.add_argument("--repeats", type=int, default=3, help="timing rounds")
    parser.add_argument("--exact-repeats", type=int, default=3, help="timing rounds of exact search (at most --repeats)")
    parser.add_argument("--out", type=Path, default=Path("runs/benchmarks/funnel_search.json"), help="JSON results")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    report = {
        "machine": {"cpu_count": os.cpu_count(), "faiss_threads": faiss.omp_get_max_threads(), "platform": platform.platform(),
                    "load_average_start": os.getloadavg()},
        "faiss": faiss.__version__,
    }
    if not args.skip_real:
        report["real"] = part_real(args)
        print(f"\n## Real data: {report['real']['n_database']} database x {report['real']['n_queries']} queries, "
              f"d={report['real']['dim']} (tuned funnel {report['real']['tuned_funnel']})\n")
        print(format_table(report["real"]["rows"]))
    if not args.skip_speed:
        report["speed"] = part_speed(args)
        for rows in report["speed"]["tables"]:
            print(f"\n## Speed: N={rows[0]['n']} x {args.dim}, {args.n_queries} queries, k={K}, "
                  f"{os.cpu_count()} cores, {faiss.omp_get_max_threads()} FAISS threads\n")
            print(speed_table(rows))
    report["machine"]["load_average_end"] = os.getloadavg()
    write_json(args.out, report)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
