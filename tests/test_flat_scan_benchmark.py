"""benchmarks/flat_scan.py: hostile inputs are refused with one line, and the two scans it times agree."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from conftest import BENCHMARKS


def _run(*args, cwd):
    return subprocess.run([sys.executable, str(BENCHMARKS / "flat_scan.py"), *map(str, args)], capture_output=True, text=True,
                          timeout=120, cwd=cwd)


@pytest.mark.parametrize(("array", "extra", "message"), [
    (np.array([{"a": 1}], dtype=object), [], "is not a readable .npz file"),
    (np.ones(5, np.float32), [], "the first array must be 2-D [N, D], got shape (5,)"),
    (np.ones((50, 8), np.float32), ["--k", 60, "--dims", 8], "need a database with more than --queries rows"),
    (np.ones((50, 8), np.float32), ["--k", 5, "--dims", 16], "1 <= --dims <= its columns"),
])
def test_bad_inputs_are_refused_before_any_timing(tmp_path, array, extra, message):
    np.savez(tmp_path / "db.npz", X=array)
    result = _run("--database", tmp_path / "db.npz", "--queries", 5, *extra, "--out", tmp_path / "out.json", cwd=tmp_path)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out.json").exists()


def test_both_scans_return_the_same_neighbours(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "db.npz", X=rng.standard_normal((400, 16)).astype(np.float32))
    result = _run("--database", tmp_path / "db.npz", "--queries", 20, "--dims", "8,16", "--k", "5,50", "--repeats", 1,
                  "--out", tmp_path / "out.json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    rows = [line.split("|") for line in result.stdout.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert len(rows) == 4 and all(float(row[6]) == 1.0 for row in rows)
