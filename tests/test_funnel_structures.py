"""Shortlist kinds x encodings x stores against numpy brute force; index files; MIPS; adaptive depth."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap

import faiss
import numpy as np
from faiss.contrib import inspect_tools
import pytest
from click.testing import CliRunner

from mrl.cli import cli
from mrl.errors import MRLError
from mrl.io import save_npz
from mrl.retrieval import FunnelIndex, exact_search
from mrl.retrieval.shortlist import ENCODINGS, KINDS, Shortlist, ShortlistSpec, sign_bits
from mrl.retrieval.tuning import parse_shortlists

N, D, DS, NLIST = 400, 32, 8, 8


def _data(seed=0, n=N, nq=20):
    rng = np.random.default_rng(seed)
    scale = (1.0 / np.sqrt(np.arange(1, D + 1))).astype(np.float32)
    return (rng.standard_normal((n, D)).astype(np.float32) * scale, rng.standard_normal((nq, D)).astype(np.float32) * scale)


def _prefix(x, dim, metric):
    p = x[:, :dim].astype(np.float64)
    return p / np.linalg.norm(p, axis=1, keepdims=True) if metric == "cosine" else p


def _scores(q, x, metric):
    """Larger-is-better scores [Q, N] of query rows q against database rows x (both already prefixed)."""
    return -((q[:, None, :] - x[None, :, :]) ** 2).sum(-1) if metric == "l2" else q @ x.T


def _exhaustive(kind, encoding, metric, db):
    options = {"shortlist": kind, "encoding": encoding, "metric": metric, "shortlist_dim": DS}
    if kind == "ivf":
        options.update(nlist=NLIST, nprobe=NLIST)
    if kind == "hnsw":
        options.update(ef_search=N, hnsw_m=16)
    if encoding == "pq":
        options.update(pq_m=4, pq_nbits=6)
    return FunnelIndex(db, **options)


def _check_top_set(ids, ref, n, atol):
    """ids [Q, n] must be an exact top-n set of the reference scores [Q, N], ties at the boundary may swap."""
    expected = -np.sort(-ref, axis=1)[:, :n]
    got = -np.sort(-np.take_along_axis(ref, ids, axis=1), axis=1)
    np.testing.assert_allclose(got, expected, atol=atol)
    assert all(len(set(row)) == n for row in ids.tolist())


CASES = [(kind, encoding, metric) for kind in KINDS for encoding in ENCODINGS for metric in ("cosine", "l2")]
CASES += [(kind, "float32", "ip") for kind in KINDS]


@pytest.mark.parametrize(("kind", "encoding", "metric"), CASES)
def test_exhaustive_search_equals_brute_force_funnel_in_both_stores(tmp_path, kind, encoding, metric):
    db, queries = _data(1)
    index = _exhaustive(kind, encoding, metric, db)
    n1, k = 60, 10
    # Stage 1 (alone: the n1 candidates re-scored in float) is an exact top-n1 of what the
    # structure stores: the float prefixes, their decoded codes, or their sign bits (Hamming).
    stored = index.shortlist_vectors()
    q = _prefix(queries, DS, metric)
    if encoding == "binary":
        np.testing.assert_array_equal(stored, sign_bits(_prefix(db, DS, metric)))
        hamming = np.unpackbits(sign_bits(q)[:, None, :] ^ stored[None, :, :], axis=2).sum(-1)
        ref1 = -hamming.astype(np.float64)
    else:
        if encoding == "float32":
            np.testing.assert_allclose(stored[:, :DS], _prefix(db, DS, metric), rtol=1e-5, atol=1e-6)
        # HNSW graphs rank by L2 (unit prefixes for cosine; for ip, L2 on the MIPS reduction, which
        # orders by the inner product: see mrl.retrieval.shortlist); the others by the metric.
        ref1 = _scores(q, stored[:, :DS].astype(np.float64), "l2" if kind == "hnsw" and metric == "cosine" else metric)
    _, shortlist = index.search(queries, k=n1, funnel=[(DS, n1)])
    _check_top_set(shortlist, ref1, n1, atol=1e-3 if encoding in ("float32", "float16") else 2e-3)
    if encoding == "float32":  # no quantisation: the whole funnel equals brute force on the raw vectors
        _check_top_set(shortlist, _scores(q, _prefix(db, DS, metric), metric), n1, atol=1e-4)
    # Stage 2 reranks exactly that shortlist by the full D-dim float score.
    scores, ids = index.search(queries, k=k, funnel=[(DS, n1), (D, k)])
    full = _scores(_prefix(queries, D, metric), _prefix(db, D, metric), metric)
    masked = np.full_like(full, -np.inf)
    np.put_along_axis(masked, shortlist, np.take_along_axis(full, shortlist, axis=1), axis=1)
    expected = np.argsort(-masked, axis=1, kind="stable")[:, :k]
    np.testing.assert_array_equal(ids, expected)
    np.testing.assert_allclose(scores, np.take_along_axis(-full if metric == "l2" else full, ids, axis=1), rtol=1e-4, atol=1e-4)
    # The memory-mapped store gives the same results.
    index.save(tmp_path / "idx")
    mapped = FunnelIndex.load(tmp_path / "idx", store="mmap")
    assert mapped.store == "mmap" and isinstance(mapped.vectors.base, np.memmap)
    scores_m, ids_m = mapped.search(queries, k=k, funnel=[(DS, n1), (D, k)])
    np.testing.assert_array_equal(ids_m, ids)
    np.testing.assert_allclose(scores_m, scores, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_binary_codes_are_sign_bits_of_the_prefix(kind):
    db, _ = _data(2)
    index = FunnelIndex(db, shortlist=kind, encoding="binary", shortlist_dim=16, **({"nlist": 4} if kind == "ivf" else {}))
    codes = index.shortlist_vectors()
    assert codes.shape == (N, 2) and codes.dtype == np.uint8
    bits = np.unpackbits(codes, axis=1, bitorder="little").astype(bool)
    np.testing.assert_array_equal(bits, db[:, :16] > 0)


def test_adanns_ivf_clusters_on_the_coarse_prefix():
    db, queries = _data(3)
    index = FunnelIndex(db, shortlist="ivf", shortlist_dim=16, coarse_dim=4, nlist=NLIST, nprobe=2)
    assert (index.spec.coarse_dim, index.spec.nlist) == (4, NLIST)
    # Every vector sits in the list of its nearest centroid on the 4-dim (normalised) prefix.
    shortlist = index._shortlist
    assert shortlist._coarse.d == 4 and shortlist._index.d == 16
    _, nearest = shortlist._coarse.search(_prefix(db, 4, "cosine").astype(np.float32), 1)
    for list_no in range(NLIST):
        members, _ = inspect_tools.get_invlist(shortlist._index.invlists, list_no)
        np.testing.assert_array_equal(np.sort(members), np.flatnonzero(nearest[:, 0] == list_no))
    # Probing 2 of 8 lists scans part of the database plus the 8 centroids; all 8 scan everything.
    _, _, stats = index.search(queries, k=10, funnel=[(16, 40), (D, 10)], return_stats=True)
    assert NLIST < stats.shortlist_distances < N * 0.75
    _, _, everything = index.search(queries, k=10, funnel=[(16, 40), (D, 10)], nprobe=NLIST, return_stats=True)
    assert everything.shortlist_distances == NLIST + N


def test_hnsw_inner_product_recall_matches_cosine():
    """Issue 13 B3: an inner-product HNSW graph misses neighbours; the MIPS-to-L2 reduction does not."""
    rng = np.random.default_rng(0)
    n, d, dim, length = 10000, 64, 16, 100
    scale = np.arange(1, d + 1, dtype=np.float32) ** -0.5
    db = rng.standard_normal((n, d)).astype(np.float32) * scale
    queries = rng.standard_normal((50, d)).astype(np.float32) * scale
    recall = {}
    for metric in ("cosine", "ip"):
        _, exact = exact_search(db, queries, length, metric=metric, dim=dim)
        index = FunnelIndex(db, metric=metric, shortlist="hnsw", shortlist_dim=dim, ef_search=length)
        _, ids = index.search(queries, k=length, funnel=[(dim, length)])
        recall[metric] = np.mean([len(set(a) & set(b)) / length for a, b in zip(ids.tolist(), exact.tolist())])
    plain = faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT)
    plain.hnsw.efConstruction = 80
    plain.add(np.ascontiguousarray(db[:, :dim]))
    _, plain_ids = plain.search(np.ascontiguousarray(queries[:, :dim]), length, params=faiss.SearchParametersHNSW(efSearch=4 * length))
    plain_recall = np.mean([len(set(a) & set(b)) / length for a, b in zip(plain_ids.tolist(), exact.tolist())])
    assert recall["cosine"] > 0.98
    assert recall["ip"] >= recall["cosine"] - 0.01
    assert plain_recall < recall["ip"] - 0.05  # the same beam without the reduction falls short


def test_adaptive_shortlist_margin_against_fixed_depth():
    db, queries = _data(4)
    index = FunnelIndex(db, shortlist_dim=DS)
    funnel = [(DS, 100), (D, 10)]
    fixed, fixed_ids, fixed_stats = index.search(queries, k=10, funnel=funnel, return_stats=True)
    _, wide_ids, wide_stats = index.search(queries, k=10, funnel=funnel, shortlist_margin=10.0, return_stats=True)
    np.testing.assert_array_equal(wide_ids, fixed_ids)  # a margin wider than any gap keeps everything
    assert wide_stats.mean_shortlist_length == fixed_stats.mean_shortlist_length == 100
    margin = 0.05
    _, ids, stats = index.search(queries, k=10, funnel=funnel, shortlist_margin=margin, return_stats=True)
    # Reference: cosine on the 8-dim prefix, keep candidates within the margin of the 10th best, rerank in full.
    s1 = _scores(_prefix(queries, DS, "cosine"), _prefix(db, DS, "cosine"), "cosine")
    full = _scores(_prefix(queries, D, "cosine"), _prefix(db, D, "cosine"), "cosine")
    lengths = []
    for qi in range(len(queries)):
        order = np.argsort(-s1[qi], kind="stable")[:100]
        kept = [i for rank, i in enumerate(order) if rank < 10 or s1[qi, i] >= s1[qi, order[9]] - margin - 1e-6]
        lengths.append(len(kept))
        expected = sorted(kept, key=lambda i: -full[qi, i])[:10]
        assert ids[qi].tolist() == expected
    assert stats.mean_shortlist_length == pytest.approx(np.mean(lengths))
    assert stats.mean_shortlist_length < 100
    assert stats.flops_per_query == pytest.approx(N * DS + np.mean(lengths) * D)
    with pytest.raises(MRLError, match="shortlist_margin must be a number >= 0, got -1"):
        index.search(queries, shortlist_margin=-1)


# -- files --------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_save_load_round_trip_of_every_kind(tmp_path, kind):
    db, queries = _data(5)
    options = {"nlist": NLIST, "coarse_dim": 16} if kind == "ivf" else {}
    index = FunnelIndex(db, shortlist=kind, encoding="pq", pq_m=4, pq_nbits=4, labels=np.arange(N) % 3, **options)
    index.funnel = [(16, 50), (16, 20), (D, 10)]  # a float re-score of the pq shortlist on the same prefix
    scores, ids = index.search(queries, k=10)
    index.save(tmp_path / "idx")
    expected = {"manifest.json", "vectors.npy", "shortlist.faiss", "labels.npy"} | ({"coarse.faiss"} if kind == "ivf" else set())
    assert {p.name for p in (tmp_path / "idx").iterdir()} == expected
    for store in ("memory", "mmap"):
        loaded = FunnelIndex.load(tmp_path / "idx", store=store)
        assert loaded.spec == index.spec and loaded.funnel == index.funnel and loaded.build_seconds == index.build_seconds
        scores2, ids2 = loaded.search(queries, k=10)
        np.testing.assert_array_equal(ids2, ids)
        np.testing.assert_allclose(scores2, scores, rtol=1e-6)


def _saved(tmp_path, **options):
    db, _ = _data(6)
    FunnelIndex(db, **options).save(tmp_path / "idx")
    return tmp_path / "idx"


@pytest.mark.parametrize("name", ["vectors.npy", "shortlist.faiss", "coarse.faiss", "labels.npy"])
def test_every_file_is_checksummed(tmp_path, name):
    idx = _saved(tmp_path, shortlist="ivf", nlist=NLIST, labels=np.zeros(N, dtype=np.int64))
    raw = bytearray((idx / name).read_bytes())
    raw[-1] ^= 0x01
    (idx / name).write_bytes(bytes(raw))
    with pytest.raises(MRLError, match=f"{name} does not match the sha256 in its manifest.json; it was changed or is corrupt"):
        FunnelIndex.load(idx)


def test_manifest_edits_symlinks_and_extra_names_are_refused(tmp_path):
    idx = _saved(tmp_path, shortlist="ivf", nlist=NLIST)
    manifest_path = idx / "manifest.json"
    original = json.loads(manifest_path.read_text())

    def refused(record, match):
        manifest_path.write_text(json.dumps(record))
        with pytest.raises(MRLError, match=match):
            FunnelIndex.load(idx)
        manifest_path.write_text(json.dumps(original))

    edited = json.loads(json.dumps(original))
    edited["meta"]["fields"]["metric"] = "ip"  # a plausible edit: caught by the settings' checksum
    refused(edited, "was edited: its settings do not match their sha256")
    typed = json.loads(json.dumps(original))
    typed["meta"]["fields"]["nprobe"] = "8"
    from mrl.retrieval.index_format import _digest

    typed["meta"]["sha256"] = _digest(typed["meta"]["fields"])  # even a consistent checksum cannot carry an ill-typed field
    refused(typed, r"field 'nprobe' has an invalid value '8'")
    foreign = json.loads(json.dumps(original))
    foreign["files"]["../../etc/passwd"] = foreign["files"].pop("coarse.faiss")
    refused(foreign, r"'../../etc/passwd' is not a plain file name")
    missing = json.loads(json.dumps(original))
    del missing["files"]["coarse.faiss"]
    refused(missing, r"lists files .*an index with these settings has")
    FunnelIndex.load(idx)  # restored
    (idx / "coarse.faiss").rename(tmp_path / "elsewhere.faiss")
    (idx / "coarse.faiss").symlink_to(tmp_path / "elsewhere.faiss")
    with pytest.raises(MRLError, match="coarse.faiss is not a regular file"):
        FunnelIndex.load(idx)


# -- bad inputs ---------------------------------------------------------------------------------


def test_opq_rounds_reach_faiss_and_stay_out_of_the_saved_spec(tmp_path):
    db, queries = _data()
    spec = parse_shortlists("flat:opq:8:3")[0]
    shortlist = Shortlist.build(db, spec, "cosine")
    rotation = faiss.downcast_VectorTransform(shortlist._index.chain.at(0))
    assert (rotation.niter, shortlist.spec.opq_niter) == (3, 3)
    assert spec == dataclasses.replace(spec, opq_niter=None)  # a training setting, not part of the structure
    index = FunnelIndex(db, shortlist_dim=DS)
    index.tune(queries, k=5, target_recall=0.5, shortlists=[spec])
    index.save(tmp_path / "idx")
    assert FunnelIndex.load(tmp_path / "idx").spec.opq is True


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        (ShortlistSpec("flat", "pq", DS, opq=True, opq_niter=0), r"opq_niter must be a positive integer, got 0"),
        (ShortlistSpec("flat", "pq", DS, opq_niter=5), r"opq_niter applies to an OPQ rotation only \(opq=True\)"),
    ],
)
def test_bad_opq_rounds(spec, match):
    with pytest.raises(MRLError, match=match):
        spec.resolved(N, D, "cosine")


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"shortlist": "ivf", "nlist": N + 1}, rf"nlist={N + 1} is larger than the database \({N} vectors\)"),
        ({"encoding": "int4"}, r"encoding must be one of \['float32', 'float16', 'int8', 'binary', 'pq'\], got 'int4'"),
        ({"encoding": "pq", "pq_m": 3}, r"pq_m=3 sub-quantisers do not divide the shortlist prefix of 8 dims"),
        ({"shortlist": "ivf", "coarse_dim": D + 1}, rf"coarse_dim {D + 1} is larger than the vectors' dimension {D}"),
        ({"encoding": "binary", "shortlist_dim": 12}, r"shortlist_dim must be a multiple of 8, got 12"),
        ({"shortlist": "hnsw", "encoding": "pq", "metric": "ip"}, r"cannot take metric 'ip'"),
        ({"nlist": 4}, r"coarse_dim and nlist apply to the ivf shortlist only"),
        ({"pq_m": 4}, r"pq_m and opq apply to the pq encoding only"),
    ],
)
def test_bad_structure_arguments(options, match):
    db, _ = _data()
    with pytest.raises(MRLError, match=match):
        FunnelIndex(db, **{"shortlist_dim": DS, **options})


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--shortlist", "ivf", "--nlist", "401"], "Error: nlist=401 is larger than the database (400 vectors)"),
        (["--encoding", "pq", "--pq-m", "3"], "Error: pq_m=3 sub-quantisers do not divide the shortlist prefix of 8 dims"),
        (["--shortlist", "ivf", "--coarse-dim", "33"], "Error: coarse_dim 33 is larger than the vectors' dimension 32"),
        (["--encoding", "int4"], "Invalid value for '--encoding'"),
    ],
)
def test_cli_build_bad_inputs_write_nothing(tmp_path, args, message):
    db, _ = _data()
    save_npz(tmp_path / "db.npz", X=db)
    result = CliRunner().invoke(cli, ["index", "build", str(tmp_path / "db.npz"), "--out", str(tmp_path / "idx"),
                                      "--shortlist-dim", "8", "--quiet", *args], catch_exceptions=False)
    assert result.exit_code != 0 and message in result.output and "Traceback" not in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["db.npz"]


def test_cli_ivf_build_info_and_adaptive_search(tmp_path):
    db, queries = _data(7)
    save_npz(tmp_path / "db.npz", X=db)
    save_npz(tmp_path / "q.npz", X=queries)
    run = lambda *a: CliRunner().invoke(cli, [str(x) for x in a], catch_exceptions=False)  # noqa: E731
    result = run("index", "build", tmp_path / "db.npz", "--out", tmp_path / "idx", "--shortlist", "ivf", "--encoding", "int8",
                 "--shortlist-dim", 8, "--coarse-dim", 4, "--nlist", 8, "--quiet")
    assert result.exit_code == 0, result.output
    result = run("index", "info", tmp_path / "idx", "--json")
    info = json.loads(result.output)
    assert (info["n_vectors"], info["dim"], info["shortlist_kind"], info["encoding"], info["coarse_dim"], info["nlist"]) == (
        N, D, "ivf", "int8", 4, 8)
    # SQ8 stores one byte per prefix dim; the memory store adds the 4-byte float32 vectors.
    assert DS <= info["shortlist_bytes_per_vector"] < DS + 64
    assert info["ram_bytes_per_vector_memory_store"] == pytest.approx(info["shortlist_bytes_per_vector"] + 4 * D)
    assert info["disk_bytes_per_vector"] > 4 * D
    result = run("index", "search", tmp_path / "idx", tmp_path / "q.npz", "--store", "mmap", "--nprobe", 8,
                 "--funnel", "8:100,32:10", "--shortlist-margin", "0.05", "--out", tmp_path / "r.npz")
    assert result.exit_code == 0, result.output
    assert "candidates reranked per query" in result.output


# -- memory -------------------------------------------------------------------------------------


_RSS_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import numpy as np

    def rss_anon():
        for line in open("/proc/self/status"):
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024

    from mrl.retrieval import FunnelIndex
    queries = np.load(sys.argv[2])
    small = np.random.default_rng(0).standard_normal((300, 2048)).astype(np.float16)
    FunnelIndex(small, shortlist_dim=16, dtype="float16").search(queries[:2], k=10)  # imports and code paths warmed
    before = rss_anon()
    index = FunnelIndex.load(sys.argv[1], store="mmap")
    index.search(queries, k=10, funnel=[(16, 200), (2048, 10)])
    after = rss_anon()
    print(json.dumps({"grown": after - before, "shortlist": index.memory_bytes()["shortlist"], "vectors": index.vectors.nbytes}))
    """
)


