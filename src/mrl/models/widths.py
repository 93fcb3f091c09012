"""Nested widths: the first w units of every hidden layer form a working smaller model (MatFormer).

MatFormer (Devvrit et al., 2023) carries the Matryoshka idea (Kusupati et al., NeurIPS 2022,
section 3, and the "other bottlenecks" of its conclusion) from the output representation to the
hidden width of feed-forward blocks: one set of weights holds models of widths w_1 < ... < w_k = 1,
and the width-w model is run by slicing every weight matrix to its first round(w * h) hidden units
(a view, never a copy). Training sums the loss of every width (MatFormer trains all granularities
jointly); at inference each layer may take its own width ("mix'n'match").

Widths are fractions of each hidden layer's size: strictly ascending, in (0, 1], ending at 1 so
that the full model is one of them.

Normalisation (``norm``). A BatchNorm's running statistics of a unit depend on the widths of the
layers below it, so one set of statistics cannot serve every width. Two answers:

* ``"layer"``: LayerNorm over the active units. It keeps no running state, so the width-w slice is
  exactly a smaller LayerNorm model at any per-layer mix; but it departs from the plain
  :class:`~mrl.models.mlp.MLP`'s BatchNorm recipe.
* ``"batch"``: switchable BatchNorm (Slimmable Networks, Yu et al., ICLR 2019, section 3.2): every
  norm layer holds one private BatchNorm (statistics, gain and bias) per trained width, the linear
  weights stay shared. The width-w slice is exactly the plain MLP of that width with width w's
  BatchNorms. Each layer picks the BatchNorm of its own width, so only trained widths run, and a
  per-layer mix uses statistics gathered below at that layer's width (an approximation: the
  statistics of a mix were never collected). The representation's BatchNorm switches with the last
  hidden layer's width, as its input statistics depend on it.

Sampling widths per step (:func:`widths_for_step`): ``"all"`` sums the loss of every width
(MatFormer); ``"random"`` draws k widths; ``"sandwich"`` always takes the smallest and the full
width plus k drawn from the others (the sandwich rule of Universally Slimmable Networks, Yu &
Huang, ICCV 2019: the extremes bound every width in between).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mrl.errors import MRLError
from mrl.models.mlp import REP_ACTIVATIONS
from mrl.validation import check_ascending, check_choice, check_float, split_numbers

WidthSpec = float | Sequence[float] | None
"""A width to run: None (full), one fraction for every layer, or one fraction per hidden layer."""

NORMS = ("layer", "batch")
WIDTH_SAMPLING = ("all", "random", "sandwich")


def validate_widths(widths: Iterable[float]) -> list[float]:
    """Check a list of width fractions: each in (0, 1], strictly ascending, the last exactly 1.

    Raises:
        MRLError: naming the offending value.

    Example:
        >>> validate_widths([0.25, 0.5, 1])
        [0.25, 0.5, 1.0]
    """
    try:
        values = list(widths)
    except TypeError:
        raise MRLError(f"widths must be a list of fractions in (0, 1], got {widths!r}") from None
    if not values:
        raise MRLError("widths must not be empty")
    out = check_ascending("widths", values, min=0, max=1, element=check_float, each="every width", min_open=True)
    if out[-1] != 1.0:
        raise MRLError(f"the last width must be 1 (the full model), got {out}")
    return out


def parse_widths(text: str | Sequence[float] | None) -> list[float] | None:
    """Parse ``"0.25,0.5,1"`` (or a sequence) into validated widths; None or "" stays None.

    Example:
        >>> parse_widths("0.125, 0.25,0.5,1")
        [0.125, 0.25, 0.5, 1.0]
    """
    if text is None or (isinstance(text, str) and not text.strip()):
        return None
    if isinstance(text, str):
        return validate_widths(split_numbers(text, float, f"widths must be comma-separated fractions, got {text!r}"))
    return validate_widths(text)


def parse_width_weights(value: str | Sequence[float] | None, count: int | None = None) -> list[float] | None:
    """Parse per-width loss weights (``"2,1,1,1"`` or a list): positive numbers, ``count`` of them
    when given (one per width); None stays None.

    Example:
        >>> parse_width_weights("2, 1,1", count=3)
        [2.0, 1.0, 1.0]
    """
    if value is None:
        return None
    if isinstance(value, str):
        value = split_numbers(value, float, f"width-weights must be comma-separated numbers, got {value!r}")
    if not isinstance(value, list) or not value or (count is not None and len(value) != count):
        per_width = "" if count is None else f" ({count})"
        raise MRLError(f"width weights need one value per width{per_width}, got {value!r}")
    return [check_float("every width weight", w, min=0, max=1e6, min_open=True) for w in value]


def units_at(hidden: int, fraction: float) -> int:
    """Active units of a hidden layer of ``hidden`` units at width ``fraction`` (at least 1).

    Example:
        >>> units_at(512, 0.125), units_at(10, 0.01)
        (64, 1)
    """
    return max(1, int(round(hidden * fraction)))


def per_layer(width: WidthSpec, n_layers: int) -> list[float]:
    """Expand a width spec to one fraction per hidden layer; each must lie in (0, 1].

    Example:
        >>> per_layer(0.5, 3), per_layer([0.25, 1.0], 2), per_layer(None, 1)
        ([0.5, 0.5, 0.5], [0.25, 1.0], [1.0])
    """
    if width is None:
        return [1.0] * n_layers
    values = [width] * n_layers if isinstance(width, (int, float)) else list(width)
    if len(values) != n_layers:
        raise MRLError(f"per-layer widths need one fraction per hidden layer ({n_layers}), got {values}")
    return [check_float("every width", w, min=0, max=1, min_open=True) for w in values]


def sliced_linear(layer: nn.Linear, x: torch.Tensor, out_units: int | None = None) -> torch.Tensor:
    """``layer`` restricted to the first ``x.shape[-1]`` inputs and the first ``out_units`` outputs.

    The weight slice W[:out, :in] is a view: no copy, and its gradient lands in the full weight.

    Shape:
        x [..., in'] (in' <= in_features) -> [..., out_units or out_features]
    """
    weight = layer.weight[:out_units, : x.shape[-1]]
    bias = None if layer.bias is None else layer.bias[:out_units]
    return F.linear(x, weight, bias)


def max_width_samples(widths: Sequence[float], sampling: str) -> int:
    """The largest k that ``sampling`` allows over ``widths`` (how many widths can be drawn)."""
    return len(widths) if sampling == "random" else max(0, len(widths) - 2)


def widths_for_step(widths: Sequence[float], sampling: str, samples: int, seed: int, step: int) -> list[float]:
    """The widths trained at optimizer step ``step``, ascending; a pure function of (seed, step).

    Being a function of the step (not of a generator's running state) keeps a resumed run exact.

    Args:
        widths: the validated trained widths, ascending.
        sampling: ``"all"`` (every width), ``"random"`` (``samples`` widths drawn without
            replacement) or ``"sandwich"`` (smallest, largest and ``samples`` drawn from between).
        samples: k, at most :func:`max_width_samples`.

    Example:
        >>> widths_for_step([0.25, 0.5, 1.0], "all", 1, seed=0, step=7)
        [0.25, 0.5, 1.0]
        >>> widths_for_step([0.125, 0.25, 0.5, 1.0], "sandwich", 0, seed=0, step=7)
        [0.125, 1.0]
    """
    check_choice("width sampling", sampling, WIDTH_SAMPLING)
    if sampling == "all":
        return list(widths)
    limit = max_width_samples(widths, sampling)
    if isinstance(samples, bool) or not isinstance(samples, int) or not 0 <= samples <= limit:
        raise MRLError(f"width samples must be an integer in [0, {limit}] for {sampling} over {list(widths)}, got {samples!r}")
    rng = np.random.default_rng([seed, step])
    pool = list(widths) if sampling == "random" else list(widths[1:-1])
    drawn = {pool[i] for i in rng.choice(len(pool), size=samples, replace=False)}
    if sampling == "sandwich":
        drawn |= {widths[0], widths[-1]}
    return sorted(drawn)


class SwitchableBatchNorm(nn.ModuleList):
    """One private ``BatchNorm1d`` per width (Slimmable Networks' switchable BN); pick one by index.

    Args:
        sizes: the feature count of each width's BatchNorm.

    Shape:
        forward(x, index): [B, sizes[index]] -> [B, sizes[index]]
    """

    def __init__(self, sizes: Sequence[int]) -> None:
        super().__init__(nn.BatchNorm1d(n) for n in sizes)

    def forward(self, x: torch.Tensor, index: int) -> torch.Tensor:
        return self[index](x)


class NestedWidthMLP(nn.Module):
    """Linear -> norm -> ReLU hidden blocks whose first w units form a smaller MLP.

    The representation layer (Linear -> norm -> ReLU to d units) is never narrowed: d is the
    Matryoshka axis, nested separately by the heads. Parameter names follow
    :class:`~mrl.models.mlp.MLP` (``body.{3i}``, ``body.{3i+1}``, ``proj.0``, ``proj.1``); with
    ``norm="batch"`` each norm is a :class:`SwitchableBatchNorm` (``body.{3i+1}.{j}`` is width j's).

    Args:
        in_features: input size (images are flattened).
        num_features: representation size d.
        hidden: full sizes of the hidden layers.
        rep_activation: ``"relu"`` or ``"none"`` after the representation's norm, as for
            :class:`~mrl.models.mlp.MLP`.
        norm: ``"layer"`` (LayerNorm, any width runs) or ``"batch"`` (switchable BatchNorm, the
            trained ``widths`` run); see the module docstring.
        widths: the trained widths; needed by ``norm="batch"`` (one BatchNorm each).

    Shape:
        forward_features(x, width, size): [B, in_features] or [B, *image] -> [B, size or d]

    Example:
        >>> net = NestedWidthMLP(12, num_features=8, hidden=(16, 16))
        >>> x = torch.randn(3, 12)
        >>> net.forward_features(x, width=0.25).shape, net.units(0.25), net.units([0.5, 1.0])
        (torch.Size([3, 8]), [4, 4], [8, 16])
        >>> bn = NestedWidthMLP(12, num_features=8, hidden=(16, 16), norm="batch", widths=[0.5, 1])
        >>> bn.forward_features(x, width=0.5).shape, type(bn.body[1][0]).__name__, bn.body[1][0].num_features
        (torch.Size([3, 8]), 'BatchNorm1d', 8)
    """

    def __init__(
        self, in_features: int, num_features: int = 2048, hidden: Sequence[int] = (512, 512), rep_activation: str = "relu",
        norm: str = "layer", widths: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        check_choice("rep_activation", rep_activation, REP_ACTIVATIONS)
        check_choice("norm", norm, NORMS)
        for name, value in (("in_features", in_features), ("num_features", num_features)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise MRLError(f"{name} must be a positive integer, got {value!r}")
        hidden = list(hidden)
        if not hidden or any(isinstance(h, bool) or not isinstance(h, int) or h < 1 for h in hidden):
            raise MRLError(f"hidden must be a non-empty list of positive integers, got {hidden}")
        if norm == "batch" and widths is None:
            raise MRLError("norm batch (switchable BatchNorm) needs the trained widths, one BatchNorm each")
        self.in_features = in_features
        self.num_features = num_features
        self.hidden = hidden
        self.norm = norm
        self.widths = None if widths is None else validate_widths(widths)

        def make_norm(size: int) -> nn.Module:
            if norm == "layer":
                return nn.LayerNorm(size)
            return SwitchableBatchNorm([units_at(size, w) for w in self.widths])

        layers: list[nn.Module] = []
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), make_norm(h), nn.ReLU()]
            width = h
        self.body = nn.Sequential(*layers)
        last = [nn.ReLU()] if rep_activation == "relu" else []
        rep_norm = nn.LayerNorm(num_features) if norm == "layer" else SwitchableBatchNorm([num_features] * len(self.widths))
        self.proj = nn.Sequential(nn.Linear(width, num_features), rep_norm, *last)

    def units(self, width: WidthSpec = None) -> list[int]:
        """Active units of each hidden layer at ``width``."""
        return [units_at(h, w) for h, w in zip(self.hidden, per_layer(width, len(self.hidden)))]

    @property
    def separable(self) -> bool:
        """Whether z[:m] needs only the first m rows of the representation layer.

        Switchable BatchNorm normalises each unit on its own, so yes; LayerNorm normalises over all
        d units, so every row must run whatever prefix is used.
        """
        return self.norm == "batch"

    def rep_rows(self, size: int | None = None) -> int:
        """Rows of the representation layer that z[:size] needs (all d for None)."""
        if size is None:
            return self.num_features
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or not 1 <= size <= self.num_features:
            raise MRLError(f"size must be an integer in [1, {self.num_features}], got {size!r}")
        return int(size) if self.separable else self.num_features

    def flops(self, width: WidthSpec = None, size: int | None = None) -> int:
        """Multiply-adds per example of the linear layers that give z[:size] at ``width`` (norms
        and ReLUs not counted).

        Example:
            >>> NestedWidthMLP(10, num_features=4, hidden=(8,)).flops(0.5)
            56
            >>> NestedWidthMLP(10, num_features=4, hidden=(8,), norm="batch", widths=[0.5, 1]).flops(0.5, size=2)
            48
        """
        return sum(self.flops_parts(width, size).values())

    def width_label(self, width: WidthSpec = None) -> str:
        """``"width 0.5"`` for one fraction everywhere, ``"width 1,0.5"`` for a per-layer mix: the
        prefix of the :meth:`flops_parts` keys that only this width's submodels share.

        Example:
            >>> NestedWidthMLP(4, num_features=4, hidden=(8, 8)).width_label([1.0, 0.5])
            'width 1,0.5'
        """
        fractions = per_layer(width, len(self.hidden))
        return "width " + (f"{fractions[0]:g}" if len(set(fractions)) == 1 else ",".join(f"{w:g}" for w in fractions))

    def flops_parts(self, width: WidthSpec = None, size: int | None = None) -> dict[str, int]:
        """:meth:`flops` split into the parts that submodels can share, keyed by what they compute.

        Two submodels with a part of the same key share it: the one that needs less of it uses a
        prefix of what the other computes (so a cascade pays the larger once; see
        :class:`~mrl.adaptive.cascading.SharedCosts`):

        * ``"layer 1"``: the first layer's product W_1[:k] x before its norm, the same rows for every
          width (the norm after it is per width, the product is not);
        * ``"width w: layers 2-L"``: the other hidden layers at w (their inputs differ between
          widths, so nothing is shared across widths);
        * ``"width w: representation"``: the representation layer's rows that z[:size] needs.

        Example:
            >>> net = NestedWidthMLP(10, num_features=4, hidden=(8, 8), norm="batch", widths=[0.5, 1])
            >>> net.flops_parts(0.5, size=2)
            {'layer 1': 40, 'width 0.5: layers 2-L': 16, 'width 0.5: representation': 8}
        """
        units = self.units(width)
        key = self.width_label(width)
        sizes = [self.in_features, *units]
        return {
            "layer 1": self.in_features * units[0],
            f"{key}: layers 2-L": sum(a * b for a, b in zip(sizes[1:], sizes[2:])),
            f"{key}: representation": units[-1] * self.rep_rows(size),
        }

    def _norm_index(self, fraction: float) -> int:
        """Which switchable BatchNorm serves a layer at ``fraction`` (a trained width)."""
        if fraction not in self.widths:
            raise MRLError(f"a switchable-BatchNorm model runs its trained widths {self.widths} only, got {fraction}")
        return self.widths.index(fraction)

    def forward_features(self, x: torch.Tensor, width: WidthSpec = None, size: int | None = None) -> torch.Tensor:
        """The representation z at ``width``; with ``size``, z[:size] alone, from the representation
        layer's first rows where the norm allows (:attr:`separable`; in eval mode, as the running
        statistics are sliced), else from the whole z."""
        x = x.flatten(1)
        if x.shape[1] != self.in_features:
            raise MRLError(f"MLP expects {self.in_features} input features, got shape {tuple(x.shape)}")
        fractions = per_layer(width, len(self.hidden))
        for i, (h, w) in enumerate(zip(self.hidden, fractions)):
            linear, norm = self.body[3 * i], self.body[3 * i + 1]
            k = units_at(h, w)
            x = sliced_linear(linear, x, k)
            if self.norm == "layer":
                x = F.layer_norm(x, (k,), norm.weight[:k], norm.bias[:k], norm.eps)
            else:
                x = norm(x, self._norm_index(w))
            x = F.relu(x)
        rows = self.rep_rows(size)
        if rows < self.num_features:
            if self.training:
                raise MRLError("a prefix of the representation alone (size) runs in eval mode only")
            bn = self.proj[1][self._norm_index(fractions[-1])]
            x = sliced_linear(self.proj[0], x, rows)
            x = F.batch_norm(x, bn.running_mean[:rows], bn.running_var[:rows], bn.weight[:rows], bn.bias[:rows], False, 0.0, bn.eps)
            return self.proj[2:](x)
        x = sliced_linear(self.proj[0], x)
        x = self.proj[1](x) if self.norm == "layer" else self.proj[1](x, self._norm_index(fractions[-1]))
        return self.proj[2:](x)[:, :size]

    forward = forward_features


class NestedFFN(nn.Sequential):
    """A transformer feed-forward block ``Linear(d, h) -> GELU -> Linear(h, d)`` with nested width.

    At width w only the first round(w * h) hidden units run: the rows W_1[:k] and columns
    W_2[:, :k] (views). It is an ``nn.Sequential`` of the same three modules as nanoGPT's MLP, so
    parameter names (``0.weight``, ``2.weight``) and the full-width output are those of the plain
    block, and checkpoints of either load into the other.

    Shape:
        [..., d] -> [..., d]

    Example:
        >>> ffn = NestedFFN(8, 32)
        >>> x = torch.randn(2, 5, 8)
        >>> torch.equal(ffn(x), ffn(x, width=1.0)), ffn(x, width=0.25).shape
        (True, torch.Size([2, 5, 8]))
    """

    def __init__(self, d_model: int, hidden: int) -> None:
        super().__init__(nn.Linear(d_model, hidden), nn.GELU(), nn.Linear(hidden, d_model))
        self.hidden = hidden

    def forward(self, x: torch.Tensor, width: float | None = None) -> torch.Tensor:
        if width is None or width == 1.0:
            return super().forward(x)
        k = units_at(self.hidden, per_layer(width, 1)[0])
        return sliced_linear(self[2], self[1](sliced_linear(self[0], x, k)))

    def flops(self, width: float | None = None) -> int:
        """Multiply-adds per token at ``width``: 2 * d * k."""
        k = units_at(self.hidden, per_layer(width, 1)[0])
        return 2 * self[0].in_features * k
