"""Streamed ImageNet-style folders: transforms, seeding, sharding, training, resume and refusals.

Every test builds its own small folder of PNGs: three classes told apart by colour, so that a tiny
network learns them in a few epochs (chance is 1/3).
"""

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from mrl.cli import cli
from mrl.config import TrainConfig
from mrl.data import load_dataset
from mrl.data.batches import StreamBatches
from mrl.data.image_folder import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImageFolderSplit,
    SeededShardSampler,
    load_streaming_folder,
    normalize,
    random_resized_crop_box,
)
from mrl.errors import MRLError
from mrl.evaluation import evaluate_run, knn1_accuracy_blocks
from mrl.io import load_tensors
from mrl.recipe import Precision
from mrl.runs import checkpoint_paths, read_classes, read_state
from mrl.training import train

CLASSES = ("blue", "green", "red")
SMALL = ["--arch", "resnet", "--rep-dim", "32", "--nesting", "8,16,32", "--image-size", "16", "--batch-size", "24"]


def make_folder(root: Path, n_train: int = 30, n_val: int = 10, seed: int = 0) -> Path:
    """ROOT/{train,val}/{blue,green,red}/*.png: noisy images whose dominant channel is the class."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("val", n_val)):
        for label, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                h, w = rng.integers(18, 30, size=2)
                pixels = rng.integers(0, 120, size=(h, w, 3))
                pixels[..., 2 - label] += 120  # RGB order: red=0, green=1, blue=2
                Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{i:03d}.png")
    return root


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return make_folder(tmp_path_factory.mktemp("imagefolder") / "data")


def config(folder: Path, **kw) -> TrainConfig:
    values = dict(data=str(folder), arch="resnet", rep_dim=32, nesting=[8, 16, 32], image_size=16, batch_size=24,
                  epochs=3, lr=5e-3)
    values.update(kw)
    return TrainConfig(**values)


def run_cli(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def test_listing_labels_and_classes(folder):
    data = load_dataset(str(folder), image_size=16)
    assert data.classes == list(CLASSES) and data.num_classes == 3 and data.input_shape == (3, 16, 16)
    assert (len(data.train), len(data.val), len(data.test)) == (90, 30, 30)
    assert np.bincount(data.train.labels).tolist() == [30, 30, 30]
    assert data.train.paths.dtype.kind == "S"  # bytes, shared by forked workers without copying


def test_eval_transform_is_the_centre_crop(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, size=(32, 32, 3)).astype(np.uint8)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    split = ImageFolderSplit(np.array([os.fsencode(tmp_path / "a.png")]), np.array([0]), image_size=28, train=False)
    out, label = split[0]
    # resize the short side to 28 / 0.875 = 32 (no-op), crop 28 x 28 at the centre
    assert label == 0 and out.dtype == torch.uint8
    np.testing.assert_array_equal(out.permute(1, 2, 0).numpy(), pixels[2:30, 2:30])


def test_train_transform_is_a_function_of_the_seed(folder):
    data = load_dataset(str(folder), image_size=16)
    a, b, c = data.train[(5, 123)][0], data.train[(5, 123)][0], data.train[(5, 124)][0]
    assert a.shape == (3, 16, 16) and torch.equal(a, b) and not torch.equal(a, c)
    boxes = [random_resized_crop_box(40, 30, random.Random(s)) for s in range(200)]
    for left, top, right, bottom in boxes:
        area = (right - left) * (bottom - top)
        assert 0 <= left < right <= 40 and 0 <= top < bottom <= 30
        assert 0.08 * 1200 * 0.9 <= area  # RandomResizedCrop's scale bound (rounding aside)
    assert len(set(boxes)) > 150


def test_normalize_matches_the_imagenet_formula():
    pixels = torch.randint(0, 256, (2, 3, 4, 4), dtype=torch.uint8)
    expected = (pixels.numpy() / 255.0 - np.array(IMAGENET_MEAN)[:, None, None]) / np.array(IMAGENET_STD)[:, None, None]
    np.testing.assert_allclose(normalize(pixels).numpy(), expected, rtol=1e-5, atol=1e-6)


def test_epoch_batches_do_not_depend_on_the_number_of_workers(folder):
    data = load_dataset(str(folder), image_size=16)

    def epoch(workers):
        batches = StreamBatches(data.train, 24, rank=0, world_size=1, seed=3, workers=workers)
        return list(batches.epoch(1, torch.device("cpu")))

    serial, parallel = epoch(0), epoch(2)
    assert len(serial) == 90 // 24
    for (xa, ya), (xb, yb) in zip(serial, parallel):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    other_epoch = list(StreamBatches(data.train, 24, 0, 1, seed=3, workers=0).epoch(2, torch.device("cpu")))
    assert not torch.equal(serial[0][1], other_epoch[0][1])


def test_ranks_take_disjoint_shards_of_each_epoch(folder):
    data = load_dataset(str(folder), image_size=16)
    for epoch in (0, 1):
        shards = []
        for rank in range(3):
            sampler = SeededShardSampler(data.train, rank, 3, seed=0)
            sampler.set_epoch(epoch)
            shards.append([i for i, _ in sampler])
        assert [len(s) for s in shards] == [30, 30, 30]
        assert len(set().union(*map(set, shards))) == 90


GLOO_SCRIPT = """
import json, sys
import torch
import torch.distributed as dist
from mrl.data import load_dataset
from mrl.data.batches import StreamBatches
from mrl.training import init_distributed

