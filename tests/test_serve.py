"""mrl serve: a real uvicorn server on 127.0.0.1 (ephemeral port), spoken to over HTTP with httpx.

Answers are checked against FunnelIndex.search on the same index; every bad request must get its
4xx JSON error and leave the server answering the next good request correctly.
"""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from mrl.cli import cli  # noqa: E402
from mrl.errors import MRLError  # noqa: E402
from mrl.io import sha256_file  # noqa: E402
from mrl.retrieval import FunnelIndex, parse_funnel  # noqa: E402
from mrl.serve import create_app  # noqa: E402
from mrl.serve.server import bind, make_server  # noqa: E402

DIM, N, SHORTLIST_DIM = 64, 2000, 8
TOKEN = "s3cret-token"
BODY_LIMIT = 256 * 1024


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def _npy_header(shape: tuple[int, ...]) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": "<f4", "fortran_order": False, "shape": shape})
    return buffer.getvalue()


class _Running:
    """An app served by uvicorn in a thread; ``url`` is its address."""

    def __init__(self, app) -> None:
        sock = bind("127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        self.server = make_server(app)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("server did not start")
            time.sleep(0.01)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture(scope="module")
def indexes(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("serve")
    rng = np.random.default_rng(0)
    first = FunnelIndex(rng.standard_normal((N, DIM)).astype(np.float32), shortlist_dim=SHORTLIST_DIM, labels=rng.integers(0, 7, N))
    second = FunnelIndex(rng.standard_normal((N // 2, DIM)).astype(np.float32), shortlist_dim=SHORTLIST_DIM)
    first.save(root / "first")
    second.save(root / "second")
    (root / "token").write_text(TOKEN + "\n")
    return {"root": root, "first": first, "second": second}


@pytest.fixture(scope="module")
def server(indexes):
    running = _Running(create_app(indexes["root"] / "first", max_body_bytes=BODY_LIMIT, token=TOKEN, workers=4))
    yield running
    running.stop()


@pytest.fixture()
def client(server):
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


def _check_answer(response, index: FunnelIndex, queries: np.ndarray, k: int, funnel=None) -> None:
    assert response.status_code == 200, response.text
    body = response.json()
    scores, ids = index.search(queries, k=k, funnel=funnel)
    np.testing.assert_array_equal(np.array(body["ids"]), ids)
    np.testing.assert_allclose(np.array(body["scores"], dtype=np.float32), scores, rtol=1e-6, atol=1e-6)


def _good(client: httpx.Client, index: FunnelIndex, seed: int = 99) -> None:
    queries = np.random.default_rng(seed).standard_normal((3, index.dim)).astype(np.float32)
    _check_answer(client.post("/search", json={"vectors": queries.tolist(), "k": 5}), index, queries, 5)


def test_json_search_equals_funnel_index(client, indexes):
    index = indexes["first"]
    queries = np.random.default_rng(1).standard_normal((6, DIM)).astype(np.float32)
    response = client.post("/search", json={"vectors": queries.tolist(), "k": 7})
    _check_answer(response, index, queries, 7)
    assert response.json()["funnel"] == "8:200,64:7"
    funnel = [(8, 300), (32, 50), (64, 10)]
    response = client.post("/search", json={"vectors": queries.tolist(), "k": 10, "funnel": "8:300,32:50,64:10"})
    _check_answer(response, index, queries, 10, funnel)
    assert response.json()["took_ms"] > 0


def test_npy_search_equals_funnel_index(client, indexes):
    queries = np.random.default_rng(2).standard_normal((40, DIM)).astype(np.float32)
    response = client.post("/search", params={"k": 4, "funnel": "8:100,64:4"}, content=_npy(queries),
                           headers={"content-type": "application/x-npy"})
    _check_answer(response, indexes["first"], queries, 4, [(8, 100), (64, 4)])


def test_health_info_metrics(client, indexes):
    assert client.get("/health").json() == {"status": "ok"}
    info = client.get("/info").json()
    index = indexes["first"]
    assert (info["n"], info["d"], info["metric"], info["shortlist"], info["shortlist_dim"]) == (N, DIM, "cosine", "flat", SHORTLIST_DIM)
    assert info["manifest_sha256"] == sha256_file(indexes["root"] / "first" / "manifest.json")
    assert info["bytes_per_vector"] == index.memory_bytes()["total"] / N
    assert info["default_funnel"] == "8:200,64:10"

    def queries_served() -> float:
        text = client.get("/metrics").text
        return float(next(line.split()[-1] for line in text.splitlines() if line.startswith("mrl_queries_total")))

    before = queries_served()
    _good(client, index)
    client.post("/search", json={"vectors": [[1.0]]})
    assert queries_served() == before + 3
    text = client.get("/metrics").text
    assert 'mrl_requests_total{route="/search",status="400"}' in text
    assert 'mrl_request_seconds_bucket{le="0.001",route="/search"}' in text
    assert "mrl_searches_in_flight 0.0" in text  # every search above has finished


NAN_BODY = b'{"vectors": [[' + b", ".join([b"NaN"] + [b"0.5"] * (DIM - 1)) + b"]]}"
BAD_REQUESTS = {
    "wrong dimension": (dict(json={"vectors": [[0.1] * (DIM - 1)]}), 400, "dimension 63"),
    "nan": (dict(content=NAN_BODY, headers={"content-type": "application/json"}), 400, "NaN or infinite"),
    "inf": (dict(json={"vectors": [[1e39] * DIM]}), 400, "NaN or infinite"),
    "empty batch": (dict(json={"vectors": []}), 400, "non-empty batch"),
    "ragged rows": (dict(json={"vectors": [[0.1] * DIM, [0.1] * (DIM - 1)]}), 400, "equal-length"),
    "strings": (dict(json={"vectors": [["a"] * DIM]}), 400, "lists of numbers"),
    "k zero": (dict(json={"vectors": [[0.1] * DIM], "k": 0}), 400, "k must be a positive integer"),
    "k too large": (dict(json={"vectors": [[0.1] * DIM], "k": N + 1}), 400, "larger than the database"),
    "k not int": (dict(json={"vectors": [[0.1] * DIM], "k": "ten"}), 400, "k must be a positive integer"),
    "malformed funnel": (dict(json={"vectors": [[0.1] * DIM], "funnel": "8-200"}), 400, "dim:shortlist_length"),
    "funnel off the shortlist": (dict(json={"vectors": [[0.1] * DIM], "funnel": "16:200,64:10"}), 400, "shortlist dim 8"),
    "unknown field": (dict(json={"vectors": [[0.1] * DIM], "topk": 3}), 400, "unknown field"),
    "nested too deeply": (dict(content=b"[" * 100_000 + b"]" * 100_000, headers={"content-type": "application/json"}),
                          400, "nested too deeply"),
    "not an object": (dict(json=[[0.1] * DIM]), 400, "JSON object"),
    "malformed json": (dict(content=b'{"vectors": [[0.1,', headers={"content-type": "application/json"}), 400, "not valid JSON"),
    "body over limit": (dict(content=b"[" * (BODY_LIMIT + 1), headers={"content-type": "application/json"}), 413, "limit"),
    "chunked body over limit": (dict(content=iter([b"[" * 65536] * 5), headers={"content-type": "application/json"}), 413, "limit"),
    "unsupported type": (dict(content=b"0.1,0.2", headers={"content-type": "text/csv"}), 415, "Content-Type"),
    "npy float64": (dict(content=_npy(np.zeros((1, DIM))), headers={"content-type": "application/x-npy"}), 400, "float32"),
    "npy garbage": (dict(content=b"\x93NUMPY garbage", headers={"content-type": "application/x-npy"}), 400, "plain .npy"),
    "npy object array": (dict(content=_npy(np.zeros((1, DIM), np.float32)).replace(b"'<f4'", b"'|O' "),
                          headers={"content-type": "application/x-npy"}), 400, "float32"),
    "npy one-dim": (dict(content=_npy(np.zeros(DIM, np.float32)), headers={"content-type": "application/x-npy"}), 400, "non-empty batch"),
    "npy huge declared shape": (dict(content=_npy_header((10**12, DIM)) + b"\0" * 16, headers={"content-type": "application/x-npy"}),
                                400, "declares shape"),
    "npy truncated": (dict(content=_npy(np.zeros((4, DIM), np.float32))[:-4], headers={"content-type": "application/x-npy"}), 400, "declares shape"),
    # two negative sizes whose product matches the bytes that follow
    "npy negative shape": (dict(content=_npy_header((-1, -DIM)) + b"\0" * (4 * DIM), headers={"content-type": "application/x-npy"}),
                           400, "non-empty batch"),
    # finite, but its square overflows float32: the normalised query was all zeros and the answer meaningless
    "value too large": (dict(json={"vectors": [[2e19] + [0.0] * (DIM - 1)]}), 400, "above 1e+15"),
    # past Python's 4,300-digit limit on converting a decimal string to int
    "integer too long": (dict(content=b'{"vectors": [[0.5]], "k": ' + b"1" * 5000 + b"}", headers={"content-type": "application/json"}),
                         400, "not valid JSON"),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_request_gets_its_status_and_server_keeps_serving(client, indexes, case):
    kwargs, status, match = BAD_REQUESTS[case]
    response = client.post("/search", **kwargs)
    assert response.status_code == status, response.text
    assert match in response.json()["error"]
    _good(client, indexes["first"])


def test_a_bug_is_a_json_500_and_the_server_keeps_serving(client, indexes, monkeypatch):
    original = FunnelIndex.search

    def broken(self, *args, **kwargs):
        monkeypatch.setattr(FunnelIndex, "search", original)  # fail once
        raise RuntimeError("simulated bug")

    monkeypatch.setattr(FunnelIndex, "search", broken)
    response = client.post("/search", json={"vectors": [[0.1] * DIM]})
    assert response.status_code == 500 and response.json() == {"error": "internal error"}
    _good(client, indexes["first"])
    assert 'mrl_requests_total{route="/search",status="500"} 1.0' in client.get("/metrics").text


def test_a_request_over_the_candidate_limit_is_refused_before_any_search(indexes):
    index = indexes["first"]
    running = _Running(create_app(indexes["root"] / "first", max_candidates=1000))
    try:
        with httpx.Client(base_url=running.url, timeout=30) as c:
            queries = np.random.default_rng(5).standard_normal((3, DIM)).astype(np.float32)
            for body in ({"vectors": queries.tolist(), "funnel": "8:400,64:10"}, {"vectors": queries.tolist(), "k": 400}):
                response = c.post("/search", json=body)  # 3 x 400 candidates (the default funnel keeps max(200, k))
                assert response.status_code == 413 and "limit of 1000 candidates" in response.json()["error"], response.text
            _check_answer(c.post("/search", json={"vectors": queries[:2].tolist(), "funnel": "8:400,64:10"}), index, queries[:2], 10,
                          funnel=[(8, 400), (64, 10)])
    finally:
        running.stop()
    for bad in (0, -1, True, 2.5):
        with pytest.raises(MRLError, match="max_candidates must be a positive integer"):
            create_app(indexes["root"] / "first", max_candidates=bad)


def _requests_counted(client: httpx.Client, status: int) -> float:
    prefix = f'mrl_requests_total{{route="/search",status="{status}"}} '
    return float(next((line[len(prefix):] for line in client.get("/metrics").text.splitlines() if line.startswith(prefix)), 0))


def test_a_client_hanging_up_mid_body_is_not_a_server_error(client, server, indexes):
    errors_before = _requests_counted(client, 500)
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"POST /search HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"vec")
    deadline = time.monotonic() + 10
    while _requests_counted(client, 499) < 1:
        assert time.monotonic() < deadline, "the hang-up was never counted"
        time.sleep(0.05)
    assert _requests_counted(client, 500) == errors_before
    _good(client, indexes["first"])


def test_unknown_route_and_method_are_json_errors(client, indexes):
    assert client.get("/nowhere").json() == {"error": "GET /nowhere: Not Found"}
    response = client.get("/search")
    assert response.status_code == 405 and "Method Not Allowed" in response.json()["error"]


def test_sixteen_threads_each_get_their_own_answers(server, indexes):
    index = indexes["first"]
    all_queries = np.random.default_rng(3).standard_normal((16, 5, 3, DIM)).astype(np.float32)  # thread, request, batch

    def worker(thread: int) -> list[tuple[np.ndarray, np.ndarray]]:
        with httpx.Client(base_url=server.url, timeout=30) as c:
            out = []
            for queries in all_queries[thread]:
                body = c.post("/search", json={"vectors": queries.tolist(), "k": 6}).json()
                out.append((np.array(body["ids"]), np.array(body["scores"], dtype=np.float32)))
            return out

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(worker, range(16)))
    for thread, answers in enumerate(results):
        for queries, (ids, scores) in zip(all_queries[thread], answers):
            expected_scores, expected_ids = index.search(queries, k=6)
            np.testing.assert_array_equal(ids, expected_ids)
            np.testing.assert_allclose(scores, expected_scores, rtol=1e-6, atol=1e-6)


def test_reload_refusals_keep_the_old_index_and_a_good_reload_swaps(indexes, tmp_path):
    root = indexes["root"]
    running = _Running(create_app(root / "first", token=TOKEN))
    try:
        with httpx.Client(base_url=running.url, timeout=30) as c:
            target = {"path": str(root / "second")}
            assert c.post("/reload", json=target).status_code == 401
            assert c.post("/reload", json=target, headers={"authorization": "Bearer wrong"}).status_code == 401
            assert c.post("/reload", json=target, headers={"authorization": TOKEN}).status_code == 401
            _good(c, indexes["first"])
            auth = {"authorization": f"Bearer {TOKEN}"}
            corrupt = tmp_path / "corrupt"
            FunnelIndex.load(root / "second").save(corrupt)
            with open(corrupt / "vectors.npy", "r+b") as f:
                f.seek(-4, os.SEEK_END)
                f.write(b"\x00\x00\x80\x7f")
            foreign = tmp_path / "foreign"
            foreign.mkdir()
            (foreign / "manifest.json").write_text(json.dumps({"format": "something-else"}))
            for path, match in ((corrupt, "corrupt"), (tmp_path / "missing", "not an mrl index"), (foreign, "not an mrl index (no readable mrl manifest)")):
                response = c.post("/reload", json={"path": str(path)}, headers=auth)
                assert response.status_code == 400 and match in response.json()["error"], response.text
                _good(c, indexes["first"])
            assert c.post("/reload", content=b"{", headers={**auth, "content-type": "application/json"}).status_code == 400
            for body, match in ((b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
                                (b'{"path": "x", "n": ' + b"9" * 5000 + b"}", "not valid JSON"),
                                (b'{"path": "\\udc80"}', "not an mrl index"),  # a lone surrogate, quoted back escaped
                                (json.dumps({"path": "a" * 300}).encode(), "not an mrl index")):  # a name the OS refuses
                response = c.post("/reload", content=body, headers={**auth, "content-type": "application/json"})
                assert response.status_code == 400 and match in response.json()["error"], response.text
            _good(c, indexes["first"])
            assert c.get("/info").json()["n"] == N
            response = c.post("/reload", json=target, headers=auth)
            assert response.status_code == 200, response.text
            assert c.get("/info").json()["n"] == N // 2
            _good(c, indexes["second"])
    finally:
        running.stop()


def test_reload_without_token_file_is_forbidden(indexes):
    running = _Running(create_app(indexes["root"] / "first"))
    try:
        with httpx.Client(base_url=running.url, timeout=30) as c:
            response = c.post("/reload", json={"path": str(indexes["root"] / "second")}, headers={"authorization": f"Bearer {TOKEN}"})
            assert response.status_code == 403 and "--token-file" in response.json()["error"]
            _good(c, indexes["first"])
    finally:
        running.stop()


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["--token-file", "missing-token"], "token file not found"),
        (["--funnel", "16:200,64:10"], "shortlist dim 8"),
        (["--funnel", "bad"], "dim:shortlist_length"),
    ],
)
def test_cli_refuses_bad_options_with_one_error_line(indexes, args, match, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["serve", str(indexes["root"] / "first"), "--port", "0", *args])
    assert result.exit_code == 1
    assert result.output.startswith("Error: ") and match in result.output and result.output.count("\n") == 1


def _wait_until_searching(url: str, timeout: float = 60.0) -> None:
    """Poll /metrics until a search is running (or, if it was quick, has already been answered)."""
    deadline = time.monotonic() + timeout
    with httpx.Client(base_url=url, timeout=10) as client:
        while time.monotonic() < deadline:
            text = client.get("/metrics").text
            if "mrl_searches_in_flight 1.0" in text or "mrl_queries_total 1000.0" in text:
                return
            time.sleep(0.01)
    raise AssertionError("the search never started")


def test_sigterm_finishes_the_request_in_flight_and_exits_zero(indexes):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    process = subprocess.Popen([sys.executable, "-m", "mrl", "serve", str(indexes["root"] / "first"), "--port", "0", "--workers", "1"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = process.stdout.readline()
        assert line.startswith("serving "), process.stderr.read()
        url = line.split(" on ")[1].strip()
        host, port = url.removeprefix("http://").split(":")
        queries = np.random.default_rng(4).standard_normal((1000, DIM)).astype(np.float32)
        funnel = [(SHORTLIST_DIM, N), (DIM, 10)]  # reranks every vector: long enough to be in flight
        body = _npy(queries)
        request = (f"POST /search?k=10&funnel=8:2000,64:10 HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/x-npy\r\n"
                   f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body
        with socket.create_connection((host, int(port)), timeout=60) as conn:
            conn.sendall(request)
            _wait_until_searching(url)  # in the search, not merely sent: a fixed sleep raced on a loaded machine
            process.send_signal(signal.SIGTERM)
            raw = b"".join(iter(lambda: conn.recv(1 << 16), b""))
        head, _, payload = raw.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), raw[:300]
        response = httpx.Response(200, content=payload)
        assert process.wait(timeout=30) == 0
        _check_answer(response, indexes["first"], queries, 10, funnel)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_fixed_funnel_may_rescore_a_quantised_shortlist_on_its_own_prefix(tmp_path):
    """With an int8 shortlist, stage 2 may re-score on the shortlist's own prefix (binary/SQ -> float recipe)."""
    rng = np.random.default_rng(1)
    index = FunnelIndex(rng.standard_normal((N, DIM)).astype(np.float32), shortlist_dim=SHORTLIST_DIM, encoding="int8")
    index.save(tmp_path / "int8")
    funnel = f"{SHORTLIST_DIM}:60,{SHORTLIST_DIM}:30,{DIM}:10"
    running = _Running(create_app(tmp_path / "int8", funnel=funnel))
    try:
        queries = rng.standard_normal((3, DIM)).astype(np.float32)
        with httpx.Client(base_url=running.url, timeout=30) as c:
            response = c.post("/search", json={"vectors": queries.tolist(), "k": 5})
        _check_answer(response, index, queries, 5, funnel=parse_funnel(funnel))
        assert response.json()["funnel"] == funnel
    finally:
        running.stop()


def test_mmap_store_server_answers_like_the_index_and_holds_only_the_shortlist(indexes):
    running = _Running(create_app(indexes["root"] / "first", workers=2, store="mmap"))
    try:
        with httpx.Client(base_url=running.url, timeout=30) as c:
            info = c.get("/info").json()
            assert info["store"] == "mmap"
            assert info["bytes_per_vector"] == indexes["first"].memory_bytes()["shortlist"] / N  # no full vectors in RAM
            queries = np.random.default_rng(7).standard_normal((5, DIM)).astype(np.float32)
            _check_answer(c.post("/search", json={"vectors": queries.tolist(), "k": 6}), indexes["first"], queries, 6)
    finally:
        running.stop()
