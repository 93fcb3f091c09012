"""Backbones, looked up by name (timm's convention).

Every backbone has ``forward_features(x) -> [B, num_features]`` and ``num_features`` (the
representation size d). :class:`MatryoshkaClassifier` puts Matryoshka heads on one. Any timm
model is available as ``timm/<name>`` when timm imports (extra ``timm``).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from mrl.errors import MRLError
from mrl.models.classifier import MatryoshkaClassifier
from mrl.models.mlp import MLP
from mrl.models.resnet import ResNetSmall
from mrl.models.resnet50 import ResNet50
from mrl.models.timm_backbone import PREFIX as TIMM_PREFIX
from mrl.models.widths import NestedFFN, NestedWidthMLP

MODELS: dict[str, Callable[..., nn.Module]] = {
    "mlp": MLP,
    "resnet": ResNetSmall,
    "resnet50": ResNet50,
}


def is_model_name(name: str) -> bool:
    """Whether ``name`` is registered or a ``timm/<name>`` model (checked against timm when built)."""
    return name in MODELS or (name.startswith(TIMM_PREFIX) and len(name) > len(TIMM_PREFIX))


def create_model(name: str, **kwargs) -> nn.Module:
    """Build the backbone registered as ``name``; an unknown name lists the known ones.

    Example:
        >>> create_model("mlp", in_features=10, num_features=32).num_features
        32
    """
    if name.startswith(TIMM_PREFIX) and len(name) > len(TIMM_PREFIX):
        from mrl.models.timm_backbone import TimmBackbone

        return TimmBackbone(name[len(TIMM_PREFIX) :], **kwargs)
    if name not in MODELS:
        raise MRLError(
            f"unknown model {name!r}; known models: {', '.join(sorted(MODELS))}, or {TIMM_PREFIX}<name> with timm"
        )
    return MODELS[name](**kwargs)


__all__ = [
    "MODELS", "MLP", "MatryoshkaClassifier", "NestedFFN", "NestedWidthMLP", "ResNet50", "ResNetSmall", "create_model",
    "is_model_name",
]
