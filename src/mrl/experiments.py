"""Run-or-reuse: the building block of commands that train several runs (demo, compare).

A finished run (all epochs done, eval.json recorded for its current checkpoint) is reused; a run that
was interrupted resumes from its last checkpoint; a new one is trained. So re-running such a
command after a crash redoes only what was lost.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path

from mrl.config import TrainConfig
from mrl.data import Dataset
from mrl.errors import MRLError
from mrl.evaluation import evaluate_run
from mrl.artifacts import LOCK_FILE, MANIFEST, check_overlap, kind_of, lock, read_manifest, write_manifest
from mrl.runs import EVAL_FILE, is_run_dir, load_config, read_eval, read_run, read_state
from mrl.training import train

KIND = "experiment"


def check_folder(out: str | Path, command: str, inputs: Sequence[str | Path | None] = ()) -> Path:
    """Check, without writing, that ``out`` may be (or already is) the folder of ``mrl COMMAND``."""
    out = Path(out)
    check_overlap(out, [p for p in inputs if p is not None and Path(p).exists()])
    if kind_of(out) == KIND:
        owner = read_manifest(out, KIND, verify=[]).meta.get("command")
        if owner != command:
            raise MRLError(f"{out} holds the results of `mrl {owner}`, not `mrl {command}`; choose another --out")
    elif out.exists() and (not out.is_dir() or any(p.name != LOCK_FILE for p in out.iterdir())):
        raise MRLError(f"{out} exists and is not an `mrl {command}` folder; choose another --out")
    return out


@contextlib.contextmanager
def claim_folder(out: str | Path, command: str, inputs: Sequence[str | Path | None] = ()) -> Iterator[Path]:
    """Hold ``out`` as the folder of one multi-run command (an ``experiment`` artifact) while the block runs.

    An existing folder that another command (or no command) made is refused, so pointing ``--out``
    at the wrong place never writes runs into it, nor may it overlap ``inputs`` (data set paths). The folder is locked for the block; when it ends
    without error, the manifest records the sha256 of every top-level result file.
    """
    out = check_folder(out, command, inputs)
    with lock(out):
        write_manifest(out, KIND, [], meta={"command": command})
        yield out
        results = sorted(p.name for p in out.iterdir() if p.name not in (MANIFEST, LOCK_FILE)
                         and not p.name.startswith(".") and p.is_file() and not p.is_symlink())
        write_manifest(out, KIND, results, meta={"command": command})


def run_status(run_dir: Path, config: TrainConfig) -> str:
    """``new``, ``partial`` (resumable), ``trained`` (not evaluated) or ``done``."""
    if not is_run_dir(run_dir):
        if run_dir.exists() and any(run_dir.iterdir()):
            raise MRLError(f"{run_dir} exists but is not a run directory; move it away")
        return "new"
    saved = load_config(run_dir)
    if saved.to_dict() != config.to_dict():
        changed = sorted(k for k, v in saved.to_dict().items() if config.to_dict()[k] != v)
        raise MRLError(f"{run_dir} holds a run with other settings ({', '.join(changed)}); use another --out")
    state = read_state(run_dir)
    if state is None or state.epochs_done < config.epochs:
        return "partial"
    # A checkpoint commit drops the eval outputs from the manifest, so a listed eval.json is current.
    return "done" if EVAL_FILE in read_run(run_dir, verify=[]).files else "trained"


def run_or_reuse(
    config: TrainConfig, run_dir: str | Path, data: Dataset | None = None, progress: bool = True,
    save_logits: bool = False,
) -> dict:
    """Make sure ``run_dir`` holds a trained and evaluated run of ``config``; return its eval.json."""
    run_dir = Path(run_dir)
    status = run_status(run_dir, config)
    if status in ("new", "partial"):
        train(config, run_dir, resume=status == "partial", progress=progress, data=data)
        status = "trained"
    if status == "trained" or (save_logits and "logits_test.npy" not in read_run(run_dir, verify=[]).files):
        return evaluate_run(run_dir, save_logits=save_logits, progress=progress, data=data)
    return read_eval(run_dir)
