"""Exact inner-product scans of prefixes: FAISS IndexFlatIP.search next to mrl's flat shortlist scan.

mrl's flat float32 shortlist scans prefixes shorter than 128 dims with numpy's matrix product and
FAISS's heaps (mrl.retrieval.shortlist._inner_product_scan) instead of IndexFlatIP.search, whose
bundled OpenBLAS is slow at such inner dimensions on some CPUs. This script times both on the
same unit prefixes, interleaved (one warm-up each, then --repeats rounds; medians), checks that
they return the same neighbours (tied scores may swap) and prints ms/query and the ratio for each
prefix. One thread unless OMP_NUM_THREADS says otherwise.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/flat_scan.py --n 116359 --dims 16,32,64,96,128,192,384 --k 10,200
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
from mrl.retrieval.shortlist import _inner_product_scan


def unit_prefix(x: np.ndarray, dim: int) -> np.ndarray:
    out = np.ascontiguousarray(x[:, :dim], dtype=np.float32)
    return out / np.linalg.norm(out, axis=1, keepdims=True).clip(min=1e-12)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database", type=Path, help=".npz whose first array is the database [N, D] (default: Gaussian)")
    parser.add_argument("--n", type=int, default=116_359, help="Gaussian database rows")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--dims", type=lambda s: [int(x) for x in s.split(",")], default=[16, 32, 64, 96, 128, 192, 384])
    parser.add_argument("--k", type=lambda s: [int(x) for x in s.split(",")], default=[10, 200])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("runs/benchmarks/flat_scan.json"))
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    if args.database is not None:
        try:
            data = load_npz(args.database)
        except MRLError as exc:
            parser.error(str(exc))
        vectors = np.asarray(data[next(iter(data))], dtype=np.float32) if data else np.empty((0, 0), np.float32)
        if vectors.ndim != 2:
            parser.error(f"{args.database}: the first array must be 2-D [N, D], got shape {vectors.shape}")
        queries, vectors = vectors[: args.queries], vectors[args.queries :]
    else:
        vectors = rng.standard_normal((args.n, max(args.dims)), dtype=np.float32)
        queries = rng.standard_normal((args.queries, max(args.dims)), dtype=np.float32)
    if not len(queries) or not 1 <= min(args.k) <= max(args.k) <= len(vectors) \
            or not 1 <= min(args.dims) <= max(args.dims) <= vectors.shape[1]:
        parser.error(f"need a database with more than --queries rows, 1 <= --k <= its other rows and 1 <= --dims <= its columns; "
                     f"got {vectors.shape} after {len(queries)} queries, k {args.k}, dims {args.dims}")
    print(f"{len(vectors)} x {vectors.shape[1]} database, {len(queries)} queries, {faiss.omp_get_max_threads()} FAISS thread(s); "
          f"faiss {faiss.__version__}, numpy {np.__version__}")
    print("| dim | k | FAISS ms/query | mrl ms/query | FAISS / mrl | same ids |\n|---|---|---|---|---|---|")
    rows = []
    for dim in args.dims:
        table, q = unit_prefix(vectors, dim), unit_prefix(queries, dim)
        index = faiss.IndexFlatIP(dim)
        index.add(table)
        for k in args.k:
            runners = {"faiss": lambda: index.search(q, k), "mrl": lambda: _inner_product_scan(q, table, k)}
            for fn in runners.values():
                fn()
            times = {name: [] for name in runners}
            out = {}
            for _ in range(args.repeats):
                for name, fn in runners.items():
                    start = time.perf_counter()
                    out[name] = fn()
                    times[name].append(time.perf_counter() - start)
            ms = {name: 1000 * statistics.median(t) / len(q) for name, t in times.items()}
            same = float(np.mean([len(set(a) & set(b)) / k for a, b in zip(out["faiss"][1].tolist(), out["mrl"][1].tolist())]))
            rows.append({"dim": dim, "k": k, "faiss_ms": ms["faiss"], "mrl_ms": ms["mrl"], "ratio": ms["faiss"] / ms["mrl"], "same_ids": same})
            print(f"| {dim} | {k} | {ms['faiss']:.3f} | {ms['mrl']:.3f} | {ms['faiss'] / ms['mrl']:.2f} | {same:.4f} |", flush=True)
    write_json(args.out, {"command": " ".join(sys.argv), "rows": rows})


if __name__ == "__main__":
    main()
