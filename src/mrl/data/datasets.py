"""Loading data sets into train / val / test tensors with one fixed, documented split.

Splits (fixed, independent of the training seed, so every run sees the same examples):

* Fashion-MNIST and MNIST: test = the official 10,000 test images; val = 5,000 images held out of
  the official 60,000 training images by a permutation drawn with ``SPLIT_SEED`` (0); train = the
  other 55,000. (A smaller IDX set holds out 1/12 of its training images the same way.) Pixels are scaled to [0, 1] and standardised with the train mean and std.
* ``.npz`` with ``X`` [N, F] and ``y`` [N]: optional ``X_test``/``y_test`` give the test set,
  otherwise 15% of the rows are held out as test; val = 10% of the rest. Features are standardised
  with the train mean and std.
* image folder: ``ROOT/<class>/*.png|jpg`` (or ``ROOT/train/<class>`` and ``ROOT/test/<class>``),
  read with Pillow in grayscale or RGB as the first image is, resized to the first image's size.
* ImageNet-style folder ``ROOT/train/<class>``, ``ROOT/val/<class>``: streamed, never held in
  memory (:mod:`mrl.data.image_folder`); val doubles as test unless ``ROOT/test`` exists.

``--max-train N`` keeps the first N training examples of a seeded permutation.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mrl.data.idx import read_idx
from mrl.data.image_folder import IMAGE_SUFFIXES, StreamingDataset, is_streaming_folder, load_streaming_folder
from mrl.errors import MRLError
from mrl.io import load_npz

SPLIT_SEED = 0
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
DATASETS = ("fashion-mnist", "mnist")

# Labels index the classifier's output layer: 2**40 would allocate terabytes before failing.
MAX_CLASSES = 1 << 20
# A class-folder image is decoded in full; PIL's own limit (~179M pixels) still allows ~0.5 GB per image.
MAX_IMAGE_PIXELS = 4096 * 4096


@dataclass
class Split:
    """Inputs [N, ...] float32 and labels [N] int64 of one split."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)


@dataclass
class Dataset:
    name: str
    train: Split
    val: Split
    test: Split
    num_classes: int
    kind: str  # "image" or "vector"

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train.x.shape[1:])

    def split(self, name: str) -> Split:
        if name not in ("train", "val", "test"):
            raise MRLError(f"unknown split {name!r}; choose train, val or test")
        return getattr(self, name)


def _find_idx(data_dir: Path, stem: str) -> Path:
    for candidate in (data_dir / f"{stem}.gz", data_dir / stem):
        if candidate.is_file():
            return candidate
    raise MRLError(
        f"missing data file {stem}(.gz) in {data_dir}; expected the four standard IDX files "
        f"({', '.join(IDX_FILES.values())}). On Debian: apt-get install dataset-fashion-mnist"
    )


def _check(x: np.ndarray, y: np.ndarray, source: str) -> None:
    if len(x) == 0:
        raise MRLError(f"{source} holds no examples")
    if len(x) != len(y):
        raise MRLError(f"{source}: {len(x)} inputs but {len(y)} labels")
    if y.ndim != 1:
        raise MRLError(f"{source}: labels must be 1-D, got shape {y.shape}")
    if np.issubdtype(x.dtype, np.floating) and not np.isfinite(x).all():
        raise MRLError(f"{source} contains NaN or infinite values")
    if not np.issubdtype(y.dtype, np.integer):
        raise MRLError(f"{source}: labels must be integers, got dtype {y.dtype}")
    if y.min() < 0 or y.max() >= MAX_CLASSES:
        raise MRLError(f"{source}: labels must be integers in [0, {MAX_CLASSES}), got {y.min()}..{y.max()}")
    if np.issubdtype(x.dtype, np.floating) and np.abs(x).max() > np.finfo(np.float32).max:
        raise MRLError(f"{source}: values up to {np.abs(x).max():.3g} do not fit float32")


def _holdout(n: int, size: int, seed: int = SPLIT_SEED) -> tuple[np.ndarray, np.ndarray]:
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[size:]), np.sort(perm[:size])


def _standardise(train: np.ndarray, *others: np.ndarray, per_feature: bool) -> list[np.ndarray]:
    axis = 0 if per_feature else None
    mean = train.mean(axis=axis, dtype=np.float64)
    std = train.std(axis=axis, dtype=np.float64)
    std = np.where(std > 1e-8, std, 1.0)
    return [((a - mean) / std).astype(np.float32) for a in (train, *others)]


