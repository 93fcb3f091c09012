"""Matryoshka linear heads: one classifier per nesting size over the prefix z[:m].

MRL (Kusupati et al. 2022, eq. 1) learns a separate head W_m for every m in M; MRL-E (section 3,
"Efficient Matryoshka") ties them, W_m = W[:, :m], which roughly halves the head's parameters.
The tied logits are computed blockwise: the partial products z[:, a:b] W[:, a:b]^T of consecutive
blocks are computed once and summed cumulatively, so all sizes cost about one full head.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from mrl.errors import MRLError
from mrl.nesting import validate_nesting


def nested_logits(
    z: torch.Tensor, weight: torch.Tensor, nesting: Sequence[int], bias: torch.Tensor | None = None
) -> torch.Tensor:
    """Logits of the tied heads W[:, :m] for every m, at the cost of one full product.

    Args:
        z: representations [..., d].
        weight: shared weight [C, d] (d >= nesting[-1]).
        nesting: ascending prefix sizes.
        bias: per-size biases [G, C] or None.

    Returns:
        logits [G, ..., C] with logits[g] = z[..., :m_g] @ weight[:, :m_g].T (+ bias[g]).

    Example:
        >>> z, w = torch.randn(4, 8), torch.randn(3, 8)
        >>> out = nested_logits(z, w, [2, 8])
        >>> torch.allclose(out[0], z[:, :2] @ w[:, :2].T, atol=1e-6)
        True
    """
    partial = []
    start = 0
    for m in nesting:
        partial.append(z[..., start:m] @ weight[:, start:m].T)
        start = m
    logits = torch.cumsum(torch.stack(partial), dim=0)
    if bias is not None:
        logits = logits + bias.view(bias.shape[0], *([1] * (logits.dim() - 2)), bias.shape[1])
    return logits


class MatryoshkaLinear(nn.Module):
    """Linear classifiers on every nested prefix of a representation.

    Args:
        in_dim: representation size d.
        num_classes: number of outputs C.
        nesting: ascending prefix sizes, the largest at most ``in_dim``.
        tied: False for MRL (one W_m per size), True for MRL-E (W_m = W[:, :m], one bias per size).
        bias: learn biases.

    Shape:
        input [B, d] -> output [G, B, C], G = len(nesting).

    Example:
        >>> head = MatryoshkaLinear(64, 10, nesting=[8, 16, 32, 64], tied=True)
        >>> head(torch.randn(5, 64)).shape
        torch.Size([4, 5, 10])
    """

    def __init__(
        self, in_dim: int, num_classes: int, nesting: Sequence[int], tied: bool = False, bias: bool = True
    ) -> None:
        super().__init__()
        if not isinstance(in_dim, int) or in_dim < 1:
            raise MRLError(f"in_dim must be a positive integer, got {in_dim!r}")
        if not isinstance(num_classes, int) or num_classes < 1:
            raise MRLError(f"num_classes must be a positive integer, got {num_classes!r}")
        self.nesting = validate_nesting(nesting, in_dim)
        self.in_dim = in_dim
        self.num_classes = num_classes
        self.tied = tied
        if tied:
            self.weight = nn.Parameter(torch.empty(num_classes, self.nesting[-1]))
            self.bias = nn.Parameter(torch.zeros(len(self.nesting), num_classes)) if bias else None
            # Same init as nn.Linear over the full width.
            nn.init.kaiming_uniform_(self.weight, a=5**0.5)
        else:
            self.heads = nn.ModuleList(nn.Linear(m, num_classes, bias=bias) for m in self.nesting)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if z.shape[-1] != self.in_dim:
            raise MRLError(f"expected representations of size {self.in_dim}, got shape {tuple(z.shape)}")
        if self.tied:
            return nested_logits(z, self.weight, self.nesting, self.bias)
        return torch.stack([head(z[..., :m]) for m, head in zip(self.nesting, self.heads)])

    def head_weight(self, index: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Weight [C, m] and bias [C] of the head at nesting position ``index``."""
        if self.tied:
            m = self.nesting[index]
            return self.weight[:, :m], None if self.bias is None else self.bias[index]
        head = self.heads[index]
        return head.weight, head.bias

    def extra_repr(self) -> str:
        return f"in_dim={self.in_dim}, num_classes={self.num_classes}, nesting={self.nesting}, tied={self.tied}"