def test_mmap_store_keeps_anonymous_memory_near_the_shortlist(tmp_path):
    """200k x 2048 float16 (800 MB on disk): a process searching the mapped index grows by about the shortlist only."""
    n, d = 200_000, 2048
    rng = np.random.default_rng(0)
    vectors = np.tile(rng.standard_normal((1000, d)).astype(np.float16), (n // 1000, 1))  # cheap to make; prefixes made distinct below
    vectors[:, :16] += rng.standard_normal((n, 16)).astype(np.float16)
    FunnelIndex(vectors, shortlist_dim=16, dtype="float16").save(tmp_path / "idx")
    del vectors
    np.save(tmp_path / "q.npy", rng.standard_normal((100, d)).astype(np.float32))
    # glibc's malloc keeps freed blocks of temporaries for reuse, with a threshold that adapts to
    # past frees, so RssAnon would also count 30-70 MB of retained, unused heap that varies run to
    # run. Fixed thresholds make it return freed blocks: what remains is what the index holds.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"}
    out = subprocess.run([sys.executable, "-c", _RSS_SCRIPT, str(tmp_path / "idx"), str(tmp_path / "q.npy")],
                         capture_output=True, text=True, env=env, timeout=300, check=True)
    facts = json.loads(out.stdout.strip().splitlines()[-1])
    # Bound: the flat 16-dim shortlist (N x 16 float32, 12.2 MiB) plus 4 MiB for small objects the
    # search creates (its stage-1 results, 100 x 200 scores and ids, are 0.2 MiB). The 800 MB
    # table of full vectors, read during the search, is not in the process's own memory.
    bound = facts["shortlist"] + (4 << 20)
    assert 0.9 * facts["shortlist"] <= facts["grown"] <= bound, facts
    assert bound < facts["vectors"] / 40


# -- tuning -------------------------------------------------------------------------------------


def test_index_tuner_pareto_set_budgets_and_saved_choice(tmp_path):
    from mrl.retrieval import IndexTuner, ShortlistSpec, exact_search

    db, queries = _data(8, n=1000, nq=30)
    index = FunnelIndex(db, shortlist_dim=DS)
    specs = [ShortlistSpec("flat", "float32", DS), ShortlistSpec("flat", "binary", 16), ShortlistSpec("ivf", "int8", DS, nlist=16)]
    _, exact = exact_search(db, queries, 5)
    tuner = IndexTuner(k=5, target_recall=0.9, shortlists=specs, nprobes=(2, 16), max_ram_bytes_per_vector=4 * D + 12,
                       repeats=1).fit(index, queries, exact)
    rows = tuner.results_
    assert {r["shortlist"] for r in rows} == {"flat:float32:8", "flat:binary:16", "ivf:int8:8:8:nlist=16"}  # read back by parse_shortlists
    assert {r["nprobe"] for r in rows if r["shortlist"].startswith("ivf")} == {2, 16}
    # Recall is recomputed here from the ids of the chosen point; RAM = float32 vectors + structure.
    ram = {r["shortlist"]: r["ram_bytes_per_vector"] for r in rows}
    assert ram["flat:float32:8"] == pytest.approx(4 * D + 4 * DS, abs=1)
    assert 4 * D + 2 <= ram["flat:binary:16"] < ram["flat:float32:8"]
    keys = ("knn_recall", "ms_per_query", "ram_bytes_per_vector", "build_seconds")
    better = lambda a, b: all(a[x] >= b[x] if x == "knn_recall" else a[x] <= b[x] for x in keys) and any(a[x] != b[x] for x in keys)  # noqa: E731
    for r in rows:
        assert (r in tuner.pareto_) == (not any(better(o, r) for o in rows if o is not r))
    best = tuner.best_
    assert best["meets_target"] and best["ram_bytes_per_vector"] <= 4 * D + 12
    assert best["shortlist"] != "flat:float32:8"  # 4 * DS bytes of float prefix break the budget
    assert best["ms_per_query"] == min(r["ms_per_query"] for r in rows if r["meets_target"] and r["within_budget"])
    chosen = index.tune(queries, k=5, target_recall=0.9, shortlists=specs, max_ram_bytes_per_vector=4 * D + 12, exact_ids=exact)
    assert f"{index.shortlist}:{index.encoding}:{index.shortlist_dim}" in chosen.best_["shortlist"]
    _, ids = index.search(queries, k=5)
    assert np.mean([len(set(a) & set(b)) / 5 for a, b in zip(ids.tolist(), exact.tolist())]) == pytest.approx(chosen.best_["knn_recall"])
    index.save(tmp_path / "idx")
    loaded = FunnelIndex.load(tmp_path / "idx")
    assert loaded.spec == index.spec and loaded.funnel == index.funnel
    np.testing.assert_array_equal(loaded.search(queries, k=5)[1], ids)
    with pytest.raises(MRLError, match="budgets choose between structures"):
        index.tune(queries, max_ms_per_query=1.0)


def test_cli_tune_with_shortlists(tmp_path):
    db, queries = _data(9, n=600, nq=30)
    save_npz(tmp_path / "db.npz", X=db)
    save_npz(tmp_path / "q.npz", X=queries)
    run = lambda *a: CliRunner().invoke(cli, [str(x) for x in a], catch_exceptions=False)  # noqa: E731
    assert run("index", "build", tmp_path / "db.npz", "--out", tmp_path / "idx", "--shortlist-dim", 8, "--quiet").exit_code == 0
    result = run("index", "tune", tmp_path / "idx", tmp_path / "q.npz", "--k", 5, "--target-recall", 0.9, "--repeats", 1,
                 "--shortlists", "flat:int8:8;hnsw:float32:8", "--store", "mmap")
    assert result.exit_code == 0, result.output
    assert "| shortlist | nprobe/ef |" in result.output and "chose " in result.output
    fields = json.loads((tmp_path / "idx" / "manifest.json").read_text())["meta"]["fields"]
    assert f"{fields['shortlist']}:{fields['encoding']}:8" in result.output.split("chose ")[1]
    before = {p.name: p.read_bytes() for p in (tmp_path / "idx").iterdir()}
    result = run("index", "tune", tmp_path / "idx", tmp_path / "q.npz", "--shortlists", "flat:int8")
    assert result.exit_code == 1 and "Error: shortlists must be ';'-separated kind:encoding:dim" in result.output
    result = run("index", "tune", tmp_path / "idx", tmp_path / "q.npz", "--headroom", -1)
    assert result.exit_code == 1 and "Error: --headroom must be an integer >= 0 and <= 64, got -1" in result.output
    assert {p.name: p.read_bytes() for p in (tmp_path / "idx").iterdir()} == before
    # --headroom 1 saves a funnel whose next-shorter funnel on the same dims met the target as well.
    result = run("index", "tune", tmp_path / "idx", tmp_path / "q.npz", "--k", 5, "--target-recall", 0.9, "--repeats", 1, "--headroom", 1)
    assert result.exit_code == 0, result.output
    chosen = json.loads((tmp_path / "idx" / "manifest.json").read_text())["meta"]["fields"]["funnel"]
    index = FunnelIndex.load(tmp_path / "idx")
    _, exact_ids = exact_search(db, queries, k=5)
    shorter = [[dim, length] for dim, length in chosen]
    shorter[0][1] = max(5, round(chosen[0][1] / 2 ** 0.5))  # one sqrt(2) grid step down (candidate_funnels)
    for funnel in (chosen, shorter):
        ids = index.search(queries, k=5, funnel=[tuple(stage) for stage in funnel])[1]
        assert np.mean([len(set(a) & set(b)) / 5 for a, b in zip(ids.tolist(), exact_ids.tolist())]) >= 0.9


@pytest.mark.parametrize(
    ("text", "expected", "canonical"),
    [
        ("hnsw:int8:16", ShortlistSpec("hnsw", "int8", 16), None),
        ("ivf:int8:32:16", ShortlistSpec("ivf", "int8", 32, coarse_dim=16), None),
        ("flat:opq:64:10", ShortlistSpec("flat", "pq", 64, opq=True, opq_niter=10), None),
        ("hnsw:int8:192:hnsw_m=48:ef_construction=200", ShortlistSpec("hnsw", "int8", 192, hnsw_m=48, ef_construction=200), None),
        ("ivf:pq:384:384:pq_m=32:nlist=2048", ShortlistSpec("ivf", "pq", 384, coarse_dim=384, pq_m=32, nlist=2048),
         "ivf:pq:384:384:nlist=2048:pq_m=32"),
        ("ivf:pq:64:coarse_dim=16:pq_nbits=6:nprobe=4", ShortlistSpec("ivf", "pq", 64, coarse_dim=16, pq_nbits=6, nprobe=4),
         "ivf:pq:64:16:nprobe=4:pq_nbits=6"),
        (" hnsw : float16 : 8 : ef_search = 64 ", ShortlistSpec("hnsw", "float16", 8, ef_search=64), "hnsw:float16:8:ef_search=64"),
        ("flat:opq:64:pq_m=8:opq_niter=3", ShortlistSpec("flat", "pq", 64, opq=True, pq_m=8, opq_niter=3), "flat:opq:64:3:pq_m=8"),
    ],
)
def test_shortlist_entries_name_every_option_and_read_back(text, expected, canonical):
    from mrl.retrieval import format_shortlist

    (spec,) = parse_shortlists(text)
    assert dataclasses.astuple(spec) == dataclasses.astuple(expected)  # astuple: opq_niter is left out of ==
    assert format_shortlist(spec) == (canonical or text)
    assert dataclasses.astuple(parse_shortlists(format_shortlist(spec))[0]) == dataclasses.astuple(spec)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("flat:int8", r"kind:encoding:dim\[:coarse_dim \| :opq_niter\]\[:name=value ...\] entries"),
        ("ivf:int8:32:16:8", r"entries such as hnsw:int8:16"),
        ("hnsw:int8:hnsw_m=48:16", r"got 'hnsw:int8:hnsw_m=48:16'"),  # a name before a positional field
        ("hnsw:int8:16:hnsw_m=4.5", r"dim and every value must be an integer"),
        ("hnsw:int8:16:M=48", r"unknown shortlist option 'M' in 'hnsw:int8:16:M=48'; known: coarse_dim, nlist"),
        ("ivf:int8:16:8:coarse_dim=4", r"shortlist option 'coarse_dim' given twice"),
        ("hnsw:int8:16:hnsw_m=48;hnsw:int8:16:hnsw_m=48:hnsw_m=32", r"shortlist option 'hnsw_m' given twice"),
        ("hnsw:int8:8:hnsw_m=100000", r"hnsw_m must be an integer in \[2, 1024\], got 100000"),  # checked when resolved
        ("hnsw:int8:8:hnsw_m=1", r"hnsw_m must be an integer in \[2, 1024\], got 1"),
        ("hnsw:int8:8:ef_search=2000000", r"ef_search must be at most 1048576, got 2000000"),
        ("ivf:int8:8:nlist=0", r"nlist must be a positive integer, got 0"),
        ("ivf:int8:8:4:nlist=401", r"nlist=401 is larger than the database \(400 vectors\)"),
    ],
)
def test_bad_shortlist_entries(text, match):
    with pytest.raises(MRLError, match=match):
        for spec in parse_shortlists(text):
            spec.resolved(N, D, "cosine")


