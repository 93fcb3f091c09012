"""On-disk layout of a funnel index: fixed file names, a typed manifest, a checksum over everything.

An index is an :mod:`mrl.artifacts` artifact of kind ``"index"``: ``manifest.json`` plus files
whose names are fixed here (the manifest's list must equal them; nothing is opened by a name read
from it): ``vectors.npy`` (full vectors), ``shortlist.faiss`` (stage-1 structure),
``coarse.faiss`` (ivf only: the coarse quantiser) and ``labels.npy`` (when labels exist).
:func:`mrl.artifacts.read_manifest` checks that each is a plain regular file in the directory
(symlinks refused) with the recorded sha256; the manifest's ``meta`` holds every setting, typed
and checked on read, with a sha256 over them, so an edited setting is caught like a corrupt file.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mrl import artifacts
from mrl.errors import MRLError
from mrl.io import read_json
from mrl.retrieval._vectors import METRICS
from mrl.retrieval.shortlist import ENCODINGS, KINDS
from mrl.retrieval.store import DTYPES

KIND = "index"  # the artifact kind (mrl.artifacts) of a funnel index
LEGACY_FORMAT = "mrl-funnel-index"  # manifests of format version 1, written before mrl.artifacts
FORMAT_VERSION = 2
MANIFEST = artifacts.MANIFEST
VECTORS, SHORTLIST, COARSE, LABELS = "vectors.npy", "shortlist.faiss", "coarse.faiss", "labels.npy"


def _int(minimum: int = 1) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= minimum


def _optional(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: v is None or check(v)


def _choice(options) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, str) and v in options


def _float(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0


def _mips_norm(v: Any) -> bool:
    # the longest prefix norm of vectors whose coordinates are at most 1e15 (mrl.retrieval._vectors.MAX_ABS_VALUE) in
    # up to 1e6 dims; squared at search time, where a larger one overflowed
    return _float(v) and v <= 1e18


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
    "mips_norm": _optional(_mips_norm),
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


def _digest(fields: dict) -> str:
    return hashlib.sha256(json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


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
    """Checksum the index's files in ``directory`` and write its manifest (:func:`mrl.artifacts.write_manifest`)."""
    check_fields(fields, "the index")
    return artifacts.write_manifest(directory, KIND, expected_files(fields), FORMAT_VERSION, meta={"fields": fields, "sha256": _digest(fields)})


def read_manifest(directory: str | os.PathLike) -> dict:
    """Verify an index directory and return its settings; every file's sha256 is checked.

    Raises:
        MRLError: missing or foreign directory, other format version, edited settings, invalid
            settings, a file missing, extra, not a plain regular file, or corrupt.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise MRLError(f"index directory not found: {directory}")
    manifest = directory / artifacts.MANIFEST
    if not manifest.is_file():
        raise MRLError(f"{directory} is not a funnel index (no {artifacts.MANIFEST})")
    record = read_json(manifest)
    found = (record.get("format"), record.get("kind")) if isinstance(record, dict) else (None, None)
    if found[0] == LEGACY_FORMAT:
        raise MRLError(f"{directory} has format version {record.get('format_version')!r}; this mrl reads version "
                       f"{FORMAT_VERSION} (rebuild the index with `mrl index build`)")
    if found != (artifacts.FORMAT, KIND):
        raise MRLError(f"{manifest} is not a {LEGACY_FORMAT} manifest (format={found[0]!r}, kind={found[1]!r})")
    verified = artifacts.read_manifest(directory, KIND, FORMAT_VERSION)
    meta = verified.meta
    if set(meta) != {"fields", "sha256"} or meta["sha256"] != _digest(meta["fields"]):
        raise MRLError(f"{manifest} was edited: its settings do not match their sha256")
    fields = check_fields(meta["fields"], str(manifest))
    names = expected_files(fields)
    if sorted(verified.files) != sorted(names):
        raise MRLError(f"{manifest} lists files {sorted(verified.files)}; an index with these settings has {sorted(names)}")
    return fields
