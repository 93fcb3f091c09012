"""Any timm model as an mrl backbone, by name: ``--arch timm/<name>`` (optional extra ``timm``).

timm builds the network without its classifier (``num_classes=0``), so its forward returns the
pooled pre-logits features, which is the representation z that Matryoshka heads read.
No weights are downloaded: the model starts from random initialisation, as in the MRL paper.
"""

from __future__ import annotations

import torch
from torch import nn

from mrl.errors import MRLError

PREFIX = "timm/"


class TimmBackbone(nn.Module):
    """A timm model with ``forward_features(x) -> [B, d]`` and ``num_features = d``.

    Args:
        model_name: a timm model name (``timm.list_models()``), without the ``timm/`` prefix.
        in_channels: image channels.
        num_features: the model's own feature size; any other value is an error (d is fixed by
            the architecture; smaller sizes are its nested prefixes).

    Shape:
        [B, C, H, W] -> [B, d]
    """

    def __init__(self, model_name: str, in_channels: int = 3, num_features: int | None = None) -> None:
        super().__init__()
        try:
            import timm
        except ImportError as exc:
            raise MRLError(f"--arch {PREFIX}{model_name} needs timm: pip install \"mrl[timm]\" ({exc})") from None
        if model_name not in timm.list_models():
            raise MRLError(f"unknown timm model {model_name!r}; see timm.list_models()")
        self.model = timm.create_model(model_name, pretrained=False, num_classes=0, in_chans=in_channels)
        if num_features is not None and num_features != self.model.num_features:
            raise MRLError(
                f"timm model {model_name} has {self.model.num_features}-d features, got rep-dim {num_features}"
            )
        self.in_channels = in_channels
        self.num_features = self.model.num_features

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    forward = forward_features
