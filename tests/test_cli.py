"""The CLI: bad input gives one clear line, exit status 1, no traceback and nothing written."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from mrl.cli import cli


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def files_under(path):
    return sorted(p.relative_to(path) for p in path.rglob("*")) if path.exists() else []


@pytest.fixture
def trained_run(tmp_path_factory, fashion_subset_dir):
    out = tmp_path_factory.mktemp("cli") / "run"
    result = run("train", "--data", "mnist", "--data-dir", fashion_subset_dir, "--arch", "mlp", "--rep-dim", 32,
                 "--nesting", "8,16,32", "--epochs", 1, "--max-train", 600, "--batch-size", 64, "--quiet", "--out", out)
    assert result.exit_code == 0, result.output
    return out


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--nesting", "16,8"], "Error: nesting must be strictly ascending, got [16, 8]"),
        (["--nesting", "8,4096"], "Error: nesting size 4096 is larger than the representation size 2048"),
        (["--nesting", "0,8"], "Error: nesting sizes must be positive, got 0 in [0, 8]"),
        (["--mode", "ff"], "Error: mode ff needs --ff-dim M"),
        (["--data", "imagenet"], "Error: unknown data set 'imagenet'"),
        (["--data-dir", "/nonexistent"], "Error: data directory /nonexistent does not exist"),
    ],
)
def test_train_bad_input(tmp_path, extra, message):
    out = tmp_path / "run"
    result = run("train", "--epochs", 1, "--out", out, *extra)
    assert result.exit_code == 1
    assert result.output.strip().splitlines()[-1].startswith(message)
    assert "Traceback" not in result.output
    assert not out.exists()


def test_unknown_mode_is_a_usage_error(tmp_path):
    result = run("train", "--mode", "big", "--out", tmp_path / "r")
    assert result.exit_code == 2 and "'big' is not one of 'mrl', 'mrl-e', 'ff'" in result.output


def test_nan_and_empty_npz(tmp_path):
    np.savez(tmp_path / "nan.npz", X=np.full((50, 4), np.nan), y=np.zeros(50, np.int64))
    np.savez(tmp_path / "empty.npz", X=np.zeros((0, 4)), y=np.zeros(0, np.int64))
    for name, message in (("nan", "contains NaN or infinite values"), ("empty", "holds no examples")):
        result = run("train", "--data", tmp_path / f"{name}.npz", "--out", tmp_path / name / "run")
        assert result.exit_code == 1 and message in result.output
        assert not (tmp_path / name).exists()


def test_existing_out_without_resume(trained_run):
    before = {p: p.read_bytes() for p in trained_run.rglob("*") if p.is_file()}
    result = run("train", "--data", "mnist", "--epochs", 1, "--out", trained_run)
    assert result.exit_code == 1 and "already exists; pass --resume" in result.output
    assert before == {p: p.read_bytes() for p in trained_run.rglob("*") if p.is_file()}


def test_resume_with_other_settings_is_refused(trained_run):
    result = run("train", "--out", trained_run, "--resume", "--rep-dim", 64)
    assert result.exit_code == 1 and "cannot resume" in result.output and "rep_dim" in result.output


def test_eval_and_embed(trained_run, tmp_path):
    result = run("eval", trained_run, "--quiet", "--save-logits")
    assert result.exit_code == 0
    assert "| 32 |" in result.output
    evaluation = json.loads((trained_run / "eval.json").read_text())
    assert set(evaluation["top1"]) == set(evaluation["knn1"]) == {"8", "16", "32"}
    logits = np.load(trained_run / "logits_test.npy")
    assert logits.shape == (3, 500, 10) and logits.dtype == np.float32
    result = run("embed", trained_run, "--split", "val", "--out", tmp_path / "val.npz", "--quiet")
    assert result.exit_code == 0
    with np.load(tmp_path / "val.npz") as f:
        assert f["X"].shape == (250, 32) and f["X"].dtype == np.float32 and f["y"].dtype == np.int64


def test_not_a_run_dir(tmp_path):
    (tmp_path / "stuff").mkdir()
    result = run("eval", tmp_path / "stuff")
    assert result.exit_code == 1
    assert result.output.strip() == f"Error: {tmp_path / 'stuff'} is not a run directory of `mrl train` (no valid manifest.json); create one with `mrl train`"
    result = run("embed", tmp_path / "missing", "--out", tmp_path / "x.npz")
    assert result.exit_code == 1 and "does not exist" in result.output
    assert not (tmp_path / "x.npz").exists()


def test_demo_end_to_end_small(tmp_path, fashion_subset_dir):
    out = tmp_path / "demo"
    args = ["demo", "--out", out, "--data", "mnist", "--data-dir", fashion_subset_dir, "--arch", "mlp",
            "--rep-dim", 32, "--ff-dims", "8,32", "--epochs", 1, "--max-train", 600, "--quiet"]
    result = run(*args)
    assert result.exit_code == 0, result.output
    report = (out / "report.md").read_text()
    assert "| 8 |" in report and "top1.png" in report
    assert (out / "top1.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    results = json.loads((out / "results.json").read_text())
    assert set(results["top1"]) == {"MRL", "MRL-E", "FF"} and set(results["top1"]["FF"]) == {"8", "32"}
    # a second invocation reuses the finished runs: no checkpoint is rewritten
    mtimes = {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("*.safetensors")}
    assert run(*args).exit_code == 0
    assert mtimes == {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("*.safetensors")}


def test_demo_over_seeds_reports_mean_and_std(tmp_path, fashion_subset_dir):
    out = tmp_path / "demo"
    result = run("demo", "--out", out, "--data", "mnist", "--data-dir", fashion_subset_dir, "--arch", "mlp",
                 "--rep-dim", 16, "--ff-dims", "8", "--epochs", 1, "--max-train", 300, "--seeds", 2, "--quiet")
    assert result.exit_code == 0, result.output
    report = (out / "report.md").read_text()
    assert "seeds 0..1: every number is the mean ± sample std of 2 runs" in report
    results = json.loads((out / "results.json").read_text())
    runs = [json.loads((out / "runs" / folder / "eval.json").read_text()) for folder in ("mrl", "seed-1/mrl")]
    values = [r["top1"]["8"] for r in runs]
    assert results["seeds"] == [0, 1]
    assert results["top1"]["MRL"]["8"] == pytest.approx(np.mean(values))
    assert results["top1_std"]["MRL"]["8"] == pytest.approx(np.std(values, ddof=1))
    assert f"| 8 | {100 * np.mean(values):.2f} ± {100 * np.std(values, ddof=1):.2f} |" in report


def test_multi_run_commands_refuse_a_foreign_out(trained_run, tmp_path, fashion_subset_dir):
    before = files_under(trained_run)
    common = ["--data", "mnist", "--data-dir", fashion_subset_dir, "--epochs", 1, "--quiet"]
    for command in (["demo", "--out", trained_run], ["compare", "--out", trained_run, "--seeds", 1]):
        result = run(*command, *common)
        assert result.exit_code == 1
        assert f"{trained_run} exists and is not an `mrl {command[0]}` folder" in result.output
    assert files_under(trained_run) == before


def test_eval_refuses_a_foreign_config(tmp_path):
    (tmp_path / "lm").mkdir()
    (tmp_path / "lm" / "config.json").write_text('{"corpus": "wordnet", "model": {}, "train": {}}')
    result = run("eval", tmp_path / "lm")
    assert result.exit_code == 1
    assert "is not a run directory of `mrl train` (no valid manifest.json)" in result.output
