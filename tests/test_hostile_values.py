"""Class 7 of the hardening issue: non-finite or absurd values are refused up front with one line
and nothing written; training stops with one line at the first non-finite loss."""

from __future__ import annotations

import numpy as np
import pytest
from hostile import TINY, assert_refused, copy, vectors_npz


def _train(data, out, *extra):
    flags = dict(zip(TINY[::2], TINY[1::2]))
    flags.pop("--quiet", None)
    given = dict(zip(extra[::2], extra[1::2]))
    args = [a for k, v in {**flags, **given}.items() for a in (k, v)]
    return ["train", "--data", data, *args, "--quiet", "--out", out]


@pytest.mark.parametrize(("flag", "value", "match"), [
    ("--lr", "inf", "lr must be a finite number > 0 and <= 10.0, got inf"),
    ("--lr", "1e30", "lr must be a finite number > 0 and <= 10.0, got 1e+30"),
    ("--lr", "nan", "got nan"),
    ("--lr", "0", "got 0.0"),
    ("--batch-size", "0", "batch-size must be an integer >= 1"),
    ("--epochs", "0", "epochs must be an integer >= 1"),
    ("--rep-dim", "100000000", "rep-dim must be an integer >= 1 and <= 65536"),
    ("--seed", str(2**64), "seed must be an integer >= 0 and <= 4294967295"),
    ("--seed", "-1", "seed must be an integer >= 0"),
    ("--max-train", "0", "max-train must be an integer >= 1"),
])
def test_train_refuses_absurd_settings_before_writing(tmp_path, flag, value, match):
    data = vectors_npz(tmp_path / "d.npz")
    assert_refused(tmp_path, *_train(data, tmp_path / "run", flag, value), match=match)


@pytest.mark.parametrize(("arrays", "match"), [
    ({"X": np.zeros((0, 4), np.float32), "y": np.zeros(0, np.int64)}, "holds no examples"),
    ({"X": np.full((50, 4), np.nan), "y": np.zeros(50, np.int64)}, "contains NaN or infinite values"),
    ({"X": np.full((50, 4), 1e300), "y": np.zeros(50, np.int64)}, "do not fit float32"),
    ({"X": np.ones((50, 4), np.float32), "y": np.full(50, 2**40)}, "labels must be integers in [0, 1048576)"),
    ({"X": np.ones((50, 4), np.float32), "y": np.full(50, -3)}, "labels must be integers in [0, 1048576)"),
])
def test_train_refuses_bad_data_before_writing(tmp_path, arrays, match):
    np.savez(tmp_path / "bad.npz", **arrays)
    assert_refused(tmp_path, *_train(tmp_path / "bad.npz", tmp_path / "run"), match=match)


def test_training_stops_at_the_first_non_finite_loss(tmp_path, monkeypatch):
    """A loss that turns NaN mid-run (as a too-high learning rate makes it) ends training with one line."""
    from mrl.losses import MatryoshkaLoss

    real = MatryoshkaLoss.per_size
    calls = {"n": 0}

    def poisoned(self, logits, labels):
        calls["n"] += 1
        out = real(self, logits, labels)
        return out * float("nan") if calls["n"] == 3 else out

    monkeypatch.setattr(MatryoshkaLoss, "per_size", poisoned)
    data = vectors_npz(tmp_path / "d.npz")
    from hostile import invoke

    code, output = invoke(*_train(data, tmp_path / "run"))
    assert code == 1 and output.strip().splitlines() == [
        "Error: training diverged at epoch 1, step 2: loss is nan; lower --lr"]


