"""mrl.artifacts: manifests, plain names, locks and overwrite rules, against hashlib and real processes."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap

import pytest

from mrl.artifacts import (
    KINDS, LOCK_FILE, MANIFEST, Manifest, kind_of, lock, prepare_output, read_manifest, safe_name, write_manifest,
)
from mrl.errors import MRLError


def _artifact(tmp_path, kind="adapter"):
    folder = tmp_path / "art"
    folder.mkdir()
    (folder / "a.bin").write_bytes(b"\x00\x01weights")
    (folder / "b.json").write_text('{"x": 1}')
    write_manifest(folder, kind, ["a.bin", "b.json"], meta={"dim": 4})
    return folder


def test_kinds_and_names():
    assert {"training-run", "lm-run", "index", "adapter", "experiment", "text-run"} <= set(KINDS)
    assert MANIFEST == "manifest.json"
    assert safe_name("model.safetensors") == "model.safetensors"
    for bad in ("", ".", "..", "../x", "a/b", "/etc/hostname", "a\\b", "a\x00b", None, 3):
        with pytest.raises(MRLError, match="not a plain file name"):
            safe_name(bad)


def test_manifest_round_trip_matches_hashlib(tmp_path):
    folder = _artifact(tmp_path)
    manifest = read_manifest(folder, "adapter")
    assert manifest == Manifest("adapter", 1, {
        "a.bin": hashlib.sha256(b"\x00\x01weights").hexdigest(),
        "b.json": hashlib.sha256(b'{"x": 1}').hexdigest(),
    }, {"dim": 4})
    assert read_manifest(folder, ("index", "adapter")).kind == "adapter"
    assert kind_of(folder) == "adapter" and kind_of(tmp_path) is None
    assert kind_of(tmp_path / ("a" * 300)) is None and kind_of("bad\x00path") is None  # paths the OS refuses: no manifest


def test_manifest_refuses_other_kind_version_and_changed_files(tmp_path):
    folder = _artifact(tmp_path)
    with pytest.raises(MRLError, match=r"is an mrl 'adapter' artifact, not index"):
        read_manifest(folder, "index")
    with pytest.raises(MRLError, match="format version 1; this mrl reads version 2"):
        read_manifest(folder, "adapter", format_version=2)
    (folder / "b.json").write_text('{"x": 2}')
    with pytest.raises(MRLError, match=r"b.json does not match the sha256"):
        read_manifest(folder, "adapter")
    assert read_manifest(folder, "adapter", verify=["a.bin"]).files.keys() == {"a.bin", "b.json"}
    (folder / "a.bin").unlink()
    with pytest.raises(MRLError, match="missing a.bin"):
        read_manifest(folder, "adapter")


@pytest.mark.parametrize("name", ["../victim.txt", "/etc/hostname", "sub/x"])
def test_manifest_never_follows_names_out_of_the_folder(tmp_path, name):
    folder = _artifact(tmp_path)
    victim = tmp_path / "victim.txt"
    victim.write_text("secret")
    record = json.loads((folder / MANIFEST).read_text())
    record["files"][name] = {"sha256": hashlib.sha256(b"secret").hexdigest()}
    (folder / MANIFEST).write_text(json.dumps(record))
    with pytest.raises(MRLError, match="not a plain file name"):
        read_manifest(folder, "adapter")
    assert victim.read_text() == "secret"


def test_manifest_refuses_symlinks(tmp_path):
    folder = _artifact(tmp_path)
    outside = tmp_path / "outside.bin"
    outside.write_bytes((folder / "a.bin").read_bytes())
    (folder / "a.bin").unlink()
    (folder / "a.bin").symlink_to(outside)
    with pytest.raises(MRLError, match="not a regular file"):
        read_manifest(folder, "adapter")
    with pytest.raises(MRLError, match="not a regular file"):
        write_manifest(folder, "adapter", ["a.bin"])


def test_write_manifest_refuses_unknown_kind_and_bad_names(tmp_path):
    with pytest.raises(MRLError, match="unknown artifact kind"):
        write_manifest(tmp_path, "bogus", [])
    with pytest.raises(MRLError, match="not a plain file name"):
        write_manifest(tmp_path, "adapter", ["../x"])
    assert not (tmp_path / MANIFEST).exists()


def test_lock_excludes_a_second_process_and_names_its_pid(tmp_path):
    folder = tmp_path / "run"
    holder = textwrap.dedent(f"""
        import sys, time
        from mrl.artifacts import lock
        with lock({str(folder)!r}):
            print("locked", flush=True)
            sys.stdin.readline()
    """)
    proc = subprocess.Popen([sys.executable, "-c", holder], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(MRLError, match=rf"being written by another mrl process \(pid {proc.pid}\)"):
            with lock(folder):
                pass
    finally:
        proc.kill()  # a crashed holder releases the lock: the kernel drops flock with the process
        proc.wait()
    with lock(folder):
        assert (folder / LOCK_FILE).read_text().strip() == str(os.getpid())
    assert not (folder / LOCK_FILE).exists()  # the lock file goes with the lock


def test_lock_removes_a_folder_it_created_when_the_block_fails_empty(tmp_path):
    with pytest.raises(MRLError, match="boom"), lock(tmp_path / "new"):
        raise MRLError("boom")
    assert not (tmp_path / "new").exists()


def test_prepare_output_rules(tmp_path):
    assert prepare_output(tmp_path / "fresh", "index", overwrite=False) == tmp_path / "fresh"
    adapter = _artifact(tmp_path, "adapter")
    with pytest.raises(MRLError, match="already exists"):
        prepare_output(adapter, "adapter", overwrite=False)
    with pytest.raises(MRLError, match="it is an mrl adapter, and --overwrite only replaces an mrl index"):
        prepare_output(adapter, "index", overwrite=True)
    plain = tmp_path / "plain"
    plain.mkdir()
    assert prepare_output(plain, "adapter", overwrite=False) == plain  # an empty folder holds nothing to lose
    (plain / "notes.txt").write_text("mine")
    with pytest.raises(MRLError, match="it is not an mrl artifact"):
        prepare_output(plain, "adapter", overwrite=True)
    with pytest.raises(MRLError, match="is, holds or lies inside the input"):
        prepare_output(adapter, "adapter", overwrite=True, inputs=[adapter / "a.bin"])
    with pytest.raises(MRLError, match="is, holds or lies inside the input"):
        prepare_output(adapter, "adapter", overwrite=True, inputs=[tmp_path])
    assert prepare_output(adapter, "adapter", overwrite=True, inputs=[plain]) == adapter


def test_prepare_output_refuses_unwritable_parent(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root writes everywhere")
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o555)
    try:
        with pytest.raises(MRLError, match=r"cannot write to .*ro/out: .*ro is not a writable folder"):
            prepare_output(parent / "out", "index", overwrite=False)
    finally:
        parent.chmod(0o755)


@pytest.mark.parametrize(("reader", "noun", "other_kind"), [
    ("mrl.runs:read_run", "run directory", "lm-run"),
    ("mrl.lm.train:read_lm_run", "LM run directory", "training-run"),
])
def test_training_and_lm_runs_are_read_by_one_function(tmp_path, reader, noun, other_kind):
    import importlib

    module, name = reader.split(":")
    read = getattr(importlib.import_module(module), name)
    with pytest.raises(MRLError, match=f"^{noun} {tmp_path / 'missing'} does not exist$"):
        read(tmp_path / "missing")
    with pytest.raises(MRLError, match=r"\(no valid manifest.json\); create one with `mrl (lm )?train`$"):
        read(tmp_path)
    write_manifest(tmp_path, other_kind, [])
    with pytest.raises(MRLError, match=f"is an mrl '{other_kind}' artifact, not"):
        read(tmp_path)
