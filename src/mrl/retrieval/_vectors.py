"""Shared checks and prefix preparation for the retrieval package.

MRL retrieval (Kusupati et al., NeurIPS 2022, section 4.3) compares prefixes z[:m] of the stored
vectors; with the cosine metric each prefix is L2-normalised on its own, so a prefix score is the
cosine of the prefixes, not a slice of the full-vector cosine.
"""

from __future__ import annotations

import faiss
import numpy as np

from mrl.errors import MRLError
from mrl.nesting import PREFIX_NORM_FLOOR

METRICS = ("cosine", "ip", "l2")
_CHUNK_ROWS = 65536  # rows per block when scanning large arrays, bounding temporaries to ~0.5 GB at d=2048
# Largest magnitude a coordinate may have. Scores are float32 (FAISS, the rerank products): squares
# past 3.4e38 overflow, so a query of 2e19 along one axis had an infinite norm, a zero normalised
# prefix and meaningless neighbours. At 1e15 a sum of 1e8 squared coordinates stays finite.
MAX_ABS_VALUE = 1e15


def check_metric(metric: str) -> str:
    if metric not in METRICS:
        raise MRLError(f"metric must be one of {list(METRICS)}, got {metric!r}")
    return metric


def faiss_metric(metric: str) -> int:
    """FAISS metric constant: inner product for cosine (on normalised prefixes) and ip, L2 for l2."""
    return faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT


def check_vectors(vectors: object, name: str, dim: int | None = None) -> np.ndarray:
    """Return ``vectors`` as a 2-D float array (no copy when possible) after checking shape, NaN/inf
    and magnitudes (at most :data:`MAX_ABS_VALUE`)."""
    array = np.asarray(vectors)
    if array.ndim != 2:
        raise MRLError(f"{name} must be a 2-D array [n, dim], got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.floating):
        raise MRLError(f"{name} must be a float array, got dtype {array.dtype}")
    if dim is not None and array.shape[1] != dim:
        raise MRLError(f"{name} has dimension {array.shape[1]} but the index holds {dim}-dim vectors")
    for start in range(0, array.shape[0], _CHUNK_ROWS):
        block = array[start : start + _CHUNK_ROWS]
        if array.dtype == np.float16:  # finite float16 values are at most 65504
            # NaN and inf are the float16 values whose 5 exponent bits are all set; integer ops on
            # the bits run several times faster than numpy's float16 isfinite.
            bad = (block.view(np.uint16) & np.uint16(0x7C00)) == np.uint16(0x7C00)
        elif block.size and not -MAX_ABS_VALUE <= block.min() <= block.max() <= MAX_ABS_VALUE:  # NaN fails too
            bad = ~(np.abs(block) <= MAX_ABS_VALUE)
        else:
            continue
        if bad.any():
            row = start + int(np.nonzero(bad.any(axis=1))[0][0])
            values = array[row]
            if not np.isfinite(values).all():
                raise MRLError(f"{name} row {row} holds NaN or infinite values")
            raise MRLError(f"{name} row {row} holds a value of magnitude {np.abs(values).max():.3g}, above {MAX_ABS_VALUE:.0e}: "
                           "float32 scores of such values overflow; scale the vectors down")
    return array


def check_labels(labels: object, n: int) -> np.ndarray | None:
    """``labels`` as int64 [n] (None stays None) after checking they are one integer per vector;
    unsigned values past int64 would wrap to negatives and are refused."""
    if labels is None:
        return None
    labels = np.asarray(labels)
    if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer):
        raise MRLError(f"labels must be an integer array of shape ({n},), got {labels.dtype} {labels.shape}")
    if labels.dtype.kind == "u" and labels.size and labels.max() > np.iinfo(np.int64).max:
        raise MRLError(f"labels must fit in int64, got {labels.max()}")
    return labels.astype(np.int64, copy=False)


def prefix(vectors: np.ndarray, dim: int, metric: str) -> np.ndarray:
    """Float32 C-contiguous copy of ``vectors[:, :dim]``, L2-normalised per row for cosine (norms
    floored at :data:`mrl.nesting.PREFIX_NORM_FLOOR`, as :func:`mrl.nesting.truncate` does).

    Example:
        >>> prefix(np.array([[3.0, 4.0, 1.0]]), 2, "cosine")
        array([[0.6, 0.8]], dtype=float32)
    """
    out = np.array(vectors[:, :dim], dtype=np.float32, order="C", copy=True)
    if metric == "cosine":
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        out /= np.maximum(norms, np.float32(PREFIX_NORM_FLOOR))
    return out


def check_k(k: int, n_database: int, name: str = "k") -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise MRLError(f"{name} must be a positive integer, got {k!r}")
    if k > n_database:
        raise MRLError(f"{name}={k} is larger than the database ({n_database} vectors)")
    return int(k)
