"""Class 4 of the hardening issue: every artifact carries a manifest (kind, format version, sha256 of
every file) and every reader verifies it, so an edited eval.json, logits file, adapter, LM weights
or manifest field is refused instead of silently changing results."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hostile import assert_refused, copy

from mrl.artifacts import read_manifest


def _flip_last_byte(path) -> None:
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0xFF
    path.write_bytes(bytes(raw))


def test_every_artifact_lists_its_files(tiny_artifacts):
    run = read_manifest(tiny_artifacts["run"], "training-run")
    assert set(run.files) == {"config.json", "eval.json", "logits_val.npy", "logits_test.npy", "labels_val.npy",
                              "labels_test.npy"}
    assert run.meta["state"]["epochs_done"] == 1
    assert set(read_manifest(tiny_artifacts["adapter"], "adapter").files) == {"config.json", "adapter.safetensors"}


def test_edited_eval_json_is_refused_by_its_readers(tmp_path, tiny_artifacts):
    run = copy(tiny_artifacts["run"], tmp_path / "run")
    result = json.loads((run / "eval.json").read_text())
    result["top1"]["16"] = 0.999
    (run / "eval.json").write_text(json.dumps(result))
    assert_refused(tmp_path, "adaptive", run, "--ff", run, "--out", tmp_path / "out", "--seeds", "2",
                   match="eval.json does not match the sha256")


@pytest.mark.parametrize("name", ["logits_test.npy", "labels_val.npy", "config.json"])
def test_edited_logits_labels_or_config_are_refused(tmp_path, tiny_artifacts, name):
    run = copy(tiny_artifacts["run"], tmp_path / "run")
    if name.endswith(".npy"):
        array = np.load(run / name)
        np.save(run / name, array[::-1].copy())  # a plausible, well-formed but different array
    else:
        (run / name).write_text((run / name).read_text().replace('"seed": 0', '"seed": 1'))
    assert_refused(tmp_path, "adaptive", run, "--out", tmp_path / "out", "--seeds", "2",
                   match=f"{name} does not match the sha256")


def test_corrupt_or_swapped_weights_are_refused(tmp_path, tiny_artifacts):
    run = copy(tiny_artifacts["run"], tmp_path / "run")
    _flip_last_byte(run / "checkpoints" / "model-0001.safetensors")
    assert_refused(tmp_path, "embed", run, "--out", tmp_path / "e.npz", "--quiet", match="does not match the checksum")
    adapter = copy(tiny_artifacts["adapter"], tmp_path / "adapter")
    _flip_last_byte(adapter / "adapter.safetensors")
    assert_refused(tmp_path, "adapt", "apply", adapter, tiny_artifacts["emb"], "--out", tmp_path / "a.npz",
                   match="adapter.safetensors does not match the sha256")


@pytest.mark.parametrize(("field", "value", "match"), [
    ("kind", "index", "is an mrl 'index' artifact, not adapter"),
    ("format_version", 2, "format version 2; this mrl reads version 1"),
    ("format_version", "1", "format version '1'"),
    ("files", [], "malformed"),
])
def test_edited_manifest_fields_are_refused(tmp_path, tiny_artifacts, field, value, match):
    adapter = copy(tiny_artifacts["adapter"], tmp_path / "adapter")
    record = json.loads((adapter / "manifest.json").read_text())
    record[field] = value
    (adapter / "manifest.json").write_text(json.dumps(record))
    assert_refused(tmp_path, "adapt", "apply", adapter, tiny_artifacts["emb"], "--out", tmp_path / "a.npz", match=match)


def test_lm_weights_and_adaptive_thresholds_are_verified(tmp_path):
    from hostile import invoke

    corpus = tmp_path / "c.txt"
    corpus.write_text("\n\n".join(f"the {w} sat on the mat and the {w} ran" for w in ("cat", "dog", "fox") * 20))
    run = tmp_path / "lm"
    code, output = invoke("lm", "train", "--corpus", corpus, "--out", run, "--vocab-size", "64", "--d-model", "16",
                          "--layers", "1", "--n-heads", "2", "--context", "8", "--nesting", "8,16", "--steps", "2",
                          "--batch-size", "4", "--quiet")
    assert code == 0, output
    assert invoke("lm", "eval", run, "--quiet")[0] == 0
    thresholds = json.loads((run / "adaptive.json").read_text())
    thresholds["thresholds"] = [0.0]
    (run / "adaptive.json").write_text(json.dumps(thresholds))
    assert_refused(tmp_path, "lm", "generate", run, "--adaptive", "--max-new-tokens", "2",
                   match="adaptive.json does not match the sha256")
    _flip_last_byte(run / "model.safetensors")
    assert_refused(tmp_path, "lm", "generate", run, "--max-new-tokens", "2", match="model.safetensors does not match")
