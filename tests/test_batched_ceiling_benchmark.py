"""benchmarks/batched_ceiling.py: hostile inputs are refused with one line; exhaustive settings find exact search's neighbours."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import BENCHMARKS
from mrl.retrieval import FunnelIndex, exact_search


def _run(*args, cwd):
    return subprocess.run([sys.executable, str(BENCHMARKS / "batched_ceiling.py"), *map(str, args)], capture_output=True, text=True,
                          timeout=300, cwd=cwd)


def _save(path, array):
    np.savez(path, X=array)
    return path


@pytest.mark.parametrize(("database", "queries", "extra", "message"), [
    (np.array([{"a": 1}], dtype=object), np.ones((5, 8), np.float32), [], "is not a readable .npz file"),
    (np.ones(5, np.float32), np.ones((5, 8), np.float32), [], "must be a finite 2-D float array"),
    (np.full((50, 8), np.nan, np.float32), np.ones((5, 8), np.float32), [], "must be a finite 2-D float array"),
    (np.ones((50, 8), np.float32), np.ones((5, 4), np.float32), [], "need queries of the database's 8 dims"),
    (np.ones((50, 8), np.float32), np.ones((5, 8), np.float32), ["--lengths", 5], "k <= --lengths <= N"),
    (np.ones((50, 8), np.float32), np.ones((5, 8), np.float32), ["--skip-queries", 5], "need queries of the database's 8 dims"),
    (np.ones((50, 8), np.float32), np.ones((5, 8), np.float32), ["--adaptive", "4,4,8,80"], "--adaptive candidate counts"),
    (np.ones((50, 8), np.float32), np.ones((5, 8), np.float32), ["--adaptive", "4,4,8"], "FIRST_EF:L:REDO_EF:REDO_L"),
    (np.ones((50, 8), np.float32), np.ones((5, 8), np.float32), ["--nprobes", "a,3"], "comma-separated positive integers"),
    (np.ones((50, 8), np.float32), np.ones((5, 8), np.float32), ["--redo", "1.5"], "fractions in (0, 1]"),
    (np.ones((50, 8), np.float32), np.ones((5, 8), np.float32), ["--families", "ivf,lsh"], "--families takes"),
    (np.ones((50, 8), np.float32), np.ones((5, 8), np.float32), ["--nlist", 60], "nlist=60 is larger than the database"),
    (np.ones((50, 8), np.float32), np.ones((5, 8), np.float32), ["--hnsw-m", 5000], "hnsw_m must be an integer in [2, 1024]"),
    (np.ones((50, 8), np.float32), np.ones((5, 8), np.float32), ["--adapter-nesting", "8,4"], "nesting must be strictly ascending"),
    (np.ones((50, 8), np.float32), np.ones((5, 8), np.float32), ["--adapter-epochs", 0], "--adapter-epochs must be positive"),
])
def test_bad_inputs_are_refused_before_any_timing(tmp_path, monkeypatch, capsys, benchmark_module, database, queries, extra, message):
    ceiling = benchmark_module("batched_ceiling")
    argv = ["--database", _save(tmp_path / "db.npz", database), "--queries", _save(tmp_path / "q.npz", queries),
            "--lengths", 10, "--adaptive", "10,10,20,20", *extra, "--out", tmp_path / "out.json"]
    monkeypatch.setattr(sys, "argv", ["batched_ceiling.py", *map(str, argv)])
    with pytest.raises(SystemExit) as exit_info:
        ceiling.main()
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "out.json").exists()


@pytest.mark.parametrize("argv", [
    [],
    ["--dataset", "jeopardy", "--database", "db.npz"],
    ["--database", "db.npz"],
])
def test_one_source_of_vectors_is_required(tmp_path, monkeypatch, capsys, benchmark_module, argv):
    ceiling = benchmark_module("batched_ceiling")
    monkeypatch.chdir(tmp_path)
    _save(tmp_path / "db.npz", np.ones((50, 8), np.float32))
    monkeypatch.setattr(sys, "argv", ["batched_ceiling.py", *argv, "--out", "out.json"])
    with pytest.raises(SystemExit) as exit_info:
        ceiling.main()
    assert exit_info.value.code == 2 and "give --database and --queries, or --dataset" in capsys.readouterr().err
    assert not (tmp_path / "out.json").exists()


def test_exhaustive_settings_find_every_exact_neighbour(tmp_path):
    rng = np.random.default_rng(0)
    database, queries = rng.standard_normal((600, 16)).astype(np.float32), rng.standard_normal((30, 16)).astype(np.float32)
    result = _run("--database", _save(tmp_path / "db.npz", database), "--queries", _save(tmp_path / "q.npz", queries),
                  "--nlist", 20, "--nprobes", "2,20", "--ef-searches", "600", "--lengths", "40", "--adaptive", "16,16,600,40",
                  "--redo", "0.5,1", "--repeats", 1, "--out", tmp_path / "out.json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    rows = {row["point"]: row for row in json.loads((tmp_path / "out.json").read_text())["rows"]}
    # every list probed, or a beam over the whole graph with 40 candidates re-scored in float: exact search's top 10
    assert rows["ivf nprobe 20"]["recall"] == 1.0 and rows["hnsw ef 600 16:40 -> 16:10"]["recall"] == 1.0
    assert rows["adaptive ef 16 (16), 100% again at ef 600 (40)"]["recall"] == 1.0
    assert rows["ivf nprobe 2"]["recall"] < 1.0  # 2 of 20 lists cannot hold every neighbour of 30 random queries
    assert "ivf: ivf nprobe 20: 1.0000" in result.stdout


def test_adaptive_search_redoes_the_queries_with_the_lowest_kth_score(benchmark_module):
    ceiling = benchmark_module("batched_ceiling")
    rng = np.random.default_rng(1)
    database = rng.standard_normal((500, 16)).astype(np.float32)
    queries = rng.standard_normal((40, 16)).astype(np.float32)
    index = FunnelIndex(database, shortlist="hnsw", encoding="int8", shortlist_dim=16, hnsw_m=4, ef_construction=8)
    first_scores, first = index.search(queries, 5, [(16, 5), (16, 5)], ef_search=5)
    second = index.search(queries, 5, [(16, 40), (16, 5)], ef_search=500)[1]
    assert not np.array_equal(first, second)  # the narrow beam misses some neighbours the wide one finds
    unsure = np.argsort(first_scores[:, 4], kind="stable")[:10]
    expected = first.copy()
    expected[unsure] = second[unsure]
    np.testing.assert_array_equal(ceiling.adaptive_search(index, queries, 5, (5, 5), (500, 40), 0.25), expected)
    np.testing.assert_array_equal(ceiling.adaptive_search(index, queries, 5, (5, 5), (500, 40), 1.0), second)
    _, exact_ids = exact_search(database, queries, 5)
    assert ceiling.recall(second, exact_ids) == pytest.approx(np.mean([len(set(a) & set(b)) / 5 for a, b in zip(second, exact_ids)]))
