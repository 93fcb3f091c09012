"""Build seconds of full-dim FAISS HNSW32 next to mrl's shortlist structures, at several N, and the HNSW figure extrapolated.

FAISS IndexHNSWFlat(D, 32) (efConstruction 40, as in benchmarks/pareto.py) on the first N rows of
the cached synthetic float16 vectors (benchmarks/synthetic_cache.py; added as float32 blocks), and
each --mrl-shortlists structure built by mrl (Shortlist.build over the same rows' prefixes),
alternating at each N so both see the same machine. A full-dim HNSW over 1M x 2048 takes long
on 2 cores, so its 1M figure is extrapolated from the largest N measured, two ways: linearly
(a lower bound: each insertion searches a graph that grows) and by N log N (HNSW's insertion cost grows
with log N). Prints a table and writes JSON.

    .venv/bin/python benchmarks/hnsw_build.py --cache-dir runs/cache --sizes 100000,200000 \\
        --mrl-shortlists "flat:float32:16;hnsw:float32:16"
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
import time
from pathlib import Path

import faiss
import numpy as np

from synthetic_cache import cached_synthetic
from mrl.io import write_json
from mrl.retrieval import parse_shortlists
from mrl.retrieval.shortlist import Shortlist

logger = logging.getLogger("hnsw_build")


def build_hnsw(vectors: np.ndarray, ef_construction: int) -> float:
    index = faiss.IndexHNSWFlat(vectors.shape[1], 32, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = ef_construction
    start = time.perf_counter()
    for row in range(0, len(vectors), 65536):
        index.add(np.asarray(vectors[row : row + 65536], dtype=np.float32))
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache-dir", type=Path, required=True, help="the synthetic cache (benchmarks/synthetic_cache.py)")
    parser.add_argument("--n", type=int, default=1_000_000, help="rows of the cached set (its first --sizes rows are used)")
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--clusters", type=int, default=1000)
    parser.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",")], default=[100_000, 200_000])
    parser.add_argument("--extrapolate-to", type=int, default=1_000_000)
    parser.add_argument("--ef-construction", type=int, default=40)
    parser.add_argument("--mrl-shortlists", default="flat:float32:16;hnsw:float32:16", help="kind:encoding:dim entries, ';'-separated")
    parser.add_argument("--out", type=Path, default=Path("runs/benchmarks/hnsw_build.json"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    vectors = cached_synthetic(args.cache_dir, args.n, args.dim, args.clusters, 0)
    specs = parse_shortlists(args.mrl_shortlists)
    rows = []
    for n in args.sizes:
        part = vectors[:n]
        row = {"n": n, "hnsw32_full_s": build_hnsw(part, args.ef_construction)}
        for spec in specs:
            start = time.perf_counter()
            Shortlist.build(part, spec, "cosine")
            row[f"mrl {spec.kind}:{spec.encoding}:{spec.dim}_s"] = time.perf_counter() - start
        rows.append(row)
        logger.info("%s", row)
    last = rows[-1]
    big = args.extrapolate_to
    linear = last["hnsw32_full_s"] * big / last["n"]
    nlogn = last["hnsw32_full_s"] * big * math.log(big) / (last["n"] * math.log(last["n"]))
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(f"{r[k]:.1f}" if isinstance(r[k], float) else str(r[k]) for k in keys) + " |" for r in rows]
    command = "python " + " ".join(sys.argv)
    print(f"{args.dim}-dim, efConstruction {args.ef_construction}, {os.cpu_count()} CPUs, {faiss.omp_get_max_threads()} FAISS threads; "
          f"load average {os.getloadavg()[0]:.1f}; command: {command}\n")
    print("\n".join(lines))
    print(f"\nHNSW32 on {big} x {args.dim}, extrapolated from N={last['n']}: {linear:.0f} s (linear), {nlogn:.0f} s (N log N)")
    write_json(args.out, {"command": command, "rows": rows, "extrapolated_to": big, "hnsw32_linear_s": linear,
                          "hnsw32_nlogn_s": nlogn, "load_average_end": os.getloadavg()})


if __name__ == "__main__":
    main()
