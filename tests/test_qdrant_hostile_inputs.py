"""Hostile inputs to the Qdrant backend: a collection of another index, a server that refuses
connections, a bad API key file, a tampered collection layout, a --path inside an mrl artifact and
malformed search arguments. Each is one MRLError (one ``Error:`` line from the CLI) and changes
nothing on disk. Qdrant runs in this process only; the refused URL is http://127.0.0.1:1.
"""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest

pytest.importorskip("qdrant_edge")

from hostile import assert_refused, invoke, tree  # noqa: E402
from mrl.errors import MRLError  # noqa: E402
from mrl.io import read_json, save_npz, write_json  # noqa: E402
from mrl.retrieval import FunnelIndex  # noqa: E402
from mrl.retrieval.qdrant import QdrantFunnel, evaluate_on_qdrant, export_to_qdrant  # noqa: E402

N, DIM = 120, 16
REFUSED_URL = "http://127.0.0.1:1"


def _index(tmp_path, name="idx", seed=0, n=N):
    rng = np.random.default_rng(seed)
    index = FunnelIndex(rng.standard_normal((n, DIM)).astype(np.float32), shortlist_dim=8, labels=rng.integers(0, 3, n))
    return index, index.save(tmp_path / name)


def _queries_npz(tmp_path, n=6):
    rng = np.random.default_rng(1)
    save_npz(tmp_path / "q.npz", X=rng.standard_normal((n, DIM)).astype(np.float32), y=np.zeros(n, dtype=np.int64))
    return tmp_path / "q.npz"


def test_search_and_evaluate_refuse_a_collection_exported_from_another_index(tmp_path):
    index, path = _index(tmp_path, "a")
    other, other_path = _index(tmp_path, "b", seed=7)
    export_to_qdrant(other_path, tmp_path / "qd", "c")
    queries = _queries_npz(tmp_path)
    qdrant = ["--backend", "qdrant", "--qdrant-path", tmp_path / "qd", "--collection", "c"]
    assert_refused(tmp_path, "index", "search", path, queries, *qdrant, match="was not exported from the index")
    assert_refused(tmp_path, "index", "search", path, queries, *qdrant, "--out", tmp_path / "out.npz", match="was not exported from the index")
    assert_refused(tmp_path, "index", "evaluate", path, queries, *qdrant, "--out-dir", tmp_path / "ev",
                   match="was not exported from the index")
    code, output = invoke("index", "search", other_path, queries, *qdrant)  # its own index is accepted
    assert code == 0, output
    with pytest.raises(MRLError, match="was not exported from the index"):
        QdrantFunnel(tmp_path / "qd", "c", index_dir=path)
    small, _ = _index(tmp_path, "small", n=N - 1)
    with QdrantFunnel(tmp_path / "qd", "c", index_dir=other_path) as funnel:
        with pytest.raises(MRLError, match=r"holds 120 x 16 cosine vectors but the index 119 x 16 cosine"):
            evaluate_on_qdrant(funnel, small, np.zeros((2, DIM), np.float32), k=5)
    meta = read_json(tmp_path / "qd" / "c" / "mrl_collection.json")
    write_json(tmp_path / "qd" / "c" / "mrl_collection.json", {key: value for key, value in meta.items() if key != "index_sha256"})
    with pytest.raises(MRLError, match="does not hold a readable mrl-qdrant-funnel v1 layout"):
        QdrantFunnel(tmp_path / "qd", "c")


def test_a_server_refusing_connections_is_one_error_naming_the_url(tmp_path):
    pytest.importorskip("qdrant_client")
    _, path = _index(tmp_path)
    queries = _queries_npz(tmp_path)
    assert_refused(tmp_path, "index", "search", path, queries, "--backend", "qdrant", "--qdrant-url", REFUSED_URL, "--collection", "c",
                   match=f"cannot reach the Qdrant server at {REFUSED_URL}")
    assert_refused(tmp_path, "index", "export", path, "--to", "qdrant", "--url", REFUSED_URL, "--collection", "c", "--quiet",
                   match=f"cannot reach the Qdrant server at {REFUSED_URL}")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(MRLError, match=f"cannot reach the Qdrant server at {REFUSED_URL}"):
            QdrantFunnel(REFUSED_URL, "c")


