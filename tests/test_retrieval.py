"""FunnelIndex, exact ground truth, costs and tuning against a numpy brute-force reference."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mrl.errors import MRLError, NotFittedError
from mrl.retrieval import (
    FunnelIndex,
    FunnelTuner,
    IndexTuner,
    ShortlistSpec,
    candidate_funnels,
    evaluate_configurations,
    exact_search,
    funnel_flops,
    parse_funnel,
    stage_flops,
)

N, D, DS = 400, 32, 8


def _data(seed=0, n=N, nq=25):
    rng = np.random.default_rng(seed)
    scale = (1.0 / np.sqrt(np.arange(1, D + 1))).astype(np.float32)  # MRL-like: early dims dominate
    db = rng.standard_normal((n, D)).astype(np.float32) * scale
    queries = rng.standard_normal((nq, D)).astype(np.float32) * scale
    return db, queries


def _brute(db, queries, dim, metric):
    """Higher-is-better scores [Q, N] of numpy brute force on the dim-prefix."""
    x, q = db[:, :dim].astype(np.float64), queries[:, :dim].astype(np.float64)
    if metric == "cosine":
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
        q = q / np.linalg.norm(q, axis=1, keepdims=True)
    if metric == "l2":
        return -((q[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    return q @ x.T


def _check_knn(ids, scores_ref, k, atol=1e-4):
    """ids [Q, k] must be a valid exact top-k of scores_ref [Q, N], tied ids may swap (faiss's check_ref_knn_with_draws)."""
    ordered = -np.sort(-scores_ref, axis=1)[:, :k]
    got = np.take_along_axis(scores_ref, ids, axis=1)
    np.testing.assert_allclose(got, ordered, atol=atol)
    assert all(len(set(row)) == k for row in ids.tolist())


def _funnel_reference(db, queries, funnel, metric, k):
    """Per-query loop: shortlist by the first prefix, rerank survivors stage by stage."""
    out = []
    for qi in range(len(queries)):
        candidates = np.arange(len(db))
        for dim, length in funnel:
            s = _brute(db[candidates], queries[qi : qi + 1], dim, metric)[0]
            candidates = candidates[np.argsort(-s, kind="stable")[:length]]
        out.append(candidates[:k])
    return np.array(out)


@pytest.mark.parametrize("metric", ["cosine", "ip", "l2"])
def test_exact_search_matches_numpy(metric):
    db, queries = _data()
    scores, ids = exact_search(db, queries, k=7, metric=metric, dim=D, block_size=64)
    ref = _brute(db, queries, D, metric)
    _check_knn(ids, ref, 7)
    expected = np.take_along_axis(ref, ids, axis=1)
    np.testing.assert_allclose(scores, -expected if metric == "l2" else expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("metric", ["cosine", "ip", "l2"])
def test_single_full_dim_stage_equals_exact_search(metric):
    db, queries = _data(1)
    index = FunnelIndex(db, metric=metric, shortlist_dim=D)
    scores, ids = index.search(queries, k=10, funnel=[(D, 10)])
    exact_scores, exact_ids = exact_search(db, queries, k=10, metric=metric)
    _check_knn(ids, _brute(db, queries, D, metric), 10)
    np.testing.assert_allclose(scores, exact_scores, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("metric", ["cosine", "ip", "l2"])
def test_whole_database_shortlist_then_full_rerank_is_exact(metric):
    db, queries = _data(2)
    index = FunnelIndex(db, metric=metric, shortlist_dim=DS)
    scores, ids = index.search(queries, k=10, funnel=[(DS, N), (D, 10)])
    ref = _brute(db, queries, D, metric)
    _check_knn(ids, ref, 10)
    expected = np.take_along_axis(ref, ids, axis=1)
    np.testing.assert_allclose(scores, -expected if metric == "l2" else expected, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("metric", ["cosine", "ip", "l2"])
@pytest.mark.parametrize("middle", [16, 24])  # 16 divides D (fused FAISS path), 24 does not (gather + einsum)
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_multistage_funnel_matches_per_query_loop(metric, middle, dtype):
    db, queries = _data(3)
    db = db.astype(dtype).astype(np.float32)  # the reference sees exactly the stored values
    funnel = [(DS, 120), (middle, 40), (D, 10)]
    index = FunnelIndex(db, metric=metric, shortlist_dim=DS, dtype=dtype)
    _, ids, stats = index.search(queries, k=5, funnel=funnel, return_stats=True)
    ref = _funnel_reference(db, queries, funnel, metric, 5)
    # continuous random data has no ties, so the ids agree exactly
    np.testing.assert_array_equal(ids, ref)
    assert stats.flops_per_query == N * DS + 120 * middle + 40 * D


def test_float16_storage_halves_memory_and_keeps_results():
    db, queries = _data(4)
    full = FunnelIndex(db, shortlist_dim=DS)
    half = FunnelIndex(db, shortlist_dim=DS, dtype="float16")
    assert half.memory_bytes()["vectors"] * 2 == full.memory_bytes()["vectors"]
    _, ids32 = full.search(queries, k=10, funnel=[(DS, 100), (D, 10)])
    _, ids16 = half.search(queries, k=10, funnel=[(DS, 100), (D, 10)])
    assert (ids32 == ids16).mean() > 0.95


def test_hnsw_shortlist_recovers_exact_neighbours_and_measures_cost():
    db, queries = _data(5)
    index = FunnelIndex(db, shortlist_dim=DS, shortlist="hnsw", hnsw_m=16, ef_search=200)
    _, ids, stats = index.search(queries, k=10, funnel=[(DS, 200), (D, 10)], return_stats=True)
    _, flat_ids = FunnelIndex(db, shortlist_dim=DS).search(queries, k=10, funnel=[(DS, 200), (D, 10)])
    assert (ids == flat_ids).mean() > 0.95
    distances = stats.shortlist_distances
    assert 0 < distances
    assert index.flops_per_query([(DS, 200), (D, 10)], distances) == pytest.approx(distances * DS + 200 * D)
    assert stats.flops_per_query == pytest.approx(distances * DS + 200 * D)


def test_add_appends_with_continuing_ids():
    db, queries = _data(6)
    index = FunnelIndex(db[:300], shortlist_dim=DS, labels=np.zeros(300, dtype=np.int64))
    index.add(db[300:], labels=np.ones(N - 300, dtype=np.int64))
    assert index.ntotal == N and index.labels[-1] == 1
    _, ids = index.search(db[350:355], k=1, funnel=[(DS, 50), (D, 1)])
    assert ids[:, 0].tolist() == list(range(350, 355))
    with pytest.raises(MRLError, match="labels must be given to add"):
        index.add(db[:3])


def test_prefix_normalisation_does_not_touch_inputs():
    db, queries = _data(7)
    before_db, before_q = db.copy(), queries.copy()
    index = FunnelIndex(db, shortlist_dim=DS)
    index.search(queries, k=5)
    exact_search(db, queries, k=5)
    np.testing.assert_array_equal(db, before_db)
    np.testing.assert_array_equal(queries, before_q)


def test_default_funnel_and_costs():
    db, _ = _data()
    index = FunnelIndex(db, shortlist_dim=DS)
    assert index.default_funnel(10) == [(DS, 200), (D, 10)]
    assert FunnelIndex(db, shortlist_dim=D).default_funnel(10) == [(D, 10)]
    assert stage_flops([(16, 200), (2048, 10)], 10**6) == [16e6, 200 * 2048.0]
    assert funnel_flops([(16, 800), (32, 400), (2048, 10)], 1000, shortlist_distances=50) == 50 * 16 + 800 * 32 + 400 * 2048


@pytest.mark.parametrize("shortlist", ["flat", "hnsw"])
def test_save_load_round_trip(tmp_path, shortlist):
    db, queries = _data(8)
    labels = np.arange(N) % 3
    index = FunnelIndex(db, metric="l2", shortlist_dim=DS, shortlist=shortlist, dtype="float16", labels=labels)
    index.funnel = [(DS, 64), (D, 10)]
    scores, ids = index.search(queries, k=10)
    index.save(tmp_path / "idx")
    manifest = json.loads((tmp_path / "idx" / "manifest.json").read_text())
    assert manifest["kind"] == "index" and set(manifest["files"]) == {"vectors.npy", "shortlist.faiss", "labels.npy"}
    assert (manifest["meta"]["fields"]["shortlist"], manifest["meta"]["fields"]["metric"]) == (shortlist, "l2")
    for mmap in (False, True):  # float16 here; float32 memory maps are covered below
        loaded = FunnelIndex.load(tmp_path / "idx", mmap=mmap)
        assert loaded.funnel == [(DS, 64), (D, 10)] and loaded.metric == "l2" and loaded.dtype == "float16"
        np.testing.assert_array_equal(loaded.labels, labels)
        scores2, ids2 = loaded.search(queries, k=10)
        np.testing.assert_array_equal(ids2, ids)
        np.testing.assert_allclose(scores2, scores)
    with pytest.raises(MRLError, match="already exists"):
        index.save(tmp_path / "idx")
    index.save(tmp_path / "idx", overwrite=True)


def test_memory_mapped_float32_index_searches_like_the_original(tmp_path):
    db, queries = _data(11)
    index = FunnelIndex(db, shortlist_dim=DS)
    _, ids = index.search(queries, k=10, funnel=[(DS, 100), (16, 30), (D, 10)])
    index.save(tmp_path / "idx")
    loaded = FunnelIndex.load(tmp_path / "idx", mmap=True)
    assert isinstance(loaded.vectors.base, np.memmap) or isinstance(loaded.vectors, np.memmap)
    _, ids2 = loaded.search(queries, k=10, funnel=[(DS, 100), (16, 30), (D, 10)])
    np.testing.assert_array_equal(ids2, ids)


@pytest.mark.parametrize("name", ["vectors.npy", "shortlist.faiss"])
def test_flipped_byte_is_detected(tmp_path, name):
    db, _ = _data()
    FunnelIndex(db, shortlist_dim=DS).save(tmp_path / "idx")
    path = tmp_path / "idx" / name
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    path.write_bytes(bytes(raw))
    with pytest.raises(MRLError, match=f"{name} does not match the sha256 in its manifest.json; it was changed or is corrupt"):
        FunnelIndex.load(tmp_path / "idx")


def test_load_refuses_foreign_or_incomplete_directories(tmp_path):
    with pytest.raises(MRLError, match="index directory not found"):
        FunnelIndex.load(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MRLError, match=r"is not a funnel index \(no manifest.json\)"):
        FunnelIndex.load(tmp_path / "empty")
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "manifest.json").write_text('{"format": "something-else"}')
    with pytest.raises(MRLError, match="is not a mrl-funnel-index manifest"):
        FunnelIndex.load(tmp_path / "foreign")
    db, _ = _data()
    FunnelIndex(db, shortlist_dim=DS).save(tmp_path / "idx")
    (tmp_path / "idx" / "shortlist.faiss").unlink()
    with pytest.raises(MRLError, match="is missing shortlist.faiss"):
        FunnelIndex.load(tmp_path / "idx")
    manifest = json.loads((tmp_path / "idx" / "manifest.json").read_text())
    manifest["format_version"] = 99
    (tmp_path / "idx" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(MRLError, match="format version 99"):
        FunnelIndex.load(tmp_path / "idx")


@pytest.mark.parametrize(("objective", "key"), [("flops", "flops_per_query"), ("ms", "ms_per_query")])
def test_tuner_picks_cheapest_funnel_by_its_objective(objective, key):
    db, queries = _data(9)
    index = FunnelIndex(db, shortlist_dim=DS)
    tuner = index.tune(queries, k=5, target_recall=0.95, objective=objective)
    assert tuner.target_met_ and tuner.best_["knn_recall"] >= 0.95
    cheaper = [r for r in tuner.results_ if r[key] < tuner.best_[key]]
    assert all(r["knn_recall"] < 0.95 for r in cheaper)
    assert index.funnel == tuner.best_funnel_
    assert "*" in tuner.summary()
    # refit forgets: an impossible target keeps the most accurate funnel and says so
    impossible = FunnelTuner(k=5, target_recall=1.0, candidates=[[(DS, 5)]]).fit(index, queries)
    assert not impossible.target_met_ and impossible.best_funnel_ == [(DS, 5)]


def test_tuner_errors():
    with pytest.raises(NotFittedError, match="call fit"):
        FunnelTuner().summary()
    db, queries = _data()
    index = FunnelIndex(db, shortlist_dim=DS)
    with pytest.raises(MRLError, match=r"target_recall must be in \(0, 1\], got 1.5"):
        FunnelTuner(target_recall=1.5).fit(index, queries)
    with pytest.raises(MRLError, match=r"objective must be one of ms, flops, got 'fast'"):
        FunnelTuner(objective="fast").fit(index, queries)
    with pytest.raises(MRLError, match=r"objective 'flops' applies without shortlists"):
        index.tune(queries, shortlists=[ShortlistSpec("flat", "float32", DS)], objective="flops")


def test_candidate_funnels_are_valid_and_end_at_k():
    for funnel in candidate_funnels(2048, 16, 10**6, 10):
        assert funnel[0][0] == 16 and funnel[-1][1] == 10
        lengths = [n for _, n in funnel]
        assert lengths == sorted(lengths, reverse=True)


def test_candidate_funnels_shortlist_lengths_step_by_sqrt2():
    first = sorted({funnel[0][1] for funnel in candidate_funnels(2048, 16, 10**6, 10)})
    assert first == [10, 20, 28, 40, 57, 80, 113, 160, 226, 320, 453, 640, 905, 1280, 1810]
    assert max(funnel[0][1] for funnel in candidate_funnels(2048, 16, 100, 10)) == 80  # never more than N


def test_evaluate_configurations_rows():
    db, queries = _data(10)
    labels = (db[:, 0] > 0).astype(np.int64)
    query_labels = (queries[:, 0] > 0).astype(np.int64)
    index = FunnelIndex(db, shortlist_dim=DS, labels=labels)
    rows = evaluate_configurations(index, queries, query_labels, ["exact", "exact:8", f"{DS}:{N},{D}:10"], k=10)
    assert [r["config"] for r in rows] == ["exact", "exact:8", f"{DS}:{N},{D}:10"]
    assert rows[0]["knn_recall@10"] == 1.0 and rows[2]["knn_recall@10"] == pytest.approx(1.0)
    assert rows[0]["map@10"] == pytest.approx(rows[2]["map@10"])
    assert rows[0]["mflops"] == pytest.approx(N * D / 1e6)
    with pytest.raises(MRLError, match="exact prefix dim must be in"):
        evaluate_configurations(index, queries, query_labels, ["exact:99"])


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda ix, q: ix.search(q[:, :16]), r"queries has dimension 16 but the index holds 32-dim vectors"),
        (lambda ix, q: ix.search(q, k=N + 1), rf"k={N + 1} is larger than the database \({N} vectors\)"),
        (lambda ix, q: ix.search(q, k=10, funnel=[(DS, 5), (D, 5)]), r"last funnel stage keeps 5 candidates, fewer than k=10"),
        (lambda ix, q: ix.search(q, k=10, funnel=[(DS, 100), (D, 200)]), r"lengths must not grow"),
        (lambda ix, q: ix.search(q, k=10, funnel=[(DS, 100), (32, 50), (16, 10)]), r"dims must be strictly ascending, got \[8, 32, 16\]"),
        (lambda ix, q: ix.search(q, k=10, funnel=[(16, 100), (D, 10)]), r"must start at the shortlist dim 8"),
        (lambda ix, q: ix.search(q, k=10, funnel=[(DS, N + 1), (D, 10)]), r"shortlist length 401 is larger than the database"),
        (lambda ix, q: ix.search(q, k=10, funnel=[(DS, 100), (64, 10)]), r"stage dim 64 is larger than the vectors' dimension 32"),
        (lambda ix, q: ix.search(np.where(q > 1, np.nan, q)), r"queries row \d+ holds NaN"),
        (lambda ix, q: ix.search(q, k=0), r"k must be a positive integer, got 0"),
        (lambda ix, q: FunnelIndex(np.full((3, 4), np.nan, np.float32)), r"vectors row 0 holds NaN"),
        (lambda ix, q: FunnelIndex(q, shortlist_dim=64), r"shortlist_dim must be an integer in \[1, 32\], got 64"),
        (lambda ix, q: FunnelIndex(q, metric="dot"), r"metric must be one of \['cosine', 'ip', 'l2'\], got 'dot'"),
        (lambda ix, q: FunnelIndex(q, shortlist="lsh"), r"shortlist must be one of \['flat', 'hnsw', 'ivf'\], got 'lsh'"),
        (lambda ix, q: FunnelIndex(q, dtype="int8"), r"dtype must be one of"),
        (lambda ix, q: FunnelIndex(q[0]), r"vectors must be a 2-D array"),
        (lambda ix, q: FunnelIndex(q, labels=np.zeros(3, dtype=int)), r"labels must be an integer array of shape \(25,\)"),
        (lambda ix, q: parse_funnel("16-200"), r"dim:shortlist_length pairs"),
        (lambda ix, q: FunnelIndex(q, shortlist="hnsw").flops_per_query([(16, 10)]), r"hnsw shortlist's cost is measured: pass shortlist_distances"),
    ],
)
def test_errors(call, match):
    db, queries = _data()
    index = FunnelIndex(db, shortlist_dim=DS)
    with pytest.raises(MRLError, match=match):
        call(index, queries)


def test_tuner_skips_dominated_candidates_and_accepts_ground_truth():
    db, queries = _data(12)
    index = FunnelIndex(db, shortlist_dim=DS)
    _, exact_ids = exact_search(db, queries, k=5)
    candidates = [[(DS, 5)], [(DS, 200), (D, 5)], [(DS, 400), (D, 5)]]
    tuner = FunnelTuner(k=5, target_recall=0.95, candidates=candidates).fit(index, queries, exact_ids=exact_ids)
    assert [r["spec"] for r in tuner.results_] == ["8:5", "8:200,32:5"]  # 8:400,32:5 costs more than a success
    assert tuner.best_funnel_ == [(DS, 200), (D, 5)]
    with pytest.raises(MRLError, match="exact_ids has 3 rows but there are 25 sample queries"):
        FunnelTuner(k=5).fit(index, queries, exact_ids=exact_ids[:3])


@pytest.mark.parametrize("headroom", [0, 1, 2])
def test_tuner_headroom_chooses_grid_steps_past_the_first_success(tmp_path, headroom):
    """With headroom h the tuner measures h more funnels on a chain past the first meeting the target
    and picks the h-th of them: every shorter one it skipped over met the target too."""
    db, queries = _data(12)
    index = FunnelIndex(db, shortlist_dim=DS)
    _, exact_ids = exact_search(db, queries, k=5)
    lengths = [5, 10, 20, 40, 80, 160, 320, 400]
    candidates = [[(DS, n), (D, 5)] for n in lengths]
    plain = FunnelTuner(k=5, target_recall=0.96, candidates=candidates, objective="flops").fit(index, queries, exact_ids=exact_ids)
    first = lengths.index(plain.best_funnel_[0][1])
    assert 0 < first < len(lengths) - 3  # the data leave room for the steps asked for
    tuner = FunnelTuner(k=5, target_recall=0.96, candidates=candidates, objective="flops", headroom=headroom).fit(index, queries, exact_ids=exact_ids)
    assert [r["funnel"] for r in tuner.results_] == candidates[: first + headroom + 1]  # longer ones are skipped
    assert tuner.best_funnel_ == candidates[first + headroom]
    assert [r["holds_target"] for r in tuner.results_] == [False] * (first + headroom) + [True]
    assert all(r["meets_target"] for r in tuner.results_[first:])
    # The same choice through FunnelIndex.tune, the IndexTuner and the CLI.
    assert index.tune(queries, k=5, target_recall=0.96, candidates=candidates, objective="flops", headroom=headroom).best_funnel_ == candidates[first + headroom]
    picked = IndexTuner(k=5, target_recall=0.96, shortlists=[ShortlistSpec("flat", "float32", DS)], candidates=candidates, repeats=1,
                        headroom=headroom).fit(index, queries, exact_ids)
    assert picked.best_funnel_ == candidates[first + headroom] and picked.best_["holds_target"]


@pytest.mark.parametrize("headroom", [-1, 65, 1.5, True])
def test_bad_headroom_is_refused_before_any_build(monkeypatch, headroom):
    from mrl.retrieval import shortlist as shortlist_module

    db, queries = _data()
    index = FunnelIndex(db, shortlist_dim=DS)
    with pytest.raises(MRLError, match=r"headroom must be an integer >= 0 and <= 64, got"):
        FunnelTuner(headroom=headroom).fit(index, queries)
    monkeypatch.setattr(shortlist_module.Shortlist, "build", lambda *a, **k: pytest.fail("built before checking headroom"))
    with pytest.raises(MRLError, match=r"headroom must be an integer >= 0 and <= 64, got"):
        IndexTuner(headroom=headroom, shortlists=[ShortlistSpec("flat", "int8", DS)]).fit(index, queries)
