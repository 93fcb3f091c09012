"""Nested widths (MatFormer): sliced submodels, training over widths, the (width x dim) grid, the cascade."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn

from mrl.adaptive import AdaptiveClassifier, WidthDimCascade, pairs_by_flops
from mrl.cli import cli
from mrl.config import TrainConfig
from mrl.data import load_dataset
from mrl.errors import MRLError, NotFittedError
from mrl.evaluation import evaluate_run, load_run
from mrl.io import load_npy, read_json
from mrl.lm.evaluate import windows_of
from mrl.lm.train import load_model
from mrl.lm.model import LMConfig, MatryoshkaLM
from mrl.losses import MatryoshkaLoss
from mrl.models import MLP, MatryoshkaClassifier, NestedFFN, NestedWidthMLP
from mrl.models.widths import per_layer, units_at, widths_for_step
from mrl.training import build_model, train, width_losses
from mrl.width_grid import evaluate_grid, grid_flops, grid_parts

SMALL_LM = dict(vocab_size=40, context=8, d_model=16, n_layers=2, n_heads=2, nesting=[4, 16])


def run_cli(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def copy_to_smaller(net: NestedWidthMLP, width) -> NestedWidthMLP:
    """A separately built MLP of the width's sizes holding copies of the sliced weights."""
    units = net.units(width)
    small = NestedWidthMLP(net.in_features, net.num_features, hidden=units)
    with torch.no_grad():
        fan_in = net.in_features
        for i, k in enumerate(units):
            small.body[3 * i].weight.copy_(net.body[3 * i].weight[:k, :fan_in])
            small.body[3 * i].bias.copy_(net.body[3 * i].bias[:k])
            small.body[3 * i + 1].weight.copy_(net.body[3 * i + 1].weight[:k])
            small.body[3 * i + 1].bias.copy_(net.body[3 * i + 1].bias[:k])
            fan_in = k
        small.proj[0].weight.copy_(net.proj[0].weight[:, :fan_in])
        for a, b in zip(small.proj.parameters(), net.proj.parameters()):
            if a.shape == b.shape:
                a.copy_(b)
    return small


def randomize(module: nn.Module) -> None:
    """Non-trivial LayerNorm gains and biases, so that slicing them wrongly would show."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.3 * torch.randn_like(p))


@pytest.mark.parametrize("width", [0.25, 0.5, 1.0, [0.25, 1.0], [1.0, 0.125]])
def test_a_sliced_width_equals_a_separately_built_smaller_mlp(width):
    torch.manual_seed(0)
    net = NestedWidthMLP(20, num_features=12, hidden=(16, 24))
    randomize(net)
    x = torch.randn(7, 20)
    small = copy_to_smaller(net, width)
    assert sum(p.numel() for p in small.parameters()) <= sum(p.numel() for p in net.parameters())
    torch.testing.assert_close(net.forward_features(x, width=width), small.forward_features(x), rtol=1e-5, atol=1e-6)


def copy_to_plain_batchnorm_mlp(net: NestedWidthMLP, width) -> MLP:
    """The plain BatchNorm MLP of the width's sizes: copies of the sliced weights and, per layer,
    the BatchNorm of that layer's width (the representation's: the last hidden layer's width)."""
    fractions = per_layer(width, len(net.hidden))
    units = net.units(width)
    small = MLP(net.in_features, net.num_features, hidden=units)
    with torch.no_grad():
        fan_in = net.in_features
        for i, (k, w) in enumerate(zip(units, fractions)):
            small.body[3 * i].weight.copy_(net.body[3 * i].weight[:k, :fan_in])
            small.body[3 * i].bias.copy_(net.body[3 * i].bias[:k])
            small.body[3 * i + 1].load_state_dict(net.body[3 * i + 1][net.widths.index(w)].state_dict())
            fan_in = k
        small.proj[0].weight.copy_(net.proj[0].weight[:, :fan_in])
        small.proj[0].bias.copy_(net.proj[0].bias)
        small.proj[1].load_state_dict(net.proj[1][net.widths.index(fractions[-1])].state_dict())
    return small


def batchnorm_states(net: nn.Module) -> dict[str, torch.Tensor]:
    return {name: value.clone() for name, value in net.state_dict().items() if "running" in name or "tracked" in name}


@pytest.mark.parametrize("width", [0.25, 0.5, 1.0, [0.25, 1.0], [1.0, 0.5]])
def test_a_switchable_batchnorm_width_equals_the_plain_batchnorm_mlp_of_that_width(width):
    torch.manual_seed(0)
    net = NestedWidthMLP(20, num_features=12, hidden=(16, 24), norm="batch", widths=[0.25, 0.5, 1.0])
    randomize(net)
    with torch.no_grad():  # running statistics that differ per width, so picking the wrong one would show
        for name, buffer in net.named_buffers():
            if "running_mean" in name:
                buffer.normal_()
            elif "running_var" in name:
                buffer.uniform_(0.5, 2.0)
    small = copy_to_plain_batchnorm_mlp(net, width)
    x = torch.randn(32, 20)
    net.eval(), small.eval()
    with torch.no_grad():
        torch.testing.assert_close(net(x, width=width), small(x), rtol=1e-5, atol=1e-5)
    # training mode: batch statistics, and the running statistics move exactly as the plain model's
    before = batchnorm_states(net)
    net.train(), small.train()
    torch.testing.assert_close(net(x, width=width), small(x), rtol=1e-5, atol=1e-5)
    for name, value in batchnorm_states(copy_to_plain_batchnorm_mlp(net, width)).items():
        torch.testing.assert_close(value, batchnorm_states(small)[name])
    fractions = per_layer(width, 2)
    used = {f"body.1.{net.widths.index(fractions[0])}.", f"body.4.{net.widths.index(fractions[1])}.",
            f"proj.1.{net.widths.index(fractions[1])}."}
    for name, value in batchnorm_states(net).items():
        changed = not torch.equal(value, before[name])
        assert changed == name.startswith(tuple(used)), name  # only the running widths' BatchNorms moved


