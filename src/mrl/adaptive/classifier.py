"""AdaptiveClassifier: per-sample choice of the nesting size from held-out max-softmax thresholds.

The estimator of the MRL paper's adaptive classification (Kusupati et al., NeurIPS 2022, section
4.2.1): each input is answered by the smallest Matryoshka head whose max-softmax clears a learned
threshold. It follows scikit-learn's conventions (``__init__`` stores parameters untouched, ``fit``
validates and learns ``thresholds_``, refitting forgets, using it unfitted raises
:class:`~mrl.errors.NotFittedError`). Policies:

- ``greedy``: the paper's rule (:func:`~mrl.adaptive.search.greedy_thresholds`);
- ``budget``: the cheapest thresholds on the cost-accuracy Pareto front
  (:func:`~mrl.adaptive.search.sweep_thresholds`) whose held-out accuracy reaches a target (by
  default the largest size's accuracy minus ``target_drop``) with a margin for the noise of the fit
  data (:func:`~mrl.adaptive.search.select_with_confidence`), or the most accurate within a budget.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from statistics import NormalDist

import numpy as np

from mrl.adaptive.cascading import (
    COSTS,
    Costs,
    as_logits,
    cascade,
    cascade_outcome,
    head_costs,
    max_softmax,
)
from mrl.adaptive.search import ThresholdSweep, greedy_thresholds, select_with_confidence, sweep_thresholds
from mrl.errors import MRLError, NotFittedError
from mrl.nesting import validate_nesting

log = logging.getLogger(__name__)
POLICIES = ("greedy", "budget")


class AdaptiveClassifier:
    """Classify with the smallest confident Matryoshka head.

    Args:
        nesting: ascending sizes [S], one per head (the order of the logits' first axis).
        cost: what the budget policy minimises: ``final`` (dims of the answering head),
            ``cumulative`` (dims of every head run) or ``flops`` (m * C over heads run); or a
            cost model over the S stages (:class:`~mrl.adaptive.cascading.HeadCosts`,
            :class:`~mrl.adaptive.cascading.SharedCosts`).
        policy: ``greedy`` (the paper's) or ``budget``.
        target_drop: budget policy without ``target``/``budget``: accepted accuracy loss (a
            fraction; 0.002 = 0.2 points) below the largest size on the fit data.
        confidence: budget policy with a target: the target must hold for a one-sided normal lower
            confidence bound at this level (paired with the largest size for ``target_drop``);
            0.5 takes the fit data at face value. The cheapest point that just reaches a target
            on the fit data was picked for its luck there and falls short on new data.
        grid: greedy thresholds grid (number of points on [0, 1] or an ascending array); +inf,
            "never answer at this size", is always a candidate.
        n_quantiles: budget policy: candidate thresholds per size. Fewer generalise better from
            a few thousand fit samples (on Fashion-MNIST with 2,500: 25 beat 100 on test).
        n_lambdas: budget policy: Lagrange multipliers in the sweep.

    Attributes (after ``fit``):
        thresholds_: [S-1] max-softmax thresholds. sweep_: the :class:`ThresholdSweep` (budget
        policy; None for greedy). target_: the accuracy goal used (budget policy). n_classes_: C.
        fit_accuracy_, expected_dims_ (mean dims of the answering head),
        expected_cumulative_dims_ (mean dims of all heads run), expected_flops_, expected_cost_
        (mean cost under ``cost``): on the fit data.
        certified_: budget policy with a target: whether a front point reached it with the margin;
        when none did, ``thresholds_`` are all +inf (the largest size answers, which is safe on new
        data) and a warning is logged. None for greedy and for a cost budget.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> labels = rng.integers(0, 3, 200)
        >>> logits = rng.normal(size=(2, 200, 3))
        >>> logits[1, np.arange(200), labels] += 3.0  # the larger head knows the answer
        >>> clf = AdaptiveClassifier([8, 64], policy="budget").fit(logits, labels)
        >>> predicted, sizes_used = clf.predict(logits)
        >>> bool((predicted == labels).mean() >= clf.target_), set(sizes_used.tolist()) <= {8, 64}
        (True, True)
    """

    def __init__(
        self,
        nesting: Sequence[int],
        cost: str = "final",
        policy: str = "greedy",
        target_drop: float = 0.002,
        confidence: float = 0.9,
        grid: int | np.ndarray = 101,
        n_quantiles: int = 25,
        n_lambdas: int = 48,
    ):
        self.nesting = nesting
        self.cost = cost
        self.policy = policy
        self.target_drop = target_drop
        self.confidence = confidence
        self.grid = grid
        self.n_quantiles = n_quantiles
        self.n_lambdas = n_lambdas

    def fit(self, logits, labels, target: float | None = None, budget: float | None = None) -> AdaptiveClassifier:
        """Learn thresholds from held-out logits [S, N, C] (or a list of [N, C]) and labels [N].

        Args:
            target: budget policy: least accuracy to reach (a fraction in (0, 1]).
            budget: budget policy: most expected cost (in the units of ``cost``) to spend.

        Returns:
            self.
        """
        logits = self._check_logits(logits)
        labels = _check_labels(labels, logits.shape[1], logits.shape[2])
        conf = max_softmax(logits)
        correct = (logits.argmax(axis=-1) == labels[None, :]).astype(np.float64)
        return self._fit_arrays(conf, correct, logits.shape[2], target=target, budget=budget)

    def _fit_arrays(self, conf: np.ndarray, correct: np.ndarray, num_classes: int, target=None, budget=None):
        nesting = validate_nesting(self.nesting)
        if not isinstance(self.cost, Costs) and self.cost not in COSTS:
            raise MRLError(f"cost must be one of {list(COSTS)} or a cost model, got {self.cost!r}")
        if isinstance(self.cost, Costs) and len(self.cost.answer) != len(nesting):
            raise MRLError(f"the cost model has {len(self.cost.answer)} stages but nesting has {len(nesting)}")
        if self.policy not in POLICIES:
            raise MRLError(f"policy must be one of {list(POLICIES)}, got {self.policy!r}")
        if len(nesting) < 2:
            raise MRLError(f"adaptive classification needs at least 2 nesting sizes, got {nesting}")
        for attr in ("thresholds_", "sweep_", "target_"):
            self.__dict__.pop(attr, None)
        self.certified_ = None
        self.n_classes_ = int(num_classes)
        self.nesting_ = nesting
        if self.policy == "greedy":
            if target is not None or budget is not None:
                raise MRLError("target and budget apply to policy='budget'; the greedy policy has no goal to set")
            self.thresholds_ = greedy_thresholds(conf, correct, self.grid)
            self.sweep_ = None
            self.target_ = None
        else:
            if target is not None and budget is not None:
                raise MRLError(f"give target or budget, not both (got target={target}, budget={budget})")
            if target is not None and not 0.0 < float(target) <= 1.0:
                raise MRLError(f"target is an accuracy in (0, 1], got {target}")
            if not 0.0 <= float(self.target_drop) < 1.0:
                raise MRLError(f"target_drop is a fraction in [0, 1), got {self.target_drop}")
            if not 0.5 <= float(self.confidence) < 1.0:
                raise MRLError(f"confidence is a level in [0.5, 1), got {self.confidence}")
            costs = self._cost_model()
            self.sweep_: ThresholdSweep | None = sweep_thresholds(
                conf, correct, costs, n_quantiles=self.n_quantiles, n_lambdas=self.n_lambdas
            )
            z = NormalDist().inv_cdf(float(self.confidence))
            if budget is not None:
                self.target_ = None
                pick = self.sweep_.select(max_cost=budget)
            elif target is None:
                self.target_ = float(correct[-1].mean()) - float(self.target_drop)
                pick = select_with_confidence(self.sweep_, conf, correct, -float(self.target_drop), correct[-1], z)
            else:
                self.target_ = float(target)
                pick = select_with_confidence(self.sweep_, conf, correct, self.target_, None, z)
            if budget is None:
                self.certified_ = pick is not None
            if pick is None:
                # Nothing cheaper certifies the target: the fit data's most accurate point was picked
                # for its luck there too, so answer with the largest size, the reference itself.
                log.warning("target %.4f cannot be certified on %d fit samples at confidence %.2f; the largest "
                            "size answers every sample", self.target_, conf.shape[1], self.confidence)
                self.thresholds_ = np.full(len(nesting) - 1, np.inf)
            else:
                self.thresholds_ = self.sweep_.thresholds[pick].copy()
        stats = self._evaluate_arrays(conf, correct)
        self.fit_accuracy_ = stats["accuracy"]
        self.expected_dims_ = stats["expected_dims"]
        self.expected_cumulative_dims_ = stats["expected_cumulative_dims"]
        self.expected_flops_ = stats["expected_flops"]
        self.expected_cost_ = stats["expected_cost"]
        return self

    def predict(self, logits) -> tuple[np.ndarray, np.ndarray]:
        """Labels [N] and the nesting size that answered each sample [N]."""
        self._check_fitted()
        logits = self._check_logits(logits)
        if logits.shape[2] != self.n_classes_:
            raise MRLError(f"logits have {logits.shape[2]} classes but the classifier was fitted on {self.n_classes_}")
        chosen = cascade(max_softmax(logits), self.thresholds_)
        labels = logits[chosen, np.arange(logits.shape[1])].argmax(axis=-1)
        return labels, np.asarray(self.nesting_)[chosen]

    def evaluate(self, logits, labels) -> dict:
        """Accuracy, expected dims (final and cumulative), expected head FLOPs, expected cost under
        ``cost`` and the share of samples answered at each size, on logits [S, N, C] and labels [N]."""
        self._check_fitted()
        logits = self._check_logits(logits)
        labels = _check_labels(labels, logits.shape[1], logits.shape[2])
        correct = (logits.argmax(axis=-1) == labels[None, :]).astype(np.float64)
        return self._evaluate_arrays(max_softmax(logits), correct)

    def _evaluate_arrays(self, conf: np.ndarray, correct: np.ndarray) -> dict:
        final = cascade_outcome(conf, correct, self.thresholds_, head_costs(self.nesting_, "final"))
        cumulative = self._cost_of(final.chosen, "cumulative")
        flops = self._cost_of(final.chosen, "flops")
        shares = np.bincount(final.chosen, minlength=len(self.nesting_)) / final.chosen.size
        return {
            "accuracy": final.mean_utility,
            "expected_dims": final.mean_cost,
            "expected_cumulative_dims": cumulative,
            "expected_flops": flops,
            "expected_cost": float(self._cost_model().per_answer(self.thresholds_)[final.chosen].mean()),
            "share_per_size": {str(m): float(v) for m, v in zip(self.nesting_, shares)},
        }

    def _cost_model(self) -> Costs:
        if isinstance(self.cost, Costs):
            return self.cost
        return head_costs(self.nesting_, self.cost, self.n_classes_)

    def _cost_of(self, chosen: np.ndarray, cost: str) -> float:
        per_answer = head_costs(self.nesting_, cost, self.n_classes_).per_answer(self.thresholds_)
        return float(per_answer[chosen].mean())

    def _check_logits(self, logits) -> np.ndarray:
        logits = as_logits(logits)
        sizes = len(validate_nesting(self.nesting))
        if logits.shape[0] != sizes:
            raise MRLError(f"logits have {logits.shape[0]} sizes but nesting has {sizes} ({list(self.nesting)})")
        return logits

    def _check_fitted(self) -> None:
        if not hasattr(self, "thresholds_"):
            raise NotFittedError("this AdaptiveClassifier is not fitted yet; call fit(val_logits, val_labels) first")


def _check_labels(labels, n: int, num_classes: int) -> np.ndarray:
    if hasattr(labels, "detach"):
        labels = labels.detach().cpu().numpy()
    arr = np.asarray(labels)
    if arr.shape != (n,):
        raise MRLError(f"labels must be [N] = [{n}] to match the logits, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer):
        raise MRLError(f"labels must be integers, got dtype {arr.dtype}")
    if arr.size and (arr.min() < 0 or arr.max() >= num_classes):
        raise MRLError(f"labels must lie in [0, {num_classes - 1}], got values in [{arr.min()}, {arr.max()}]")
    return arr.astype(np.int64)
