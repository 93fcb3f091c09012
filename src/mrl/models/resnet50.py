"""ResNet-50 (He et al., 2016) in torchvision's layout: the backbone the MRL paper trains on ImageNet.

Written here because torchvision's wheel does not import beside the CPU PyTorch build. Module names
follow ``torchvision.models.resnet50`` (conv1, bn1, layer1..layer4 of Bottleneck blocks with
conv1..conv3, bn1..bn3 and a ``downsample`` Sequential), so a torchvision state dict without ``fc``
loads as it is. The stride sits on the 3x3 convolution (torchvision's "ResNet V1.5"). The
representation is the globally pooled output of layer4: d = 2048 (MRL paper, section 4.1).
"""

from __future__ import annotations

import torch
from torch import nn

from mrl.errors import MRLError

EXPANSION = 4
LAYERS = (3, 4, 6, 3)  # Bottleneck blocks per stage of ResNet-50
TOTAL_STRIDE = 32  # stem (4) x stages (8): layer4's map is 1x1 at 32 px, 7x7 at 224 px


class Bottleneck(nn.Module):
    """1x1 reduce -> 3x3 (strided) -> 1x1 expand, plus the (projected) shortcut."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * EXPANSION, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * EXPANSION)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet50(nn.Module):
    """ResNet-50 without its classifier: ``forward_features`` gives the pooled 2048-d representation.

    Args:
        in_channels: image channels (3 for ImageNet).
        num_features: must be 2048, ResNet-50's representation size; it is an argument only so
            that every backbone is built the same way by the registry.

    Shape:
        [B, C, H, W] -> [B, 2048], with H, W >= 32 (the network's total stride).

    Example:
        >>> ResNet50()(torch.zeros(2, 3, 32, 32)).shape
        torch.Size([2, 2048])
    """

    min_image_size = TOTAL_STRIDE

    def __init__(self, in_channels: int = 3, num_features: int = 2048) -> None:
        super().__init__()
        if num_features != 512 * EXPANSION:
            raise MRLError(
                f"resnet50's representation has {512 * EXPANSION} dims, got rep-dim {num_features}; "
                "use --rep-dim 2048 (smaller sizes are its nested prefixes)"
            )
        if isinstance(in_channels, bool) or not isinstance(in_channels, int) or in_channels < 1:
            raise MRLError(f"in_channels must be a positive integer, got {in_channels!r}")
        self.in_channels = in_channels
        self.num_features = num_features
        self.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.inplanes = 64
        self.layer1 = self._stage(64, LAYERS[0], 1)
        self.layer2 = self._stage(128, LAYERS[1], 2)
        self.layer3 = self._stage(256, LAYERS[2], 2)
        self.layer4 = self._stage(512, LAYERS[3], 2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        for module in self.modules():  # torchvision's initialisation
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def _stage(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = nn.Sequential(
            nn.Conv2d(self.inplanes, planes * EXPANSION, 1, stride, bias=False), nn.BatchNorm2d(planes * EXPANSION)
        )
        layers = [Bottleneck(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * EXPANSION
        layers += [Bottleneck(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise MRLError(f"ResNet50 expects images [B, {self.in_channels}, H, W], got shape {tuple(x.shape)}")
        if min(x.shape[-2:]) < self.min_image_size:
            raise MRLError(
                f"ResNet50 needs images of at least {self.min_image_size}x{self.min_image_size} pixels "
                f"(its total stride), got {tuple(x.shape[-2:])}"
            )
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)

    forward = forward_features
