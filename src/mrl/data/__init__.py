"""Data sets with fixed, seeded splits: Fashion-MNIST / MNIST (IDX), .npz features, image folders
(in memory, or streamed from an ImageNet-style folder)."""

from mrl.data.datasets import (
    DATASETS,
    FASHION_MNIST_DIR,
    SPLIT_SEED,
    Dataset,
    Split,
    load_dataset,
)
from mrl.data.image_folder import StreamingDataset

__all__ = ["DATASETS", "FASHION_MNIST_DIR", "SPLIT_SEED", "Dataset", "Split", "StreamingDataset", "load_dataset"]
