"""benchmarks/widths.py: results of separate invocations accumulate in one results.json."""

from __future__ import annotations

import threading

import pytest

from mrl.io import read_json

@pytest.fixture
def bench(benchmark_module):
    return benchmark_module("widths")


def _seed(nested: dict, alone: dict) -> dict:
    return {"nested": nested, "alone": alone}


def test_merge_keeps_other_seeds_and_variants_and_takes_the_new_ones(bench):
    before = {"widths": [0.5, 1.0], "per_seed": {"0": _seed({"nested-batch": 1}, {"alone-batch-1.0": 2}),
                                                 "1": _seed({"nested-batch": 3}, {})}}
    new = {"widths": [0.5, 1.0], "per_seed": {"1": _seed({"nested-batch": 4, "nested-batch-distill0.5": 5}, {"alone-batch-0.5": 6})}}
    merged = bench.merge_classification(before, new)
    assert merged["per_seed"] == {
        "0": _seed({"nested-batch": 1}, {"alone-batch-1.0": 2}),
        "1": _seed({"nested-batch": 4, "nested-batch-distill0.5": 5}, {"alone-batch-0.5": 6}),
    }
    assert before["per_seed"]["1"] == _seed({"nested-batch": 3}, {})  # inputs untouched


def test_concurrent_invocations_each_keep_their_seed(bench, tmp_path, monkeypatch):
    # Each invocation used to merge into the file as it read it at its start: the last writer won.
    real_read = bench.read_json

    def slow_read(path):  # widen the read-to-write window, so that unlocked writers would overlap
        data = real_read(path)
        threading.Event().wait(0.05)
        return data

    monkeypatch.setattr(bench, "read_json", slow_read)
    start = threading.Barrier(6)

    def run(seed):
        start.wait()
        bench.save_results(tmp_path, {"args_classify": {"seed": seed}},
                           {"widths": [1.0], "per_seed": {str(seed): _seed({"nested-batch": seed}, {})}}, None)

    threads = [threading.Thread(target=run, args=(seed,)) for seed in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    per_seed = read_json(tmp_path / "results.json")["classify"]["per_seed"]
    assert per_seed == {str(s): _seed({"nested-batch": s}, {}) for s in range(6)}
