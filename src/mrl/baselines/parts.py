"""The backbone split that the slimmable and retro-fit baselines need: trunk and final layer.

Both baselines act on the layer that produces the d-dim representation z (MRL paper, section 4.1
and Appendix: slimmable networks switch its width; MRL retro-fitting fine-tunes it and the heads
on a frozen FF-d model). For the registered backbones that layer is ``MLP.proj`` (Linear -> BN ->
ReLU) and ``ResNetSmall.expand`` (1x1 conv -> BN -> ReLU, then global average pooling).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from mrl.config import TrainConfig
from mrl.data import Dataset
from mrl.errors import MRLError
from mrl.models import MLP, ResNetSmall
from mrl.evaluation import topk_accuracy
from mrl.data.batches import augment


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


def steps_per_epoch(config: TrainConfig, data: Dataset) -> int:
    """Full batches per epoch in a single process, as :func:`mrl.training.train` counts them."""
    return max(1, len(data.train) // config.batch_size)


def epoch_batches(config: TrainConfig, data: Dataset, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Train batches (x, y) of one epoch, shuffled and augmented exactly as :func:`mrl.training.train`
    does in one process: a generator seeded by (seed, epoch) draws the permutation, then each
    batch's augmentation.

    Example:
        >>> from mrl.data import Split
        >>> data = Dataset("toy", Split(torch.zeros(10, 3), torch.arange(10)), Split(torch.zeros(1, 3), torch.zeros(1)),
        ...                Split(torch.zeros(1, 3), torch.zeros(1)), 10, "vector")
        >>> [len(y) for _, y in epoch_batches(TrainConfig(batch_size=4), data, epoch=0)]
        [4, 4]
    """
    steps = steps_per_epoch(config, data)
    gen = torch.Generator().manual_seed(config.seed * 1_000_003 + epoch)
    perm = torch.randperm(len(data.train), generator=gen)
    use_augment = config.augment and data.kind == "image"
    for i in range(steps):
        idx = perm[i * config.batch_size : (i + 1) * config.batch_size]
        x, y = data.train.x[idx], data.train.y[idx]
        yield (augment(x, gen) if use_augment else x), y


def eval_record(nesting: list[int], logits: torch.Tensor, labels: torch.Tensor, knn: dict[int, float], method: str) -> dict:
    """An eval.json record as :func:`mrl.evaluation.evaluate_run` writes it, from test logits [G, N, C]."""
    return {
        "top1": {str(m): float(v) for m, v in zip(nesting, topk_accuracy(logits, labels, 1))},
        "top5": {str(m): float(v) for m, v in zip(nesting, topk_accuracy(logits, labels, 5))},
        "knn1": {str(m): knn[m] for m in nesting},
        "mode": method,
        "nesting": nesting,
        "n_test": len(labels),
    }
