"""mrl compare: every method over seeds, aggregated tables, and resumption of an interrupted compare."""

import csv
import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from mrl.cli import cli
from mrl.compare import METHODS, aggregate, compare, parse_methods
from mrl.config import TrainConfig
from mrl.data import load_dataset
from mrl.errors import MRLError
from mrl.experiments import claim_folder
from mrl.training import train

SIZES = [8, 16]


def settings(data_dir):
    return dict(data="mnist", data_dir=str(data_dir), arch="mlp", rep_dim=16, nesting="8,16", epochs=2, seeds=2,
                max_train=300, batch_size=64, rand_draws=2, progress=False, echo=lambda s: None)


@pytest.fixture(scope="module")
def dataset(fashion_subset_dir):
    return load_dataset("mnist", fashion_subset_dir, 300)


@pytest.fixture(scope="module")
def full(tmp_path_factory, fashion_subset_dir, dataset):
    out = tmp_path_factory.mktemp("compare") / "full"
    result = compare(out, dataset=dataset, **settings(fashion_subset_dir))
    return out, result


def read_table(path):
    with open(path) as f:
        return list(csv.DictReader(f))


class Interrupt(Exception):
    pass


def test_tables_hold_mean_and_std_over_seeds(full):
    out, _ = full
    per_seed = json.loads((out / "results.json").read_text())["per_seed"]
    assert set(per_seed) == {"MRL", "MRL-E", "FF", "SVD", "Rand. FS", "Slimmable", "MRL retro-fit"}
    for key in ("top1", "knn1"):
        rows = read_table(out / f"table_{key}.csv")
        assert [int(r["m"]) for r in rows] == SIZES
        for name, seeds in per_seed.items():
            assert len(seeds) == 2
            for row in rows:
                values = [s[key][row["m"]] for s in seeds]
                assert float(row[f"{name}_mean"]) == pytest.approx(np.mean(values), abs=1e-6)
                assert float(row[f"{name}_std"]) == pytest.approx(np.std(values, ddof=1), abs=1e-6)
                assert 0.0 <= float(row[f"{name}_mean"]) <= 1.0
    # FF at each size is its own run with a representation of exactly that size.
    for m in SIZES:
        config = json.loads((out / "runs" / "seed-1" / f"ff-{m}" / "config.json").read_text())
        assert config["rep_dim"] == m and config["seed"] == 1
    report = (out / "report.md").read_text()
    assert "## Linear classification, top-1 (%)" in report and "## 1-NN accuracy" in report
    assert "| m | MRL | MRL-E | FF | SVD | Rand. FS | Slimmable | MRL retro-fit |" in report
    for png in ("top1.png", "knn1.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # both protocols side by side: own heads and one converged probe on every representation
    assert "## Both protocols side by side, top-1 (%)" in report
    assert "| m | MRL heads | MRL probe | MRL-E heads | MRL-E probe | FF heads | FF probe | SVD probe |" in report
    probe = json.loads((out / "results.json").read_text())["per_seed_probe"]
    assert probe["SVD"] == [s["top1"] for s in per_seed["SVD"]]  # SVD's own numbers are already a probe
    rows = read_table(out / "table_top1_probe.csv")
    assert float(rows[0]["MRL_mean"]) == pytest.approx(np.mean([s["8"] for s in probe["MRL"]]), abs=1e-6)


def test_probe_protocol_equals_a_probe_fitted_here(full, dataset):
    from mrl.baselines import LinearProbe
    from mrl.evaluation import embed, load_run

    out, _ = full
    probe = json.loads((out / "results.json").read_text())["per_seed_probe"]
    _, model, _, device = load_run(out / "runs" / "seed-1" / "mrl", dataset)
    z_train, z_test = embed(model, dataset.train.x, device), embed(model, dataset.test.x, device)
    expected = LinearProbe().fit(z_train[:, :8], dataset.train.y.numpy()).score(z_test[:, :8], dataset.test.y.numpy())
    assert probe["MRL"][1]["8"] == pytest.approx(expected)


def test_interrupted_compare_resumes_and_matches(tmp_path, full, fashion_subset_dir, dataset):
    ref, _ = full
    out = tmp_path / "cut"
    # One run killed after its first epoch ...
    config = TrainConfig(data="mnist", data_dir=str(fashion_subset_dir), mode="mrl", arch="mlp", rep_dim=16,
                         nesting=SIZES, epochs=2, max_train=300, batch_size=64, seed=0)

    def stop_after_first(epoch):
        raise Interrupt

    with claim_folder(out, "compare"), pytest.raises(Interrupt):  # as the compare does before its first run
        train(config, out / "runs" / "seed-0" / "mrl", progress=False, data=dataset, on_epoch_end=stop_after_first)
    # ... then the compare itself interrupted after six finished pieces.
    finished = []

    def stop_after_six(name):
        finished.append(name)
        if len(finished) == 6:
            raise Interrupt

    with pytest.raises(Interrupt):
        compare(out, dataset=dataset, on_run_done=stop_after_six, **settings(fashion_subset_dir))
    assert finished[:3] == ["seed-0/mrl", "seed-0/mrl-e", "seed-0/ff-8"]
    done_files = {p: (p.stat().st_mtime_ns, p.read_bytes()) for name in finished
                  for p in (out / "runs" / name).rglob("*") if p.is_file()}
    assert not (out / "table_top1.csv").exists()

    again = []
    compare(out, dataset=dataset, on_run_done=again.append, **settings(fashion_subset_dir))
    assert again[:6] == finished  # every piece is visited again, in the same order ...
    for path, (mtime, content) in done_files.items():  # ... but finished ones are not redone
        assert path.stat().st_mtime_ns == mtime and path.read_bytes() == content, path
    for name in ("table_top1.csv", "table_knn1.csv"):
        assert (out / name).read_text() == (ref / name).read_text()


def test_other_settings_in_the_same_out_are_refused(tmp_path, full, fashion_subset_dir, dataset):
    out = tmp_path / "copy"
    shutil.copytree(full[0], out)
    with pytest.raises(MRLError, match=r"holds a run with other settings \(epochs\)"):
        compare(out, dataset=dataset, **{**settings(fashion_subset_dir), "epochs": 3})
    with pytest.raises(MRLError, match=r"holds a result with other settings \(draws\)"):
        compare(out, dataset=dataset, methods="rand", **{**settings(fashion_subset_dir), "rand_draws": 3})
    # a derived result whose manifest records no settings (meta.key edited to null, a list or a string): a TypeError before
    derived = next(p for p in (out / "runs").rglob("manifest.json") if json.loads(p.read_text()).get("meta", {}).get("key") is not None)
    record = json.loads(derived.read_text())
    for bad in (None, [], "x"):
        derived.write_text(json.dumps({**record, "meta": {**record["meta"], "key": bad}}))
        with pytest.raises(MRLError, match=r"records no settings for its result \(meta.key is"):
            compare(out, dataset=dataset, **settings(fashion_subset_dir))


def test_cli_reuses_finished_runs_and_reports_bad_methods(tmp_path, full, fashion_subset_dir):
    out = tmp_path / "copy"
    shutil.copytree(full[0], out)
    before = {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("*.safetensors")}
    args = ["compare", "--out", str(out), "--data", "mnist", "--data-dir", str(fashion_subset_dir), "--arch", "mlp",
            "--rep-dim", "16", "--nesting", "8,16", "--epochs", "2", "--seeds", "2", "--max-train", "300",
            "--batch-size", "64", "--rand-draws", "2", "--quiet"]
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "Linear top-1 (%)" in result.output and "FF (all sizes) / MRL training wall time" in result.output
    assert before == {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("*.safetensors")}
    bad = CliRunner().invoke(cli, [*args, "--methods", "mrl,bogus"], catch_exceptions=False)
    assert bad.exit_code == 1 and "Error: unknown method(s) ['bogus']" in bad.output


def test_parse_methods_and_aggregate():
    assert parse_methods(None) == list(METHODS)
    assert parse_methods(["retrofit", "ff"]) == ["ff", "retrofit"]
    with pytest.raises(MRLError, match=r"unknown method\(s\) \['svm'\] in --methods"):
        parse_methods("svm")
    mean, std = aggregate({"A": [{8: 0.5, 16: 0.6}, {8: 0.7}]})
    assert mean == {"A": {8: pytest.approx(0.6)}} and std["A"][8] == pytest.approx(np.std([0.5, 0.7], ddof=1))
