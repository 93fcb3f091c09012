"""Adaptive retrieval with Matryoshka prefixes (MRL paper, section 4.3): funnel index, exact ground truth, tuning, costs."""

from mrl.retrieval.costs import funnel_flops, stage_flops
from mrl.retrieval.evaluation import default_configurations, evaluate_configurations, format_table, plot_accuracy_vs_flops
from mrl.retrieval.funnel import FunnelIndex, format_funnel, parse_funnel, validate_funnel
from mrl.retrieval.ground_truth import exact_search
from mrl.retrieval.tuning import FunnelTuner, candidate_funnels

__all__ = [
    "FunnelIndex",
    "FunnelTuner",
    "candidate_funnels",
    "default_configurations",
    "evaluate_configurations",
    "exact_search",
    "format_funnel",
    "format_table",
    "funnel_flops",
    "parse_funnel",
    "plot_accuracy_vs_flops",
    "stage_flops",
    "validate_funnel",
]
