"""Hostile inputs to the JSON reader, the .npz training loader, the training config and adapters:
each is one ``Error:`` line (exit 1) that names what is wrong, with nothing changed on disk."""

from __future__ import annotations

import hashlib
import json
import re

import numpy as np
import pytest
import torch
from hostile import TINY, assert_refused, copy, vectors_npz

from mrl.adapter import MatryoshkaAdapter
from mrl.config import TrainConfig
from mrl.errors import MRLError
from mrl.io import read_json

DEEP = "[" * 100_000 + "]" * 100_000


# 1. read_json: nesting deeper than the recursion limit, integers longer than the digit limit


def test_read_json_refuses_deep_nesting_and_huge_integers(tmp_path):
    deep = tmp_path / "deep.json"
    deep.write_text(DEEP)
    with pytest.raises(MRLError, match=r"deep.json is not valid JSON \(nested too deeply\)"):
        read_json(deep)
    huge = tmp_path / "huge.json"
    huge.write_text('{"epochs": ' + "9" * 5000 + "}")
    with pytest.raises(MRLError, match="huge.json is not valid JSON"):
        read_json(huge)


def test_deep_json_config_and_manifest_are_refused_by_the_cli(tmp_path, tiny_artifacts):
    deep = tmp_path / "deep.json"
    deep.write_text(DEEP)
    data = vectors_npz(tmp_path / "d.npz")
    assert_refused(tmp_path, "train", "--data", data, "--config", deep, "--out", tmp_path / "z",
                   match="nested too deeply")
    assert_refused(tmp_path, "adapt", "fit", data, "--config", deep, "--out", tmp_path / "a", match="nested too deeply")
    adapter = copy(tiny_artifacts["adapter"], tmp_path / "adapter")
    (adapter / "manifest.json").write_text(DEEP)
    assert_refused(tmp_path, "adapt", "apply", adapter, tiny_artifacts["emb"], "--out", tmp_path / "o.npz",
                   match="nested too deeply")


# 2. the .npz training loader


def _npz(path, **arrays):
    rng = np.random.default_rng(0)
    base = {"X": rng.normal(size=(300, 20)).astype(np.float32), "y": rng.integers(0, 3, 300).astype(np.int64)}
    base.update(arrays)
    np.savez(path, **{k: v for k, v in base.items() if v is not None})
    return path


@pytest.mark.parametrize(("arrays", "match"), [
    (dict(X_test=np.array([["a"] * 20] * 50), y_test=np.zeros(50, np.int64)), "X_test must hold real numbers"),
    (dict(X_test=np.array([["1.5"] * 20] * 50), y_test=np.zeros(50, np.int64)), "X_test must hold real numbers"),
    (dict(X_test=np.zeros((50, 20), "m8[s]"), y_test=np.zeros(50, np.int64)), "X_test must hold real numbers"),
    (dict(X=np.zeros((300, 0), np.float32)), "X must have at least one feature column"),
    (dict(X=np.ones((300, 20), np.complex64)), "X must hold real numbers"),
    (dict(X=np.zeros((300, 20), "m8[s]")), "X must hold real numbers"),
    (dict(X_test=np.zeros((50, 20), np.float32)), "X_test needs y_test"),
    (dict(y_test=np.zeros(50, np.int64)), "y_test needs X_test"),
    (dict(X_test=np.zeros((50, 7), np.float32), y_test=np.zeros(50, np.int64)), "X_test must have X's 20 columns"),
    (dict(X_test=np.zeros((50, 0), np.float32), y_test=np.zeros(50, np.int64)), "X_test must have at least one"),
])
def test_npz_training_data_is_checked(tmp_path, arrays, match):
    data = _npz(tmp_path / "d.npz", **arrays)
    assert_refused(tmp_path, "train", "--data", data, *TINY, "--out", tmp_path / "z", match=match)


def test_npz_integer_features_and_a_test_split_still_train(tmp_path):
    from mrl.data.datasets import load_npz_dataset

    rng = np.random.default_rng(1)
    data = _npz(tmp_path / "d.npz", X=rng.integers(0, 9, (300, 20)), X_test=rng.integers(0, 9, (40, 20)),
                y_test=np.zeros(40, np.int64))
    dataset = load_npz_dataset(data)
    assert dataset.train.x.dtype == torch.float32 and len(dataset.test) == 40


