"""The HTTP app: funnel search over a saved FunnelIndex (FastAPI).

Routes: ``POST /search`` (JSON, or a float32 ``application/x-npy`` body with ``?k=&funnel=``),
``GET /health``, ``GET /info``, ``GET /metrics`` (Prometheus text) and ``POST /reload`` (bearer
token). Searches run in a thread pool (FAISS and the rerank products release the GIL); each request
holds its own reference to the index it started on, so a reload never changes an answer in flight.
Every bad request is a 4xx JSON ``{"error": "..."}``; the funnel is MRL's adaptive retrieval
(Kusupati et al., NeurIPS 2022, section 4.3).
"""

from __future__ import annotations

import asyncio
import hmac
import io
import json
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from mrl.artifacts import kind_of
from mrl.errors import MRLError
from mrl.io import sha256_file
from mrl.retrieval._vectors import check_k
from mrl.retrieval.funnel import Funnel, FunnelIndex, format_funnel, parse_funnel, validate_funnel
from mrl.serve import DEFAULT_MAX_CANDIDATES

logger = logging.getLogger(__name__)

NPY_TYPE = "application/x-npy"
_ROUTES = ("/search", "/health", "/info", "/metrics", "/reload")


class _HTTPError(Exception):
    """A request refused with ``status`` and one sentence for the client."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


@dataclass(frozen=True)
class _Served:
    """One loaded index and what /info reports about it; replaced whole on reload."""

    index: FunnelIndex
    path: str
    manifest_sha256: str
    bytes_per_vector: float


def _load(path: str | Path, funnel: Funnel | None, store: str = "memory") -> _Served:
    """Load and verify an index directory (full vectors in RAM, or memory-mapped with ``store="mmap"``);
    refuse it when the server's fixed funnel does not fit it."""
    found = kind_of(path)
    if found != "index":  # before reading anything else: a run folder or a stray directory is refused as such
        raise MRLError(f"{path} is not an mrl index ({f'it is an mrl {found}' if found else 'no readable mrl manifest'})")
    index = FunnelIndex.load(path, store=store)  # verifies every file's sha256
    if funnel is not None:
        validate_funnel(funnel, index.dim, index.shortlist_dim, index.ntotal, 1, rescore_first=index.encoding != "float32")
    return _Served(index, str(path), sha256_file(Path(path) / "manifest.json"), index.memory_bytes()["total"] / max(index.ntotal, 1))


def _error(status: int, message: str) -> JSONResponse:
    # a message may quote the client's text, lone surrogates included, which UTF-8 cannot encode
    return JSONResponse({"error": message.encode("utf-8", "backslashreplace").decode("utf-8")}, status_code=status)


