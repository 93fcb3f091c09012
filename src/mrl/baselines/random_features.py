"""The random-feature-selection baseline: m random coordinates of the FF-d representation.

MRL paper, section 4.1 (Figure 2, "Rand. FS"): keep m coordinates of a trained FF-d model's
representation chosen uniformly at random, then train a linear classifier on them. Each size and
each draw uses its own seeded generator, so a draw is reproducible from (seed, m); the comparison
averages several draws.
"""

from __future__ import annotations

import numpy as np

from mrl.baselines.linear_probe import _as_features
from mrl.errors import MRLError, NotFittedError


class RandomFeatures:
    """Select ``n_features`` coordinates uniformly at random without replacement.

    Args:
        n_features: m, the number of coordinates kept.
        seed: seed of numpy's default generator; the same (seed, m, d) always picks the same ones.

    Attributes (after fit):
        indices_: sorted chosen coordinates [m] (int64).

    Example:
        >>> X = np.arange(20.0).reshape(2, 10)
        >>> sel = RandomFeatures(3, seed=1).fit(X)
        >>> np.array_equal(sel.transform(X), X[:, sel.indices_])
        True
    """

    def __init__(self, n_features: int, seed: int = 0) -> None:
        self.n_features = n_features
        self.seed = seed

    def fit(self, X) -> RandomFeatures:
        X = _as_features(X)
        m = self.n_features
        if isinstance(m, bool) or not isinstance(m, int) or not 1 <= m <= X.shape[1]:
            raise MRLError(f"n_features must be an integer in [1, {X.shape[1]}], got {m!r}")
        rng = np.random.default_rng(self.seed)
        self.indices_ = np.sort(rng.choice(X.shape[1], size=m, replace=False)).astype(np.int64)
        self.n_features_in_ = X.shape[1]
        return self

    def transform(self, X) -> np.ndarray:
        """The chosen columns [N, m]."""
        if not hasattr(self, "indices_"):
            raise NotFittedError("this RandomFeatures is not fitted yet; call fit(X) first")
        X = _as_features(X)
        if X.shape[1] != self.n_features_in_:
            raise MRLError(f"X has {X.shape[1]} features but the selection was fitted on {self.n_features_in_}")
        return np.ascontiguousarray(X[:, self.indices_])

    def fit_transform(self, X) -> np.ndarray:
        return self.fit(X).transform(X)


def draw_seed(seed: int, draw: int, m: int) -> int:
    """The generator seed of draw ``draw`` at size ``m`` for comparison seed ``seed``.

    Example:
        >>> draw_seed(0, 1, 8) != draw_seed(0, 2, 8)
        True
    """
    if min(seed, draw, m) < 0:
        raise MRLError(f"seed, draw and m must be non-negative, got {seed}, {draw}, {m}")
    return int(np.random.SeedSequence([seed, draw, m]).generate_state(1)[0])
