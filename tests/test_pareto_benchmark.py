"""benchmarks/pareto.py: each --stores name times the funnel over the vectors it names, with the RAM it names."""

from __future__ import annotations

import argparse
import subprocess
import sys

import numpy as np
import pytest

from conftest import BENCHMARKS
from mrl.retrieval import FunnelIndex

@pytest.fixture
def pareto(benchmark_module):
    return benchmark_module("pareto")


def _cosine_top_k(vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    v = vectors.astype(np.float64)
    scores = queries.astype(np.float64) @ (v / np.linalg.norm(v, axis=1, keepdims=True)).T
    return np.argsort(-scores, axis=1)[:, :k]


def test_each_store_searches_its_own_vectors_and_counts_its_ram(pareto, tmp_path):
    rng = np.random.default_rng(0)
    n, dim, k = 300, 64, 10
    vectors = rng.standard_normal((n, dim)).astype(np.float32)
    queries = rng.standard_normal((20, dim)).astype(np.float32)
    indexes = pareto.store_indexes(vectors, {"mmap", "mmap32", "memory"}, tmp_path)
    assert {name: (index.dtype, index.store) for name, index in indexes.items()} == {
        "mmap": ("float16", "mmap"), "mmap32": ("float32", "mmap"), "memory": ("float32", "memory")}
    assert np.array_equal(indexes["mmap32"].vectors, vectors) and isinstance(indexes["mmap32"].vectors, np.memmap)

    structure = FunnelIndex(vectors, shortlist_dim=16)._shortlist  # flat float32 16-dim prefixes
    point = {"name": "mrl flat", "structure": structure, "funnel": [(16, n), (dim, k)], "options": {}, "ram": 64.0, "build_s": 0.0}
    timed = pareto.with_stores([point], indexes)
    assert [p["name"] for p in timed] == ["mrl flat [mmap f16]", "mrl flat [mmap f32]", "mrl flat [RAM f32]"]
    assert [p["ram"] for p in timed] == [64.0, 64.0, 64.0 + 4 * dim]  # mapped vectors are not the process's own RAM
    assert [p["index"] for p in timed] == [indexes["mmap"], indexes["mmap32"], indexes["memory"]]

    # An exhaustive shortlist leaves the full-dim cosine top-k of the vectors each store holds.
    expected = {"mmap": _cosine_top_k(vectors.astype(np.float16), queries, k), "mmap32": _cosine_top_k(vectors, queries, k)}
    expected["memory"] = expected["mmap32"]
    for p, name in zip(timed, ["mmap", "mmap32", "memory"]):
        ids = pareto.mrl_search(p, queries)
        assert all(set(row) == set(ref) for row, ref in zip(ids, expected[name])), name


def test_unknown_store_is_refused():
    result = subprocess.run([sys.executable, str(BENCHMARKS / "pareto.py"), "--synthetic-n", "100", "--stores", "mmap32,disk"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "--stores: unknown ['disk']; known: mmap, mmap32, memory" in result.stderr
    result = subprocess.run([sys.executable, str(BENCHMARKS / "pareto.py"), "--synthetic-n", "100", "--adapter-nesting", "4,8"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2  # refused by the parser, before any data is generated
    assert "--adapter-nesting applies to real embeddings (--dataset, --database)" in result.stderr


def test_hnsw_graph_options_reach_the_tuned_structure(pareto):
    rng = np.random.default_rng(1)
    vectors = rng.standard_normal((400, 32)).astype(np.float32)
    index = FunnelIndex(vectors, shortlist_dim=8)
    args = argparse.Namespace(mrl_shortlists="hnsw:int8:16;flat:float32:8;hnsw:float32:8:hnsw_m=6", hnsw_m=12, ef_construction=50,
                              target_recall=0.9, low_target=0.5, extra_targets=[], tune_max_length=64, nprobes=[4], ef_searches=[64],
                              tune_headroom=0)
    points = pareto.mrl_points(index, rng.standard_normal((20, 32)).astype(np.float32), args)
    graphs = {p["name"].split()[1]: (p["structure"].spec.hnsw_m, p["structure"].spec.ef_construction) for p in points}
    # only HNSW specs take the graph options, and an entry's own hnsw_m= wins over the flag; the names read back as built
    assert graphs == {"hnsw:int8:16:hnsw_m=12:ef_construction=50": (12, 50), "flat:float32:8": (32, 80),
                      "hnsw:float32:8:hnsw_m=6:ef_construction=50": (6, 50)}


def test_tune_headroom_also_keeps_the_funnel_with_steps_to_spare(pareto):
    rng = np.random.default_rng(2)
    scale = (1.0 / np.arange(1, 33)).astype(np.float32)  # early coordinates carry most signal: short funnels suffice
    vectors = rng.standard_normal((400, 32)).astype(np.float32) * scale
    queries = rng.standard_normal((20, 32)).astype(np.float32) * scale
    index = FunnelIndex(vectors, shortlist_dim=8)
    args = argparse.Namespace(mrl_shortlists="flat:float32:8", hnsw_m=0, ef_construction=0, target_recall=0.95, low_target=0.95,
                              extra_targets=[], tune_max_length=400, nprobes=[4], ef_searches=[64], tune_headroom=0)
    plain = pareto.mrl_points(index, queries, args)
    args.tune_headroom = 2
    spared = pareto.mrl_points(index, queries, args)
    # The fastest funnel meeting the target, then (unless it is the same one) the fastest holding it with
    # 2 grid steps to spare: two shorter funnels on its stage dims met it too, so its first stage keeps
    # at least 40 candidates (the grid runs 20, 28, 40, ...).
    assert len(plain) == 1 and 1 <= len(spared) <= 2 and all(p["tuned_recall"] >= 0.95 for p in plain + spared)
    assert spared[-1]["funnel"][0][1] >= 40


def test_baseline_ram_counts_centroids_and_codebooks_as_mrl_structures_do(pareto):
    """FAISS baselines' RAM per vector is their streamed size over N, by hand: codes, 8-byte ids, centroids, codebooks."""
    rng = np.random.default_rng(2)
    n, d, nlist, pq_bytes = 3000, 32, 12, 8
    vectors = rng.standard_normal((n, d)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    args = argparse.Namespace(baselines="ivf,ivfpq,sq8,binary", nlist=nlist, train_size=n, pq_bytes=pq_bytes, hnsw_full_n=0)
    ram = {m["name"]: m["ram"] for m in pareto.faiss_baselines(vectors, args)}
    small = 1024 / n  # headers and list sizes: well under a kilobyte per structure
    assert 4 * d <= ram["FAISS IndexFlatIP (exact)"] < 4 * d + small
    ivf_flat = 4 * d + 8 + nlist * d * 4 / n
    assert ivf_flat <= ram[f"FAISS IVF{nlist},Flat nprobe=8"] < ivf_flat + small
    ivf_pq = pq_bytes + 8 + nlist * d * 4 / n + pq_bytes * 256 * (d // pq_bytes) * 4 / n
    assert ivf_pq <= ram[f"FAISS IVF{nlist},PQ{pq_bytes}np nprobe=16"] < ivf_pq + small
    assert d + 2 * d * 4 / n <= ram["FAISS SQ8"] < d + 2 * d * 4 / n + small  # codes and per-dimension ranges
    assert d / 8 + 4 * d <= ram["FAISS binary + float rescore (200)"] < d / 8 + 4 * d + small  # floats in RAM for the rescore


def test_wordnet_embeddings_are_cached_by_their_texts(pareto, tmp_path, monkeypatch):
    """--cache-dir: the second run reads the verified cache instead of embedding; other texts are embedded anew."""
    import mrl.data.wordnet
    import mrl.data.wordnet_retrieval
    import mrl.text.model

    texts = [f"gloss {i}" for i in range(40)]
    calls = []

    def fake_embed(model, batch, batch_size):
        calls.append(len(batch))
        return np.stack([np.random.default_rng(abs(hash(t)) % 2**32).standard_normal(8) for t in batch]).astype(np.float32)

    monkeypatch.setattr(mrl.data.wordnet, "load_synsets", lambda: texts)
    monkeypatch.setattr(mrl.data.wordnet_retrieval, "document_text", str)
    monkeypatch.setattr(mrl.text.model, "load_text_model", lambda name: None)
    monkeypatch.setattr(mrl.text.model, "embed", fake_embed)
    args = argparse.Namespace(dataset="wordnet-minilm", wordnet_n=30, tune_queries=4, n_queries=6, embed_threads=None, cache_dir=tmp_path)
    first = pareto.named_dataset(args)
    second = pareto.named_dataset(args)
    assert calls == [40]  # embedded once, then read back
    for a, b in zip(first[::2], second[::2]):
        np.testing.assert_array_equal(a, b)
    assert first[0].shape == (30, 8) and first[2].shape == (10, 8)
    np.testing.assert_allclose(np.linalg.norm(first[0], axis=1), 1.0, rtol=1e-6)
    texts[0] = "another gloss"  # same count, other texts: another sha256, embedded anew
    pareto.named_dataset(args)
    assert calls == [40, 40]


def test_adapter_nesting_gives_what_mrl_adapt_fit_and_apply_give(pareto, tmp_path):
    """--adapter-nesting: the benchmark's adapted vectors equal `mrl adapt fit` then `mrl adapt apply --normalize`."""
    import torch
    from click.testing import CliRunner

    from mrl.cli import cli
    from mrl.io import load_npz, save_npz

    rng = np.random.default_rng(3)
    vectors = rng.standard_normal((300, 16)).astype(np.float32)
    queries = rng.standard_normal((7, 16)).astype(np.float32)
    save_npz(tmp_path / "db.npz", X=vectors)
    save_npz(tmp_path / "q.npz", X=queries)
    threads = torch.get_num_threads()
    run = lambda *a: CliRunner().invoke(cli, [str(x) for x in a], catch_exceptions=False)  # noqa: E731
    assert run("adapt", "fit", tmp_path / "db.npz", "--out", tmp_path / "ad", "--nesting", "4,8,16", "--epochs", 2, "--quiet").exit_code == 0
    for name in ("db", "q"):
        assert run("adapt", "apply", tmp_path / "ad", tmp_path / f"{name}.npz", "--out", tmp_path / f"{name}_a.npz", "--normalize").exit_code == 0
    args = argparse.Namespace(adapter_nesting="4,8,16", adapter_epochs=2, embed_threads=None)
    db, (q,) = pareto.adapted(vectors, [queries], args)
    np.testing.assert_allclose(db, load_npz(tmp_path / "db_a.npz")["X"], rtol=0, atol=1e-6)
    np.testing.assert_allclose(q, load_npz(tmp_path / "q_a.npz")["X"], rtol=0, atol=1e-6)
    assert not np.allclose(db, vectors / np.linalg.norm(vectors, axis=1, keepdims=True), atol=1e-3)  # the adapter moved them
    assert torch.get_num_threads() == threads
