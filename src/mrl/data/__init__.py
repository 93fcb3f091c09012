"""Data sets with fixed, seeded splits: Fashion-MNIST / MNIST (IDX), .npz features, image folders."""

from mrl.data.datasets import (
    DATASETS,
    FASHION_MNIST_DIR,
    SPLIT_SEED,
    Dataset,
    Split,
    load_dataset,
)

__all__ = ["DATASETS", "FASHION_MNIST_DIR", "SPLIT_SEED", "Dataset", "Split", "load_dataset"]
