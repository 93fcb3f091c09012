"""A disk cache of the synthetic benchmark data and its exact top-k, so 1M x 2048 runs generate and scan once.

The rows of :func:`funnel_search.synthetic` (the documented generator) are written block by block
to a float16 .npy (4 GiB at 1M x 2048, never 8 GB of float32 in RAM) in a folder named by the
generator's parameters; exact top-k of a query set over those rows (computed blockwise over the
memory map, as faiss/contrib/exhaustive_search.knn_ground_truth does) is cached beside it, keyed by
the data's and the queries' sha256. Nothing in the cache is trusted without checking: a cached file
is used only when its size and sha256 match the record written with it (the record's own params
must match the ones asked for), otherwise it is rebuilt. All writes go through mrl.io (atomic).

    from synthetic_cache import cached_synthetic, cached_ground_truth
    vectors = cached_synthetic(Path("runs/cache"), 1_000_000, 2048, 1000, 0)   # float16 memory map
    scores, ids = cached_ground_truth(Path("runs/cache"), vectors, queries, k=10)
    # any array that is slow to compute (the WordNet MiniLM embeddings), under the same checks
    vectors = cached_array(Path("runs/cache"), "wordnet-minilm-117659", {"model": ..., "texts_sha256": ...}, embed_them)
"""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path

import numpy as np

from funnel_search import synthetic_blocks  # same folder: the one owner of the generator
from mrl.io import atomic_file, load_npy, load_npz, read_json, save_npy, save_npz, sha256_file, write_json
from mrl.retrieval import exact_search

logger = logging.getLogger("synthetic_cache")


def _verified(path: Path, record_path: Path, params: dict) -> bool:
    """True when ``record_path`` holds ``params`` and ``path`` has the recorded size and sha256."""
    if not path.is_file() or path.is_symlink() or not record_path.is_file():
        return False
    try:
        record = read_json(record_path)
    except Exception:  # an unreadable record means "rebuild", never "trust"
        return False
    if not isinstance(record, dict) or record.get("params") != params or record.get("bytes") != path.stat().st_size:
        return False
    start = time.perf_counter()
    ok = record.get("sha256") == sha256_file(path)
    logger.info("%s: sha256 %s in %.1f s", path, "verified" if ok else "MISMATCH (rebuilding)", time.perf_counter() - start)
    return ok


def _record(path: Path, record_path: Path, params: dict) -> None:
    write_json(record_path, {"params": params, "bytes": path.stat().st_size, "sha256": sha256_file(path)})


def cached_synthetic(cache_dir: Path, n: int, dim: int, n_clusters: int, seed: int, stream: int = 0, decay: float = 1.0,
                     noise: float = 0.5) -> np.ndarray:
    """The float16 rows [n, dim] of ``synthetic(n, dim, n_clusters, seed, stream, decay, noise)``, memory-mapped read-only.

    Generated to ``cache_dir/<parameters>/vectors.npy`` on first use (one 65,536-row float32 block
    in memory at a time); later calls check size and sha256 against ``record.json`` and reuse it.
    """
    params = {"generator": "funnel_search.synthetic", "n": n, "dim": dim, "n_clusters": n_clusters, "seed": seed,
              "stream": stream, "decay": decay, "noise": noise, "dtype": "float16"}
    folder = cache_dir / f"synthetic-n{n}-d{dim}-c{n_clusters}-seed{seed}-stream{stream}-decay{decay}-noise{noise}-f16"
    path, record_path = folder / "vectors.npy", folder / "record.json"
    if not _verified(path, record_path, params):
        start = time.perf_counter()
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_file(path) as tmp:
            table = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=(n, dim))
            row = 0
            for block in synthetic_blocks(n, dim, n_clusters, seed, stream, decay, noise):
                table[row : row + len(block)] = block
                row += len(block)
            table.flush()
            del table
        _record(path, record_path, params)
        logger.info("generated %s (%d x %d float16) in %.0f s", path, n, dim, time.perf_counter() - start)
    vectors = load_npy(path, mmap=True)
    if vectors.shape != (n, dim) or vectors.dtype != np.float16:  # the record matched, so this would be a bug upstream
        raise RuntimeError(f"{path} holds {vectors.dtype} {vectors.shape}, expected float16 ({n}, {dim})")
    return vectors


def cached_array(cache_dir: Path, name: str, params: dict, compute) -> np.ndarray:
    """``compute()``'s array, cached as ``cache_dir/name/array.npy`` under ``params`` (JSON values).

    Reused only when ``record.json`` holds exactly ``params`` and the file its size and sha256;
    otherwise recomputed and rewritten atomically. Loaded into memory (``allow_pickle=False``).
    """
    folder = cache_dir / name
    path, record_path = folder / "array.npy", folder / "record.json"
    if not _verified(path, record_path, params):
        start = time.perf_counter()
        array = compute()
        folder.mkdir(parents=True, exist_ok=True)
        save_npy(path, array)
        _record(path, record_path, params)
        logger.info("computed and cached %s %s %s in %.0f s", path, array.dtype, array.shape, time.perf_counter() - start)
    return load_npy(path)


def cached_ground_truth(cache_dir: Path, vectors: np.ndarray, queries: np.ndarray, k: int, metric: str = "cosine",
                        block_size: int = 65536) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` (scores, ids) [Q, k] of ``queries`` over ``vectors`` (:func:`mrl.retrieval.exact_search`, blockwise), cached.

    ``vectors`` must be a memory map of a cached file (:func:`cached_synthetic`); the cache key is the
    sha256 of that file's record, of the float32 query bytes, k and the metric.
    """
    source = Path(vectors.filename)
    record = read_json(source.parent / "record.json")
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    key = hashlib.sha256(f"{record['sha256']}|{k}|{metric}|{queries.shape}".encode() + queries.tobytes()).hexdigest()[:24]
    path, record_path = source.parent / f"ground_truth-{key}.npz", source.parent / f"ground_truth-{key}.json"
    params = {"data_sha256": record["sha256"], "k": k, "metric": metric, "n_queries": len(queries), "key": key}
    if not _verified(path, record_path, params):
        start = time.perf_counter()
        scores, ids = exact_search(vectors, queries, k, metric=metric, block_size=block_size)
        save_npz(path, scores=scores, ids=ids)
        _record(path, record_path, params)
        logger.info("exact top-%d of %d queries over %d vectors in %.0f s", k, len(queries), len(vectors), time.perf_counter() - start)
    cached = load_npz(path, required=("scores", "ids"))
    if cached["ids"].shape != (len(queries), k):
        raise RuntimeError(f"{path} holds ids {cached['ids'].shape}, expected ({len(queries)}, {k})")
    return cached["scores"], cached["ids"]