@pytest.mark.parametrize("content, match", [
    (bytes(range(128, 256)), "is not UTF-8 text"),
    (b"", "is empty"),
    (b" \n\t\n", "is empty"),
    (b"key\x00more", "control characters"),
    (b"first-key\nsecond-key\n", "several lines"),
    (b"k" * (64 * 1024 + 1), "larger than 65536 bytes"),
])
def test_api_key_files_that_hold_no_key_are_refused(tmp_path, content, match):
    _, path = _index(tmp_path)
    queries = _queries_npz(tmp_path)
    key_file = tmp_path / "key"
    key_file.write_bytes(content)
    assert_refused(tmp_path, "index", "search", path, queries, "--backend", "qdrant", "--qdrant-url", REFUSED_URL, "--collection", "c",
                   "--api-key-file", key_file, match=match)
    assert_refused(tmp_path, "index", "export", path, "--to", "qdrant", "--url", REFUSED_URL, "--collection", "c",
                   "--api-key-file", key_file, match=match)


def test_a_huge_api_key_file_is_refused_without_reading_it(tmp_path):
    _, path = _index(tmp_path)
    key_file = tmp_path / "key"
    with open(key_file, "wb") as f:
        f.truncate(50 * 1024 * 1024)  # sparse: 50 MB on paper, nothing on disk
    assert_refused(tmp_path, "index", "export", path, "--to", "qdrant", "--url", REFUSED_URL, "--collection", "c",
                   "--api-key-file", key_file, match="larger than 65536 bytes")


@pytest.mark.parametrize("layout", [[1, 2], "a layout", 7, None])
def test_export_refuses_a_tampered_collection_layout(tmp_path, layout):
    _, path = _index(tmp_path)
    export_to_qdrant(path, tmp_path / "qd", "c")
    write_json(tmp_path / "qd" / "c" / "mrl_collection.json", layout)
    assert_refused(tmp_path, "index", "export", path, "--to", "qdrant", "--path", tmp_path / "qd", "--collection", "c", "--quiet",
                   match="does not hold a readable mrl-qdrant-funnel v1 layout")


def test_export_refuses_a_path_inside_an_mrl_artifact(tmp_path):
    _, path = _index(tmp_path, "a")
    _, other = _index(tmp_path, "b", seed=3)
    os.symlink(other, tmp_path / "link")
    for target in (path, other, other / "collections", tmp_path / "link" / "collections"):
        assert_refused(tmp_path, "index", "export", path, "--to", "qdrant", "--path", target, "--collection", "c", "--quiet",
                       match="is an mrl index; give a folder outside mrl artifacts")
    before = tree(tmp_path)
    with pytest.raises(MRLError, match="is an mrl index"):
        export_to_qdrant(path, other, "c")
    assert tree(tmp_path) == before
    code, output = invoke("index", "export", path, "--to", "qdrant", "--path", tmp_path / "qd", "--collection", "c", "--quiet")
    assert code == 0, output


def test_search_arguments_are_validated(tmp_path):
    _, path = _index(tmp_path)
    export_to_qdrant(path, tmp_path / "qd", "c")
    queries = np.random.default_rng(2).standard_normal((3, DIM)).astype(np.float32)
    with QdrantFunnel(tmp_path / "qd", "c") as funnel:
        for hnsw_ef, shown in ((-1, "-1"), (0, "0"), ("x", "'x'"), (True, "True"), (2**21, str(2**21)), (2**70, str(2**70))):
            with pytest.raises(MRLError, match=rf"hnsw_ef must be an integer >= 1 and <= 1048576, got {shown}"):
                funnel.search(queries, k=5, exact=False, hnsw_ef=hnsw_ef)
        for bad in ({8: 50}, "8:50,16:5", 5):
            with pytest.raises(MRLError, match=r"funnel must be a sequence of \(dim, shortlist_length\) pairs"):
                funnel.search(queries, k=5, funnel=bad)
        with pytest.raises(MRLError, match=r"each funnel stage must be a \(dim, shortlist_length\) pair"):
            funnel.search(queries, k=5, funnel=[(8,), (16, 5)])
        with pytest.raises(MRLError, match="funnel stage values must be positive integers"):
            funnel.search(queries, k=5, funnel=[(8.0, 50), (16, 5)])
        with pytest.raises(MRLError, match="funnel must hold at least one stage"):
            funnel.search(queries, k=5, funnel=[])
        with pytest.raises(MRLError, match=r"funnel uses prefix size\(s\) \[12\]"):
            funnel.search(queries, k=5, funnel=[(8, 50), (12, 5)])
        for k in (0, -3, "5", 2.0):
            with pytest.raises(MRLError, match="k must be a positive integer"):
                funnel.search(queries, k=k)
        with pytest.raises(MRLError, match="exact must be True or False, got 'no'"):
            funnel.search(queries, k=5, exact="no")
        _, ids = funnel.search(queries, k=5, funnel=[(8, 50), (16, 5)], exact=False, hnsw_ef=64)
    assert ids.shape == (3, 5) and (ids >= 0).all()