def test_switchable_batchnorm_runs_only_trained_widths():
    with pytest.raises(MRLError, match=r"norm batch \(switchable BatchNorm\) needs the trained widths"):
        NestedWidthMLP(4, num_features=4, hidden=(8,), norm="batch")
    with pytest.raises(MRLError, match="norm must be one of layer, batch, got 'group'"):
        NestedWidthMLP(4, num_features=4, hidden=(8,), norm="group")
    net = NestedWidthMLP(4, num_features=4, hidden=(8, 8), norm="batch", widths=[0.5, 1.0])
    with pytest.raises(MRLError, match=r"runs its trained widths \[0.5, 1.0\] only, got 0.25"):
        net(torch.randn(3, 4), width=[1.0, 0.25])
    # one BatchNorm per width and layer, sized to the width; the representation's are all d wide
    assert [bn.num_features for bn in net.body[1]] == [4, 8] and [bn.num_features for bn in net.proj[1]] == [4, 4]


@pytest.mark.parametrize("sampling", ["random", "sandwich"])
def test_sampled_widths_are_a_pure_function_of_seed_and_step_with_the_promised_frequencies(sampling):
    widths = [0.125, 0.25, 0.5, 0.75, 1.0]
    k, steps = 2, 3000
    draws = [widths_for_step(widths, sampling, k, seed=3, step=t) for t in range(steps)]
    assert draws == [widths_for_step(widths, sampling, k, seed=3, step=t) for t in range(steps)]
    assert draws != [widths_for_step(widths, sampling, k, seed=4, step=t) for t in range(steps)]
    pool = widths if sampling == "random" else widths[1:-1]
    for draw in draws:
        assert draw == sorted(set(draw)) and set(draw) <= set(widths)
        if sampling == "random":
            assert len(draw) == k
        else:
            assert draw[0] == 0.125 and draw[-1] == 1.0 and len(draw) == k + 2
    # each width of the pool is drawn with probability k / len(pool): within 4.5 binomial std
    p = k / len(pool)
    for w in pool:
        count = sum(w in draw for draw in draws)
        assert abs(count - p * steps) < 4.5 * np.sqrt(steps * p * (1 - p)), (w, count)
    assert widths_for_step(widths, "all", 0, seed=3, step=5) == widths


def test_training_runs_exactly_the_widths_sampled_for_each_step(tmp_path, fashion_subset_dir):
    widths = [0.25, 0.5, 1.0]
    config = TrainConfig(data="fashion-mnist", data_dir=str(fashion_subset_dir), arch="mlp", rep_dim=16,
                         nesting=[8, 16], widths=widths, hidden=[16, 16], width_norm="batch",
                         width_sampling="random", width_samples=1, epochs=1, batch_size=64, max_train=600)
    run = train(config, tmp_path / "run", progress=False)
    _, model, _, _ = load_run(run)
    steps = 600 // 64
    expected = [sum(w in widths_for_step(widths, "random", 1, config.seed, t) for t in range(steps)) for w in widths]
    assert 0 < min(expected) and sum(expected) == steps  # the draw over 9 steps leaves no width out (seed 0)
    # a BatchNorm counts the training batches it normalised: the steps whose draw held its width
    for layer in (model.backbone.body[1], model.backbone.body[4], model.backbone.proj[1]):
        assert [int(bn.num_batches_tracked) for bn in layer] == expected


def test_a_run_that_samples_widths_resumes_to_the_same_weights(tmp_path, fashion_subset_dir):
    config = TrainConfig(data="fashion-mnist", data_dir=str(fashion_subset_dir), arch="mlp", rep_dim=16,
                         nesting=[8, 16], widths=[0.25, 0.5, 1.0], hidden=[16, 16], width_norm="batch",
                         width_sampling="sandwich", width_samples=1, epochs=2, batch_size=64, max_train=300)

    class Interrupted(Exception):
        pass

    def stop_after_first_epoch(epoch: int) -> None:
        if epoch == 1:
            raise Interrupted

    full = train(config, tmp_path / "full", progress=False)
    with pytest.raises(Interrupted):
        train(config, tmp_path / "cut", progress=False, on_epoch_end=stop_after_first_epoch)
    cut = train(config, tmp_path / "cut", resume=True, progress=False)
    full_state, cut_state = load_run(full)[1].state_dict(), load_run(cut)[1].state_dict()
    assert full_state.keys() == cut_state.keys()
    for name in full_state:
        assert torch.equal(full_state[name], cut_state[name]), name


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (dict(width_norm="batch"), "width-norm, width-sampling, width-distill and width-weights apply to nested widths; pass --widths"),
        (dict(width_sampling="random"), "width-norm, width-sampling, width-distill and width-weights apply to nested widths"),
        (dict(width_distill=0.5), "width-norm, width-sampling, width-distill and width-weights apply to nested widths"),
        (dict(widths=[0.5, 1], width_distill=1.5), r"width-distill must be .*<= 1.*, got 1.5"),
        (dict(widths=[0.5, 1], width_distill=-0.1), r"width-distill must be .*>= 0.*, got -0.1"),
        (dict(widths=[0.5, 1], width_sampling="random", width_distill=0.5),
         "width-distill needs the full width in every step"),
        (dict(widths=[0.5, 1], width_sampling="some"), "width-sampling must be one of all, random, sandwich"),
        (dict(widths=[0.25, 0.5, 1], width_sampling="sandwich", width_samples=2),
         "width-samples must be an integer >= 0 and <= 1, got 2"),
        (dict(widths=[0.5, 1], width_sampling="random", width_samples=0),
         "width-samples must be an integer >= 1 and <= 2, got 0"),
        (dict(widths=[0.5, 1], width_norm="group"), "width-norm must be one of layer, batch"),
        (dict(hidden="64,x"), "hidden must be comma-separated layer sizes, got '64,x'"),
        (dict(width_weights="1,1"), "width-weights apply to nested widths; pass --widths"),
        (dict(widths=[0.5, 1], width_weights="1,x"), "width-weights must be comma-separated numbers, got '1,x'"),
        (dict(widths=[0.5, 1], width_weights=[1.0]), r"width weights need one value per width \(2\), got \[1.0\]"),
        (dict(widths=[0.5, 1], width_weights="1,0"), r"every width weight must be .*> 0.*, got 0"),
    ],
)
def test_bad_width_options_raise_mrl_error(settings, message):
    with pytest.raises(MRLError, match=message):
        TrainConfig(arch="mlp", **settings)


