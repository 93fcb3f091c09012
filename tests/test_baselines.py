"""Baselines of the comparison: SVD, random features, linear probe, slimmable network, retro-fit."""

import json

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from mrl.artifacts import write_manifest
from mrl.baselines import LinearProbe, RandomFeatures, SlimmableClassifier, SVDProjection, draw_seed
from mrl.baselines.parts import split_backbone
from mrl.baselines.retrofit import is_done, load_result, retrofit
from mrl.baselines.slimmable import evaluate_slimmable, slimmable_config, train_slimmable
from mrl.config import TrainConfig
from mrl.data import load_dataset
from mrl.errors import MRLError, NotFittedError
from mrl.evaluation import embed, load_run
from mrl.experiments import run_status
from mrl.models import MLP, ResNetSmall
from mrl.runs import load_weights
from mrl.training import train


@pytest.fixture
def features():
    rng = np.random.default_rng(0)
    scales = np.linspace(5, 0.5, 12)
    return (rng.normal(size=(300, 12)) * scales + 3.0).astype(np.float32)


def test_svd_projection_equals_numpy_svd(features):
    k = 5
    proj = SVDProjection(k).fit(features)
    centred = features.astype(np.float64) - features.mean(0, dtype=np.float64)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    ref = centred @ vt[:k].T
    got = proj.transform(features)
    signs = np.sign((got * ref).sum(0))  # directions are defined up to sign
    np.testing.assert_allclose(got, ref * signs, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(proj.singular_values_, s[:k], rtol=1e-5)
    np.testing.assert_allclose(proj.components_ @ proj.components_.T, np.eye(k), atol=1e-5)
    # A smaller fit is a prefix of a larger one (so one fit serves the whole nesting).
    np.testing.assert_allclose(SVDProjection(2).fit(features).transform(features), got[:, :2], atol=1e-4)
    np.testing.assert_allclose(proj.explained_variance_ratio_, s[:k] ** 2 / (s**2).sum(), rtol=1e-4)


def test_svd_errors_and_refit(features):
    with pytest.raises(NotFittedError, match="call fit"):
        SVDProjection(2).transform(features)
    with pytest.raises(MRLError, match=r"n_components must be an integer in \[1, 12\]"):
        SVDProjection(13).fit(features)
    proj = SVDProjection(3).fit(features)
    with pytest.raises(MRLError, match="X has 4 features but the projection was fitted on 12"):
        proj.transform(features[:, :4])
    proj.fit(features[:, :6])
    assert proj.components_.shape == (3, 6)


def test_random_features_reproducible_by_seed(features):
    a = RandomFeatures(4, seed=7).fit(features)
    b = RandomFeatures(4, seed=7).fit(features)
    c = RandomFeatures(4, seed=8).fit(features)
    np.testing.assert_array_equal(a.indices_, b.indices_)
    assert not np.array_equal(a.indices_, c.indices_)
    assert len(set(a.indices_)) == 4 and list(a.indices_) == sorted(a.indices_)
    np.testing.assert_array_equal(a.transform(features), features[:, a.indices_])
    assert draw_seed(1, 2, 8) == draw_seed(1, 2, 8) != draw_seed(1, 2, 16)
    with pytest.raises(MRLError, match=r"n_features must be an integer in \[1, 12\], got 13"):
        RandomFeatures(13).fit(features)
    with pytest.raises(NotFittedError, match="call fit"):
        RandomFeatures(2).transform(features)


def test_linear_probe_reaches_the_optimum_deterministically(features):
    y = (features[:, 0] + features[:, 1] > 6).astype(int) + 2 * (features[:, 2] > 3)
    a = LinearProbe(l2=1e-3, max_iter=200).fit(features, y)
    b = LinearProbe(l2=1e-3, max_iter=200).fit(features, y)
    np.testing.assert_array_equal(a.coef_, b.coef_)
    assert a.score(features, y) > 0.9
    # The fitted weights are a stationary point of the penalised objective.
    x = torch.from_numpy((features - a.mean_) / a.scale_)
    w = torch.tensor(a.coef_, requires_grad=True)
    bias = torch.tensor(a.intercept_, requires_grad=True)
    t = torch.from_numpy(np.searchsorted(a.classes_, y))
    (F.cross_entropy(x @ w.T + bias, t) + 1e-3 * (w * w).sum()).backward()
    assert w.grad.abs().max() < 1e-3 and bias.grad.abs().max() < 1e-3
    with pytest.raises(NotFittedError, match="call fit"):
        LinearProbe().predict(features)
    with pytest.raises(MRLError, match="y must be 1-D with one label per row of X"):
        LinearProbe().fit(features, y[:5])


@pytest.mark.parametrize("backbone", [MLP(784, 16, hidden=(32,)), ResNetSmall(1, 16, widths=(4, 4, 8))])
def test_slimmable_slices_the_last_layer_with_private_norms(backbone):
    torch.manual_seed(0)
    net = SlimmableClassifier(backbone, 10, [4, 8, 16])
    x = torch.randn(6, 1, 28, 28)
    logits = net(x)
    assert logits.shape == (3, 6, 10)
    logits.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())
    net.eval()
    with torch.no_grad():
        for g, m in enumerate([4, 8, 16]):
            for norm in net.norms:
                norm.weight.data.uniform_(0.5, 1.5)
            h = net.trunk(x)
            w, b = net.last.weight[:m], None if net.last.bias is None else net.last.bias[:m]
            pre = F.linear(h, w, b) if net.last.weight.dim() == 2 else F.conv2d(h, w, b)
            z = torch.relu(net.norms[g](pre))
            z = z if z.dim() == 2 else z.mean((2, 3))
            torch.testing.assert_close(net.embed(x, m), z)
    with pytest.raises(MRLError, match="width 5 is not one of"):
        net.embed(x, 5)