def _assemble(name, kind, x_train, y_train, x_test, y_test, val_size, max_train, per_feature) -> Dataset:
    _check(x_train, y_train, f"{name} train")
    _check(x_test, y_test, f"{name} test")
    if x_train.shape[1:] != x_test.shape[1:]:
        raise MRLError(f"{name}: train inputs have shape {x_train.shape[1:]} but test inputs {x_test.shape[1:]}")
    if val_size >= len(x_train):
        raise MRLError(f"{name}: {len(x_train)} training examples are too few to hold out {val_size} for validation")
    tr_idx, val_idx = _holdout(len(x_train), val_size)
    if max_train is not None:
        if max_train < 1:
            raise MRLError(f"--max-train must be positive, got {max_train}")
        keep = np.random.default_rng(SPLIT_SEED + 1).permutation(len(tr_idx))[:max_train]
        tr_idx = tr_idx[np.sort(keep)]
    xt, xv, xs = _standardise(
        x_train[tr_idx].astype(np.float32), x_train[val_idx].astype(np.float32), x_test.astype(np.float32),
        per_feature=per_feature,
    )
    num_classes = int(max(y_train.max(), y_test.max())) + 1

    def split(x, y):
        return Split(torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y.astype(np.int64)))

    return Dataset(
        name, split(xt, y_train[tr_idx]), split(xv, y_train[val_idx]), split(xs, y_test), num_classes, kind
    )


