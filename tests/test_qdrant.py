"""Qdrant backend on the embedded engine (qdrant-edge-py) and qdrant-client's local mode.

Exported collections must answer a funnel exactly as FunnelIndex.search does; an interrupted export
resumes; a collection with another layout is refused.
"""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

pytest.importorskip("qdrant_edge")

from mrl.cli import cli  # noqa: E402
from mrl.errors import MRLError  # noqa: E402
from mrl.io import load_npz, read_json, save_npz, write_json  # noqa: E402
from mrl.retrieval import FunnelIndex  # noqa: E402
from mrl.retrieval.qdrant import QdrantFunnel, _EdgeBackend, evaluate_on_qdrant, export_to_qdrant  # noqa: E402

N, DIM = 1200, 64
FUNNEL = [(8, 300), (16, 100), (64, 10)]


def _index(tmp_path, metric="cosine", seed=0, labels=True, n=N):
    rng = np.random.default_rng(seed)
    index = FunnelIndex(rng.standard_normal((n, DIM)).astype(np.float32), metric=metric, shortlist_dim=8,
                        labels=rng.integers(0, 5, n) if labels else None)
    path = index.save(tmp_path / f"idx-{metric}-{seed}")
    return index, path


def _queries(seed=1, n=30):
    return np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)


@pytest.mark.parametrize("metric", ["cosine", "ip", "l2"])
def test_export_then_search_equals_funnel_index(tmp_path, metric):
    index, path = _index(tmp_path, metric)
    assert export_to_qdrant(path, tmp_path / "q", "c", stages=[8, 16, 64], batch=500) == {"written": N, "skipped": 0, "points": N}
    queries = _queries()
    expected_scores, expected_ids = index.search(queries, k=10, funnel=FUNNEL)
    with QdrantFunnel(tmp_path / "q", "c") as qdrant:
        scores, ids = qdrant.search(queries, k=10, funnel=FUNNEL)
        np.testing.assert_array_equal(ids, expected_ids)
        np.testing.assert_allclose(scores, expected_scores, rtol=1e-4, atol=1e-4)
        one_stage_scores, one_stage_ids = qdrant.search(queries, k=5, funnel=[(64, 5)])
    exact_scores, exact_ids = index.search(queries, k=5, funnel=[(8, N), (64, 5)])
    np.testing.assert_array_equal(one_stage_ids, exact_ids)
    np.testing.assert_allclose(one_stage_scores, exact_scores, rtol=1e-4, atol=1e-4)


def test_default_funnel_and_payload_labels(tmp_path):
    index, path = _index(tmp_path)
    export_to_qdrant(path, tmp_path / "q", "c")  # default stages: shortlist dim and full dim
    queries = _queries()
    with QdrantFunnel(tmp_path / "q", "c") as qdrant:
        assert qdrant.stages == [8, 64] and qdrant.default_funnel(10) == index.default_funnel(10)
        np.testing.assert_array_equal(qdrant.search(queries, k=10)[1], index.search(queries, k=10)[1])
        rows = evaluate_on_qdrant(qdrant, index, queries, np.zeros(len(queries), dtype=np.int64), ["exact", "8:200,64:10"], k=10)
    assert rows[0]["knn_recall@10"] == 1.0 and "map@10" in rows[1]
    backend = _EdgeBackend(tmp_path / "q", "c")
    backend.open(backend.read_meta(), create=False)
    try:
        records = backend.shard.retrieve([0, 7], with_payload=True, with_vector=False)
        assert sorted((r.id, r.payload["label"]) for r in records) == [(0, int(index.labels[0])), (7, int(index.labels[7]))]
    finally:
        backend.close()


def test_interrupted_export_resumes(tmp_path, monkeypatch):
    index, path = _index(tmp_path)
    calls = {"n": 0}
    original = _EdgeBackend.upsert

    def failing_upsert(self, ids, vectors, payloads):
        if calls["n"] == 2:
            raise KeyboardInterrupt
        calls["n"] += 1
        original(self, ids, vectors, payloads)

    monkeypatch.setattr(_EdgeBackend, "upsert", failing_upsert)
    with pytest.raises(KeyboardInterrupt):
        export_to_qdrant(path, tmp_path / "q", "c", stages=[8, 16, 64], batch=256)
    with pytest.raises(MRLError, match="holds 512 of 1200 points; resume the export"):
        QdrantFunnel(tmp_path / "q", "c")
    monkeypatch.setattr(_EdgeBackend, "upsert", original)
    assert export_to_qdrant(path, tmp_path / "q", "c", stages=[8, 16, 64], batch=256) == {"written": N - 512, "skipped": 512, "points": N}
    queries = _queries()
    with QdrantFunnel(tmp_path / "q", "c") as qdrant:
        np.testing.assert_array_equal(qdrant.search(queries, k=10, funnel=FUNNEL)[1], index.search(queries, k=10, funnel=FUNNEL)[1])


