"""Adaptive classification over two axes: (width, dim) pairs of a nested-width Matryoshka model.

The MRL paper's cascade (Kusupati et al., NeurIPS 2022, section 4.2.1) walks up the nesting sizes
of one model. A nested-width run (:mod:`mrl.models.widths`, MatFormer) has a grid of submodels, one
per (width w, size m), each with its own cost: the trunk at width w plus the head m x C. Here the
cascade runs pairs in ascending order of FLOPs per example and stops at the first confident one.

Which pairs: those on the fit data's (FLOPs, accuracy) Pareto front (a pair that costs more than a
more accurate one can never help a cascade that stops at the first confident stage), plus always
the full model, which answers whatever is left. Thresholds come from the existing policies of
:class:`~mrl.adaptive.classifier.AdaptiveClassifier` (the paper's greedy rule, or the budget
policy: the cheapest cascade reaching an accuracy target): its "sizes" are the pairs' FLOPs, so
its ``cumulative`` cost is the FLOPs of every pair run.

What a cascade pays. Given only each pair's FLOPs (``flops``), every stage run is charged in full.
Given their shareable parts too (``parts``, from :func:`mrl.width_grid.grid_parts`), a sample pays
each part once, at the most that any stage run for it needs
(:class:`~mrl.adaptive.cascading.SharedCosts`): pairs of one width share their hidden layers and
the representation's first rows (z[:m'] extends z[:m]), and every width shares the first layer's
product W_1[:k] x (only the norm after it is per width). That count is exact; without ``parts`` it
is an upper bound.

Two choices of stages (``stages``):

* ``"pareto"``: every pair on the front.
* ``"per-width"``: one pair per width, the most accurate on the fit data (the full model for the
  last width), then the same front over those.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mrl.adaptive.cascading import Costs, SharedCosts, as_logits, cascade, head_costs, max_softmax
from mrl.adaptive.classifier import AdaptiveClassifier, _check_labels
from mrl.adaptive.search import pareto_front
from mrl.errors import MRLError, NotFittedError
from mrl.validation import check_choice

STAGES = ("pareto", "per-width")


def pairs_by_flops(flops: np.ndarray) -> np.ndarray:
    """All (width index, size index) pairs of a FLOPs grid [W, G], sorted by ascending FLOPs.

    Returns:
        int64 [W * G, 2]; ties keep the grid's row-major order.

    Example:
        >>> pairs_by_flops(np.array([[10, 40], [30, 60]])).tolist()
        [[0, 0], [1, 0], [0, 1], [1, 1]]
    """
    flops = np.asarray(flops)
    if flops.ndim != 2 or 0 in flops.shape:
        raise MRLError(f"flops must be a non-empty [W, G] grid, got shape {flops.shape}")
    order = np.argsort(flops.ravel(), kind="stable")
    return np.stack(np.unravel_index(order, flops.shape), axis=1).astype(np.int64)


class WidthDimCascade:
    """Classify each input with the cheapest confident (width, dim) submodel.

    Args:
        widths: the run's widths [W] (ascending, the last 1).
        nesting: the run's sizes [G].
        flops: multiply-adds per example of each pair [W, G]
            (:func:`mrl.width_grid.grid_flops`).
        policy, target_drop, confidence, n_quantiles: as for
            :class:`~mrl.adaptive.classifier.AdaptiveClassifier`.
        stages: ``"pareto"`` (every pair on the fit data's front) or ``"per-width"`` (the most
            accurate pair of each width); see the module docstring.
        parts: optional [W][G] dicts {part: multiply-adds} of each pair
            (:func:`mrl.width_grid.grid_parts`), summing to ``flops``; with them, work that stages
            share is paid once (exact), without them every stage run is paid in full.

    Attributes (after ``fit``):
        pairs_: [(width, size)] the cascade's stages in ascending FLOPs order. flops_: [S] their
        FLOPs each on its own. costs_: the cost model the thresholds were fitted under.
        classifier_: the fitted :class:`AdaptiveClassifier` over the stages.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> labels = rng.integers(0, 3, 300)
        >>> logits = rng.normal(size=(2, 2, 300, 3))  # [W, G, N, C]
        >>> logits[1, 1, np.arange(300), labels] += 4.0  # only the full model knows
        >>> logits[0, 1, np.arange(150), labels[:150]] += 4.0  # a narrow one knows half
        >>> casc = WidthDimCascade([0.5, 1.0], [4, 8], np.array([[10, 20], [40, 50]]), policy="budget")
        >>> casc.fit(logits, labels).pairs_[-1], casc.evaluate(logits, labels)["expected_flops"] < 50 + 20
        ((1.0, 8), True)
    """

    def __init__(
        self,
        widths: Sequence[float],
        nesting: Sequence[int],
        flops: np.ndarray,
        policy: str = "budget",
        target_drop: float = 0.002,
        confidence: float = 0.9,
        n_quantiles: int = 25,
        stages: str = "pareto",
        parts: Sequence[Sequence[dict[str, int]]] | None = None,
    ):
        self.widths = widths
        self.nesting = nesting
        self.flops = flops
        self.policy = policy
        self.target_drop = target_drop
        self.confidence = confidence
        self.n_quantiles = n_quantiles
        self.stages = stages
        self.parts = parts

    def fit(self, logits, labels, target: float | None = None, budget: float | None = None) -> WidthDimCascade:
        """Choose the stages and learn their thresholds from held-out logits [W, G, N, C] and labels [N].

        Args:
            target, budget: budget policy, as for :meth:`AdaptiveClassifier.fit`
                (``budget`` in FLOPs per example).

        Returns:
            self.
        """
        check_choice("stages", self.stages, STAGES)
        flat = self._flatten(logits)
        labels = _check_labels(labels, flat.shape[1], flat.shape[2])
        order = pairs_by_flops(self._flops())
        if self.stages == "per-width":
            grid_accuracy = (flat.argmax(-1) == labels[None, :]).mean(axis=1).reshape(self._flops().shape)
            # the most accurate size of each width (ties: the cheaper); the last width's is the full model
            best = [int(np.lexsort((self._flops()[w], -grid_accuracy[w]))[0]) for w in range(len(self.widths) - 1)]
            best.append(len(self.nesting) - 1)
            order = order[[best[w] == g for w, g in order]]
        flat_index = order[:, 0] * len(self.nesting) + order[:, 1]
        stage_flops = self._flops().ravel()[flat_index].astype(np.float64)
        accuracy = (flat[flat_index].argmax(-1) == labels[None, :]).mean(axis=1)
        keep = sorted(set(pareto_front(stage_flops, accuracy).tolist()) | {len(flat_index) - 1})
        # AdaptiveClassifier's sizes must be strictly ascending: of pairs with equal FLOPs, keep one.
        keep = [k for i, k in enumerate(keep) if i == 0 or stage_flops[k] > stage_flops[keep[i - 1]]]
        if len(keep) < 2:
            raise MRLError("a (width, dim) cascade needs at least 2 pairs with different FLOPs")
        self.stages_ = flat_index[keep]
        self.pairs_ = [(float(self.widths[w]), int(self.nesting[g])) for w, g in order[keep]]
        self.flops_ = stage_flops[keep]
        self.costs_ = self._costs(order[keep])
        self.classifier_ = AdaptiveClassifier(
            self.flops_.astype(np.int64).tolist(), cost=self.costs_, policy=self.policy, target_drop=self.target_drop,
            confidence=self.confidence, n_quantiles=self.n_quantiles,
        ).fit(flat[self.stages_], labels, target=target, budget=budget)
        return self

    def predict(self, logits) -> tuple[np.ndarray, list[tuple[float, int]]]:
        """Labels [N] and the (width, size) pair that answered each sample."""
        stages = self._stage_logits(logits)
        chosen = cascade(max_softmax(stages), self.classifier_.thresholds_)
        labels = stages[chosen, np.arange(stages.shape[1])].argmax(axis=-1)
        return labels, [self.pairs_[s] for s in chosen]

    def evaluate(self, logits, labels) -> dict:
        """Accuracy, expected FLOPs per example (every pair run counted) and the share of samples
        answered by each pair, on logits [W, G, N, C] and labels [N]."""
        stages = self._stage_logits(logits)
        stats = self.classifier_.evaluate(stages, labels)
        shares = {f"{w}x{m}": v for (w, m), v in zip(self.pairs_, stats["share_per_size"].values())}
        return {"accuracy": stats["accuracy"], "expected_flops": stats["expected_cost"], "share_per_pair": shares}

    def _stage_logits(self, logits) -> np.ndarray:
        if not hasattr(self, "classifier_"):
            raise NotFittedError("this WidthDimCascade is not fitted yet; call fit(val_logits, val_labels) first")
        return self._flatten(logits)[self.stages_]

    def _costs(self, pairs: np.ndarray) -> Costs:
        """The cost model over the stages (width index, size index) [S, 2], whose own FLOPs are ``flops_``."""
        if self.parts is None:
            return head_costs(self.flops_.astype(np.int64).tolist(), "cumulative")
        flops = self._flops()
        try:
            grid = [[dict(self.parts[w][g]) for g in range(len(self.nesting))] for w in range(len(self.widths))]
        except (TypeError, IndexError, ValueError):
            raise MRLError(f"parts must be [W][G] = [{len(self.widths)}][{len(self.nesting)}] dicts of part -> FLOPs") from None
        for w, row in enumerate(grid):
            for g, pair in enumerate(row):
                if sum(pair.values()) != flops[w, g]:
                    raise MRLError(f"the parts of pair ({self.widths[w]}, {self.nesting[g]}) sum to {sum(pair.values())}, "
                                   f"not its FLOPs {flops[w, g]}")
        names = sorted({name for row in grid for pair in row for name in pair})
        need = np.array([[grid[w][g].get(name, 0) for name in names] for w, g in pairs], dtype=np.float64)
        return SharedCosts(need)

    def _flops(self) -> np.ndarray:
        flops = np.asarray(self.flops)
        if flops.shape != (len(self.widths), len(self.nesting)):
            raise MRLError(f"flops must be [W, G] = [{len(self.widths)}, {len(self.nesting)}], got shape {flops.shape}")
        return flops

    def _flatten(self, logits) -> np.ndarray:
        if hasattr(logits, "detach"):
            logits = logits.detach().cpu().numpy()
        arr = np.asarray(logits)
        if arr.ndim != 4 or arr.shape[:2] != (len(self.widths), len(self.nesting)):
            raise MRLError(
                f"logits must be [W, G, N, C] = [{len(self.widths)}, {len(self.nesting)}, N, C], got shape {arr.shape}"
            )
        return as_logits(arr.reshape(-1, *arr.shape[2:]))
