"""Per-rank training batches and in-order evaluation batches, for in-memory and streaming data.

Training draws the same way from both kinds of data: an epoch's permutation seeded by (seed,
epoch), each of W ranks taking every W-th index of it, a per-rank batch of batch_size / W, the
remainder dropped. In memory, augmentation is applied per batch from the same generator; streamed,
it is drawn per sample inside the DataLoader workers (see :mod:`mrl.data.image_folder`). Either way
an epoch is a pure function of (seed, epoch), which is what makes resume exact.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch
from torch import nn
from torch.utils.data import DataLoader

from mrl.data.datasets import Split
from mrl.data.image_folder import ImageFolderSplit, SeededShardSampler, normalize
from mrl.errors import MRLError

WORKER_ERROR_PREFIX = "mrl.errors.MRLError: "


def _from_workers(loader: Iterable) -> Iterator:
    """Iterate ``loader``; an MRLError raised in a worker comes back as its own one-line message.

    (The DataLoader re-raises worker errors with the worker's whole traceback as the message; the
    CLI promises one ``Error:`` line.)
    """
    try:
        yield from loader
    except MRLError as exc:
        lines = str(exc).strip().splitlines()
        last = next((line for line in reversed(lines) if line.startswith(WORKER_ERROR_PREFIX)), None)
        if last is None:
            raise
        raise MRLError(last[len(WORKER_ERROR_PREFIX) :]) from None


def augment(x: torch.Tensor, generator: torch.Generator, max_shift: int = 2) -> torch.Tensor:
    """Random horizontal flip and a random shift of up to ``max_shift`` pixels (zero padding), per batch row."""
    b = x.shape[0]
    flip = torch.rand(b, generator=generator) < 0.5
    x = torch.where(flip.view(b, 1, 1, 1), x.flip(-1), x)
    shifts = torch.randint(-max_shift, max_shift + 1, (b, 2), generator=generator)
    padded = nn.functional.pad(x, (max_shift,) * 4)
    h, w = x.shape[-2:]
    rows = (torch.arange(h).view(1, h) + max_shift + shifts[:, :1]).view(b, 1, h, 1).expand(b, x.shape[1], h, w + 2 * max_shift)
    out = padded.gather(2, rows)
    cols = (torch.arange(w).view(1, w) + max_shift + shifts[:, 1:]).view(b, 1, 1, w).expand(b, x.shape[1], h, w)
    return out.gather(3, cols)


class TensorBatches:
    """Training batches of an in-memory :class:`~mrl.data.Split` for one rank.

    Args:
        split: the training split.
        per_rank: batch size on this rank.
        rank, world_size: this process among the DDP ranks.
        seed: run seed.
        use_augment: flip and shift images (from the epoch's generator).
    """

    def __init__(self, split: Split, per_rank: int, rank: int, world_size: int, seed: int, use_augment: bool) -> None:
        self.split = split
        self.per_rank = per_rank
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.use_augment = use_augment
        self.shard = len(split) // world_size

    @property
    def steps_per_epoch(self) -> int:
        return max(1, self.shard // self.per_rank)

    def epoch(self, epoch: int, device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Batches (x [B, ...] float32, y [B] int64) on ``device``."""
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        perm = torch.randperm(len(self.split), generator=gen)[: self.shard * self.world_size]
        mine = perm[self.rank :: self.world_size]
        for i in range(self.steps_per_epoch):
            idx = mine[i * self.per_rank : (i + 1) * self.per_rank]
            x, y = self.split.x[idx], self.split.y[idx]
            if self.use_augment:
                x = augment(x, gen)
            yield x.to(device), y.to(device)


class StreamBatches:
    """Training batches of an :class:`ImageFolderSplit` for one rank, decoded by ``workers`` processes."""

    def __init__(self, split: ImageFolderSplit, per_rank: int, rank: int, world_size: int, seed: int, workers: int) -> None:
        self.sampler = SeededShardSampler(split, rank, world_size, seed)
        if len(self.sampler) < per_rank:
            raise MRLError(
                f"each of the {world_size} process(es) gets {len(self.sampler)} training images, fewer than its batch "
                f"of {per_rank}; lower --batch-size"
            )
        self.per_rank = per_rank
        self.loader = DataLoader(
            split, batch_size=per_rank, sampler=self.sampler, num_workers=workers, drop_last=True,
            pin_memory=torch.cuda.is_available(), persistent_workers=False,
        )

    @property
    def steps_per_epoch(self) -> int:
        return max(1, len(self.sampler) // self.per_rank)

    def epoch(self, epoch: int, device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Batches (x [B, 3, S, S] float32 standardised, y [B] int64) on ``device``."""
        self.sampler.set_epoch(epoch)
        for pixels, y in _from_workers(self.loader):
            yield normalize(pixels.to(device, non_blocking=True)), y.to(device, non_blocking=True)


def training_batches(
    split: Split | ImageFolderSplit, per_rank: int, rank: int, world_size: int, seed: int, use_augment: bool, workers: int
) -> TensorBatches | StreamBatches:
    """The batch source for ``split``: in memory or streamed."""
    if isinstance(split, ImageFolderSplit):
        return StreamBatches(split, per_rank, rank, world_size, seed, workers)
    return TensorBatches(split, per_rank, rank, world_size, seed, use_augment)


def eval_batches(
    split: Split | ImageFolderSplit, device: torch.device, batch_size: int = 1024, workers: int = 0
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """All of ``split`` in order: (x on ``device``, y [B] int64 on the CPU)."""
    if isinstance(split, ImageFolderSplit):
        loader = DataLoader(split, batch_size=batch_size, shuffle=False, num_workers=workers,
                            pin_memory=torch.cuda.is_available())
        for pixels, y in _from_workers(loader):
            yield normalize(pixels.to(device, non_blocking=True)), y
    else:
        for i in range(0, len(split), batch_size):
            yield split.x[i : i + batch_size].to(device), split.y[i : i + batch_size]
