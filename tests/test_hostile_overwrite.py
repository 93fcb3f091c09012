"""Class 2 of the hardening issue: ``--overwrite`` replaces only an artifact of the same kind that
holds none of the command's inputs; every other target is refused with nothing changed."""

from __future__ import annotations

from hostile import TINY, assert_refused, copy, invoke, tree, vectors_npz

from mrl.artifacts import kind_of


def test_index_build_over_a_training_run_or_the_inputs_folder(tmp_path, tiny_artifacts):
    run = copy(tiny_artifacts["run"], tmp_path / "run")
    emb = tmp_path / "emb.npz"
    emb.write_bytes(tiny_artifacts["emb"].read_bytes())
    assert_refused(tmp_path, "index", "build", emb, "--out", run, "--overwrite",
                   match="it is an mrl training-run, and --overwrite only replaces an mrl index")
    assert_refused(tmp_path, "index", "build", emb, "--out", tmp_path, "--overwrite", match="refusing to overwrite")
    index = copy(tiny_artifacts["index"], tmp_path / "index")
    inner = index / "emb.npz"  # an input kept inside the index being replaced
    assert_refused(tmp_path, "index", "build", emb, "--out", index, match="already exists")
    code, output = invoke("index", "build", emb, "--out", index, "--overwrite", "--shortlist-dim", "4", "--quiet")
    assert code == 0, output  # the same kind, holding no input: replaced
    assert kind_of(index) == "index" and not inner.exists()


def test_index_build_never_replaces_an_index_holding_its_input(tmp_path, tiny_artifacts):
    index = copy(tiny_artifacts["index"], tmp_path / "index")
    emb = index / "vectors_copy.npz"
    emb.write_bytes(tiny_artifacts["emb"].read_bytes())
    assert_refused(tmp_path, "index", "build", emb, "--out", index, "--overwrite", match="lies inside the input")


def test_adapt_fit_over_a_run_or_its_input_folder(tmp_path, tiny_artifacts):
    run = copy(tiny_artifacts["run"], tmp_path / "run")
    emb = tmp_path / "data" / "emb.npz"
    emb.parent.mkdir()
    emb.write_bytes(tiny_artifacts["emb"].read_bytes())
    common = ["--nesting", "8,16", "--epochs", "1", "--neighbours", "2", "--quiet", "--overwrite"]
    assert_refused(tmp_path, "adapt", "fit", emb, "--out", run, *common, match="it is an mrl training-run")
    assert_refused(tmp_path, "adapt", "fit", emb, "--out", emb.parent, *common, match="it is not an mrl artifact")
    adapter = copy(tiny_artifacts["adapter"], tmp_path / "adapter")
    (adapter / "emb.npz").write_bytes(emb.read_bytes())
    assert_refused(tmp_path, "adapt", "fit", adapter / "emb.npz", "--out", adapter, *common, match="lies inside the input")


def test_adaptive_never_replaces_its_run_or_a_foreign_folder(tmp_path, tiny_artifacts):
    run = copy(tiny_artifacts["run"], tmp_path / "run")
    base = ["adaptive", run, "--seeds", "2", "--n-quantiles", "5", "--quiet", "--overwrite", "--out"]
    assert_refused(tmp_path, *base, run, match="it is an mrl training-run")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("mine")
    assert_refused(tmp_path, *base, tmp_path / "notes", match="it is not an mrl artifact")
    code, output = invoke(*base, run / "adaptive")  # a new folder inside the run: allowed, it replaces nothing
    assert code == 0, output
    assert_refused(tmp_path, *base, run / "adaptive", match="lies inside the input")


def test_lm_train_refuses_foreign_folders(tmp_path, tiny_artifacts):
    index = copy(tiny_artifacts["index"], tmp_path / "index")
    corpus = tmp_path / "c.txt"
    corpus.write_text("a b c d e f g\n\n" * 50)
    for out in (index, tmp_path, corpus):
        assert_refused(tmp_path, "lm", "train", "--corpus", corpus, "--out", out, "--steps", "1", "--quiet",
                       match="already exists")
    assert_refused(tmp_path, "lm", "train", "--corpus", corpus, "--out", index, "--resume", "--quiet",
                   match="already exists")


def test_train_compare_and_demo_refuse_folders_inside_their_data(tmp_path):
    images = tmp_path / "images"
    (images / "cat").mkdir(parents=True)
    data = vectors_npz(tmp_path / "d.npz")
    assert_refused(tmp_path, "train", "--data", images, "--out", images / "run", *TINY, match="lies inside the input")
    assert_refused(tmp_path, "compare", "--data", images, "--out", images / "cmp", "--methods", "mrl", "--quiet",
                   match="lies inside the input")
    assert_refused(tmp_path, "demo", "--data", images, "--out", images, "--quiet", match="lies inside the input")
    assert_refused(tmp_path, "train", "--data", data, "--out", data, *TINY, match="lies inside the input")


def test_compare_refuses_a_training_run_as_its_folder(tmp_path, tiny_artifacts):
    run = copy(tiny_artifacts["run"], tmp_path / "run")
    assert_refused(tmp_path, "compare", "--data", tiny_artifacts["data"], "--out", run, "--methods", "mrl",
                   "--quiet", match="is not an `mrl compare` folder")


def test_output_files_never_land_on_inputs_or_inside_artifacts(tmp_path, tiny_artifacts):
    run = copy(tiny_artifacts["run"], tmp_path / "run")
    adapter = copy(tiny_artifacts["adapter"], tmp_path / "adapter")
    emb = tmp_path / "emb.npz"
    emb.write_bytes(tiny_artifacts["emb"].read_bytes())
    assert_refused(tmp_path, "embed", run, "--out", run / "x.npz", "--quiet", match="lies inside the input")
    assert_refused(tmp_path, "adapt", "apply", adapter, emb, "--out", emb, match="is, holds or lies inside the input")
    assert_refused(tmp_path, "adapt", "apply", adapter, emb, "--out", adapter / "x.npz", match="lies inside the input")
    index = copy(tiny_artifacts["index"], tmp_path / "index")
    assert_refused(tmp_path, "index", "search", index, emb, "--out", emb, match="is, holds or lies inside the input")
    assert_refused(tmp_path, "index", "search", index, emb, "--out", index / "x.npz", match="lies inside the input")
    assert_refused(tmp_path, "embed", run, "--out", adapter / "x.npz", "--quiet", match="is an mrl adapter")
    before = tree(tmp_path)
    assert invoke("embed", run, "--out", tmp_path / "fresh.npz", "--quiet")[0] == 0
    assert set(tree(tmp_path)) - set(before) == {"fresh.npz"}


def test_embed_never_overwrites_the_data_its_run_was_trained_on(tmp_path):
    from hostile import TINY, vectors_npz

    data = vectors_npz(tmp_path / "data.npz")
    assert invoke("train", "--data", data, *TINY, "--out", tmp_path / "run")[0] == 0
    # it wrote over data.npz with exit 0, and the run's checkpoints no longer fitted the data
    assert_refused(tmp_path, "embed", tmp_path / "run", "--out", data, "--quiet", match="is, holds or lies inside the input")
