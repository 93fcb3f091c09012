"""Exact k-nearest-neighbour search by blocks: the reference every funnel is measured against.

As in faiss/contrib/exhaustive_search.knn_ground_truth, the database is scanned in blocks of rows
and the best k of each block are merged into one heap per query, so memory stays bounded by the
block size however large the database (the MRL paper's retrieval baselines, section 4.3, are exact
searches at each prefix size).
"""

from __future__ import annotations

import faiss
import numpy as np

from mrl.errors import MRLError
from mrl.retrieval._vectors import check_k, check_metric, check_vectors, faiss_metric, prefix


def exact_search(
    database: np.ndarray,
    queries: np.ndarray,
    k: int,
    metric: str = "cosine",
    dim: int | None = None,
    block_size: int = 65536,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k of each query over ``database[:, :dim]``, block by block.

    Args:
        database: [n_database, d] float vectors (float16 is converted block by block).
        queries: [n_queries, >= dim] float vectors.
        k: results per query, 1 <= k <= n_database.
        metric: ``"cosine"`` (prefixes L2-normalised), ``"ip"`` or ``"l2"``.
        dim: prefix size compared (default: all of ``d``).
        block_size: database rows per block.

    Returns:
        (scores, ids): float32 [n_queries, k] best first (similarity, descending, for cosine and ip;
        squared L2 distance, ascending, for l2) and int64 [n_queries, k] row ids.

    Example:
        >>> db = np.array([[1.0, 0.0], [0.0, 1.0], [0.7, 0.7]], dtype=np.float32)
        >>> scores, ids = exact_search(db, np.array([[1.0, 0.1]], dtype=np.float32), k=2)
        >>> ids.tolist()
        [[0, 2]]
    """
    check_metric(metric)
    database = check_vectors(database, "database")
    dim = database.shape[1] if dim is None else dim
    queries = check_vectors(queries, "queries")
    if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or not 1 <= dim <= min(database.shape[1], queries.shape[1]):
        raise MRLError(f"dim must be an integer in [1, {min(database.shape[1], queries.shape[1])}], got {dim!r}")
    k = check_k(k, database.shape[0])
    q = prefix(queries, dim, metric)
    heap = faiss.ResultHeap(q.shape[0], k, keep_max=metric != "l2")
    for start in range(0, database.shape[0], block_size):
        block = prefix(database[start : start + block_size], dim, metric)
        scores, ids = faiss.knn(q, block, min(k, block.shape[0]), metric=faiss_metric(metric))
        heap.add_result(scores, np.where(ids >= 0, ids + start, -1))
    heap.finalize()
    return heap.D, heap.I
