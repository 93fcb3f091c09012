"""Training runs on real Fashion-MNIST subsets: resume after a kill, DDP, checkpoints, refusals."""

import contextlib
import hashlib
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mrl.config import TrainConfig
from mrl.errors import MRLError
from mrl.evaluation import evaluate_run
from mrl.io import load_tensors
from mrl.training import lr_at, train

MRL = [sys.executable, "-m", "mrl"]
SMALL = ["--arch", "mlp", "--rep-dim", "32", "--nesting", "8,16,32", "--batch-size", "64", "--max-train", "1500"]


def small_config(data_dir, **kw) -> TrainConfig:
    values = dict(data="mnist", data_dir=str(data_dir), arch="mlp", rep_dim=32, nesting=[8, 16, 32],
                  batch_size=64, max_train=1500, epochs=2)
    values.update(kw)
    return TrainConfig(**values)


def run_state(run: Path) -> dict | None:
    return json.loads((run / "manifest.json").read_text())["meta"]["state"]


def model_path(run: Path) -> Path:
    return run / "checkpoints" / f"model-{run_state(run)['epochs_done']:04d}.safetensors"


def final_weights(run: Path) -> dict[str, torch.Tensor]:
    return load_tensors(model_path(run))


def test_training_learns_and_writes_a_run(tmp_path, fashion_subset_dir):
    run = train(small_config(fashion_subset_dir, epochs=3), tmp_path / "run", progress=False)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2, 3]
    assert set(records[-1]["val_top1"]) == {"8", "16", "32"}
    assert records[-1]["loss"] < records[0]["loss"]
    result = evaluate_run(run, save_logits=True, progress=False)
    assert min(result["top1"].values()) > 0.5  # 10 classes: chance is 0.1
    assert min(result["knn1"].values()) > 0.5
    assert (run / "logits_test.npy").exists()


def test_resume_after_kill_matches_uninterrupted(tmp_path, fashion_subset_dir):
    args = ["train", "--data", "mnist", "--data-dir", str(fashion_subset_dir), *SMALL, "--epochs", "6", "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([*MRL, *args, "--out", str(tmp_path / "full")], check=True, env=env)

    proc = subprocess.Popen([*MRL, *args, "--out", str(tmp_path / "cut")], env=env)
    manifest = tmp_path / "cut" / "manifest.json"

    def epochs_done() -> int:
        with contextlib.suppress(FileNotFoundError, json.JSONDecodeError, TypeError):
            return run_state(tmp_path / "cut")["epochs_done"]
        return 0

    deadline = time.time() + 120
    while time.time() < deadline and not (manifest.exists() and epochs_done() >= 2):
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = epochs_done()
    assert 2 <= done < 6, "the run must have been interrupted mid-way"

    subprocess.run([*MRL, *args, "--out", str(tmp_path / "cut"), "--resume"], check=True, env=env)
    full, cut = final_weights(tmp_path / "full"), final_weights(tmp_path / "cut")
    assert full.keys() == cut.keys()
    for name in full:
        assert torch.equal(full[name], cut[name]), name
    epochs = [json.loads(line)["epoch"] for line in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3, 4, 5, 6]


def test_torchrun_two_processes(tmp_path, fashion_subset_dir):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone",
           "-m", "mrl", "train", "--data", "mnist", "--data-dir", str(fashion_subset_dir), *SMALL,
           "--epochs", "2", "--quiet", "--out", str(out)]
    subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    assert records[-1]["val_top1"]["32"] > 0.5
    # each rank took half of every global batch of 64: 1500 // 64 steps per epoch, as in one process
    assert run_state(out)["step"] == 2 * (750 // 32)


def test_planted_pickle_checkpoint_is_refused(tmp_path, fashion_subset_dir):
    run = train(small_config(fashion_subset_dir, epochs=1), tmp_path / "run", progress=False)
    record = json.loads((run / "manifest.json").read_text())
    path = model_path(run)

    def plant(raw: bytes) -> None:  # a foreign run dir whose manifest vouches for the pickle
        path.write_bytes(raw)
        record["meta"]["state"]["model_sha256"] = hashlib.sha256(raw).hexdigest()
        (run / "manifest.json").write_text(json.dumps(record))

    plant(pickle.dumps({"weights": [1, 2, 3]}))
    with pytest.raises(MRLError, match="pickle or torch.save file"):
        evaluate_run(run, progress=False)
    torch.save({"x": torch.zeros(2)}, path)
    plant(path.read_bytes())
    with pytest.raises(MRLError, match="pickle or torch.save file"):
        evaluate_run(run, progress=False)


def test_corrupt_checkpoint_is_detected(tmp_path, fashion_subset_dir):
    run = train(small_config(fashion_subset_dir, epochs=1), tmp_path / "run", progress=False)
    path = model_path(run)
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(MRLError, match="does not match the checksum"):
        evaluate_run(run, progress=False)


def test_existing_out_without_resume_is_refused_and_untouched(tmp_path, fashion_subset_dir):
    run = train(small_config(fashion_subset_dir, epochs=1), tmp_path / "run", progress=False)
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    with pytest.raises(MRLError, match="already exists; pass --resume"):
        train(small_config(fashion_subset_dir, epochs=1), run, progress=False)
    assert before == {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    shutil.rmtree(run)


def test_lr_schedule():
    assert lr_at(0, 100, 10, 1.0) == pytest.approx(0.1)
    assert lr_at(10, 100, 10, 1.0) == pytest.approx(1.0)
    assert lr_at(100, 100, 10, 1.0) == pytest.approx(0.0)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        (dict(mode="big"), "mode must be one of mrl, mrl-e, ff, got 'big'"),
        (dict(mode="ff"), "mode ff needs --ff-dim"),
        (dict(nesting=[16, 8]), "strictly ascending"),
        (dict(nesting=[8, 64]), "64 is larger than the representation size 32"),
        (dict(nesting=[0, 8]), "must be positive"),
        (dict(epochs=0), "epochs must be an integer >= 1 and <= 100000, got 0"),
        (dict(arch="vit"), "arch must be one of mlp, resnet, resnet50 or timm/<name>, got 'vit'"),
        (dict(rep_activation="gelu"), "rep-activation must be one of relu, none, got 'gelu'"),
        (dict(head_lr_scale=0.0), r"head-lr-scale must be a finite number > 0 and <= 1000.0, got 0.0"),
    ],
)
def test_config_errors(kw, match, tmp_path):
    with pytest.raises(MRLError, match=match):
        small_config(tmp_path, **kw)


