"""Where the funnel's full vectors live: in memory, or memory-mapped from the index's .npy file.

Rerank stages (MRL paper section 4.3) touch only the n_{i-1} survivors of the previous stage, so
the full [N, D] table need not be in the process's memory: with ``store="mmap"`` the .npy file is
mapped read-only and each stage gathers just the candidate rows. The pages the OS caches for the
file are shared, reclaimable page cache, not the index's own (anonymous) memory, which then stays
near the size of the shortlist structure plus one block of gathered candidates.
"""

from __future__ import annotations

import faiss
import numpy as np
import torch

from mrl.nesting import PREFIX_NORM_FLOOR

STORES = ("memory", "mmap")
DTYPES = {"float32": np.float32, "float16": np.float16}
RERANK_BLOCK_FLOATS = 1 << 20  # gathered candidate floats per block of queries (4 MiB in float32: stays in cache)


class VectorStore:
    """Full vectors [N, D] (float32 or float16) and the scoring of candidate prefixes against queries.

    Args:
        array: the table, an ndarray (``store="memory"``) or a read-only np.memmap (``"mmap"``).
        store: ``"memory"`` or ``"mmap"``.
    """

    def __init__(self, array: np.ndarray, store: str) -> None:
        self.array, self.store = array, store
        self._sq_norms: dict[int, np.ndarray] = {}

    @property
    def dtype(self) -> str:
        return np.dtype(self.array.dtype).name

    def ram_bytes(self) -> int:
        """Bytes of full vectors held in anonymous memory: all of them in memory, none when mapped."""
        return 0 if self.store == "mmap" else int(self.array.nbytes)

    def append(self, vectors: np.ndarray) -> None:
        """Append rows (memory store only; the caller refuses a mapped one)."""
        self.array = np.concatenate([self.array, vectors.astype(self.array.dtype, copy=False)])
        self._sq_norms.clear()

    def scores(self, q: np.ndarray, ids: np.ndarray, dim: int, metric: str) -> np.ndarray:
        """Float32 [Q, K] larger-is-better scores of query prefixes q [Q, dim] with the ``dim``-prefixes of candidates ids [Q, K].

        cosine: cosine of the prefixes; ip: inner product; l2: minus the squared distance.
        Entries where ids < 0 are -inf.
        """
        valid = ids >= 0
        safe_ids = np.where(valid, ids, 0)
        if self._fused(dim):
            dots = self._fused_dots(q, safe_ids, dim)
            sq = self._cached_sq_norms(dim)[safe_ids] if metric != "ip" else None
        else:
            dots, sq = self._gathered_dots(q, safe_ids, dim, with_norms=metric != "ip")
        if metric == "cosine":
            q_norms = np.linalg.norm(q, axis=1, keepdims=True)
            scores = dots / (np.sqrt(sq).clip(min=PREFIX_NORM_FLOOR) * q_norms.clip(min=PREFIX_NORM_FLOOR))
        elif metric == "l2":
            scores = 2 * dots - sq - np.einsum("qd,qd->q", q, q)[:, None]
        else:
            scores = dots
        return np.where(valid, scores, -np.inf).astype(np.float32, copy=False)

    def _fused(self, dim: int) -> bool:
        # FAISS's fused gather + dot needs a float32 table in memory whose rows split into dim-wide pieces.
        dim_total = self.array.shape[1]
        return self.store == "memory" and self.array.dtype == np.float32 and dim_total % dim == 0 and self.array.flags.c_contiguous

    def _fused_dots(self, q: np.ndarray, safe_ids: np.ndarray, dim: int) -> np.ndarray:
        # Viewing the [N, D] table as [N * D/dim, dim] rows makes the dim-prefix of vector i
        # row i * D/dim, so no [Q, K, dim] copy is ever built.
        table = np.asarray(self.array).reshape(-1, dim)
        rows = np.ascontiguousarray(safe_ids * (self.array.shape[1] // dim), dtype=np.int64)
        return _dots_by_index(q, table, rows)

    def _cached_sq_norms(self, dim: int) -> np.ndarray:
        """Squared norms [N] of every stored dim-prefix, computed once per dim (memory store only)."""
        cached = self._sq_norms.get(dim)
        if cached is None:
            cached = np.empty(self.array.shape[0], dtype=np.float32)
            block = max(1, RERANK_BLOCK_FLOATS // dim)
            for start in range(0, self.array.shape[0], block):
                part = self.array[start : start + block, :dim].astype(np.float32)
                cached[start : start + block] = np.einsum("nd,nd->n", part, part)
            self._sq_norms[dim] = cached
        return cached

    def _gathered_dots(self, q: np.ndarray, safe_ids: np.ndarray, dim: int, with_norms: bool) -> tuple[np.ndarray, np.ndarray | None]:
        """Dots [Q, K] (and squared prefix norms [Q, K]) of q [Q, dim] with the candidates' ``dim``-prefixes.

        A block of queries at a time: the block's distinct candidate rows, sorted so a mapped file
        is read front to back and each row once however many queries share it, are gathered
        [U, dim] and converted to float32 by torch (numpy's float16 cast runs several times
        slower); FAISS's fused gather + dot then scores every (query, candidate) pair from that
        block, so no [B, K, dim] copy is built.
        """
        n_queries, n_candidates = safe_ids.shape
        dots = np.empty((n_queries, n_candidates), dtype=np.float32)
        sq = np.empty((n_queries, n_candidates), dtype=np.float32) if with_norms else None
        block = max(1, RERANK_BLOCK_FLOATS // (n_candidates * dim))
        for start in range(0, n_queries, block):
            stop = min(start + block, n_queries)
            unique, inverse = np.unique(safe_ids[start:stop], return_inverse=True)
            rows = self._rows(unique, dim)
            positions = np.ascontiguousarray(inverse.reshape(stop - start, n_candidates), dtype=np.int64)
            dots[start:stop] = _dots_by_index(np.ascontiguousarray(q[start:stop]), rows, positions)
            if sq is not None:
                row_sq = np.empty(len(unique), dtype=np.float32)
                faiss.fvec_norms_L2sqr(faiss.swig_ptr(row_sq), faiss.swig_ptr(rows), dim, len(unique))
                sq[start:stop] = row_sq[positions]
        return dots, sq

    def _rows(self, rows: np.ndarray, dim: int) -> np.ndarray:
        """Float32 C-contiguous [len(rows), dim] prefixes of the sorted ``rows`` (only those rows are read)."""
        gathered = np.asarray(self.array[rows, :dim])
        if gathered.dtype == np.float32:
            return np.ascontiguousarray(gathered)
        return torch.from_numpy(np.ascontiguousarray(gathered)).float().numpy()


def _dots_by_index(q: np.ndarray, table: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """[Q, K] float32 dots of q [Q, dim] with table[rows[i, j]], by FAISS's fused gather + dot (no [Q, K, dim] copy).

    q and table are C-contiguous float32 with the same dim; rows is C-contiguous int64 [Q, K].
    """
    out = np.empty(rows.shape, dtype=np.float32)
    faiss.fvec_inner_products_by_idx(
        faiss.swig_ptr(out), faiss.swig_ptr(q), faiss.swig_ptr(table), faiss.swig_ptr(rows), q.shape[1], *rows.shape
    )
    return out