def test_named_options_reach_the_built_structures(tmp_path):
    """Entries differing only in a named option are separate structures, built as asked, named as parsed."""
    from mrl.retrieval import IndexTuner

    db, queries = _data(11, n=600, nq=20)
    index = FunnelIndex(db, shortlist_dim=DS)
    specs = parse_shortlists("hnsw:float32:8:hnsw_m=8:ef_construction=20;hnsw:float32:8:hnsw_m=16;ivf:pq:16:8:pq_m=4:nlist=12")
    tuner = IndexTuner(k=5, target_recall=0.5, shortlists=specs, nprobes=(12,), ef_searches=(600,), repeats=1).fit(index, queries)
    assert {r["shortlist"] for r in tuner.results_} == {"hnsw:float32:8:hnsw_m=8:ef_construction=20", "hnsw:float32:8:hnsw_m=16",
                                                          "ivf:pq:16:8:nlist=12:pq_m=4"}
    ram = {r["shortlist"]: r["ram_bytes_per_vector"] for r in tuner.results_}
    vectors = 4 * D
    # HNSW's level-0 lists hold 2 M neighbour ids of 4 bytes: M 16 holds 64 bytes per vector more than M 8.
    assert ram["hnsw:float32:8:hnsw_m=16"] - ram["hnsw:float32:8:hnsw_m=8:ef_construction=20"] == pytest.approx(64, abs=4)
    # pq_m=4 reached FAISS: 4 code bytes and an 8-byte id per vector, and 4 x 256 x 4 float codebook entries over 600 vectors
    # (27.3 bytes each), plus the 12 centroids and headers; pq_m's default, 8, would hold 8 code bytes and 2 x 27.3 of codebook.
    codebook = 4 * 256 * 4 * 4 / 600
    assert vectors + 4 + 8 + codebook <= ram["ivf:pq:16:8:nlist=12:pq_m=4"] < vectors + 4 + 8 + codebook + 4
    with pytest.raises(MRLError, match="shortlist hnsw:float32:8:hnsw_m=16 is listed twice"):
        IndexTuner(k=5, shortlists=parse_shortlists("hnsw:float32:8:hnsw_m=16;hnsw:float32:8:hnsw_m=16")).fit(index, queries)


