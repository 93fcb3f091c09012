"""Adaptive retrieval with Matryoshka prefixes (MRL paper, section 4.3): funnel index, exact ground truth, tuning, costs."""

from mrl.retrieval.costs import funnel_flops, stage_flops
from mrl.retrieval.evaluation import default_configurations, evaluate_configurations, format_table, plot_accuracy_vs_flops
from mrl.retrieval.funnel import FunnelIndex, SearchStats, format_funnel, parse_funnel, validate_funnel
from mrl.retrieval.ground_truth import exact_search
from mrl.retrieval.shortlist import ShortlistSpec
from mrl.retrieval.tuning import (FunnelTuner, IndexTuner, candidate_funnels, default_shortlists, format_shortlist, holding_target,
                                  pareto_front, parse_shortlists)

__all__ = [
    "FunnelIndex",
    "FunnelTuner",
    "IndexTuner",
    "SearchStats",
    "ShortlistSpec",
    "candidate_funnels",
    "default_configurations",
    "default_shortlists",
    "evaluate_configurations",
    "exact_search",
    "format_funnel",
    "format_table",
    "funnel_flops",
    "holding_target",
    "pareto_front",
    "parse_funnel",
    "format_shortlist",
    "parse_shortlists",
    "plot_accuracy_vs_flops",
    "stage_flops",
    "validate_funnel",
]
