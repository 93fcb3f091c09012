"""mrl: Matryoshka Representation Learning (Kusupati et al., NeurIPS 2022), end to end."""

from mrl.errors import MRLError, NotFittedError
from mrl.heads import MatryoshkaLinear, nested_logits
from mrl.losses import MatryoshkaLoss
from mrl.nesting import default_nesting, parse_nesting, truncate, validate_nesting

__version__ = "0.1.0"

__all__ = [
    "MRLError",
    "MatryoshkaLinear",
    "MatryoshkaLoss",
    "NotFittedError",
    "default_nesting",
    "nested_logits",
    "parse_nesting",
    "truncate",
    "validate_nesting",
]
