"""FunnelIndex: adaptive retrieval with a low-dim FAISS shortlist and longer-prefix reranking.

MRL's funnel retrieval (Kusupati et al., NeurIPS 2022, section 4.3, "Adaptive Retrieval", and
appendix G): shortlist candidates with a short prefix z[:d_1] of every database vector, then rerank
the survivors with longer prefixes d_2 < ... < d_L while the shortlist shrinks, e.g. 16 -> 2048 with
200 candidates, or the cascade 16 -> 32 -> 64 -> 128 -> 2048 with 800, 400, 200, 50, 10. The
official code loops over queries in Python and vector databases keep each prefix as a separate
vector; here the full vectors are stored once (float32, or float16 to halve memory; in memory or
memory-mapped from disk, :mod:`mrl.retrieval.store`), FAISS indexes only the shortlist prefix
(flat, HNSW or AdANNS-IVF, float or quantised, :mod:`mrl.retrieval.shortlist`), and each rerank
stage is one gather plus one batched product over a block of queries.

With ``metric="cosine"`` every stage L2-normalises the prefixes it compares (the paper's retrieval
normalises each truncated representation), so a stage score is the cosine of the two prefixes.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from mrl.artifacts import prepare_output
from mrl.errors import MRLError
from mrl.io import atomic_directory, load_npy, save_npy
from mrl.retrieval import index_format
from mrl.retrieval._vectors import check_k, check_labels, check_metric, check_vectors
from mrl.retrieval.costs import funnel_flops
from mrl.retrieval.shortlist import Shortlist, ShortlistSpec
from mrl.retrieval.store import DTYPES, STORES, VectorStore

if TYPE_CHECKING:
    from mrl.retrieval.tuning import FunnelTuner, IndexTuner

logger = logging.getLogger(__name__)

DEFAULT_SHORTLIST_LENGTH = 200  # the paper's 16 -> 2048 funnel reranks 200 candidates

Funnel = list[tuple[int, int]]


def parse_funnel(text: str) -> Funnel:
    """Parse ``"16:200,2048:10"`` into ``[(16, 200), (2048, 10)]`` (dim:shortlist_length pairs).

    Example:
        >>> parse_funnel("16:800, 32:400,2048:10")
        [(16, 800), (32, 400), (2048, 10)]
    """
    stages = []
    parts = str(text).split(",")
    if len(parts) > 1 and not all(part.strip() for part in parts):
        raise MRLError(f"funnel has an empty stage between or after its commas, got {text!r}")
    for part in parts:
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


def validate_funnel(
    funnel: Sequence[Sequence[int]], dim: int, shortlist_dim: int, n_database: int, k: int, rescore_first: bool = False
) -> Funnel:
    """Check a funnel against an index and a k; return it as a list of int pairs.

    Rules: stage 1 uses the index's ``shortlist_dim`` (FAISS holds only that prefix); dims strictly
    ascend and stay <= ``dim``, except that with ``rescore_first`` (a quantised shortlist) stage 2
    may re-score the shortlist in float on the same prefix; shortlist lengths never grow; the
    first is at most ``n_database`` and the last at least ``k``.

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
    steps = list(zip(dims, dims[1:]))
    if any(b <= a for a, b in steps[1:]) or (steps and (steps[0][1] < steps[0][0] if rescore_first else steps[0][1] <= steps[0][0])):
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


@dataclass(frozen=True)
class SearchStats:
    """What one :meth:`FunnelIndex.search` cost.

    Attributes:
        funnel: the stages run.
        n_queries: Q.
        seconds: wall-clock of the whole search; ms_per_query: the same per query, in ms.
        stage_seconds: wall-clock of each stage (stage 1 first).
        shortlist_distances: mean distance computations of stage 1 per query (N for flat).
        mean_shortlist_length: mean stage-1 candidates passed on per query (n_1 unless a
            ``shortlist_margin`` cut some).
        flops_per_query: theoretical cost (:func:`mrl.retrieval.costs.funnel_flops`) with the
            measured distances and shortlist length.
    """

    funnel: Funnel
    n_queries: int
    seconds: float
    ms_per_query: float
    stage_seconds: list[float]
    shortlist_distances: float
    mean_shortlist_length: float
    flops_per_query: float


