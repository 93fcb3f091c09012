"""FunnelIndex: adaptive retrieval with a low-dim FAISS shortlist and longer-prefix reranking.

MRL's funnel retrieval (Kusupati et al., NeurIPS 2022, section 4.3, "Adaptive Retrieval", and
appendix G): shortlist candidates with a short prefix z[:d_1] of every database vector, then rerank
the survivors with longer prefixes d_2 < ... < d_L while the shortlist shrinks, e.g. 16 -> 2048 with
200 candidates, or the cascade 16 -> 32 -> 64 -> 128 -> 2048 with 800, 400, 200, 50, 10. The
official code loops over queries in Python and vector databases keep each prefix as a separate
vector; here the full vectors are stored once (float32, or float16 to halve memory), FAISS indexes
only the shortlist prefix, and each rerank stage is one gather plus one batched product over a
block of queries.

With ``metric="cosine"`` every stage L2-normalises the prefixes it compares (the paper's retrieval
normalises each truncated representation), so a stage score is the cosine of the two prefixes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import faiss
import numpy as np
import torch
from tqdm import tqdm

from mrl.errors import MRLError
from mrl.artifacts import safe_name
from mrl.io import atomic_directory, atomic_write_bytes, load_npy, read_json, save_npy, sha256_file, write_json
from mrl.nesting import PREFIX_NORM_FLOOR
from mrl.retrieval._vectors import check_k, check_metric, check_vectors, faiss_metric, prefix
from mrl.retrieval.costs import funnel_flops

if TYPE_CHECKING:
    from mrl.retrieval.tuning import FunnelTuner

logger = logging.getLogger(__name__)

FORMAT = "mrl-funnel-index"
FORMAT_VERSION = 1
SHORTLISTS = ("flat", "hnsw")
DTYPES = {"float32": np.float32, "float16": np.float16}
DEFAULT_SHORTLIST_LENGTH = 200  # the paper's 16 -> 2048 funnel reranks 200 candidates
_RERANK_BLOCK = 1 << 24  # gathered floats per block of queries (64 MB in float32)

Funnel = list[tuple[int, int]]


def parse_funnel(text: str) -> Funnel:
    """Parse ``"16:200,2048:10"`` into ``[(16, 200), (2048, 10)]`` (dim:shortlist_length pairs).

    Example:
        >>> parse_funnel("16:800, 32:400,2048:10")
        [(16, 800), (32, 400), (2048, 10)]
    """
    stages = []
    for part in str(text).split(","):
        if not part.strip():
            continue
        fields = part.split(":")
        try:
            dim, length = (int(f) for f in fields)
        except ValueError:
            raise MRLError(f"funnel must be comma-separated dim:shortlist_length pairs such as 16:200,2048:10, got {text!r}") from None
        stages.append((dim, length))
    if not stages:
        raise MRLError(f"funnel must hold at least one dim:shortlist_length stage, got {text!r}")
    return stages


def format_funnel(funnel: Sequence[tuple[int, int]]) -> str:
    """Inverse of :func:`parse_funnel`.

    Example:
        >>> format_funnel([(16, 200), (2048, 10)])
        '16:200,2048:10'
    """
    return ",".join(f"{d}:{n}" for d, n in funnel)


def validate_funnel(funnel: Sequence[Sequence[int]], dim: int, shortlist_dim: int, n_database: int, k: int) -> Funnel:
    """Check a funnel against an index and a k; return it as a list of int pairs.

    Rules: stage 1 uses the index's ``shortlist_dim`` (FAISS holds only that prefix); dims strictly
    ascend and stay <= ``dim``; shortlist lengths never grow; the first is at most ``n_database``
    and the last at least ``k``.

    Example:
        >>> validate_funnel([(16, 200), (2048, 10)], dim=2048, shortlist_dim=16, n_database=1000, k=10)
        [(16, 200), (2048, 10)]
    """
    stages: Funnel = []
    for stage in funnel:
        try:
            d, n = stage
        except (TypeError, ValueError):
            raise MRLError(f"each funnel stage must be a (dim, shortlist_length) pair, got {stage!r}") from None
        for value in (d, n):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise MRLError(f"funnel stage values must be positive integers, got {stage!r}")
        stages.append((int(d), int(n)))
    if not stages:
        raise MRLError("funnel must hold at least one stage")
    dims = [d for d, _ in stages]
    lengths = [n for _, n in stages]
    if dims[0] != shortlist_dim:
        raise MRLError(f"funnel must start at the shortlist dim {shortlist_dim} (FAISS holds only that prefix), got {dims[0]} in {format_funnel(stages)}")
    if any(b <= a for a, b in zip(dims, dims[1:])):
        raise MRLError(f"funnel stage dims must be strictly ascending, got {dims}")
    if dims[-1] > dim:
        raise MRLError(f"funnel stage dim {dims[-1]} is larger than the vectors' dimension {dim}")
    if any(b > a for a, b in zip(lengths, lengths[1:])):
        raise MRLError(f"funnel shortlist lengths must not grow from stage to stage, got {lengths}")
    if lengths[0] > n_database:
        raise MRLError(f"funnel shortlist length {lengths[0]} is larger than the database ({n_database} vectors)")
    if lengths[-1] < k:
        raise MRLError(f"the last funnel stage keeps {lengths[-1]} candidates, fewer than k={k}")
    return stages


class FunnelIndex:
    """Full vectors stored once plus a FAISS index over their first ``shortlist_dim`` coordinates.

    Args:
        vectors: [N, D] float database vectors. Kept without a copy when already C-contiguous of
            the storage dtype (do not modify them afterwards).
        metric: ``"cosine"`` (each prefix L2-normalised), ``"ip"`` or ``"l2"`` (squared distance).
        shortlist_dim: prefix size d_1 indexed by FAISS.
        shortlist: ``"flat"`` (exact search over the prefix) or ``"hnsw"`` (IndexHNSWFlat).
        hnsw_m: HNSW graph degree M.
        ef_construction: HNSW build beam width.
        ef_search: HNSW search beam width (raised to the first shortlist length when smaller).
        dtype: storage of the full vectors, ``"float32"`` or ``"float16"``.
        labels: optional int [N] labels kept beside the vectors (for evaluation).
        progress: show a progress bar (stderr) while the shortlist index is built.

    Attributes:
        funnel: the default funnel of :meth:`search` (set by :meth:`tune`), or None.
        last_search: wall-clock and cost of the latest :meth:`search`.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> db = rng.standard_normal((500, 64)).astype(np.float32)
        >>> index = FunnelIndex(db, shortlist_dim=8)
        >>> scores, ids = index.search(db[:3], k=5, funnel=[(8, 50), (64, 5)])
        >>> ids[:, 0].tolist()
        [0, 1, 2]
    """

    def __init__(
        self,
        vectors: np.ndarray,
        metric: str = "cosine",
        shortlist_dim: int = 16,
        shortlist: str = "flat",
        hnsw_m: int = 32,
        ef_construction: int = 80,
        ef_search: int = 128,
        dtype: str = "float32",
        labels: np.ndarray | None = None,
        progress: bool = False,
    ) -> None:
        self.metric = check_metric(metric)
        if shortlist not in SHORTLISTS:
            raise MRLError(f"shortlist must be one of {list(SHORTLISTS)}, got {shortlist!r}")
        if dtype not in DTYPES:
            raise MRLError(f"dtype must be one of {list(DTYPES)}, got {dtype!r}")
        for name, value in (("hnsw_m", hnsw_m), ("ef_construction", ef_construction), ("ef_search", ef_search)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise MRLError(f"{name} must be a positive integer, got {value!r}")
        vectors = check_vectors(vectors, "vectors")
        dim = vectors.shape[1]
        if isinstance(shortlist_dim, bool) or not isinstance(shortlist_dim, (int, np.integer)) or not 1 <= shortlist_dim <= dim:
            raise MRLError(f"shortlist_dim must be an integer in [1, {dim}], got {shortlist_dim!r}")
        self.shortlist_dim = int(shortlist_dim)
        self.shortlist = shortlist
        self.hnsw_m, self.ef_construction, self.ef_search = int(hnsw_m), int(ef_construction), int(ef_search)
        self.dtype = dtype
        self.funnel: Funnel | None = None
        self.last_search: dict | None = None
        self._vectors = np.ascontiguousarray(vectors, dtype=DTYPES[dtype])
        self._labels = self._check_labels(labels, self._vectors.shape[0])
        self._sq_norms: dict[int, np.ndarray] = {}
        self._index = self._new_shortlist_index()
        self._add_to_shortlist(self._vectors, progress=progress)

    # -- construction ---------------------------------------------------------------------------

    @staticmethod
    def _check_labels(labels: np.ndarray | None, n: int) -> np.ndarray | None:
        if labels is None:
            return None
        labels = np.asarray(labels)
        if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer):
            raise MRLError(f"labels must be an integer array of shape ({n},), got {labels.dtype} {labels.shape}")
        return labels.astype(np.int64, copy=False)

    def _new_shortlist_index(self) -> faiss.Index:
        if self.shortlist == "flat":
            return faiss.IndexFlatL2(self.shortlist_dim) if self.metric == "l2" else faiss.IndexFlatIP(self.shortlist_dim)
        index = faiss.IndexHNSWFlat(self.shortlist_dim, self.hnsw_m, faiss_metric(self.metric))
        index.hnsw.efConstruction = self.ef_construction
        return index

    def _add_to_shortlist(self, vectors: np.ndarray, block: int = 65536, progress: bool = False) -> None:
        starts = range(0, vectors.shape[0], block)
        for start in tqdm(starts, desc=f"indexing {self.shortlist_dim}-dim prefixes", unit="block", disable=not progress):
            self._index.add(prefix(vectors[start : start + block], self.shortlist_dim, self.metric))

    def add(self, vectors: np.ndarray, labels: np.ndarray | None = None) -> None:
        """Append vectors [n, D] (and their labels when the index has labels); ids continue from ``ntotal``."""
        vectors = check_vectors(vectors, "vectors", dim=self.dim)
        if (labels is None) != (self._labels is None):
            raise MRLError("labels must be given to add() exactly when the index holds labels")
        labels = self._check_labels(labels, vectors.shape[0])
        self._vectors = np.concatenate([self._vectors, vectors.astype(self._vectors.dtype, copy=False)])
        if labels is not None:
            self._labels = np.concatenate([self._labels, labels])
        self._sq_norms.clear()
        self._add_to_shortlist(vectors)

    # -- properties -------------------------------------------------------------------------------

    @property
    def ntotal(self) -> int:
        """Number of stored vectors N."""
        return int(self._vectors.shape[0])

    @property
    def dim(self) -> int:
        """Dimension D of the stored vectors."""
        return int(self._vectors.shape[1])

    @property
    def vectors(self) -> np.ndarray:
        """The stored full vectors [N, D] (read-only view)."""
        view = self._vectors.view()
        view.flags.writeable = False
        return view

    @property
    def labels(self) -> np.ndarray | None:
        """The stored labels [N], or None."""
        return self._labels

    def memory_bytes(self) -> dict[str, int]:
        """Bytes held: full vectors, FAISS shortlist index (prefix copy plus any graph), and total."""
        vectors = int(self._vectors.nbytes)
        shortlist = int(faiss.serialize_index(self._index).nbytes) if self.shortlist == "hnsw" else self.ntotal * self.shortlist_dim * 4
        return {"vectors": vectors, "shortlist": shortlist, "total": vectors + shortlist}

    def default_funnel(self, k: int) -> Funnel:
        """The tuned funnel when it keeps >= k results, else ``[(d_1, max(200, k)), (D, k)]`` clipped to N.

        When the shortlist already uses all D dims the default is the single stage ``[(D, k)]``.
        """
        if self.funnel is not None and self.funnel[-1][1] >= k:
            return list(self.funnel)
        if self.shortlist_dim == self.dim:
            return [(self.dim, k)]
        return [(self.shortlist_dim, min(max(DEFAULT_SHORTLIST_LENGTH, k), self.ntotal)), (self.dim, k)]

    # -- search -----------------------------------------------------------------------------------

    def search(self, queries: np.ndarray, k: int = 10, funnel: Sequence[tuple[int, int]] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k of each query through the funnel.

        Args:
            queries: [Q, D] float queries.
            k: results per query, at most N and at most the last stage's shortlist length.
            funnel: [(d_1, n_1), ..., (d_L, n_L)]: FAISS returns n_1 candidates by the d_1-prefix,
                stage i keeps the best n_i of the previous survivors by the d_i-prefix. Default:
                :meth:`default_funnel`.

        Returns:
            (scores, ids): float32 [Q, k] best first (cosine or inner product of the last stage's
            prefixes, descending; squared L2 distance, ascending, for ``"l2"``) and int64 [Q, k]
            ids (-1 where an HNSW shortlist found fewer candidates).
        """
        queries = check_vectors(queries, "queries", dim=self.dim)
        k = check_k(k, self.ntotal)
        funnel = validate_funnel(self.default_funnel(k) if funnel is None else funnel, self.dim, self.shortlist_dim, self.ntotal, k)
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        stage_seconds = []
        start = time.perf_counter()
        first_dim, first_length = funnel[0]
        if self.shortlist == "hnsw":
            self._index.hnsw.efSearch = max(self.ef_search, first_length)
            faiss.cvar.hnsw_stats.reset()
        scores, ids = self._index.search(prefix(queries, first_dim, self.metric), first_length)
        distances = faiss.cvar.hnsw_stats.ndis / max(len(queries), 1) if self.shortlist == "hnsw" else float(self.ntotal)
        if self.metric == "l2":
            scores = -scores  # larger is better inside the funnel
        stage_seconds.append(time.perf_counter() - start)
        for stage_dim, length in funnel[1:]:
            t = time.perf_counter()
            scores, ids = self._rerank(queries, ids, stage_dim, length)
            stage_seconds.append(time.perf_counter() - t)
        scores, ids = np.ascontiguousarray(scores[:, :k]), np.ascontiguousarray(ids[:, :k])
        if self.metric == "l2":
            scores = -scores
        seconds = time.perf_counter() - start
        self.last_search = {
            "funnel": funnel,
            "n_queries": int(len(queries)),
            "seconds": seconds,
            "ms_per_query": 1000.0 * seconds / max(len(queries), 1),
            "stage_seconds": stage_seconds,
            "shortlist_distances": distances,
            "flops_per_query": funnel_flops(funnel, self.ntotal, distances),
        }
        return scores, ids

    def _prefix_sq_norms(self, dim: int) -> np.ndarray:
        """Squared L2 norms [N] of every stored prefix z[:dim], computed once per dim and cached."""
        cached = self._sq_norms.get(dim)
        if cached is None:
            cached = np.empty(self.ntotal, dtype=np.float32)
            block = max(1, _RERANK_BLOCK // dim)
            for start in range(0, self.ntotal, block):
                part = self._vectors[start : start + block, :dim].astype(np.float32)
                cached[start : start + block] = np.einsum("nd,nd->n", part, part)
            self._sq_norms[dim] = cached
        return cached

    def _rerank(self, queries: np.ndarray, ids: np.ndarray, dim: int, length: int) -> tuple[np.ndarray, np.ndarray]:
        """Keep the best ``length`` of the candidate ``ids`` [Q, K] by their ``dim``-prefix scores."""
        valid = ids >= 0
        q = np.ascontiguousarray(queries[:, :dim])
        dots = self._candidate_dots(q, ids, valid, dim)
        if self.metric == "cosine":
            sq = self._prefix_sq_norms(dim)[np.where(valid, ids, 0)]
            q_norms = np.linalg.norm(q, axis=1, keepdims=True)
            scores = dots / (np.sqrt(sq).clip(min=PREFIX_NORM_FLOOR) * q_norms.clip(min=PREFIX_NORM_FLOOR))
        elif self.metric == "l2":
            sq = self._prefix_sq_norms(dim)[np.where(valid, ids, 0)]
            scores = 2 * dots - sq - np.einsum("qd,qd->q", q, q)[:, None]  # minus the squared distance
        else:
            scores = dots
        scores = np.where(valid, scores, -np.inf).astype(np.float32, copy=False)
        top = torch.topk(torch.from_numpy(scores), length, dim=1)
        out_scores = top.values.numpy()
        out_ids = np.take_along_axis(ids, top.indices.numpy(), axis=1)
        out_ids[~np.isfinite(out_scores)] = -1
        return out_scores, out_ids

    def _candidate_dots(self, q: np.ndarray, ids: np.ndarray, valid: np.ndarray, dim: int) -> np.ndarray:
        """Inner products [Q, K] of each query prefix q [Q, dim] with the ``dim``-prefixes of its candidates."""
        n_queries, n_candidates = ids.shape
        safe_ids = np.where(valid, ids, 0)
        if self._vectors.dtype == np.float32 and self.dim % dim == 0 and self._vectors.flags.c_contiguous:
            # Fused gather + dot in FAISS: viewing the [N, D] table as [N * D/dim, dim] rows makes the
            # dim-prefix of vector i row i * D/dim, so no [Q, K, dim] copy is ever built.
            table = np.asarray(self._vectors).reshape(-1, dim)
            rows = np.ascontiguousarray(safe_ids * (self.dim // dim), dtype=np.int64)
            out = np.empty((n_queries, n_candidates), dtype=np.float32)
            faiss.fvec_inner_products_by_idx(
                faiss.swig_ptr(out), faiss.swig_ptr(q), faiss.swig_ptr(table), faiss.swig_ptr(rows), dim, n_queries, n_candidates
            )
            return out
        # General path (float16 storage, or dim not dividing D): gather a block of queries'
        # candidates [B, K, dim] in float32, then one batched product.
        out = np.empty((n_queries, n_candidates), dtype=np.float32)
        table = np.asarray(self._vectors)[:, :dim]
        block = max(1, _RERANK_BLOCK // (n_candidates * dim))
        for start in range(0, n_queries, block):
            gathered = torch.from_numpy(table[safe_ids[start : start + block]].astype(np.float32, copy=False))
            out[start : start + block] = torch.einsum("qkd,qd->qk", gathered, torch.from_numpy(q[start : start + block])).numpy()
        return out

    def flops_per_query(self, funnel: Sequence[tuple[int, int]], shortlist_distances: float | None = None) -> float:
        """Theoretical FLOPs per query (:func:`mrl.retrieval.costs.funnel_flops`).

        A flat shortlist compares each query with all N prefixes. For HNSW pass the distance count,
        or leave it None to use the count measured by the latest :meth:`search`.
        """
        funnel = validate_funnel(funnel, self.dim, self.shortlist_dim, self.ntotal, 1)
        if shortlist_distances is None and self.shortlist == "hnsw":
            if self.last_search is None:
                raise MRLError("an HNSW shortlist's cost is measured: run search() first or pass shortlist_distances")
            shortlist_distances = self.last_search["shortlist_distances"]
        return funnel_flops(funnel, self.ntotal, shortlist_distances)

    def tune(
        self,
        sample_queries: np.ndarray,
        k: int = 10,
        target_recall: float = 0.99,
        candidates: Sequence[Sequence[tuple[int, int]]] | None = None,
        exact_ids: np.ndarray | None = None,
    ) -> FunnelTuner:
        """Pick the cheapest funnel whose kNN-recall@k against exact search meets ``target_recall``.

        Sets :attr:`funnel` to the choice (used by :meth:`search` when no funnel is given, and
        saved by :meth:`save`) and returns the fitted :class:`~mrl.retrieval.tuning.FunnelTuner`,
        whose ``results_`` give every candidate's measured recall, FLOPs and wall-clock.
        ``exact_ids`` [Q, >= k] may pass precomputed exact full-dim results for the sample.
        """
        from mrl.retrieval.tuning import FunnelTuner

        tuner = FunnelTuner(k=k, target_recall=target_recall, candidates=candidates).fit(self, sample_queries, exact_ids)
        self.funnel = list(tuner.best_funnel_)
        return tuner

    # -- persistence ------------------------------------------------------------------------------

    def _manifest(self) -> dict:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "n_vectors": self.ntotal,
            "dim": self.dim,
            "dtype": self.dtype,
            "metric": self.metric,
            "shortlist_dim": self.shortlist_dim,
            "shortlist": self.shortlist,
            "hnsw_m": self.hnsw_m,
            "ef_construction": self.ef_construction,
            "ef_search": self.ef_search,
            "funnel": None if self.funnel is None else [list(s) for s in self.funnel],
            "files": {},
        }

    def save(self, path: str | Path, overwrite: bool = False) -> Path:
        """Write the index to directory ``path`` atomically (built in a temp dir, then renamed).

        Files: ``vectors.npy``, ``shortlist.faiss``, ``labels.npy`` (when labels exist) and
        ``manifest.json`` (format, version, sizes, settings, tuned funnel, sha256 of each file).
        """
        manifest = self._manifest()
        with atomic_directory(path, overwrite=overwrite) as tmp:
            save_npy(tmp / "vectors.npy", self._vectors)
            atomic_write_bytes(tmp / "shortlist.faiss", faiss.serialize_index(self._index).tobytes())
            if self._labels is not None:
                save_npy(tmp / "labels.npy", self._labels)
            for name in sorted(p.name for p in tmp.iterdir()):
                manifest["files"][name] = {"sha256": sha256_file(tmp / name), "bytes": (tmp / name).stat().st_size}
            write_json(tmp / "manifest.json", manifest)
        return Path(path)

    @classmethod
    def load(cls, path: str | Path, mmap: bool = False) -> FunnelIndex:
        """Read an index written by :meth:`save`, verifying every file's sha256 first.

        Args:
            path: the index directory.
            mmap: memory-map the full vectors instead of reading them (read-only, loads lazily).

        Raises:
            MRLError: missing or foreign directory, newer format, missing or corrupt file, or sizes
                that disagree with the manifest.
        """
        path = Path(path)
        if not path.is_dir():
            raise MRLError(f"index directory not found: {path}")
        if not (path / "manifest.json").is_file():
            raise MRLError(f"{path} is not a funnel index (no manifest.json)")
        manifest = read_json(path / "manifest.json")
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise MRLError(f"{path}/manifest.json is not a {FORMAT} manifest (format={manifest.get('format') if isinstance(manifest, dict) else None!r})")
        if manifest.get("format_version") != FORMAT_VERSION:
            raise MRLError(f"{path} has format version {manifest.get('format_version')!r}; this mrl reads version {FORMAT_VERSION}")
        files = manifest.get("files", {})
        for name in ("vectors.npy", "shortlist.faiss"):
            if name not in files:
                raise MRLError(f"{path}/manifest.json lists no {name}")
        for name, entry in files.items():
            file = path / safe_name(name)  # never follow a path read from the manifest
            if file.is_symlink():
                raise MRLError(f"{file} is a symlink; refusing to read it")
            if not file.is_file():
                raise MRLError(f"{path} is missing {name}, listed in its manifest")
            if sha256_file(file) != entry.get("sha256"):
                raise MRLError(f"{file} is corrupt: its sha256 does not match the manifest")
        vectors = load_npy(path / "vectors.npy", mmap=mmap)
        expected = (manifest["n_vectors"], manifest["dim"])
        if vectors.shape != expected or vectors.dtype != DTYPES.get(manifest["dtype"]):
            raise MRLError(f"{path}/vectors.npy holds {vectors.dtype} {vectors.shape}, the manifest says {manifest['dtype']} {expected}")
        index = faiss.deserialize_index(np.frombuffer((path / "shortlist.faiss").read_bytes(), dtype=np.uint8))
        if index.ntotal != manifest["n_vectors"] or index.d != manifest["shortlist_dim"]:
            raise MRLError(f"{path}/shortlist.faiss holds {index.ntotal} vectors of {index.d} dims, the manifest says {manifest['n_vectors']} of {manifest['shortlist_dim']}")
        labels = load_npy(path / "labels.npy") if "labels.npy" in files else None
        self = cls.__new__(cls)
        self.metric, self.shortlist_dim, self.shortlist = manifest["metric"], manifest["shortlist_dim"], manifest["shortlist"]
        self.hnsw_m, self.ef_construction, self.ef_search = manifest["hnsw_m"], manifest["ef_construction"], manifest["ef_search"]
        self.dtype = manifest["dtype"]
        self.funnel = None if manifest["funnel"] is None else [tuple(s) for s in manifest["funnel"]]
        self.last_search = None
        self._vectors, self._index, self._sq_norms = vectors, index, {}
        self._labels = cls._check_labels(labels, vectors.shape[0])
        return self

    def __repr__(self) -> str:
        return (
            f"FunnelIndex(ntotal={self.ntotal}, dim={self.dim}, metric={self.metric!r}, "
            f"shortlist_dim={self.shortlist_dim}, shortlist={self.shortlist!r}, dtype={self.dtype!r})"
        )
