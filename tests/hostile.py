"""Shared pieces of the hostile-input tests (tests/test_hostile_*.py): tiny artifacts and checks.

Every hostile case asserts the same contract: one ``Error:`` line, the documented exit status,
no traceback, and not one byte changed anywhere under the test's folder.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import numpy as np
from click.testing import CliRunner

from mrl.cli import cli

TINY = ["--arch", "mlp", "--rep-dim", "16", "--nesting", "8,16", "--epochs", "1", "--batch-size", "32", "--quiet"]


def tree(root: Path) -> dict[str, tuple[str, int]]:
    """sha256 and mode of every file and symlink under ``root`` (folders by mode), by relative path."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = str(path.relative_to(root))
            if path.is_symlink():
                out[rel] = ("-> " + os.readlink(path), 0)
            elif path.is_file():
                out[rel] = (hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mode)
            else:
                out[rel] = ("dir", path.stat().st_mode)
    return out


def invoke(*args) -> tuple[int, str]:
    """Run ``mrl ARGS`` in-process; exceptions that are not user errors propagate (catch_exceptions=False)."""
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    return result.exit_code, result.output


def assert_refused(root: Path, *args, match: str, status: int = 1) -> str:
    """``mrl ARGS`` fails with one ``Error:`` line containing ``match`` and changes nothing under ``root``."""
    before = tree(root)
    code, output = invoke(*args)
    assert code == status, output
    assert "Traceback" not in output
    lines = output.strip().splitlines()
    if status == 1:
        assert len(lines) == 1 and lines[0].startswith("Error: "), output
    assert match in output, output
    assert tree(root) == before, "the command changed files on disk"
    return output


def vectors_npz(path: Path, n: int = 240, features: int = 12, classes: int = 3, seed: int = 0) -> Path:
    """A small separable classification set (X float32 [n, features], y int64 [n])."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    centres = rng.normal(size=(classes, features)) * 3
    x = (centres[y] + rng.normal(size=(n, features))).astype(np.float32)
    np.savez(path, X=x, y=y.astype(np.int64))
    return path


def copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, symlinks=True)
    return dst
