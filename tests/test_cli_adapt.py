"""`mrl adapt fit | apply`: files produced, numbers against the library, clear errors."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from mrl.adapter import MatryoshkaAdapter, read_fit_info
from mrl.cli import cli
from mrl.io import load_npz, save_npz

D = 16


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture
def data(tmp_path):
    rng = np.random.default_rng(0)
    rotation, _ = np.linalg.qr(rng.standard_normal((D, D)))
    x = (rng.standard_normal((200, D)) * 0.6 ** np.arange(D)) @ rotation.T
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    save_npz(tmp_path / "emb.npz", X=x, y=np.arange(200, dtype=np.int64))
    noise = 0.1 * rng.standard_normal((100, D)).astype(np.float32)
    save_npz(tmp_path / "pairs.npz", queries=x[:100] + noise, documents=x[:100])
    return tmp_path


def test_fit_then_apply_matches_the_library(data):
    result = run("adapt", "fit", data / "emb.npz", "--out", data / "ad", "--nesting", "4,8,16",
                 "--epochs", "3", "--batch-size", "64", "--neighbours", "3", "--quiet")
    assert result.exit_code == 0, result.output
    assert "nesting [4, 8, 16]" in result.output
    assert sorted(p.name for p in (data / "ad").iterdir()) == ["adapter.safetensors", "config.json", "manifest.json"]
    info = read_fit_info(data / "ad")
    assert info["config"]["epochs"] == 3 and len(info["history"]) == 3 and info["n_pairs"] == 0

    result = run("adapt", "apply", data / "ad", data / "emb.npz", "--out", data / "out.npz")
    assert result.exit_code == 0, result.output
    out = load_npz(data / "out.npz", required=("X", "y"))
    x = load_npz(data / "emb.npz")["X"]
    adapter = MatryoshkaAdapter.load(data / "ad")
    np.testing.assert_array_equal(out["X"], adapter.transform(x))
    np.testing.assert_array_equal(out["y"], np.arange(200))
    assert out["X"].dtype == np.float32 and not np.allclose(out["X"], x, atol=1e-4)

    run("adapt", "apply", data / "ad", data / "emb.npz", "--out", data / "short.npz", "--dim", "4", "--normalize")
    short = load_npz(data / "short.npz")["X"]
    assert short.shape == (200, 4)
    np.testing.assert_allclose(np.linalg.norm(short, axis=1), 1.0, rtol=1e-5)


def test_fit_is_reproducible_from_a_saved_config(data):
    args = ("--nesting", "4,16", "--epochs", "2", "--batch-size", "50", "--neighbours", "3", "--lr", "0.005", "--quiet")
    run("adapt", "fit", data / "emb.npz", "--out", data / "a", *args)
    run("adapt", "fit", data / "emb.npz", "--out", data / "b", "--nesting", "4,16", "--config", data / "a" / "config.json", "--quiet")
    assert read_fit_info(data / "b")["config"]["lr"] == 0.005
    a, b = MatryoshkaAdapter.load(data / "a"), MatryoshkaAdapter.load(data / "b")
    x = torch.randn(5, D)
    assert torch.equal(a(x), b(x))


def test_supervised_fit_records_the_pairs(data):
    result = run("adapt", "fit", data / "emb.npz", "--out", data / "ad", "--pairs", data / "pairs.npz",
                 "--nesting", "4,16", "--epochs", "2", "--batch-size", "32", "--neighbours", "3", "--quiet")
    assert result.exit_code == 0, result.output
    info = read_fit_info(data / "ad")
    assert info["n_pairs"] == 100 and "ranking" in info["history"][-1]


def test_apply_refuses_another_dimension(data):
    run("adapt", "fit", data / "emb.npz", "--out", data / "ad", "--nesting", "4,16", "--epochs", "1", "--quiet")
    save_npz(data / "wide.npz", X=np.zeros((3, 32), np.float32))
    result = CliRunner().invoke(cli, ["adapt", "apply", str(data / "ad"), str(data / "wide.npz"), "--out", str(data / "o.npz")])
    assert result.exit_code == 1
    assert "Error: embeddings have 32 dimensions but this adapter was built for 16-dimensional" in result.output
    assert not (data / "o.npz").exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("--key", "Z"), r"has no array 'Z'; it has \['X', 'y'\]"),
        (("--nesting", "8,4"), r"nesting must be strictly ascending, got \[8, 4\]"),
        (("--epochs", "0"), "epochs must be an integer >= 1 and <= 100000, got 0"),
        (("--key", "y"), r"emb.npz:y must be a float matrix \[N, d\], got shape \(200,\)"),
    ],
)
def test_fit_errors_are_one_line(data, extra, message):
    result = CliRunner().invoke(cli, ["adapt", "fit", str(data / "emb.npz"), "--out", str(data / "ad"), *extra])
    assert result.exit_code == 1
    assert result.output.startswith("Error: ") and result.output.count("\n") == 1

    assert re.search(message, result.output), result.output
    assert not (data / "ad").exists()


def test_fit_refuses_existing_output_and_bad_config(data):
    (data / "ad").mkdir()
    (data / "ad" / "notes.txt").write_text("keep me")
    result = CliRunner().invoke(cli, ["adapt", "fit", str(data / "emb.npz"), "--out", str(data / "ad")])
    assert result.exit_code == 1 and "already exists; choose another --out or pass --overwrite" in result.output
    result = CliRunner().invoke(cli, ["adapt", "fit", str(data / "emb.npz"), "--out", str(data / "ad"), "--overwrite"])
    assert result.exit_code == 1 and "it is not an mrl artifact" in result.output
    assert [p.name for p in (data / "ad").iterdir()] == ["notes.txt"]
    (data / "bad.json").write_text(json.dumps({"epochz": 2}))
    result = CliRunner().invoke(cli, ["adapt", "fit", str(data / "emb.npz"), "--out", str(data / "new"), "--config", str(data / "bad.json")])
    assert result.exit_code == 1 and "unknown fit config key(s) ['epochz']" in result.output
