"""Nested widths: the first w units of every hidden layer form a working smaller model (MatFormer).

MatFormer (Devvrit et al., 2023) carries the Matryoshka idea (Kusupati et al., NeurIPS 2022,
section 3, and the "other bottlenecks" of its conclusion) from the output representation to the
hidden width of feed-forward blocks: one set of weights holds models of widths w_1 < ... < w_k = 1,
and the width-w model is run by slicing every weight matrix to its first round(w * h) hidden units
(a view, never a copy). Training sums the loss of every width (MatFormer trains all granularities
jointly); at inference each layer may take its own width ("mix'n'match").

Widths are fractions of each hidden layer's size: strictly ascending, in (0, 1], ending at 1 so
that the full model is one of them.

Normalisation. The MLP here uses LayerNorm over the active units where the plain
:class:`~mrl.models.mlp.MLP` uses BatchNorm: a BatchNorm's running statistics of a unit depend on
the widths of the layers below it, so one set of statistics cannot serve every width (slimmable
networks, Yu et al. 2019, needed a private BatchNorm per width for this), while LayerNorm keeps no
running state and the width-w slice is exactly a smaller LayerNorm model, at any per-layer mix.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mrl.errors import MRLError
from mrl.models.mlp import REP_ACTIVATIONS
from mrl.validation import check_ascending, check_choice, check_float

WidthSpec = float | Sequence[float] | None
"""A width to run: None (full), one fraction for every layer, or one fraction per hidden layer."""


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
        try:
            values = [float(part) for part in text.split(",") if part.strip()]
        except ValueError:
            raise MRLError(f"widths must be comma-separated fractions, got {text!r}") from None
        return validate_widths(values)
    return validate_widths(text)


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


class NestedWidthMLP(nn.Module):
    """Linear -> LayerNorm -> ReLU hidden blocks whose first w units form a smaller MLP.

    The representation layer (Linear -> LayerNorm -> ReLU to d units) is never narrowed: d is the
    Matryoshka axis, nested separately by the heads. Parameter names follow
    :class:`~mrl.models.mlp.MLP` (``body.{3i}``, ``body.{3i+1}``, ``proj.0``, ``proj.1``).

    Args:
        in_features: input size (images are flattened).
        num_features: representation size d.
        hidden: full sizes of the hidden layers.
        rep_activation: ``"relu"`` or ``"none"`` after the representation's norm, as for
            :class:`~mrl.models.mlp.MLP`.

    Shape:
        forward_features(x, width): [B, in_features] or [B, *image] -> [B, d]

    Example:
        >>> net = NestedWidthMLP(12, num_features=8, hidden=(16, 16))
        >>> x = torch.randn(3, 12)
        >>> net.forward_features(x, width=0.25).shape, net.units(0.25), net.units([0.5, 1.0])
        (torch.Size([3, 8]), [4, 4], [8, 16])
    """

    def __init__(
        self, in_features: int, num_features: int = 2048, hidden: Sequence[int] = (512, 512), rep_activation: str = "relu"
    ) -> None:
        super().__init__()
        check_choice("rep_activation", rep_activation, REP_ACTIVATIONS)
        for name, value in (("in_features", in_features), ("num_features", num_features)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise MRLError(f"{name} must be a positive integer, got {value!r}")
        hidden = list(hidden)
        if not hidden or any(isinstance(h, bool) or not isinstance(h, int) or h < 1 for h in hidden):
            raise MRLError(f"hidden must be a non-empty list of positive integers, got {hidden}")
        self.in_features = in_features
        self.num_features = num_features
        self.hidden = hidden
        layers: list[nn.Module] = []
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.LayerNorm(h), nn.ReLU()]
            width = h
        self.body = nn.Sequential(*layers)
        last = [nn.ReLU()] if rep_activation == "relu" else []
        self.proj = nn.Sequential(nn.Linear(width, num_features), nn.LayerNorm(num_features), *last)

    def units(self, width: WidthSpec = None) -> list[int]:
        """Active units of each hidden layer at ``width``."""
        return [units_at(h, w) for h, w in zip(self.hidden, per_layer(width, len(self.hidden)))]

    def flops(self, width: WidthSpec = None) -> int:
        """Multiply-adds per example of the linear layers at ``width`` (norms and ReLUs not counted).

        Example:
            >>> NestedWidthMLP(10, num_features=4, hidden=(8,)).flops(0.5)
            56
        """
        sizes = [self.in_features, *self.units(width), self.num_features]
        return sum(a * b for a, b in zip(sizes, sizes[1:]))

    def forward_features(self, x: torch.Tensor, width: WidthSpec = None) -> torch.Tensor:
        x = x.flatten(1)
        if x.shape[1] != self.in_features:
            raise MRLError(f"MLP expects {self.in_features} input features, got shape {tuple(x.shape)}")
        for i, k in enumerate(self.units(width)):
            linear, norm = self.body[3 * i], self.body[3 * i + 1]
            x = sliced_linear(linear, x, k)
            x = F.relu(F.layer_norm(x, (k,), norm.weight[:k], norm.bias[:k], norm.eps))
        return self.proj[1:](sliced_linear(self.proj[0], x))

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