def test_split_backbone_rejects_unknown():
    with pytest.raises(MRLError, match="support the mlp and resnet backbones, got Linear"):
        split_backbone(torch.nn.Linear(3, 3))


def small(data_dir, **kw):
    values = dict(data="mnist", data_dir=str(data_dir), arch="mlp", rep_dim=16, nesting=[8, 16], batch_size=64,
                  max_train=400, epochs=2)
    values.update(kw)
    return values


def test_slimmable_training_resumes_and_evaluates(tmp_path, fashion_subset_dir):
    data = load_dataset("mnist", fashion_subset_dir, 400)
    config = slimmable_config(**small(fashion_subset_dir))
    full = train_slimmable(config, tmp_path / "full", progress=False, data=data)
    assert run_status(full, config) == "trained"
    # An attempt stopped after epoch 1 (the same config with 1 epoch, then relabelled) resumes to the same weights.
    cut = train_slimmable(slimmable_config(**small(fashion_subset_dir, epochs=1)), tmp_path / "cut", progress=False, data=data)
    config.save(cut / "config.json")
    manifest = json.loads((cut / "manifest.json").read_text())
    write_manifest(cut, "training-run", ["config.json"], meta=manifest["meta"])  # relabelling includes the manifest
    assert run_status(cut, config) == "partial"
    # lr_at depends on the total step count, so the 1-epoch run's schedule differs: compare only the format.
    train_slimmable(config, cut, resume=True, progress=False, data=data)
    net = SlimmableClassifier(MLP(784, 16), 10, [8, 16])
    assert load_weights(net, cut).epochs_done == 2
    result = evaluate_slimmable(full, data=data)
    assert set(result["knn1"]) == {"8", "16"} and min(result["top1"].values()) > 0.2  # chance: 0.1
    with pytest.raises(MRLError, match="not a slimmable config"):
        train_slimmable(TrainConfig(**small(fashion_subset_dir)), tmp_path / "x", progress=False, data=data)


@pytest.mark.parametrize("last_layer", [False, True])
def test_retrofit_trains_heads_on_a_frozen_ff_model(tmp_path, fashion_subset_dir, last_layer):
    data = load_dataset("mnist", fashion_subset_dir, 400)
    base = train(TrainConfig(mode="ff", ff_dim=16, **{k: v for k, v in small(fashion_subset_dir).items()
                                                     if k not in ("rep_dim", "nesting")}),
                 tmp_path / "ff", progress=False, data=data)
    _, before, _, device = load_run(base, data)
    z_before = embed(before, data.test.x, device)
    out = tmp_path / "retro"
    result = retrofit(base, out, nesting=[8, 16], epochs=4, lr=1e-2, data=data, last_layer=last_layer, progress=False)
    assert is_done(out) and load_result(out)[1] == result
    assert set(result["top1"]) == {"8", "16"} and min(result["top1"].values()) > 0.2  # chance: 0.1
    _, after, _, _ = load_run(base, data)  # the base run on disk is untouched
    np.testing.assert_array_equal(embed(after, data.test.x, device), z_before)
    if not last_layer:  # frozen representation: 1-NN is the FF-d model's own
        from mrl.evaluation import knn1_accuracy
        z_train = embed(after, data.train.x, device)
        ref = knn1_accuracy(z_train, data.train.y.numpy(), z_before, data.test.y.numpy(), [8, 16])
        assert result["knn1"] == {str(m): v for m, v in ref.items()}
    with pytest.raises(MRLError, match="already exists"):
        retrofit(base, out, nesting=[8, 16], epochs=1, data=data, progress=False)


def test_retrofit_needs_an_ff_base(tmp_path, fashion_subset_dir):
    data = load_dataset("mnist", fashion_subset_dir, 400)
    run = train(TrainConfig(**small(fashion_subset_dir, epochs=1)), tmp_path / "mrl", progress=False, data=data)
    with pytest.raises(MRLError, match="retro-fit needs an FF run as its base, got mode 'mrl'"):
        retrofit(run, tmp_path / "retro", data=data, progress=False)
