"""MatryoshkaLoss(truncate=...) against sentence-transformers' MatryoshkaLoss on the same base losses.

A stand-in model returns given embeddings as its ``sentence_embedding``, so both wrappers see the
same vectors and the same base loss; only the Matryoshka part (which arguments are cut, which are
normalised) is compared, in value and in gradient.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

try:  # the adapter extra; sentence-transformers >= 6 moved the losses
    from sentence_transformers.sentence_transformer import losses as st_losses
except ImportError:
    from sentence_transformers import losses as st_losses

from mrl.errors import MRLError
from mrl.losses import MatryoshkaLoss

NESTING = [4, 8, 32]


class PassThrough(nn.Module):
    """The part of a SentenceTransformer the losses use: forward(features) and the embedding size."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, features: dict) -> dict:
        return {"sentence_embedding": features["emb"]}

    def get_embedding_dimension(self) -> int:
        return self.dim


def embeddings(*shapes):
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(*shape, generator=gen, dtype=torch.float64).requires_grad_() for shape in shapes]


def assert_same_value_and_gradient(ours, theirs, inputs):
    ours_grad = torch.autograd.grad(ours, inputs)
    theirs_grad = torch.autograd.grad(theirs, inputs)
    torch.testing.assert_close(ours, theirs)
    for a, b in zip(ours_grad, theirs_grad):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("name", ["MultipleNegativesRankingLoss", "CoSENTLoss"])
def test_pair_losses_match_sentence_transformers(name):
    model = PassThrough(32)
    base = getattr(st_losses, name)(model)
    anchor, positive = embeddings((6, 32), (6, 32))
    scores = torch.linspace(0.0, 1.0, 6, dtype=torch.float64)  # CoSENT's labels; ignored by MNRL
    theirs = st_losses.MatryoshkaLoss(model, base, NESTING)([{"emb": anchor}, {"emb": positive}], scores)
    ours = MatryoshkaLoss(lambda a, p, y: base([{"emb": a}, {"emb": p}], y), NESTING, truncate=True, normalize=True)
    assert_same_value_and_gradient(ours(anchor, positive, scores), theirs, [anchor, positive])


def test_mse_distillation_cuts_the_teacher_without_normalising_it():
    model = PassThrough(32)
    base = st_losses.MSELoss(model)
    student, teacher = embeddings((6, 32), (6, 32))
    theirs = st_losses.MatryoshkaLoss(model, base, NESTING)([{"emb": student}], teacher)

    def mse(s, t):
        return base([{"emb": s}], t)

    ours = MatryoshkaLoss(mse, NESTING, truncate=True, normalize=(0,))(student, teacher)
    assert_same_value_and_gradient(ours, theirs, [student])  # the teacher is a fixed target
    # the same with explicit positions, and the difference to normalising both
    explicit = MatryoshkaLoss(mse, NESTING, truncate=(0, 1), normalize=(0,))(student, teacher)
    torch.testing.assert_close(explicit, theirs)
    both = MatryoshkaLoss(mse, NESTING, truncate=True, normalize=True)(student, teacher)
    assert not torch.allclose(both, theirs)


def test_truncate_positions_leave_other_arguments_whole():
    seen = []

    def base(a, b):
        seen.append((a.shape[-1], b.shape[-1], round(float(a.norm(dim=-1)[0]), 6)))
        return a.sum() + b.sum()

    a, b = torch.full((2, 32), 2.0), torch.ones(2, 32)
    MatryoshkaLoss(base, NESTING, truncate=(0,), normalize=(0,))(a, b)
    assert seen == [(4, 32, 1.0), (8, 32, 1.0), (32, 32, 1.0)]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"truncate": "0"}, r"truncate must be True, False or a sequence of argument positions"),
        ({"truncate": (0, -1)}, r"truncate positions must be non-negative integers"),
        ({"truncate": (), "normalize": False}, r"truncate positions must be non-negative integers"),
        ({"truncate": False, "normalize": True}, r"normalize applies to truncated arguments"),
        ({"truncate": (0,), "normalize": (1,)}, r"normalize names argument\(s\) \[1\] that truncate=\[0\] does not cut"),
    ],
)
def test_truncate_and_normalize_errors(kwargs, match):
    with pytest.raises(MRLError, match=match):
        MatryoshkaLoss(nn.MSELoss(), NESTING, **kwargs)


def test_listed_argument_must_be_a_tensor():
    with pytest.raises(MRLError, match="argument 1 is listed in truncate but is not an embedding tensor"):
        MatryoshkaLoss(lambda a, b: a.sum(), NESTING, truncate=(0, 1))(torch.randn(2, 32), 3)