def test_recipe_options_reach_the_model_and_the_optimizer(tmp_path, fashion_subset_dir):
    from mrl.data import load_dataset
    from mrl.runs import read_state
    from mrl.training import build_model, param_groups

    data = load_dataset("mnist", fashion_subset_dir, 300)
    config = small_config(fashion_subset_dir, rep_activation="none", head_lr_scale=4.0)
    model = build_model(config, data).eval()
    z = model.embed(data.train.x[:64])
    assert (z < 0).any()  # no ReLU after the representation's BatchNorm
    assert (build_model(small_config(fashion_subset_dir), data).eval().embed(data.train.x[:64]) < 0).any()  # the default
    relu = small_config(fashion_subset_dir, rep_activation="relu")  # the paper's recipe
    assert (build_model(relu, data).eval().embed(data.train.x[:64]) >= 0).all()
    groups = param_groups(model, config)
    assert [g["lr_scale"] for g in groups] == [1.0, 4.0]
    assert {id(p) for g in groups for p in g["params"]} == {id(p) for p in model.parameters()}
    # the scale is applied by the schedule: after one epoch the heads' lr is 4x the backbone's
    run = train(config.__class__(**{**config.to_dict(), "epochs": 1}), tmp_path / "run", progress=False, data=data)
    groups = read_state(run).optimizer_groups
    assert groups[1]["lr"] == pytest.approx(4.0 * groups[0]["lr"]) and groups[0]["lr"] > 0


def test_default_image_backbone_states_its_cost(tmp_path, fashion_subset_dir, caplog):
    """The default resnet learns slowly in short runs; training says so when it starts, --arch mlp does not."""
    with caplog.at_level("WARNING", logger="mrl.training"):
        train(small_config(fashion_subset_dir, arch=None, rep_dim=16, nesting=[8, 16], max_train=128, epochs=1),
              tmp_path / "resnet", progress=False)
    assert any("30x the compute per step of --arch mlp" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level("WARNING", logger="mrl.training"):
        train(small_config(fashion_subset_dir, max_train=128, epochs=1), tmp_path / "mlp", progress=False)
    assert not any("compute per step" in r.getMessage() for r in caplog.records)
