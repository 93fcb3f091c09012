"""The SVD baseline: top-m principal directions of the FF-d representation, then a linear probe.

MRL paper, section 4.1 (Figure 2, "SVD"): compress the d-dimensional representation of a trained
FF-d model to m dims with the top-m right singular vectors of the centred train representations
(PCA), and train a linear classifier on the projection. Because principal directions are ordered,
the projection onto the top max(M) directions holds every smaller size as a prefix, so one fit
serves the whole nesting (and 1-NN on prefixes equals 1-NN on each top-m projection).
"""

from __future__ import annotations

import numpy as np

from mrl.baselines.linear_probe import _as_features
from mrl.errors import MRLError, NotFittedError


class SVDProjection:
    """PCA by SVD of the centred data: ``transform(X) = (X - mean_) @ components_.T``.

    The components are the top right singular vectors of the centred X (computed from the d x d
    scatter matrix in float64, which is exact up to rounding and fast when N >> d); each sign is
    fixed so that the largest-magnitude entry is positive (scikit-learn's ``svd_flip`` convention),
    so fits are reproducible.

    Args:
        n_components: number of directions kept (at most min(N, d)).

    Attributes (after fit):
        mean_ [d], components_ [n_components, d], singular_values_ [n_components],
        explained_variance_ratio_ [n_components].

    Example:
        >>> rng = np.random.default_rng(0)
        >>> X = rng.normal(size=(100, 6)) * np.array([5, 4, 3, 2, 1, 0.5])
        >>> SVDProjection(2).fit(X).transform(X).shape
        (100, 2)
    """

    def __init__(self, n_components: int) -> None:
        self.n_components = n_components

    def fit(self, X) -> SVDProjection:
        X = _as_features(X)
        k = self.n_components
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= min(X.shape):
            raise MRLError(f"n_components must be an integer in [1, {min(X.shape)}] for X of shape {X.shape}, got {k!r}")
        for attr in ("mean_", "components_", "singular_values_", "explained_variance_ratio_"):
            self.__dict__.pop(attr, None)
        x = X.astype(np.float64)
        mean = x.mean(0)
        x -= mean
        eigval, eigvec = np.linalg.eigh(x.T @ x)  # ascending
        order = np.argsort(eigval)[::-1]
        eigval = np.clip(eigval[order], 0.0, None)
        vecs = eigvec[:, order[:k]].T
        signs = np.sign(vecs[np.arange(k), np.abs(vecs).argmax(1)])
        signs[signs == 0] = 1.0
        self.mean_ = mean.astype(np.float32)
        self.components_ = (vecs * signs[:, None]).astype(np.float32)
        self.singular_values_ = np.sqrt(eigval[:k]).astype(np.float32)
        self.explained_variance_ratio_ = (eigval[:k] / max(eigval.sum(), 1e-300)).astype(np.float32)
        return self

    def transform(self, X) -> np.ndarray:
        """Projections [N, n_components] (float32)."""
        if not hasattr(self, "components_"):
            raise NotFittedError("this SVDProjection is not fitted yet; call fit(X) first")
        X = _as_features(X)
        if X.shape[1] != self.components_.shape[1]:
            raise MRLError(f"X has {X.shape[1]} features but the projection was fitted on {self.components_.shape[1]}")
        return ((X - self.mean_) @ self.components_.T).astype(np.float32)

    def fit_transform(self, X) -> np.ndarray:
        return self.fit(X).transform(X)
