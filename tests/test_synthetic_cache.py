"""benchmarks/synthetic_cache.py: cached data equal the generator's, cached top-k equal brute force, nothing unverified is reused."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

@pytest.fixture
def cache(benchmark_module):
    return benchmark_module("synthetic_cache")


def _flip_byte(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))


def test_vectors_equal_the_generator_and_are_reused_only_when_verified(cache, tmp_path, monkeypatch):
    from funnel_search import synthetic

    vectors = cache.cached_synthetic(tmp_path, 3000, 32, 20, 0)
    reference = synthetic(3000, 32, 20, 0, stream=0).astype(np.float16)
    assert isinstance(vectors, np.memmap) and vectors.dtype == np.float16
    np.testing.assert_array_equal(np.asarray(vectors), reference)
    path = Path(vectors.filename)

    def no_generation(*args, **kwargs):
        raise AssertionError("the cached file should have been reused")

    with monkeypatch.context() as patch:
        patch.setattr(cache, "synthetic_blocks", no_generation)
        np.testing.assert_array_equal(np.asarray(cache.cached_synthetic(tmp_path, 3000, 32, 20, 0)), reference)

    del vectors
    _flip_byte(path, os.path.getsize(path) - 10)  # same size, other content: only the sha256 tells
    np.testing.assert_array_equal(np.asarray(cache.cached_synthetic(tmp_path, 3000, 32, 20, 0)), reference)

    with open(path, "ab") as f:  # a grown file is rebuilt too
        f.write(b"\0" * 64)
    np.testing.assert_array_equal(np.asarray(cache.cached_synthetic(tmp_path, 3000, 32, 20, 0)), reference)
    assert os.path.getsize(path) == reference.nbytes + 128  # .npy header + data


def test_other_parameters_get_their_own_data(cache, tmp_path):
    first = cache.cached_synthetic(tmp_path, 500, 16, 10, 0)
    other_seed = cache.cached_synthetic(tmp_path, 500, 16, 10, 1)
    other_noise = cache.cached_synthetic(tmp_path, 500, 16, 10, 0, noise=0.1)
    assert len({Path(v.filename).parent for v in (first, other_seed, other_noise)}) == 3
    assert not np.array_equal(np.asarray(first), np.asarray(other_seed))
    assert not np.array_equal(np.asarray(first), np.asarray(other_noise))


def test_ground_truth_equals_brute_force_and_is_recomputed_when_tampered(cache, tmp_path, monkeypatch):
    vectors = cache.cached_synthetic(tmp_path, 2000, 32, 20, 0)
    queries = np.random.default_rng(1).standard_normal((25, 32)).astype(np.float32)
    scores, ids = cache.cached_ground_truth(tmp_path, vectors, queries, k=5)
    database = np.asarray(vectors, dtype=np.float64)
    cosine = (queries / np.linalg.norm(queries, axis=1, keepdims=True)) @ (database / np.linalg.norm(database, axis=1, keepdims=True)).T
    order = np.argsort(-cosine, axis=1)[:, :5]
    np.testing.assert_allclose(scores, np.take_along_axis(cosine, order, axis=1), atol=1e-5)
    assert (np.sort(ids, axis=1) == np.sort(order, axis=1)).mean() > 0.99  # ids of tied scores may swap

    def no_search(*args, **kwargs):
        raise AssertionError("the cached top-k should have been reused")

    monkeypatch.setattr(cache, "exact_search", no_search)
    np.testing.assert_array_equal(cache.cached_ground_truth(tmp_path, vectors, queries, k=5)[1], ids)
    with pytest.raises(AssertionError, match="reused"):  # other queries or another k are another key
        cache.cached_ground_truth(tmp_path, vectors, queries[:10], k=5)
    with pytest.raises(AssertionError, match="reused"):
        cache.cached_ground_truth(tmp_path, vectors, queries, k=4)
    (saved,) = Path(vectors.filename).parent.glob("ground_truth-*.npz")
    _flip_byte(saved, os.path.getsize(saved) // 2)
    with pytest.raises(AssertionError, match="reused"):  # a corrupt file is never read back
        cache.cached_ground_truth(tmp_path, vectors, queries, k=5)


def test_cached_array_is_computed_once_and_recomputed_unless_verified(cache, tmp_path):
    calls = []

    def compute(value=1.5):
        calls.append(value)
        return np.full((4, 3), value, dtype=np.float32)

    params = {"model": "m", "n": 4}
    first = cache.cached_array(tmp_path, "emb", params, compute)
    np.testing.assert_array_equal(first, compute())
    calls.clear()
    np.testing.assert_array_equal(cache.cached_array(tmp_path, "emb", params, compute), first)
    assert calls == []  # size and sha256 verified: reused
    cache.cached_array(tmp_path, "emb", {"model": "m", "n": 5}, lambda: compute(2.0))  # other params: recomputed
    assert calls == [2.0]
    path = tmp_path / "emb" / "array.npy"
    _flip_byte(path, os.path.getsize(path) - 1)  # same size, another sha256
    np.testing.assert_array_equal(cache.cached_array(tmp_path, "emb", {"model": "m", "n": 5}, lambda: compute(3.0)), compute(3.0))
    assert calls == [2.0, 3.0, 3.0]
    (tmp_path / "emb" / "record.json").write_text("{not json")  # an unreadable record: recomputed, never trusted
    cache.cached_array(tmp_path, "emb", {"model": "m", "n": 5}, lambda: compute(4.0))
    assert calls[-1] == 4.0
    path.unlink()
    path.symlink_to(tmp_path / "elsewhere.npy")  # a link in the cache is not followed
    np.save(tmp_path / "elsewhere.npy", compute(5.0))
    np.testing.assert_array_equal(cache.cached_array(tmp_path, "emb", {"model": "m", "n": 5}, lambda: compute(6.0)), compute(6.0))
    assert not path.is_symlink() and calls[-1] == 6.0
