"""The one owner of what mrl leaves on disk: artifact kinds, manifests, locks and overwrite rules.

Every folder mrl writes (a training run, an LM run, an index, an adapter, an experiment, a text
run) is an *artifact*: it carries ``manifest.json`` naming its kind, its format version and the
sha256 of every file a reader relies on. Readers go through :func:`read_manifest`, which checks all
of that before anything is loaded, so a file edited, swapped or planted after the fact is refused.

Names inside an artifact are never paths: a manifest may only list plain file names
(:func:`safe_name`) of regular files in the artifact's own folder, so no file can point a reader
at ``../victim`` or ``/etc``. Writers take :func:`lock` (one writer per folder) and replace an
existing folder only through :func:`prepare_output`, which refuses anything but an artifact of the
same kind that holds none of the command's inputs.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import shutil
import stat
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mrl.errors import MRLError
from mrl.io import current_umask, atomic_directory, read_json, sha256_file, write_json

KINDS = ("training-run", "lm-run", "index", "adapter", "experiment", "text-run")
MANIFEST = "manifest.json"
LOCK_FILE = ".lock"
FORMAT = "mrl-artifact"
# Manifests written before this module owned them, recognised so --overwrite can replace them.
LEGACY_FORMATS = {"mrl-funnel-index": "index"}


@dataclass(frozen=True)
class Manifest:
    """A verified manifest: ``files`` maps each plain file name to its sha256."""

    kind: str
    format_version: int
    files: dict[str, str] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)


def safe_name(name: Any) -> str:
    """``name`` if it is a plain file name: a non-empty string without separators, NUL, "." or "..".

    Example:
        >>> safe_name("eval.json")
        'eval.json'
        >>> safe_name("../victim.safetensors")
        Traceback (most recent call last):
        ...
        mrl.errors.MRLError: '../victim.safetensors' is not a plain file name (no folders, '.', '..' or NUL allowed)
    """
    if (
        not isinstance(name, str) or not name or name in (".", "..") or "\x00" in name
        or "/" in name or "\\" in name or os.path.isabs(name)
    ):
        raise MRLError(f"{name!r} is not a plain file name (no folders, '.', '..' or NUL allowed)")
    return name


def _check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise MRLError(f"unknown artifact kind {kind!r}; known: {', '.join(KINDS)}")
    return kind


def _regular_file(directory: Path, name: str) -> Path:
    """``directory/name`` if it is a regular file there (not a symlink, not a folder)."""
    path = directory / safe_name(name)
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        raise MRLError(f"{directory} is missing {name}, listed in its {MANIFEST}") from None
    if not stat.S_ISREG(mode):
        raise MRLError(f"{path} is not a regular file (symlinks and folders are refused)")
    return path


def write_manifest(
    directory: str | os.PathLike, kind: str, files: Iterable[str], format_version: int = 1,
    meta: Mapping[str, Any] | None = None,
) -> Path:
    """Checksum ``files`` (plain names inside ``directory``) and write ``directory/manifest.json`` atomically.

    Args:
        directory: the artifact's folder.
        kind: one of :data:`KINDS`.
        files: names of the files a reader relies on, relative to ``directory``.
        format_version: version of this kind's layout.
        meta: JSON-serialisable facts about the artifact (settings, training state).

    Returns:
        The manifest's path.
    """
    directory = Path(directory)
    entries = {}
    for name in files:
        path = _regular_file(directory, name)
        entries[name] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
    record = {"format": FORMAT, "kind": _check_kind(kind), "format_version": format_version,
              "files": entries, "meta": dict(meta or {})}
    return write_json(directory / MANIFEST, record)


def _load_record(directory: Path) -> dict:
    path = directory / MANIFEST
    if os.path.islink(path):
        raise MRLError(f"{path} is a symlink; refusing to read it")
    record = read_json(path)
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise MRLError(f"{path} is not an mrl manifest")
    return record


def read_manifest(
    directory: str | os.PathLike, kind: str | tuple[str, ...], format_version: int = 1,
    verify: Iterable[str] | None = None,
) -> Manifest:
    """Read and verify ``directory/manifest.json``: kind, format version, file names and checksums.

    Args:
        directory: the artifact's folder.
        kind: the kind expected, or a tuple of accepted kinds.
        format_version: the layout version this reader understands.
        verify: names whose sha256 to check (default: every listed file). Every listed name is
            checked to be a plain regular file inside ``directory`` regardless.

    Returns:
        The typed :class:`Manifest`.
    """
    directory = Path(directory)
    accepted = (kind,) if isinstance(kind, str) else tuple(kind)
    if not directory.is_dir():
        raise MRLError(f"{directory} does not exist or is not a folder")
    if not (directory / MANIFEST).is_file():
        raise MRLError(f"{directory} is not an mrl {' or '.join(accepted)} (no {MANIFEST})")
    record = _load_record(directory)
    found = record.get("kind")
    if found not in accepted:
        raise MRLError(f"{directory} is an mrl {found!r} artifact, not {' or '.join(accepted)}")
    if type(record.get("format_version")) is not int or record.get("format_version") != format_version:  # not 2.0, not True
        raise MRLError(
            f"{directory} has format version {record.get('format_version')!r}; this mrl reads version {format_version}"
        )
    files, meta = record.get("files"), record.get("meta", {})
    if not isinstance(files, dict) or not isinstance(meta, dict):
        raise MRLError(f"{directory / MANIFEST} is malformed (files and meta must be JSON objects)")
    checksums = {}
    for name, entry in files.items():
        _regular_file(directory, name)  # a plain regular file inside directory, or MRLError
        digest = entry.get("sha256") if isinstance(entry, dict) else None
        if not isinstance(digest, str):
            raise MRLError(f"{directory / MANIFEST} gives no sha256 for {name!r}")
        checksums[name] = digest
    for name in checksums if verify is None else verify:
        if name not in checksums:
            raise MRLError(f"{directory} has no verified {name} (not in its {MANIFEST})")
        if sha256_file(directory / name) != checksums[name]:
            raise MRLError(f"{directory / name} does not match the sha256 in its {MANIFEST}; it was changed or is corrupt")
    return Manifest(found, format_version, checksums, meta)


def read_made_by(
    directory: str | os.PathLike, kind: str, format_version: int, command: str, noun: str, described: str,
    verify: Iterable[str] | None = None,
) -> Manifest:
    """:func:`read_manifest` of a folder that ``command`` makes, with messages naming that command.

    Args:
        directory: the folder.
        kind, format_version, verify: as :func:`read_manifest`.
        command: the command that makes such a folder ("mrl train").
        noun: what the folder is called when it is missing ("run directory").
        described: what it should have been when it holds no manifest ("a run directory of `mrl train`").

    Example:
        >>> read_made_by("/nonexistent", "lm-run", 1, "mrl lm train", "LM run directory", "an LM run directory")
        Traceback (most recent call last):
        ...
        mrl.errors.MRLError: LM run directory /nonexistent does not exist
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise MRLError(f"{noun} {directory} does not exist")
    if kind_of(directory) is None:
        raise MRLError(f"{directory} is not {described} (no valid {MANIFEST}); create one with `{command}`")
    return read_manifest(directory, kind, format_version, verify=verify)


