"""Class 1 of the hardening issue: a path read from a file is never followed.

A run's manifest state that names ``../victim.safetensors`` or an absolute path (with the matching
sha256), manifests listing ``../secret.txt`` or ``/etc/hostname``, symlinks planted inside an
artifact: every reader refuses with one line and no file outside the artifact is read or removed.
"""

from __future__ import annotations

import hashlib
import json

import pytest
from hostile import assert_refused, copy, tree

from mrl.artifacts import write_manifest


def _edit_manifest(folder, edit) -> None:
    record = json.loads((folder / "manifest.json").read_text())
    edit(record)
    (folder / "manifest.json").write_text(json.dumps(record))


@pytest.mark.parametrize("target", ["../victim.safetensors", "ABSOLUTE"])
@pytest.mark.parametrize("command", ["resume", "eval"])
def test_state_naming_a_file_outside_the_run_is_refused_and_the_file_survives(tmp_path, tiny_artifacts, target, command):
    run = copy(tiny_artifacts["run"], tmp_path / "run")
    victim = tmp_path / "victim.safetensors"
    victim.write_bytes((run / "checkpoints" / "model-0001.safetensors").read_bytes())
    name = str(victim) if target == "ABSOLUTE" else target
    digest = hashlib.sha256(victim.read_bytes()).hexdigest()

    def plant(record):  # the old state.json layout: file names next to their checksums
        record["meta"]["state"].update(model=name, model_sha256=digest, optimizer=name, optimizer_sha256=digest)

    _edit_manifest(run, plant)
    args = (["train", "--data", tiny_artifacts["data"], "--arch", "mlp", "--rep-dim", "16", "--nesting", "8,16",
             "--epochs", "1", "--batch-size", "32", "--quiet", "--out", run, "--resume"]
            if command == "resume" else ["eval", run, "--quiet"])
    assert_refused(tmp_path, *args, match="holds no valid training state")
    assert victim.exists()


def test_checkpoint_folder_symlinked_out_of_the_run_is_refused(tmp_path, tiny_artifacts):
    run = copy(tiny_artifacts["run"], tmp_path / "run")
    outside = tmp_path / "elsewhere"
    (run / "checkpoints").rename(outside)
    (run / "checkpoints").symlink_to(outside)
    assert_refused(tmp_path, "eval", run, "--quiet", match="is not a plain folder (a symlink?)")
    assert_refused(tmp_path, "train", "--data", tiny_artifacts["data"], "--arch", "mlp", "--rep-dim", "16",
                   "--nesting", "8,16", "--epochs", "1", "--batch-size", "32", "--quiet", "--out", run, "--resume",
                   match="is not a plain folder (a symlink?)")


def test_planted_checkpoint_symlink_is_not_loaded(tmp_path, tiny_artifacts):
    run = copy(tiny_artifacts["run"], tmp_path / "run")
    model = run / "checkpoints" / "model-0001.safetensors"
    stash = tmp_path / "stash.safetensors"
    model.rename(stash)
    model.symlink_to(stash)
    assert_refused(tmp_path, "eval", run, "--quiet", match="is a symlink; refusing to load it")


@pytest.mark.parametrize("name", ["../secret.txt", "/etc/hostname", "sub/../../secret.txt", "eval.json\x00x"])
@pytest.mark.parametrize("artifact", ["run", "adapter", "index"])
def test_manifest_names_outside_the_artifact_are_never_opened(tmp_path, tiny_artifacts, name, artifact):
    folder = copy(tiny_artifacts[artifact], tmp_path / artifact)
    (tmp_path / "secret.txt").write_text("secret")
    _edit_manifest(folder, lambda r: r["files"].update({name: {"sha256": hashlib.sha256(b"secret").hexdigest()}}))
    args = {"run": ["eval", folder, "--quiet"],
            "adapter": ["adapt", "apply", folder, tiny_artifacts["emb"], "--out", tmp_path / "out.npz"],
            "index": ["index", "search", folder, tiny_artifacts["emb"]]}[artifact]
    assert_refused(tmp_path, *args, match="is not a plain file name")


def test_manifest_listing_a_symlink_to_a_file_outside_is_refused(tmp_path, tiny_artifacts):
    adapter = copy(tiny_artifacts["adapter"], tmp_path / "adapter")
    outside = tmp_path / "outside.safetensors"
    (adapter / "adapter.safetensors").rename(outside)
    (adapter / "adapter.safetensors").symlink_to(outside)
    assert_refused(tmp_path, "adapt", "apply", adapter, tiny_artifacts["emb"], "--out", tmp_path / "out.npz",
                   match="is not a regular file (symlinks and folders are refused)")


def test_lm_step_is_a_number_not_a_name(tmp_path):
    """An LM run's checkpoint name is derived from an integer step; a string step is refused."""
    from mrl.lm.train import checkpoint_name, checkpoint_step
    from mrl.artifacts import Manifest
    from mrl.errors import MRLError

    assert checkpoint_name(12) == "checkpoint-0000012.safetensors"
    for step in ("../../victim", 1.5, -1, True):
        with pytest.raises(MRLError, match="step must be an integer"):
            checkpoint_step(Manifest("lm-run", 1, {}, {"step": step}))


def test_write_manifest_only_takes_plain_names(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "victim").write_text("x")
    before = tree(tmp_path)
    from mrl.errors import MRLError

    with pytest.raises(MRLError, match="not a plain file name"):
        write_manifest(tmp_path / "a", "experiment", ["../victim"])
    assert tree(tmp_path) == before
