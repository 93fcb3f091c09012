"""Every read and write of a file goes through here.

Writes are atomic (temp file in the same folder, fsync, rename), so an interrupted command leaves
the previous file intact. Formats cannot run code: safetensors for tensors, JSON for state, .npy
with ``allow_pickle=False`` for arrays; ``torch.load`` is only ever called with ``weights_only=True``.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import tempfile
import threading
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load_bytes
from safetensors.torch import save as st_save_bytes

from mrl.errors import MRLError

PICKLE_MAGIC = (b"\x80", b"PK\x03\x04")  # protocol-2+ pickles and torch's zip checkpoints
NPY_MAGIC = b"\x93NUMPY"  # the first bytes of every .npy file


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


_PROC_STATUS = "/proc/self/status"
_UMASK_LOCK = threading.Lock()
# errno values of a failed write itself; an OSError without a file name and another errno comes
# from something else the caller did inside an atomic_file block (reading an input, say).
_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EIO}


def current_umask() -> int:
    """The process umask, read without changing it where the system allows.

    Linux reports it in /proc/self/status (``Umask:``). Elsewhere it can only be read by setting
    it and putting it back; a file another thread creates in between would get the temporary
    mask, so that fallback at least never overlaps itself (a lock).
    """
    with contextlib.suppress(OSError, ValueError, IndexError):
        with open(_PROC_STATUS, encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


@contextlib.contextmanager
def _writing(path: Path) -> Iterator[None]:
    """Turn an OSError of a write (read-only folder, full disk) into one MRLError naming ``path``."""
    try:
        yield
    except OSError as exc:
        if exc.errno is None:
            raise
        raise MRLError(f"cannot write {path}: {exc.strerror}") from None


def _remove_stale_temps(path: Path) -> None:
    """Delete the temp files of ``path`` that killed writers left beside it.

    A live writer holds an exclusive flock on its temp file until the rename, and a flock dies
    with its process, so a temp file whose lock can be taken is a dead writer's. Only plain files
    named as :func:`atomic_file` names them for this very ``path`` are touched.
    """
    pattern = re.compile(rf"\.{re.escape(path.name)}\.[a-z0-9_]{{8}}\.tmp")  # mkstemp's ".NAME.XXXXXXXX.tmp"
    try:
        with os.scandir(path.parent) as entries:
            stale = [e.path for e in entries if pattern.fullmatch(e.name) and e.is_file(follow_symlinks=False)]
    except OSError:  # an unlistable folder: cleaning is best effort, the write itself may still succeed
        return
    for name in stale:
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            continue  # a live writer's
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path beside ``path``; on success fsync it and rename it onto ``path``.

    Lets writers that stream to a file (np.save, faiss.write_index) write atomically without
    building the whole file in memory first. On error the temp file is removed, and temp files
    of ``path`` left by writers killed earlier are removed on the next write. The file gets the
    mode a plain ``open`` would give it (0666 less the umask), not mkstemp's 0600. An OSError of
    the write or rename is one MRLError naming ``path``; any other error of the caller's block
    (reading an input, say) passes through unchanged.
    """
    path = Path(path)
    with _writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_temps(path)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # held until the rename: marks the temp file as a live writer's
        with _writing(path):
            os.fchmod(fd, 0o666 & ~current_umask())
        try:
            yield Path(tmp)
        except OSError as exc:
            written = exc.filename is not None and os.fspath(exc.filename) == tmp
            if exc.errno is not None and (written or (exc.filename is None and exc.errno in _WRITE_ERRNOS)):
                raise MRLError(f"cannot write {path}: {exc.strerror}") from None
            raise
        with _writing(path):
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    finally:
        os.close(fd)
    _fsync_dir(path.parent)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically: temp file beside it, fsync, rename."""
    with atomic_file(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Atomically write ``obj`` as indented JSON."""
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    if not path.is_file():
        raise MRLError(f"file not found: {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MRLError(f"{path} is not valid JSON ({exc})") from None
    except RecursionError:
        raise MRLError(f"{path} is not valid JSON (nested too deeply)") from None
    except ValueError as exc:  # an integer beyond Python's digit limit (sys.set_int_max_str_digits)
        raise MRLError(f"{path} is not valid JSON ({exc})") from None


def append_jsonl(path: str | os.PathLike, record: Mapping[str, Any]) -> None:
    """Append one JSON line in place (O_APPEND, fsync): the cost of a line does not grow with the log.

    A writer killed mid-line leaves an unterminated last line; the next append cuts it off first,
    and :func:`read_jsonl` skips it, so a log never holds half a record. The log itself is never
    followed if it is a symbolic link (O_NOFOLLOW).
    """
    path = Path(path)
    line = (json.dumps(record) + "\n").encode("utf-8")
    try:
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o666)
    except OSError as exc:
        raise MRLError(f"cannot write {path}: {exc.strerror or exc}") from None
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            os.ftruncate(fd, _end_of_last_line(fd, size))
        os.write(fd, line)
        os.fsync(fd)
    except OSError as exc:
        raise MRLError(f"cannot write {path}: {exc.strerror or exc}") from None
    finally:
        os.close(fd)


