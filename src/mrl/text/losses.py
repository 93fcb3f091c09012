"""The Matryoshka objective for text pairs: mrl's MatryoshkaLoss over an in-batch ranking loss.

MRL's nested objective (Kusupati et al. 2022, eq. 1; section 4.3 for retrieval) sums one loss per
prefix size m of the embedding. Here the per-size loss is one of sentence-transformers' pair losses
on the m-dim prefixes of every (query, positive[, negative]) embedding:

* ``mnrl``: MultipleNegativesRankingLoss (in-batch negatives, cosine x scale 20, cross-entropy);
* ``cosent``: CoSENTLoss on the pairs (query_i, positive_i) labelled 1 and (query_i, negative_i)
  labelled 0, where the negative is the next row's positive when no negative is given.

Across ``torchrun`` ranks the embeddings are first gathered with
``torch.distributed.nn.functional.all_gather``, which keeps their gradients, so every rank computes
the loss of the whole global batch: K ranks of batch B see the K*B - 1 in-batch negatives of one
process of batch K*B. With the gradients of the parameters then averaged over ranks, the update is
that of the single process (the all-gather's backward sums the K identical losses' gradients, the
average divides by K).

Example:
    >>> loss = TextPairLoss(nesting=[4, 8])
    >>> q, p = torch.randn(6, 8, requires_grad=True), torch.randn(6, 8)
    >>> value = loss(q, p)
    >>> value.backward(); q.grad.shape
    torch.Size([6, 8])
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import nn

from mrl.errors import MRLError
from mrl.losses import MatryoshkaLoss
from mrl.validation import check_choice, check_float

LOSSES = ("mnrl", "cosent")


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Rows of ``x`` [B, d] from every rank, rank order, [K*B, d]; gradients flow back to each rank.

    Outside ``torch.distributed`` (or with one rank) ``x`` itself.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    return torch.cat(torch.distributed.nn.functional.all_gather(x), dim=0)


class TextPairLoss(nn.Module):
    """Sum over nesting sizes m of ``weights[m] * base_loss(prefixes of the pair embeddings)``.

    Args:
        nesting: ascending prefix sizes; ``[d]`` alone is the plain (non-Matryoshka) loss.
        loss: ``"mnrl"`` or ``"cosent"``.
        scale: inverse temperature of the cosine similarities (sentence-transformers' 20).
        weights: per-size weights c_m (default 1).

    Inputs of ``forward``: queries, positives (and optionally negatives), each [B, d] on this rank.
    Returns the scalar loss of the global batch.
    """

    def __init__(self, nesting: Sequence[int], loss: str = "mnrl", scale: float = 20.0, weights: Sequence[float] | None = None) -> None:
        super().__init__()
        from sentence_transformers.sentence_transformer import losses as st_losses

        self.kind = check_choice("loss", loss, LOSSES)
        check_float("scale", scale, min=0, min_open=True)
        if loss == "mnrl":
            self.pair_loss = st_losses.MultipleNegativesRankingLoss(None, scale=scale)
        else:
            self.pair_loss = st_losses.CoSENTLoss(None, scale=scale)
        # Every argument is an embedding of the model: cut and normalise each, as
        # sentence-transformers' MatryoshkaLoss does for pair losses.
        self.matryoshka = MatryoshkaLoss(self._base_loss, nesting=nesting, weights=weights, truncate=True, normalize=True)

    @property
    def nesting(self) -> list[int]:
        return self.matryoshka.nesting

    def _base_loss(self, *columns: torch.Tensor) -> torch.Tensor:
        if self.kind == "mnrl":
            return self.pair_loss.compute_loss_from_embeddings(list(columns), None)
        queries, positives, *negatives = columns
        others = negatives[0] if negatives else positives.roll(-1, dims=0)
        first = torch.cat([queries, queries])
        second = torch.cat([positives, others])
        labels = torch.cat([torch.ones(len(queries)), torch.zeros(len(queries))]).to(first.device)
        return self.pair_loss.compute_loss_from_embeddings([first, second], labels)

    def per_size(self, queries: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor | None = None) -> torch.Tensor:
        """Unweighted loss of the global batch at every nesting size, [G]."""
        columns = [gather_with_grad(x) for x in (queries, positives, negatives) if x is not None]
        if len(columns[0]) < 2:
            raise MRLError("in-batch negatives need a batch of at least 2 pairs")
        return self.matryoshka.per_size(*columns)

    def forward(self, queries: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor | None = None) -> torch.Tensor:
        return (self.matryoshka.weights * self.per_size(queries, positives, negatives)).sum()