def test_cli_hidden_and_switchable_batchnorm_build_the_asked_model(tmp_path, fashion_subset_dir):
    out = tmp_path / "run"
    result = run_cli("train", "--data", "mnist", "--data-dir", fashion_subset_dir, "--arch", "mlp", "--rep-dim", 16,
                     "--nesting", "8,16", "--widths", "0.5,1", "--hidden", "24,12", "--width-norm", "batch",
                     "--width-sampling", "sandwich", "--width-samples", 0, "--width-distill", 0.5, "--epochs", 1, "--max-train", 300,
                     "--batch-size", 64, "--quiet", "--out", out)
    assert result.exit_code == 0, result.output
    config, model, _, _ = load_run(out)
    assert config.hidden == [24, 12] and config.width_norm == "batch" and config.width_sampling == "sandwich"
    assert config.width_distill == 0.5
    assert model.backbone.hidden == [24, 12]
    assert [bn.num_features for bn in model.backbone.body[1]] == [12, 24]


@pytest.mark.parametrize("width_weights", [None, [2.0, 0.5, 3.0]])
@pytest.mark.parametrize("distill", [0.0, 0.3, 1.0])
def test_in_place_distillation_loss_equals_a_numpy_reference_and_leaves_the_teacher_to_the_labels(distill, width_weights):
    torch.manual_seed(0)
    nesting, weights = [2, 4], [1.0, 0.5]
    criterion = MatryoshkaLoss(nn.CrossEntropyLoss(label_smoothing=0.1), nesting=nesting, weights=weights)
    outputs = [(3 * torch.randn(len(nesting), 5, 4)).requires_grad_() for _ in range(3)]  # 3 widths, full last
    target = torch.tensor([0, 3, 1, 1, 2])
    loss = (criterion.weights * width_losses(criterion, outputs, target, distill, weights=width_weights)).sum()
    loss.backward()

    def log_softmax(z):
        z = z - z.max(-1, keepdims=True)
        return z - np.log(np.exp(z).sum(-1, keepdims=True))

    def label_ce(z):  # label smoothing 0.1 over 4 classes, as torch defines it
        onehot = np.eye(4)[target.numpy()]
        return -(((1 - 0.1) * onehot + 0.1 / 4) * log_softmax(z)).sum(-1).mean()

    logits = [o.detach().double().numpy() for o in outputs]
    per_width = width_weights or [1.0, 1.0, 1.0]
    expected = 0.0
    for g, c in enumerate(weights):
        expected += per_width[-1] * c * label_ce(logits[-1][g])
        for z, u in zip(logits[:-1], per_width):
            soft = np.exp(log_softmax(logits[-1][g]))
            expected += u * c * ((1 - distill) * label_ce(z[g]) - distill * (soft * log_softmax(z[g])).sum(-1).mean())
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    # the teacher's gradient is that of its own label loss: the students' terms see it detached
    teacher = outputs[-1].detach().requires_grad_()
    (per_width[-1] * criterion.weights * criterion.per_size(teacher, target)).sum().backward()
    torch.testing.assert_close(outputs[-1].grad, teacher.grad)


def test_a_distilled_run_trains_and_differs_from_label_only_training(tmp_path, fashion_subset_dir):
    common = dict(data="fashion-mnist", data_dir=str(fashion_subset_dir), arch="mlp", rep_dim=16, nesting=[8, 16],
                  widths=[0.5, 1.0], hidden=[16, 16], width_norm="batch", epochs=1, batch_size=64, max_train=300)
    states = [load_run(train(TrainConfig(width_distill=d, **common), tmp_path / str(d), progress=False))[1].state_dict()
              for d in (0.0, 0.5)]
    # same seed, data and batches: only the smaller width's loss differs, and the shared weights follow it
    assert not torch.equal(states[0]["backbone.body.0.weight"], states[1]["backbone.body.0.weight"])


def test_width_weights_of_one_change_nothing_and_other_weights_change_training(tmp_path, fashion_subset_dir):
    common = dict(data="fashion-mnist", data_dir=str(fashion_subset_dir), arch="mlp", rep_dim=16, nesting=[8, 16],
                  widths=[0.5, 1.0], hidden=[16, 16], width_norm="batch", epochs=1, batch_size=64, max_train=300)
    runs = {name: TrainConfig(width_weights=w, **common) for name, w in (("none", None), ("ones", "1,1"), ("more", "3,1"))}
    states = {name: load_run(train(config, tmp_path / name, progress=False))[1].state_dict() for name, config in runs.items()}
    assert all(torch.equal(states["none"][k], states["ones"][k]) for k in states["none"])
    assert not torch.equal(states["none"]["backbone.body.0.weight"], states["more"]["backbone.body.0.weight"])
    with pytest.raises(MRLError, match=r"width weights need one value per width run \(2\), got \[1.0\]"):
        width_losses(MatryoshkaLoss(nn.CrossEntropyLoss(), nesting=[2]), [torch.zeros(1, 3, 2)] * 2, torch.zeros(3, dtype=torch.long),
                     weights=[1.0])