@pytest.mark.parametrize(("args", "match"), [
    (["index", "search", "{index}", "{emb}", "--k", "0"], "--k must be an integer >= 1"),
    (["index", "tune", "{index}", "{emb}", "--max-queries", "0"], "--max-queries must be an integer >= 1"),
    (["index", "tune", "{index}", "{emb}", "--max-queries", "-1"], "--max-queries must be an integer >= 1"),
    (["index", "tune", "{index}", "{emb}", "--target-recall", "nan"], "--target-recall must be a finite number"),
    (["index", "build", "{emb}", "--out", "{new}", "--ef-search", "0"], "--ef-search must be an integer >= 1"),
    (["adaptive", "{run}", "--budget", "-5", "--out", "{new}"], "--budget must be a finite number > 0"),
    (["adaptive", "{run}", "--budget", "nan", "--out", "{new}"], "--budget must be a finite number > 0"),
    (["adaptive", "{run}", "--seeds", "0", "--out", "{new}"], "--seeds must be an integer >= 1"),
    (["adaptive", "{run}", "--fit-fraction", "1", "--out", "{new}"], "--fit-fraction must be a finite number > 0 and < 1"),
    (["adaptive", "{run}", "--confidence", "inf", "--out", "{new}"], "--confidence must be a finite number"),
    (["adapt", "fit", "{emb}", "--out", "{new}", "--temperature", "nan"], "temperature must be a finite number > 0"),
    (["adapt", "fit", "{emb}", "--out", "{new}", "--lr", "inf"], "lr must be a finite number > 0"),
    (["adapt", "apply", "{adapter}", "{emb}", "--out", "{new}.npz", "--batch-size", "0"], "--batch-size must be an integer >= 1"),
    (["lm", "train", "--out", "{new}", "--context", "0"], "--context must be an integer >= 1"),
    (["lm", "train", "--out", "{new}", "--lr", "inf"], "--lr must be a finite number > 0"),
])
def test_commands_refuse_absurd_flags(tmp_path, tiny_artifacts, args, match):
    names = {"index": copy(tiny_artifacts["index"], tmp_path / "index"), "emb": tiny_artifacts["emb"],
             "run": copy(tiny_artifacts["run"], tmp_path / "run"), "adapter": tiny_artifacts["adapter"],
             "new": tmp_path / "new"}
    assert_refused(tmp_path, *[a.format(**names) for a in args], match=match)


@pytest.mark.parametrize(("matrix", "dtype", "match"), [
    (np.zeros((0, 16), np.float32), "float32", "must be a non-empty float matrix"),
    (np.full((20, 16), 1e6, np.float32), "float16", "beyond what float16 can store"),
    (np.full((20, 16), 1e300), "float32", "beyond what float32 can store"),
    (np.full((20, 16), np.inf, np.float32), "float32", "contains NaN or infinite values"),
])
def test_index_build_refuses_vectors_it_cannot_store(tmp_path, matrix, dtype, match):
    np.savez(tmp_path / "x.npz", X=matrix)
    assert_refused(tmp_path, "index", "build", tmp_path / "x.npz", "--out", tmp_path / "ix", "--dtype", dtype,
                   "--shortlist-dim", "8", match=match)


def test_lm_flags_refused_and_a_too_long_context_leaves_no_run(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n\n".join(f"the {w} sat on the mat" for w in ("cat", "dog") * 10))
    assert_refused(tmp_path, "lm", "train", "--corpus", corpus, "--out", tmp_path / "run", "--vocab-size", "64",
                   "--d-model", "16", "--layers", "1", "--n-heads", "2", "--nesting", "8,16", "--context", "5000", "--steps", "1",
                   match="lower --context or use a larger corpus")
    assert_refused(tmp_path, "lm", "generate", tmp_path, "--temperature", "nan", match="--temperature must be a finite")
    assert_refused(tmp_path, "lm", "generate", tmp_path, "--top-k", "0", match="--top-k must be an integer >= 1")
    assert_refused(tmp_path, "lm", "generate", tmp_path, "--max-new-tokens", "0", match="--max-new-tokens must be")
    assert_refused(tmp_path, "lm", "eval", tmp_path, "--max-tokens", "0", match="--max-tokens must be an integer >= 1")
