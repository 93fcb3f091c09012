import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from mrl.errors import MRLError
from mrl.io import (
    append_jsonl,
    atomic_directory,
    atomic_write_text,
    load_npy,
    load_npz,
    load_tensors,
    read_json,
    read_jsonl,
    save_npy,
    save_npz,
    save_tensors,
    write_json,
)


def test_atomic_write_replaces_and_leaves_no_temp(tmp_path):
    path = tmp_path / "a.json"
    write_json(path, {"x": 1})
    write_json(path, {"x": 2})
    assert read_json(path) == {"x": 2}
    assert os.listdir(tmp_path) == ["a.json"]


def test_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "a.npy"
    save_npy(path, np.arange(3))
    with pytest.raises(MRLError, match="object array"):
        save_npy(path, np.array([{"a": 1}], dtype=object))
    assert load_npy(path).tolist() == [0, 1, 2]
    assert os.listdir(tmp_path) == ["a.npy"]


def test_tensors_round_trip_and_pickles_refused(tmp_path):
    tensors = {"w": torch.randn(3, 4), "step": torch.tensor(7)}
    save_tensors(tmp_path / "t.safetensors", tensors)
    loaded = load_tensors(tmp_path / "t.safetensors")
    assert torch.equal(loaded["w"], tensors["w"]) and loaded["step"].item() == 7
    (tmp_path / "p.safetensors").write_bytes(pickle.dumps(tensors))
    with pytest.raises(MRLError, match="pickle or torch.save file, not safetensors; refusing"):
        load_tensors(tmp_path / "p.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"hello world, not tensors")
    with pytest.raises(MRLError, match="not a valid safetensors file"):
        load_tensors(tmp_path / "junk.safetensors")


def test_npy_and_npz_never_unpickle(tmp_path):
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(MRLError, match="not a plain .npy array"):
        load_npy(tmp_path / "obj.npy")
    save_npz(tmp_path / "ok.npz", X=np.ones((2, 3), np.float32), y=np.arange(2))
    assert load_npz(tmp_path / "ok.npz", required=("X", "y"))["X"].shape == (2, 3)
    with pytest.raises(MRLError, match=r"lacks array\(s\) \['Z'\]"):
        load_npz(tmp_path / "ok.npz", required=("Z",))
    (tmp_path / "bad.npz").write_bytes(b"PK\x03\x04garbage")
    with pytest.raises(MRLError, match="not a readable .npz"):
        load_npz(tmp_path / "bad.npz")


def test_atomic_directory_success_and_failure(tmp_path):
    target = tmp_path / "out"
    with atomic_directory(target) as tmp:
        atomic_write_text(tmp / "a.txt", "one")
    assert (target / "a.txt").read_text() == "one"
    with pytest.raises(MRLError, match="already exists"):
        with atomic_directory(target):
            pass
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_directory(target, overwrite=True) as tmp:
            atomic_write_text(tmp / "a.txt", "two")
            raise RuntimeError("boom")
    assert (target / "a.txt").read_text() == "one"  # the failed rebuild changed nothing
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    with atomic_directory(target, overwrite=True) as tmp:
        atomic_write_text(tmp / "b.txt", "two")
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]


def test_reading_the_umask_never_changes_it(monkeypatch):
    """Setting the umask to read it would give 022 to a file another thread creates meanwhile."""
    import mrl.io

    old = os.umask(0o077)
    try:
        real_umask, set_to = os.umask, []

        def recording_umask(mask):
            set_to.append(mask)
            return real_umask(mask)

        monkeypatch.setattr(mrl.io.os, "umask", recording_umask)
        assert mrl.io.current_umask() == 0o077
        assert all(mask == 0o077 for mask in set_to), f"the umask passed through {[oct(m) for m in set_to]}"
        # Without /proc the fallback still reads it right and leaves it as it was.
        monkeypatch.setattr(mrl.io, "_PROC_STATUS", "/nonexistent/status")
        assert mrl.io.current_umask() == 0o077
        assert real_umask(0o077) == 0o077
    finally:
        os.umask(old)