def _parse_k(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise _HTTPError(400, f"k must be a positive integer, got {value!r}")
    try:
        return int(value)
    except ValueError:
        raise _HTTPError(400, f"k must be a positive integer, got {value!r}") from None


def _parse_funnel(value: object) -> Funnel | None:
    if value is None:
        return None
    if isinstance(value, str):
        return parse_funnel(value)
    if isinstance(value, list):
        return [tuple(stage) if isinstance(stage, list) else stage for stage in value]
    raise _HTTPError(400, f"funnel must be a string such as \"16:200,2048:10\", got {type(value).__name__}")


def _json_scores(scores: np.ndarray) -> list[list[float | None]]:
    """Scores [Q, k] as lists; JSON has no infinity, so a slot an HNSW shortlist left empty (id -1) is null."""
    if np.isfinite(scores).all():
        return scores.tolist()
    return [[float(s) if np.isfinite(s) else None for s in row] for row in scores]


def _parse_json(body: bytes) -> object:
    """The body's JSON value; any body that does not parse is the client's 400."""
    try:
        return orjson.loads(body)  # ~10x the stdlib's speed on 2048 floats, which dominated a request
    except orjson.JSONDecodeError:
        try:  # the stdlib also reads NaN and Infinity, which then get their own clear refusal
            return json.loads(body)
        except ValueError as exc:  # malformed JSON, bad UTF-8, or an integer past Python's 4,300-digit conversion limit
            raise _HTTPError(400, f"the body is not valid JSON ({exc.__class__.__name__}: {exc})") from None
        except RecursionError:  # orjson refuses deep nesting as malformed; the stdlib runs out of stack
            raise _HTTPError(400, "the body is not valid JSON (nested too deeply)") from None


def _json_request(body: bytes) -> tuple[np.ndarray, object, object]:
    payload = _parse_json(body)
    if not isinstance(payload, dict):
        raise _HTTPError(400, "the body must be a JSON object with \"vectors\" (and optional \"k\", \"funnel\")")
    unknown = sorted(set(payload) - {"vectors", "k", "funnel"})
    if unknown:
        raise _HTTPError(400, f"unknown field(s) {unknown}; allowed: vectors, k, funnel")
    if "vectors" not in payload:
        raise _HTTPError(400, "the body lacks \"vectors\", a list of equal-length lists of numbers")
    try:
        rows = np.asarray(payload["vectors"])
    except ValueError:  # numpy refuses ragged nesting
        raise _HTTPError(400, "vectors must be a list of equal-length lists of numbers (rows differ in length)") from None
    if rows.size and rows.dtype.kind not in "iuf":
        raise _HTTPError(400, "vectors must be a list of equal-length lists of numbers")
    if rows.ndim != 2 or rows.shape[0] == 0:
        raise _HTTPError(400, f"vectors must be a non-empty batch [n, d], got shape {list(rows.shape)}")
    with np.errstate(over="ignore"):  # values past float32 become inf and are refused as such by the index
        vectors = rows.astype(np.float32)
    return vectors, payload.get("k", 10), payload.get("funnel")


def _npy_request(body: bytes, params: dict) -> tuple[np.ndarray, object, object]:
    """A float32 [n, d] .npy body, read without pickle and without trusting its header's shape.

    np.load would allocate whatever shape the header claims before reading; here the header must
    describe exactly the bytes that follow, and the array is a view of the body.
    """
    buffer = io.BytesIO(body)
    readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
    try:
        shape, fortran_order, dtype = readers[np.lib.format.read_magic(buffer)](buffer)
    except Exception as exc:  # any parse failure of client bytes is the client's error
        raise _HTTPError(400, f"the body is not a plain .npy array ({exc.__class__.__name__}: {exc})") from None
    if dtype != np.float32:
        raise _HTTPError(400, f"the .npy body must hold a float32 array [n, d], got {dtype}")
    if len(shape) != 2 or shape[0] <= 0 or shape[1] < 0:  # a header may declare negative sizes whose product looks right
        raise _HTTPError(400, f"vectors must be a non-empty batch [n, d], got shape {list(shape)}")
    data = len(body) - buffer.tell()
    if shape[0] * shape[1] * 4 != data:
        raise _HTTPError(400, f"the .npy header declares shape {list(shape)} but {data} bytes of data follow")
    vectors = np.frombuffer(body, dtype=dtype, offset=buffer.tell()).reshape(shape, order="F" if fortran_order else "C")
    return vectors, params.get("k", "10"), params.get("funnel")


class _Metrics:
    """ASGI middleware counting requests by route and status and timing them (lighter than BaseHTTPMiddleware).

    It also turns an unhandled exception (a bug) into a logged JSON 500 on a connection that stays usable.
    """

    def __init__(self, app, requests_total: Counter, latency: Histogram) -> None:
        self.app, self.requests_total, self.latency = app, requests_total, latency

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route = scope["path"] if scope["path"] in _ROUTES else "other"  # bounded label values
        status, started = 500, False

        async def send_recording(message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                status, started = message["status"], True
            await send(message)

        start = time.perf_counter()
        try:
            await self.app(scope, receive, send_recording)
        except ClientDisconnect:  # the client hung up before its body arrived: nobody to answer, not a server error
            logger.info("client disconnected during %s", scope["path"])
            status = 499  # nginx's code for it, so /metrics keeps such requests apart from the server's own errors
        except Exception:
            logger.exception("unhandled error on %s", scope["path"])
            if started:
                raise  # half a response is out: only closing the connection is left
            await _error(500, "internal error")(scope, receive, send)
        finally:
            self.latency.labels(route).observe(time.perf_counter() - start)
            self.requests_total.labels(route, str(status)).inc()


def create_app(
    index_dir: str | Path,
    funnel: str | None = None,
    max_body_bytes: int = 16 << 20,
    token: str | None = None,
    workers: int | None = None,
    store: str = "memory",
    max_candidates: int = DEFAULT_MAX_CANDIDATES,
) -> FastAPI:
    """Build the FastAPI app serving the index in ``index_dir``.

    Args:
        index_dir: a directory written by :meth:`FunnelIndex.save` (verified on load).
        funnel: funnel spec for every search without its own (default: the index's saved default).
        max_body_bytes: larger request bodies get 413.
        token: the bearer token /reload requires; None disables /reload (403).
        workers: threads running searches (default: the CPU count).
        store: ``"memory"`` (read the full vectors) or ``"mmap"`` (map them from the index's
            ``vectors.npy``: the process holds only the shortlist; rerank stages read their rows).
        max_candidates: a search whose queries x first shortlist length (the funnel's widest
            stage) exceeds this gets 413, so no small request can make the server allocate
            gigabytes (see :data:`mrl.serve.DEFAULT_MAX_CANDIDATES`).

    Raises:
        MRLError: unreadable index, or a ``funnel`` that does not fit it.
    """
    fixed_funnel = None if funnel is None else parse_funnel(funnel)
    if isinstance(max_body_bytes, bool) or not isinstance(max_body_bytes, int) or max_body_bytes < 1:
        raise MRLError(f"max_body_bytes must be a positive integer, got {max_body_bytes!r}")
    if token is not None and not token:
        raise MRLError("the reload token must not be empty")
    if isinstance(max_candidates, bool) or not isinstance(max_candidates, int) or max_candidates < 1:
        raise MRLError(f"max_candidates must be a positive integer, got {max_candidates!r}")
    state = {"served": _load(index_dir, fixed_funnel, store)}
    executor = ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1, thread_name_prefix="mrl-search")
    reload_lock = asyncio.Lock()

    registry = CollectorRegistry()
    requests_total = Counter("mrl_requests", "HTTP requests by route and status", ["route", "status"], registry=registry)
    latency = Histogram("mrl_request_seconds", "HTTP request latency by route", ["route"], registry=registry,
                        buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
    queries_total = Counter("mrl_queries", "query vectors searched", registry=registry)
    in_flight = Gauge("mrl_searches_in_flight", "searches running in the thread pool now", registry=registry)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        executor.shutdown(wait=True)

    app = FastAPI(title="mrl funnel search", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)

    app.add_middleware(_Metrics, requests_total=requests_total, latency=latency)

    @app.exception_handler(_HTTPError)
    async def http_error(request: Request, exc: _HTTPError) -> JSONResponse:
        return _error(exc.status, exc.message)

    @app.exception_handler(MRLError)
    async def user_error(request: Request, exc: MRLError) -> JSONResponse:
        return _error(400, str(exc))

    @app.exception_handler(StarletteHTTPException)
    async def starlette_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}")

    async def read_body(request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > max_body_bytes):
            raise _HTTPError(413, f"the body is larger than the server's limit of {max_body_bytes} bytes")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_body_bytes:  # chunked bodies carry no length: count as they arrive
                raise _HTTPError(413, f"the body is larger than the server's limit of {max_body_bytes} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    @app.post("/search")
    async def search(request: Request) -> Response:
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type not in ("application/json", NPY_TYPE):
            raise _HTTPError(415, f"Content-Type must be application/json or {NPY_TYPE}, got {content_type or 'none'!r}")
        body = await read_body(request)
        if content_type == NPY_TYPE:
            vectors, k, funnel_spec = _npy_request(body, dict(request.query_params))
        else:
            vectors, k, funnel_spec = _json_request(body)
        k, funnel = _parse_k(k), _parse_funnel(funnel_spec)
        if vectors.ndim != 2 or vectors.shape[0] == 0:
            raise _HTTPError(400, f"vectors must be a non-empty batch [n, d], got shape {list(vectors.shape)}")
        served: _Served = state["served"]
        index = served.index
        k = check_k(k, index.ntotal)
        chosen = funnel if funnel is not None else fixed_funnel if fixed_funnel is not None else index.default_funnel(k)
        chosen = validate_funnel(chosen, index.dim, index.shortlist_dim, index.ntotal, k, rescore_first=index.encoding != "float32")
        if len(vectors) * chosen[0][1] > max_candidates:
            raise _HTTPError(413, f"{len(vectors)} queries x {chosen[0][1]} candidates each is more than the server's limit of "
                                  f"{max_candidates} candidates per request; send fewer queries per request or a shorter funnel")

        def run() -> tuple[np.ndarray, np.ndarray, float]:
            start = time.perf_counter()
            scores, ids = index.search(vectors, k=k, funnel=chosen)
            return scores, ids, time.perf_counter() - start

        with in_flight.track_inprogress():
            scores, ids, seconds = await asyncio.get_running_loop().run_in_executor(executor, run)
        queries_total.inc(len(vectors))
        return Response(orjson.dumps({
            "ids": ids.tolist(),
            "scores": _json_scores(scores),
            "funnel": format_funnel(chosen),
            "took_ms": 1000.0 * seconds,
        }), media_type="application/json")

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    @app.get("/info")
    async def info() -> dict:
        served: _Served = state["served"]
        index = served.index
        return {
            "path": served.path,
            "n": index.ntotal,
            "d": index.dim,
            "metric": index.metric,
            "dtype": index.dtype,
            "store": index.store,
            "shortlist": index.shortlist,
            "shortlist_dim": index.shortlist_dim,
            "default_funnel": format_funnel(fixed_funnel if fixed_funnel is not None else index.default_funnel(min(10, index.ntotal))),
            "bytes_per_vector": served.bytes_per_vector,
            "manifest_sha256": served.manifest_sha256,
        }

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.post("/reload")
    async def reload(request: Request) -> dict:
        if token is None:
            raise _HTTPError(403, "reload is disabled: the server was started without --token-file")
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
            raise _HTTPError(401, "reload needs the header Authorization: Bearer <token> with the server's token")
        payload = _parse_json(await read_body(request))
        if not isinstance(payload, dict) or not isinstance(payload.get("path"), str) or not payload["path"]:
            raise _HTTPError(400, "the body must be a JSON object {\"path\": \"<index directory>\"}")
        async with reload_lock:
            # loading (checksums, FAISS) runs off the event loop: searches keep being answered meanwhile
            served = await asyncio.get_running_loop().run_in_executor(executor, _load, payload["path"], fixed_funnel, store)
            state["served"] = served
        logger.info("reloaded %s", served.path)
        return {"path": served.path, "n": served.index.ntotal, "d": served.index.dim, "manifest_sha256": served.manifest_sha256}

    return app
