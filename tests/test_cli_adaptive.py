"""Tests for `mrl adaptive`: files produced, their numbers, and errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from mrl.adaptive import AdaptiveClassifier
from mrl.artifacts import write_manifest
from mrl.cli import cli
from mrl.config import TrainConfig
from mrl.runs import EVAL_OUTPUTS
from mrl.io import save_npy, write_json


def write_run_manifest(path, nesting=None):
    """Record a hand-made run (config.json and whatever eval outputs exist) in its manifest."""
    if nesting is not None:
        TrainConfig(nesting=list(nesting), rep_dim=64).save(path / "config.json")
    names = ["config.json"] + [n for n in EVAL_OUTPUTS if (path / n).exists()]
    write_manifest(path, "training-run", names, meta={"state": None})


def make_run(path, n_val=240, n_test=200, nesting=(8, 16, 32, 64), num_classes=5, seed=0):
    rng = np.random.default_rng(seed)
    path.mkdir(parents=True, exist_ok=True)
    TrainConfig(nesting=list(nesting), rep_dim=nesting[-1]).save(path / "config.json")
    for split, n in (("val", n_val), ("test", n_test)):
        labels = rng.integers(0, num_classes, n)
        logits = rng.normal(size=(len(nesting), n, num_classes))
        for s in range(len(nesting)):
            logits[s, np.arange(n), labels] += (0.6 + 0.7 * s) * rng.gamma(2.0, 1.0, size=n)
        save_npy(path / f"logits_{split}.npy", logits.astype(np.float32))
        save_npy(path / f"labels_{split}.npy", labels.astype(np.int64))
    write_run_manifest(path)
    return path


def make_ff(path, size, acc):
    path.mkdir(parents=True)
    TrainConfig(mode="ff", ff_dim=size).save(path / "config.json")
    write_json(path / "eval.json", {"top1": {str(size): acc}, "knn1": {str(size): acc}, "mode": "ff", "nesting": [size]})
    write_run_manifest(path)
    return path


def invoke(*args):
    return CliRunner().invoke(cli, list(map(str, args)), catch_exceptions=False)


def test_adaptive_writes_json_png_and_report(tmp_path):
    run = make_run(tmp_path / "run")
    ff8, ff32 = make_ff(tmp_path / "ff8", 8, 0.61), make_ff(tmp_path / "ff32", 32, 0.83)
    out = tmp_path / "out"
    result = invoke("adaptive", run, "--seeds", 3, "--n-quantiles", 20, "--ff", ff8, "--ff", ff32, "--out", out, "--quiet")
    assert result.exit_code == 0, result.output
    assert "budget-final" in result.output
    data = json.loads((out / "adaptive.json").read_text())
    assert set(data["policies"]) == {"greedy", "budget-final", "budget-cumulative"}
    assert data["ff_test_top1"] == {"8": 0.61, "32": 0.83}
    assert (out / "adaptive.png").read_bytes()[:4] == b"\x89PNG"
    report = (out / "report.md").read_text()
    assert "| budget-cumulative | cumulative |" in report
    row8 = next(line for line in report.splitlines() if line.startswith("| 8 |"))
    assert row8.endswith("| 61.00 |")
    # the all-val greedy fit equals fitting the library classifier on all of val
    logits, labels = np.load(run / "logits_val.npy"), np.load(run / "labels_val.npy")
    clf = AdaptiveClassifier([8, 16, 32, 64]).fit(logits, labels)
    assert data["policies"]["greedy"]["all_val_fit"]["thresholds"] == clf.thresholds_.tolist()
    test_logits, test_labels = np.load(run / "logits_test.npy"), np.load(run / "labels_test.npy")
    largest = (test_logits[-1].argmax(-1) == test_labels).mean()
    assert data["fixed_sizes"]["test"]["64"] == pytest.approx(largest)
    assert data["goal"]["dims_limit"] == pytest.approx(64 / 14)
    assert len(data["policies"]["greedy"]["thresholds"]) == 3
    assert data["oracle"]["test"] >= max(data["fixed_sizes"]["test"].values())
    # certification is said in the output, the JSON and the report, with the bootstrap spread
    budget = data["policies"]["budget-final"]
    flag = "yes" if budget["all_val_fit"]["certified"] else "no"
    assert f"target certified: {flag} (halves {budget['certified_seeds']}/3, bootstrap " in result.output
    assert data["policies"]["greedy"]["certified_seeds"] is None
    assert budget["all_val_fit"]["bootstrap"]["resamples"] == 3
    assert f"| budget-final | {flag} (halves" in report


def test_adaptive_single_policy_and_overwrite(tmp_path):
    run = make_run(tmp_path / "run")
    out = tmp_path / "out"
    assert invoke("adaptive", run, "--policy", "greedy", "--seeds", 2, "--cost", "final", "--out", out, "--quiet").exit_code == 0
    again = invoke("adaptive", run, "--policy", "greedy", "--seeds", 2, "--out", out, "--quiet")
    assert again.exit_code == 1 and "already exists" in again.output
    assert invoke("adaptive", run, "--policy", "budget", "--cost", "final", "--seeds", 2, "--n-quantiles", 10,
                  "--out", out, "--overwrite", "--quiet").exit_code == 0
    assert set(json.loads((out / "adaptive.json").read_text())["policies"]) == {"budget-final"}


def test_adaptive_errors(tmp_path):
    run = make_run(tmp_path / "run")
    (run / "logits_test.npy").unlink()
    write_run_manifest(run)
    result = invoke("adaptive", run, "--out", tmp_path / "out")
    assert result.exit_code == 1 and "--save-logits" in result.output
    run2 = make_run(tmp_path / "run2")
    write_run_manifest(run2, nesting=[8, 16, 32])
    result = invoke("adaptive", run2, "--out", tmp_path / "out")
    assert result.exit_code == 1 and "holds 4 sizes but config.json's nesting has 3" in result.output
    result = invoke("adaptive", make_run(tmp_path / "run3"), "--ff", tmp_path / "missing", "--out", tmp_path / "out")
    assert result.exit_code == 1 and "missing does not exist" in result.output
    result = invoke("adaptive", run2, "--target-drop", -1, "--out", tmp_path / "out")
    assert result.exit_code == 1 and "--target-drop" in result.output


def test_adaptive_help_documents_every_option():
    result = invoke("adaptive", "--help")
    assert result.exit_code == 0
    for option in ("--policy", "--cost", "--target-drop", "--budget", "--seeds", "--fit-fraction", "--ff", "--out"):
        assert option in result.output
