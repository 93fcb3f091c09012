"""Index folders and FunnelIndex arguments turned against mrl: overwrites that would lose files, outputs
inside artifacts, manifests rewritten consistently around swapped or edited contents, out-of-range
search arguments. Each is one MRLError and leaves the disk as it was."""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest

from mrl.artifacts import prepare_output_file, write_manifest
from mrl.errors import MRLError
from mrl.retrieval import FunnelIndex, ShortlistSpec, index_format, parse_funnel
from mrl.retrieval.tuning import parse_shortlists

DIM = 16


def _db(n: int = 600, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)


def _tree(path: Path) -> dict:
    """Every entry under ``path`` (links not followed) with the sha256 of each file's bytes."""
    out = {}
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            full = Path(root) / name
            out[str(full.relative_to(path))] = ("link" if full.is_symlink() else "dir" if full.is_dir()
                                                else hashlib.sha256(full.read_bytes()).hexdigest())
    return out


def _rewrite_manifest(path: Path, **changes) -> None:
    """What a forger who can write the folder does: edit settings, then recompute every checksum."""
    fields = {**json.loads((path / "manifest.json").read_text())["meta"]["fields"], **changes}
    write_manifest(path, index_format.KIND, index_format.expected_files(fields), index_format.FORMAT_VERSION,
                   meta={"fields": fields, "sha256": index_format._digest(fields)})


@pytest.fixture()
def index_dir(tmp_path) -> Path:
    path = tmp_path / "idx"
    FunnelIndex(_db(), shortlist_dim=8).save(path)
    return path


def test_save_overwrite_replaces_an_index_only(tmp_path, index_dir):
    index = FunnelIndex.load(index_dir)
    user = tmp_path / "thesis"
    user.mkdir()
    (user / "thesis.txt").write_text("years of work")
    run = tmp_path / "run"
    run.mkdir()
    (run / "weights.bin").write_bytes(b"\0" * 8)
    write_manifest(run, "training-run", ["weights.bin"])
    plain = tmp_path / "q.npz"
    plain.write_bytes(b"queries")
    link = tmp_path / "link"
    link.symlink_to(index_dir)
    for target, match in ((user, "it is not an mrl artifact"), (run, "it is an mrl training-run"), (plain, "not an mrl artifact"),
                          (link, "symbolic link")):
        before = _tree(tmp_path)
        with pytest.raises(MRLError, match=match):
            index.save(target, overwrite=True)
        assert _tree(tmp_path) == before
    index.save(index_dir, overwrite=True)  # an index is replaced by an index
    assert FunnelIndex.load(index_dir).ntotal == index.ntotal


def test_what_was_written_inside_an_artifact_blocks_its_overwrite(tmp_path, index_dir):
    index = FunnelIndex.load(index_dir)
    before = _tree(index_dir)
    with pytest.raises(MRLError, match="idx is an mrl index; write elsewhere"):  # a file at any depth, as directly inside it
        prepare_output_file(index_dir / "new" / "out.npz")
    assert _tree(index_dir) == before
    # `mrl index tune` rewrites the index in place: it deleted these (an evaluation folder written inside
    # the index, a user's notes) before
    index.save(index_dir / "ev")
    (index_dir / "README.txt").write_text("my notes")
    before = _tree(index_dir)
    with pytest.raises(MRLError, match=r"also holds \['README.txt', 'ev'\], which its manifest.json does not list"):
        index.save(index_dir, overwrite=True)
    assert _tree(index_dir) == before
    (index_dir / "README.txt").unlink()
    (index_dir / "ev").rename(tmp_path / "ev")
    index.save(index_dir, overwrite=True)


def test_contents_that_do_not_fit_a_consistently_rewritten_manifest_are_refused(tmp_path):
    flat, graph = tmp_path / "flat", tmp_path / "graph"
    FunnelIndex(_db(), shortlist_dim=8).save(flat)
    FunnelIndex(_db(), shortlist_dim=8, shortlist="hnsw", encoding="int8").save(graph)
    swapped = tmp_path / "swapped"
    FunnelIndex.load(flat).save(swapped)
    (swapped / "shortlist.faiss").write_bytes((graph / "shortlist.faiss").read_bytes())
    _rewrite_manifest(swapped)
    with pytest.raises(MRLError, match="is a IndexHNSWSQ structure, not the flat float32 one"):
        FunnelIndex.load(swapped)
    for changes, match in (({"metric": "l2"}, "not the flat float32 one"), ({"hnsw_m": 8, "shortlist": "hnsw", "encoding": "int8"}, None),
                           ({"encoding": "float16"}, "not the flat float32 one|float16")):
        edited = tmp_path / f"edited-{len(changes)}-{sorted(changes)[0]}"
        FunnelIndex.load(graph if "hnsw_m" in changes else flat).save(edited)
        _rewrite_manifest(edited, **changes)
        with pytest.raises(MRLError, match=match or "not the hnsw int8 one"):
            FunnelIndex.load(edited)
    nan = tmp_path / "nan"
    FunnelIndex.load(flat).save(nan)
    vectors = np.load(nan / "vectors.npy")
    vectors[5, 3] = np.nan
    np.save(nan / "vectors.npy", vectors)
    _rewrite_manifest(nan)
    with pytest.raises(MRLError, match="vectors.npy row 5 holds NaN or infinite values"):
        FunnelIndex.load(nan)


