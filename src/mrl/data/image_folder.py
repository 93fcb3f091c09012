"""A streaming ImageNet-style folder: ROOT/train/<class>/*, ROOT/val/<class>/* (optionally ROOT/test).

The MRL paper trains ResNet-50 on ImageNet-1K (section 4.1), 1.28M images that do not fit in memory
as one tensor. Here only the file list is held (as a fixed-width bytes array, so forked DataLoader
workers share it instead of copying it on access, which Python lists of str would cause); every image
is decoded by Pillow when its batch is drawn. Transforms follow the standard ImageNet recipe that the
paper's FFCV pipeline uses: RandomResizedCrop (scale 0.08-1, ratio 3/4-4/3) and a horizontal flip for
training; resize to size/0.875 and a centre crop for evaluation. Items are uint8 [3, S, S]; they are
scaled and standardised with the ImageNet mean and std on the device (:func:`normalize`), which keeps
worker-to-trainer traffic 4x smaller than float32.

Augmentation is seeded per sample: the sampler hands each index together with a seed derived from
(run seed, epoch, index), so an epoch's batches are the same whatever the number of workers, and a
resumed run draws exactly what an uninterrupted one would.
"""

from __future__ import annotations

import math
import os
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DistributedSampler, Sampler

from mrl.errors import MRLError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
EVAL_CROP_FRACTION = 0.875  # 224 of 256: the standard ImageNet evaluation crop
DEFAULT_IMAGE_SIZE = 224
MAX_PIXELS = 89_478_485  # Pillow's decompression-bomb limit, enforced as an error rather than a warning
CROP_SCALE = (0.08, 1.0)
CROP_RATIO = (3 / 4, 4 / 3)


def is_streaming_folder(path: Path) -> bool:
    """Whether ``path`` has the ImageNet layout ROOT/train and ROOT/val."""
    return (path / "train").is_dir() and (path / "val").is_dir()


def _list_split(root: Path, classes: list[str] | None) -> tuple[list[str], np.ndarray, np.ndarray]:
    if not root.is_dir():
        raise MRLError(f"{root} does not exist")
    found = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not found:
        raise MRLError(f"{root} has no class sub-folders (expected {root}/<class>/<image>)")
    if classes is None:
        classes = found
    else:
        unknown = sorted(set(found) - set(classes))
        if unknown:
            raise MRLError(f"{root} has class folders that are not in the training set: {unknown[:5]}")
    paths, labels = [], []
    for name in found:
        with os.scandir(root / name) as entries:
            files = sorted(
                e.path for e in entries
                if e.is_file() and not e.name.startswith(".") and Path(e.name).suffix.lower() in IMAGE_SUFFIXES
            )
        if not files:
            raise MRLError(f"class folder {root / name} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        paths += [os.fsencode(f) for f in files]
        labels += [classes.index(name)] * len(files)
    return classes, np.array(paths, dtype=np.bytes_), np.array(labels, dtype=np.int64)


def _open_rgb(path: str, verify_only: bool = False):
    from PIL import Image

    try:
        img = Image.open(path)  # reads the header only
        if img.width * img.height > MAX_PIXELS:
            img.close()
            raise MRLError(f"image {path} has {img.width}x{img.height} pixels, over the limit of {MAX_PIXELS}")
        if verify_only:
            img.close()
            return None
        with img:
            return img.convert("RGB")
    except MRLError:
        raise
    except (OSError, ValueError, Image.DecompressionBombError, SyntaxError) as exc:
        raise MRLError(f"cannot read image {path}: {exc}") from None


def random_resized_crop_box(width: int, height: int, rng: random.Random) -> tuple[float, float, float, float]:
    """A crop box (left, top, right, bottom) as torchvision's RandomResizedCrop draws it.

    Ten tries of an area in CROP_SCALE and a log-uniform aspect ratio in CROP_RATIO; if none fits,
    the central crop with the ratio clamped to CROP_RATIO.

    Example:
        >>> left, top, right, bottom = random_resized_crop_box(100, 50, random.Random(0))
        >>> 0 <= left < right <= 100 and 0 <= top < bottom <= 50
        True
    """
    area = width * height
    log_ratio = (math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1]))
    for _ in range(10):
        target = area * rng.uniform(*CROP_SCALE)
        ratio = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target * ratio)))
        h = int(round(math.sqrt(target / ratio)))
        if 0 < w <= width and 0 < h <= height:
            left = rng.randint(0, width - w)
            top = rng.randint(0, height - h)
            return left, top, left + w, top + h
    ratio = width / height
    if ratio < CROP_RATIO[0]:
        w, h = width, int(round(width / CROP_RATIO[0]))
    elif ratio > CROP_RATIO[1]:
        w, h = int(round(height * CROP_RATIO[1])), height
    else:
        w, h = width, height
    left, top = (width - w) // 2, (height - h) // 2
    return left, top, left + w, top + h