def kind_of(directory: str | os.PathLike) -> str | None:
    """The kind named by ``directory``'s manifest, or None if it holds no readable mrl manifest."""
    directory = Path(directory)
    try:
        if not (directory / MANIFEST).is_file() or (directory / MANIFEST).is_symlink():
            return None
        record = read_json(directory / MANIFEST)
    except (MRLError, OSError, ValueError):  # unreadable, or a path the OS refuses (a name too long, a NUL byte)
        return None
    if not isinstance(record, dict):
        return None
    if record.get("format") in LEGACY_FORMATS:
        return LEGACY_FORMATS[record["format"]]
    return record.get("kind") if record.get("format") == FORMAT and record.get("kind") in KINDS else None


@contextlib.contextmanager
def lock(directory: str | os.PathLike) -> Iterator[Path]:
    """Hold an exclusive lock on ``directory`` (created if missing) for one writer.

    An fcntl.flock on ``directory/.lock``, released when the block ends or the process dies. A
    second writer fails at once with an MRLError naming the holder's pid. The lock file is removed
    when the block ends, and so are folders this call created if the block left them empty, so a
    command that fails changes nothing on disk.
    """
    directory = Path(directory)
    created = [p for p in (directory, *directory.parents) if not p.exists()]  # innermost first
    path = directory / LOCK_FILE
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o666 & ~current_umask())
    except OSError as exc:
        raise MRLError(f"cannot write to {directory}: {exc.strerror}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            # The holder removes the file when it ends: a lock taken on a file that is no longer
            # at ``path`` protects nothing, so it counts as held by that (ending) writer.
            if os.fstat(fd).st_ino != os.stat(path, follow_symlinks=False).st_ino:
                raise BlockingIOError(errno.EWOULDBLOCK, "lock file replaced")
        except (BlockingIOError, FileNotFoundError, PermissionError):
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            raise MRLError(f"{directory} is being written by another mrl process (pid {holder}); wait for it to finish") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        try:
            yield directory
        finally:
            with contextlib.suppress(OSError):
                if os.fstat(fd).st_ino == os.stat(path, follow_symlinks=False).st_ino:
                    os.unlink(path)
            with contextlib.suppress(OSError):  # rmdir refuses folders that are not empty
                for folder in created:
                    folder.rmdir()
    finally:
        os.close(fd)


def _within(inner: Path, outer: Path) -> bool:
    return inner == outer or outer in inner.parents


def check_writable(path: str | os.PathLike) -> Path:
    """``path`` if its nearest existing folder can be written; else one MRLError naming it."""
    path = Path(path)
    probe = path if path.is_dir() else path.parent
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise MRLError(f"cannot write to {path}: {probe} is not a writable folder")
    return path


def check_overlap(path: str | os.PathLike, inputs: Iterable[str | os.PathLike]) -> Path:
    """``path`` if it neither is, contains nor lies inside any of ``inputs`` (which may not exist)."""
    path = Path(path)
    resolved = path.resolve()
    for item in inputs:
        source = Path(item).resolve()
        if _within(source, resolved) or _within(resolved, source):
            raise MRLError(f"refusing to write {path}: it is, holds or lies inside the input {item}")
    return path


def prepare_output_file(path: str | os.PathLike, inputs: Iterable[str | os.PathLike] = ()) -> Path:
    """Check that a single output file (an .npz) may be written at ``path``; nothing changes on disk.

    It may replace a file, never a folder, an input of the command or a file inside an mrl artifact.
    """
    path = check_overlap(path, inputs)
    if path.is_dir():
        raise MRLError(f"{path} is a folder; give a file name for the output")
    _check_not_inside_artifact(path)
    return check_writable(path)


def prepare_output(
    path: str | os.PathLike, kind: str, overwrite: bool, inputs: Iterable[str | os.PathLike] = ()
) -> Path:
    """Check that ``path`` may receive a new ``kind`` artifact; nothing is changed on disk.

    A missing path or an empty folder is fine (the nearest existing folder must be writable). Any other is
    refused unless ``overwrite`` is set, it is an artifact of the same kind (not a symbolic link to
    one), it neither is, contains nor lies inside any of the command's ``inputs``, and it holds
    nothing its manifest does not list (a folder written inside it since, a user's notes), which
    replacing it would delete.
    """
    path = Path(path)
    _check_kind(kind)
    if not path.exists() and not path.is_symlink():
        return check_writable(path)
    if path.is_dir() and not path.is_symlink() and all(p.name == LOCK_FILE for p in path.iterdir()):
        return check_writable(path)  # an empty folder holds nothing to lose
    if not overwrite:
        raise MRLError(f"{path} already exists; choose another --out or pass --overwrite")
    if path.is_symlink():
        raise MRLError(f"refusing to overwrite {path}: it is a symbolic link; give the artifact's own folder")
    found = kind_of(path) if path.is_dir() else None
    if found != kind:
        what = f"an mrl {found}" if found else "not an mrl artifact"
        raise MRLError(f"refusing to overwrite {path}: it is {what}, and --overwrite only replaces an mrl {kind}")
    check_overlap(path, inputs)
    unlisted = _unlisted_entries(path)  # a folder written inside it later (allowed), or a user's own files
    if unlisted:
        raise MRLError(f"refusing to overwrite {path}: it also holds {unlisted[:5]}{' ...' if len(unlisted) > 5 else ''}, which its "
                       f"{MANIFEST} does not list and replacing it would delete; move them out first")
    return check_writable(path)


def enclosing_artifact(folders: Iterable[str | os.PathLike]) -> tuple[Path, str] | None:
    """The first of ``folders`` that is an mrl artifact, with its kind, or None (pass a path's
    parents to find the artifact it lies inside)."""
    for folder in folders:
        found = kind_of(folder)
        if found is not None:
            return Path(folder), found
    return None


def _check_not_inside_artifact(path: Path) -> None:
    """Refuse an output file anywhere inside an existing mrl artifact (its manifest could not vouch for it)."""
    enclosing = enclosing_artifact(path.absolute().parents)
    if enclosing is not None:
        raise MRLError(f"refusing to write {path}: {enclosing[0]} is an mrl {enclosing[1]}; write elsewhere")


def _unlisted_entries(directory: Path) -> list[str]:
    """Names in an artifact's folder that its manifest does not list (besides the manifest and the lock)."""
    try:
        record = read_json(directory / MANIFEST)
    except MRLError:
        record = None
    files = record.get("files") if isinstance(record, dict) else None
    listed = set(files) if isinstance(files, dict) else set()
    return sorted(p.name for p in directory.iterdir() if p.name not in listed | {MANIFEST, LOCK_FILE})


@contextlib.contextmanager
def new_artifact(
    path: str | os.PathLike, kind: str, overwrite: bool = False, inputs: Iterable[str | os.PathLike] = (),
    meta: dict[str, Any] | None = None, format_version: int = 1,
) -> Iterator[Path]:
    """Build a whole ``kind`` artifact in a temp folder and move it to ``path`` when the block ends.

    ``path`` is checked by :func:`prepare_output` and locked; the manifest lists every top-level
    file the block wrote (``meta`` may be filled in by the block). On error nothing at ``path``
    changes.

    Example:
        >>> import tempfile, pathlib
        >>> out = pathlib.Path(tempfile.mkdtemp()) / "exp"
        >>> with new_artifact(out, "experiment", meta={"command": "doc"}) as tmp:
        ...     _ = (tmp / "result.json").write_text("{}")
        >>> read_manifest(out, "experiment").files.keys()
        dict_keys(['result.json'])
    """
    path = prepare_output(path, kind, overwrite, inputs)
    meta = {} if meta is None else meta
    with lock(path):
        _remove_leftovers(path)
        with atomic_directory(path, overwrite=True) as tmp:
            yield tmp
            names = sorted(p.name for p in tmp.iterdir() if p.is_file() and not p.is_symlink() and p.name != MANIFEST)
            write_manifest(tmp, kind, names, format_version, meta)


def _remove_leftovers(path: Path) -> None:
    """Delete the temp and moved-aside folders (``.NAME.*.tmp``, ``.NAME.old.*``) that a killed
    :func:`~mrl.io.atomic_directory` left beside ``path``; call only while holding ``path``'s lock."""
    pattern = re.compile(rf"\.{re.escape(path.name)}\.(old\.\d+|[a-z0-9_]{{8}}\.tmp)")  # mkdtemp: 8 characters
    for sibling in path.parent.iterdir():
        if pattern.fullmatch(sibling.name) and sibling.is_dir() and not sibling.is_symlink():
            shutil.rmtree(sibling)