def load_idx_dataset(name: str, data_dir: Path, max_train: int | None = None) -> Dataset:
    """Fashion-MNIST or MNIST from the four standard IDX files in ``data_dir``."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise MRLError(
            f"data directory {data_dir} does not exist; on Debian: apt-get install dataset-fashion-mnist, "
            "or pass --data-dir holding the four IDX files"
        )
    arrays = {k: read_idx(_find_idx(data_dir, stem)) for k, stem in IDX_FILES.items()}
    for split in ("train", "test"):
        if arrays[f"{split}_images"].ndim != 3:
            raise MRLError(f"{split} images in {data_dir} must be [N, H, W], got {arrays[f'{split}_images'].shape}")
    x_train = arrays["train_images"][:, None].astype(np.float32) / 255.0
    val_size = int(round(len(x_train) / 12))  # 5,000 of the official 60,000
    x_test = arrays["test_images"][:, None].astype(np.float32) / 255.0
    return _assemble(
        name, "image", x_train, arrays["train_labels"].astype(np.int64), x_test,
        arrays["test_labels"].astype(np.int64), val_size, max_train, per_feature=False,
    )


def _check_features(x: np.ndarray, name: str, path: Path) -> None:
    """``x`` is a 2-D real (floating or integer) feature matrix with at least one column."""
    if x.dtype.kind not in "fiu":  # refuses strings, bools, complex, timedelta and datetime
        raise MRLError(f"{path}: {name} must hold real numbers (floating or integer), got dtype {x.dtype}")
    if x.ndim != 2:
        raise MRLError(f"{path}: {name} must be 2-D [N, features], got shape {x.shape}")
    if x.shape[1] == 0:
        raise MRLError(f"{path}: {name} must have at least one feature column, got shape {x.shape}")


def load_npz_dataset(path: Path, max_train: int | None = None) -> Dataset:
    """Feature vectors from an .npz with ``X`` and ``y`` (optionally ``X_test``, ``y_test``)."""
    arrays = load_npz(path, required=("X", "y"))
    x, y = arrays["X"], arrays["y"]
    _check_features(x, "X", path)
    _check(x, y, str(path))
    has_test = ("X_test" in arrays, "y_test" in arrays)
    if any(has_test) and not all(has_test):
        given, missing = ("X_test", "y_test") if has_test[0] else ("y_test", "X_test")
        raise MRLError(f"{path}: {given} needs {missing} as well (X_test and y_test come together), got only {given}")
    if all(has_test):
        x_test, y_test = arrays["X_test"], arrays["y_test"]
        _check_features(x_test, "X_test", path)
        if x_test.shape[1] != x.shape[1]:
            raise MRLError(f"{path}: X_test must have X's {x.shape[1]} columns, got {x_test.shape[1]}")
        _check(x_test, y_test, f"{path} test")
    else:
        test_size = max(1, int(round(0.15 * len(x))))
        rest, test = _holdout(len(x), test_size, seed=SPLIT_SEED + 2)
        x, y, x_test, y_test = x[rest], y[rest], x[test], y[test]
    val_size = max(1, int(round(0.1 * len(x))))
    return _assemble(Path(path).stem, "vector", x, y, x_test, y_test, val_size, max_train, per_feature=True)


def _read_image_folder(root: Path, classes: list[str] | None = None):
    from PIL import Image, UnidentifiedImageError

    class_dirs = sorted(p for p in root.iterdir() if p.is_dir())
    names = classes or [p.name for p in class_dirs]
    if not names:
        raise MRLError(f"{root} has no class sub-folders (expected ROOT/<class>/<image>)")
    images, labels, size, mode = [], [], None, None
    for label, cname in enumerate(names):
        cdir = root / cname
        if not cdir.is_dir():
            continue
        for f in sorted(cdir.iterdir()):
            if f.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            try:
                with Image.open(f) as img:  # reads the header only; pixels are decoded below
                    if img.width * img.height > MAX_IMAGE_PIXELS:
                        raise MRLError(f"image {f} is {img.width} x {img.height} pixels, more than the "
                                       f"{MAX_IMAGE_PIXELS} allowed (a decompression bomb?)")
                    if mode is None:
                        mode = "L" if img.mode in ("L", "1", "P", "I", "I;16") else "RGB"
                        size = img.size
                    arr = np.asarray(img.convert(mode).resize(size), dtype=np.float32) / 255.0
            except (UnidentifiedImageError, Image.DecompressionBombError, OSError) as exc:
                raise MRLError(f"cannot read image {f}: {exc}") from None
            images.append(arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1))
            labels.append(label)
    if not images:
        raise MRLError(f"{root} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return np.stack(images), np.array(labels, dtype=np.int64), names


def load_image_folder(root: Path, max_train: int | None = None) -> Dataset:
    """Images in ``ROOT/<class>/`` (or ``ROOT/train/<class>/`` and ``ROOT/test/<class>/``)."""
    root = Path(root)
    if (root / "train").is_dir() and (root / "test").is_dir():
        x, y, names = _read_image_folder(root / "train")
        x_test, y_test, _ = _read_image_folder(root / "test", classes=names)
        if x_test.shape[1:] != x.shape[1:]:
            raise MRLError(f"{root}: test images have shape {x_test.shape[1:]} but train images {x.shape[1:]}")
    else:
        x, y, _ = _read_image_folder(root)
        test_size = max(1, int(round(0.15 * len(x))))
        rest, test = _holdout(len(x), test_size, seed=SPLIT_SEED + 2)
        x, y, x_test, y_test = x[rest], y[rest], x[test], y[test]
    val_size = max(1, int(round(0.1 * len(x))))
    return _assemble(root.name, "image", x, y, x_test, y_test, val_size, max_train, per_feature=False)


def load_dataset(
    name: str, data_dir: str | Path | None = None, max_train: int | None = None, image_size: int | None = None,
    streaming: bool = True, check_images: bool = True,
) -> Dataset | StreamingDataset:
    """Load a data set by name or path.

    Args:
        name: ``fashion-mnist``, ``mnist`` (both read IDX files from ``data_dir``; Fashion-MNIST
            defaults to Debian's /usr/share/datasets/fashion-mnist), a path to an ``.npz``, or a
            path to an image folder.
        data_dir: folder with the four IDX files.
        max_train: keep at most this many training examples (seeded).
        image_size: crop side of a streamed folder (default 224); an error for other data.
        streaming: whether the caller can use a streamed folder; False refuses one up front.
        check_images: open every header of a streamed folder (see :func:`load_streaming_folder`).
    """
    path = Path(name)
    if name not in DATASETS and path.is_dir() and is_streaming_folder(path):
        if not streaming:
            raise MRLError(
                f"{name} is an ImageNet-style folder (ROOT/train, ROOT/val) that only `mrl train` and `mrl eval` "
                "stream; this command holds its data in memory: give it IDX files, an .npz or a flat image folder"
            )
        return load_streaming_folder(path, image_size, max_train, SPLIT_SEED, check_images=check_images)
    if image_size is not None:
        raise MRLError(
            f"--image-size applies to streamed image folders (ROOT/train/<class>, ROOT/val/<class>), not {name!r}"
        )
    if name in DATASETS:
        if data_dir is None:
            if name != "fashion-mnist":
                raise MRLError(f"data set {name!r} needs --data-dir holding its four IDX files")
            data_dir = FASHION_MNIST_DIR
        return load_idx_dataset(name, Path(data_dir), max_train=max_train)
    if path.suffix == ".npz":
        return load_npz_dataset(path, max_train=max_train)
    if path.is_dir():
        return load_image_folder(path, max_train=max_train)
    raise MRLError(
        f"unknown data set {name!r}; use one of {', '.join(DATASETS)}, a path to an .npz file "
        "(X, y) or an image folder (one sub-folder per class)"
    )
