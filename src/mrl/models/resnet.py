"""A compact ResNet-style CNN for small images (28x28 to 64x64).

Written here because torchvision does not install beside the CPU PyTorch build. It follows the
basic block of He et al. (2016) with three stages, then, like ResNet-50's last bottleneck, a 1x1
convolution that expands to d channels (BatchNorm, ReLU) before global average pooling: z is the
pooled d-channel feature map, as the paper's 2048-d ResNet-50 representation is. (A linear layer
from the 64 pooled channels to d would give z of rank 64, making every prefix beyond 64 redundant.)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from mrl.errors import MRLError


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
            if stride != 1 or cin != cout
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x), inplace=True)


class ResNetSmall(nn.Module):
    """Stem conv, one basic block per stage (stride 1, 2, 2), 1x1 expansion to d, global pooling.

    Args:
        in_channels: image channels (1 for Fashion-MNIST).
        num_features: representation size d.
        widths: channels of the three stages.

    Shape:
        [B, C, H, W] -> [B, d]
    """

    def __init__(self, in_channels: int = 1, num_features: int = 2048, widths: Sequence[int] = (16, 32, 64)) -> None:
        super().__init__()
        if not isinstance(num_features, int) or num_features < 1:
            raise MRLError(f"num_features must be a positive integer, got {num_features!r}")
        self.in_channels = in_channels
        self.num_features = num_features
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True)
        )
        stages = []
        cin = widths[0]
        for i, w in enumerate(widths):
            stages.append(BasicBlock(cin, w, stride=1 if i == 0 else 2))
            cin = w
        self.stages = nn.Sequential(*stages)
        self.expand = nn.Sequential(
            nn.Conv2d(cin, num_features, 1, bias=False), nn.BatchNorm2d(num_features), nn.ReLU(inplace=True)
        )

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise MRLError(f"ResNetSmall expects images [B, {self.in_channels}, H, W], got shape {tuple(x.shape)}")
        x = self.expand(self.stages(self.stem(x)))
        return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)

    forward = forward_features