# 3. training config values of the wrong type


@pytest.mark.parametrize(("values", "match"), [
    ({"arch": 5}, "arch must be a string or null, got int 5"),
    ({"arch": ["mlp"]}, "arch must be a string or null, got list ['mlp']"),
    ({"mode": ["mrl"]}, "mode must be a string"),
    ({"optimizer": {"adamw": 1}}, "optimizer must be a string"),
    ({"precision": 32}, "precision must be a string"),
    ({"data_dir": 3}, "data-dir must be a string or null, got int 3"),
])
def test_config_values_of_the_wrong_type_are_refused(tmp_path, values, match):
    with pytest.raises(MRLError, match=re.escape(match)):
        TrainConfig.from_dict(values)
    config = tmp_path / "c.json"
    config.write_text(json.dumps(values))
    data = vectors_npz(tmp_path / "d.npz")
    assert_refused(tmp_path, "train", "--data", data, "--config", config, "--out", tmp_path / "z", match=match)


# 4. adapt apply: non-finite input, float16 overflow


def test_adapter_refuses_nonfinite_input_and_computes_in_float32():
    adapter = MatryoshkaAdapter(8, nesting=[4, 8])
    x = np.full((5, 8), 2e4, np.float16)
    out = adapter.transform(x, normalize=True)
    assert out.dtype == np.float16 and np.isfinite(out).all()
    np.testing.assert_allclose(out.astype(np.float32), np.full((5, 8), 8 ** -0.5), rtol=1e-3)
    with torch.no_grad():
        adapter.linear.weight.fill_(1.0)  # every output is 9 * 2e4: beyond float16 without normalising
    with pytest.raises(MRLError, match="adapted values are not finite in dtype torch.float16"):
        adapter.transform(x)
    bad = np.ones((3, 8), np.float32)
    bad[1, 2] = np.nan
    with pytest.raises(MRLError, match="embeddings contain NaN or infinite values"):
        adapter.transform(bad)


def test_adapt_apply_refuses_nan_and_normalises_float16(tmp_path, tiny_artifacts):
    emb = dict(np.load(tiny_artifacts["emb"]))
    x = emb["X"].astype(np.float32)
    nan = x.copy()
    nan[0, 0] = np.nan
    np.savez(tmp_path / "nan.npz", X=nan)
    assert_refused(tmp_path, "adapt", "apply", tiny_artifacts["adapter"], tmp_path / "nan.npz",
                   "--out", tmp_path / "o.npz", match="NaN or infinite")
    big = (np.sign(x) * 2e4 + x).astype(np.float16)
    np.savez(tmp_path / "big.npz", X=big)
    from hostile import invoke

    code, output = invoke("adapt", "apply", tiny_artifacts["adapter"], tmp_path / "big.npz", "--out",
                          tmp_path / "o.npz", "--normalize")
    assert code == 0, output
    out = np.load(tmp_path / "o.npz")["X"]
    assert out.dtype == np.float16 and np.isfinite(out).all()


# 5. adapter config.json: sizes and booleans


def _edit_adapter_config(adapter, **settings):
    config = json.loads((adapter / "config.json").read_text())
    config["adapter"].update(settings)
    (adapter / "config.json").write_text(json.dumps(config))
    manifest = json.loads((adapter / "manifest.json").read_text())
    manifest["files"]["config.json"]["sha256"] = hashlib.sha256((adapter / "config.json").read_bytes()).hexdigest()
    (adapter / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize(("settings", "match"), [
    ({"hidden_dim": 10**9}, "adapter hidden_dim must be a positive integer at most 65536, got 1000000000"),
    ({"dim": 10**12}, "adapter dim must be a positive integer at most 65536"),
    ({"linear": "no"}, "adapter linear must be true or false, got 'no'"),
    ({"dim": "16"}, "adapter dim must be a positive integer"),
])
def test_adapter_config_sizes_and_booleans_are_checked(tmp_path, tiny_artifacts, settings, match):
    adapter = copy(tiny_artifacts["adapter"], tmp_path / "adapter")
    _edit_adapter_config(adapter, **settings)
    assert_refused(tmp_path, "adapt", "apply", adapter, tiny_artifacts["emb"], "--out", tmp_path / "o.npz",
                   match=match)
