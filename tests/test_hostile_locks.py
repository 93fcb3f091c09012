"""Class 3 of the hardening issue: one writer per artifact. While another process holds a folder's
lock, every writing command fails at once with one line naming that process, and changes nothing."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from contextlib import contextmanager

from hostile import TINY, assert_refused, copy, invoke


@contextmanager
def held(folder):
    """Another process holding ``folder``'s lock as mrl.artifacts.lock does (flock on .lock, pid
    inside), without importing mrl so that it starts in milliseconds; yields its pid."""
    code = textwrap.dedent(f"""
        import fcntl, os, sys
        os.makedirs({str(folder)!r}, exist_ok=True)
        fd = os.open(os.path.join({str(folder)!r}, ".lock"), os.O_RDWR | os.O_CREAT, 0o666)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        print("locked", flush=True)
        sys.stdin.readline()
    """)
    proc = subprocess.Popen([sys.executable, "-S", "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        yield proc.pid
    finally:
        proc.kill()
        proc.wait()


def test_every_writer_of_a_locked_run_fails_at_once(tmp_path, tiny_artifacts):
    run = copy(tiny_artifacts["run"], tmp_path / "run")
    with held(run) as pid:
        message = f"is being written by another mrl process (pid {pid})"
        assert_refused(tmp_path, "train", "--data", tiny_artifacts["data"], *TINY, "--out", run, "--resume", match=message)
        assert_refused(tmp_path, "eval", run, "--quiet", match=message)
    assert invoke("eval", run, "--quiet")[0] == 0  # released when the holder died


def test_fresh_train_into_a_folder_being_created_fails_at_once(tmp_path, tiny_artifacts):
    with held(tmp_path / "new") as pid:
        assert_refused(tmp_path, "train", "--data", tiny_artifacts["data"], *TINY, "--out", tmp_path / "new",
                       match=f"pid {pid}")


def test_index_adapter_and_experiment_writers(tmp_path, tiny_artifacts):
    index = copy(tiny_artifacts["index"], tmp_path / "index")
    adapter = copy(tiny_artifacts["adapter"], tmp_path / "adapter")
    run = copy(tiny_artifacts["run"], tmp_path / "run")
    emb = tmp_path / "emb.npz"
    emb.write_bytes(tiny_artifacts["emb"].read_bytes())
    assert invoke("adaptive", run, "--seeds", "2", "--n-quantiles", "5", "--quiet", "--out", tmp_path / "ada")[0] == 0
    with held(index) as pid:
        assert_refused(tmp_path, "index", "build", emb, "--out", index, "--overwrite", "--quiet", match=f"pid {pid}")
        assert_refused(tmp_path, "index", "tune", index, emb, "--max-queries", "5", match=f"pid {pid}")
    with held(adapter) as pid:
        assert_refused(tmp_path, "adapt", "fit", emb, "--out", adapter, "--overwrite", "--nesting", "8,16",
                       "--epochs", "1", "--neighbours", "2", "--quiet", match=f"pid {pid}")
    with held(tmp_path / "ada") as pid:
        assert_refused(tmp_path, "adaptive", run, "--seeds", "2", "--n-quantiles", "5", "--quiet", "--overwrite",
                       "--out", tmp_path / "ada", match=f"pid {pid}")
    with held(tmp_path / "cmp") as pid:
        assert_refused(tmp_path, "compare", "--data", tiny_artifacts["data"], "--out", tmp_path / "cmp",
                       "--methods", "mrl", "--arch", "mlp", "--rep-dim", "16", "--nesting", "8,16", "--epochs", "1",
                       "--seeds", "1", "--quiet", match=f"pid {pid}")


def test_lm_writers(tmp_path):
    from mrl.lm import LMConfig, TrainConfig, prepare_run

    corpus = tmp_path / "c.txt"
    corpus.write_text("\n\n".join(f"the {w} sat on the mat and the {w} ran" for w in ("cat", "dog", "fox") * 20))
    run = tmp_path / "lm"
    prepare_run(run, str(corpus), LMConfig(vocab_size=64, context=8, d_model=16, n_layers=1, n_heads=2, nesting=[8, 16]),
                TrainConfig(steps=2, batch_size=4, warmup_steps=1))
    with held(run) as pid:
        assert_refused(tmp_path, "lm", "train", "--out", run, "--resume", "--quiet", match=f"pid {pid}")
    assert invoke("lm", "train", "--out", run, "--resume", "--quiet")[0] == 0
    with held(run) as pid:
        assert_refused(tmp_path, "lm", "eval", run, "--quiet", match=f"pid {pid}")
