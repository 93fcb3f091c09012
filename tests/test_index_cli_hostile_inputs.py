"""Hostile inputs to `mrl index build | search | tune | evaluate`: one clear error, nothing changed on disk.

Covers query files whose labels do not fit (wrong shape, strings, floats), a .npy where an .npz is
expected, an index given as '.', ';'-separated options that hold no entry, and float16 queries
(a successful run prints no warning; a value a dtype cannot store is an error, not a warning).
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from hostile import assert_refused, copy, invoke

from mrl.errors import MRLError
from mrl.io import load_npz

N, D, Q = 300, 16, 20


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """A folder with db.npz, a labelled flat index idx/ over it and its queries q.npz (built once)."""
    root = tmp_path_factory.mktemp("built")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N, D)).astype(np.float32)
    y = rng.integers(0, 4, N).astype(np.int64)
    np.savez(root / "db.npz", X=x, y=y)
    np.savez(root / "q.npz", X=x[:Q] + 0.01, y=y[:Q])
    code, output = invoke("index", "build", root / "db.npz", "--out", root / "idx", "--shortlist-dim", 8, "--quiet")
    assert code == 0, output
    return root


@pytest.fixture
def work(built, tmp_path) -> Path:
    """A private copy of the built folder, so that a test may write beside the index."""
    for name in ("db.npz", "q.npz"):
        (tmp_path / name).write_bytes((built / name).read_bytes())
    copy(built / "idx", tmp_path / "idx")
    return tmp_path


def queries(path: Path, labels=None, dtype=np.float32) -> Path:
    x = np.random.default_rng(1).standard_normal((Q, D)).astype(dtype)
    if labels is None:
        np.savez(path, X=x)
    else:
        np.savez(path, X=x, y=labels)
    return path


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_search_refuses_bad_label_shape_before_writing_out(work):
    bad = queries(work / "bad.npz", labels=np.arange(3))
    out = work / "out.npz"
    out.write_bytes(b"an earlier result")
    before = sha256(out)
    assert_refused(work, "index", "search", work / "idx", bad, "--out", out,
                   match=f"bad.npz: y labels must be an integer array of shape ({Q},), got int64 (3,)")
    assert sha256(out) == before


@pytest.mark.parametrize("labels, shown", [(np.array(["a"] * Q), "<U1"), (np.zeros(Q), "float64"), (np.ones(Q, dtype=bool), "bool")])
@pytest.mark.parametrize("command", ["search", "evaluate"])
def test_non_integer_query_labels_are_refused(work, command, labels, shown):
    bad = queries(work / "bad.npz", labels=labels)
    assert_refused(work, "index", command, work / "idx", bad,
                   match=f"bad.npz: y labels must be an integer array of shape ({Q},), got {shown} ({Q},)")


def test_build_refuses_non_integer_labels_with_the_same_message(work):
    x = np.random.default_rng(2).standard_normal((N, D)).astype(np.float32)
    np.savez(work / "bad.npz", X=x, y=np.full(N, 0.5))
    assert_refused(work, "index", "build", work / "bad.npz", "--out", work / "idx2", "--quiet",
                   match=f"bad.npz: y labels must be an integer array of shape ({N},), got float64 ({N},)")


def test_load_npz_refuses_a_npy_file(tmp_path):
    np.save(tmp_path / "a.npy", np.zeros((3, 2), np.float32))
    with pytest.raises(MRLError, match=r"a\.npy is not a readable \.npz file \(it is a single \.npy array"):
        load_npz(tmp_path / "a.npy")


@pytest.mark.parametrize("command", ["build", "search", "tune", "evaluate"])
def test_npy_where_npz_expected_is_refused(work, command):
    npy = work / "q.npy"
    np.save(npy, np.zeros((Q, D), np.float32))
    args = [npy, "--out", work / "idx2"] if command == "build" else [work / "idx", npy]
    assert_refused(work, "index", command, *args, match="q.npy is not a readable .npz file")


def test_evaluate_dot_from_inside_the_index(work, monkeypatch):
    monkeypatch.chdir(work / "idx")
    code, output = invoke("index", "evaluate", ".", "../q.npz", "--funnels", "exact")
    assert code == 0, output
    rows = json.loads((work / "idx-evaluation" / "evaluation.json").read_text())["rows"]
    assert [row["config"] for row in rows] == ["exact"]


def test_evaluate_dot_dot_lands_beside_the_parent(work, monkeypatch):
    (work / "idx" / "sub").mkdir()
    monkeypatch.chdir(work / "idx" / "sub")
    code, output = invoke("index", "evaluate", "..", "../../q.npz", "--funnels", "exact")
    assert code == 0, output
    assert (work / "idx-evaluation" / "evaluation.json").is_file()


def test_evaluate_root_without_out_dir_is_refused(work):
    assert_refused(work, "index", "evaluate", "/", work / "q.npz", match="cannot derive a default output beside '/'")


@pytest.mark.parametrize("value", [";;", " ; ", ""])
def test_evaluate_funnels_with_no_entry_is_refused(work, value):
    assert_refused(work, "index", "evaluate", work / "idx", work / "q.npz", "--funnels", value,
                   match=f"--funnels must hold at least one ';'-separated entry, got {value!r}")


def test_search_funnel_and_tune_shortlists_with_no_entry_are_refused(work):
    assert_refused(work, "index", "search", work / "idx", work / "q.npz", "--funnel", ";;", match="funnel must be")
    assert_refused(work, "index", "tune", work / "idx", work / "q.npz", "--shortlists", ";;", match="shortlists must name at least one")


@pytest.mark.parametrize("command", ["search", "evaluate"])
def test_float16_queries_run_without_warning(work, command):
    q16 = queries(work / "q16.npz", labels=np.zeros(Q, np.int64), dtype=np.float16)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # the stray "overflow encountered in cast" fails here
        code, output = invoke("index", command, work / "idx", q16)
    assert code == 0, output
    assert "Warning" not in output


def test_values_beyond_the_dtype_are_an_error_not_a_warning(work):
    big = work / "big.npz"
    np.savez(big, X=np.full((Q, D), 1e39))
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        assert_refused(work, "index", "search", work / "idx", big, match="big.npz: X holds values up to 1e+39, beyond what float32 can store")
        np.savez(big, X=np.full((N, D), 1e5, np.float32))
        assert_refused(work, "index", "build", big, "--out", work / "idx16", "--dtype", "float16", "--quiet",
                       match="X holds values up to 1e+05, beyond what float16 can store")


def test_tune_refuses_a_linked_index_or_one_holding_other_files_before_any_work(work):
    """`mrl index tune` rewrites the index in place: through a symbolic link it left the link replaced by
    a folder, a stale lock and a dangling link; with a user's file inside it deleted the file."""
    (work / "link").symlink_to(work / "idx")
    assert_refused(work, "index", "tune", work / "link", work / "q.npz", match="is a symbolic link")
    (work / "idx" / "notes.txt").write_text("mine")
    assert_refused(work, "index", "tune", work / "idx", work / "q.npz", match="also holds ['notes.txt']")
    (work / "idx" / "notes.txt").unlink()
    code, output = invoke("index", "tune", work / "idx", work / "q.npz")
    assert code == 0, output
