"""A plain MLP backbone for feature vectors (and flattened images)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from mrl.errors import MRLError
from mrl.validation import check_choice

REP_ACTIVATIONS = ("relu", "none")


class MLP(nn.Module):
    """Linear -> BatchNorm -> ReLU blocks; the last block's output (d units) is the representation.

    z is non-negative like the paper's pooled ResNet-50 features, and not confined to the span of
    the previous layer (a final purely linear layer to d > hidden width would give z of rank
    "hidden", so prefixes beyond that width would add nothing).

    Args:
        in_features: input size (images are flattened).
        num_features: representation size d.
        hidden: widths of the hidden layers.
        rep_activation: ``"relu"`` ends with Linear -> BatchNorm -> ReLU (z >= 0); ``"none"`` drops
            that last ReLU, so a short prefix is no longer all zero for many inputs (a zero prefix
            has no direction for cosine 1-NN, and its head sees no signal).

    Shape:
        [B, in_features] or [B, *image] -> [B, d]
    """

    def __init__(
        self, in_features: int, num_features: int = 2048, hidden: Sequence[int] = (512, 512), rep_activation: str = "relu"
    ) -> None:
        super().__init__()
        for name, value in (("in_features", in_features), ("num_features", num_features)):
            if not isinstance(value, int) or value < 1:
                raise MRLError(f"{name} must be a positive integer, got {value!r}")
        check_choice("rep_activation", rep_activation, REP_ACTIVATIONS)
        self.in_features = in_features
        self.num_features = num_features
        layers: list[nn.Module] = []
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.BatchNorm1d(h), nn.ReLU(inplace=True)]
            width = h
        self.body = nn.Sequential(*layers)
        last = [nn.ReLU(inplace=True)] if rep_activation == "relu" else []
        self.proj = nn.Sequential(nn.Linear(width, num_features), nn.BatchNorm1d(num_features), *last)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        if x.shape[1] != self.in_features:
            raise MRLError(f"MLP expects {self.in_features} input features, got shape {tuple(x.shape)}")
        return self.proj(self.body(x))

    forward = forward_features