def test_only_write_errors_are_reported_as_cannot_write(tmp_path):
    import errno

    from mrl.io import atomic_file

    target = tmp_path / "out.bin"
    with pytest.raises(FileNotFoundError, match="input.npy"):  # the caller's own error, unchanged
        with atomic_file(target):
            open(tmp_path / "input.npy", "rb")
    with pytest.raises(MRLError, match=f"^cannot write {target}: No space left on device$"):
        with atomic_file(target) as tmp, open(tmp, "wb") as f:
            f.write(b"x")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    with pytest.raises(MRLError, match=f"^cannot write {target}: Permission denied$"):
        with atomic_file(target) as tmp:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(tmp))  # as open(tmp, "wb") raises it
    assert os.listdir(tmp_path) == []  # no output, no temp file


def test_a_killed_writers_temp_files_are_removed_by_the_next_write(tmp_path):
    """mrl embed --out x.npz killed with -9 leaves .x.npz.XXXXXXXX.tmp; the next write of x.npz removes it,
    but never the temp file of a writer still running, nor files that are not x.npz's temp files."""
    import signal
    import subprocess
    import sys

    target = tmp_path / "x.npz"
    script = ("import sys, time; from mrl.io import atomic_file\n"
              "with atomic_file(sys.argv[1]) as tmp:\n"
              "    tmp.write_bytes(b'half'); print(tmp, flush=True); time.sleep(60)\n")
    writer = subprocess.Popen([sys.executable, "-c", script, str(target)], stdout=subprocess.PIPE, text=True)
    try:
        live = Path(writer.stdout.readline().strip())
        assert live.exists() and live.parent == tmp_path
        others = [tmp_path / ".x.npz.notes", tmp_path / ".y.npz.abcd1234.tmp", tmp_path / "x.npz.abcd1234.tmp"]
        for path in others:
            path.write_text("not x.npz's temp file")
        save_npz(target, a=np.arange(3))
        assert live.exists(), "a running writer's temp file was removed"
        writer.send_signal(signal.SIGKILL)
        writer.wait()
        save_npz(target, a=np.arange(4))
        assert not live.exists()
        assert load_npz(target)["a"].tolist() == [0, 1, 2, 3]
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["x.npz", *(p.name for p in others)])
    finally:
        writer.kill()
        writer.wait()


def test_append_jsonl_appends_in_place_and_cuts_a_torn_last_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    append_jsonl(path, {"step": 1})
    inode = path.stat().st_ino
    append_jsonl(path, {"step": 2})
    assert path.stat().st_ino == inode  # appended, not rewritten through a temp file
    with open(path, "ab") as f:
        f.write(b'{"step": 3, "lo')  # a writer killed mid-line
    assert read_jsonl(path) == [{"step": 1}, {"step": 2}]
    append_jsonl(path, {"step": 3})
    assert path.read_bytes() == b'{"step": 1}\n{"step": 2}\n{"step": 3}\n'


def test_append_jsonl_cuts_a_torn_line_longer_than_its_read_chunk(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(b'{"a": 1}\n' + b"x" * 200_000)
    append_jsonl(path, {"a": 2})
    assert read_jsonl(path) == [{"a": 1}, {"a": 2}]
    path.write_bytes(b"y" * 100)  # no complete line at all
    append_jsonl(path, {"a": 3})
    assert path.read_bytes() == b'{"a": 3}\n'


def test_append_jsonl_does_not_follow_a_symlink(tmp_path):
    target = tmp_path / "elsewhere.txt"
    target.write_text("keep\n")
    (tmp_path / "metrics.jsonl").symlink_to(target)
    with pytest.raises(MRLError, match="cannot write"):
        append_jsonl(tmp_path / "metrics.jsonl", {"step": 1})
    assert target.read_text() == "keep\n"


def test_read_jsonl_names_a_bad_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"a": 1}\nnot json\n{"a": 2}\n')
    with pytest.raises(MRLError, match=r"metrics.jsonl, line 2 is not valid JSON"):
        read_jsonl(path)
    path.write_bytes(b'{"a": 1}\n\xff\n')
    with pytest.raises(MRLError, match="is not UTF-8 text"):
        read_jsonl(path)
