"""The funnel's first stage: a FAISS structure over a short prefix z[:d_1] of every database vector.

MRL's adaptive retrieval (Kusupati et al., NeurIPS 2022, section 4.3) shortlists with a low-dim
prefix; AdANNS (Rege et al., NeurIPS 2023) decouples the prefix that builds the search structure
from the one that scores candidates. A :class:`ShortlistSpec` picks

- ``kind``: ``flat`` (scan everything), ``hnsw`` (graph) or ``ivf`` (inverted lists, AdANNS-IVF:
  k-means clusters learned on a ``coarse_dim`` prefix, candidates in the ``nprobe`` probed lists
  scored on the ``dim`` prefix);
- ``encoding`` of the prefix: ``float32`` (exact), ``float16`` or ``int8`` (FAISS scalar
  quantiser, SQfp16 / SQ8), ``binary`` (sign bits compared by Hamming distance, FAISS
  IndexBinary*) or ``pq`` (product quantiser with ``pq_m`` sub-quantisers, optionally rotated by OPQ).

Every structure is FAISS's own (IndexFlat, IndexScalarQuantizer, IndexPQ, IndexHNSW*, IndexIVF*,
IndexBinaryFlat / HNSW / IVF); this module only chooses, builds and queries them.

HNSW graphs are always built with L2 distances: inner-product "distances" are not a metric and
the graph then misses neighbours (measured: shortlist recall 0.41 at 200 on 20k x 256 where
cosine reaches ~1.0; quantised codes of unit prefixes are not unit vectors either). For cosine the
prefixes are unit vectors, so |q - x|^2 = 2 - 2 cos orders them the same way. For metric ``"ip"``
the graph is built on the standard MIPS-to-L2 reduction
(Bachrach et al., RecSys 2014): x' = [x, sqrt(M^2 - |x|^2)], q' = [q, 0] with M the largest
database norm, so |q' - x'|^2 = |q|^2 + M^2 - 2 q.x orders candidates exactly by q.x. The
reduced points crowd near the extra axis while a query's neighbours lie away from it, so the
graph needs a wider beam: the search beam is at least 4 times the shortlist length there
(measured on 20k x 256 MRL-like vectors, 16-dim prefix, 200 candidates: recall 0.967 at beam 200,
0.998 at 800 against 0.997 for cosine at 200, about 1.7 times the distance computations; with
norms spread log-normally with sigma 0.5 it reaches 0.96 at 800, so prefer cosine there).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np
from faiss.contrib import ivf_tools
from tqdm import tqdm

from mrl.errors import MRLError
from mrl.io import atomic_file
from mrl.retrieval._vectors import faiss_metric, prefix

KINDS = ("flat", "hnsw", "ivf")
ENCODINGS = ("float32", "float16", "int8", "binary", "pq")
_SQ_TYPES = {"float16": faiss.ScalarQuantizer.QT_fp16, "int8": faiss.ScalarQuantizer.QT_8bit}
_BLOCK = 65536  # rows per block while encoding, bounding the float32 prefix copy
_OPQ_TRAIN_ROWS = 16384  # rows the OPQ rotation is learned on (see _new_index)
_MIPS_BEAM = 4  # HNSW beam per shortlisted candidate under the MIPS reduction (see the module docstring)
# Exact inner-product scans of prefixes shorter than this many dims go through numpy's matrix
# product and FAISS's heaps instead of IndexFlat.search: the OpenBLAS that faiss-cpu 1.15 bundles
# (0.3.15) runs sgemm with an inner dimension below 128 2-5 times slower than numpy's (0.3.31)
# on the 2-core AMD EPYC of our benchmarks (116,359 rows, 1,000 queries, k 10-200), and from 128
# dims on the two are within 12% (benchmarks/flat_scan.py prints both on any machine). The paper's
# 16-dim shortlist is such a scan.
_GEMM_SCAN_BELOW_DIM = 128
_SCAN_BLOCK_FLOATS = 1 << 20  # scores per (query block x database block) product: 4 MiB, cache-sized
_MAX_OPQ_NITER = 10_000  # OPQ rounds (FAISS's default is 50); FAISS stores them in a C int
MAX_EF_SEARCH = 1 << 20  # HNSW beams (build and search), as `mrl index build/search --ef-*` bound them


@dataclass(frozen=True)
class ShortlistSpec:
    """How stage 1 is built. Defaults reproduce the paper's exact 16-dim shortlist.

    Attributes:
        kind: ``"flat"``, ``"hnsw"`` or ``"ivf"``.
        encoding: ``"float32"``, ``"float16"``, ``"int8"``, ``"binary"`` or ``"pq"``.
        dim: prefix d_1 the candidates are scored on.
        coarse_dim: IVF only: prefix the k-means clusters are learned and probed on (default ``dim``;
            AdANNS-IVF uses a different one).
        nlist: IVF only: number of lists (default about 4 sqrt(N), at most N).
        nprobe: IVF only: lists probed per query unless :meth:`Shortlist.search` is told otherwise.
        hnsw_m: HNSW graph degree M.
        ef_construction: HNSW build beam width.
        ef_search: HNSW search beam width (raised to the shortlist length when smaller).
        pq_m: PQ only: sub-quantisers; must divide ``dim`` (default ``dim // 2``, 2 dims per byte at 8 bits).
        pq_nbits: PQ only: bits per sub-quantiser code.
        opq: PQ only: learn an OPQ rotation before the product quantiser (flat and hnsw kinds).
        opq_niter: OPQ only: rotation-learning rounds (None: FAISS's 50). A training setting, not
            part of the built structure: it is not saved and two specs differing only here are equal.
    """

    kind: str = "flat"
    encoding: str = "float32"
    dim: int = 16
    coarse_dim: int | None = None
    nlist: int | None = None
    nprobe: int = 16
    hnsw_m: int = 32
    ef_construction: int = 80
    ef_search: int = 128
    pq_m: int | None = None
    pq_nbits: int = 8
    opq: bool = False
    opq_niter: int | None = dataclasses.field(default=None, compare=False)

    def resolved(self, n_database: int, full_dim: int, metric: str) -> ShortlistSpec:
        """This spec with defaults filled in, after checking it against the data; raises MRLError."""
        if self.kind not in KINDS:
            raise MRLError(f"shortlist must be one of {list(KINDS)}, got {self.kind!r}")
        if self.encoding not in ENCODINGS:
            raise MRLError(f"encoding must be one of {list(ENCODINGS)}, got {self.encoding!r}")
        for name in ("dim", "nprobe", "hnsw_m", "ef_construction", "ef_search", "pq_nbits"):
            _check_positive_int(name, getattr(self, name))
        if not 2 <= self.hnsw_m <= 1024:  # as `mrl index build --hnsw-m` bounds it: a huge M is a huge allocation
            raise MRLError(f"hnsw_m must be an integer in [2, 1024], got {self.hnsw_m!r}")
        for name in ("ef_construction", "ef_search"):
            if getattr(self, name) > MAX_EF_SEARCH:
                raise MRLError(f"{name} must be at most {MAX_EF_SEARCH}, got {getattr(self, name)!r}")
        if not 1 <= self.dim <= full_dim:
            raise MRLError(f"shortlist_dim must be an integer in [1, {full_dim}], got {self.dim!r}")
        if not isinstance(self.opq, bool):
            raise MRLError(f"opq must be True or False, got {self.opq!r}")
        changes: dict = {}
        if self.kind == "ivf":
            coarse_dim = self.dim if self.coarse_dim is None else self.coarse_dim
            _check_positive_int("coarse_dim", coarse_dim)
            if coarse_dim > full_dim:
                raise MRLError(f"coarse_dim {coarse_dim} is larger than the vectors' dimension {full_dim}")
            nlist = min(n_database, max(1, int(4 * np.sqrt(n_database)))) if self.nlist is None else self.nlist
            _check_positive_int("nlist", nlist)
            if nlist > n_database:
                raise MRLError(f"nlist={nlist} is larger than the database ({n_database} vectors); k-means needs at least one vector per list")
            changes.update(coarse_dim=coarse_dim, nlist=nlist)
        elif self.coarse_dim is not None or self.nlist is not None:
            raise MRLError(f"coarse_dim and nlist apply to the ivf shortlist only, not {self.kind!r}")
        if self.encoding == "binary" and self.dim % 8:
            raise MRLError(f"binary encoding packs 8 sign bits per byte: shortlist_dim must be a multiple of 8, got {self.dim}")
        if self.encoding == "pq":
            pq_m = max(1, self.dim // 2) if self.pq_m is None else self.pq_m
            _check_positive_int("pq_m", pq_m)
            if self.dim % pq_m:
                raise MRLError(f"pq_m={pq_m} sub-quantisers do not divide the shortlist prefix of {self.dim} dims")
            if self.pq_nbits > 16:
                raise MRLError(f"pq_nbits must be at most 16, got {self.pq_nbits}")
            if n_database < 2**self.pq_nbits:
                raise MRLError(f"pq_nbits={self.pq_nbits} needs at least {2**self.pq_nbits} vectors to train, the database has {n_database}")
            if self.opq and self.kind == "ivf":
                raise MRLError("opq applies to the flat and hnsw shortlists; for ivf use pq without opq")
            if self.kind == "hnsw" and metric == "ip":
                raise MRLError("an hnsw shortlist with pq encoding cannot take metric 'ip' (the MIPS reduction adds a "
                               "coordinate pq_m would have to divide); use cosine, l2, or the flat or ivf kind")
            changes["pq_m"] = pq_m
        elif self.pq_m is not None or self.opq:
            raise MRLError(f"pq_m and opq apply to the pq encoding only, not {self.encoding!r}")
        if self.opq_niter is not None:
            _check_positive_int("opq_niter", self.opq_niter)
            if self.opq_niter > _MAX_OPQ_NITER:
                raise MRLError(f"opq_niter must be at most {_MAX_OPQ_NITER}, got {self.opq_niter!r}")
            if not self.opq:
                raise MRLError("opq_niter applies to an OPQ rotation only (opq=True)")
        return dataclasses.replace(self, **changes)


def _check_positive_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise MRLError(f"{name} must be a positive integer, got {value!r}")


def faiss_nbytes(index: faiss.Index | faiss.IndexBinary) -> int:
    """Bytes of a FAISS index (codes, ids, graph, centroids, codebooks) counted as FAISS streams it,
    without building the serialised copy: the measure of RAM for mrl's shortlists and, in
    benchmarks/pareto.py, for FAISS's own indexes alike."""
    total = 0

    def count(chunk: bytes) -> None:
        nonlocal total
        total += len(chunk)

    write = faiss.write_index_binary if isinstance(index, faiss.IndexBinary) else faiss.write_index
    write(index, faiss.PyCallbackIOWriter(count))
    return total


def sign_bits(prefixes: np.ndarray) -> np.ndarray:
    """Binary codes uint8 [n, d/8] of float prefixes [n, d]: bit j is 1 where coordinate j > 0.

    Example:
        >>> sign_bits(np.array([[1.0, -2.0, 0.5, 0.0, 3.0, -1.0, -1.0, 2.0]], dtype=np.float32)).tolist()
        [[149]]
    """
    return np.packbits(prefixes > 0, axis=1, bitorder="little")


class Shortlist:
    """A built stage-1 structure; use :meth:`build` or :meth:`from_bytes`.

    Attributes:
        spec: the resolved :class:`ShortlistSpec`.
        metric: ``"cosine"``, ``"ip"`` or ``"l2"``.
        mips_norm: M of the MIPS-to-L2 reduction (HNSW with metric ``"ip"``), else None.
    """

    def __init__(self, spec: ShortlistSpec, metric: str, index: object, coarse: faiss.Index | None, mips_norm: float | None) -> None:
        self.spec, self.metric, self.mips_norm = spec, metric, mips_norm
        self._index, self._coarse = index, coarse
        # ivf: the list sizes, read from FAISS once (a Python loop over nlist lists cost ~0.3 ms
        # per call, more than a one-query search itself); add() forgets them.
        self._list_sizes: np.ndarray | None = None

    # -- building ---------------------------------------------------------------------------------

    @classmethod
    def build(cls, vectors: np.ndarray, spec: ShortlistSpec, metric: str, train_size: int = 100_000, seed: int = 0,
              progress: bool = False) -> Shortlist:
        """Train and fill the structure over ``vectors`` [N, D] (any float dtype, memory-mapped is fine).

        Quantisers (SQ8, PQ, OPQ, k-means) are trained on at most ``train_size`` rows drawn with
        ``seed``; ``progress`` shows a bar while the structure is filled.
        """
        spec = spec.resolved(vectors.shape[0], vectors.shape[1], metric)
        n = vectors.shape[0]
        rows = np.sort(np.random.default_rng(seed).choice(n, train_size, replace=False)) if n > train_size else slice(None)
        mips_norm = None
        if spec.kind == "hnsw" and metric == "ip" and spec.encoding != "binary":
            mips_norm = float(max(np.sqrt(np.max(np.einsum("nd,nd->n", p, p))) for p in _prefix_blocks(vectors, spec.dim, metric)))
        self = cls(spec, metric, None, None, mips_norm)
        train = self._encode_input(prefix(vectors[rows], spec.dim, metric))
        if spec.kind == "ivf":
            self._build_ivf(vectors, rows, train, seed, progress)
        else:
            self._index = self._new_index()
            if not self._index.is_trained:
                self._index.train(train)
            self.add(vectors, progress=progress)
        return self

    def _new_index(self) -> object:
        spec, d = self.spec, self.spec.dim
        metric = faiss.METRIC_L2 if spec.kind == "hnsw" else faiss_metric(self.metric)
        if self.mips_norm is not None:
            d += 1
        if spec.encoding == "binary":
            return faiss.IndexBinaryFlat(d) if spec.kind == "flat" else _hnsw_params(faiss.IndexBinaryHNSW(d, spec.hnsw_m), spec)
        if spec.kind == "flat":
            if spec.encoding == "float32":
                return faiss.IndexFlat(d, metric)
            if spec.encoding == "pq":
                index = faiss.IndexPQ(d, spec.pq_m, spec.pq_nbits, metric)
            else:
                return faiss.IndexScalarQuantizer(d, _SQ_TYPES[spec.encoding], metric)
        elif spec.encoding == "float32":
            return _hnsw_params(faiss.IndexHNSWFlat(d, spec.hnsw_m, metric), spec)
        elif spec.encoding == "pq":
            index = _hnsw_params(faiss.IndexHNSWPQ(d, spec.pq_m, spec.hnsw_m, spec.pq_nbits, metric), spec)
        else:
            return _hnsw_params(faiss.IndexHNSWSQ(d, _SQ_TYPES[spec.encoding], spec.hnsw_m, metric), spec)
        if spec.opq:
            rotation = faiss.OPQMatrix(d, spec.pq_m)
            # Each round retrains the product quantiser: FAISS's 50 rounds on its 65,536-row cap
            # took 431 s for a 64-dim prefix of 55,000 vectors on one core, 79 s with 10 rounds on
            # 16,384 rows. The PQ codebooks themselves still train on the whole training sample.
            rotation.max_train_points = _OPQ_TRAIN_ROWS
            if spec.opq_niter is not None:
                rotation.niter = spec.opq_niter
            index = faiss.IndexPreTransform(rotation, index)
        return index

    def _build_ivf(self, vectors: np.ndarray, rows: np.ndarray | slice, train: np.ndarray, seed: int, progress: bool) -> None:
        """AdANNS-IVF: k-means on the coarse prefix; lists assigned there, stored on the shortlist prefix."""
        spec, metric = self.spec, self.metric
        coarse_train = prefix(vectors[rows], spec.coarse_dim, metric)
        kmeans = faiss.Kmeans(spec.coarse_dim, spec.nlist, niter=20, seed=seed, spherical=metric != "l2", min_points_per_centroid=1)
        kmeans.train(coarse_train)
        self._coarse = faiss.IndexFlat(spec.coarse_dim, faiss_metric(metric))
        self._coarse.add(kmeans.centroids)
        assign = np.concatenate([self._coarse.search(block, 1)[1][:, 0] for block in _prefix_blocks(vectors, spec.coarse_dim, metric)])
        # The IVF's own quantiser lives in the shortlist space: list l's centroid is the mean
        # d_1-prefix of its members, the reference residual codes (SQ, PQ) are taken against.
        sums = np.zeros((spec.nlist, spec.dim), dtype=np.float64)
        for start, block in zip(range(0, vectors.shape[0], _BLOCK), _prefix_blocks(vectors, spec.dim, metric)):
            np.add.at(sums, assign[start : start + len(block)], block)
        counts = np.bincount(assign, minlength=spec.nlist).clip(min=1)
        centroids = (sums / counts[:, None]).astype(np.float32)
        index, quantizer = self._new_ivf()
        if spec.encoding == "binary":
            quantizer.add(sign_bits(centroids))
            index.is_trained = True
        else:
            quantizer.add(centroids)
            index.train(train)  # the quantiser already holds nlist centroids: only the codec is trained
        index.own_fields = True
        quantizer.this.disown()
        self._index = index
        self.add(vectors, assign, progress)

    def _new_ivf(self) -> tuple[object, object]:
        """An empty ivf structure of this spec and its (empty) quantiser over the shortlist prefix,
        which the caller keeps alive until the structure owns it."""
        spec, metric = self.spec, faiss_metric(self.metric)
        if spec.encoding == "binary":
            quantizer = faiss.IndexBinaryFlat(spec.dim)
            return faiss.IndexBinaryIVF(quantizer, spec.dim, spec.nlist), quantizer
        quantizer = faiss.IndexFlat(spec.dim, metric)
        if spec.encoding == "float32":
            return faiss.IndexIVFFlat(quantizer, spec.dim, spec.nlist, metric), quantizer
        if spec.encoding == "pq":
            return faiss.IndexIVFPQ(quantizer, spec.dim, spec.nlist, spec.pq_m, spec.pq_nbits, metric), quantizer
        return faiss.IndexIVFScalarQuantizer(quantizer, spec.dim, spec.nlist, _SQ_TYPES[spec.encoding], metric), quantizer

    def _encode_input(self, block: np.ndarray) -> np.ndarray:
        """What the FAISS structure takes for a float32 prefix block [n, d_1]: sign bits, the MIPS-augmented rows or the block."""
        if self.spec.encoding == "binary":
            return sign_bits(block)
        if self.mips_norm is not None:
            extra = np.sqrt(np.maximum(self.mips_norm**2 - np.einsum("nd,nd->n", block, block), 0.0))
            return np.ascontiguousarray(np.concatenate([block, extra[:, None]], axis=1), dtype=np.float32)
        return block

    def add(self, vectors: np.ndarray, assign: np.ndarray | None = None, progress: bool = False) -> None:
        """Append ``vectors`` [n, D] (ids continue from the current count).

        ``assign`` int64 [n] may pass the ivf lists already computed on the coarse prefix.
        """
        spec = self.spec
        self._list_sizes = None
        if self.mips_norm is not None:
            for block in _prefix_blocks(vectors, spec.dim, self.metric):
                if np.einsum("nd,nd->n", block, block).max() > self.mips_norm**2 * (1 + 1e-6):
                    raise MRLError("a new vector's prefix is longer than every indexed one: the inner-product HNSW "
                                   "reduction needs the largest norm at build time; rebuild the index")
        blocks = zip(range(0, vectors.shape[0], _BLOCK), _prefix_blocks(vectors, spec.dim, self.metric))
        total = -(-vectors.shape[0] // _BLOCK)
        for start, block in tqdm(blocks, total=total, desc=f"indexing {spec.dim}-dim prefixes", unit="block", disable=not progress):
            codes = self._encode_input(block)
            if spec.kind != "ivf":
                self._index.add(codes)
                continue
            if assign is None:
                lists = self._coarse.search(prefix(vectors[start : start + _BLOCK], spec.coarse_dim, self.metric), 1)[1][:, 0]
            else:
                lists = assign[start : start + len(block)]
            ivf_tools.add_preassigned(self._index, codes, np.ascontiguousarray(lists, dtype=np.int64))

    # -- searching --------------------------------------------------------------------------------

    def search(self, queries: np.ndarray, length: int, nprobe: int | None = None, ef_search: int | None = None) -> tuple[np.ndarray, np.ndarray, float]:
        """Stage 1 for float32 queries [Q, D].

        Returns:
            (scores, ids, distances): float32 [Q, length] larger-is-better scores of the structure
            (approximate for quantised encodings; minus the Hamming distance for binary; minus the
            squared distance for l2), int64 [Q, length] ids best first (-1 where fewer were found),
            and the mean number of distance computations per query.
        """
        spec, n_queries = self.spec, len(queries)
        if nprobe is not None:
            _check_positive_int("nprobe", nprobe)
        if ef_search is not None:
            _check_positive_int("ef_search", ef_search)
            if ef_search > MAX_EF_SEARCH:
                raise MRLError(f"ef_search must be at most {MAX_EF_SEARCH}, got {ef_search!r}")
        q = prefix(queries, spec.dim, self.metric)
        codes = self._query_input(q)
        if spec.kind == "flat":
            if self._gemm_scan():
                scores, ids = _inner_product_scan(codes, self._flat_table(), length)
            else:
                scores, ids = self._index.search(codes, length)
            distances = float(self.ntotal)
        elif spec.kind == "hnsw":
            beam = length * (_MIPS_BEAM if self.mips_norm is not None else 1)
            params = faiss.SearchParametersHNSW(efSearch=max(spec.ef_search if ef_search is None else int(ef_search), beam))
            faiss.cvar.hnsw_stats.reset()
            scores, ids = self._index.search(codes, length, params=params)
            distances = faiss.cvar.hnsw_stats.ndis / max(n_queries, 1)
        else:
            nprobe = min(spec.nprobe if nprobe is None else int(nprobe), spec.nlist)
            _, lists = self._coarse.search(prefix(queries, spec.coarse_dim, self.metric), nprobe)
            scores, ids = self._search_lists(codes, length, lists, self._coarse_distances(q, lists))
            if self._list_sizes is None:
                self._list_sizes = np.array([self._index.invlists.list_size(int(l)) for l in range(spec.nlist)])
            distances = float(spec.nlist + self._list_sizes[lists].sum() / max(n_queries, 1))
        scores = np.asarray(scores, dtype=np.float32)
        if spec.encoding == "binary" or self.metric == "l2" or spec.kind == "hnsw":
            if self.mips_norm is not None:  # back from |q' - x'|^2 to the inner product q.x
                scores = (np.einsum("qd,qd->q", q, q)[:, None] + self.mips_norm**2 - scores) / 2
            elif spec.kind == "hnsw" and self.metric == "cosine" and spec.encoding != "binary":
                scores = 1 - scores / 2  # unit prefixes: |q - x|^2 = 2 - 2 cos
            else:
                scores = -scores
            scores = np.where(ids >= 0, scores, -np.inf).astype(np.float32)
        return scores, ids, distances

    def _gemm_scan(self) -> bool:
        return (self.spec.encoding == "float32" and self.spec.dim < _GEMM_SCAN_BELOW_DIM and isinstance(self._index, faiss.IndexFlat)
                and self._index.metric_type == faiss.METRIC_INNER_PRODUCT)

    def _flat_table(self) -> np.ndarray:
        """The float32 prefixes [N, d_1] an IndexFlat holds, viewed without a copy (valid until the next add)."""
        return faiss.rev_swig_ptr(self._index.get_xb(), self.ntotal * self._index.d).reshape(self.ntotal, self._index.d)

    def _query_input(self, q: np.ndarray) -> np.ndarray:
        if self.spec.encoding == "binary":
            return sign_bits(q)
        if self.mips_norm is not None:
            return np.ascontiguousarray(np.concatenate([q, np.zeros((len(q), 1), np.float32)], axis=1))
        return q

    def _search_lists(self, codes: np.ndarray, length: int, lists: np.ndarray, coarse_dis: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """FAISS's IndexIVF::search_preassigned with nprobe passed per call, so the index is never mutated."""
        n_queries, nprobe = lists.shape
        binary = self.spec.encoding == "binary"
        scores = np.empty((n_queries, length), dtype=np.int32 if binary else np.float32)
        ids = np.empty((n_queries, length), dtype=np.int64)
        lists = np.ascontiguousarray(lists, dtype=np.int64)
        params = faiss.SearchParametersIVF(nprobe=nprobe)
        self._index.search_preassigned_c(
            n_queries, faiss.swig_ptr(codes), length, faiss.swig_ptr(lists), faiss.swig_ptr(coarse_dis),
            faiss.swig_ptr(scores), faiss.swig_ptr(ids), False, params,
        )
        return scores, ids

    def _coarse_distances(self, q: np.ndarray, lists: np.ndarray) -> np.ndarray:
        """Query-to-centroid scores [Q, nprobe] in the shortlist space, which residual codes add back
        (inner products, or squared distances for l2), computed by the IVF's own quantiser for the
        probed lists only: no second copy of the centroids is held."""
        if self.spec.encoding == "binary":
            return np.zeros(lists.shape, dtype=np.int32)
        n_queries, nprobe = lists.shape
        q, lists = np.ascontiguousarray(q, dtype=np.float32), np.ascontiguousarray(lists, dtype=np.int64)
        if lists.size and not 0 <= lists.min() <= lists.max() < self.spec.nlist:  # FAISS would read outside its table
            raise MRLError(f"probed list ids must lie in [0, {self.spec.nlist}), got {lists.min()}..{lists.max()}")
        out = np.empty((n_queries, nprobe), dtype=np.float32)
        faiss.downcast_index(self._index.quantizer).compute_distance_subset(
            n_queries, faiss.swig_ptr(q), nprobe, faiss.swig_ptr(out), faiss.swig_ptr(lists))
        return out

    # -- properties and persistence ----------------------------------------------------------------

    @property
    def ntotal(self) -> int:
        return int(self._index.ntotal)

    def stored(self) -> np.ndarray:
        """What the structure holds for each id, in id order: sign-bit codes uint8 [N, d_1/8] for
        binary, else the decoded prefixes float32 [N, d_1] it scores (d_1 + 1 columns with the MIPS reduction)."""
        if self.spec.kind == "ivf":
            self._index.make_direct_map()
        return self._index.reconstruct_n(0, self.ntotal)

    def write(self, shortlist_path: Path, coarse_path: Path) -> None:
        """Write the FAISS structure to ``shortlist_path`` and, for ivf, the coarse quantiser to
        ``coarse_path``: atomic files streamed by FAISS, so no serialised copy is built in memory."""
        write = faiss.write_index_binary if self.spec.encoding == "binary" else faiss.write_index
        with atomic_file(shortlist_path) as tmp:
            write(self._index, str(tmp))
        if self._coarse is not None:
            with atomic_file(coarse_path) as tmp:
                faiss.write_index(self._coarse, str(tmp))

    @classmethod
    def read(cls, spec: ShortlistSpec, metric: str, shortlist_path: Path, coarse_path: Path, mips_norm: float | None) -> Shortlist:
        """Inverse of :meth:`write` for an already resolved ``spec`` (the caller has verified the files' checksums)."""
        read = faiss.read_index_binary if spec.encoding == "binary" else faiss.read_index
        try:
            index = read(str(shortlist_path))
            coarse = faiss.read_index(str(coarse_path)) if spec.kind == "ivf" else None
        except RuntimeError as exc:  # FAISS refuses a file it cannot parse
            raise MRLError(f"{shortlist_path.parent} holds a FAISS file that cannot be read ({str(exc).strip().splitlines()[0]})") from None
        return cls(spec, metric, index, coarse, mips_norm)

    def nbytes(self) -> int:
        """Bytes the structures occupy in memory (their serialised size: codes, graph, lists, codebooks);
        see :func:`faiss_nbytes`."""
        return faiss_nbytes(self._index) + (faiss_nbytes(self._coarse) if self._coarse is not None else 0)

    def check_loaded(self, n_database: int) -> None:
        """Raise MRLError when the deserialised structures disagree with the spec (a foreign or stale file)."""
        spec = self.spec
        width = spec.dim + (1 if self.mips_norm is not None else 0)
        expected = faiss.IndexBinary if spec.encoding == "binary" else faiss.Index
        if not isinstance(self._index, expected) or self._index.d != width or self.ntotal != n_database:
            raise MRLError(f"the stored shortlist holds {self.ntotal} vectors of {self._index.d} dims, the manifest says {n_database} of {width}")
        if spec.kind == "ivf" and (self._coarse is None or self._coarse.d != spec.coarse_dim or self._coarse.ntotal != spec.nlist
                                   or getattr(self._index, "nlist", None) != spec.nlist):
            raise MRLError(f"the stored coarse quantiser does not hold {spec.nlist} centroids of {spec.coarse_dim} dims")
        if spec.kind == "ivf" and self._coarse.metric_type != faiss_metric(self.metric):
            raise MRLError(f"the stored coarse quantiser does not compare by the manifest's metric {self.metric!r}")
        empty = self._new_ivf() if spec.kind == "ivf" else (self._new_index(),)  # the quantiser kept alive while compared
        found, expected = _signature(self._index), _signature(empty[0])
        if found != expected:
            raise MRLError(f"the stored shortlist is a {found[0]} structure, not the {spec.kind} {spec.encoding} one its manifest "
                           f"describes ({expected[0]}); the manifest and its files do not belong together")


def _signature(index: object) -> tuple:
    """What distinguishes one built structure from another of a different spec: the class of each
    layer (an OPQ transform and its index, an HNSW graph and its storage), dims, metric, code size,
    list count and graph degree; not the data."""
    index = faiss.downcast_IndexBinary(index) if isinstance(index, faiss.IndexBinary) else faiss.downcast_index(index)
    name = type(index).__name__
    parts: list = ["IndexFlat" if name in ("IndexFlatIP", "IndexFlatL2") else name]  # the metric is compared below
    for attr in ("d", "metric_type", "code_size", "nlist"):
        value = getattr(index, attr, None)
        if isinstance(value, (int, np.integer)):
            parts.append((attr, int(value)))
    if hasattr(index, "hnsw"):
        parts.append(("hnsw_level0_neighbours", int(index.hnsw.nb_neighbors(0))))
    for inner in ("storage", "index"):  # IndexHNSW*'s codes, IndexPreTransform's wrapped index
        if getattr(index, inner, None) is not None and not isinstance(getattr(index, inner), (int, float)):
            parts.append((inner, _signature(getattr(index, inner))))
    return tuple(parts)


def _hnsw_params(index: object, spec: ShortlistSpec) -> object:
    index.hnsw.efConstruction = spec.ef_construction
    return index


def _inner_product_scan(queries: np.ndarray, table: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k inner products of queries [Q, d] with every row of table [N, d] (k <= N).

    What IndexFlatIP.search returns (float32 scores [Q, k] best first, int64 ids [Q, k]; tied
    scores may order differently), computed by numpy's matrix product block by block and kept in
    FAISS's min-heaps, so no [Q, N] score matrix is ever built.
    """
    n_queries, n_rows = len(queries), table.shape[0]
    scores = np.empty((n_queries, k), dtype=np.float32)
    ids = np.empty((n_queries, k), dtype=np.int64)
    query_block = max(1, min(n_queries, 1024))
    row_block = max(1024, _SCAN_BLOCK_FLOATS // query_block)
    for q_start in range(0, n_queries, query_block):
        block = queries[q_start : q_start + query_block]
        heaps = faiss.float_minheap_array_t()
        heaps.k, heaps.nh = k, len(block)
        block_scores, block_ids = scores[q_start : q_start + len(block)], ids[q_start : q_start + len(block)]
        heaps.val, heaps.ids = faiss.swig_ptr(block_scores), faiss.swig_ptr(block_ids)
        heaps.heapify()
        for start in range(0, n_rows, row_block):
            products = np.ascontiguousarray(block @ table[start : start + row_block].T)
            heaps.addn(products.shape[1], faiss.swig_ptr(products), start, 0, len(block))
        heaps.reorder()
    return scores, ids


def _prefix_blocks(vectors: np.ndarray, dim: int, metric: str):
    """Float32 prefixes of ``vectors`` block by block, so a memory-mapped table is never copied whole."""
    for start in range(0, vectors.shape[0], _BLOCK):
        yield prefix(vectors[start : start + _BLOCK], dim, metric)
