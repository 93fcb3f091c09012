"""Adaptive classification with Matryoshka heads (MRL paper, section 4.2.1).

Array-level pieces (:mod:`mrl.adaptive.cascading`, :mod:`mrl.adaptive.search`) work on per-sample
confidences and utilities [S, N], so other per-size predictors (e.g. a Matryoshka language model's
adaptive decoding) reuse them without holding full logits.
"""

from mrl.adaptive.cascading import (
    COSTS,
    CascadeOutcome,
    HeadCosts,
    SharedCosts,
    as_logits,
    cascade,
    cascade_outcome,
    evaluate_thresholds,
    head_costs,
    max_softmax,
)
from mrl.adaptive.classifier import POLICIES, AdaptiveClassifier
from mrl.adaptive.protocol import (
    bootstrap_fit,
    oracle_accuracy,
    pareto_curve,
    repeated_splits,
    share_wrong_at_every_size,
    thresholds_to_json,
)
from mrl.adaptive.search import (
    ThresholdSweep,
    budget_thresholds,
    exhaustive_thresholds,
    greedy_thresholds,
    pareto_front,
    quantile_candidates,
    select_with_confidence,
    sweep_thresholds,
)
from mrl.adaptive.widths import WidthDimCascade, pairs_by_flops

__all__ = [
    "COSTS",
    "POLICIES",
    "AdaptiveClassifier",
    "CascadeOutcome",
    "HeadCosts",
    "SharedCosts",
    "ThresholdSweep",
    "WidthDimCascade",
    "as_logits",
    "bootstrap_fit",
    "budget_thresholds",
    "cascade",
    "cascade_outcome",
    "evaluate_thresholds",
    "exhaustive_thresholds",
    "greedy_thresholds",
    "head_costs",
    "max_softmax",
    "oracle_accuracy",
    "pairs_by_flops",
    "pareto_curve",
    "pareto_front",
    "quantile_candidates",
    "repeated_splits",
    "select_with_confidence",
    "share_wrong_at_every_size",
    "sweep_thresholds",
    "thresholds_to_json",
]