@pytest.mark.parametrize("width", [0.125, 0.5, 1.0])
def test_a_sliced_ffn_equals_a_separately_built_smaller_ffn(width):
    torch.manual_seed(0)
    ffn = NestedFFN(8, 32)
    k = units_at(32, width)
    small = nn.Sequential(nn.Linear(8, k), nn.GELU(), nn.Linear(k, 8))
    with torch.no_grad():
        small[0].weight.copy_(ffn[0].weight[:k])
        small[0].bias.copy_(ffn[0].bias[:k])
        small[2].weight.copy_(ffn[2].weight[:, :k])
        small[2].bias.copy_(ffn[2].bias)
    x = torch.randn(3, 5, 8)
    torch.testing.assert_close(ffn(x, width), small(x), rtol=1e-5, atol=1e-6)
    assert ffn.flops(width) == 2 * 8 * k


def test_slices_are_views_not_copies():
    net = NestedWidthMLP(6, num_features=4, hidden=(8,))
    before = sum(p.numel() for p in net.parameters())
    net.forward_features(torch.randn(2, 6), width=0.5).sum().backward()
    assert sum(p.numel() for p in net.parameters()) == before
    grad = net.body[0].weight.grad
    assert grad[:4].abs().sum() > 0 and grad[4:].abs().sum() == 0  # units beyond the width are untouched


@pytest.mark.parametrize("norm", ["layer", "batch"])
def test_gradients_reach_every_unit_when_the_loss_sums_the_widths(norm):
    torch.manual_seed(0)
    widths = [0.125, 0.25, 0.5, 1.0]
    backbone = NestedWidthMLP(20, num_features=16, hidden=(32, 32), norm=norm, widths=widths)
    model = MatryoshkaClassifier(backbone, 5, [4, 16])
    loss = MatryoshkaLoss(nesting=[4, 16])
    x, y = torch.randn(64, 20), torch.randint(0, 5, (64,))
    sum(loss(model(x, width=w), y) for w in widths).backward()
    for name, p in model.named_parameters():
        if norm == "batch" and name in ("backbone.body.0.bias", "backbone.body.3.bias", "backbone.proj.0.bias"):
            continue  # a bias before a training-mode BatchNorm is subtracted with the batch mean: zero gradient
        unit_grads = p.grad.abs().reshape(p.shape[0], -1).sum(1) if p.dim() else p.grad.abs()
        assert (unit_grads > 0).all(), name  # every row (output unit) of every parameter


def test_lm_gradients_reach_every_ffn_unit_and_widths_change_the_output():
    torch.manual_seed(0)
    model = MatryoshkaLM(LMConfig(widths=[0.25, 1.0], **SMALL_LM))
    ids = torch.randint(0, 40, (2, 8))
    sum(model(ids, w).sum() for w in [0.25, 1.0]).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    hidden_grads = model.blocks[0].mlp[0].weight.grad.abs().sum(1)
    assert (hidden_grads > 0).all()
    with torch.no_grad():
        assert not torch.allclose(model(ids, 0.25), model(ids))
        torch.testing.assert_close(model(ids, [1.0, 1.0]), model(ids))


def test_no_widths_keeps_todays_models_and_parameter_names(fashion_subset_dir):
    data = load_dataset("fashion-mnist", str(fashion_subset_dir), 600)
    plain = build_model(TrainConfig(arch="mlp", rep_dim=32, nesting=[8, 32]), data)
    assert type(plain.backbone) is MLP
    assert plain.state_dict().keys() == MatryoshkaClassifier(MLP(784, 32), 10, [8, 32]).state_dict().keys()
    nested = build_model(TrainConfig(arch="mlp", rep_dim=32, nesting=[8, 32], widths=[0.5, 1.0]), data)
    assert isinstance(nested.backbone, NestedWidthMLP)
    # the LM's FFN keeps nanoGPT's names, so checkpoints of runs without widths load
    names = MatryoshkaLM(LMConfig(**SMALL_LM)).state_dict().keys()
    assert {"blocks.0.mlp.0.weight", "blocks.0.mlp.2.weight"} <= set(names)
    assert names == MatryoshkaLM(LMConfig(widths=[0.5, 1.0], **SMALL_LM)).state_dict().keys()
    assert LMConfig.from_dict({k: v for k, v in LMConfig(**SMALL_LM).to_dict().items() if k != "widths"}).widths is None


@pytest.mark.parametrize(
    ("widths", "message"),
    [
        ([0, 1], r"every width must be a finite number > 0 and <= 1, got 0"),
        ([0.5, 1.5], r"every width must be a finite number > 0 and <= 1, got 1.5"),
        ([0.5, float("nan"), 1], r"every width must be a finite number > 0 and <= 1, got nan"),
        ([0.5, 0.25, 1], r"widths must be strictly ascending, got \[0.5, 0.25, 1.0\]"),
        ([0.25, 0.5], r"the last width must be 1 \(the full model\), got \[0.25, 0.5\]"),
        ([], "widths must not be empty"),
        ("0.5,x", "widths must be comma-separated fractions"),
    ],
)
def test_bad_widths_raise_mrl_error_in_every_api(widths, message):
    with pytest.raises(MRLError, match=message):
        TrainConfig(arch="mlp", widths=widths)
    with pytest.raises(MRLError, match=message):
        LMConfig(widths=widths, **SMALL_LM)


def test_widths_apply_to_the_mlp_only_and_per_layer_specs_are_checked():
    with pytest.raises(MRLError, match="widths and hidden apply to the mlp backbone"):
        TrainConfig(arch="resnet", widths=[0.5, 1.0])
    net = NestedWidthMLP(4, num_features=4, hidden=(8, 8))
    with pytest.raises(MRLError, match=r"one fraction per hidden layer \(2\), got \[0.5\]"):
        net(torch.randn(1, 4), width=[0.5])
    with pytest.raises(MRLError, match=r"every width must be a finite number > 0 and <= 1, got 0"):
        net(torch.randn(1, 4), width=0)
    with pytest.raises(MRLError, match="width applies to a nested-width backbone, not MLP"):
        MatryoshkaClassifier(MLP(4, 8, hidden=(8,)), 2, [8])(torch.randn(2, 4), width=0.5)