def test_foreign_collections_are_refused(tmp_path):
    _, path = _index(tmp_path)
    _, other = _index(tmp_path, seed=5)
    export_to_qdrant(path, tmp_path / "q", "c", stages=[8, 64])
    with pytest.raises(MRLError, match=r"different layout \(stages=\[8, 64\]\)"):
        export_to_qdrant(path, tmp_path / "q", "c", stages=[8, 16, 64])
    with pytest.raises(MRLError, match="different layout .*index_sha256"):
        export_to_qdrant(other, tmp_path / "q", "c", stages=[8, 64])
    with pytest.raises(MRLError, match="different layout .*quantization"):
        export_to_qdrant(path, tmp_path / "q", "c", stages=[8, 64], quantization="int8")
    import qdrant_edge as qe

    qe.EdgeShard.create(str(tmp_path / "q" / "plain"), qe.EdgeConfig(vectors={"m8": qe.EdgeVectorParams(size=8, distance=qe.Distance.Cosine)})).close()
    with pytest.raises(MRLError, match="not a collection exported by mrl"):
        export_to_qdrant(path, tmp_path / "q", "plain")
    with pytest.raises(MRLError, match="not a collection exported by mrl"):
        QdrantFunnel(tmp_path / "q", "plain")
    with pytest.raises(MRLError, match="does not exist"):
        QdrantFunnel(tmp_path / "q", "absent")
    meta = read_json(tmp_path / "q" / "c" / "mrl_collection.json")
    write_json(tmp_path / "q" / "c" / "mrl_collection.json", {**meta, "metric": "hamming"})
    with pytest.raises(MRLError, match="does not hold a readable mrl-qdrant-funnel v1 layout"):
        QdrantFunnel(tmp_path / "q", "c")


def test_search_refusals(tmp_path):
    _, path = _index(tmp_path)
    export_to_qdrant(path, tmp_path / "q", "c", stages=[8, 64])
    with QdrantFunnel(tmp_path / "q", "c") as qdrant:
        with pytest.raises(MRLError, match=r"prefix size\(s\) \[16\] but .* stores only \[8, 64\]"):
            qdrant.search(_queries(), k=10, funnel=[(16, 100), (64, 10)])
        with pytest.raises(MRLError, match="larger than the database"):
            qdrant.search(_queries(), k=N + 1)
        with pytest.raises(MRLError, match="dimension 63"):
            qdrant.search(np.zeros((1, 63), np.float32))
        with pytest.raises(MRLError, match="fewer than k=10"):
            qdrant.search(_queries(), k=10, funnel=[(8, 100), (64, 5)])
    with pytest.raises(MRLError, match="stages must be strictly ascending"):
        export_to_qdrant(path, tmp_path / "q", "d", stages=[64, 8])
    with pytest.raises(MRLError, match="collection must be"):
        export_to_qdrant(path, tmp_path / "q", "../escape")
    with pytest.raises(MRLError, match="apply to a Qdrant server"):
        export_to_qdrant(path, tmp_path / "q", "e", shards=2)


def test_quantized_export_still_finds_neighbours(tmp_path):
    index, path = _index(tmp_path, labels=False)
    export_to_qdrant(path, tmp_path / "q", "c", stages=[8, 64], quantization="int8")
    queries = _queries()
    with QdrantFunnel(tmp_path / "q", "c") as qdrant:
        _, ids = qdrant.search(queries, k=10, funnel=[(8, 300), (64, 10)])
    expected = index.search(queries, k=10, funnel=[(8, 300), (64, 10)])[1]
    overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, expected)])
    assert overlap >= 0.9


def test_qdrant_client_local_mode_gives_the_same_answers(tmp_path):
    qdrant_client = pytest.importorskip("qdrant_client")
    index, path = _index(tmp_path, n=400)  # local mode is pure Python: keep it small
    client = qdrant_client.QdrantClient(":memory:")
    assert export_to_qdrant(path, client, "c", stages=[8, 16, 64], shards=2, replicas=1)["points"] == 400
    queries = _queries(n=10)
    funnel = [(8, 100), (16, 40), (64, 10)]
    scores, ids = QdrantFunnel(client, "c").search(queries, k=10, funnel=funnel)
    expected_scores, expected_ids = index.search(queries, k=10, funnel=funnel)
    np.testing.assert_array_equal(ids, expected_ids)
    np.testing.assert_allclose(scores, expected_scores, rtol=1e-4, atol=1e-4)
    with pytest.raises(MRLError, match="different layout"):
        export_to_qdrant(path, client, "c", stages=[8, 64])


def test_cli_export_search_evaluate(tmp_path):
    index, path = _index(tmp_path)
    queries = _queries()
    save_npz(tmp_path / "q.npz", X=queries, y=np.zeros(len(queries), dtype=np.int64))
    runner = CliRunner()
    result = runner.invoke(cli, ["index", "export", str(path), "--to", "qdrant", "--path", str(tmp_path / "qd"), "--collection", "c",
                                 "--stages", "8,16,64", "--batch", "500", "--quiet"], catch_exceptions=False)
    assert result.exit_code == 0 and f"exported {N} points" in result.output
    result = runner.invoke(cli, ["index", "export", str(path), "--to", "qdrant", "--path", str(tmp_path / "qd"), "--collection", "c",
                                 "--stages", "8,64", "--quiet"])
    assert result.exit_code == 1 and result.output.startswith("Error: ") and "different layout" in result.output
    result = runner.invoke(cli, ["index", "search", str(path), str(tmp_path / "q.npz"), "--funnel", "8:300,16:100,64:10", "--backend", "qdrant",
                                 "--qdrant-path", str(tmp_path / "qd"), "--collection", "c", "--out", str(tmp_path / "out.npz")],
                           catch_exceptions=False)
    assert result.exit_code == 0, result.output
    np.testing.assert_array_equal(load_npz(tmp_path / "out.npz")["ids"], index.search(queries, k=10, funnel=FUNNEL)[1])
    result = runner.invoke(cli, ["index", "evaluate", str(path), str(tmp_path / "q.npz"), "--funnels", "exact;8:300,16:100,64:10",
                                 "--backend", "qdrant", "--qdrant-path", str(tmp_path / "qd"), "--collection", "c",
                                 "--out-dir", str(tmp_path / "ev")], catch_exceptions=False)
    assert result.exit_code == 0 and "| exact |" in result.output
    result = runner.invoke(cli, ["index", "search", str(path), str(tmp_path / "q.npz"), "--backend", "qdrant", "--collection", "c"])
    assert result.exit_code == 1 and "exactly one of" in result.output
