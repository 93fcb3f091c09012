"""How fast an inverted-list or graph index can reach a recall target on batches of queries.

Batched exact search is a matrix product that reads each vector once per block of queries (about
1 ms per query for 116,359 x 384 on one core), so a 10x speed-up at kNN-recall@10 >= 0.99 asks
the index for about 0.1 ms per query. This script measures, on one data set, what the two index
families mrl builds can do there, with mrl's own FunnelIndex:

- ivf: an IVF over all D dims with float32 lists (k-means, --nlist lists), its candidates scored
  exactly; recall at each --nprobes value is therefore the partition's ceiling, what any IVF code
  (PQ, SQ, fast-scan) on these lists can at best reach, and "scored" is the share of the rows read;
- hnsw: an SQ8 HNSW graph over all D dims (M --hnsw-m, efConstruction --ef-construction), its top
  L re-scored in float: D:L -> D:k at each --ef-searches beam and --lengths L;
- adaptive: the cheapest graph pass (--adaptive FIRST_EF:L:REDO_EF:REDO_L) for every query, then a
  second, wider pass for the share --redo of queries least sure of their answer (lowest k-th
  score: the farthest k-th neighbours), measured as run (both passes and the choice timed).

Vectors are L2-normalised (cosine = inner product); exact search is FAISS IndexFlatIP. Timing:
one warm-up, then --repeats rounds, each running exact search and every point once on all the
queries (interleaved); medians. One thread unless OMP_NUM_THREADS says otherwise.

    # the WordNet set of benchmarks/pareto.py (same vectors, cache and split; its 300 tuning queries left out)
    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/batched_ceiling.py --dataset wordnet-minilm \\
        --wordnet-n 116359 --embed-threads 2 --cache-dir runs/cache --skip-queries 300 --n-queries 1000
    # the same made Matryoshka post hoc, as pareto.py's --adapter-nesting
    ... --adapter-nesting 24,48,96,192,384 --adapter-epochs 5
    # any embeddings: the first array of each .npz
    .venv/bin/python benchmarks/batched_ceiling.py --database db.npz --queries queries.npz
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import faiss
import numpy as np

from mrl.errors import MRLError
from mrl.io import load_npz, write_json
from mrl.retrieval import FunnelIndex

import pareto  # beside this script: its named sets, split, adapter and normalisation, so both benchmarks see the same vectors


def _ints(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}")
    return values


def _fractions(text: str) -> list[float]:
    try:
        values = [float(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated fractions in (0, 1], got {text!r}") from None
    if not values or not all(0 < v <= 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected comma-separated fractions in (0, 1], got {text!r}")
    return values


def _adaptive(text: str) -> tuple[int, int, int, int]:
    values = _ints(text)
    if len(values) != 4:
        raise argparse.ArgumentTypeError(f"expected FIRST_EF:L:REDO_EF:REDO_L as four comma-separated integers, got {text!r}")
    return tuple(values)


def _load(parser: argparse.ArgumentParser, path: Path, name: str) -> np.ndarray:
    try:
        data = load_npz(path)
    except MRLError as exc:
        parser.error(str(exc))
    array = np.asarray(data[next(iter(data))]) if data else np.empty(0)
    if array.ndim != 2 or not np.issubdtype(array.dtype, np.floating) or not np.isfinite(array).all():
        parser.error(f"{path}: the first array must be a finite 2-D float array [N, D] ({name}), got {array.dtype} {array.shape}")
    return pareto._normalise(array)


def recall(ids: np.ndarray, exact_ids: np.ndarray) -> float:
    """Mean share of each query's exact top k found among its k results."""
    k = exact_ids.shape[1]
    return float(np.mean([len(set(a) & set(b)) / k for a, b in zip(ids[:, :k].tolist(), exact_ids.tolist())]))