def _end_of_last_line(fd: int, size: int, chunk: int = 1 << 16) -> int:
    """Offset just past the last newline among the first ``size`` bytes of ``fd`` (0 if none)."""
    end = size
    while end > 0:
        start = max(0, end - chunk)
        at = os.pread(fd, end - start, start).rfind(b"\n")
        if at >= 0:
            return start + at + 1
        end = start
    return 0


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """The records of a JSONL log; an unterminated last line (a writer killed mid-line) is skipped."""
    path = Path(path)
    if not path.exists():
        return []
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise MRLError(f"{path} is not UTF-8 text ({exc.reason})") from None
    lines = text.split("\n")
    lines.pop()  # the text after the last newline: empty, or a torn line
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise MRLError(f"{path}, line {number} is not valid JSON ({exc.msg})") from None
    return records


def save_tensors(path: str | os.PathLike, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None) -> Path:
    """Atomically write tensors as safetensors (contiguous CPU copies)."""
    data = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    return atomic_write_bytes(path, st_save_bytes(data, metadata=dict(metadata) if metadata else None))


def load_tensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a safetensors file; refuses pickles and anything else with a clear error."""
    path = Path(path)
    if not path.is_file():
        raise MRLError(f"checkpoint not found: {path}")
    raw = path.read_bytes()
    try:
        return st_load_bytes(raw)
    except (SafetensorError, ValueError, RuntimeError) as exc:
        if raw.startswith(PICKLE_MAGIC):
            raise MRLError(
                f"{path} is a pickle or torch.save file, not safetensors; refusing to load it (pickles can run code)"
            ) from None
        raise MRLError(f"{path} is not a valid safetensors file ({exc})") from None


def save_npy(path: str | os.PathLike, array: np.ndarray) -> Path:
    """Atomically write one array as .npy (streamed to disk; object arrays are refused)."""
    arr = np.asarray(array)
    if arr.dtype == object:
        raise MRLError("refusing to save an object array (it would need pickle)")
    with atomic_file(path) as tmp, open(tmp, "wb") as f:
        np.save(f, arr, allow_pickle=False)
    return Path(path)


def load_npy(path: str | os.PathLike, mmap: bool = False) -> np.ndarray:
    path = Path(path)
    if not path.is_file():
        raise MRLError(f"file not found: {path}")
    try:
        return np.load(path, allow_pickle=False, mmap_mode="r" if mmap else None)
    except ValueError as exc:
        raise MRLError(f"{path} is not a plain .npy array ({exc})") from None


def save_npz(path: str | os.PathLike, **arrays: np.ndarray) -> Path:
    """Atomically write named arrays as an uncompressed .npz (object arrays are refused)."""
    for name, arr in arrays.items():
        if np.asarray(arr).dtype == object:
            raise MRLError(f"refusing to save object array {name!r} (it would need pickle)")
    with atomic_file(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)
    return Path(path)


def load_npz(path: str | os.PathLike, required: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """Read all arrays of an .npz without pickle; ``required`` names keys that must be present."""
    path = Path(path)
    if not path.is_file():
        raise MRLError(f"file not found: {path}")
    try:
        with open(path, "rb") as f:
            magic = f.read(len(NPY_MAGIC))
    except OSError as exc:
        raise MRLError(f"{path} is not a readable .npz file ({exc.strerror or exc})") from None
    if magic == NPY_MAGIC:  # refused before np.load would read the whole array
        raise MRLError(f"{path} is not a readable .npz file (it is a single .npy array; an .npz archive of named arrays is needed)")
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):  # np.load also reads .npy arrays and text
            raise ValueError(f"it holds a {type(loaded).__name__}, not an archive of named arrays")
        with loaded as f:
            out = {k: f[k] for k in f.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise MRLError(f"{path} is not a readable .npz file ({exc})") from None
    missing = [k for k in required if k not in out]
    if missing:
        raise MRLError(f"{path} lacks array(s) {missing}; it has {sorted(out)}")
    return out


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Build a directory in a temp folder beside ``path`` and rename it into place on success.

    On error the temp folder is removed and any existing ``path`` is untouched. With
    ``overwrite=True`` an existing directory is replaced (moved aside, then deleted).
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise MRLError(f"{path} already exists; choose another path or allow overwriting")
    with _writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
        os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp makes 0700 folders
    try:
        yield tmp
        for child in tmp.rglob("*"):
            if child.is_file():
                with open(child, "rb") as f:
                    os.fsync(f.fileno())
        old = None
        if path.exists():
            old = path.with_name(f".{path.name}.old.{os.getpid()}")
            os.replace(path, old)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