@pytest.mark.parametrize(
    ("command", "message"),
    [
        (["train", "--arch", "mlp", "--widths", "0,0.5,1"], "Error: every width must be a finite number > 0 and <= 1, got 0.0"),
        (["train", "--arch", "mlp", "--widths", "0.5,2"], "Error: every width must be a finite number > 0 and <= 1, got 2.0"),
        (["train", "--arch", "mlp", "--widths", "1,0.5"], "Error: widths must be strictly ascending, got [1.0, 0.5]"),
        (["lm", "train", "--widths", "0.5,0.25,1"], "Error: widths must be strictly ascending, got [0.5, 0.25, 1.0]"),
        (["lm", "train", "--widths", "1.5"], "Error: every width must be a finite number > 0 and <= 1, got 1.5"),
        (["train", "--arch", "mlp", "--widths", "0.5,1", "--width-sampling", "sandwich", "--width-samples", "1"],
         "Error: width-samples must be an integer >= 0 and <= 0, got 1"),
        (["train", "--arch", "mlp", "--hidden", "64,-1"], "Error: every hidden size must be an integer >= 1"),
        (["train", "--arch", "mlp", "--width-norm", "batch"], "Error: width-norm, width-sampling, width-distill and width-weights apply to nested widths"),
    ],
)
def test_cli_bad_widths_give_one_error_line_and_write_nothing(tmp_path, command, message):
    out = tmp_path / "run"
    result = run_cli(*command, "--out", out)
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [result.output.strip().splitlines()[-1]]
    assert result.output.strip().startswith(message)
    assert not out.exists()


def brute_force_cascade_flops(stages_conf, thresholds, stage_flops):
    """Per sample: walk the stages, paying each stage run (skipping +inf ones), stop when confident."""
    costs = []
    for n in range(stages_conf.shape[1]):
        paid = 0.0
        for s in range(stages_conf.shape[0]):
            last = s == stages_conf.shape[0] - 1
            if last or thresholds[s] < np.inf:
                paid += stage_flops[s]
            if last or stages_conf[s, n] >= thresholds[s]:
                break
        costs.append(paid)
    return float(np.mean(costs))


def test_cascade_stages_are_ordered_by_flops_and_costs_match_a_brute_force_walk():
    rng = np.random.default_rng(0)
    widths, nesting = [0.25, 0.5, 1.0], [4, 8, 16]
    flops = np.array([[100, 140, 220], [180, 220 + 1, 300], [400, 440, 520]])
    order = pairs_by_flops(flops)
    assert sorted(flops.ravel().tolist()) == [flops[w, g] for w, g in order]
    labels = rng.integers(0, 4, 600)
    logits = rng.normal(size=(3, 3, 600, 4))
    for w in range(3):
        for g in range(3):  # accuracy grows with both width and size
            hit = rng.random(600) < 0.3 + 0.1 * w + 0.08 * g
            logits[w, g, hit, labels[hit]] += 3.0
    casc = WidthDimCascade(widths, nesting, flops, policy="budget").fit(logits, labels)
    assert list(casc.flops_) == sorted(casc.flops_) and casc.pairs_[-1] == (1.0, 16)
    assert all(flops[widths.index(w), nesting.index(m)] == f for (w, m), f in zip(casc.pairs_, casc.flops_))
    stats = casc.evaluate(logits, labels)
    stages = logits.reshape(9, 600, 4)[casc.stages_]
    conf = np.exp(stages.max(-1)) / np.exp(stages).sum(-1)
    thresholds = casc.classifier_.thresholds_
    assert stats["expected_flops"] == pytest.approx(brute_force_cascade_flops(conf, thresholds, casc.flops_))
    predicted, pairs = casc.predict(logits)
    chosen = [casc.pairs_.index(p) for p in pairs]
    assert stats["accuracy"] == pytest.approx(float((predicted == labels).mean()))
    np.testing.assert_array_equal(predicted, stages[chosen, np.arange(600)].argmax(-1))
    # the greedy policy is reused as it is: same thresholds as AdaptiveClassifier on the stages
    greedy = WidthDimCascade(widths, nesting, flops, policy="greedy").fit(logits, labels)
    reference = AdaptiveClassifier(greedy.flops_.astype(int).tolist(), policy="greedy").fit(stages_of(logits, greedy), labels)
    np.testing.assert_array_equal(greedy.classifier_.thresholds_, reference.thresholds_)


def test_per_width_cascade_runs_each_widths_most_accurate_pair_once():
    rng = np.random.default_rng(1)
    widths, nesting = [0.25, 0.5, 1.0], [4, 8, 16]
    flops = np.array([[100, 140, 220], [180, 221, 300], [400, 440, 520]])
    labels = rng.integers(0, 4, 600)
    logits = rng.normal(size=(3, 3, 600, 4))
    hit_rate = np.array([[0.5, 0.6, 0.55], [0.45, 0.7, 0.72], [0.8, 0.9, 0.85]])  # width 0.5 below 0.25 at size 4
    for w in range(3):
        for g in range(3):
            hit = rng.random(600) < hit_rate[w, g]
            logits[w, g, hit, labels[hit]] += 5.0
    accuracy = (logits.argmax(-1) == labels).mean(-1)
    casc = WidthDimCascade(widths, nesting, flops, stages="per-width", policy="budget").fit(logits, labels)
    # one pair per width, the most accurate one (a brute-force argmax), and the full model last
    expected = [(widths[w], nesting[int(np.argmax(accuracy[w]))]) for w in range(2)] + [(1.0, 16)]
    assert casc.pairs_ == expected and list(casc.flops_) == [flops[widths.index(w), nesting.index(m)] for w, m in expected]
    stats = casc.evaluate(logits, labels)
    conf = max_softmax_of(stages_of(logits, casc))
    assert stats["expected_flops"] == pytest.approx(
        brute_force_cascade_flops(conf, casc.classifier_.thresholds_, casc.flops_))
    with pytest.raises(MRLError, match="stages must be one of pareto, per-width, got 'all'"):
        WidthDimCascade(widths, nesting, flops, stages="all").fit(logits, labels)


