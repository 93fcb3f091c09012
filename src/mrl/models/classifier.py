"""A backbone with Matryoshka heads: the model that MRL, MRL-E and FF runs train."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from mrl.errors import MRLError
from mrl.heads import MatryoshkaLinear
from mrl.models.widths import NestedWidthMLP, WidthSpec


class MatryoshkaClassifier(nn.Module):
    """``backbone.forward_features`` followed by a :class:`~mrl.heads.MatryoshkaLinear`.

    An FF model (the paper's fixed-feature baseline) is the same thing with a backbone whose
    representation has exactly m dims and a nesting of ``[m]``.

    With a nested-width backbone (:class:`~mrl.models.widths.NestedWidthMLP`), ``width`` picks
    the submodel: one fraction for every hidden layer or one per layer; None is the full model.

    Shape:
        forward: input -> logits [G, B, C]; embed: input -> z [B, d]
    """

    def __init__(self, backbone: nn.Module, num_classes: int, nesting: Sequence[int], tied: bool = False) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = MatryoshkaLinear(backbone.num_features, num_classes, nesting, tied=tied)

    @property
    def nesting(self) -> list[int]:
        return self.head.nesting

    def embed(self, x: torch.Tensor, width: WidthSpec = None) -> torch.Tensor:
        if width is None:
            return self.backbone.forward_features(x)
        if not isinstance(self.backbone, NestedWidthMLP):
            raise MRLError(f"width applies to a nested-width backbone, not {type(self.backbone).__name__}")
        return self.backbone.forward_features(x, width=width)

    def forward(self, x: torch.Tensor, width: WidthSpec = None) -> torch.Tensor:
        return self.head(self.embed(x, width))
