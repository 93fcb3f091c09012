"""Post-hoc Matryoshka adapter: nested prefixes for the frozen embeddings of any model.

Matryoshka-Adaptor (Yoon et al., 2024) applied to MRL (Kusupati et al. 2022): ``model.py`` holds the
adapter f(e) = e + g(e), ``losses.py`` its unsupervised and supervised objectives over every prefix
size, ``fit.py`` the training loop, ``encoders.py`` the frozen sentence encoder of the benchmark.

Example:
    >>> import torch
    >>> e = torch.nn.functional.normalize(torch.randn(128, 32), dim=-1)
    >>> adapter = MatryoshkaAdapter(32, nesting=[8, 16, 32])
    >>> history = fit_adapter(adapter, e, config=FitConfig(epochs=2, batch_size=64))
    >>> adapter.transform(e, m=8, normalize=True).shape
    torch.Size([128, 8])
"""

from mrl.adapter.fit import FitConfig, fit_adapter, fit_info, nearest_neighbours, neighbour_recall
from mrl.adapter.losses import (
    InBatchContrastiveLoss,
    NeighbourSimilarityLoss,
    PairwiseSimilarityLoss,
    UnsupervisedAdapterLoss,
    reconstruction_loss,
    supervised_adapter_loss,
)
from mrl.adapter.model import AdapterConfig, MatryoshkaAdapter, read_fit_info

__all__ = [
    "AdapterConfig",
    "FitConfig",
    "InBatchContrastiveLoss",
    "MatryoshkaAdapter",
    "NeighbourSimilarityLoss",
    "PairwiseSimilarityLoss",
    "UnsupervisedAdapterLoss",
    "fit_adapter",
    "fit_info",
    "nearest_neighbours",
    "neighbour_recall",
    "read_fit_info",
    "reconstruction_loss",
    "supervised_adapter_loss",
]