def max_softmax_of(stages):
    return np.exp(stages.max(-1)) / np.exp(stages).sum(-1)


def stages_of(logits, casc):
    return logits.reshape(-1, *logits.shape[2:])[casc.stages_]


def test_cascade_refuses_bad_shapes_and_use_before_fit():
    casc = WidthDimCascade([0.5, 1.0], [4, 8], np.array([[1, 2], [3, 4]]))
    with pytest.raises(NotFittedError, match="call fit"):
        casc.predict(np.zeros((2, 2, 3, 2)))
    with pytest.raises(MRLError, match=r"logits must be \[W, G, N, C\] = \[2, 2, N, C\], got shape \(3, 2, 3, 2\)"):
        casc.fit(np.zeros((3, 2, 3, 2)), np.zeros(3, dtype=int))
    with pytest.raises(MRLError, match=r"flops must be \[W, G\] = \[2, 2\]"):
        WidthDimCascade([0.5, 1.0], [4, 8], np.array([1, 2])).fit(np.zeros((2, 2, 3, 2)), np.zeros(3, dtype=int))


def test_grid_eval_of_a_trained_nested_run(tmp_path, fashion_subset_dir):
    widths, nesting = [0.25, 0.5, 1.0], [8, 16, 32]
    config = TrainConfig(data="fashion-mnist", data_dir=str(fashion_subset_dir), arch="mlp", rep_dim=32,
                         nesting=nesting, widths=widths, hidden=[32, 32], epochs=1, batch_size=64, max_train=600)
    run = train(config, tmp_path / "run", progress=False)
    result = evaluate_run(run, save_logits=True, progress=False)
    grid = result["grid"]
    assert grid["widths"] == widths and grid["nesting"] == nesting
    for key in ("top1", "knn1", "val_top1", "flops"):
        assert list(grid[key]) == ["0.25", "0.5", "1.0"]
        assert all(list(row) == ["8", "16", "32"] for row in grid[key].values())
    # the full width of the grid is the run's own per-size evaluation (1-NN searched again here)
    assert grid["top1"]["1.0"] == result["top1"]
    _, model, data, device = load_run(run)
    assert evaluate_grid(model, data, [1.0], device)[0]["knn1"]["1.0"] == result["knn1"] == grid["knn1"]["1.0"]
    assert all(0 <= v <= 1 for row in grid["top1"].values() for v in row.values())
    # FLOPs by hand: 784 -> k -> k -> 32, then a head m x 10
    for w in widths:
        k = units_at(32, w)
        for m in nesting:
            assert grid["flops"][str(w)][str(m)] == 784 * k + k * k + k * 32 + m * 10
    for split in ("val", "test"):
        logits = load_npy(run / f"logits_widths_{split}.npy")
        assert logits.shape == (3, 3, len(data.split(split)), 10) and logits.dtype == np.float32
    # the saved full-width logits are the run's own
    np.testing.assert_allclose(load_npy(run / "logits_widths_test.npy")[-1], load_npy(run / "logits_test.npy"), rtol=1e-5, atol=1e-5)
    assert grid_flops(build_model(config, data), widths).tolist() == [
        [grid["flops"][str(w)][str(m)] for m in nesting] for w in widths
    ]


def test_lm_trains_every_width_and_eval_reports_perplexity_per_width_and_head(tmp_path):
    from test_lm import sentences

    corpus = tmp_path / "toy.txt"
    corpus.write_text("\n\n".join(sentences(200)) + "\n")
    out = tmp_path / "lm"
    result = run_cli("lm", "train", "--corpus", corpus, "--out", out, "--widths", "0.25,1", "--nesting", "4,16",
                     "--vocab-size", 64, "--d-model", 16, "--layers", 1, "--n-heads", 2, "--context", 8,
                     "--steps", 4, "--batch-size", 4, "--quiet")
    assert result.exit_code == 0, result.output
    result = run_cli("lm", "eval", out, "--quiet", "--max-tokens", 400)
    assert result.exit_code == 0, result.output
    assert "perplexity per (FFN width, head size)" in result.output
    summary = read_json(out / "eval.json")
    # trunk multiply-adds per token by hand (d=16, T=8, one block, FFN of 64 units): 4 d^2 + d (T + 1) + 2 d k
    assert summary["widths"]["0.25"]["trunk_flops"] == 4 * 16 * 16 + 16 * 9 + 2 * 16 * 16 == 1680
    assert summary["widths"]["1.0"]["trunk_flops"] == summary["trunk_flops"] == 4 * 16 * 16 + 16 * 9 + 2 * 16 * 64
    assert "1,680" in result.output and "3,216" in result.output
    assert list(summary["widths"]) == ["0.25", "1.0"]
    assert summary["widths"]["1.0"]["ppl"] == summary["ppl"]
    # the narrow width's perplexity is the model's own at that width, computed here independently
    model = load_model(out)
    windows = windows_of(torch.from_numpy(load_npy(out / "tokens_val.npy").astype(np.int64)), 8, 400)
    with torch.no_grad():
        logits = model(windows[:, :-1], 0.25)[0]  # head size 4
        nll = torch.nn.functional.cross_entropy(logits.reshape(-1, 64), windows[:, 1:].reshape(-1))
    assert summary["widths"]["0.25"]["ppl"]["4"] == pytest.approx(float(torch.exp(nll)), rel=1e-4)


