import os
import pickle

import numpy as np
import pytest
import torch

from mrl.errors import MRLError
from mrl.io import (
    atomic_directory,
    atomic_write_text,
    load_npy,
    load_npz,
    load_tensors,
    read_json,
    save_npy,
    save_npz,
    save_tensors,
    write_json,
)


def test_atomic_write_replaces_and_leaves_no_temp(tmp_path):
    path = tmp_path / "a.json"
    write_json(path, {"x": 1})
    write_json(path, {"x": 2})
    assert read_json(path) == {"x": 2}
    assert os.listdir(tmp_path) == ["a.json"]


def test_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "a.npy"
    save_npy(path, np.arange(3))
    with pytest.raises(MRLError, match="object array"):
        save_npy(path, np.array([{"a": 1}], dtype=object))
    assert load_npy(path).tolist() == [0, 1, 2]
    assert os.listdir(tmp_path) == ["a.npy"]


def test_tensors_round_trip_and_pickles_refused(tmp_path):
    tensors = {"w": torch.randn(3, 4), "step": torch.tensor(7)}
    save_tensors(tmp_path / "t.safetensors", tensors)
    loaded = load_tensors(tmp_path / "t.safetensors")
    assert torch.equal(loaded["w"], tensors["w"]) and loaded["step"].item() == 7
    (tmp_path / "p.safetensors").write_bytes(pickle.dumps(tensors))
    with pytest.raises(MRLError, match="pickle or torch.save file, not safetensors; refusing"):
        load_tensors(tmp_path / "p.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"hello world, not tensors")
    with pytest.raises(MRLError, match="not a valid safetensors file"):
        load_tensors(tmp_path / "junk.safetensors")


def test_npy_and_npz_never_unpickle(tmp_path):
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(MRLError, match="not a plain .npy array"):
        load_npy(tmp_path / "obj.npy")
    save_npz(tmp_path / "ok.npz", X=np.ones((2, 3), np.float32), y=np.arange(2))
    assert load_npz(tmp_path / "ok.npz", required=("X", "y"))["X"].shape == (2, 3)
    with pytest.raises(MRLError, match=r"lacks array\(s\) \['Z'\]"):
        load_npz(tmp_path / "ok.npz", required=("Z",))
    (tmp_path / "bad.npz").write_bytes(b"PK\x03\x04garbage")
    with pytest.raises(MRLError, match="not a readable .npz"):
        load_npz(tmp_path / "bad.npz")


def test_atomic_directory_success_and_failure(tmp_path):
    target = tmp_path / "out"
    with atomic_directory(target) as tmp:
        atomic_write_text(tmp / "a.txt", "one")
    assert (target / "a.txt").read_text() == "one"
    with pytest.raises(MRLError, match="already exists"):
        with atomic_directory(target):
            pass
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_directory(target, overwrite=True) as tmp:
            atomic_write_text(tmp / "a.txt", "two")
            raise RuntimeError("boom")
    assert (target / "a.txt").read_text() == "one"  # the failed rebuild changed nothing
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    with atomic_directory(target, overwrite=True) as tmp:
        atomic_write_text(tmp / "b.txt", "two")
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]
