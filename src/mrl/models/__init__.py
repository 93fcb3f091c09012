"""Backbones, looked up by name (timm's convention).

Every backbone has ``forward_features(x) -> [B, num_features]`` and ``num_features`` (the
representation size d). :class:`MatryoshkaClassifier` puts Matryoshka heads on one.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from mrl.errors import MRLError
from mrl.models.classifier import MatryoshkaClassifier
from mrl.models.mlp import MLP
from mrl.models.resnet import ResNetSmall
from mrl.models.widths import NestedFFN, NestedWidthMLP

MODELS: dict[str, Callable[..., nn.Module]] = {
    "mlp": MLP,
    "resnet": ResNetSmall,
}


def create_model(name: str, **kwargs) -> nn.Module:
    """Build the backbone registered as ``name``; an unknown name lists the known ones.

    Example:
        >>> create_model("mlp", in_features=10, num_features=32).num_features
        32
    """
    if name not in MODELS:
        raise MRLError(f"unknown model {name!r}; known models: {', '.join(sorted(MODELS))}")
    return MODELS[name](**kwargs)


__all__ = ["MODELS", "MLP", "MatryoshkaClassifier", "NestedFFN", "NestedWidthMLP", "ResNetSmall", "create_model"]
