"""The training run directory: its files, typed reads, the per-epoch checkpointer and eval outputs.

One run is one :mod:`mrl.artifacts` artifact of kind ``training-run``:

    RUN_DIR/manifest.json          sha256 of config.json (and of the eval outputs once written) and,
                                   in its meta, the state of the last complete checkpoint
    RUN_DIR/config.json            TrainConfig (written first)
    RUN_DIR/classes.json           class names of a streamed image folder (label i = name i)
    RUN_DIR/metrics.jsonl          a log: one line per epoch (loss, val top-1 per size)
    RUN_DIR/checkpoints/model-NNNN.safetensors, optim-NNNN.safetensors
    RUN_DIR/eval.json, logits_{val,test}.npy, labels_{val,test}.npy    (``mrl eval``)

Checkpoint file names are derived from the epoch number by this module, never read from a file,
and their sha256 live in the manifest. Rewriting the manifest is the single atomic step that
commits a checkpoint, so a run killed at any moment resumes from its last complete epoch; files
the commit made obsolete (older checkpoints, eval outputs of older weights, temp files of a killed
write) are removed afterwards or on the next start.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import stat
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mrl.artifacts import LOCK_FILE, Manifest, check_overlap, check_writable, kind_of, read_made_by, write_manifest
from mrl.config import TrainConfig
from mrl.errors import MRLError
from mrl.io import load_tensors, read_json, save_npy, save_tensors, sha256_file, write_json
from mrl.validation import check_int

KIND = "training-run"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
CLASSES_FILE = "classes.json"
METRICS_FILE = "metrics.jsonl"
EVAL_FILE = "eval.json"
CHECKPOINT_DIR = "checkpoints"
EVAL_OUTPUTS = (
    "eval.json", "logits_val.npy", "logits_test.npy", "labels_val.npy", "labels_test.npy",
    "logits_widths_val.npy", "logits_widths_test.npy",  # nested-width runs: [W, G, N, C]
)
_SHA256 = re.compile(r"[0-9a-f]{64}")
_STALE_TMP = re.compile(r"\..+\.tmp")  # io.atomic_file's temp names: ".NAME.RANDOM.tmp"


def _finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class TrainState:
    """The last complete checkpoint of a run, as recorded in its manifest."""

    epochs_done: int
    step: int
    model_sha256: str
    optimizer_sha256: str
    optimizer_groups: list[dict]
    # fp16 loss-scaler state (scale, growth tracker, ...); None without fp16. Exact resume needs it:
    # a scaler restarted at its initial scale skips different steps than the uninterrupted run.
    scaler: dict | None = None

    @classmethod
    def from_dict(cls, values: Any, where: str) -> TrainState:
        """Typed read of the manifest's ``state``; anything malformed is one MRLError naming ``where``."""
        fields = set(cls.__dataclass_fields__)
        if not isinstance(values, Mapping) or set(values) not in (fields, fields - {"scaler"}):
            raise MRLError(f"{where} holds no valid training state (expected keys {sorted(fields)})")
        for key in ("model_sha256", "optimizer_sha256"):
            if not isinstance(values[key], str) or not _SHA256.fullmatch(values[key]):
                raise MRLError(f"{where}: {key} must be a sha256 hex digest, got {values[key]!r}")
        groups = values["optimizer_groups"]
        if not isinstance(groups, list) or not all(isinstance(g, dict) for g in groups):
            raise MRLError(f"{where}: optimizer_groups must be a list of objects")
        for group in groups:  # torch's param_groups: numbers (lr, eps, ...), flags, None, lists of numbers (betas, params)
            for key, value in group.items():
                if not (value is None or isinstance(value, bool) or _finite_number(value)
                        or (isinstance(value, list) and all(_finite_number(v) for v in value))):
                    raise MRLError(f"{where}: optimizer_groups value {key!r} must be a finite number, a flag, null or a list "
                                   f"of finite numbers, got {value!r}")
        scaler = values.get("scaler")
        if scaler is not None and not (
            isinstance(scaler, dict) and scaler
            and all(_finite_number(v) and v >= 0 for v in scaler.values())
        ):
            raise MRLError(f"{where}: scaler must be an object of finite non-negative numbers, got {scaler!r}")
        return cls(check_int(f"{where}: epochs_done", values["epochs_done"], min=1, max=1 << 31),
                   check_int(f"{where}: step", values["step"], min=0, max=1 << 53),
                   values["model_sha256"], values["optimizer_sha256"], groups, scaler)


