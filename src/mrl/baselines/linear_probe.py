"""A linear classifier trained on fixed features: the probe behind the SVD and random-feature rows.

The MRL paper (section 4.1, Table 1 and Figure 2) evaluates post-hoc compressions of an FF-d
representation (SVD, random feature selection) by "a linear classifier trained on the projected
features". Here that classifier is multinomial logistic regression with an L2 penalty, fitted by
full-batch L-BFGS from zero weights on standardised features: no sampling anywhere, so the fit is
a deterministic function of the data (the same on every call and every machine thread count up to
float rounding).
"""

from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F

from mrl.errors import MRLError, NotFittedError


def _as_features(x, name: str = "X") -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise MRLError(f"{name} must be a non-empty 2-D array [N, m], got shape {x.shape}")
    if not np.isfinite(x).all():
        raise MRLError(f"{name} contains NaN or infinite values")
    return x.astype(np.float32, copy=False)


class LinearProbe:
    """Multinomial logistic regression on fixed features (scikit-learn style fit / predict / score).

    Args:
        l2: penalty on the weights (mean loss + l2 * ||W||^2); biases are not penalised.
        max_iter: L-BFGS iterations.
        standardize: centre and scale each feature with the train mean and std first (the SVD
            directions have very different scales; a probe should not depend on them).

    Attributes (after fit):
        classes_: sorted labels [C]; coef_: [C, m]; intercept_: [C]; mean_, scale_: [m].

    Example:
        >>> rng = np.random.default_rng(0)
        >>> X = rng.normal(size=(200, 5)); y = (X[:, 0] > 0).astype(int)
        >>> LinearProbe(max_iter=50).fit(X, y).score(X, y) > 0.95
        True
    """

    def __init__(self, l2: float = 1e-4, max_iter: int = 100, standardize: bool = True) -> None:
        self.l2 = l2
        self.max_iter = max_iter
        self.standardize = standardize

    def fit(self, X, y) -> LinearProbe:
        X = _as_features(X)
        y = np.asarray(y)
        if y.ndim != 1 or len(y) != len(X):
            raise MRLError(f"y must be 1-D with one label per row of X ({len(X)}), got shape {y.shape}")
        if not (self.l2 >= 0):
            raise MRLError(f"l2 must be non-negative, got {self.l2}")
        if isinstance(self.max_iter, bool) or not isinstance(self.max_iter, int) or self.max_iter < 1:
            raise MRLError(f"max_iter must be a positive integer, got {self.max_iter!r}")
        for attr in ("classes_", "coef_", "intercept_", "mean_", "scale_"):
            self.__dict__.pop(attr, None)
        classes, target = np.unique(y, return_inverse=True)
        if self.standardize:
            mean = X.mean(0, dtype=np.float64)
            std = X.std(0, dtype=np.float64)
            scale = np.where(std > 1e-8, std, 1.0)
        else:
            mean, scale = np.zeros(X.shape[1]), np.ones(X.shape[1])
        xs = torch.from_numpy(((X - mean) / scale).astype(np.float32))
        t = torch.from_numpy(target.astype(np.int64))
        w = torch.zeros(len(classes), X.shape[1], requires_grad=True)
        b = torch.zeros(len(classes), requires_grad=True)
        opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=self.max_iter, history_size=20,
                                line_search_fn="strong_wolfe", tolerance_grad=1e-6, tolerance_change=1e-9)

        def closure() -> torch.Tensor:
            opt.zero_grad()
            loss = F.cross_entropy(xs @ w.T + b, t) + self.l2 * (w * w).sum()
            loss.backward()
            return loss

        opt.step(closure)
        self.classes_ = classes
        self.coef_ = w.detach().numpy().copy()
        self.intercept_ = b.detach().numpy().copy()
        self.mean_ = mean.astype(np.float32)
        self.scale_ = scale.astype(np.float32)
        return self

    def decision_function(self, X) -> np.ndarray:
        """Logits [N, C]."""
        if not hasattr(self, "coef_"):
            raise NotFittedError("this LinearProbe is not fitted yet; call fit(X, y) first")
        X = _as_features(X)
        if X.shape[1] != self.coef_.shape[1]:
            raise MRLError(f"X has {X.shape[1]} features but the probe was fitted on {self.coef_.shape[1]}")
        return ((X - self.mean_) / self.scale_) @ self.coef_.T + self.intercept_

    def predict(self, X) -> np.ndarray:
        """Labels [N]."""
        scores = self.decision_function(X)
        return self.classes_[scores.argmax(1)]

    def score(self, X, y) -> float:
        """Top-1 accuracy."""
        return float((self.predict(X) == np.asarray(y)).mean())
