"""The funnel on Qdrant: export a FunnelIndex as named prefix vectors, search with nested prefetch.

MRL's adaptive retrieval (Kusupati et al., NeurIPS 2022, section 4.3) shortlists with a short prefix
and reranks with longer ones. Qdrant's Query API runs the same funnel inside the engine: one named
vector per stage size (``m16``, ``m2048``, ...) cut from the one stored embedding, and a query whose
nested ``prefetch`` shortlists on the innermost (shortest) vector while each enclosing level rescores
the survivors with a longer one. With ``metric="cosine"`` each prefix is L2-normalised on its own,
as :class:`~mrl.retrieval.FunnelIndex` does, so both give the same scores.

Only the first stage's vector gets an HNSW graph (the rerank stages score just the prefetched
candidates, so a graph over them would cost build time and memory for nothing). Two engines behind one interface: a path (``--path DIR``) opens Qdrant's own engine in this process
(``qdrant-edge-py``, no server); a URL or a ``qdrant_client.QdrantClient`` speaks to a Qdrant server or
cluster (``qdrant-client``), where sharding and replication take data past one machine. Each
collection carries mrl's layout (metric, dim, stages, source index checksum): on the server as
collection metadata, embedded as ``mrl_collection.json`` in the shard folder.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from mrl.errors import MRLError
from mrl.io import read_json, sha256_file, write_json
from mrl.validation import check_int
from mrl.retrieval._vectors import check_k, check_vectors, prefix
from mrl.retrieval.funnel import DEFAULT_SHORTLIST_LENGTH, Funnel, FunnelIndex, format_funnel, parse_funnel, validate_funnel
from mrl.retrieval.shortlist import MAX_EF_SEARCH

logger = logging.getLogger(__name__)

FORMAT = "mrl-qdrant-funnel"
FORMAT_VERSION = 1
QUANTIZATIONS = ("none", "int8", "binary")
_DISTANCES = {"cosine": "Cosine", "ip": "Dot", "l2": "Euclid"}
_META_FILE = "mrl_collection.json"
_LAYOUT_KEYS = ("format", "format_version", "metric", "dim", "stages", "quantization", "n_vectors", "index_sha256")
_SHA256 = re.compile(r"[0-9a-f]{64}")


def vector_name(dim: int) -> str:
    """Name of the named vector holding the ``dim``-prefix: ``m16``, ``m2048``."""
    return f"m{dim}"


def _import(module: str, extra: str = "qdrant") -> Any:
    try:
        return __import__(module)
    except ImportError:
        raise MRLError(f"the Qdrant backend needs {module}: pip install \"mrl[{extra}]\"") from None


def _check_collection_name(collection: str) -> str:
    if not isinstance(collection, str) or not collection or not all(c.isalnum() or c in "-_" for c in collection):
        raise MRLError(f"collection must be a non-empty name of letters, digits, '-' and '_', got {collection!r}")
    return collection


class _EdgeBackend:
    """Qdrant's engine embedded in this process (qdrant-edge-py); the collection is folder ``root/collection``."""

    def __init__(self, root: str | Path, collection: str) -> None:
        self.qe = _import("qdrant_edge")
        self.folder = Path(root) / collection
        self.shard = None

    def read_meta(self) -> dict | None:
        """The collection's layout (checked), or None when there is no collection yet."""
        if not self.folder.exists():
            return None
        meta_file = self.folder / _META_FILE
        if not meta_file.is_file():
            raise MRLError(f"{self.folder} is not a collection exported by mrl (no {_META_FILE})")
        return _check_layout(read_json(meta_file), self.folder)

    def _config(self, meta: dict) -> Any:
        qe = self.qe
        quantization = {"none": None, "int8": lambda: qe.ScalarQuantizationConfig(qe.ScalarType.Int8),
                        "binary": lambda: qe.BinaryQuantizationConfig()}[meta["quantization"]]
        distance = getattr(qe.Distance, _DISTANCES[meta["metric"]])
        no_graph = qe.HnswIndexConfig(m=0, ef_construct=100, full_scan_threshold=10000)
        return qe.EdgeConfig(vectors={
            vector_name(d): qe.EdgeVectorParams(size=d, distance=distance, quantization_config=quantization and quantization(),
                                                hnsw_config=None if i == 0 else no_graph)
            for i, d in enumerate(meta["stages"])
        })

    def open(self, meta: dict, create: bool) -> None:
        if create and not (self.folder / "edge_config.json").exists():
            self.folder.mkdir(parents=True, exist_ok=True)
            write_json(self.folder / _META_FILE, meta)  # first, so a half-made collection is still recognised
            self.shard = self.qe.EdgeShard.create(str(self.folder), self._config(meta))
            return
        if not (self.folder / "edge_config.json").is_file():
            raise MRLError(f"{self.folder} holds no Qdrant shard (the export that made it did not finish); export again")
        try:
            self.shard = self.qe.EdgeShard.load(str(self.folder), self._config(meta))
        except Exception as exc:  # the engine reports a layout mismatch as a bare Exception
            raise MRLError(f"{self.folder} does not hold the layout its {_META_FILE} describes ({exc})") from None

    def present(self, ids: list[int]) -> set[int]:
        return {int(r.id) for r in self.shard.retrieve(ids, with_payload=False, with_vector=False)}

    def upsert(self, ids: list[int], vectors: dict[str, np.ndarray], payloads: list[dict] | None) -> None:
        qe = self.qe
        points = [qe.Point(i, {name: v[row].tolist() for name, v in vectors.items()}, None if payloads is None else payloads[row])
                  for row, i in enumerate(ids)]
        self.shard.update(qe.UpdateOperation.upsert_points(points))

    def count(self) -> int:
        return int(self.shard.count(self.qe.CountRequest(exact=True)))

    def finish(self) -> None:
        self.shard.flush()
        self.shard.optimize()  # builds HNSW graphs once segments pass the engine's indexing threshold

    def query(self, stages: list[tuple[str, list[list[float]], int]], exact: bool, hnsw_ef: int | None) -> list[list[tuple[int, float]]]:
        qe = self.qe
        params = qe.SearchParams(exact=exact, hnsw_ef=hnsw_ef)
        requests = []
        for q in range(len(stages[0][1])):
            inner = None
            for depth, (name, vectors, limit) in enumerate(stages[:-1]):
                inner = qe.Prefetch(limit=limit, query=qe.Query.Nearest(vectors[q], using=name),
                                    prefetches=None if inner is None else [inner], params=params if depth == 0 else None)
            name, vectors, limit = stages[-1]
            requests.append(qe.QueryRequest(limit=limit, query=qe.Query.Nearest(vectors[q], using=name),
                                            prefetches=None if inner is None else [inner], params=params if inner is None else None))
        return [[(int(p.id), float(p.score)) for p in hits] for hits in self.shard.query_batch(qe.QueryBatchRequest(requests))]

    def close(self) -> None:
        if self.shard is not None:
            self.shard.close()
            self.shard = None


