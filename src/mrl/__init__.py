"""mrl: Matryoshka Representation Learning (Kusupati et al., NeurIPS 2022), end to end.

The public API, re-exported from the modules that define it: nesting lists and truncation, the
Matryoshka heads and loss, backbones, training and evaluation of runs, baselines, adaptive
classification, retrieval metrics and the funnel index, the post-hoc adapter and the Matryoshka LM.

The adapter and the LM load on first use (module ``__getattr__``), so ``import mrl`` needs only the
core dependencies; using them without their extra raises an error naming it (``mrl[lm]``).
"""

import importlib

from mrl.adaptive import (
    AdaptiveClassifier,
    WidthDimCascade,
    budget_thresholds,
    cascade,
    greedy_thresholds,
    head_costs,
    max_softmax,
)
from mrl.baselines import LinearProbe, RandomFeatures, SlimmableClassifier, SVDProjection, retrofit
from mrl.compare import compare
from mrl.config import TrainConfig
from mrl.data import load_dataset
from mrl.errors import MissingExtraError, MRLError, NotFittedError
from mrl.evaluation import evaluate_run
from mrl.heads import MatryoshkaLinear, nested_logits
from mrl.losses import MatryoshkaLoss
from mrl.metrics import (
    Relevance,
    average_precision_at_k,
    knn_recall_at_k,
    ndcg_at_k,
    precision_at_k,
    recall_at_k,
    top_k_accuracy,
)
from mrl.models import MatryoshkaClassifier, NestedFFN, NestedWidthMLP, create_model
from mrl.models.widths import parse_widths, validate_widths
from mrl.nesting import default_nesting, parse_nesting, truncate, validate_nesting
from mrl.retrieval import FunnelIndex, FunnelTuner, exact_search
from mrl.training import train

__version__ = "0.1.0"

_LAZY = {
    "FitConfig": "adapter", "MatryoshkaAdapter": "adapter", "fit_adapter": "adapter",
    "LMConfig": "lm", "LMTokenizer": "lm", "MatryoshkaLM": "lm", "load_corpus": "lm",
}


def __getattr__(name: str):
    extra = _LAZY.get(name)
    if extra is None:
        raise AttributeError(f"module 'mrl' has no attribute {name!r}")
    try:
        module = importlib.import_module(f"mrl.{extra}")
    except ImportError as exc:
        if isinstance(exc, MRLError):
            raise
        raise MissingExtraError(f"mrl.{name} needs {exc.name!r}: pip install 'mrl[{extra}]'") from exc
    value = getattr(module, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))

__all__ = [
    "AdaptiveClassifier",
    "FitConfig",
    "FunnelIndex",
    "FunnelTuner",
    "LMConfig",
    "LMTokenizer",
    "LinearProbe",
    "MRLError",
    "MissingExtraError",
    "MatryoshkaAdapter",
    "MatryoshkaClassifier",
    "MatryoshkaLM",
    "MatryoshkaLinear",
    "MatryoshkaLoss",
    "NestedFFN",
    "NestedWidthMLP",
    "NotFittedError",
    "RandomFeatures",
    "Relevance",
    "SVDProjection",
    "SlimmableClassifier",
    "TrainConfig",
    "WidthDimCascade",
    "average_precision_at_k",
    "budget_thresholds",
    "cascade",
    "compare",
    "create_model",
    "default_nesting",
    "evaluate_run",
    "exact_search",
    "fit_adapter",
    "greedy_thresholds",
    "head_costs",
    "knn_recall_at_k",
    "load_corpus",
    "load_dataset",
    "max_softmax",
    "nested_logits",
    "ndcg_at_k",
    "parse_nesting",
    "parse_widths",
    "precision_at_k",
    "recall_at_k",
    "retrofit",
    "top_k_accuracy",
    "train",
    "truncate",
    "validate_nesting",
    "validate_widths",
]
