"""On-disk layout of a funnel index: fixed file names, a typed manifest, a checksum over everything.

An index directory holds ``manifest.json`` plus files whose names are fixed here, never read from
the manifest: ``vectors.npy`` (full vectors), ``shortlist.faiss`` (stage-1 structure),
``coarse.faiss`` (ivf only: the coarse quantiser) and ``labels.npy`` (when labels exist). The
manifest records every setting (typed and checked on read), the sha256 and size of every file,
and a sha256 over its own canonical content, so an edited setting is caught like a corrupted file.
Each file must be a regular file directly in the directory (symlinks are refused).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mrl.errors import MRLError
from mrl.io import read_json, sha256_file, write_json
from mrl.retrieval._vectors import METRICS
from mrl.retrieval.shortlist import ENCODINGS, KINDS
from mrl.retrieval.store import DTYPES

FORMAT = "mrl-funnel-index"
FORMAT_VERSION = 2
MANIFEST = "manifest.json"
VECTORS, SHORTLIST, COARSE, LABELS = "vectors.npy", "shortlist.faiss", "coarse.faiss", "labels.npy"


def _int(minimum: int = 1) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= minimum


def _optional(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: v is None or check(v)


def _choice(options) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, str) and v in options


def _float(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0


def _funnel(v: Any) -> bool:
    return isinstance(v, list) and len(v) > 0 and all(isinstance(s, list) and len(s) == 2 and all(_int()(x) for x in s) for s in v)


FIELDS: dict[str, Callable[[Any], bool]] = {
    "n_vectors": _int(),
    "dim": _int(),
    "dtype": _choice(DTYPES),
    "metric": _choice(METRICS),
    "shortlist": _choice(KINDS),
    "encoding": _choice(ENCODINGS),
    "shortlist_dim": _int(),
    "coarse_dim": _optional(_int()),
    "nlist": _optional(_int()),
    "nprobe": _int(),
    "hnsw_m": _int(),
    "ef_construction": _int(),
    "ef_search": _int(),
    "pq_m": _optional(_int()),
    "pq_nbits": _int(),
    "opq": lambda v: isinstance(v, bool),
    "mips_norm": _optional(_float),
    "funnel": _optional(_funnel),
    "build_seconds": _float,
    "has_labels": lambda v: isinstance(v, bool),
}


def expected_files(fields: dict) -> list[str]:
    """The file names an index with these settings consists of (besides the manifest)."""
    names = [VECTORS, SHORTLIST]
    if fields["shortlist"] == "ivf":
        names.append(COARSE)
    if fields["has_labels"]:
        names.append(LABELS)
    return names


def _digest(record: dict) -> str:
    body = {key: record[key] for key in ("format", "format_version", "fields", "files")}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def check_fields(fields: Any, where: str) -> dict:
    """Return ``fields`` after checking every key's presence and type; unknown keys are errors."""
    if not isinstance(fields, dict):
        raise MRLError(f"{where} has no settings object")
    unknown = sorted(set(fields) - set(FIELDS))
    missing = sorted(set(FIELDS) - set(fields))
    if unknown or missing:
        raise MRLError(f"{where} settings differ from this format: unknown {unknown}, missing {missing}")
    for key, check in FIELDS.items():
        if not check(fields[key]):
            raise MRLError(f"{where} field {key!r} has an invalid value {fields[key]!r}")
    return fields


def write_manifest(directory: Path, fields: dict) -> Path:
    """Checksum the index's files in ``directory`` and write its manifest (atomically, through mrl.io)."""
    check_fields(fields, "the index")
    files = {}
    for name in expected_files(fields):
        path = _regular_file(directory, name)
        files[name] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
    record = {"format": FORMAT, "format_version": FORMAT_VERSION, "fields": fields, "files": files}
    record["sha256"] = _digest(record)
    return write_json(directory / MANIFEST, record)


def read_manifest(directory: str | os.PathLike) -> dict:
    """Verify an index directory and return its settings; every file's size and sha256 are checked.

    Raises:
        MRLError: missing or foreign directory, other format version, edited manifest, invalid
            settings, a file missing, extra, not regular or corrupt.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise MRLError(f"index directory not found: {directory}")
    manifest = directory / MANIFEST
    if not manifest.is_file():
        raise MRLError(f"{directory} is not a funnel index (no {MANIFEST})")
    _regular_file(directory, MANIFEST)
    record = read_json(manifest)
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        found = record.get("format") if isinstance(record, dict) else None
        raise MRLError(f"{manifest} is not a {FORMAT} manifest (format={found!r})")
    if record.get("format_version") != FORMAT_VERSION:
        raise MRLError(f"{directory} has format version {record.get('format_version')!r}; this mrl reads version "
                       f"{FORMAT_VERSION} (rebuild the index with `mrl index build`)")
    if set(record) != {"format", "format_version", "fields", "files", "sha256"} or record["sha256"] != _digest(record):
        raise MRLError(f"{manifest} was edited: its content does not match its sha256")
    fields = check_fields(record["fields"], str(manifest))
    names = expected_files(fields)
    files = record["files"]
    if not isinstance(files, dict) or sorted(files) != sorted(names):
        raise MRLError(f"{manifest} lists files {sorted(files) if isinstance(files, dict) else files!r}; an index with these settings has {sorted(names)}")
    for name in names:
        path = _regular_file(directory, name)
        entry = files[name]
        if not isinstance(entry, dict) or path.stat().st_size != entry.get("bytes") or sha256_file(path) != entry.get("sha256"):
            raise MRLError(f"{path} is corrupt: its sha256 does not match the manifest")
    return fields


def _regular_file(directory: Path, name: str) -> Path:
    """``directory/name`` when it is a regular file there; symlinks and folders are refused."""
    path = directory / name
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        raise MRLError(f"{directory} is missing {name}, listed in its manifest") from None
    if not stat.S_ISREG(mode):
        raise MRLError(f"{path} is not a regular file (symlinks and folders are refused)")
    return path
