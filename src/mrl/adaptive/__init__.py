"""Adaptive classification with Matryoshka heads (MRL paper, section 4.2.1).

Array-level pieces (:mod:`mrl.adaptive.cascading`, :mod:`mrl.adaptive.search`) work on per-sample
confidences and utilities [S, N], so other per-size predictors (e.g. a Matryoshka language model's
adaptive decoding) reuse them without holding full logits.
"""

from mrl.adaptive.cascading import (
    COSTS,
    CascadeOutcome,
    HeadCosts,
    as_logits,
    cascade,
    cascade_outcome,
    evaluate_thresholds,
    head_costs,
    max_softmax,
)
from mrl.adaptive.search import (
    ThresholdSweep,
    exhaustive_thresholds,
    greedy_thresholds,
    pareto_front,
    quantile_candidates,
    sweep_thresholds,
)

__all__ = [
    "COSTS",
    "CascadeOutcome",
    "HeadCosts",
    "ThresholdSweep",
    "as_logits",
    "cascade",
    "cascade_outcome",
    "evaluate_thresholds",
    "exhaustive_thresholds",
    "greedy_thresholds",
    "head_costs",
    "max_softmax",
    "pareto_front",
    "quantile_candidates",
    "sweep_thresholds",
]
