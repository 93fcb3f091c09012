"""Class 6 of the hardening issue: a read-only or full output folder gives one ``Error:`` line naming
the path, for every writing command, and leaves the folder as it was.

The machine's tests may run as root, for whom permission bits do not apply, so a read-only file
system (EROFS) and a full disk (ENOSPC) are injected where mrl creates its files: the temp file of
every atomic write and the temp folder of every whole-artifact write."""

from __future__ import annotations

import errno
import os
import tempfile

import pytest
from hostile import TINY, assert_refused, copy


@pytest.fixture(params=[errno.EROFS, errno.ENOSPC], ids=["read-only", "full"])
def broken_disk(request, monkeypatch):
    code = request.param

    def refuse(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    monkeypatch.setattr(tempfile, "mkdtemp", refuse)
    return os.strerror(code)


def test_every_writer_names_the_path(tmp_path, tiny_artifacts, broken_disk):
    run = copy(tiny_artifacts["run"], tmp_path / "run")
    emb = tmp_path / "emb.npz"
    emb.write_bytes(tiny_artifacts["emb"].read_bytes())
    index = copy(tiny_artifacts["index"], tmp_path / "index")
    adapter = copy(tiny_artifacts["adapter"], tmp_path / "adapter")
    cases = [
        (["train", "--data", tiny_artifacts["data"], *TINY, "--out", tmp_path / "new"], "new/config.json"),
        (["eval", run, "--quiet"], "run/manifest.json"),
        (["embed", run, "--out", tmp_path / "e.npz", "--quiet"], "e.npz"),
        (["index", "build", emb, "--out", tmp_path / "ix", "--quiet"], "ix"),
        (["index", "tune", index, emb, "--max-queries", "5"], "index"),
        (["index", "search", index, emb, "--out", tmp_path / "s.npz"], "s.npz"),
        (["adapt", "fit", emb, "--out", tmp_path / "ad", "--nesting", "8,16", "--epochs", "1", "--neighbours", "2",
          "--quiet"], "ad"),
        (["adapt", "apply", adapter, emb, "--out", tmp_path / "a.npz"], "a.npz"),
        (["adaptive", run, "--seeds", "2", "--n-quantiles", "5", "--out", tmp_path / "ada", "--quiet"], "ada"),
    ]
    for args, name in cases:
        output = assert_refused(tmp_path, *args, match=f"cannot write {tmp_path}/{name}")
        assert broken_disk in output


def test_unwritable_parent_is_refused_before_any_work(tmp_path, tiny_artifacts, monkeypatch):
    parent = tmp_path / "locked"
    parent.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if str(p) == str(parent) else real_access(p, mode, **kw))
    assert_refused(tmp_path, "train", "--data", tiny_artifacts["data"], *TINY, "--out", parent / "run",
                   match=f"cannot write to {parent}/run: {parent} is not a writable folder")
    assert_refused(tmp_path, "index", "build", tiny_artifacts["emb"], "--out", parent / "ix",
                   match=f"{parent} is not a writable folder")
