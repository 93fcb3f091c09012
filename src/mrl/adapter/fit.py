"""Fitting a :class:`~mrl.adapter.model.MatryoshkaAdapter` on frozen embeddings.

Two modes, as in Matryoshka-Adaptor (Yoon et al., 2024, sections 3.1-3.2):

* unsupervised: only a corpus of embeddings [N, d]. Each step takes a batch of rows, their k
  nearest neighbours in the frozen full-size space (exact search once, before training) and
  minimises :class:`~mrl.adapter.losses.UnsupervisedAdapterLoss` over every prefix of the nesting.
* supervised: (query, relevant document) embedding pairs [P, d] as well. Each step adds the in-batch
  ranking loss over every prefix (:func:`~mrl.adapter.losses.supervised_adapter_loss`, MRL's nested
  objective, Kusupati et al. 2022 eq. 1) to the unsupervised terms, which keep the adapter from
  drifting away from the frozen geometry on the few pairs it sees.

With ``patience`` the fit keeps the epoch (the untrained adapter counting as epoch 0) whose
prefixes best retrieve the frozen full-size neighbours of the corpus (:func:`neighbour_recall`), a
criterion that needs no labels, and stops once it has not improved for ``patience`` epochs. An
adapter started from a good basis (PCA) then ends no worse than it started by that criterion.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from mrl.adapter.losses import UnsupervisedAdapterLoss, supervised_adapter_loss
from mrl.adapter.model import MatryoshkaAdapter
from mrl.config import config_from_dict
from mrl.errors import MRLError
from mrl.loop import Loop, Position
from mrl.validation import check_float, check_int, check_seed


@dataclass
class FitConfig:
    """How an adapter is trained; saved with it.

    Attributes:
        epochs: passes over the corpus (unsupervised) or over the pairs (supervised).
        batch_size: rows (or pairs) per step; the pairwise term compares all B^2 pairs of a batch.
        lr: AdamW learning rate; 1e-3 moves a zero-initialised adapter quickly but smoothly.
        weight_decay: AdamW weight decay; 0 because the reconstruction term already regularises.
        neighbours: k of the neighbour term: the top-k is what retrieval at k = 10 reads.
        pairwise_weight: weight of the global pairwise-similarity term.
        neighbour_weight: weight of the top-k similarity term.
        reconstruction_weight: weight of ||f(e) - e||^2. Small (0.1) because it pulls f(e)[:m]
            back towards the raw prefix e[:m], against the change of basis the prefix terms ask
            for; the pairwise term at the full size already keeps the full geometry (WordNet
            benchmark, unsupervised: nDCG@10 at m = 64 was 0.325 with weight 1 (10 epochs), 0.335
            with 0.1 (5 epochs)).
        supervised_weight: weight of the ranking loss (supervised mode only).
        temperature: softmax temperature of the ranking loss (sentence-transformers' scale 20).
        patience: keep the epoch with the best :func:`neighbour_recall` on the corpus (epoch 0:
            the adapter as given) and stop after this many epochs without a better one; None
            trains every epoch and keeps the last, the paper's procedure.
        seed: seed of the initial weights and the batch order.
    """

    epochs: int = 20
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.0
    neighbours: int = 10
    pairwise_weight: float = 1.0
    neighbour_weight: float = 1.0
    reconstruction_weight: float = 0.1
    supervised_weight: float = 1.0
    temperature: float = 0.05
    patience: int | None = None
    seed: int = 0

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FitConfig:
        return config_from_dict(cls, data, "fit").validate()

    def validate(self) -> FitConfig:
        self.epochs = check_int("epochs", self.epochs, min=1, max=100_000)
        self.batch_size = check_int("batch_size", self.batch_size, min=1, max=1 << 24)
        self.neighbours = check_int("neighbours", self.neighbours, min=0, max=1 << 16)
        if self.patience is not None:
            self.patience = check_int("patience", self.patience, min=1, max=100_000)
            if self.neighbours < 1:
                raise MRLError("patience selects epochs by neighbour recall, which needs neighbours >= 1, got 0")
        self.seed = check_seed("seed", self.seed)
        self.lr = check_float("lr", self.lr, min=0, max=10, min_open=True)
        self.temperature = check_float("temperature", self.temperature, min=0, max=1e3, min_open=True)
        for name in ("weight_decay", "pairwise_weight", "neighbour_weight", "reconstruction_weight", "supervised_weight"):
            setattr(self, name, check_float(name, getattr(self, name), min=0, max=1e6))
        return self


def _as_tensor(name: str, array: np.ndarray | torch.Tensor, dim: int) -> torch.Tensor:
    x = torch.as_tensor(np.asarray(array) if not isinstance(array, torch.Tensor) else array)
    if x.dim() != 2 or not x.is_floating_point():
        raise MRLError(f"{name} must be a float matrix [N, d], got shape {tuple(x.shape)} and dtype {x.dtype}")
    if x.shape[1] != dim:
        raise MRLError(f"{name} have {x.shape[1]} dimensions but the adapter expects {dim}")
    if len(x) == 0:
        raise MRLError(f"{name} must not be empty")
    if not torch.isfinite(x).all():
        raise MRLError(f"{name} contain NaN or infinite values")
    return x.float()


@torch.no_grad()
def nearest_neighbours(embeddings: torch.Tensor, k: int, block_size: int = 4096) -> torch.Tensor:
    """Indices of each row's k most cosine-similar other rows, by blockwise exact search.

    Args:
        embeddings: [N, d].
        k: neighbours per row, k < N.
        block_size: rows compared at once (memory is block_size * N floats).

    Returns:
        int64 [N, k], most similar first; a row is never its own neighbour.

    Example:
        >>> e = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
        >>> nearest_neighbours(e, 1).flatten().tolist()
        [1, 0, 1]
    """
    n = len(embeddings)
    if not 0 < k < n:
        raise MRLError(f"neighbours must be in [1, {n - 1}] for {n} embeddings, got {k}")
    unit = F.normalize(embeddings.float(), dim=-1)
    out = torch.empty(n, k, dtype=torch.int64)
    for start in range(0, n, block_size):
        sims = unit[start : start + block_size] @ unit.T
        rows = torch.arange(start, min(start + block_size, n))
        sims[rows - start, rows] = -math.inf
        out[start : start + len(rows)] = sims.topk(k, dim=1).indices.cpu()
    return out


@torch.no_grad()
def neighbour_recall(adapter: MatryoshkaAdapter, embeddings: torch.Tensor, neighbours: torch.Tensor) -> float:
    """Mean over the adapter's prefix sizes m of the share of each row's frozen neighbours found at m.

    The unsupervised criterion of Matryoshka-Adaptor's goal (Yoon et al. 2024, section 3.1): the
    prefix f(e)[:m] should retrieve what the full frozen embedding e retrieves.

    Args:
        adapter: the adapter to score.
        embeddings: the frozen corpus [N, d].
        neighbours: each row's k nearest other rows in the frozen full space [N, k]
            (:func:`nearest_neighbours` of ``embeddings``).

    Returns:
        A value in [0, 1]: 1 when every prefix retrieves exactly the frozen top-k of every row.

    Example:
        >>> e = torch.nn.functional.normalize(torch.randn(32, 8), dim=-1)
        >>> neighbour_recall(MatryoshkaAdapter(8, nesting=[8]), e, nearest_neighbours(e, 3))
        1.0
    """
    k = neighbours.shape[1]
    adapted = adapter.transform(embeddings)
    found = [
        (nearest_neighbours(adapted[:, :m], k).unsqueeze(2) == neighbours.cpu().unsqueeze(1)).any(2).float().mean()
        for m in adapter.nesting
    ]
    return float(torch.stack(found).mean())


def fit_adapter(
    adapter: MatryoshkaAdapter,
    embeddings: np.ndarray | torch.Tensor | None = None,
    queries: np.ndarray | torch.Tensor | None = None,
    documents: np.ndarray | torch.Tensor | None = None,
    config: FitConfig | None = None,
    progress: bool = False,
) -> list[dict[str, float]]:
    """Train ``adapter`` in place on frozen embeddings; unsupervised unless pairs are given.

    Args:
        adapter: the adapter to train (usually new, i.e. the identity).
        embeddings: corpus [N, d] for the unsupervised terms; in supervised mode it defaults to the
            queries and documents stacked.
        queries: query embeddings [P, d] (supervised mode), row i relevant to ``documents[i]``.
        documents: document embeddings [P, d].
        config: training settings (default :class:`FitConfig`).
        progress: show a progress bar on stderr.

    Returns:
        One record per epoch: the mean of each loss term. With ``config.patience`` each record
        also holds the :func:`neighbour_recall` after that epoch and ``kept``, the epoch whose
        weights the adapter ends with, and a first record (epoch 0) holds the recall of the
        adapter as given.

    Raises:
        MRLError: mismatched shapes, dimensions other than the adapter's, NaN, or a bad config.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> e = torch.nn.functional.normalize(torch.randn(64, 16), dim=-1)
        >>> adapter = MatryoshkaAdapter(16, nesting=[4, 16])
        >>> history = fit_adapter(adapter, e, config=FitConfig(epochs=3, batch_size=32, neighbours=4))
        >>> len(history), history[-1]["loss"] < history[0]["loss"]
        (3, True)
    """
    config = (config or FitConfig()).validate()
    if (queries is None) != (documents is None):
        raise MRLError("supervised fitting needs both queries and documents (or neither)")
    device = adapter.out.weight.device
    supervised = queries is not None
    if supervised:
        q = _as_tensor("queries", queries, adapter.dim)
        d = _as_tensor("documents", documents, adapter.dim)
        if len(q) != len(d):
            raise MRLError(f"queries and documents must pair up row by row, got {len(q)} and {len(d)} rows")
        corpus = _as_tensor("embeddings", embeddings, adapter.dim) if embeddings is not None else torch.cat([q, d])
        q, d = q.to(device), d.to(device)
    elif embeddings is None:
        raise MRLError("pass embeddings (unsupervised) or queries and documents (supervised)")
    else:
        corpus = _as_tensor("embeddings", embeddings, adapter.dim)
    if len(corpus) < 2:
        raise MRLError(f"need at least 2 embeddings to fit an adapter, got {len(corpus)}")

    k = min(config.neighbours, len(corpus) - 1)
    selecting = config.patience is not None
    frozen_neighbours = nearest_neighbours(corpus, k) if k > 0 and (config.neighbour_weight > 0 or selecting) else None
    neighbour_index = frozen_neighbours.to(device) if frozen_neighbours is not None and config.neighbour_weight > 0 else None
    corpus = corpus.to(device)
    unsupervised = UnsupervisedAdapterLoss(
        adapter.nesting,
        pairwise_weight=config.pairwise_weight,
        neighbour_weight=config.neighbour_weight,
        reconstruction_weight=config.reconstruction_weight,
    ).to(device)
    ranking = supervised_adapter_loss(adapter.nesting, temperature=config.temperature).to(device)
    generator = torch.Generator().manual_seed(config.seed)
    optimizer = torch.optim.AdamW(adapter.parameters(), lr=config.lr, weight_decay=config.weight_decay)

    n_items = len(q) if supervised else len(corpus)
    steps = max(1, math.ceil(n_items / config.batch_size))
    # With the neighbour term a batch is A anchors plus their k neighbours, so one forward pass
    # serves both terms and the pairwise term also sees close pairs; A * (k + 1) ~ batch_size.
    anchors = max(1, config.batch_size // (k + 1)) if neighbour_index is not None else config.batch_size
    anchors = min(anchors, len(corpus))
    names = ["loss", "pairwise", "neighbour", "reconstruction", *(["ranking"] if supervised else [])]
    cursor, corpus_order = len(corpus), torch.empty(0, dtype=torch.int64)

    def batches(epoch: int, first: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(anchor rows of the corpus, query/document pair rows) of each step of ``epoch``."""
        nonlocal cursor, corpus_order
        order = torch.randperm(n_items, generator=generator)
        for step in range(steps):
            if cursor + anchors > len(corpus):
                corpus_order, cursor = torch.randperm(len(corpus), generator=generator).to(device), 0
            anchor_rows = corpus_order[cursor : cursor + anchors]
            cursor += anchors
            rows = order[step * config.batch_size : (step + 1) * config.batch_size]
            if len(rows) < 2:
                rows = order[-min(config.batch_size, n_items) :]
            yield anchor_rows, rows

    def backward(batch: tuple[torch.Tensor, torch.Tensor], step: int) -> tuple[torch.Tensor, torch.Tensor]:
        anchor_rows, rows = batch
        if neighbour_index is not None:
            nbr_rows = neighbour_index[anchor_rows]  # [A, k]
            batch = corpus[torch.cat([anchor_rows, nbr_rows.reshape(-1)])]
            adapted = adapter(batch)
            terms = unsupervised(
                adapted[:anchors], batch[:anchors],
                adapted[anchors:].view(anchors, k, -1), batch[anchors:].view(anchors, k, -1),
                pairwise_adapted=adapted, pairwise_embeddings=batch,
            )
        else:
            batch = corpus[anchor_rows]
            terms = unsupervised(adapter(batch), batch)
        loss = terms["loss"]
        if supervised:
            rows = rows.to(device)
            terms["ranking"] = ranking(adapter(q[rows]), adapter(d[rows]))
            loss = terms["loss"] = loss + config.supervised_weight * terms["ranking"]
        if torch.isfinite(loss):
            loss.backward()
        return loss.detach(), torch.stack([terms[name].detach().double() for name in names])

    history: list[dict[str, float]] = []

    def end_epoch(position: Position, means: torch.Tensor) -> dict[str, float]:
        history.append({"epoch": position.epoch, **dict(zip(names, means.tolist()))})
        return history[-1]

    loop = Loop(optimizer, lambda step: config.lr, backward, names, what="fitting", desc="fit adapter", progress=progress)
    if not selecting:
        adapter.train()
        loop.run(batches, config.epochs, steps, end_epoch=end_epoch)
        adapter.eval()
        return history

    best_recall, best_epoch = neighbour_recall(adapter, corpus, frozen_neighbours), 0
    history.append({"epoch": 0, "neighbour_recall": best_recall, "kept": 0})
    best_state = {name: t.detach().clone() for name, t in adapter.state_dict().items()}
    position = Position()
    # One epoch per call: the optimizer and the batch generator carry over, so the steps are those
    # of a single run over every epoch.
    for epoch in range(1, config.epochs + 1):
        adapter.train()
        position = loop.run(batches, config.epochs, steps, start=position, stop_at=epoch * steps, end_epoch=end_epoch)
        recall = neighbour_recall(adapter, corpus, frozen_neighbours)
        if recall > best_recall:
            best_recall, best_epoch = recall, epoch
            best_state = {name: t.detach().clone() for name, t in adapter.state_dict().items()}
        history[-1].update(neighbour_recall=recall, kept=best_epoch)
        if epoch - best_epoch >= config.patience:
            break
    adapter.load_state_dict(best_state)
    adapter.eval()
    return history


def fit_info(config: FitConfig, history: list[dict[str, float]], **extra: Any) -> dict[str, Any]:
    """The JSON record saved with a fitted adapter: its settings, its loss history, and ``extra``."""
    return {"config": asdict(config), "history": history, **extra}