env = init_distributed(torch.device("cpu"))
data = load_dataset(sys.argv[1], image_size=16)
batches = StreamBatches(data.train, 12, env.rank, env.world_size, seed=0, workers=1)
seen = {}
for epoch in (0, 1):
    batches.sampler.set_epoch(epoch)
    seen[epoch] = [index for index, _ in batches.sampler]
    labels = torch.cat([y for _, y in batches.epoch(epoch, torch.device("cpu"))])
    assert labels.tolist() == data.train.labels[seen[epoch][: len(labels)]].tolist()
gathered = [None] * env.world_size
dist.all_gather_object(gathered, seen)
if env.rank == 0:
    open(sys.argv[2], "w").write(json.dumps(gathered))
dist.destroy_process_group()
"""


def test_two_gloo_ranks_see_disjoint_shards(folder, tmp_path):
    script = tmp_path / "shards.py"
    script.write_text(GLOO_SCRIPT)
    out = tmp_path / "seen.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone", str(script),
           str(folder), str(out)]
    subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=120)
    ranks = json.loads(out.read_text())
    for epoch in ("0", "1"):
        a, b = (set(r[epoch]) for r in ranks)
        assert len(a) == len(b) == 45 and not a & b
    assert ranks[0]["0"] != ranks[0]["1"]  # a new permutation every epoch


def test_streaming_training_and_evaluation_learn(folder, tmp_path):
    run = train(config(folder), tmp_path / "run", progress=False)
    assert read_classes(run) == list(CLASSES)  # verified against the run's manifest
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2, 3]
    result = evaluate_run(run, progress=False)
    assert set(result["top1"]) == {"8", "16", "32"} and result["n_test"] == 30
    assert min(result["top1"].values()) > 0.6  # chance is 1/3
    assert min(result["knn1"].values()) > 0.6
    assert all(result["top5"][m] == 1.0 for m in result["top5"])  # 3 classes: always among the top 5


def test_blockwise_1nn_equals_brute_force():
    rng = np.random.default_rng(0)
    db, labels = rng.normal(size=(500, 16)).astype(np.float32), rng.integers(0, 7, 500)
    queries, query_labels = rng.normal(size=(60, 16)).astype(np.float32), rng.integers(0, 7, 60)
    for m in (4, 16):
        dbn = db[:, :m] / np.linalg.norm(db[:, :m], axis=1, keepdims=True)
        qn = queries[:, :m] / np.linalg.norm(queries[:, :m], axis=1, keepdims=True)
        expected = float((labels[(qn @ dbn.T).argmax(1)] == query_labels).mean())
        for rows in (500, 77, 1):
            blocks = [(db[i : i + rows], labels[i : i + rows]) for i in range(0, 500, rows)]
            assert knn1_accuracy_blocks(blocks, queries, query_labels, [m])[m] == pytest.approx(expected)


def test_bf16_and_fp16_autocast_train_on_cpu(folder, tmp_path):
    with Precision("bf16", torch.device("cpu")).autocast():
        assert torch.nn.Linear(4, 4)(torch.randn(2, 4)).dtype == torch.bfloat16
    for precision in ("bf16", "fp16"):
        run = train(config(folder, epochs=1, precision=precision, channels_last=True, accumulate=2),
                    tmp_path / precision, progress=False)
        record = json.loads((run / "metrics.jsonl").read_text())
        assert np.isfinite(record["loss"]) and set(record["val_top1"]) == {"8", "16", "32"}


class _Interrupted(Exception):
    pass


def test_fp16_resume_restores_the_loss_scaler(folder, tmp_path, monkeypatch):
    """An fp16 run stopped after epoch 1 resumes to the uninterrupted run's weights.

    The scaler starts at 2**24 so that fp16 gradients overflow and it backs off during epoch 1: a
    resumed scaler that restarted there would skip other steps and end with other weights.
    """
    import mrl.recipe
    import mrl.training

    real_scaler = torch.amp.GradScaler
    monkeypatch.setattr(mrl.recipe.torch.amp, "GradScaler", lambda device: real_scaler(device, init_scale=2.0**24))
    settings = dict(precision="fp16", epochs=3)
    train(config(folder, **settings), tmp_path / "full", progress=False)

    real_save = mrl.training.save_checkpoint

    def save_then_die(run_dir, model, optimizer, epoch, step, scaler=None):
        real_save(run_dir, model, optimizer, epoch, step, scaler=scaler)
        raise _Interrupted

    monkeypatch.setattr(mrl.training, "save_checkpoint", save_then_die)
    with pytest.raises(_Interrupted):
        train(config(folder, **settings), tmp_path / "cut", progress=False)
    saved = read_state(tmp_path / "cut").scaler
    assert saved is not None and saved["scale"] < 2.0**24, "the scaler must have backed off in epoch 1"
    monkeypatch.setattr(mrl.training, "save_checkpoint", real_save)
    train(config(folder, **settings), tmp_path / "cut", resume=True, progress=False)
    assert read_state(tmp_path / "cut").scaler == read_state(tmp_path / "full").scaler
    full, cut = final_weights(tmp_path / "full"), final_weights(tmp_path / "cut")
    for name in full:
        assert torch.equal(full[name], cut[name]), name


def test_sgd_step_recipe_with_label_smoothing_learns(folder, tmp_path):
    run = train(config(folder, optimizer="sgd", schedule="step", lr_step_epochs=2, label_smoothing=0.1, lr=0.05,
                       epochs=3), tmp_path / "sgd", progress=False)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["lr"] == pytest.approx(0.005)  # epoch 3 is past the first step of x0.1
    assert records[-1]["val_top1"]["32"] > 0.6


def epochs_done(run: Path) -> int:
    try:
        state = read_state(run)
    except MRLError:  # no manifest yet
        return 0
    return 0 if state is None else state.epochs_done


def final_weights(run: Path) -> dict[str, torch.Tensor]:
    return load_tensors(checkpoint_paths(run, epochs_done(run))[0])


def test_resume_after_kill_is_exact_with_workers(folder, tmp_path):
    settings = dict(workers=2, optimizer="sgd", lr=0.05, epochs=5)
    train(config(folder, **settings), tmp_path / "full", progress=False)
    args = ["train", "--data", str(folder), *SMALL, "--workers", "2", "--optimizer", "sgd", "--lr", "0.05",
            "--epochs", "5", "--quiet"]
    # The killed attempt runs with this process's thread count: reductions split over other thread
    # counts round differently, and the full and resumed runs train in this process.
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    proc = subprocess.Popen([sys.executable, "-m", "mrl", *args, "--out", str(tmp_path / "cut")], env=env)
    deadline = time.time() + 300
    while time.time() < deadline and epochs_done(tmp_path / "cut") < 2:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = epochs_done(tmp_path / "cut")
    assert 2 <= done < 5, "the run must have been interrupted mid-way"
    train(config(folder, **settings), tmp_path / "cut", resume=True, progress=False)
    full, cut = final_weights(tmp_path / "full"), final_weights(tmp_path / "cut")
    assert full.keys() == cut.keys()
    for name in full:
        assert torch.equal(full[name], cut[name]), name


@pytest.mark.parametrize(
    ("breakage", "extra", "message"),
    [
        (None, ["--arch", "resnet50", "--rep-dim", "2048", "--nesting", "8,2048", "--image-size", "16"],
         "Error: image size 16x16 is too small for arch resnet50, which needs at least 32x32; raise --image-size"),
        ("empty class", [], "Error: class folder {root}/train/green holds no images"),
        ("unreadable", [], "Error: cannot read image {root}/val/red/000.png"),
        (None, ["--workers", "-1"], "Error: workers must be an integer >= 0, got -1"),
        ("bomb", [], "Error: image {root}/train/blue/000.png has"),
        (None, ["--batch-size", 32], "Error: each of the 1 process(es) gets 6 training images, fewer than its batch of 32"),
    ],
)
def test_bad_inputs_give_one_error_line_and_write_nothing(tmp_path, monkeypatch, breakage, extra, message):
    root = make_folder(tmp_path / "data", n_train=2, n_val=1)
    if breakage == "empty class":
        for f in (root / "train" / "green").iterdir():
            f.unlink()
    elif breakage == "unreadable":
        (root / "val" / "red" / "000.png").write_bytes(b"\x89PNG\r\n\x1a\n not really an image")
    elif breakage == "bomb":
        monkeypatch.setattr("mrl.data.image_folder.MAX_PIXELS", 100)
    out = tmp_path / "run"
    args = ["train", "--data", root, "--arch", "resnet", "--rep-dim", 32, "--nesting", "8,32", "--image-size", 16,
            "--epochs", 1, "--quiet", "--out", out, *extra]
    result = run_cli(*args)
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message.format(root=root)), result.output
    assert not out.exists()


def test_image_size_applies_to_streamed_folders_only(tmp_path):
    with pytest.raises(MRLError, match="--image-size applies to streamed image folders"):
        load_dataset("mnist", data_dir=tmp_path, image_size=32)
    with pytest.raises(MRLError, match="not in the training set"):
        root = make_folder(tmp_path / "d", n_train=1, n_val=1)
        (root / "val" / "purple").mkdir()
        load_streaming_folder(root)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        (dict(accumulate=5), "batch-size 24 must be divisible by accumulate 5"),
        (dict(momentum=1.0), "momentum must be a finite number >= 0 and < 1, got 1.0"),
        (dict(lr_gamma=0.0), "lr-gamma must be a finite number > 0 and <= 1, got 0.0"),
        (dict(label_smoothing=-0.1), "label-smoothing must be a finite number >= 0 and < 1"),
        (dict(optimizer="lamb"), "optimizer must be one of adamw, sgd, got 'lamb'"),
        (dict(arch="timm/"), "arch must be one of .* or timm/<name>, got 'timm/'"),
    ],
)
def test_recipe_config_errors(kw, match, tmp_path):
    with pytest.raises(MRLError, match=match):
        config(tmp_path, **kw)


def test_an_image_that_breaks_mid_file_stops_training_with_one_line(tmp_path):
    root = make_folder(tmp_path / "data", n_train=4, n_val=1)
    good = (root / "train" / "red" / "001.png").read_bytes()
    (root / "train" / "red" / "001.png").write_bytes(good[: len(good) // 2])  # header intact, pixels cut
    result = run_cli("train", "--data", root, *SMALL, "--batch-size", 4, "--workers", 2, "--epochs", 1, "--quiet",
                     "--out", tmp_path / "run")
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"Error: cannot read image {root}/train/red/001.png"), result.output
    assert (tmp_path / "run" / "config.json").exists()  # the header passed the up-front check; a worker failed


def test_resume_refuses_a_folder_with_other_classes(tmp_path):
    root = make_folder(tmp_path / "data", n_train=2, n_val=1)
    settings = config(root, epochs=1, batch_size=6)
    run = train(settings, tmp_path / "run", progress=False)
    for split in ("train", "val"):
        (root / split / "yellow").mkdir()
        shutil.copy(root / split / "red" / "000.png", root / split / "yellow" / "000.png")
    with pytest.raises(MRLError, match="cannot resume .*: the data's classes differ from the run's classes.json"):
        train(settings, run, resume=True, progress=False)


@pytest.mark.parametrize("args", [["compare", "--methods", "mrl"], ["demo"]])
def test_in_memory_commands_refuse_a_streamed_folder(folder, tmp_path, args):
    before = sorted(p.relative_to(folder) for p in folder.rglob("*"))
    result = CliRunner().invoke(cli, [*args, "--data", str(folder), "--out", str(tmp_path / "out")])
    assert result.exit_code == 1
    assert result.output.count("Error:") == 1 and "only `mrl train` and `mrl eval` stream" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "out").exists()
    assert sorted(p.relative_to(folder) for p in folder.rglob("*")) == before


def test_only_the_writing_rank_opens_every_header(tmp_path, monkeypatch):
    """Under torchrun rank 0 checks the headers; the other ranks list the folder without opening a file."""
    import mrl.data.image_folder

    root = make_folder(tmp_path / "d", n_train=2, n_val=1)
    bad = root / "train" / CLASSES[0] / "broken.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(MRLError, match=f"cannot read image {bad}"):
        load_dataset(str(root))
    real, opened = mrl.data.image_folder._open_rgb, []
    monkeypatch.setattr(mrl.data.image_folder, "_open_rgb", lambda path, **kw: opened.append(path) or real(path, **kw))
    data = load_dataset(str(root), check_images=False)
    assert opened == [] and len(data.train) == 3 * 2 + 1
