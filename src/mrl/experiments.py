"""Run-or-reuse: the building block of commands that train several runs (demo, compare).

A finished run (all epochs done, eval.json written for the same checkpoint) is reused; a run that
was interrupted resumes from its last checkpoint; a new one is trained. So re-running such a
command after a crash redoes only what was lost.
"""

from __future__ import annotations

from pathlib import Path

from mrl.config import TrainConfig
from mrl.data import Dataset
from mrl.errors import MRLError
from mrl.evaluation import EVAL_FILE, evaluate_run
from mrl.io import read_json, write_json
from mrl.training import is_run_dir, load_config, read_state, train


FOLDER_FILE = "experiment.json"


def claim_folder(out: str | Path, command: str) -> Path:
    """Make ``out`` the folder of one multi-run command, or check that it already is.

    An existing, non-empty folder that another command (or no command) made is refused, so
    pointing ``--out`` at the wrong place never writes runs into it.
    """
    out = Path(out)
    marker = out / FOLDER_FILE
    if marker.is_file():
        owner = read_json(marker)
        if not isinstance(owner, dict) or owner.get("command") != command:
            raise MRLError(f"{out} holds the results of another command ({owner}); choose another --out")
        return out
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise MRLError(f"{out} exists and is not an `mrl {command}` folder; choose another --out")
    write_json(marker, {"command": command})
    return out


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
    if state is None or state["epochs_done"] < config.epochs:
        return "partial"
    evaluation = run_dir / EVAL_FILE
    if evaluation.exists() and evaluation.stat().st_mtime >= (run_dir / "state.json").stat().st_mtime:
        return "done"
    return "trained"


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
    if status == "trained" or (save_logits and not (run_dir / "logits_test.npy").exists()):
        return evaluate_run(run_dir, save_logits=save_logits, progress=progress, data=data)
    return read_json(run_dir / EVAL_FILE)