@pytest.mark.parametrize("encoding", ["int8", "pq"])
def test_full_dim_quantised_shortlist_is_tuned_with_a_float_rerank(encoding):
    """At d_1 = D the tuner's funnels re-score the codes' shortlist in float (before, the codes' own top-k was the answer)."""
    from mrl.retrieval import FunnelTuner

    db, queries = _data(12, n=800, nq=30)
    index = FunnelIndex(db, shortlist_dim=D, encoding=encoding, **({"pq_m": D // 4} if encoding == "pq" else {}))
    _, exact = exact_search(db, queries, 5)
    tuner = FunnelTuner(k=5, target_recall=1.0, repeats=1).fit(index, queries, exact)
    assert [(D, 5)] in [r["funnel"] for r in tuner.results_]
    assert all(f[-1] == (D, 5) and all(d == D for d, _ in f) for f in (r["funnel"] for r in tuner.results_))
    codes_alone = next(r for r in tuner.results_ if r["funnel"] == [(D, 5)])
    assert tuner.target_met_ and len(tuner.best_funnel_) == 2 and codes_alone["knn_recall"] < 1.0
    # the chosen funnel's float stage scores like numpy over the codes' shortlist: exact search's ids
    np.testing.assert_array_equal(np.sort(index.search(queries, 5, tuner.best_funnel_)[1], axis=1), np.sort(exact, axis=1))


def test_values_whose_squares_overflow_float32_are_refused(tmp_path):
    """A coordinate of 2e19 is finite, but its square is not in float32: the cosine of such a query
    was computed from an infinite norm (a zero prefix) and its neighbours were meaningless."""
    db, queries = _data(4, n=200, nq=3)
    index = FunnelIndex(db, shortlist_dim=4)
    for array in (queries * 2e19, np.concatenate([queries[:2], np.full((1, db.shape[1]), -1e16)])):
        with pytest.raises(MRLError, match=r"queries row \d holds a value of magnitude .* above 1e\+15: float32 scores"):
            index.search(array, 5)
        with pytest.raises(MRLError, match="above 1e\\+15"):
            exact_search(db, array, 5)
    with pytest.raises(MRLError, match="vectors row 7 holds a value of magnitude 3e\\+20"):
        FunnelIndex(np.where(np.arange(len(db))[:, None] == 7, 3e20, db), shortlist_dim=4)
    edge = np.full((2, db.shape[1]), 1e15)  # the bound itself is allowed, and scores stay finite
    scores, _ = index.search(edge, 5, [(4, 50), (db.shape[1], 5)])
    assert np.isfinite(scores).all()
    np.testing.assert_allclose(scores, index.search(edge / 1e15, 5, [(4, 50), (db.shape[1], 5)])[0], rtol=1e-5)


def test_float16_nan_is_refused():
    vectors = np.zeros((4, 8), dtype=np.float16)
    vectors[2, 5] = np.nan
    with pytest.raises(MRLError, match="vectors row 2 holds NaN or infinite values"):
        FunnelIndex(vectors, shortlist_dim=8)


@pytest.mark.parametrize("metric", ["cosine", "ip", "l2"])
@pytest.mark.parametrize(("dtype", "store"), [("float32", "memory"), ("float16", "memory"), ("float16", "mmap"), ("float32", "mmap")])
def test_blocked_rerank_scores_equal_numpy(tmp_path, monkeypatch, metric, dtype, store):
    """The batched gather (blocks of queries sharing candidate rows, -1 padding) scores like numpy per pair."""
    from mrl.retrieval import store as store_module

    monkeypatch.setattr(store_module, "RERANK_BLOCK_FLOATS", 7 * 30 * 24)  # 7 queries per block: 3 blocks, the last partial
    db, queries = _data(2)
    table = db.astype(dtype)
    if store == "mmap":
        np.save(tmp_path / "v.npy", table)
        table = np.load(tmp_path / "v.npy", mmap_mode="r")
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 40, size=(len(queries), 30))  # few rows: queries in a block share candidates
    ids[::3, -4:] = -1
    dim = 24  # does not divide D: the gathered path whatever the store
    got = store_module.VectorStore(table, store).scores(np.ascontiguousarray(queries[:, :dim]), ids, dim, metric)
    x = np.asarray(table[:, :dim], dtype=np.float64)[np.where(ids >= 0, ids, 0)]
    q = queries[:, None, :dim].astype(np.float64)
    dots = (x * q).sum(-1)
    if metric == "cosine":
        expected = dots / (np.linalg.norm(x, axis=-1) * np.linalg.norm(q, axis=-1))
    elif metric == "l2":
        expected = -((x - q) ** 2).sum(-1)
    else:
        expected = dots
    expected[ids < 0] = -np.inf
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("metric", ["cosine", "ip"])
def test_blocked_flat_scan_equals_brute_force_after_add(monkeypatch, metric):
    """The flat float32 scan below 128 dims (numpy products kept in FAISS heaps, block by block) returns
    an exact top-n of the prefixes, including rows appended by add() and partial blocks."""
    from mrl.retrieval import shortlist as shortlist_module

    monkeypatch.setattr(shortlist_module, "_SCAN_BLOCK_FLOATS", 7 * 1024)  # 1,024 rows per product for 1,024 queries, 7,168 for one
    db, queries = _data(3, n=2600, nq=1100)  # 2 query blocks (1,024 + 76); the rows split 1,024 + 1,024 + 552
    index = FunnelIndex(db[:2000], metric=metric, shortlist_dim=DS)
    index.add(db[2000:])
    assert index._shortlist._gemm_scan()
    n1 = 50
    _, ids = index.search(queries, k=n1, funnel=[(DS, n1)])
    _check_top_set(ids, _scores(_prefix(queries, DS, metric), _prefix(db, DS, metric), metric), n1, atol=1e-5)
    _, one = index.search(queries[:1], k=n1, funnel=[(DS, n1)])  # one query: the whole table in one product
    np.testing.assert_array_equal(np.sort(one[0]), np.sort(ids[0]))
    wide = FunnelIndex(np.tile(db, (1, 5))[:, :128], metric=metric, shortlist_dim=128)  # 128 dims and up: FAISS's own scan
    assert not wide._shortlist._gemm_scan()