def adaptive_search(index: FunnelIndex, queries: np.ndarray, k: int, first: tuple[int, int], redo: tuple[int, int], share: float):
    """Every query through the graph at beam first[0] (first[1] candidates re-scored), then the
    ``share`` of queries with the lowest k-th score again at beam redo[0] (redo[1] candidates)."""
    scores, ids = index.search(queries, k, [(index.dim, first[1]), (index.dim, k)], ef_search=first[0])
    unsure = np.argsort(scores[:, k - 1], kind="stable")[: int(round(share * len(queries)))]
    if len(unsure):
        ids[unsure] = index.search(queries[unsure], k, [(index.dim, redo[1]), (index.dim, k)], ef_search=redo[0])[1]
    return ids


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database", type=Path, help=".npz whose first array is the database [N, D]")
    parser.add_argument("--queries", type=Path, help=".npz whose first array holds the queries [Q, D]")
    parser.add_argument("--dataset", choices=["jeopardy", "wordnet-minilm"], help="a set of benchmarks/pareto.py instead")
    parser.add_argument("--wordnet-n", type=int, default=20_000, help="wordnet-minilm: database size (as pareto.py)")
    parser.add_argument("--embed-threads", type=int, default=None, help="torch threads while embedding or fitting the adapter")
    parser.add_argument("--cache-dir", type=Path, default=None, help="pareto.py's verified cache of the WordNet embeddings")
    parser.add_argument("--adapter-nesting", default=None, help="make the vectors Matryoshka post hoc first, as pareto.py does")
    parser.add_argument("--adapter-epochs", type=int, default=5)
    parser.add_argument("--skip-queries", type=int, default=0, help="leave out this many leading queries (e.g. a tuning set)")
    parser.add_argument("--n-queries", type=int, default=1000)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--target", type=float, default=0.99, help="recall the summary asks for")
    parser.add_argument("--nlist", type=int, help="ivf lists (default about 4 sqrt(N), as mrl's)")
    parser.add_argument("--nprobes", type=_ints, default=[8, 16, 32, 64, 128, 192, 256, 384])
    parser.add_argument("--hnsw-m", type=int, default=32)
    parser.add_argument("--ef-construction", type=int, default=80)
    parser.add_argument("--ef-searches", type=_ints, default=[16, 24, 32, 48, 64, 96])
    parser.add_argument("--lengths", type=_ints, default=[10, 20, 40], help="graph candidates L re-scored in float (L >= k)")
    parser.add_argument("--adaptive", type=_adaptive, default=(24, 24, 96, 40), help="FIRST_EF,L,REDO_EF,REDO_L")
    parser.add_argument("--redo", type=_fractions, default=[0.05, 0.1, 0.2, 0.3], help="shares of queries searched again")
    parser.add_argument("--families", default="ivf,hnsw,adaptive", help="which of ivf, hnsw, adaptive to measure")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("runs/benchmarks/batched_ceiling.json"))
    args = parser.parse_args()
    families = args.families.split(",")
    if not families or not set(families) <= {"ivf", "hnsw", "adaptive"}:
        parser.error(f"--families takes ivf, hnsw and adaptive, got {args.families!r}")
    for name in ("n_queries", "k", "repeats", "hnsw_m", "ef_construction"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be a positive integer, got {getattr(args, name)}")
    if args.skip_queries < 0 or not 0 < args.target <= 1:
        parser.error(f"--skip-queries must be >= 0 and --target in (0, 1], got {args.skip_queries} and {args.target}")
    if (args.dataset is None) == (args.database is None or args.queries is None) or (args.dataset and (args.database or args.queries)):
        parser.error("give --database and --queries, or --dataset")
    if args.embed_threads is not None and args.embed_threads < 1 or args.adapter_epochs < 1:
        parser.error(f"--embed-threads and --adapter-epochs must be positive, got {args.embed_threads} and {args.adapter_epochs}")
    if args.dataset is not None:
        args.tune_queries = args.skip_queries
        vectors, _, queries, _, _ = pareto.named_dataset(args)  # L2-normalised float32 already
        queries = queries[args.skip_queries : args.skip_queries + args.n_queries]
    else:
        vectors = _load(parser, args.database, "database")
        queries = _load(parser, args.queries, "queries")[args.skip_queries : args.skip_queries + args.n_queries]
    if args.adapter_nesting is not None and len(queries):
        try:  # fitted on the database alone, so leaving the skipped queries out changes nothing
            vectors, (queries,) = pareto.adapted(vectors, [queries], args)
        except MRLError as exc:
            parser.error(str(exc))
    n, dim = vectors.shape
    if not len(queries) or queries.shape[1] != dim or args.k > n or min(args.lengths) < args.k or max(args.lengths) > n:
        parser.error(f"need queries of the database's {dim} dims after --skip-queries, and k <= --lengths <= N; got "
                     f"{len(queries)} queries of {queries.shape[1]} dims, k {args.k}, lengths {args.lengths}, N {n}")
    first_ef, first_length, redo_ef, redo_length = args.adaptive
    if not args.k <= min(first_length, redo_length) <= max(first_length, redo_length) <= n:
        parser.error(f"--adaptive candidate counts must lie in [k, N], got {args.adaptive}")

    exact = faiss.IndexFlatIP(dim)
    exact.add(vectors)
    _, exact_ids = exact.search(queries, args.k)
    print(f"{n} x {dim} database, {len(queries)} queries, k {args.k}, {faiss.omp_get_max_threads()} FAISS thread(s), "
          f"faiss {faiss.__version__}", flush=True)
    points: dict[str, tuple[dict, object]] = {"exact IndexFlatIP": ({"family": "exact"}, lambda: exact.search(queries, args.k)[1])}
    try:
        if "ivf" in families:
            start = time.perf_counter()
            ivf = FunnelIndex(vectors, shortlist="ivf", shortlist_dim=dim, nlist=args.nlist)
            print(f"ivf: {ivf.spec.nlist} lists over {dim} dims, built in {time.perf_counter() - start:.1f} s", flush=True)
            if max(args.nprobes) > ivf.spec.nlist:
                print(f"  nprobe above {ivf.spec.nlist} left out: {sorted(p for p in args.nprobes if p > ivf.spec.nlist)}")
            for nprobe in sorted(p for p in args.nprobes if p <= ivf.spec.nlist):
                points[f"ivf nprobe {nprobe}"] = (
                    {"family": "ivf", "nprobe": nprobe},
                    lambda nprobe=nprobe: ivf.search(queries, args.k, [(dim, args.k)], nprobe=nprobe))
        if "hnsw" in families or "adaptive" in families:
            start = time.perf_counter()
            hnsw = FunnelIndex(vectors, shortlist="hnsw", encoding="int8", shortlist_dim=dim, hnsw_m=args.hnsw_m,
                               ef_construction=args.ef_construction)
            print(f"hnsw: SQ8 graph, M {args.hnsw_m}, efConstruction {args.ef_construction}, "
                  f"built in {time.perf_counter() - start:.1f} s", flush=True)
        if "hnsw" in families:
            for ef in args.ef_searches:
                for length in (x for x in args.lengths if x <= max(ef, args.k)):
                    points[f"hnsw ef {ef} {dim}:{length} -> {dim}:{args.k}"] = (
                        {"family": "hnsw", "ef_search": ef, "length": length},
                        lambda ef=ef, length=length: hnsw.search(queries, args.k, [(dim, length), (dim, args.k)], ef_search=ef)[1])
        if "adaptive" in families:
            for share in args.redo:
                points[f"adaptive ef {first_ef} ({first_length}), {share:.0%} again at ef {redo_ef} ({redo_length})"] = (
                    {"family": "adaptive", "share": share},
                    lambda share=share: adaptive_search(hnsw, queries, args.k, (first_ef, first_length), (redo_ef, redo_length), share))
    except MRLError as exc:
        parser.error(str(exc))

    def ids_of(result):
        return result[1] if isinstance(result, tuple) else result

    times: dict[str, list[float]] = {name: [] for name in points}
    found: dict[str, np.ndarray] = {name: ids_of(fn()) for name, (_, fn) in points.items()}  # warm-up
    for _ in range(args.repeats):
        for name, (_, fn) in points.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    exact_ms = 1000 * statistics.median(times["exact IndexFlatIP"]) / len(queries)
    rows = []
    print(f"\n| point | kNN-recall@{args.k} | ms/query | speed vs exact |\n|---|---|---|---|")
    for name, (info, _) in points.items():
        ms = 1000 * statistics.median(times[name]) / len(queries)
        row = {"point": name, **info, "recall": recall(found[name], exact_ids), "ms_per_query": ms, "speedup": exact_ms / ms}
        rows.append(row)
        print(f"| {name} | {row['recall']:.4f} | {ms:.3f} | {row['speedup']:.1f}x |", flush=True)
    print(f"\nfastest point per family at kNN-recall@{args.k} >= {args.target}:")
    for family in ("ivf", "hnsw", "adaptive"):
        meeting = [row for row in rows if row["family"] == family and row["recall"] >= args.target]
        if family in families:
            best = min(meeting, key=lambda row: row["ms_per_query"], default=None)
            print(f"  {family}: " + (f"{best['point']}: {best['recall']:.4f} at {best['ms_per_query']:.3f} ms, {best['speedup']:.1f}x exact"
                                     if best else "none of the measured points"))
    write_json(args.out, {"command": " ".join(sys.argv), "n": n, "dim": dim, "n_queries": len(queries), "exact_ms_per_query": exact_ms,
                          "rows": rows})


if __name__ == "__main__":
    main()