def centre_crop_box(width: int, height: int) -> tuple[float, float, float, float]:
    """The box that "resize the short side to S/0.875, crop S x S at the centre" keeps, in source pixels.

    Example:
        >>> centre_crop_box(256, 512)
        (16.0, 144.0, 240.0, 368.0)
    """
    side = min(width, height) * EVAL_CROP_FRACTION
    left, top = (width - side) / 2, (height - side) / 2
    return left, top, left + side, top + side


class ImageFolderSplit(torch.utils.data.Dataset):
    """One split of an image folder, decoded on access.

    Items: ``index`` (evaluation transform) or ``(index, seed)`` (training transform drawn from
    ``random.Random(seed)``) -> (image uint8 [3, S, S], label int).
    """

    def __init__(self, paths: np.ndarray, labels: np.ndarray, image_size: int, train: bool) -> None:
        self.paths = paths
        self.labels = labels
        self.image_size = image_size
        self.train = train

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def y(self) -> torch.Tensor:
        """Labels [N] int64."""
        return torch.from_numpy(self.labels)

    def __getitem__(self, item: int | tuple[int, int]) -> tuple[torch.Tensor, int]:
        from PIL import Image

        index, seed = item if isinstance(item, tuple) else (item, None)
        img = _open_rgb(os.fsdecode(self.paths[index]))
        size = (self.image_size, self.image_size)
        if self.train:
            rng = random.Random(seed)
            box = random_resized_crop_box(img.width, img.height, rng)
            img = img.resize(size, Image.Resampling.BILINEAR, box=box)
            if rng.random() < 0.5:
                img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        else:
            img = img.resize(size, Image.Resampling.BILINEAR, box=centre_crop_box(img.width, img.height))
        pixels = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)
        return pixels, int(self.labels[index])


def normalize(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 images [B, 3, H, W] -> float32 standardised with the ImageNet mean and std."""
    mean = torch.tensor(IMAGENET_MEAN, device=pixels.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=pixels.device).view(1, 3, 1, 1)
    return (pixels.float() / 255.0 - mean) / std


class SeededShardSampler(Sampler):
    """DistributedSampler's per-rank shard of an epoch's permutation, each index with its augmentation seed.

    Every rank takes ``len(dataset) // world_size`` indices (the rest of the permutation is dropped,
    as the in-memory path does), disjoint from the other ranks'. The permutation is seeded by
    (seed, epoch) through :meth:`set_epoch`; the per-sample seed by (seed, epoch, index).
    """

    def __init__(self, dataset: ImageFolderSplit, rank: int, world_size: int, seed: int) -> None:
        self.inner = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed, drop_last=True)
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.inner.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.inner)

    def __iter__(self):
        base = (self.seed * 1_000_003 + self.epoch) << 32
        return ((index, base + index) for index in self.inner)


@dataclass
class StreamingDataset:
    """train / val / test :class:`ImageFolderSplit` s of one folder and its class names."""

    name: str
    train: ImageFolderSplit
    val: ImageFolderSplit
    test: ImageFolderSplit
    classes: list[str]
    image_size: int
    kind: str = "image"

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (3, self.image_size, self.image_size)

    def split(self, name: str) -> ImageFolderSplit:
        if name not in ("train", "val", "test"):
            raise MRLError(f"unknown split {name!r}; choose train, val or test")
        return getattr(self, name)


def load_streaming_folder(
    root: str | Path, image_size: int | None = None, max_train: int | None = None, split_seed: int = 0,
    check_images: bool = True,
) -> StreamingDataset:
    """List ROOT/train and ROOT/val (and ROOT/test, else val doubles as test) and check every header.

    Every file is opened once (header only) so that an unreadable image or a decompression bomb is
    refused before a run writes anything.

    Args:
        root: the folder.
        image_size: side S of the crops (default 224).
        max_train: keep the first N training images of a permutation seeded by ``split_seed``.
        check_images: open every header; under torchrun rank 0 alone does (the rank that writes,
            and whose failure ends the others), instead of every rank reading every file.
    """
    root = Path(root)
    image_size = DEFAULT_IMAGE_SIZE if image_size is None else image_size
    classes, train_paths, train_labels = _list_split(root / "train", None)
    if max_train is not None:
        keep = np.sort(np.random.default_rng(split_seed + 1).permutation(len(train_paths))[:max_train])
        train_paths, train_labels = train_paths[keep], train_labels[keep]
    _, val_paths, val_labels = _list_split(root / "val", classes)
    has_test = (root / "test").is_dir()
    test_parts = _list_split(root / "test", classes)[1:] if has_test else (val_paths, val_labels)
    for paths in (train_paths, val_paths, test_parts[0] if has_test else ()) if check_images else ():
        for path in paths:
            _open_rgb(os.fsdecode(path), verify_only=True)
    return StreamingDataset(
        root.name,
        ImageFolderSplit(train_paths, train_labels, image_size, train=True),
        ImageFolderSplit(val_paths, val_labels, image_size, train=False),
        ImageFolderSplit(*test_parts, image_size, train=False),
        classes,
        image_size,
    )