class _ClientBackend:
    """A Qdrant server or cluster (or qdrant-client's local mode) through ``qdrant_client.QdrantClient``."""

    def __init__(self, client: Any, collection: str, server: str | None = None) -> None:
        self.models = _import("qdrant_client").models
        from qdrant_client.http.exceptions import ResponseHandlingException

        self._unreachable = ResponseHandlingException  # what the client raises when no answer came back
        self.client, self.collection, self.folder = client, collection, f"collection {collection!r}"
        self.server = server or "of the given QdrantClient"
        self.shard_number: int | None = None
        self.replication_factor: int | None = None

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """``client.method(...)``; a server that does not answer is one MRLError naming it, not the client's traceback."""
        try:
            return getattr(self.client, method)(*args, **kwargs)
        except self._unreachable as exc:
            raise MRLError(f"cannot reach the Qdrant server {self.server} ({exc}); check the URL and that the server is running") from None

    def read_meta(self) -> dict | None:
        if not self._call("collection_exists", self.collection):
            return None
        metadata = self._call("get_collection", self.collection).config.metadata or {}
        if "mrl" not in metadata:
            raise MRLError(f"{self.folder} is not a collection exported by mrl (no mrl metadata)")
        return _check_layout(metadata["mrl"], self.folder)

    def open(self, meta: dict, create: bool) -> None:
        m = self.models
        distance = getattr(m.Distance, _DISTANCES[meta["metric"]].upper())
        quantization = {"none": None, "int8": m.ScalarQuantization(scalar=m.ScalarQuantizationConfig(type=m.ScalarType.INT8)),
                        "binary": m.BinaryQuantization(binary=m.BinaryQuantizationConfig())}[meta["quantization"]]
        expected = {vector_name(d): (d, distance) for d in meta["stages"]}
        if not self._call("collection_exists", self.collection):
            if not create:
                raise MRLError(f"{self.folder} does not exist")
            self._call("create_collection", self.collection, metadata={"mrl": meta}, quantization_config=quantization,
                       shard_number=self.shard_number, replication_factor=self.replication_factor, vectors_config={
                n: m.VectorParams(size=d, distance=dist, hnsw_config=None if i == 0 else m.HnswConfigDiff(m=0))
                for i, (n, (d, dist)) in enumerate(expected.items())})
            return
        vectors = self._call("get_collection", self.collection).config.params.vectors
        found = {n: (p.size, p.distance) for n, p in (vectors or {}).items()} if isinstance(vectors, dict) else {}
        if found != expected:
            raise MRLError(f"{self.folder} does not hold the vectors its mrl metadata describes")

    def present(self, ids: list[int]) -> set[int]:
        return {int(r.id) for r in self._call("retrieve", self.collection, ids, with_payload=False, with_vectors=False)}

    def upsert(self, ids: list[int], vectors: dict[str, np.ndarray], payloads: list[dict] | None) -> None:
        batch = self.models.Batch(ids=ids, vectors={n: v.tolist() for n, v in vectors.items()}, payloads=payloads)
        self._call("upsert", self.collection, points=batch, wait=True)

    def count(self) -> int:
        return int(self._call("count", self.collection, exact=True).count)

    def finish(self) -> None:
        pass  # a server indexes in the background

    def query(self, stages: list[tuple[str, list[list[float]], int]], exact: bool, hnsw_ef: int | None) -> list[list[tuple[int, float]]]:
        m = self.models
        params = m.SearchParams(exact=exact, hnsw_ef=hnsw_ef)
        requests = []
        for q in range(len(stages[0][1])):
            inner = None
            for depth, (name, vectors, limit) in enumerate(stages[:-1]):
                inner = m.Prefetch(query=vectors[q], using=name, limit=limit, prefetch=None if inner is None else [inner],
                                   params=params if depth == 0 else None)
            name, vectors, limit = stages[-1]
            requests.append(m.QueryRequest(query=vectors[q], using=name, limit=limit, prefetch=None if inner is None else [inner],
                                           params=params if inner is None else None))
        responses = self._call("query_batch_points", self.collection, requests)
        return [[(int(p.id), float(p.score)) for p in r.points] for r in responses]

    def close(self) -> None:
        pass  # the caller owns the client