def test_cli_eval_prints_the_width_by_dim_grid(tmp_path, fashion_subset_dir):
    out = tmp_path / "run"
    result = run_cli("train", "--data", "mnist", "--data-dir", fashion_subset_dir, "--arch", "mlp", "--rep-dim", 16,
                     "--nesting", "8,16", "--widths", "0.5,1", "--epochs", 1, "--max-train", 300, "--batch-size", 64,
                     "--quiet", "--out", out)
    assert result.exit_code == 0, result.output
    result = run_cli("eval", out, "--quiet")
    assert result.exit_code == 0, result.output
    for title in ("top-1 per (width, dim)", "1-NN per (width, dim)", "FLOPs per example per (width, dim)"):
        assert title in result.output
    assert "| m | w=0.5 | w=1.0 |" in result.output


@pytest.mark.parametrize("width", [0.125, 0.5, 1.0])
def test_a_sliced_lm_equals_a_separately_built_lm_with_smaller_ffns(width):
    torch.manual_seed(0)
    nested = MatryoshkaLM(LMConfig(widths=[0.125, 0.5, 1.0], **SMALL_LM)).eval()
    randomize(nested)
    k = units_at(4 * SMALL_LM["d_model"], width)
    small = MatryoshkaLM(LMConfig(ffn_hidden=k, **SMALL_LM)).eval()
    state = dict(nested.state_dict())
    for name, value in state.items():
        if name.endswith(("mlp.0.weight", "mlp.0.bias")):
            state[name] = value[:k]
        elif name.endswith("mlp.2.weight"):
            state[name] = value[:, :k]
    small.load_state_dict(state)
    ids = torch.randint(0, 40, (3, 8))
    with torch.no_grad():
        torch.testing.assert_close(nested(ids, width), small(ids), rtol=1e-5, atol=1e-5)
        # per-block widths act per block
        assert not torch.allclose(nested(ids, [0.125, 1.0]), nested(ids, [1.0, 0.125]))


def test_hidden_sizes_are_checked():
    with pytest.raises(MRLError, match=r"every hidden size must be an integer >= 1 and <= 65536, got 0"):
        TrainConfig(arch="mlp", hidden=[64, 0])
    with pytest.raises(MRLError, match=r"hidden must be a non-empty list of layer sizes, got \[\]"):
        TrainConfig(arch="mlp", hidden=[])
    with pytest.raises(MRLError, match="ffn_hidden must be an integer >= 1 and <= 1048576, got 0"):
        LMConfig(ffn_hidden=0, **SMALL_LM)


def test_rep_activation_none_drops_the_final_relu_of_the_nested_mlp():
    torch.manual_seed(0)
    net = NestedWidthMLP(6, num_features=8, hidden=(8,), rep_activation="none")
    z = net(torch.randn(16, 6), width=0.5)
    assert (z < 0).any() and len(net.proj) == 2
    with pytest.raises(MRLError, match="rep_activation must be one of relu, none, got 'gelu'"):
        NestedWidthMLP(6, rep_activation="gelu")


@pytest.mark.parametrize("norm", ["batch", "layer"])
@pytest.mark.parametrize("width", [0.25, 1.0, [0.5, 0.25]])
def test_a_representation_prefix_alone_equals_the_prefix_of_the_whole(norm, width):
    torch.manual_seed(0)
    net = NestedWidthMLP(20, num_features=12, hidden=(16, 24), norm=norm, widths=[0.25, 0.5, 1.0], rep_activation="relu")
    randomize(net)
    with torch.no_grad():
        for name, buffer in net.named_buffers():
            if "running_mean" in name:
                buffer.normal_()
            elif "running_var" in name:
                buffer.uniform_(0.5, 2.0)
    x = torch.randn(8, 20)
    net.eval()
    with torch.no_grad():
        whole = net(x, width=width)
        for m in (1, 5, 12):
            torch.testing.assert_close(net(x, width=width, size=m), whole[:, :m], rtol=1e-5, atol=1e-6)
    # FLOPs by hand: 20 -> k1 -> k2, then the representation's rows (the first m with BatchNorm, all 12 with LayerNorm)
    k1, k2 = net.units(width)
    for m in (1, 5, 12):
        rows = m if norm == "batch" else 12
        assert net.flops(width, size=m) == 20 * k1 + k1 * k2 + k2 * rows
        assert sum(net.flops_parts(width, size=m).values()) == net.flops(width, size=m)
    assert net.flops(width) == 20 * k1 + k1 * k2 + k2 * 12
    for bad in (0, 13, 2.5, True):
        with pytest.raises(MRLError, match=rf"size must be an integer in \[1, 12\], got {bad!r}"):
            net(x, width=width, size=bad)
    if norm == "batch":
        net.train()
        with pytest.raises(MRLError, match="runs in eval mode only"):
            net(x, width=width, size=4)


def test_shared_parts_name_what_widths_can_reuse():
    net = NestedWidthMLP(10, num_features=8, hidden=(8, 8), norm="batch", widths=[0.5, 1.0])
    small, large, mixed = net.flops_parts(0.5, size=2), net.flops_parts(1.0, size=4), net.flops_parts([1.0, 0.5], size=2)
    # the first layer's product is one part for every width; the rest is the width's own
    assert small == {"layer 1": 10 * 4, "width 0.5: layers 2-L": 4 * 4, "width 0.5: representation": 4 * 2}
    assert large == {"layer 1": 10 * 8, "width 1: layers 2-L": 8 * 8, "width 1: representation": 8 * 4}
    assert mixed == {"layer 1": 10 * 8, "width 1,0.5: layers 2-L": 8 * 4, "width 1,0.5: representation": 4 * 2}
    # mixes of the same fractions in another order compute different things: never one part
    assert set(net.flops_parts([0.5, 1.0])) - {"layer 1"} == {"width 0.5,1: layers 2-L", "width 0.5,1: representation"}
    for tied in (False, True):
        model = MatryoshkaClassifier(net, 3, [2, 4], tied=tied)
        grid = grid_parts(model, [0.5, 1.0])
        head = "width 1: head" if tied else "width 1: head 4"
        assert grid[1][1] == {**large, head: 4 * 3}
        assert grid_flops(model, [0.5, 1.0]).tolist() == [[sum(p.values()) for p in row] for row in grid]


