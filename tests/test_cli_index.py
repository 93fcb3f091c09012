"""`mrl index build | search | tune | evaluate`: files produced, numbers printed, clear errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from mrl.cli import cli
from mrl.io import load_npz, save_npz
from mrl.retrieval import FunnelIndex, exact_search

D = 64


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture
def embeddings(tmp_path):
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((4, D)).astype(np.float32) * 3
    scale = (1.0 / np.sqrt(np.arange(1, D + 1))).astype(np.float32)

    def sample(n):
        y = rng.integers(0, 4, n)
        return ((centres[y] + rng.standard_normal((n, D)).astype(np.float32)) * scale).astype(np.float32), y.astype(np.int64)

    db, db_y = sample(600)
    q, q_y = sample(40)
    save_npz(tmp_path / "db.npz", X=db, y=db_y)
    save_npz(tmp_path / "q.npz", X=q, y=q_y)
    return tmp_path


def test_build_search_writes_exact_results_with_whole_shortlist(embeddings):
    idx = embeddings / "idx"
    result = run("index", "build", embeddings / "db.npz", "--out", idx, "--shortlist-dim", 8, "--quiet")
    assert result.exit_code == 0, result.output
    assert "600 x 64 float32, flat float32 shortlist on 8 dims" in result.output
    assert sorted(p.name for p in idx.iterdir()) == ["labels.npy", "manifest.json", "shortlist.faiss", "vectors.npy"]
    result = run("index", "search", idx, embeddings / "q.npz", "--k", 5, "--funnel", "8:600,64:5", "--out", embeddings / "r.npz")
    assert result.exit_code == 0, result.output
    assert "funnel 8:600,64:5" in result.output and "map@5" in result.output
    out = load_npz(embeddings / "r.npz", required=("scores", "ids"))
    db, q = load_npz(embeddings / "db.npz")["X"], load_npz(embeddings / "q.npz")["X"]
    exact_scores, _ = exact_search(db, q, k=5)
    assert out["ids"].shape == (40, 5)
    np.testing.assert_allclose(out["scores"], exact_scores, rtol=1e-4, atol=1e-5)


def test_build_hnsw_float16(embeddings):
    idx = embeddings / "idx"
    result = run("index", "build", embeddings / "db.npz", "--out", idx, "--shortlist", "hnsw", "--dtype", "float16",
                 "--metric", "l2", "--hnsw-m", 8, "--quiet")
    assert result.exit_code == 0, result.output
    manifest = json.loads((idx / "manifest.json").read_text())["meta"]["fields"]
    assert (manifest["shortlist"], manifest["dtype"], manifest["metric"], manifest["hnsw_m"]) == ("hnsw", "float16", "l2", 8)


def test_tune_stores_the_chosen_funnel(embeddings):
    idx = embeddings / "idx"
    run("index", "build", embeddings / "db.npz", "--out", idx, "--shortlist-dim", 8, "--quiet")
    result = run("index", "tune", idx, embeddings / "q.npz", "--k", 5, "--target-recall", 0.9)
    assert result.exit_code == 0, result.output
    assert "chose " in result.output and "| funnel |" in result.output
    loaded = FunnelIndex.load(idx)
    assert loaded.funnel is not None and loaded.funnel[0][0] == 8
    assert f"{loaded.funnel[0][0]}:{loaded.funnel[0][1]}" in result.output


def test_evaluate_writes_table_json_and_plot(embeddings):
    idx = embeddings / "idx"
    run("index", "build", embeddings / "db.npz", "--out", idx, "--shortlist-dim", 8, "--quiet")
    out = embeddings / "eval"
    result = run("index", "evaluate", idx, embeddings / "q.npz", "--funnels", "exact;exact:8;8:100,64:10", "--out-dir", out)
    assert result.exit_code == 0, result.output
    assert "| config | map@10 | precision@10 | recall@10 | ndcg@10 | top1 | knn_recall@10 | mflops | ms_per_query |" in result.output
    report = json.loads((out / "evaluation.json").read_text())
    assert [r["config"] for r in report["rows"]] == ["exact", "exact:8", "8:100,64:10"]
    assert report["rows"][0]["knn_recall@10"] == 1.0
    assert report["rows"][0]["mflops"] == pytest.approx(600 * 64 / 1e6)
    assert (out / "map10_vs_mflops.png").read_bytes().startswith(b"\x89PNG")
    assert (out / "evaluation.md").read_text().startswith("| config |")


def test_evaluate_default_configurations_and_out_dir(embeddings):
    idx = embeddings / "idx"
    run("index", "build", embeddings / "db.npz", "--out", idx, "--shortlist-dim", 8, "--quiet")
    result = run("index", "evaluate", idx, embeddings / "q.npz")
    assert result.exit_code == 0, result.output
    rows = json.loads((embeddings / "idx-evaluation" / "evaluation.json").read_text())["rows"]
    assert [r["config"] for r in rows] == ["exact", "exact:8", "8:200,64:10", "8:600,16:400,32:200,64:10"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["search", "{idx}", "{q}", "--funnel", "8-200"], "Error: funnel must be comma-separated dim:shortlist_length pairs"),
        (["search", "{idx}", "{q}", "--funnel", "8:200,64:5", "--k", "10"], "Error: the last funnel stage keeps 5 candidates, fewer than k=10"),
        (["search", "{idx}", "{q}", "--k", "601"], "Error: k=601 is larger than the database (600 vectors)"),
        (["search", "{idx}", "{db_dir}/q.npz", "--funnel", "16:100,64:10"], "Error: funnel must start at the shortlist dim 8"),
        (["evaluate", "{idx}", "{q}", "--funnels", "exact:999"], "Error: exact prefix dim must be in [1, 64], got 999"),
        (["build", "{db_dir}/db.npz", "--out", "{idx}"], "already exists; choose another --out or pass --overwrite"),
        (["build", "{db_dir}/db.npz", "--out", "{db_dir}/other", "--shortlist-dim", "128"], "Error: shortlist_dim must be an integer in [1, 64], got 128"),
        (["search", "{db_dir}", "{q}"], "is not a funnel index (no manifest.json)"),
    ],
)
def test_bad_input(embeddings, args, message):
    idx = embeddings / "idx"
    run("index", "build", embeddings / "db.npz", "--out", idx, "--shortlist-dim", 8, "--quiet")
    fill = {"idx": idx, "q": embeddings / "q.npz", "db_dir": embeddings}
    result = run("index", *[a.format(**fill) for a in args])
    assert result.exit_code == 1
    assert message in result.output
    assert "Traceback" not in result.output
    assert not (embeddings / "other").exists()