def _backend(location: Any, collection: str, api_key: str | None = None) -> _EdgeBackend | _ClientBackend:
    """A path opens the embedded engine; an http(s) URL or a QdrantClient speaks to a Qdrant server."""
    collection = _check_collection_name(collection)
    if isinstance(location, (str, Path)) and str(location).startswith(("http://", "https://")):
        # The compatibility check asks the server for its version on a background thread and, when no
        # answer comes, warns at an arbitrary moment; an unreachable server is reported by the first call.
        client = _import("qdrant_client").QdrantClient(url=str(location), api_key=api_key, check_compatibility=False)
        return _ClientBackend(client, collection, server=f"at {location}")
    if isinstance(location, (str, Path)):
        return _EdgeBackend(location, collection)
    if type(location).__name__ == "QdrantClient":
        return _ClientBackend(location, collection)
    raise MRLError(f"location must be a folder path, an http(s) URL or a QdrantClient, got {type(location).__name__}")


def _check_layout(meta: object, where: object) -> dict:
    """The stored layout, refused unless every field has the type and range this module writes."""

    def positive_int(value: object) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and value >= 1

    ok = (
        isinstance(meta, dict) and meta.get("format") == FORMAT and meta.get("format_version") == FORMAT_VERSION
        and meta.get("metric") in _DISTANCES and meta.get("quantization") in QUANTIZATIONS
        and positive_int(meta.get("dim")) and positive_int(meta.get("n_vectors"))
        and isinstance(meta.get("stages"), list) and meta["stages"] and all(positive_int(d) for d in meta["stages"])
        and all(a < b for a, b in zip(meta["stages"], meta["stages"][1:])) and meta["stages"][-1] <= meta["dim"]
        and isinstance(meta.get("index_sha256"), str) and _SHA256.fullmatch(meta["index_sha256"]) is not None
    )
    if not ok:
        raise MRLError(f"{where} does not hold a readable {FORMAT} v{FORMAT_VERSION} layout")
    funnel = meta.get("default_funnel")
    if funnel is not None and not (isinstance(funnel, list) and all(
            isinstance(s, list) and len(s) == 2 and all(positive_int(v) for v in s) for s in funnel)):
        raise MRLError(f"{where} holds a malformed default funnel {funnel!r}")
    return meta