def brute_force_shared_flops(stages_conf, thresholds, parts):
    """Mean FLOPs per sample of a cascade walked sample by sample: each part paid once, at the most any stage run needs."""
    costs = []
    for n in range(stages_conf.shape[1]):
        paid: dict[str, int] = {}
        for s in range(stages_conf.shape[0]):
            last = s == stages_conf.shape[0] - 1
            if last or thresholds[s] < np.inf:
                for name, flops in parts[s].items():
                    paid[name] = max(paid.get(name, 0), flops)
            if last or stages_conf[s, n] >= thresholds[s]:
                break
        costs.append(sum(paid.values()))
    return float(np.mean(costs))


def test_cascade_with_shared_parts_pays_each_part_once_as_a_brute_force_walk():
    rng = np.random.default_rng(3)
    torch.manual_seed(0)
    net = NestedWidthMLP(30, num_features=16, hidden=(16, 16), norm="batch", widths=[0.25, 0.5, 1.0])
    model = MatryoshkaClassifier(net, 4, [4, 8, 16])
    widths, nesting = [0.25, 0.5, 1.0], [4, 8, 16]
    parts, flops = grid_parts(model, widths), grid_flops(model, widths)
    labels = rng.integers(0, 4, 600)
    logits = rng.normal(size=(3, 3, 600, 4))
    for w in range(3):
        for g in range(3):
            hit = rng.random(600) < 0.3 + 0.15 * w + 0.05 * g
            logits[w, g, hit, labels[hit]] += 3.0
    for stages in ("pareto", "per-width"):
        casc = WidthDimCascade(widths, nesting, flops, policy="budget", stages=stages, parts=parts).fit(logits, labels)
        stage_parts = [parts[widths.index(w)][nesting.index(m)] for w, m in casc.pairs_]
        conf = max_softmax_of(stages_of(logits, casc))
        thresholds = casc.classifier_.thresholds_
        shared = casc.evaluate(logits, labels)["expected_flops"]
        assert shared == pytest.approx(brute_force_shared_flops(conf, thresholds, stage_parts))
        # without the parts every stage run is paid in full: never less than with them
        assert brute_force_cascade_flops(conf, thresholds, casc.flops_) >= shared
    # the greedy policy's thresholds do not depend on costs; its expected FLOPs do
    greedy = WidthDimCascade(widths, nesting, flops, policy="greedy", parts=parts).fit(logits, labels)
    conf = max_softmax_of(stages_of(logits, greedy))
    stage_parts = [parts[widths.index(w)][nesting.index(m)] for w, m in greedy.pairs_]
    assert greedy.evaluate(logits, labels)["expected_flops"] == pytest.approx(
        brute_force_shared_flops(conf, greedy.classifier_.thresholds_, stage_parts))


def test_cascade_refuses_parts_that_do_not_sum_to_the_flops():
    parts = [[{"a": 1}, {"a": 2}], [{"a": 3}, {"a": 4, "b": 1}]]
    logits, labels = np.zeros((2, 2, 3, 2)), np.zeros(3, dtype=int)
    with pytest.raises(MRLError, match=r"the parts of pair \(1.0, 8\) sum to 5, not its FLOPs 4"):
        WidthDimCascade([0.5, 1.0], [4, 8], np.array([[1, 2], [3, 4]]), parts=parts).fit(logits, labels)
    with pytest.raises(MRLError, match=r"parts must be \[W\]\[G\] = \[2\]\[2\] dicts"):
        WidthDimCascade([0.5, 1.0], [4, 8], np.array([[1, 2], [3, 4]]), parts=[[{"a": 1}]]).fit(logits, labels)


def test_lm_width_weights_scale_each_widths_loss_and_bad_ones_write_nothing(tmp_path):
    from test_lm import sentences

    from mrl.lm.train import TrainConfig as LMTrainConfig
    from mrl.lm.train import prepare_run
    from mrl.lm.train import train as lm_train

    corpus = tmp_path / "toy.txt"
    corpus.write_text("\n\n".join(sentences(200)) + "\n")
    shape = dict(vocab_size=64, context=8, d_model=16, n_layers=1, n_heads=2, nesting=[4, 16], widths=[0.25, 1.0])
    states = {}
    for name, weights in (("none", None), ("ones", [1.0, 1.0]), ("more", [1.0, 3.0])):
        prepare_run(tmp_path / name, str(corpus), LMConfig(**shape), LMTrainConfig(steps=3, batch_size=4, width_weights=weights),
                    tokens_from=None if name == "none" else tmp_path / "none")
        states[name] = lm_train(tmp_path / name, progress=False).state_dict()
    assert all(torch.equal(states["none"][k], states["ones"][k]) for k in states["none"])
    assert any(not torch.equal(states["none"][k], states["more"][k]) for k in states["none"])
    for weights, message in (([1.0], r"width weights need one value per width \(2\), got \[1.0\]"),
                             ("1,x", "width-weights must be comma-separated numbers, got '1,x'"),
                             ([1.0, 0.0], r"every width weight must be .*> 0.*, got 0")):
        with pytest.raises(MRLError, match=message):
            prepare_run(tmp_path / "bad", str(corpus), LMConfig(**shape), LMTrainConfig(steps=3, width_weights=weights))
        assert not (tmp_path / "bad").exists()
    out = tmp_path / "cli-bad"
    result = run_cli("lm", "train", "--corpus", corpus, "--out", out, "--nesting", "4,16", "--vocab-size", 64, "--d-model", 16,
                     "--layers", 1, "--n-heads", 2, "--context", 8, "--steps", 2, "--width-weights", "1,2", "--quiet")
    assert result.exit_code == 1 and result.output.strip().splitlines() == [
        "Error: width-weights apply to a model with nested widths; pass --widths"]
    assert not out.exists()
