"""Class 5 of the hardening issue: one typed loader per JSON file kind. Strings for numbers, missing
keys, wrong shapes or a changed rep_dim in a config, a state, an eval.json or a --config file give
one MRLError line, never a TypeError / KeyError / RuntimeError traceback.

The artifacts here are re-signed after editing (as a crafted, not merely corrupted, folder would be),
so what is tested is the typed read behind the checksum."""

from __future__ import annotations

import json

import pytest
from hostile import TINY, assert_refused, copy

from mrl.artifacts import write_manifest


def _resign(folder, kind, edit_file=None, edit=None, meta_edit=None):
    record = json.loads((folder / "manifest.json").read_text())
    if edit_file is not None:
        values = json.loads((folder / edit_file).read_text())
        edit(values)
        (folder / edit_file).write_text(json.dumps(values))
    if meta_edit is not None:
        meta_edit(record["meta"])
    write_manifest(folder, kind, list(record["files"]), meta=record["meta"])


@pytest.mark.parametrize(("key", "value", "match"), [
    ("epochs", "3", "epochs must be an integer"),
    ("lr", "fast", "lr must be a finite number"),
    ("nesting", ["8", "16"], "nesting"),
    ("rep_dim", 32, "does not fit this model"),
    ("seed", 2**70, "seed must be an integer >= 0 and <= 4294967295"),
    ("augment", "yes", "augment must be true or false"),
    ("extra", [], "extra must be a JSON object"),
    ("loss_weights", ["a", "b"], "every loss weight must be a finite number"),
    ("bogus", 1, "unknown training config key(s) ['bogus']"),
])
def test_crafted_training_config(tmp_path, tiny_artifacts, key, value, match):
    run = copy(tiny_artifacts["run"], tmp_path / "run")
    _resign(run, "training-run", "config.json", lambda c: c.update({key: value}))
    assert_refused(tmp_path, "eval", run, "--quiet", match=match)


def test_config_that_is_not_an_object_or_lacks_keys(tmp_path, tiny_artifacts):
    run = copy(tiny_artifacts["run"], tmp_path / "run")
    (run / "config.json").write_text("[1, 2]")
    _resign(run, "training-run")
    assert_refused(tmp_path, "eval", run, "--quiet", match="does not hold a training config")


@pytest.mark.parametrize(("edit", "match"), [
    (lambda s: s.update(epochs_done="1"), "epochs_done must be an integer"),
    (lambda s: s.update(step=-4), "step must be an integer >= 0"),
    (lambda s: s.pop("model_sha256"), "holds no valid training state"),
    (lambda s: s.update(model_sha256=42), "model_sha256 must be a sha256 hex digest"),
    (lambda s: s.update(optimizer_groups={"lr": 1}), "optimizer_groups must be a list of objects"),
    (lambda s: s.update(epochs_done=7), "checkpoint"),  # names derived from the epoch: the file is missing
    # these were a TypeError on resume, a resume that did nothing and exited 0, and a NaN checkpoint
    (lambda s: s["optimizer_groups"][0].update(lr="x"), "optimizer_groups value 'lr' must be a finite number"),
    (lambda s: s["optimizer_groups"][0].update(betas="ab"), "optimizer_groups value 'betas' must be a finite number"),
    (lambda s: s["optimizer_groups"][0].update(weight_decay=float("nan")), "optimizer_groups value 'weight_decay'"),
    (lambda s: s.update(step=10**30), "step must be an integer"),
])
def test_crafted_training_state(tmp_path, tiny_artifacts, edit, match):
    run = copy(tiny_artifacts["run"], tmp_path / "run")
    _resign(run, "training-run", meta_edit=lambda m: edit(m["state"]))
    assert_refused(tmp_path, "eval", run, "--quiet", match=match)
    assert_refused(tmp_path, "train", "--data", tiny_artifacts["data"], *TINY, "--out", run, "--resume", match=match)


@pytest.mark.parametrize(("edit", "match"), [
    (lambda e: e.update(top1="high"), "'top1' must be a non-empty object"),
    (lambda e: e["top1"].update({"16": "0.9"}), "maps sizes to accuracies in [0, 1]"),
    (lambda e: e["top1"].update({"16": 7.0}), "maps sizes to accuracies in [0, 1]"),
    (lambda e: e.pop("knn1"), "has no 'knn1' accuracies"),
])
def test_crafted_eval_json(tmp_path, tiny_artifacts, edit, match):
    run = copy(tiny_artifacts["run"], tmp_path / "run")
    _resign(run, "training-run", "eval.json", edit)
    assert_refused(tmp_path, "adaptive", run, "--ff", run, "--seeds", "2", "--out", tmp_path / "o", match=match)


@pytest.mark.parametrize(("edit", "match"), [
    (lambda c: c["adapter"].update(dim="12"), "dim must be a positive integer"),
    (lambda c: c.update(adapter=None), "has no 'adapter' settings object"),
    (lambda c: c["adapter"].update(nesting=[16, 8]), "strictly ascending"),
])
def test_crafted_adapter_config(tmp_path, tiny_artifacts, edit, match):
    adapter = copy(tiny_artifacts["adapter"], tmp_path / "adapter")
    _resign(adapter, "adapter", "config.json", edit)
    assert_refused(tmp_path, "adapt", "apply", adapter, tiny_artifacts["emb"], "--out", tmp_path / "a.npz", match=match)


@pytest.mark.parametrize(("settings", "match"), [
    ({"epochs": "two"}, "epochs must be an integer"),
    ({"batch_size": 0}, "batch-size must be an integer >= 1"),
    ({"lr": None}, "lr must be a finite number"),
    ([1, 2], "must hold a JSON object"),
])
def test_crafted_train_config_file(tmp_path, tiny_artifacts, settings, match):
    path = tmp_path / "settings.json"
    path.write_text(json.dumps(settings))
    assert_refused(tmp_path, "train", "--data", tiny_artifacts["data"], "--config", path, "--out", tmp_path / "run",
                   "--quiet", match=match)