def is_run_dir(path: str | os.PathLike) -> bool:
    """True if ``path`` holds a training run's manifest."""
    return kind_of(path) == KIND


def read_run(run_dir: str | os.PathLike, verify: list[str] | None = None) -> Manifest:
    """The verified manifest of a training run (every listed file by default)."""
    return read_made_by(run_dir, KIND, FORMAT_VERSION, "mrl train", "run directory", "a run directory of `mrl train`",
                        verify=verify)


def load_config(run_dir: str | os.PathLike) -> TrainConfig:
    """The verified TrainConfig of a run."""
    read_run(run_dir, verify=[CONFIG_FILE])
    return TrainConfig.load(Path(run_dir) / CONFIG_FILE)


def read_state(run_dir: str | os.PathLike) -> TrainState | None:
    """The run's last complete checkpoint, or None before its first epoch ends."""
    state = read_run(run_dir, verify=[]).meta.get("state")
    return None if state is None else TrainState.from_dict(state, f"{Path(run_dir) / 'manifest.json'}")


def _checkpoint_dir(run_dir: Path, create: bool = False) -> Path:
    """RUN_DIR/checkpoints, refused if it is a symlink (files are deleted in it)."""
    folder = run_dir / CHECKPOINT_DIR
    if create:
        folder.mkdir(exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        if not stat.S_ISDIR(os.lstat(folder).st_mode):
            raise MRLError(f"{folder} is not a plain folder (a symlink?); refusing to use it")
    return folder


def checkpoint_paths(run_dir: str | os.PathLike, epoch: int) -> tuple[Path, Path]:
    """Model and optimizer files of ``epoch``; names fixed here, never read from a file."""
    folder = _checkpoint_dir(Path(run_dir))
    return folder / f"model-{epoch:04d}.safetensors", folder / f"optim-{epoch:04d}.safetensors"


def _verified_tensors(path: Path, sha256: str) -> dict[str, torch.Tensor]:
    if os.path.islink(path):
        raise MRLError(f"{path} is a symlink; refusing to load it")
    tensors = load_tensors(path)  # refuses pickles and other formats before anything else
    if sha256_file(path) != sha256:
        raise MRLError(f"{path} does not match the checksum in its manifest; the checkpoint is corrupt")
    return tensors


def load_weights(model: nn.Module, run_dir: str | os.PathLike) -> TrainState:
    """Load the last complete checkpoint of ``run_dir`` into ``model``; returns its state."""
    run_dir = Path(run_dir)
    state = read_state(run_dir)
    if state is None:
        raise MRLError(f"{run_dir} has no finished epoch yet; train it first")
    path = checkpoint_paths(run_dir, state.epochs_done)[0]
    tensors = _verified_tensors(path, state.model_sha256)
    expected = model.state_dict()
    if set(tensors) != set(expected) or any(tensors[k].shape != expected[k].shape for k in expected):
        raise MRLError(f"{path} does not fit this model (its tensors differ in names or shapes)")
    model.load_state_dict(tensors)
    return state


def _settings_files(run_dir: Path) -> list[str]:
    """The files fixed when a run starts: config.json, and classes.json for a streamed folder."""
    return [CONFIG_FILE, *([CLASSES_FILE] if CLASSES_FILE in read_run(run_dir, verify=[]).files else [])]


def start_run(run_dir: str | os.PathLike, config: TrainConfig, classes: list[str] | None = None) -> None:
    """Write config.json (and classes.json) and a manifest with no checkpoint yet (a fresh run)."""
    run_dir = Path(run_dir)
    config.save(run_dir / CONFIG_FILE)
    files = [CONFIG_FILE]
    if classes is not None:
        write_json(run_dir / CLASSES_FILE, list(classes))
        files.append(CLASSES_FILE)
    write_manifest(run_dir, KIND, files, FORMAT_VERSION, meta={"state": None})


def read_classes(run_dir: str | os.PathLike) -> list[str] | None:
    """The verified class names of a run on a streamed image folder; None for other data."""
    if CLASSES_FILE not in read_run(run_dir, verify=[]).files:
        return None
    read_run(run_dir, verify=[CLASSES_FILE])
    classes = read_json(Path(run_dir) / CLASSES_FILE)
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
        raise MRLError(f"{Path(run_dir) / CLASSES_FILE} must hold a list of class names")
    return classes


def clean_stale(run_dir: str | os.PathLike) -> None:
    """Remove what a killed writer left: temp files, checkpoints and eval outputs the manifest does not hold.

    Call only while holding the run's lock.
    """
    run_dir = Path(run_dir)
    manifest = read_run(run_dir, verify=[])
    state = read_state(run_dir)
    current = checkpoint_paths(run_dir, state.epochs_done) if state is not None else ()
    keep = set(current)
    # Nothing is removed unless the checkpoint the manifest names is really there: a crafted or
    # damaged state must not make older files look orphaned.
    for path, digest in zip(current, (state.model_sha256, state.optimizer_sha256) if state else ()):
        if path.is_symlink() or not path.is_file() or sha256_file(path) != digest:
            raise MRLError(f"{path} is missing or does not match the checksum in its manifest; the checkpoint is corrupt")
    folder = _checkpoint_dir(run_dir)
    candidates = [p for p in folder.iterdir() if p.name.endswith((".safetensors", ".tmp"))] if folder.is_dir() else []
    candidates += [run_dir / n for n in EVAL_OUTPUTS if n not in manifest.files]
    candidates += [p for p in run_dir.iterdir() if _STALE_TMP.fullmatch(p.name)]
    for path in candidates:
        if path not in keep and (path.is_symlink() or path.is_file()):
            path.unlink()


def save_checkpoint(
    run_dir: str | os.PathLike, model: nn.Module, optimizer: torch.optim.Optimizer, epoch: int, step: int,
    scaler: dict | None = None,
) -> None:
    """Write model and optimizer of a finished epoch, commit them in the manifest, drop what is obsolete.

    ``scaler`` is an fp16 GradScaler's ``state_dict()``, kept in the manifest for exact resume. The
    eval outputs of older weights leave the manifest with the same commit.
    """
    from mrl.training import optimizer_tensors

    run_dir = Path(run_dir)
    _checkpoint_dir(run_dir, create=True)
    model_path, optim_path = checkpoint_paths(run_dir, epoch)
    save_tensors(model_path, model.state_dict())
    save_tensors(optim_path, optimizer_tensors(optimizer))
    state = TrainState(epoch, step, sha256_file(model_path), sha256_file(optim_path),
                       optimizer.state_dict()["param_groups"], scaler)
    write_manifest(run_dir, KIND, _settings_files(run_dir), FORMAT_VERSION, meta={"state": asdict(state)})
    clean_stale(run_dir)


def restore_checkpoint(
    model: nn.Module, optimizer: torch.optim.Optimizer, run_dir: str | os.PathLike,
    scaler: torch.amp.GradScaler | None = None,
) -> tuple[int, int]:
    """Load the last complete checkpoint into ``model``, ``optimizer`` and an fp16 ``scaler``.

    Returns (epochs done, step); a run with no finished epoch yet starts from (0, 0).
    """
    from mrl.training import load_optimizer_tensors

    state = read_state(run_dir)
    if state is None:
        return 0, 0
    load_weights(model, run_dir)
    tensors = _verified_tensors(checkpoint_paths(run_dir, state.epochs_done)[1], state.optimizer_sha256)
    try:
        load_optimizer_tensors(optimizer, tensors, param_groups=state.optimizer_groups)
    except (KeyError, ValueError, RuntimeError) as exc:
        raise MRLError(f"the optimizer state of {run_dir} does not fit this model ({exc})") from None
    if scaler is not None and state.scaler is not None:
        scaler.load_state_dict(state.scaler)
    return state.epochs_done, state.step


def check_new_run(config: TrainConfig, out: str | os.PathLike, resume: bool) -> Path:
    """Check that ``out`` may hold this run: an empty or missing folder, or with ``resume`` the same run."""
    out = Path(out)
    if resume:
        if not is_run_dir(out):
            raise MRLError(f"cannot resume: {out} is not a run directory of `mrl train`")
        saved = load_config(out)
        if saved.to_dict() != config.to_dict():
            diff = {k: (v, config.to_dict()[k]) for k, v in saved.to_dict().items() if config.to_dict()[k] != v}
            raise MRLError(f"cannot resume {out}: its config differs in {sorted(diff)} (saved vs given: {diff})")
        return out
    # A data set given as a path (or its IDX folder) is an input the run must not land in.
    check_overlap(out, [p for p in (config.data, config.data_dir) if p is not None and Path(p).exists()])
    if out.exists() and (not out.is_dir() or any(p.name != LOCK_FILE for p in out.iterdir())):
        raise MRLError(f"{out} already exists; pass --resume to continue that run or choose another --out")
    return check_writable(out)


def save_eval(run_dir: str | os.PathLike, result: Mapping[str, Any], arrays: Mapping[str, np.ndarray] | None = None) -> None:
    """Write eval.json (and ``arrays`` such as logits_test.npy) and record them in the manifest.

    The old outputs leave the manifest first, so a write killed half-way leaves no file that a
    reader would trust. Call while holding the run's lock.
    """
    run_dir = Path(run_dir)
    names = [EVAL_FILE, *(arrays or {})]
    for name in names:
        if name not in EVAL_OUTPUTS:
            raise MRLError(f"{name!r} is not an eval output of a run; known: {', '.join(EVAL_OUTPUTS)}")
    manifest = read_run(run_dir)
    kept = [n for n in manifest.files if n not in EVAL_OUTPUTS]
    write_manifest(run_dir, KIND, kept, FORMAT_VERSION, meta=manifest.meta)
    for name, array in (arrays or {}).items():
        save_npy(run_dir / name, array)
    write_json(run_dir / EVAL_FILE, dict(result))
    write_manifest(run_dir, KIND, kept + names, FORMAT_VERSION, meta=manifest.meta)


def _series(values: Any, key: str, where: Path) -> dict[str, float]:
    if not isinstance(values, Mapping) or not values:
        raise MRLError(f"{where}: {key!r} must be a non-empty object of size -> accuracy")
    for size, value in values.items():
        if not (isinstance(size, str) and size.isdigit()) or isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not 0.0 <= value <= 1.0:
            raise MRLError(f"{where}: {key!r} maps sizes to accuracies in [0, 1], got {size!r}: {value!r}")
    return dict(values)


def check_eval(result: Any, where: Path) -> dict:
    """Typed check of an eval.json record: ``top1`` and ``knn1`` (and any ``top5``, ``val_top1``) series."""
    if not isinstance(result, Mapping):
        raise MRLError(f"{where} must hold a JSON object")
    for key in ("top1", "knn1"):
        if key not in result:
            raise MRLError(f"{where} has no {key!r} accuracies")
    for key in ("top1", "knn1", "top5", "val_top1"):
        if key in result:
            _series(result[key], key, where)
    return dict(result)


def read_eval(run_dir: str | os.PathLike) -> dict:
    """The verified, type-checked eval.json of a run."""
    run_dir = Path(run_dir)
    manifest = read_run(run_dir, verify=[])
    if EVAL_FILE not in manifest.files:
        raise MRLError(f"{run_dir} has no evaluation of its current weights; run `mrl eval {run_dir}` first")
    read_run(run_dir, verify=[EVAL_FILE])
    return check_eval(read_json(run_dir / EVAL_FILE), run_dir / EVAL_FILE)