def test_a_huge_mips_norm_and_a_float_format_version_are_refused(tmp_path):
    path = tmp_path / "ip"
    FunnelIndex(_db(), shortlist_dim=8, shortlist="hnsw", metric="ip").save(path)
    _rewrite_manifest(path, mips_norm=1e200)  # squared at search time: OverflowError before
    with pytest.raises(MRLError, match="field 'mips_norm' has an invalid value 1e\\+200"):
        FunnelIndex.load(path)
    other = tmp_path / "other"
    FunnelIndex(_db(), shortlist_dim=8).save(other)
    record = json.loads((other / "manifest.json").read_text())
    (other / "manifest.json").write_text(json.dumps({**record, "format_version": 2.0}))
    with pytest.raises(MRLError, match="has format version 2.0"):
        FunnelIndex.load(other)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"nprobe": 0}, "nprobe must be a positive integer"),
    ({"nprobe": -1}, "nprobe must be a positive integer"),
    ({"nprobe": 2.5}, "nprobe must be a positive integer"),
    ({"nprobe": True}, "nprobe must be a positive integer"),
    ({"ef_search": 0}, "ef_search must be a positive integer"),
    ({"ef_search": 10**30}, "ef_search must be at most 1048576"),
])
def test_out_of_range_search_arguments_are_refused(kwargs, match):
    db = _db()
    index = FunnelIndex(db, shortlist_dim=8, shortlist="ivf" if "nprobe" in kwargs else "hnsw")
    with pytest.raises(MRLError, match=match):
        index.search(db[:3], 5, **kwargs)
    index.search(db[:3], 5, **{name: 4 for name in kwargs})


def test_other_values_out_of_range_are_refused():
    with pytest.raises(MRLError, match="opq_niter must be at most 10000"):  # FAISS raised OverflowError while building
        parse_shortlists("flat:opq:16:99999999999")[0].resolved(600, DIM, "cosine")
    with pytest.raises(MRLError, match="opq_niter must be at most 10000"):
        ShortlistSpec(encoding="pq", dim=8, opq=True, opq_niter=10_001).resolved(600, DIM, "cosine")
    db = _db()
    with pytest.raises(MRLError, match="labels must fit in int64"):
        FunnelIndex(db, shortlist_dim=8, labels=np.full(len(db), 2**63 + 5, dtype=np.uint64))
    index = FunnelIndex(db, shortlist_dim=8)
    for bad in (float("nan"), -5, float("inf"), True):
        with pytest.raises(MRLError, match="shortlist_distances must be a finite number >= 0"):
            index.flops_per_query([(8, 50), (DIM, 5)], shortlist_distances=bad)
    for text in ("8:200,", "8:200,,16:10", ",8:200"):
        with pytest.raises(MRLError, match="empty stage"):
            parse_funnel(text)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a margin past float32's range printed an overflow warning
        _, ids = index.search(db[:3], 5, [(8, 50), (DIM, 5)], shortlist_margin=1e308)
    np.testing.assert_array_equal(ids, index.search(db[:3], 5, [(8, 50), (DIM, 5)])[1])


def test_evaluate_configurations_refuses_no_configuration_and_labels_that_are_not_integers():
    from mrl.retrieval import evaluate_configurations

    db = _db()
    index = FunnelIndex(db, shortlist_dim=8, labels=np.arange(len(db)) % 3)
    for bad in ([], [""], ["exact", 3]):  # an empty list ran the defaults
        with pytest.raises(MRLError, match="configurations must be a non-empty list of strings"):
            evaluate_configurations(index, db[:4], configurations=bad)
    for labels in (np.array(["a", "b", "c", "d"]), np.zeros(4), np.zeros(3, np.int64)):  # strings scored map@10 0 silently
        with pytest.raises(MRLError, match=r"labels must be an integer array of shape \(4,\)"):
            evaluate_configurations(index, db[:4], np.asarray(labels), configurations=["exact"])
    rows = evaluate_configurations(index, db[:4], np.arange(4) % 3, configurations=["exact"])
    assert rows[0]["config"] == "exact" and rows[0]["top1"] == 1.0