def _layout(index: FunnelIndex, index_sha256: str, stages: Sequence[int], quantization: str) -> dict:
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "metric": index.metric,
        "dim": index.dim,
        "stages": list(stages),
        "quantization": quantization,
        "n_vectors": index.ntotal,
        "index_sha256": index_sha256,
        "default_funnel": None if index.funnel is None else [list(s) for s in index.funnel],
    }


def _index_sha256(index_dir: str | Path) -> str:
    """The checksum a collection records of the index it was exported from: that of the index's manifest."""
    manifest = Path(index_dir) / "manifest.json"
    if not manifest.is_file():
        raise MRLError(f"index_dir must be an index folder written by FunnelIndex.save, got {str(index_dir)!r} (no manifest.json)")
    return sha256_file(manifest)


def _check_outside_artifacts(root: str | Path) -> None:
    """Refuse a folder of embedded collections that is, or lies inside, an mrl artifact: its manifest
    does not list the collection, so verifying or replacing the artifact would fail or delete it."""
    from mrl.artifacts import enclosing_artifact

    named, resolved = Path(os.path.abspath(root)), Path(root).resolve()
    enclosing = enclosing_artifact(dict.fromkeys((named, *named.parents, resolved, *resolved.parents)))
    if enclosing is not None:
        raise MRLError(f"refusing to export into {root}: {enclosing[0]} is an mrl {enclosing[1]}; give a folder outside mrl artifacts")


def _check_stages(stages: Sequence[int] | None, index: FunnelIndex) -> list[int]:
    if stages is None:
        stages = sorted({index.shortlist_dim, index.dim})
    stages = list(stages)
    if not stages or any(isinstance(d, bool) or not isinstance(d, (int, np.integer)) or not 1 <= d <= index.dim for d in stages):
        raise MRLError(f"stages must be prefix sizes in [1, {index.dim}], got {stages}")
    if any(b <= a for a, b in zip(stages, stages[1:])):
        raise MRLError(f"stages must be strictly ascending, got {stages}")
    return [int(d) for d in stages]


