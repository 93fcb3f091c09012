"""The backbone split that the slimmable and retro-fit baselines need: trunk and final layer.

Both baselines act on the layer that produces the d-dim representation z (MRL paper, section 4.1
and Appendix: slimmable networks switch its width; MRL retro-fitting fine-tunes it and the heads
on a frozen FF-d model). For the registered backbones that layer is ``MLP.proj`` (Linear -> BN ->
ReLU) and ``ResNetSmall.expand`` (1x1 conv -> BN -> ReLU, then global average pooling).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from mrl.errors import MRLError
from mrl.models import MLP, ResNetSmall


@dataclass
class BackboneParts:
    """``trunk`` maps inputs to the final layer's input; ``last`` is that layer's Sequential
    (linear map, BatchNorm, ReLU); ``pool`` says whether z is the spatial mean of its output."""

    trunk: nn.Module
    last: nn.Sequential
    pool: bool

    def finish(self, a: torch.Tensor) -> torch.Tensor:
        """Pool a [B, m, H, W] activation to [B, m]; [B, m] passes through."""
        return torch.flatten(F.adaptive_avg_pool2d(a, 1), 1) if self.pool else a


def split_backbone(backbone: nn.Module) -> BackboneParts:
    """Trunk and final layer of a registered backbone (the modules are shared, not copied).

    Example:
        >>> parts = split_backbone(MLP(784, 64))
        >>> parts.trunk(torch.zeros(2, 1, 28, 28)).shape, parts.pool
        (torch.Size([2, 512]), False)
    """
    if isinstance(backbone, MLP):
        return BackboneParts(nn.Sequential(nn.Flatten(1), backbone.body), backbone.proj, pool=False)
    if isinstance(backbone, ResNetSmall):
        return BackboneParts(nn.Sequential(backbone.stem, backbone.stages), backbone.expand, pool=True)
    raise MRLError(f"the slimmable and retro-fit baselines support the mlp and resnet backbones, got {type(backbone).__name__}")
