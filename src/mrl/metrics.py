"""Retrieval metrics on ranked result lists: one formula per function, vectorised over queries.

The MRL paper (Kusupati et al., NeurIPS 2022, section 4.3 and appendix G) evaluates adaptive
retrieval with mAP@k, precision@k and top-k accuracy where an item is relevant when it shares the
query's class, and reports approximate search by its overlap with exact search. Following
faiss/contrib/evaluation.py these are pure functions on arrays, with the edge cases coded and
documented here rather than left to the caller.

Two input forms, the same result:

* label form: ``f(retrieved_ids, query_labels, database_labels, k=10)``; item ``j`` is relevant to
  query ``q`` when ``database_labels[j] == query_labels[q]``;
* relevance form: ``f(relevance, k=10)`` with a :class:`Relevance` built from explicit relevant-id
  sets (:meth:`Relevance.from_sets`) or directly from a boolean hit matrix and relevant counts,
  for tasks without labels.

Notation for one query: ``rel_i`` is 1 when the item at rank ``i`` (1-based) is relevant, ``R`` is
the number of relevant items in the whole database, ``hits@k = sum_{i<=k} rel_i``.

Conventions shared by every metric:

* ``retrieved_ids`` is ``[n_queries, k']`` int, best first, ``k' >= k`` (``k > k'`` is an error:
  metrics over results that were never retrieved would silently count them as misses).
* The id ``-1`` is FAISS's "no result" padding and is never relevant; other ids must lie in
  ``[0, n_database)``. An id repeated within one row is an error (it would be counted twice).
* A query with no relevant item in the database (``R = 0``) scores 0 in recall@k, AP@k, nDCG@k and
  top-k accuracy (nothing can be found), and 0 in precision@k (no hit). These queries drag means
  down; exclude them with ``relevance.n_relevant > 0`` if the task should not count them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from mrl.errors import MRLError

__all__ = [
    "AP_NORMALIZATIONS",
    "Relevance",
    "average_precision_at_k",
    "knn_recall_at_k",
    "ndcg_at_k",
    "precision_at_k",
    "recall_at_k",
    "reciprocal_rank_at_k",
    "retrieval_summary",
    "top_k_accuracy",
]


AP_NORMALIZATIONS = ("min_k_relevant", "relevant", "k")


def _as_ids(retrieved_ids: object, name: str = "retrieved_ids") -> np.ndarray:
    ids = np.asarray(retrieved_ids)
    if ids.ndim != 2:
        raise MRLError(f"{name} must be a 2-D array [n_queries, k], got shape {ids.shape}")
    if ids.size and not np.issubdtype(ids.dtype, np.integer):
        raise MRLError(f"{name} must hold integer ids, got dtype {ids.dtype}")
    ids = ids.astype(np.int64, copy=False)
    if ids.size and ids.min() < -1:
        raise MRLError(f"{name} must hold ids >= 0 or -1 (no result), got {int(ids.min())}")
    return ids


def _row_codes(ids: np.ndarray, width: int) -> np.ndarray:
    """Encode (row, id) pairs as one int64 each, ordered by row, so rows can be searched at once."""
    rows = np.arange(ids.shape[0], dtype=np.int64)[:, None]
    return rows * width + ids


def _check_unique_rows(ids: np.ndarray, name: str) -> None:
    if ids.shape[1] < 2:
        return
    ordered = np.sort(ids, axis=1)
    dup = (ordered[:, 1:] == ordered[:, :-1]) & (ordered[:, 1:] >= 0)
    if dup.any():
        q = int(np.nonzero(dup.any(axis=1))[0][0])
        raise MRLError(f"{name} row {q} lists an id more than once: {ids[q].tolist()}")


@dataclass(frozen=True)
class Relevance:
    """Binary relevance of ranked results: which retrieved items are relevant, and how many exist.

    Attributes:
        hits: bool [n_queries, k'], ``hits[q, i]`` is True when the item at rank ``i + 1`` of query
            ``q`` is relevant (padding is never a hit).
        n_relevant: int [n_queries], ``R``, the number of relevant items in the database for each
            query; at least the number of hits in its row.

    Example:
        >>> rel = Relevance(np.array([[True, False, True]]), np.array([2]))
        >>> precision_at_k(rel, k=3)
        array([0.66666667])
    """

    hits: np.ndarray
    n_relevant: np.ndarray

    def __post_init__(self) -> None:
        hits = np.asarray(self.hits)
        n_relevant = np.asarray(self.n_relevant)
        if hits.ndim != 2:
            raise MRLError(f"hits must be a 2-D boolean array [n_queries, k], got shape {hits.shape}")
        if hits.dtype != bool:
            raise MRLError(f"hits must be boolean, got dtype {hits.dtype}")
        if n_relevant.shape != (hits.shape[0],):
            raise MRLError(f"n_relevant must have shape ({hits.shape[0]},) to match hits, got {n_relevant.shape}")
        if n_relevant.size and not np.issubdtype(n_relevant.dtype, np.integer):
            raise MRLError(f"n_relevant must hold integers, got dtype {n_relevant.dtype}")
        n_relevant = n_relevant.astype(np.int64, copy=False)
        short = hits.sum(axis=1) > n_relevant
        if short.any():
            q = int(np.nonzero(short)[0][0])
            raise MRLError(
                f"n_relevant[{q}] = {int(n_relevant[q])} is smaller than the {int(hits[q].sum())} hits in row {q}"
            )
        object.__setattr__(self, "hits", hits)
        object.__setattr__(self, "n_relevant", n_relevant)

    @classmethod
    def from_labels(cls, retrieved_ids: np.ndarray, query_labels: np.ndarray, database_labels: np.ndarray) -> Relevance:
        """Relevance by class: item ``j`` is relevant to query ``q`` iff their labels are equal.

        Args:
            retrieved_ids: int [n_queries, k'], database row ids best first, -1 for no result.
            query_labels: [n_queries] labels of the queries.
            database_labels: [n_database] labels of the database items.

        Example:
            >>> rel = Relevance.from_labels(np.array([[2, 0, -1]]), np.array([1]), np.array([1, 0, 1, 1]))
            >>> rel.hits.tolist(), rel.n_relevant.tolist()
            ([[True, True, False]], [3])
        """
        ids = _as_ids(retrieved_ids)
        query_labels = np.asarray(query_labels)
        database_labels = np.asarray(database_labels)
        if query_labels.shape != (ids.shape[0],):
            raise MRLError(f"query_labels must have shape ({ids.shape[0]},) to match retrieved_ids, got {query_labels.shape}")
        if database_labels.ndim != 1:
            raise MRLError(f"database_labels must be 1-D [n_database], got shape {database_labels.shape}")
        n_database = database_labels.shape[0]
        if ids.size and ids.max() >= n_database:
            raise MRLError(f"retrieved_ids holds id {int(ids.max())} but the database has {n_database} items")
        _check_unique_rows(ids, "retrieved_ids")
        valid = ids >= 0
        retrieved_labels = database_labels[np.where(valid, ids, 0)] if n_database else np.zeros(ids.shape, database_labels.dtype)
        hits = valid & (retrieved_labels == query_labels[:, None])
        classes, counts = np.unique(database_labels, return_counts=True)
        pos = np.clip(np.searchsorted(classes, query_labels), 0, max(len(classes) - 1, 0))
        found = classes[pos] == query_labels if len(classes) else np.zeros(query_labels.shape, bool)
        n_relevant = np.where(found, counts[pos] if len(classes) else 0, 0)
        return cls(hits, n_relevant.astype(np.int64))

    @classmethod
    def from_sets(cls, retrieved_ids: np.ndarray, relevant_ids: Sequence[Iterable[int]]) -> Relevance:
        """Relevance from explicit sets: ``relevant_ids[q]`` lists the ids relevant to query ``q``.

        Repeated ids within one set count once; negative ids in a set are an error.

        Args:
            retrieved_ids: int [n_queries, k'], ids best first, -1 for no result.
            relevant_ids: one iterable of ids per query (may be empty).

        Example:
            >>> rel = Relevance.from_sets(np.array([[5, 7, 9]]), [{9, 5, 11}])
            >>> rel.hits.tolist(), rel.n_relevant.tolist()
            ([[True, False, True]], [3])
        """
        ids = _as_ids(retrieved_ids)
        sets = [np.unique(np.fromiter(s, dtype=np.int64)) for s in relevant_ids]
        if len(sets) != ids.shape[0]:
            raise MRLError(f"relevant_ids must hold one set per query ({ids.shape[0]}), got {len(sets)}")
        _check_unique_rows(ids, "retrieved_ids")
        n_relevant = np.array([len(s) for s in sets], dtype=np.int64)
        flat = np.concatenate(sets) if sets else np.zeros(0, np.int64)
        if flat.size and flat.min() < 0:
            raise MRLError(f"relevant_ids must hold ids >= 0, got {int(flat.min())}")
        width = int(max(flat.max(initial=-1), ids.max(initial=-1))) + 2
        owners = np.repeat(np.arange(len(sets), dtype=np.int64), n_relevant)
        relevant_codes = owners * width + flat  # sorted: rows ascend, each set is sorted
        hits = np.isin(_row_codes(ids, width), relevant_codes, assume_unique=False) & (ids >= 0)
        return cls(hits, n_relevant)


def _relevance(retrieved: np.ndarray | Relevance, query_labels, database_labels, k: int) -> Relevance:
    if isinstance(retrieved, Relevance):
        if query_labels is not None or database_labels is not None:
            raise MRLError("pass either a Relevance or retrieved_ids with query_labels and database_labels, not both")
        rel = retrieved
    else:
        if query_labels is None or database_labels is None:
            raise MRLError("retrieved_ids needs query_labels and database_labels (or pass a Relevance)")
        rel = Relevance.from_labels(retrieved, query_labels, database_labels)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise MRLError(f"k must be a positive integer, got {k!r}")
    if k > rel.hits.shape[1]:
        raise MRLError(f"k={k} is larger than the {rel.hits.shape[1]} results retrieved per query")
    return rel


def precision_at_k(
    retrieved: np.ndarray | Relevance, query_labels: np.ndarray | None = None, database_labels: np.ndarray | None = None, k: int = 10
) -> np.ndarray:
    """Precision@k = hits@k / k, per query.

    The denominator is always ``k``, so a query with fewer than ``k`` relevant items cannot reach 1.

    Args:
        retrieved: int [n_queries, k'] ids (label form) or a :class:`Relevance`.
        query_labels: [n_queries] labels (label form only).
        database_labels: [n_database] labels (label form only).
        k: cut-off, 1 <= k <= k'.

    Returns:
        float64 [n_queries] in [0, 1].

    Example:
        >>> precision_at_k(np.array([[0, 1, 2, 3]]), np.array([7]), np.array([7, 3, 7, 3]), k=4)
        array([0.5])
    """
    rel = _relevance(retrieved, query_labels, database_labels, k)
    return rel.hits[:, :k].sum(axis=1) / k


def recall_at_k(
    retrieved: np.ndarray | Relevance, query_labels: np.ndarray | None = None, database_labels: np.ndarray | None = None, k: int = 10
) -> np.ndarray:
    """Recall@k = hits@k / R, per query, where R counts the relevant items in the whole database.

    R comes from the data (never a constant); recall@k stays below 1 whenever R > k. A query with
    R = 0 scores 0.

    Args:
        retrieved: int [n_queries, k'] ids (label form) or a :class:`Relevance`.
        query_labels: [n_queries] labels (label form only).
        database_labels: [n_database] labels (label form only).
        k: cut-off, 1 <= k <= k'.

    Returns:
        float64 [n_queries] in [0, 1].

    Example:
        >>> recall_at_k(np.array([[0, 1]]), np.array([7]), np.array([7, 3, 7, 7]), k=2)
        array([0.33333333])
    """
    rel = _relevance(retrieved, query_labels, database_labels, k)
    hits = rel.hits[:, :k].sum(axis=1)
    return np.divide(hits, rel.n_relevant, out=np.zeros(hits.shape, np.float64), where=rel.n_relevant > 0)


def average_precision_at_k(
    retrieved: np.ndarray | Relevance,
    query_labels: np.ndarray | None = None,
    database_labels: np.ndarray | None = None,
    k: int = 10,
    normalize: Literal["min_k_relevant", "relevant", "k"] = "min_k_relevant",
) -> np.ndarray:
    """AP@k = (1 / Z) * sum_{i<=k} P@i * rel_i, per query; its mean over queries is mAP@k.

    ``normalize`` chooses Z (R = relevant items in the whole database); all three agree when R = k:

    ==================== ============ ==========================================================
    ``normalize``        Z            used by; a perfect top-k scores
    ==================== ============ ==========================================================
    ``"min_k_relevant"`` min(k, R)    default, the common AP@k; 1 whenever the top min(k, R)
                                      ranks are relevant
    ``"relevant"``       R            trec_eval's ``map_cut_k`` and ranx's ``map@k``; k / R < 1
                                      when R > k
    ``"k"``              k            the MRL repository's ``compute_mAP_recall_at_k`` (compare
                                      with published MRL figures); R / k < 1 when R < k
    ==================== ============ ==========================================================

    A query with R = 0 scores 0 under every convention (trec_eval and ranx agree).

    Args:
        retrieved: int [n_queries, k'] ids (label form) or a :class:`Relevance`.
        query_labels: [n_queries] labels (label form only).
        database_labels: [n_database] labels (label form only).
        k: cut-off, 1 <= k <= k'.
        normalize: ``"min_k_relevant"``, ``"relevant"`` or ``"k"``.

    Returns:
        float64 [n_queries] in [0, 1].

    Example:
        >>> ids, q, db = np.array([[0, 1, 2]]), np.array([1]), np.array([1, 0, 1, 1])
        >>> average_precision_at_k(ids, q, db, k=3)  # (1/1 + 2/3) / min(3, 3)
        array([0.55555556])
        >>> average_precision_at_k(ids, q, db, k=2, normalize="relevant")  # (1/1) / 3
        array([0.33333333])
        >>> average_precision_at_k(ids, q, db, k=2)  # (1/1) / min(2, 3)
        array([0.5])
        >>> average_precision_at_k(ids[:, :3], q, np.array([1, 0, 0, 0]), k=3, normalize="k")  # (1/1) / 3
        array([0.33333333])
    """
    if normalize not in AP_NORMALIZATIONS:
        raise MRLError(f"normalize must be one of {', '.join(map(repr, AP_NORMALIZATIONS))}, got {normalize!r}")
    rel = _relevance(retrieved, query_labels, database_labels, k)
    hits = rel.hits[:, :k]
    precision_at_i = np.cumsum(hits, axis=1) / np.arange(1, k + 1)
    total = (precision_at_i * hits).sum(axis=1)
    if normalize == "k":
        return total / k
    z = np.minimum(rel.n_relevant, k) if normalize == "min_k_relevant" else rel.n_relevant
    return np.divide(total, z, out=np.zeros(total.shape, np.float64), where=z > 0)


def ndcg_at_k(
    retrieved: np.ndarray | Relevance, query_labels: np.ndarray | None = None, database_labels: np.ndarray | None = None, k: int = 10
) -> np.ndarray:
    """nDCG@k with binary relevance, per query.

    DCG@k = sum_{i<=k} rel_i / log2(i + 1); IDCG@k = sum_{i<=min(k, R)} 1 / log2(i + 1) (all relevant
    items ranked first); nDCG@k = DCG@k / IDCG@k, and 0 when R = 0.

    Args:
        retrieved: int [n_queries, k'] ids (label form) or a :class:`Relevance`.
        query_labels: [n_queries] labels (label form only).
        database_labels: [n_database] labels (label form only).
        k: cut-off, 1 <= k <= k'.

    Returns:
        float64 [n_queries] in [0, 1].

    Example:
        >>> ndcg_at_k(np.array([[1, 0]]), np.array([5]), np.array([5, 0, 0]), k=2)  # (1/log2 3) / 1
        array([0.63092975])
    """
    rel = _relevance(retrieved, query_labels, database_labels, k)
    discount = 1.0 / np.log2(np.arange(2, k + 2))
    dcg = rel.hits[:, :k] @ discount
    ideal = np.concatenate([[0.0], np.cumsum(discount)])[np.minimum(rel.n_relevant, k)]
    return np.divide(dcg, ideal, out=np.zeros(dcg.shape, np.float64), where=ideal > 0)


def reciprocal_rank_at_k(
    retrieved: np.ndarray | Relevance, query_labels: np.ndarray | None = None, database_labels: np.ndarray | None = None, k: int = 10
) -> np.ndarray:
    """RR@k = 1 / (rank of the first relevant item) if it is within the first k, else 0, per query.

    Its mean over queries is MRR@k. A query with R = 0 scores 0.

    Args:
        retrieved: int [n_queries, k'] ids (label form) or a :class:`Relevance`.
        query_labels: [n_queries] labels (label form only).
        database_labels: [n_database] labels (label form only).
        k: cut-off, 1 <= k <= k'.

    Returns:
        float64 [n_queries] in [0, 1].

    Example:
        >>> reciprocal_rank_at_k(np.array([[2, 0, 1], [2, 1, 0]]), np.array([5, 5]), np.array([5, 0, 0]), k=2)
        array([0.5, 0. ])
    """
    rel = _relevance(retrieved, query_labels, database_labels, k)
    hits = rel.hits[:, :k]
    first = hits.argmax(axis=1)
    return np.where(hits.any(axis=1), 1.0 / (first + 1), 0.0)


def top_k_accuracy(
    retrieved: np.ndarray | Relevance, query_labels: np.ndarray | None = None, database_labels: np.ndarray | None = None, k: int = 10
) -> np.ndarray:
    """Top-k accuracy = 1 if any of the first k results is relevant, else 0, per query.

    With k = 1 and labels this is 1-nearest-neighbour classification accuracy.

    Args:
        retrieved: int [n_queries, k'] ids (label form) or a :class:`Relevance`.
        query_labels: [n_queries] labels (label form only).
        database_labels: [n_database] labels (label form only).
        k: cut-off, 1 <= k <= k'.

    Returns:
        float64 [n_queries] of 0s and 1s.

    Example:
        >>> top_k_accuracy(np.array([[1, 0], [1, 2]]), np.array([5, 5]), np.array([5, 0, 0]), k=2)
        array([1., 0.])
    """
    rel = _relevance(retrieved, query_labels, database_labels, k)
    return rel.hits[:, :k].any(axis=1).astype(np.float64)


def knn_recall_at_k(retrieved_ids: np.ndarray, exact_ids: np.ndarray, k: int = 10) -> np.ndarray:
    """kNN-recall@k = |top-k retrieved ∩ top-k exact| / |top-k exact|, per query.

    Measures how well an approximate search reproduces exact search (faiss's
    ``knn_intersection_measure``, per query). Padding (-1) in either list is ignored; the
    denominator is the number of real ids among the first k exact results (k unless the database
    has fewer than k items); a query whose exact list is all padding scores 0. Ties in the exact
    scores are not resolved: a different id with the same score counts as a miss.

    Args:
        retrieved_ids: int [n_queries, k'] ids from the search being measured, k' >= k.
        exact_ids: int [n_queries, k''] ids from exact search, k'' >= k.
        k: cut-off.

    Returns:
        float64 [n_queries] in [0, 1].

    Example:
        >>> knn_recall_at_k(np.array([[3, 1, 4], [2, 7, 1]]), np.array([[1, 3, 5], [2, 1, 7]]), k=2)
        array([1. , 0.5])
    """
    retrieved = _as_ids(retrieved_ids)
    exact = _as_ids(exact_ids, "exact_ids")
    if retrieved.shape[0] != exact.shape[0]:
        raise MRLError(f"retrieved_ids has {retrieved.shape[0]} queries but exact_ids has {exact.shape[0]}")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise MRLError(f"k must be a positive integer, got {k!r}")
    if k > retrieved.shape[1] or k > exact.shape[1]:
        raise MRLError(f"k={k} is larger than the results per query (retrieved {retrieved.shape[1]}, exact {exact.shape[1]})")
    retrieved, exact = retrieved[:, :k], exact[:, :k]
    _check_unique_rows(retrieved, "retrieved_ids")
    _check_unique_rows(exact, "exact_ids")
    width = int(max(retrieved.max(initial=-1), exact.max(initial=-1))) + 2
    exact_codes = np.sort(_row_codes(exact, width), axis=None)
    found = np.isin(_row_codes(retrieved, width), exact_codes) & (retrieved >= 0)
    n_exact = (exact >= 0).sum(axis=1)
    return np.divide(found.sum(axis=1), n_exact, out=np.zeros(n_exact.shape, np.float64), where=n_exact > 0)


def retrieval_summary(
    retrieved: np.ndarray | Relevance,
    query_labels: np.ndarray | None = None,
    database_labels: np.ndarray | None = None,
    k: int = 10,
    exact_ids: np.ndarray | None = None,
) -> dict[str, float]:
    """Means over queries of every metric at cut-off ``k`` (plus top-1 and, given ``exact_ids``, kNN-recall).

    Returns:
        ``{"map@k", "precision@k", "recall@k", "ndcg@k", "top1", "top_k_accuracy@k"[, "knn_recall@k"]}``
        as floats (keys spelled with the number, e.g. ``"map@10"``).

    Example:
        >>> s = retrieval_summary(np.array([[0, 1]]), np.array([1]), np.array([1, 0]), k=2)
        >>> s["map@2"], s["precision@2"], s["top1"]
        (1.0, 0.5, 1.0)
    """
    rel = _relevance(retrieved, query_labels, database_labels, k)
    out = {
        f"map@{k}": float(average_precision_at_k(rel, k=k).mean()),
        f"precision@{k}": float(precision_at_k(rel, k=k).mean()),
        f"recall@{k}": float(recall_at_k(rel, k=k).mean()),
        f"ndcg@{k}": float(ndcg_at_k(rel, k=k).mean()),
        "top1": float(top_k_accuracy(rel, k=1).mean()),
        f"top_k_accuracy@{k}": float(top_k_accuracy(rel, k=k).mean()),
    }
    if exact_ids is not None:
        if isinstance(retrieved, Relevance):
            raise MRLError("exact_ids needs retrieved ids, not a Relevance")
        out[f"knn_recall@{k}"] = float(knn_recall_at_k(retrieved, exact_ids, k=k).mean())
    return out