def export_to_qdrant(
    index_dir: str | Path,
    location: Any,
    collection: str,
    stages: Sequence[int] | None = None,
    quantization: str = "none",
    batch: int = 1024,
    api_key: str | None = None,
    progress: bool = False,
    shards: int | None = None,
    replicas: int | None = None,
) -> dict[str, int]:
    """Copy a saved FunnelIndex into a Qdrant collection: one named vector per stage size.

    Point ids are row numbers; labels (when the index has them) go into the payload as ``label``.
    Re-running resumes: ids already present are skipped. A collection whose layout (metric, dim,
    stages, quantization, source index) differs is refused.

    Args:
        index_dir: directory written by :meth:`FunnelIndex.save` (verified on load).
        location: folder of embedded collections, an http(s) URL of a Qdrant server, or a QdrantClient.
        collection: collection name (letters, digits, '-', '_').
        stages: prefix sizes to store, ascending (default: the index's shortlist dim and its full dim).
        quantization: ``"none"``, ``"int8"`` (scalar) or ``"binary"`` for every named vector.
        batch: points per upsert.
        api_key: API key for a URL location.
        progress: show a progress bar (stderr).
        shards: shard count of a new collection on a Qdrant server (default: the server's).
        replicas: replication factor of a new collection on a Qdrant server (default: the server's).

    Returns:
        ``{"written": ..., "skipped": ..., "points": ...}``: points upserted now, already present, total.
    """
    if quantization not in QUANTIZATIONS:
        raise MRLError(f"quantization must be one of {list(QUANTIZATIONS)}, got {quantization!r}")
    if isinstance(batch, bool) or not isinstance(batch, (int, np.integer)) or batch < 1:
        raise MRLError(f"batch must be a positive integer, got {batch!r}")
    index = FunnelIndex.load(index_dir, mmap=True)
    stages = _check_stages(stages, index)
    meta = _layout(index, _index_sha256(index_dir), stages, quantization)
    backend = _backend(location, collection, api_key)
    if shards is not None or replicas is not None:
        if not isinstance(backend, _ClientBackend):
            raise MRLError("shards and replicas apply to a Qdrant server (--url), not to the embedded engine")
        for name, value in (("shards", shards), ("replicas", replicas)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise MRLError(f"{name} must be a positive integer, got {value!r}")
        backend.shard_number, backend.replication_factor = shards, replicas
    if isinstance(backend, _EdgeBackend):
        _check_outside_artifacts(location)
    existing = backend.read_meta()
    if existing is not None:
        differing = [key for key in _LAYOUT_KEYS if existing.get(key) != meta[key]]
        if differing:
            raise MRLError(f"{backend.folder} holds a different layout ({', '.join(f'{k}={existing.get(k)!r}' for k in differing)}); "
                           f"export to a new collection")
    backend.open(meta, create=True)
    written = skipped = 0
    try:
        labels = index.labels
        for start in tqdm(range(0, index.ntotal, batch), desc=f"exporting to {collection}", unit="batch", disable=not progress):
            ids = list(range(start, min(start + batch, index.ntotal)))
            present = backend.present(ids)
            rows = [i for i in ids if i not in present]
            skipped += len(ids) - len(rows)
            if not rows:
                continue
            block = np.asarray(index.vectors[rows[0] : rows[-1] + 1])[np.asarray(rows) - rows[0]]
            vectors = {vector_name(d): prefix(block, d, index.metric) for d in stages}
            payloads = None if labels is None else [{"label": int(labels[i])} for i in rows]
            backend.upsert(rows, vectors, payloads)
            written += len(rows)
        backend.finish()
        points = backend.count()
    finally:
        backend.close()
    logger.info("exported %d points to %s (%d already present)", written, backend.folder, skipped)
    return {"written": written, "skipped": skipped, "points": points}


class QdrantFunnel:
    """Funnel search over a collection written by :func:`export_to_qdrant`.

    Args:
        location: folder of embedded collections, an http(s) URL of a Qdrant server, or a QdrantClient.
        collection: collection name.
        api_key: API key for a URL location.
        index_dir: when given, the collection must have been exported from this saved index (its
            recorded checksum is compared), so its ids and labels are the index's rows.

    Example:
        >>> import tempfile
        >>> rng = np.random.default_rng(0)
        >>> db = rng.standard_normal((300, 32)).astype(np.float32)
        >>> root = Path(tempfile.mkdtemp())
        >>> _ = FunnelIndex(db, shortlist_dim=8).save(root / "idx")
        >>> _ = export_to_qdrant(root / "idx", root / "qdrant", "demo")
        >>> with QdrantFunnel(root / "qdrant", "demo") as funnel:
        ...     scores, ids = funnel.search(db[:2], k=3, funnel=[(8, 50), (32, 3)])
        >>> ids[:, 0].tolist()
        [0, 1]
    """

    def __init__(self, location: Any, collection: str, api_key: str | None = None, index_dir: str | Path | None = None) -> None:
        self._backend = _backend(location, collection, api_key)
        meta = self._backend.read_meta()
        if meta is None:
            raise MRLError(f"{self._backend.folder} does not exist; export an index to it first (mrl index export)")
        if index_dir is not None and meta["index_sha256"] != _index_sha256(index_dir):
            raise MRLError(f"{self._backend.folder} was not exported from the index {index_dir} (its index_sha256 differs: another "
                           f"index, or this one before it changed, e.g. by mrl index tune); search it with the index it was exported from, "
                           f"or export {index_dir} to a new collection")
        self._backend.open(meta, create=False)
        self.metric, self.dim, self.stages = meta["metric"], int(meta["dim"]), [int(d) for d in meta["stages"]]
        self.ntotal = int(meta["n_vectors"])
        self.funnel: Funnel | None = None if meta.get("default_funnel") is None else [tuple(s) for s in meta["default_funnel"]]
        points = self._backend.count()
        if points != self.ntotal:
            self.close()
            raise MRLError(f"{self.collection_label} holds {points} of {self.ntotal} points; resume the export first")

    @property
    def collection_label(self) -> str:
        return str(self._backend.folder)

    def default_funnel(self, k: int) -> Funnel:
        """The index's tuned funnel when every stage was exported and it keeps >= k, else shortest:max(200,k) -> longest:k."""
        if self.funnel is not None and self.funnel[-1][1] >= k and all(d in self.stages for d, _ in self.funnel):
            return list(self.funnel)
        if len(self.stages) == 1:
            return [(self.stages[0], k)]
        return [(self.stages[0], min(max(DEFAULT_SHORTLIST_LENGTH, k), self.ntotal)), (self.stages[-1], k)]

    def search(
        self, queries: np.ndarray, k: int = 10, funnel: Sequence[tuple[int, int]] | None = None, exact: bool = True, hnsw_ef: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k of each query through the funnel, as one nested-prefetch query per query (batched).

        Args:
            queries: [Q, D] float queries.
            k: results per query.
            funnel: [(d_1, n_1), ..., (d_L, n_L)] over exported stage sizes (default :meth:`default_funnel`).
            exact: shortlist by exhaustive search (True) or by the engine's HNSW graph (False).
            hnsw_ef: HNSW beam width when ``exact`` is False (engine default when None).

        Returns:
            (scores, ids) as :meth:`FunnelIndex.search`: float32 [Q, k] best first (squared distance
            ascending for ``"l2"``) and int64 [Q, k] ids (-1 where fewer were found).
        """
        queries = check_vectors(queries, "queries", dim=self.dim)
        k = check_k(k, self.ntotal)
        if not isinstance(exact, (bool, np.bool_)):
            raise MRLError(f"exact must be True or False, got {exact!r}")
        if hnsw_ef is not None:
            hnsw_ef = check_int("hnsw_ef", hnsw_ef, min=1, max=MAX_EF_SEARCH)  # the bound of FunnelIndex's ef_search
        if funnel is None:
            funnel = self.default_funnel(k)
        elif isinstance(funnel, (str, bytes, Mapping)) or not hasattr(funnel, "__iter__"):
            raise MRLError(f"funnel must be a sequence of (dim, shortlist_length) pairs, got {funnel!r}")
        funnel = list(funnel)
        try:  # any exported stage may come first; validate_funnel checks the rest against it
            first_dim = int(funnel[0][0])
        except (TypeError, ValueError, IndexError, KeyError, OverflowError):
            first_dim = 0  # validate_funnel names the malformed stage
        funnel = validate_funnel(funnel, self.dim, first_dim, self.ntotal, k)
        missing = [d for d, _ in funnel if d not in self.stages]
        if missing:
            raise MRLError(f"funnel uses prefix size(s) {missing} but {self.collection_label} stores only {self.stages}")
        plan = [(vector_name(d), prefix(queries, d, self.metric).tolist(), n) for d, n in funnel]
        plan[-1] = (plan[-1][0], plan[-1][1], k)
        hits = self._backend.query(plan, exact=bool(exact), hnsw_ef=hnsw_ef) if len(queries) else []
        scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
        ids = np.full((len(queries), k), -1, dtype=np.int64)
        for row, found in enumerate(hits):
            for col, (point, score) in enumerate(found[:k]):
                ids[row, col], scores[row, col] = point, score
        if self.metric == "l2":
            scores = scores**2  # Qdrant's Euclid score is the distance; FunnelIndex reports its square
        logger.debug("searched %d queries with funnel %s", len(queries), format_funnel(funnel))
        return scores, ids

    def close(self) -> None:
        """Release the engine (the embedded shard holds files open)."""
        self._backend.close()

    def __enter__(self) -> QdrantFunnel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def evaluate_on_qdrant(
    qdrant: QdrantFunnel,
    index: FunnelIndex,
    queries: np.ndarray,
    query_labels: np.ndarray | None = None,
    configurations: Sequence[str] | None = None,
    k: int = 10,
    exact: bool = True,
) -> list[dict]:
    """Rows like :func:`~mrl.retrieval.evaluate_configurations`, each configuration searched on Qdrant.

    ``"exact"`` is a one-stage query on the full vector, ``"exact:m"`` one on the m-prefix (both
    need that named vector), anything else a funnel spec. kNN-recall@k is against exact full-dim
    search of ``index`` (the exported FunnelIndex, whose labels are the database labels).
    """
    from mrl.metrics import Relevance, knn_recall_at_k, retrieval_summary
    from mrl.retrieval.ground_truth import exact_search

    found, expected = (qdrant.ntotal, qdrant.dim, qdrant.metric), (index.ntotal, index.dim, index.metric)
    if found != expected:
        raise MRLError(f"{qdrant.collection_label} holds {found[0]} x {found[1]} {found[2]} vectors but the index {expected[0]} x "
                       f"{expected[1]} {expected[2]}: it was not exported from this index")
    configurations = list(configurations or ["exact", qdrant.default_funnel(k)])
    exact_ids = exact_search(index.vectors, queries, k, metric=index.metric)[1]
    with_labels = query_labels is not None and index.labels is not None
    rows = []
    for config in configurations:
        if not isinstance(config, str):
            config = format_funnel(config)
        config = config.strip()
        if config == "exact" or config.startswith("exact:"):
            try:
                funnel = [(index.dim if config == "exact" else int(config.split(":", 1)[1]), k)]
            except ValueError:
                raise MRLError(f"exact configurations are 'exact' or 'exact:DIM', got {config!r}") from None
        else:
            funnel = parse_funnel(config)
        qdrant.search(queries[: min(8, len(queries))], k, funnel, exact=exact)  # warm-up
        start = time.perf_counter()
        _, ids = qdrant.search(queries, k, funnel, exact=exact)
        seconds = time.perf_counter() - start
        row: dict = {"config": config}
        if with_labels:
            summary = retrieval_summary(Relevance.from_labels(ids, query_labels, index.labels), k=k)
            row.update({key: summary[key] for key in (f"map@{k}", f"precision@{k}", f"recall@{k}", f"ndcg@{k}", "top1")})
        row[f"knn_recall@{k}"] = float(knn_recall_at_k(ids, exact_ids, k).mean())
        row["ms_per_query"] = 1000.0 * seconds / max(len(queries), 1)
        rows.append(row)
    return rows