class FunnelIndex:
    """Full vectors stored once plus a FAISS structure over their first ``shortlist_dim`` coordinates.

    Args:
        vectors: [N, D] float database vectors. Kept without a copy when already C-contiguous of
            the storage dtype (do not modify them afterwards).
        metric: ``"cosine"`` (each prefix L2-normalised), ``"ip"`` or ``"l2"`` (squared distance).
        shortlist_dim: prefix size d_1 indexed by FAISS.
        shortlist: ``"flat"`` (scan every prefix), ``"hnsw"`` (graph) or ``"ivf"`` (AdANNS-IVF).
        hnsw_m: HNSW graph degree M.
        ef_construction: HNSW build beam width.
        ef_search: HNSW search beam width (raised to the first shortlist length when smaller).
        dtype: storage of the full vectors, ``"float32"`` or ``"float16"``.
        labels: optional int [N] labels kept beside the vectors (for evaluation).
        progress: show a progress bar (stderr) while the shortlist is filled.
        encoding: the shortlist's codes: ``"float32"``, ``"float16"``, ``"int8"`` (SQ8),
            ``"binary"`` (sign bits, Hamming) or ``"pq"``.
        coarse_dim: ivf: prefix the lists are clustered and probed on (default ``shortlist_dim``).
        nlist: ivf: number of lists (default about 4 sqrt(N)). nprobe: ivf: lists probed by default.
        pq_m: pq: sub-quantisers (must divide ``shortlist_dim``). pq_nbits: bits per code. opq: OPQ rotation.
        seed: seed of the quantisers' training sample and k-means.

    See :class:`~mrl.retrieval.shortlist.ShortlistSpec` for the structures behind each choice.

    Attributes:
        funnel: the default funnel of :meth:`search` (set by :meth:`tune`), or None.
        spec: the resolved :class:`~mrl.retrieval.shortlist.ShortlistSpec`.
        store: ``"memory"`` or ``"mmap"`` (see :meth:`load`).
        build_seconds: wall-clock of building the shortlist structure.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> db = rng.standard_normal((500, 64)).astype(np.float32)
        >>> index = FunnelIndex(db, shortlist_dim=8)
        >>> scores, ids = index.search(db[:3], k=5, funnel=[(8, 50), (64, 5)])
        >>> ids[:, 0].tolist()
        [0, 1, 2]
        >>> _, _, stats = index.search(db[:3], k=5, funnel=[(8, 50), (64, 5)], return_stats=True)
        >>> stats.flops_per_query == 500 * 8 + 50 * 64
        True
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
        *,
        encoding: str = "float32",
        coarse_dim: int | None = None,
        nlist: int | None = None,
        nprobe: int = 16,
        pq_m: int | None = None,
        pq_nbits: int = 8,
        opq: bool = False,
        seed: int = 0,
    ) -> None:
        self.metric = check_metric(metric)
        if dtype not in DTYPES:
            raise MRLError(f"dtype must be one of {list(DTYPES)}, got {dtype!r}")
        vectors = check_vectors(vectors, "vectors")
        if isinstance(shortlist_dim, bool) or not isinstance(shortlist_dim, (int, np.integer)):
            raise MRLError(f"shortlist_dim must be an integer in [1, {vectors.shape[1]}], got {shortlist_dim!r}")
        spec = ShortlistSpec(
            kind=shortlist, encoding=encoding, dim=int(shortlist_dim), coarse_dim=coarse_dim, nlist=nlist, nprobe=nprobe,
            hnsw_m=hnsw_m, ef_construction=ef_construction, ef_search=ef_search, pq_m=pq_m, pq_nbits=pq_nbits, opq=opq,
        )
        spec.resolved(vectors.shape[0], vectors.shape[1], self.metric)  # every argument checked before any work
        labels = check_labels(labels, vectors.shape[0])
        self.funnel: Funnel | None = None
        self._store = VectorStore(np.ascontiguousarray(vectors, dtype=DTYPES[dtype]), "memory")
        self._labels = labels
        start = time.perf_counter()
        self._shortlist = Shortlist.build(self._store.array, spec, self.metric, seed=seed, progress=progress)
        self.build_seconds = time.perf_counter() - start
        self._shortlist_bytes: int | None = None

    def add(self, vectors: np.ndarray, labels: np.ndarray | None = None) -> None:
        """Append vectors [n, D] (and their labels when the index has labels); ids continue from ``ntotal``."""
        if self.store == "mmap":
            raise MRLError("a memory-mapped index is read-only; load it with store='memory' to add vectors")
        vectors = check_vectors(vectors, "vectors", dim=self.dim)
        if (labels is None) != (self._labels is None):
            raise MRLError("labels must be given to add() exactly when the index holds labels")
        labels = check_labels(labels, vectors.shape[0])
        self._shortlist.add(vectors)
        self._store.append(vectors)
        if labels is not None:
            self._labels = np.concatenate([self._labels, labels])
        self._shortlist_bytes = None

    # -- properties -------------------------------------------------------------------------------

    @property
    def spec(self) -> ShortlistSpec:
        return self._shortlist.spec

    @property
    def shortlist(self) -> str:
        """The shortlist kind: flat, hnsw or ivf."""
        return self.spec.kind

    @property
    def shortlist_dim(self) -> int:
        return self.spec.dim

    @property
    def encoding(self) -> str:
        return self.spec.encoding

    @property
    def hnsw_m(self) -> int:
        return self.spec.hnsw_m

    @property
    def ef_construction(self) -> int:
        return self.spec.ef_construction

    @property
    def ef_search(self) -> int:
        return self.spec.ef_search

    @property
    def dtype(self) -> str:
        return self._store.dtype

    @property
    def store(self) -> str:
        return self._store.store

    @property
    def ntotal(self) -> int:
        """Number of stored vectors N."""
        return int(self._store.array.shape[0])

    @property
    def dim(self) -> int:
        """Dimension D of the stored vectors."""
        return int(self._store.array.shape[1])

    @property
    def vectors(self) -> np.ndarray:
        """The stored full vectors [N, D] (read-only view; a memory map for the mmap store)."""
        view = self._store.array.view()
        view.flags.writeable = False
        return view

    @property
    def labels(self) -> np.ndarray | None:
        """The stored labels [N], or None."""
        return self._labels

    def shortlist_vectors(self) -> np.ndarray:
        """What the shortlist stores per id (:meth:`~mrl.retrieval.shortlist.Shortlist.stored`): sign bits or decoded prefixes."""
        return self._shortlist.stored()

    def memory_bytes(self) -> dict[str, int]:
        """Bytes held in RAM: full vectors (0 when memory-mapped), shortlist structure, total."""
        if self._shortlist_bytes is None:
            self._shortlist_bytes = self._shortlist.nbytes()
        vectors = self._store.ram_bytes()
        return {"vectors": vectors, "shortlist": self._shortlist_bytes, "total": vectors + self._shortlist_bytes}

    def describe(self) -> dict:
        """Sizes and settings: n, d, shortlist, RAM bytes per vector, build seconds, default funnel."""
        memory = self.memory_bytes()
        return {
            "n_vectors": self.ntotal, "dim": self.dim, "metric": self.metric, "dtype": self.dtype, "store": self.store,
            **{f"shortlist_{key}" if key in ("kind", "dim") else key: value for key, value in dataclasses.asdict(self.spec).items()},
            "ram_bytes_per_vector": memory["total"] / max(self.ntotal, 1),
            "shortlist_bytes_per_vector": memory["shortlist"] / max(self.ntotal, 1),
            "vector_bytes_per_vector": self.dim * np.dtype(self.dtype).itemsize,
            "build_seconds": self.build_seconds,
            "funnel": None if self.funnel is None else format_funnel(self.funnel),
        }

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

    def search(
        self,
        queries: np.ndarray,
        k: int = 10,
        funnel: Sequence[tuple[int, int]] | None = None,
        *,
        return_stats: bool = False,
        nprobe: int | None = None,
        ef_search: int | None = None,
        shortlist_margin: float | None = None,
    ) -> tuple[np.ndarray, np.ndarray] | tuple[np.ndarray, np.ndarray, SearchStats]:
        """Top-k of each query through the funnel.

        Args:
            queries: [Q, D] float queries.
            k: results per query, at most N and at most the last stage's shortlist length.
            funnel: [(d_1, n_1), ..., (d_L, n_L)]: the shortlist returns n_1 candidates by the
                d_1-prefix, stage i keeps the best n_i of the previous survivors by the d_i-prefix
                (with a quantised shortlist, stage 2 may re-score in float on d_1 itself).
                Default: :meth:`default_funnel`.
            return_stats: also return a :class:`SearchStats`.
            nprobe: ivf lists probed (default: the index's). ef_search: HNSW beam (default: the index's).
            shortlist_margin: adaptive shortlist depth: keep only the stage-1 candidates whose
                score is within this margin of the k-th best (at least k, at most n_1), so a query
                whose top k stand clear of the rest reranks fewer candidates.

        Returns:
            (scores, ids[, stats]): float32 [Q, k] best first (cosine or inner product of the last
            stage's float prefixes, descending; squared L2 distance, ascending, for ``"l2"``) and
            int64 [Q, k] ids (-1 where an approximate shortlist found fewer candidates).
        """
        queries = check_vectors(queries, "queries", dim=self.dim)
        k = check_k(k, self.ntotal)
        funnel = validate_funnel(self.default_funnel(k) if funnel is None else funnel, self.dim, self.shortlist_dim, self.ntotal, k,
                                 rescore_first=self.encoding != "float32")
        if shortlist_margin is not None and (isinstance(shortlist_margin, bool) or not isinstance(shortlist_margin, (int, float))
                                             or not shortlist_margin >= 0):
            raise MRLError(f"shortlist_margin must be a number >= 0, got {shortlist_margin!r}")
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        start = time.perf_counter()
        first_dim, first_length = funnel[0]
        scores, ids, distances = self._shortlist.search(queries, first_length, nprobe=nprobe, ef_search=ef_search)
        if shortlist_margin is not None:
            scores, ids = _margin_cut(scores, ids, k, float(shortlist_margin))
        mean_length = float((ids >= 0).sum(axis=1).mean()) if len(ids) else 0.0
        stage_seconds = [time.perf_counter() - start]
        stages = list(funnel[1:])
        if not stages and self.encoding != "float32":
            stages = [(first_dim, k)]  # return float scores, not the codes' approximations
        for stage_dim, length in stages:
            t = time.perf_counter()
            scores, ids = self._rerank(queries, ids, stage_dim, length)
            stage_seconds.append(time.perf_counter() - t)
        scores, ids = np.ascontiguousarray(scores[:, :k]), np.ascontiguousarray(ids[:, :k])
        if self.metric == "l2":
            scores = -scores
        if not return_stats:
            return scores, ids
        seconds = time.perf_counter() - start
        stats = SearchStats(
            funnel=funnel, n_queries=int(len(queries)), seconds=seconds, ms_per_query=1000.0 * seconds / max(len(queries), 1),
            stage_seconds=stage_seconds, shortlist_distances=distances, mean_shortlist_length=mean_length,
            flops_per_query=funnel_flops([(first_dim, mean_length), *funnel[1:]], self.ntotal, distances),
        )
        return scores, ids, stats

    def _rerank(self, queries: np.ndarray, ids: np.ndarray, dim: int, length: int) -> tuple[np.ndarray, np.ndarray]:
        """Keep the best ``length`` of the candidate ``ids`` [Q, K] by their float ``dim``-prefix scores."""
        scores = self._store.scores(np.ascontiguousarray(queries[:, :dim]), ids, dim, self.metric)
        top = torch.topk(torch.from_numpy(scores), min(length, ids.shape[1]), dim=1)
        out_scores = top.values.numpy()
        out_ids = np.take_along_axis(ids, top.indices.numpy(), axis=1)
        out_ids[~np.isfinite(out_scores)] = -1
        if out_ids.shape[1] < length:  # an adaptive cut left fewer candidates than this stage keeps
            pad = length - out_ids.shape[1]
            out_scores = np.pad(out_scores, ((0, 0), (0, pad)), constant_values=-np.inf)
            out_ids = np.pad(out_ids, ((0, 0), (0, pad)), constant_values=-1)
        return out_scores, out_ids

    def flops_per_query(self, funnel: Sequence[tuple[int, int]], shortlist_distances: float | None = None) -> float:
        """Theoretical FLOPs per query (:func:`mrl.retrieval.costs.funnel_flops`).

        A flat shortlist compares each query with all N prefixes. HNSW and ivf shortlists' cost is
        measured: pass ``shortlist_distances`` (``SearchStats.shortlist_distances`` of a search).
        """
        funnel = validate_funnel(funnel, self.dim, self.shortlist_dim, self.ntotal, 1, rescore_first=self.encoding != "float32")
        if shortlist_distances is None and self.shortlist != "flat":
            raise MRLError(f"an {self.shortlist} shortlist's cost is measured: pass shortlist_distances "
                           "(SearchStats.shortlist_distances from search(..., return_stats=True))")
        if shortlist_distances is not None and (isinstance(shortlist_distances, bool) or not isinstance(shortlist_distances, (int, float))
                                                or not 0 <= shortlist_distances < float("inf")):
            raise MRLError(f"shortlist_distances must be a finite number >= 0, got {shortlist_distances!r}")
        return funnel_flops(funnel, self.ntotal, shortlist_distances)

    def tune(
        self,
        sample_queries: np.ndarray,
        k: int = 10,
        target_recall: float = 0.99,
        candidates: Sequence[Sequence[tuple[int, int]]] | None = None,
        exact_ids: np.ndarray | None = None,
        *,
        shortlists: Sequence[ShortlistSpec] | None = None,
        max_ram_bytes_per_vector: float | None = None,
        max_ms_per_query: float | None = None,
        repeats: int = 1,
        objective: str = "ms",
        headroom: int = 0,
    ) -> FunnelTuner | IndexTuner:
        """Pick a funnel (and, given ``shortlists``, the stage-1 structure) meeting ``target_recall``.

        Without ``shortlists``: the cheapest funnel (``objective``: measured ``"ms"`` per query or
        theoretical ``"flops"``) whose kNN-recall@k against exact search meets the target, on
        this index's structure; returns the fitted
        :class:`~mrl.retrieval.tuning.FunnelTuner`. With ``shortlists`` (a list of
        :class:`~mrl.retrieval.shortlist.ShortlistSpec`): every structure is built over the
        stored vectors and searched with several nprobe / ef and funnels; the fastest point
        meeting the target within ``max_ram_bytes_per_vector`` and ``max_ms_per_query`` replaces
        this index's shortlist, and the fitted :class:`~mrl.retrieval.tuning.IndexTuner` (with its
        Pareto set) is returned. Either way :attr:`funnel` becomes the choice (used by
        :meth:`search` when no funnel is given, and saved by :meth:`save`). ``exact_ids`` [Q, >= k]
        may pass precomputed exact full-dim results for the sample; ``repeats`` timed runs per point;
        ``headroom`` grid steps to spare (the choice's next-shorter funnels meet the target too:
        :func:`~mrl.retrieval.tuning.holding_target`).
        """
        from mrl.retrieval.tuning import FunnelTuner, IndexTuner

        if shortlists is not None and objective != "ms":
            raise MRLError(f"objective {objective!r} applies without shortlists; structures are compared by measured ms/query")
        if shortlists is None:
            if max_ram_bytes_per_vector is not None or max_ms_per_query is not None:
                raise MRLError("budgets choose between structures: pass shortlists to tune with max_ram_bytes_per_vector or max_ms_per_query")
            tuner = FunnelTuner(k=k, target_recall=target_recall, candidates=candidates, repeats=repeats,
                                objective=objective, headroom=headroom).fit(self, sample_queries, exact_ids)
            self.funnel = list(tuner.best_funnel_)
            return tuner
        tuner = IndexTuner(k=k, target_recall=target_recall, shortlists=shortlists, max_ram_bytes_per_vector=max_ram_bytes_per_vector,
                           max_ms_per_query=max_ms_per_query, repeats=repeats, candidates=candidates,
                           headroom=headroom).fit(self, sample_queries, exact_ids)
        best, shortlist = tuner.best_, tuner.best_shortlist_
        breadth = {key: best[key] for key in ("nprobe", "ef_search") if best[key] is not None}
        shortlist.spec = dataclasses.replace(shortlist.spec, **breadth)
        self._shortlist, self._shortlist_bytes = shortlist, None
        self.build_seconds = best["build_seconds"]
        self.funnel = list(tuner.best_funnel_)
        return tuner

    # -- persistence ------------------------------------------------------------------------------

    def _fields(self) -> dict:
        spec = self.spec
        return {
            "n_vectors": self.ntotal, "dim": self.dim, "dtype": self.dtype, "metric": self.metric,
            "shortlist": spec.kind, "encoding": spec.encoding, "shortlist_dim": spec.dim, "coarse_dim": spec.coarse_dim,
            "nlist": spec.nlist, "nprobe": spec.nprobe, "hnsw_m": spec.hnsw_m, "ef_construction": spec.ef_construction,
            "ef_search": spec.ef_search, "pq_m": spec.pq_m, "pq_nbits": spec.pq_nbits, "opq": spec.opq,
            "mips_norm": self._shortlist.mips_norm, "funnel": None if self.funnel is None else [list(s) for s in self.funnel],
            "build_seconds": float(self.build_seconds), "has_labels": self._labels is not None,
        }

    def save(self, path: str | Path, overwrite: bool = False) -> Path:
        """Write the index to directory ``path`` atomically (built in a temp dir, then renamed).

        Files (:mod:`mrl.retrieval.index_format`): ``vectors.npy``, ``shortlist.faiss``,
        ``coarse.faiss`` (ivf), ``labels.npy`` (when labels exist) and ``manifest.json`` (settings,
        tuned funnel, sha256 of each file and of the manifest itself). ``overwrite`` replaces an
        existing index only (not a symbolic link, another artifact, a folder of other files, or an
        index holding files its manifest does not list); nothing inside another artifact is written.
        """
        fields = self._fields()
        # as the CLI's --overwrite: only an index is replaced, never a folder of other files or another artifact
        prepare_output(path, index_format.KIND, overwrite)
        with atomic_directory(path, overwrite=overwrite) as tmp:
            save_npy(tmp / index_format.VECTORS, self._store.array)
            self._shortlist.write(tmp / index_format.SHORTLIST, tmp / index_format.COARSE)
            if self._labels is not None:
                save_npy(tmp / index_format.LABELS, self._labels)
            index_format.write_manifest(tmp, fields)
        return Path(path)

    @classmethod
    def load(cls, path: str | Path, mmap: bool = False, store: str | None = None) -> FunnelIndex:
        """Read an index written by :meth:`save`, verifying the manifest and every file's sha256 first.

        Args:
            path: the index directory.
            mmap: shorthand for ``store="mmap"``.
            store: ``"memory"`` (read the full vectors) or ``"mmap"`` (map ``vectors.npy``
                read-only; rerank stages read only their candidates' rows).

        Raises:
            MRLError: missing or foreign directory, other format, edited manifest, missing, extra,
                linked or corrupt file, or contents that disagree with the manifest.
        """
        store = store or ("mmap" if mmap else "memory")
        if store not in STORES:
            raise MRLError(f"store must be one of {list(STORES)}, got {store!r}")
        path = Path(path)
        fields = index_format.read_manifest(path)
        vectors = load_npy(path / index_format.VECTORS, mmap=store == "mmap")
        expected = (fields["n_vectors"], fields["dim"])
        if vectors.shape != expected or vectors.dtype != DTYPES[fields["dtype"]] or not vectors.flags.c_contiguous:
            raise MRLError(f"{path}/{index_format.VECTORS} holds {vectors.dtype} {vectors.shape}, the manifest says {fields['dtype']} {expected}")
        check_vectors(vectors, f"{path}/{index_format.VECTORS}")  # what build and add() refuse, refused in a file too
        spec = ShortlistSpec(**{key: fields[key] for key in ("encoding", "coarse_dim", "nlist", "nprobe", "hnsw_m", "ef_construction",
                                                              "ef_search", "pq_m", "pq_nbits", "opq")},
                             kind=fields["shortlist"], dim=fields["shortlist_dim"])
        if spec.resolved(fields["n_vectors"], fields["dim"], fields["metric"]) != spec:
            raise MRLError(f"{path}/{index_format.MANIFEST} holds incomplete shortlist settings")
        shortlist = Shortlist.read(spec, fields["metric"], path / index_format.SHORTLIST, path / index_format.COARSE, fields["mips_norm"])
        shortlist.check_loaded(fields["n_vectors"])
        if (fields["mips_norm"] is not None) != (spec.kind == "hnsw" and fields["metric"] == "ip" and spec.encoding != "binary"):
            raise MRLError(f"{path}/{index_format.MANIFEST} has a mips_norm that does not fit its shortlist")
        labels = load_npy(path / index_format.LABELS) if fields["has_labels"] else None
        self = cls.__new__(cls)
        self.metric = fields["metric"]
        self.funnel = None
        if fields["funnel"] is not None:
            self.funnel = validate_funnel(fields["funnel"], fields["dim"], spec.dim, fields["n_vectors"], 1,
                                          rescore_first=spec.encoding != "float32")
        self.build_seconds = float(fields["build_seconds"])
        self._store = VectorStore(vectors, store)
        self._shortlist, self._shortlist_bytes = shortlist, None
        self._labels = check_labels(labels, vectors.shape[0])
        return self

    def __repr__(self) -> str:
        return (
            f"FunnelIndex(ntotal={self.ntotal}, dim={self.dim}, metric={self.metric!r}, shortlist_dim={self.shortlist_dim}, "
            f"shortlist={self.shortlist!r}, encoding={self.encoding!r}, dtype={self.dtype!r}, store={self.store!r})"
        )


def _margin_cut(scores: np.ndarray, ids: np.ndarray, k: int, margin: float) -> tuple[np.ndarray, np.ndarray]:
    """Drop stage-1 candidates scoring below (k-th best - margin); columns no query keeps are trimmed.

    Scores [Q, n_1] arrive best first, so each query's kept candidates are a prefix of its row.
    """
    keep = scores >= (scores[:, k - 1 : k].astype(np.float64) - margin)  # float64: a huge margin must not overflow float32
    keep[:, :k] = True
    width = max(k, int(keep.sum(axis=1).max())) if len(keep) else k
    ids = np.where(keep, ids, -1)[:, :width]
    return np.where(keep, scores, -np.inf)[:, :width], ids
