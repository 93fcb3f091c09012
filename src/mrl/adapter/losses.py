"""Losses that teach a post-hoc adapter to give frozen embeddings a Matryoshka prefix structure.

Matryoshka-Adaptor (Yoon et al., 2024, section 3) trains f(e) = e + g(e) so that every prefix
f(e)[:m] keeps the geometry of the full embedding e, the nested objective of MRL (Kusupati et al.
2022, eq. 1) applied to similarities instead of class logits. Each term below is a base loss that
:class:`~mrl.losses.MatryoshkaLoss` (``truncate=True``) evaluates on every prefix:

* :class:`PairwiseSimilarityLoss`: |cos(f(e_i)[:m], f(e_j)[:m]) - cos(e_i, e_j)| over all pairs
  of a batch (the global geometry);
* :class:`NeighbourSimilarityLoss`: the same over each item's k nearest neighbours in the full
  space (the local geometry, which is what top-k retrieval reads);
* :func:`reconstruction_loss`: ||f(e) - e||^2 at full size, so the full embedding stays usable;
* :class:`InBatchContrastiveLoss`: the supervised ranking term on (query, relevant document)
  pairs, softmax over the batch's documents (MultipleNegativesRankingLoss in sentence-transformers).

The targets (cosines of the frozen embeddings) are 1-D tensors, which MatryoshkaLoss passes through
uncut while it cuts the adapted embeddings to each prefix; the base losses normalise each prefix
themselves, smoothly at zero (:func:`unit_rows`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mrl.errors import MRLError
from mrl.losses import MatryoshkaLoss
from mrl.nesting import validate_nesting


def unit_rows(x: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """Rows scaled to unit length, x / sqrt(||x||^2 + eps^2).

    Smooth at zero, unlike x / max(||x||, 1e-12): a prefix that is exactly zero (sparse embeddings,
    or an adapter's own zero coordinates) gets a gradient of at most 1/eps instead of 1e12, which
    would overflow Adam's second moment and freeze those weights for good. For prefixes of
    norm >= 0.01 the difference from exact cosine is below 1e-4.

    Example:
        >>> unit_rows(torch.tensor([[3.0, 4.0], [0.0, 0.0]]))
        tensor([[0.6000, 0.8000],
                [0.0000, 0.0000]])
    """
    return x * torch.rsqrt(x.pow(2).sum(-1, keepdim=True) + eps * eps)


def cosine_matrix(x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
    """Cosine similarities between rows, [A, d] x [B, d] -> [A, B] (``y`` defaults to ``x``).

    Example:
        >>> cosine_matrix(torch.tensor([[1.0, 0.0], [1.0, 1.0]])).round(decimals=4)
        tensor([[1.0000, 0.7071],
                [0.7071, 1.0000]])
    """
    x = unit_rows(x)
    y = x if y is None else unit_rows(y)
    return x @ y.T


def pairwise_targets(embeddings: torch.Tensor) -> torch.Tensor:
    """Cosines of all ordered pairs of distinct rows of the frozen embeddings [B, d], flat [B*(B-1)]."""
    sims = cosine_matrix(embeddings)
    return sims[~torch.eye(len(sims), dtype=torch.bool, device=sims.device)]


def neighbour_targets(embeddings: torch.Tensor, neighbours: torch.Tensor) -> torch.Tensor:
    """Cosines of rows [B, d] with their neighbours [B, k, d] in the frozen space, flat [B*k]."""
    return torch.einsum(
        "bd,bkd->bk", unit_rows(embeddings), unit_rows(neighbours)
    ).reshape(-1)


class PairwiseSimilarityLoss(nn.Module):
    """Mean |cos(a_i, a_j) - target_ij| over ordered pairs i != j of a batch.

    Args of forward:
        adapted: adapted embeddings (one prefix) [B, m].
        targets: frozen full-size cosines from :func:`pairwise_targets`, [B*(B-1)].

    Example:
        >>> e = torch.randn(5, 8)
        >>> PairwiseSimilarityLoss()(e, pairwise_targets(e)).item() < 1e-6
        True
    """

    def forward(self, adapted: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return (pairwise_targets(adapted) - targets).abs().mean()


class NeighbourSimilarityLoss(nn.Module):
    """Mean |cos(a_i, a_n) - target_in| over each row's k neighbours n.

    Args of forward:
        adapted: adapted embeddings (one prefix) [B, m].
        adapted_neighbours: adapted embeddings of the neighbours (same prefix) [B, k, m].
        targets: frozen full-size cosines from :func:`neighbour_targets`, [B*k].

    Example:
        >>> e, n = torch.randn(4, 8), torch.randn(4, 3, 8)
        >>> NeighbourSimilarityLoss()(e, n, neighbour_targets(e, n)).item() < 1e-6
        True
    """

    def forward(self, adapted: torch.Tensor, adapted_neighbours: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return (neighbour_targets(adapted, adapted_neighbours) - targets).abs().mean()


def reconstruction_loss(adapted: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
    """Mean squared L2 distance between adapted and frozen embeddings at full size, [B, d] -> [].

    Example:
        >>> reconstruction_loss(torch.ones(2, 3), torch.zeros(2, 3))
        tensor(3.)
    """
    return (adapted - embeddings).pow(2).sum(-1).mean()


class InBatchContrastiveLoss(nn.Module):
    """Cross-entropy of each query against all documents of the batch; row i's positive is doc i.

    Args:
        temperature: softmax temperature on cosine similarities (0.05 = sentence-transformers' scale 20).

    Example:
        >>> q = torch.eye(4)
        >>> InBatchContrastiveLoss(0.05)(q, q).item() < 1e-6
        True
    """

    def __init__(self, temperature: float = 0.05) -> None:
        super().__init__()
        if not temperature > 0:
            raise MRLError(f"temperature must be positive, got {temperature!r}")
        self.temperature = float(temperature)

    def forward(self, queries: torch.Tensor, documents: torch.Tensor) -> torch.Tensor:
        logits = cosine_matrix(queries, documents) / self.temperature
        return F.cross_entropy(logits, torch.arange(len(queries), device=logits.device))

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"


class UnsupervisedAdapterLoss(nn.Module):
    """Weighted sum of the pairwise, neighbour and reconstruction terms over all prefix sizes.

    ``loss = pairwise_weight * sum_m w_m Pairwise_m + neighbour_weight * sum_m w_m Neighbour_m
    + reconstruction_weight * Reconstruction``.

    Args:
        nesting: ascending prefix sizes (the full size may be among them).
        weights: per-size weights w_m (default 1).
        pairwise_weight, neighbour_weight, reconstruction_weight: weights of the three terms (>= 0).

    Example:
        >>> loss = UnsupervisedAdapterLoss([4, 8])
        >>> e = torch.randn(6, 8)
        >>> terms = loss(e, e)   # identity adapter on e: only the prefix terms can be non-zero
        >>> sorted(terms)
        ['loss', 'neighbour', 'pairwise', 'reconstruction']
    """

    def __init__(
        self,
        nesting: Sequence[int],
        weights: Sequence[float] | None = None,
        pairwise_weight: float = 1.0,
        neighbour_weight: float = 1.0,
        reconstruction_weight: float = 1.0,
    ) -> None:
        super().__init__()
        self.nesting = validate_nesting(nesting)
        for name, value in (
            ("pairwise_weight", pairwise_weight),
            ("neighbour_weight", neighbour_weight),
            ("reconstruction_weight", reconstruction_weight),
        ):
            if not (isinstance(value, (int, float)) and value >= 0):
                raise MRLError(f"{name} must be a non-negative number, got {value!r}")
        self.pairwise = MatryoshkaLoss(PairwiseSimilarityLoss(), self.nesting, weights, truncate=True)
        self.neighbour = MatryoshkaLoss(NeighbourSimilarityLoss(), self.nesting, weights, truncate=True)
        self.pairwise_weight = float(pairwise_weight)
        self.neighbour_weight = float(neighbour_weight)
        self.reconstruction_weight = float(reconstruction_weight)

    def forward(
        self,
        adapted: torch.Tensor,
        embeddings: torch.Tensor,
        adapted_neighbours: torch.Tensor | None = None,
        neighbours: torch.Tensor | None = None,
        pairwise_adapted: torch.Tensor | None = None,
        pairwise_embeddings: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Loss terms for a batch.

        Args:
            adapted: f(e) [B, d].
            embeddings: the frozen e [B, d].
            adapted_neighbours: f of each row's k nearest frozen neighbours [B, k, d], or None to
                skip the neighbour term.
            neighbours: those neighbours' frozen embeddings [B, k, d].
            pairwise_adapted: rows for the pairwise and reconstruction terms, [P, d]; default
                ``adapted`` (the fitting loop passes the anchors and their neighbours together).
            pairwise_embeddings: their frozen embeddings [P, d]; default ``embeddings``.

        Returns:
            dict with the total ``loss`` and the unweighted terms (scalars).
        """
        zero = adapted.new_zeros(())
        if (pairwise_adapted is None) != (pairwise_embeddings is None):
            raise MRLError("pass both pairwise_adapted and pairwise_embeddings, or neither")
        if pairwise_adapted is None:
            pairwise_adapted, pairwise_embeddings = adapted, embeddings
        if len(pairwise_adapted) > 1:
            pairwise = self.pairwise(pairwise_adapted, pairwise_targets(pairwise_embeddings))
        else:
            pairwise = zero
        if (adapted_neighbours is None) != (neighbours is None):
            raise MRLError("pass both adapted_neighbours and neighbours, or neither")
        if adapted_neighbours is not None:
            neighbour = self.neighbour(adapted, adapted_neighbours, neighbour_targets(embeddings, neighbours))
        else:
            neighbour = zero
        reconstruction = reconstruction_loss(pairwise_adapted, pairwise_embeddings)
        total = (
            self.pairwise_weight * pairwise
            + self.neighbour_weight * neighbour
            + self.reconstruction_weight * reconstruction
        )
        return {"loss": total, "pairwise": pairwise, "neighbour": neighbour, "reconstruction": reconstruction}


def supervised_adapter_loss(
    nesting: Sequence[int], weights: Sequence[float] | None = None, temperature: float = 0.05
) -> MatryoshkaLoss:
    """The ranking term: :class:`InBatchContrastiveLoss` on every normalised prefix.

    Example:
        >>> loss = supervised_adapter_loss([4, 8])
        >>> q = torch.randn(6, 8)
        >>> bool(loss(q, q) < loss(q, q.roll(1, dims=0)))
        True
    """
    return MatryoshkaLoss(InBatchContrastiveLoss(temperature), nesting, weights, truncate=True)
