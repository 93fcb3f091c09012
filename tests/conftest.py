"""Shared fixtures: small subsets of the real Fashion-MNIST (Debian's dataset-fashion-mnist)."""

from __future__ import annotations

import gzip
import importlib
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mrl.data.datasets import FASHION_MNIST_DIR, IDX_FILES

DEVICE = torch.device(os.environ.get("TORCH_DEVICE", "cpu"))


BENCHMARKS = Path(__file__).parents[1] / "benchmarks"


@pytest.fixture
def benchmark_module(monkeypatch):
    """``benchmark_module("pareto")`` imports benchmarks/pareto.py as a module, fresh; it and the
    benchmark scripts it imports are forgotten afterwards."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    scripts = {path.stem for path in BENCHMARKS.glob("*.py")}

    def forget() -> None:
        for name in scripts:
            sys.modules.pop(name, None)

    forget()
    yield importlib.import_module
    forget()


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write an IDX file (uint8 data), gzipped, as the standard distributions ship it."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture(scope="session")
def fashion_subset_dir(tmp_path_factory) -> Path:
    """A folder with the four IDX files holding the first 3,000 train and 500 test real images."""
    from mrl.data.idx import read_idx

    out = tmp_path_factory.mktemp("fmnist_small")
    for key, stem in IDX_FILES.items():
        array = read_idx(FASHION_MNIST_DIR / f"{stem}.gz")
        n = 3000 if key.startswith("train") else 500
        write_idx(out / f"{stem}.gz", array[:n])
    return out


@pytest.fixture(scope="session")
def tiny_artifacts(tmp_path_factory) -> dict[str, Path]:
    """One of each artifact, made once through the CLI on a tiny vector set: a trained and
    evaluated run (with logits), an index of its embeddings and an adapter. Tests copy them."""
    from hostile import TINY, invoke, vectors_npz

    root = tmp_path_factory.mktemp("tiny_artifacts")
    data = vectors_npz(root / "data.npz")
    run = root / "run"
    for args in (["train", "--data", data, *TINY, "--out", run], ["eval", run, "--save-logits", "--quiet"],
                 ["embed", run, "--split", "train", "--out", root / "emb.npz", "--quiet"],
                 ["index", "build", root / "emb.npz", "--out", root / "index", "--shortlist-dim", "8", "--quiet"],
                 ["adapt", "fit", root / "emb.npz", "--out", root / "adapter", "--nesting", "8,16", "--epochs", "1",
                  "--neighbours", "2", "--quiet"]):
        code, output = invoke(*args)
        assert code == 0, output
    return {"root": root, "data": data, "run": run, "emb": root / "emb.npz", "index": root / "index",
            "adapter": root / "adapter"}
